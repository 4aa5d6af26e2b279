"""The management API against the real log: CRUD, team isolation, secrets, errors."""

from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from dashpipe.settings import ApiSettings, Settings

TOKENS = {"tok-a": "team-a", "tok-b": "team-b"}
API = ApiSettings(api_tokens={SecretStr(k): v for k, v in TOKENS.items()},
                  admin_token=SecretStr("tok-admin"))


def webhook_pipeline(**extra: Any) -> dict[str, Any]:
    return {"name": "orders", "type": "realtime", "source_type": "webhook",
            "source_config": {"webhook_secret": "s3cret-value"}, **extra}


def polling_pipeline(**extra: Any) -> dict[str, Any]:
    return {"name": "weather", "type": "polling", "source_type": "http_api",
            "interval_seconds": 60,
            "source_config": {"url": "http://127.0.0.1:9/x", "auth_type": "bearer",
                              "token": "tok-upstream-secret"}, **extra}


@pytest.fixture
async def client(start_roles: Any) -> Any:
    rt = await start_roles("web", api=API)
    async with aiohttp.ClientSession(rt.web_url) as session:
        yield session


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_create_get_list_and_secrets_never_returned(client: Any) -> None:
    async with client.post("/api/pipelines", json=polling_pipeline(), headers=auth("tok-a")) as r:
        assert r.status == 201
        created = await r.json()
        text = await r.text()
    pid = created["id"]
    assert created["team_id"] == "team-a" and r.headers["Location"] == f"/api/pipelines/{pid}"
    assert "tok-upstream-secret" not in text
    assert created["source_config"]["token"] == "***"
    async with client.get(f"/api/pipelines/{pid}", headers=auth("tok-a")) as r:
        assert r.status == 200
        assert "tok-upstream-secret" not in await r.text()
    async with client.get("/api/pipelines", headers=auth("tok-a")) as r:
        assert [p["id"] for p in (await r.json())["pipelines"]] == [pid]


async def test_team_isolation_answers_404(client: Any) -> None:
    async with client.post("/api/pipelines", json=webhook_pipeline(), headers=auth("tok-a")) as r:
        pid = (await r.json())["id"]
    for method in ("GET", "DELETE"):
        async with client.request(method, f"/api/pipelines/{pid}", headers=auth("tok-b")) as r:
            assert r.status == 404
    async with client.patch(f"/api/pipelines/{pid}", json={"name": "x"},
                            headers=auth("tok-b")) as r:
        assert r.status == 404
    async with client.post(f"/api/pipelines/{pid}/pause", headers=auth("tok-b")) as r:
        assert r.status == 404
    async with client.get("/api/pipelines", headers=auth("tok-b")) as r:
        assert (await r.json())["pipelines"] == []
    async with client.get("/api/pipelines", headers=auth("tok-admin")) as r:
        assert pid in [p["id"] for p in (await r.json())["pipelines"]]
    async with client.post("/api/pipelines", json=webhook_pipeline(team_id="team-a"),
                           headers=auth("tok-b")) as r:
        assert r.status == 422


async def test_bad_or_missing_token_is_401(client: Any) -> None:
    for headers in ({}, auth("nope"), {"Authorization": "Basic dG9rLWE6"}):
        async with client.get("/api/pipelines", headers=headers) as r:
            assert r.status == 401
            assert "error" in await r.json()


async def test_invalid_input_is_422_with_field_paths(client: Any) -> None:
    bad = polling_pipeline(interval_seconds=0)
    bad["source_config"] = {"url": "ftp://x", "pagination": {"max_pages": 0}}
    async with client.post("/api/pipelines", json=bad, headers=auth("tok-a")) as r:
        assert r.status == 422
        locs = {e["loc"] for e in (await r.json())["errors"]}
    assert {"interval_seconds", "source_config.url", "source_config.pagination.next_path",
            "source_config.pagination.max_pages"} <= locs
    async with client.post("/api/pipelines", data=b'{"name": ', headers=auth("tok-a")) as r:
        assert r.status == 400
        assert "invalid JSON at line 1" in (await r.json())["error"]


async def test_fields_of_the_wrong_json_type_are_422_not_500(client: Any) -> None:
    # found by schemathesis: an object as `id` or `source_type` was a TypeError (500)
    for field in ("id", "source_type", "type"):
        async with client.post("/api/pipelines", json=webhook_pipeline(**{field: {}}),
                               headers=auth("tok-a")) as r:
            assert r.status == 422, field
            assert field in {e["loc"] for e in (await r.json())["errors"]}


async def test_a_patch_of_a_field_that_does_not_exist_is_422(client: Any) -> None:
    # found by schemathesis: `{"nope": null}` removed nothing and answered 200
    async with client.post("/api/pipelines", json=webhook_pipeline(), headers=auth("tok-a")) as r:
        pid = (await r.json())["id"]
    async with client.patch(f"/api/pipelines/{pid}", json={"nope": None, "name": "x"},
                            headers=auth("tok-a")) as r:
        assert r.status == 422
        assert [e["loc"] for e in (await r.json())["errors"]] == ["nope"]
    async with client.patch(f"/api/pipelines/{pid}", json={"cursor": None, "name": "x"},
                            headers=auth("tok-a")) as r:
        assert r.status == 200  # a view's read-only field: ignored, as in a PUT


async def test_the_original_designs_shapes_are_accepted_or_get_one_clear_error(
        client: Any) -> None:
    seed = polling_pipeline()
    seed["source_config"] |= {"method": "get", "params": {"limit": 100}}
    async with client.post("/api/pipelines", json=seed, headers=auth("tok-a")) as r:
        assert r.status == 201, await r.text()
        assert (await r.json())["source_config"]["method"] == "GET"
    mixed = polling_pipeline(type="realtime", interval_seconds=None)
    async with client.post("/api/pipelines", json=mixed, headers=auth("tok-a")) as r:
        assert r.status == 422
        errors = (await r.json())["errors"]
    assert [e["loc"] for e in errors] == ["source_type"]
    assert "a realtime pipeline takes source_type 'webhook'" in errors[0]["msg"]


async def test_update_patch_pause_resume_delete(client: Any) -> None:
    h = auth("tok-a")
    async with client.post("/api/pipelines", json=webhook_pipeline(id="orders-1"), headers=h) as r:
        assert r.status == 201
    async with client.post("/api/pipelines", json=webhook_pipeline(id="orders-1"), headers=h) as r:
        assert r.status == 409
    async with client.get("/api/pipelines/orders-1", headers=h) as r:
        current = await r.json()
    current["name"] = "renamed"  # sent back with the masked secret: the secret is kept
    async with client.put("/api/pipelines/orders-1", json=current, headers=h) as r:
        assert r.status == 200 and (await r.json())["name"] == "renamed"
    async with client.patch("/api/pipelines/orders-1", json={"rate_limit_per_minute": 5},
                            headers=h) as r:
        body = await r.json()
        assert body["rate_limit_per_minute"] == 5 and body["name"] == "renamed"
    async with client.post("/api/pipelines/orders-1/pause", headers=h) as r:
        assert (await r.json())["status"] == "paused"
    async with client.post("/api/pipelines/orders-1/resume", headers=h) as r:
        assert (await r.json())["status"] == "active"
    async with client.delete("/api/pipelines/orders-1", headers=h) as r:
        assert r.status == 204
    async with client.get("/api/pipelines/orders-1", headers=h) as r:
        assert r.status == 404


async def test_health_ready_and_metrics(client: Any) -> None:
    async with client.get("/healthz") as r:
        assert r.status == 200
    async with client.get("/readyz") as r:
        assert r.status == 200 and (await r.json())["status"] == "ready"
    async with client.get("/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"
    async with client.get("/nowhere") as r:
        assert r.status == 404 and "error" in await r.json()


async def test_definition_is_on_the_compacted_topic(client: Any, settings: Settings) -> None:
    from tests.helpers import read_topic

    async with client.post("/api/pipelines", json=webhook_pipeline(id="on-log"),
                           headers=auth("tok-a")) as r:
        assert r.status == 201
    records = await read_topic(settings, f"{settings.topics.prefix}.pipelines", 1)
    assert [r.key for r in records] == [b"on-log"]
