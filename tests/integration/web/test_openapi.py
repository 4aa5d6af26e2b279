"""The OpenAPI document against the real web role: every route the router serves is in it,
and nothing else; it is served without a token."""

from typing import Any

import aiohttp
import orjson

from agents.web.dashboard import Dashboard
from agents.web.push import Hub
from agents.web.server import make_app
from schemas import openapi

CATCH_ALLS = ("/{tail}", "/api/{tail}")  # the JSON 404 (or 405) of every other path


def served_routes(rt: Any) -> set[tuple[str, str]]:
    app, _ = make_app(rt, None, Dashboard(rt, Hub(rt)))  # type: ignore[arg-type]
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method != "HEAD" and path not in CATCH_ALLS:  # HEAD: aiohttp's, beside each GET
            out.add((route.method, path))
    return out


async def test_every_route_is_in_the_document_and_every_operation_is_a_route(
        start_roles: Any) -> None:
    rt = await start_roles("web")
    documented = {(method.upper(), path)
                  for path, ops in openapi.document()["paths"].items() for method in ops}
    served = served_routes(rt)
    assert served - documented == set(), "routes missing from schemas/openapi.py ROUTES"
    assert documented - served == set(), "operations in the document that no route serves"


async def test_the_document_is_served_without_a_token(start_roles: Any) -> None:
    rt = await start_roles("web")
    async with aiohttp.ClientSession(rt.web_url) as session, \
            session.get("/api/openapi.json") as r:
        assert r.status == 200 and r.content_type == "application/json"
        assert orjson.loads(await r.read()) == openapi.document()


async def test_another_method_on_a_path_is_405_with_allow_and_any_other_path_404(
        start_roles: Any) -> None:
    # found by schemathesis: `TRACE /healthz` was a 404, `/api/` answered text/plain
    rt = await start_roles("web")
    async with aiohttp.ClientSession(rt.web_url) as session:
        for method, path, allow in (("TRACE", "/healthz", "GET, HEAD"),
                                    ("PATCH", "/api/pipelines", "GET, HEAD, POST"),
                                    ("POST", "/api/openapi.json", "GET, HEAD")):
            async with session.request(method, path) as r:
                assert (r.status, r.headers.get("Allow")) == (405, allow), path
                assert "is not allowed" in (await r.json())["error"]
        for path in ("/nope", "/api/nope"):
            async with session.get(path) as r:
                assert r.status == 404 and "no such path" in (await r.json())["error"]
