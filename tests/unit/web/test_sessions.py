"""Browser sessions are signed cookies every web process can check: the key is derived from
the tokens they share, unless one is set."""

from __future__ import annotations

from pydantic import SecretStr

from agents.web.api import session_team, session_value
from dashpipe.settings import ADMIN, ApiSettings

TOKENS = {SecretStr("tok-a"): "team-a", SecretStr("tok-b"): "team-b"}


def test_a_session_from_one_process_is_good_on_another_with_the_same_tokens() -> None:
    one, other = ApiSettings(api_tokens=TOKENS), ApiSettings(api_tokens=dict(TOKENS))
    cookie = session_value(one, "team-a", now=1000)
    assert session_team(other, cookie, now=1001) == "team-a"
    assert session_team(other, cookie, now=1000 + one.session_seconds + 1) is None  # expired
    changed = ApiSettings(api_tokens={SecretStr("tok-a"): "team-a"})
    assert session_team(changed, cookie, now=1001) is None  # another key: tokens differ
    assert session_team(other, cookie[:-1] + "0", now=1001) in (None, "team-a")
    assert session_team(other, cookie.replace(".", "x.", 1), now=1001) is None


def test_a_set_secret_signs_and_admin_sessions_need_an_admin_token() -> None:
    fixed = ApiSettings(api_tokens=TOKENS, session_secret=SecretStr("shared"))
    assert fixed.session_key() == b"shared"
    assert ApiSettings(api_tokens=TOKENS).session_key() != fixed.session_key()
    no_admin = ApiSettings(api_tokens=TOKENS)
    assert session_team(no_admin, session_value(no_admin, ADMIN, now=1), now=2) is None
    admin = ApiSettings(api_tokens=TOKENS, admin_token=SecretStr("adm"))
    assert session_team(admin, session_value(admin, ADMIN, now=1), now=2) == ADMIN
    assert admin.session_key() != no_admin.session_key()
