"""Reading providers' rate-limit headers (pure logic)."""

import pytest

from agents.ingest.sources.hosts import budget
from schemas.pipeline import HttpApiSink, HttpApiSource, Pipeline, keep_masked

NOW = 1_767_225_600.0  # 2026-01-01


@pytest.mark.parametrize(("headers", "told"), [
    ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 42)}, (0, 42)),
    ({"x-ratelimit-remaining": "17", "x-ratelimit-reset": "30"}, (17, 30)),  # delta seconds
    ({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": str(int(NOW * 1000) + 5000)}, (3, 5)),
    ({"RateLimit-Remaining": "0", "RateLimit-Reset": "12"}, (0, 12)),
    ({"RateLimit": '"default";r=50;t=30', "RateLimit-Policy": '"default";q=100;w=60'},
     (50, 30)),
    ({"RateLimit": '"burst";r=0;t=1, "daily";r=900;t=8000'}, (0, 1)),  # the tightest
    ({"X-RateLimit-Remaining": "5"}, None),  # no reset: nothing to plan with
    ({"X-RateLimit-Remaining": "many", "X-RateLimit-Reset": "10"}, None),
    ({"Retry-After": "10"}, None),
    ({}, None),
])
def test_what_the_headers_say_is_left(headers: dict[str, str],
                                      told: tuple[float, float] | None) -> None:
    from multidict import CIMultiDict

    got = budget(CIMultiDict(headers), NOW)
    if told is None:
        assert got is None
    else:
        assert got is not None and got[0] == told[0] and got[1] == pytest.approx(told[1])


def test_oauth2_needs_its_fields_and_keeps_the_secret_write_only() -> None:
    with pytest.raises(ValueError, match="token_url is required when auth_type is "
                                         "'oauth2_client_credentials'"):
        HttpApiSource(url="https://api.example.com/x",
                      auth_type="oauth2_client_credentials")  # type: ignore[call-arg]
    p = Pipeline.model_validate({
        "id": "p", "team_id": "t", "name": "n", "type": "polling", "interval_seconds": 60,
        "source_type": "http_api", "source_config": {
            "url": "https://api.example.com/x", "auth_type": "oauth2_client_credentials",
            "token_url": "https://auth.example.com/token", "client_id": "id-1",
            "client_secret": "cs-very-secret", "scope": "read"}})
    public = p.public()
    assert public["source_config"]["client_secret"] == "***"
    assert "cs-very-secret" not in str(public)
    kept = keep_masked(public, p.model_dump(mode="json"))
    assert kept["source_config"]["client_secret"] == "cs-very-secret"


def test_sinks_refuse_what_only_poll_sources_do() -> None:
    with pytest.raises(ValueError, match="is for poll sources"):
        HttpApiSink(url="https://x.example.com", auth_type="oauth2_client_credentials",
                    token_url="https://a.example.com/t", client_id="i", client_secret="s")
    with pytest.raises(ValueError, match="is for poll sources"):
        HttpApiSink(url="https://x.example.com", auth_type="api_key", api_key="k",
                    api_key_in="query")


def test_the_api_key_parameter_is_masked_in_bronze_urls() -> None:
    from agents.ingest.poller import _public_url

    url = _public_url("https://api.example.com/w?q=Paris&appid=k-123&token=t", "appid")
    assert "k-123" not in url and "q=Paris" in url and "token=t" not in url
