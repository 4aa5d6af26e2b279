"""The console (`GET /`) in headless Chromium against roles `web` + `map`: sign in through the
form, a deep-linked pipeline goes live, a signed webhook's row reaches the table and the chart
within 2 s of its 202 (measured after one warm-up row), and another team's token never sees the
pipeline. With `persist` and `deliver` too: every control of the console (fields, range, bucket,
aggregate, hover, zoom, UTC/local, the replay dry run, the redrive), checked against the rows
sent; it writes the README's screenshots into docs/images/.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package: missing, the tests
are skipped with the reason, and fail with `CI=true`. Selenium calls block, so they run in a
thread (`asyncio.to_thread`) while the roles keep running on the test's event loop."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from dashpipe import kafka
from dashpipe.settings import ApiSettings
from dashpipe.signatures import sign_original
from tests.helpers import serving, wait_until

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TOKENS = {"tok-a": "team-a", "tok-b": "team-b"}
API = ApiSettings(api_tokens={SecretStr(k): v for k, v in TOKENS.items()})
SECRET = "page-secret"
MAPPING = {"fields": {"temp": {"path": "temp", "type": "float", "required": True},
                      "room": {"path": "room", "type": "string"}}}
LIVE_DEADLINE = 2.0  # seconds from the webhook's 202 to the row in the table and the chart
WINDOW = (1440, 1000)


def _browser_missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"the page test needs a browser in CI: {reason}", pytrace=False)
    pytest.skip(f"no headless browser: {reason}")


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver; requested first, so it is checked before the
    services start."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        _browser_missing("the selenium package is not installed (pip install selenium)")
    binary = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                               "/usr/bin/chromium") if p and Path(p).exists()), None)
    driver = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver",
                               "/usr/lib/chromium/chromedriver") if p and Path(p).exists()), None)
    if binary is None or driver is None:
        missing = [n for n, p in (("chromium", binary), ("chromedriver", driver)) if p is None]
        _browser_missing(f"{' and '.join(missing)} not found "
                         "(Debian: apt-get install chromium chromium-driver)")
    assert binary is not None and driver is not None
    return binary, driver


class Page:
    """One headless Chromium; every call runs in a thread so the event loop keeps serving."""

    def __init__(self, driver: Any, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    async def js(self, script: str, *args: Any) -> Any:
        return await asyncio.to_thread(self.driver.execute_script, script, *args)

    async def fetch_status(self, path: str) -> int:
        """The status the page's own fetch (its cookies, no token) gets for `path`."""
        script = ("const done = arguments[arguments.length - 1];"
                  "fetch(arguments[0], {credentials: 'same-origin'})"
                  ".then(r => done(r.status), e => done(-1));")
        return int(await asyncio.to_thread(self.driver.execute_async_script, script, path))

    async def wait(self, script: str, what: str, timeout: float = 30.0) -> Any:
        """Wait (deadline, no sleeps) until `script` returns something truthy; return it."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        def until() -> Any:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.02).until(
                lambda d: d.execute_script(script))

        try:
            return await asyncio.to_thread(until)
        except TimeoutException:
            state = await self.js("return JSON.stringify({dashpipe: window.dashpipe, notice: "
                                  "document.getElementById('notice').textContent})")
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                 f"page state: {state[:2000]}") from None

    async def open(self, fragment: str = "") -> None:
        await asyncio.to_thread(self.driver.get, f"{self.base_url}/{fragment}")

    async def sign_in(self, token: str) -> None:
        from selenium.webdriver.common.by import By

        await self.wait("return !document.getElementById('login-section').hidden",
                        "the sign-in form (GET /api/pipelines without a session: 401)")
        field = self.driver.find_element(By.ID, "token")
        await asyncio.to_thread(field.send_keys, token)
        await asyncio.to_thread(self.driver.find_element(By.CSS_SELECTOR,
                                                         "#login button[type=submit]").click)
        await self.wait("return !document.getElementById('list-section').hidden",
                        "the pipeline list after signing in")

    async def pipeline_ids(self) -> list[str]:
        return list(await self.js(
            "return [...document.querySelectorAll('#pipelines [data-pipeline-id]')]"
            ".map(e => e.dataset.pipelineId)"))

    async def live(self, pid: str) -> None:
        await self.wait(f"return window.dashpipe.selected === {orjson.dumps(pid).decode()} "
                        "&& window.dashpipe.live === true", f"pipeline {pid} subscribed live")


@contextlib.asynccontextmanager
async def browser(chromium: tuple[str, str], base_url: str, timezone: str | None = None
                  ) -> AsyncIterator[Page]:
    """A headless Chromium on `base_url`, in `timezone` (an IANA name) when given."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = await asyncio.to_thread(webdriver.Chrome, options=options,
                                     service=Service(driver_path))
    try:
        if timezone is not None:
            await asyncio.to_thread(driver.execute_cdp_cmd, "Emulation.setTimezoneOverride",
                                    {"timezoneId": timezone})
        yield Page(driver, base_url)
    finally:
        await asyncio.to_thread(driver.quit)


@pytest.fixture
async def page(chromium: tuple[str, str], start_roles: Any) -> AsyncIterator[Page]:
    rt = await start_roles("web", "map", api=API)
    async with browser(chromium, rt.web_url) as opened:
        yield opened


async def create(base_url: str, token: str, pid: str, name: str) -> None:
    body = {"id": pid, "name": name, "type": "realtime", "source_type": "webhook",
            "source_config": {"webhook_secret": SECRET}, "data_mapping": MAPPING}
    async with aiohttp.ClientSession(base_url) as http, http.post(
            "/api/pipelines", json=body, headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 201, await r.text()


async def send_webhook(http: aiohttp.ClientSession, pid: str, payload: dict[str, Any]) -> None:
    body = orjson.dumps(payload)
    headers = {"x-webhook-signature": sign_original(SECRET, body),
               "Content-Type": "application/json"}
    async with http.post(f"/webhooks/{pid}", data=body, headers=headers) as r:
        assert r.status == 202, await r.text()


ROW_STATE = """
const tr = document.querySelector('#rows tbody tr');
return {charted: window.dashpipe.chart.liveRows,
        top: tr ? [...tr.cells].map(c => c.textContent) : null,
        rows: window.dashpipe.rows.length};
"""


async def test_a_webhook_row_is_on_the_page_within_2s(page: Page) -> None:
    await create(page.base_url, "tok-a", "sensors", "Lab sensors")
    await page.open("#pipeline=sensors")
    await page.sign_in("tok-a")
    await page.live("sensors")

    # the token went to POST /api/session and nowhere else; the session cookie is HttpOnly
    assert await page.js("return document.getElementById('token').value") == ""
    assert await page.js("return localStorage.length + sessionStorage.length") == 0
    assert "tok-a" not in await page.js("return location.href + document.cookie")
    jar = await asyncio.to_thread(page.driver.execute_cdp_cmd, "Network.getAllCookies", {})
    session = {c["name"]: c for c in jar["cookies"]}["dashpipe_session"]  # path /api/
    assert (session["httpOnly"], session.get("sameSite")) == (True, "Strict")

    assert await page.pipeline_ids() == ["sensors"]
    assert await page.js("return document.querySelector("
                         "'[data-pipeline-id=sensors] .status').textContent") == "active"
    assert await page.js("return [...document.querySelectorAll('#fields input:checked')]"
                         ".map(o => o.value)") == ["temp"]  # the mapping's float field

    async with aiohttp.ClientSession(page.base_url) as http:
        # warm-up: the first row may also wait for the map role's consumer group to form (on
        # a slow machine), which is start-up, not latency; the measured row comes after it
        await send_webhook(http, "sensors", {"temp": 20.25, "room": "warm-up"})
        warm = time.monotonic()
        await page.wait("return window.dashpipe.rows.length === 1", "the warm-up row")
        warm = time.monotonic() - warm
        before = await page.js(ROW_STATE)
        assert before["charted"] == 1 and before["top"][1:] == ["20.25", "warm-up"]

        await send_webhook(http, "sensors", {"temp": 21.5, "room": "lab"})
        acked = time.monotonic()
        while True:
            now = await page.js(ROW_STATE)
            elapsed = time.monotonic() - acked
            if now["rows"] == 2 and now["charted"] == 2:
                break
            assert elapsed < LIVE_DEADLINE, \
                f"no new row on the page {LIVE_DEADLINE}s after the 202: {now}"
    print(f"\nwebhook 202 -> row in the table and the chart: {elapsed * 1000:.0f} ms "
          f"(the warm-up row: {warm * 1000:.0f} ms)")
    assert elapsed < LIVE_DEADLINE
    assert now["top"][1:] == ["21.5", "lab"]  # newest on top, columns: time + each field
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", now["top"][0])
    head = await page.js("return [...document.querySelectorAll('#rows thead th')]"
                         ".map(th => th.textContent)")
    assert head[0].startswith("time (") and head[1:] == ["temp", "room"]
    state = await page.js("return window.dashpipe")
    assert [r["fields"] for r in state["rows"]] == [{"temp": 21.5, "room": "lab"},
                                                    {"temp": 20.25, "room": "warm-up"}]
    assert all(r["pipeline_id"] == "sensors" for r in state["rows"])
    assert state["chart"]["fields"] == ["temp"] and state["chart"]["source"] == "live rows"
    assert [v for v in state["chart"]["series"]["temp"] if v is not None]  # bucketed: 1 or 2
    log = await asyncio.to_thread(page.driver.get_log, "browser")
    assert [e for e in log if e["source"] != "network"] == []  # no script errors


async def test_another_team_never_sees_the_pipeline(page: Page) -> None:
    await create(page.base_url, "tok-a", "a-secret", "Team A only")
    await create(page.base_url, "tok-b", "b-own", "Team B")
    await page.open("#pipeline=a-secret")  # team B deep-links to team A's pipeline
    await page.sign_in("tok-b")
    assert await page.pipeline_ids() == ["b-own"]
    await page.wait("return /not found/.test(document.getElementById('notice').textContent)",
                    "a 'not found' notice for the other team's pipeline")
    assert await page.js("return window.dashpipe.selected") is None
    assert await page.js("return document.getElementById('detail').hidden") is True
    assert "Team A only" not in await page.js("return document.body.innerText")
    for path in ("/api/pipelines/a-secret/recent?limit=5", "/api/pipelines/a-secret/events"):
        assert await page.fetch_status(path) == 404  # with team B's session cookie

    # a click selects the team's own pipeline, which goes live
    await asyncio.to_thread(page.driver.find_element("css selector",
                                                     "[data-pipeline-id=b-own] .pid").click)
    await page.live("b-own")
    assert await page.js("return location.hash") == "#pipeline=b-own"

    # signing out ends the session; team A's token then sees its own pipeline only
    await asyncio.to_thread(page.driver.find_element("id", "logout").click)
    await page.wait("return !document.getElementById('login-section').hidden", "signed out")
    assert await page.js("return window.dashpipe.selected") is None
    assert await page.fetch_status("/api/pipelines") == 401
    await page.open("#pipeline=a-secret")
    await page.sign_in("tok-a")
    assert await page.pipeline_ids() == ["a-secret"]
    await page.live("a-secret")


# --- the console: every control, the operations panels, and the README's screenshots --------

IMAGES = Path(__file__).resolve().parents[3] / "docs" / "images"
ZONE = ("Asia/Kolkata", timedelta(hours=5, minutes=30))  # a zone that is not UTC, no DST
SENSORS: dict[str, Any] = {"records": "items[*]", "time": {"path": "t", "format": "rfc3339"},
           "fields": {"temp": {"path": "temp", "type": "float", "required": True},
                      "humidity": {"path": "humidity", "type": "float"},
                      "room": {"path": "room", "type": "string"}}}
FIXED = {"fields": {"temp": {"path": "temp", "type": "float", "required": False}}}  # a merge patch
ROWS = 50  # one a minute, the newest a few seconds old
LIVE = 3  # sent while the page is open: for the rate (their times are outside the ranges used)


def readings(now: datetime) -> list[dict[str, Any]]:
    return [{"t": (now - timedelta(minutes=i, seconds=5)).isoformat(),
             "temp": 20 + (i % 7) * 0.5, "humidity": 40.0 + i % 5,
             "room": "lab" if i % 2 else "hall"} for i in range(ROWS)]


def expected(items: list[dict[str, Any]], start: datetime, bucket: int, agg: str,
             field: str) -> dict[float, float]:
    """What the chart should show per bucket start (epoch s), from the rows themselves."""
    out: dict[float, list[float]] = {}
    for item in items:
        t = datetime.fromisoformat(item["t"]).timestamp()
        if t >= start.timestamp() and item.get(field) is not None:
            out.setdefault(t // bucket * bucket, []).append(item[field])
    combine: dict[str, Callable[[list[float]], float]] = {
        "max": max, "min": min, "count": len, "avg": lambda v: sum(v) / len(v)}
    return {k: combine[agg](v) for k, v in out.items()}


class Sink:
    """A webhook receiver that accepts everything."""

    def __init__(self) -> None:
        self.received = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.received += 1
        return web.Response(status=200)


async def chart_of(page: Page, field: str) -> dict[float, float]:
    state = await page.js("return window.dashpipe.chart")
    return {x: v for x, v in zip(state["x"], state["series"][field], strict=True)
            if v is not None}


async def settle(page: Page, what: str, check: str) -> dict[str, Any]:
    """Wait until the chart's last query answered and `check` (JS over `c`, the chart state)
    holds; return the chart state."""
    return dict(await page.wait(f"const c = window.dashpipe.chart; return ({check}) && c", what))


async def click(page: Page, css: str) -> None:
    await asyncio.to_thread(page.driver.find_element("css selector", css).click)


async def screenshot(page: Page, name: str, css: str | None = None) -> None:
    """The viewport, or the whole element `css` (taller than the viewport too), as a PNG."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    if css is None:
        await asyncio.to_thread(page.driver.save_screenshot, str(IMAGES / name))
    else:
        box = await page.js("const r = document.querySelector(arguments[0])"
                            ".getBoundingClientRect(); return {x: r.left + scrollX - 8, "
                            "y: r.top + scrollY - 8, width: r.width + 16, "
                            "height: r.height + 16, scale: 1};", css)
        shot = await asyncio.to_thread(page.driver.execute_cdp_cmd, "Page.captureScreenshot", {
            "format": "png", "clip": box, "captureBeyondViewport": True})
        (IMAGES / name).write_bytes(base64.b64decode(shot["data"]))
    assert (IMAGES / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.storages("postgres")
async def test_the_console_drives_every_control(chromium: tuple[str, str], start_roles: Any,
                                                db: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    from tests.integration.deliver.test_deliver import FAST

    sink = Sink()
    app = web.Application()
    app.router.add_post("/in", sink.handle)
    async with serving(app) as sink_url, aiohttp.ClientSession() as http:
        rt = await start_roles("web", "map", "persist", "deliver", api=API, delivery=FAST)
        body = {"id": "sensors", "name": "Lab sensors", "type": "realtime",
                "source_type": "webhook", "source_config": {"webhook_secret": SECRET},
                "data_mapping": SENSORS, "persist_data": True,
                "sinks": [{"sink_type": "webhook", "sink_config": {"url": f"{sink_url}/in",
                                                                   "secret": "whsec"}}]}
        async with http.post(f"{rt.web_url}/api/pipelines", json=body,
                             headers={"Authorization": "Bearer tok-a"}) as r:
            assert r.status == 201, await r.text()
        now = datetime.now(UTC)
        items = readings(now)
        bad = {"t": (now - timedelta(seconds=30)).isoformat(), "humidity": 45.0, "room": "roof"}
        async with aiohttp.ClientSession(rt.web_url) as hooks:
            await send_webhook(hooks, "sensors", {"items": [*items, bad]})
        await wait_until(lambda: _stored(db, ROWS), timeout=30, what="the rows stored")
        await wait_until(lambda: sink.received >= ROWS, timeout=30, what="the rows delivered")

        async with browser(chromium, rt.web_url, ZONE[0]) as page:
            await page.open("#pipeline=sensors")
            await page.sign_in("tok-a")
            await page.live("sensors")

            # rows/s and the newest row's age, from the live stream
            async with aiohttp.ClientSession(rt.web_url) as hooks:
                for i in range(LIVE):
                    await send_webhook(hooks, "sensors", {"items": [
                        {"t": (now - timedelta(hours=2, minutes=i)).isoformat(),
                         "temp": 23.0, "humidity": 50.0, "room": "attic"}]})
            await page.wait(f"return window.dashpipe.rows.filter(r => r.fields.room === "
                            f"'attic').length === {LIVE} && window.dashpipe.stats.rate > 0",
                            "the live rows and a rate")
            age = await page.js("return document.getElementById('stat-age').textContent")
            assert age.endswith(" s"), age  # the newest row time: the bulk's, seconds ago

            # fields: the mapping's numbers, both checked; the chart asks /data for both
            assert await page.js("return [...document.querySelectorAll('#fields input')]"
                                 ".map(i => [i.value, i.checked])") == [["temp", True],
                                                                        ["humidity", True]]
            c = await settle(page, "the stored history", "c.query && c.x.length >= 40")
            assert c["query"]["fields"] == "temp,humidity" and c["query"]["bucket"] == "1m"
            assert c["source"] == "stored rows + live rows"
            start = datetime.fromisoformat(c["query"]["from"].replace("Z", "+00:00"))
            assert await chart_of(page, "temp") == pytest.approx(
                expected(items, start, 60, "avg", "temp"))
            assert await page.js("return [...document.querySelectorAll('.u-legend .u-series "
                                 "th')].map(e => e.textContent)") == ["time", "temp", "humidity"]

            # the panels: sinks healthy, the dead letter with its reason, lag per role group
            await page.wait("return document.querySelector('#sinks [data-sink=\"0\"]')"
                            "?.dataset.health === 'ok'", "the sink healthy")
            sink_row = await page.js("return [...document.querySelectorAll('#sinks tbody td')]"
                                     ".map(td => td.textContent)")
            assert sink_row[3] == str(ROWS) and sink_row[4:6] == ["0", "0"]
            assert sink_row[6].endswith(" ago")
            await page.wait("return window.dashpipe.deadLetters?.total === 1", "the dead letter")
            reason = await page.js("return document.querySelector('#dead-letters td.reason')"
                                   ".textContent")
            assert "temp" in reason and "required" in reason
            assert await page.js("return document.getElementById('stat-dead').textContent") == "1"
            lag = await page.wait(
                "const l = window.dashpipe.lag; const roles = l && l.groups ? "
                "l.groups.map(g => g.role).sort() : []; return roles.join() === "
                "'deliver,map,persist' && l.groups.every(g => g.lag === 0) && l",
                "the lag of every role group, caught up", timeout=40)
            assert {g["role"]: g["group"] for g in lag["groups"]} == {
                r: rt.group(r) for r in ("deliver", "map", "persist")}
            assert await page.js("return document.getElementById('stat-lag').textContent") == "0"
            await screenshot(page, "console-overview.png")

            # a field unchecked: one series, one field asked for
            await click(page, "label[for=field-humidity]")
            c = await settle(page, "temp only", "c.query?.fields === 'temp' && "
                                                "c.fields.join() === 'temp'")
            assert await page.js("return document.querySelectorAll('.u-legend .u-series')"
                                 ".length") == 2

            # range 15m, bucket 5m, agg max: the maximum of each 5-minute bucket
            await click(page, "label[for=range-15m]")
            await asyncio.to_thread(Select(page.driver.find_element("id", "bucket"))
                                    .select_by_value, "5m")
            await asyncio.to_thread(Select(page.driver.find_element("id", "agg"))
                                    .select_by_value, "max")
            c = await settle(page, "15m / 5m / max", "c.query?.bucket === '5m' && "
                                                     "c.query.agg === 'max' && c.bucket === '5m'")
            start = datetime.fromisoformat(c["query"]["from"].replace("Z", "+00:00"))
            assert now - start < timedelta(minutes=16)
            assert all(x % 300 == 0 for x in c["x"])
            assert await chart_of(page, "temp") == expected(items, start, 300, "max", "temp")
            # count: every row of the range once, from the stored rows and the live tail
            await asyncio.to_thread(Select(page.driver.find_element("id", "agg"))
                                    .select_by_value, "count")
            c = await settle(page, "count", "c.query?.agg === 'count'")
            assert await chart_of(page, "temp") == expected(items, start, 300, "count", "temp")

            # hover: the legend shows the value under the cursor
            over = page.driver.find_element("css selector", "#chart .u-over")
            size = over.size
            await asyncio.to_thread(ActionChains(page.driver).move_to_element_with_offset(
                over, size["width"] // 4, 0).perform)
            shown = await page.wait(
                "const v = document.querySelectorAll('.u-legend .u-series .u-value');"
                "const none = '\u2013';"  # what the legend shows away from a point
                "return v.length === 2 && v[1].textContent !== none && "
                "v[0].textContent !== none && [...v].map(e => e.textContent)",
                "a value in the legend under the cursor")
            assert float(shown[1]) in (await chart_of(page, "temp")).values()
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", shown[0])

            # zoom: a drag selects a time span; reset goes back to the range
            await asyncio.to_thread(
                ActionChains(page.driver).move_to_element_with_offset(
                    over, -size["width"] // 4, 0).click_and_hold()
                .move_by_offset(size["width"] // 3, 0).release().perform)
            zoom = await page.wait("return window.dashpipe.chart.zoom", "a zoomed chart")
            assert zoom[0] < zoom[1] and zoom[1] - zoom[0] < 15 * 60
            assert await page.js("return document.getElementById('reset-zoom').hidden") is False
            await click(page, "#reset-zoom")
            await page.wait("return window.dashpipe.chart.zoom === null", "the zoom reset")

            # local time (the browser's zone) or UTC, in the rows and the legend
            row_time = datetime.fromisoformat(
                (await page.js("return window.dashpipe.rows[0].time")).replace("Z", "+00:00"))
            local = (row_time.astimezone(UTC) + ZONE[1]).strftime("%Y-%m-%d %H:%M:%S")
            first = "return document.querySelector('#rows tbody td').textContent"
            header = "return document.querySelector('#rows thead th').textContent"
            assert (await page.js(header), await page.js(first)) == ("time (GMT+5:30)", local)
            await click(page, "label[for=tz-utc]")
            assert await page.js("return window.dashpipe.utc") is True
            assert (await page.js(header), await page.js(first)) == (
                "time (UTC)", row_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"))
            assert "UTC" in await page.js("return document.getElementById('chart-note')"
                                          ".textContent")
            await click(page, "label[for=tz-local]")
            assert await page.js(first) == local

            # replay dry run with a candidate mapping: the diff, nothing written
            ends = await _ends(rt)
            candidate = {**SENSORS, "fields": {**SENSORS["fields"],
                                               "humidity": {"path": "humidity",
                                                            "type": "string"}}}
            await click(page, "#replay summary")
            await page.js("const t = document.getElementById('replay-mapping'); "
                          "t.value = arguments[0];",
                          orjson.dumps(candidate, option=orjson.OPT_INDENT_2).decode())
            await asyncio.to_thread(Select(page.driver.find_element("id", "replay-from"))
                                    .select_by_value, "start")
            await asyncio.to_thread(page.driver.find_element("id", "replay-token").send_keys,
                                    "tok-a")
            await click(page, "#replay-run")
            result = await page.wait("return window.dashpipe.replay", "the dry run's diff")
            diff = result["diff"]
            assert diff["changed"] == ROWS + LIVE and diff["changed_fields"] == {
                "humidity": ROWS + LIVE}, diff
            assert await page.js("return document.querySelector('[data-diff=changed] .chip-n')"
                                 ".textContent") == str(ROWS + LIVE)
            assert await page.js("return document.querySelectorAll('#replay-samples tbody tr')"
                                 ".length") > 0
            assert await page.js("return document.getElementById('replay-token').value") == ""
            assert await _ends(rt) == ends  # a dry run writes nothing

            # redrive: the token once; the dead letter is mapped again and the count drops
            async with http.patch(f"{rt.web_url}/api/pipelines/sensors",
                                  json={"data_mapping": FIXED},
                                  headers={"Authorization": "Bearer tok-a"}) as r:
                assert r.status == 200, await r.text()
            await screenshot(page, "console-operations.png", "#ops")
            await asyncio.to_thread(Select(page.driver.find_element("id", "redrive-stage"))
                                    .select_by_value, "map")
            await asyncio.to_thread(page.driver.find_element("id", "redrive-token").send_keys,
                                    "tok-a")
            await click(page, "#redrive-run")
            report = await page.wait("return window.dashpipe.redrive", "the redrive's report")
            assert (report["redriven"], report["still_failing"]) == (1, 0), report
            await page.wait("return window.dashpipe.deadLetters?.total === 0 && document."
                            "getElementById('stat-dead').textContent === '0'",
                            "the dead-letter count down to 0")
            assert "Redriven 1 of 1" in await page.js(
                "return document.getElementById('redrive-result').textContent")
            await page.wait("return window.dashpipe.rows.some(r => r.fields.room === 'roof')",
                            "the redriven row, live")

            log = await asyncio.to_thread(page.driver.get_log, "browser")
            # no script or CSP error (the one network error is the 401 before signing in)
            assert [e for e in log if e["source"] != "network"] == []


async def _stored(db: Any, n: int) -> bool:
    if not await db.fetchval("SELECT to_regclass('pipeline_data') IS NOT NULL"):
        return False
    return bool(await db.fetchval("SELECT count(*) FROM pipeline_data") >= n)


async def _ends(rt: Any) -> dict[str, int]:
    """The end offsets of the transformed and dead-letter topics, summed per topic."""
    consumer = kafka.consumer(rt.bootstrap, rt.settings.kafka, group_id=None)
    async with kafka.started(consumer):
        out = {}
        for topic in (rt.names.transformed, rt.names.dlq):
            ends = await consumer.end_offsets(await kafka.partitions(consumer, topic))
            out[topic] = sum(ends.values())
        return out
