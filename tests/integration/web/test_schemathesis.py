"""Schemathesis against a running web role, authenticated: every operation of the OpenAPI
document (but the streams that never end) gets generated requests, positive and negative,
and every answer must be no 5xx and match the document. Prints the counts."""

import asyncio
import os
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from dashpipe.settings import ApiSettings
from schemas import openapi

ADMIN = "tok-admin-fuzz"  # the admin token: a generated body may name any team
API = ApiSettings(api_tokens={SecretStr("tok-fuzz"): "team-f"}, admin_token=SecretStr(ADMIN))
EXAMPLES = int(os.environ.get("DASHPIPE_FUZZ_EXAMPLES", "50"))  # per operation and phase
# the streams never end, so a case of theirs would only time out; the router test covers
# that they are in the document
ENDLESS = r"/api/pipelines/\{id\}/(events|ws)$"
# Every check but one: positive_data_acceptance wants every schema-valid request answered
# 2xx, and some are refused for reasons no JSON Schema can state: the state of the pipeline
# (a webhook to a polling pipeline, history of one without persist_data), rules across a
# config's fields (`auth_type: bearer` needs a `token`), the caller (`team_id`: the
# admin's must name one, a team's must be its own).
SKIPPED_CHECKS = "positive_data_acceptance"
# Links for the stateful phase from the document's dependencies only: the location-headers
# inference also scans every answer's strings for URLs and fails the run on one that does
# not parse (schemathesis 4.32: `ValueError: Invalid IPv6 URL` from a generated header value
# such as `http://[` that a pipeline's view echoes back)
CONFIG = '[phases.stateful.inference]\nalgorithms = ["dependency-analysis"]\n'
UNDOCUMENTED = "(other methods on documented paths)"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# One worker: with two, CPython 3.11's `ast.parse` (hypothesis calls it to describe
# strategies) failed now and then inside schemathesis with "SystemError: AST constructor
# recursion depth mismatch"; never with one


async def seed(url: str) -> None:
    """Pipelines that the stateful phase finds (in the list), so that operations on one
    pipeline get past the 404 without a generated create having to succeed first."""
    auth = {"Authorization": f"Bearer {ADMIN}"}
    pipelines = [
        {"id": "fuzz-hook", "team_id": "team-f", "name": "hook", "type": "realtime",
         "source_type": "webhook", "persist_data": True,
         "source_config": {"webhook_secret": "s3cret", "verify_token": "v"}},
        {"id": "fuzz-poll", "team_id": "team-f", "name": "poll", "type": "polling",
         "interval_seconds": 3600, "status": "paused", "source_type": "http_api",
         "source_config": {"url": "http://127.0.0.1:9/x"}},
    ]
    async with aiohttp.ClientSession(url) as session:
        for p in pipelines:
            async with session.post("/api/pipelines", json=p, headers=auth) as r:
                assert r.status == 201, await r.text()


def tally(events: Path, documented: set[str]) -> tuple[dict[str, Counter[str]], Counter[str]]:
    """From schemathesis' ndjson events: per documented operation, its cases per phase and
    its answers per status class (the methods no path has, sent by the unsupported_method
    check, under one line); and every case per phase."""
    per_op: dict[str, Counter[str]] = defaultdict(Counter)
    phases: Counter[str] = Counter()
    with events.open("rb") as lines:
        for line in lines:
            if not line.startswith(b'{"ScenarioFinished"'):
                continue
            done = orjson.loads(line)["ScenarioFinished"]
            recorder = done["recorder"]
            for key, case in recorder.get("cases", {}).items():
                op = f"{case['value']['method']} {case['value']['path']}"
                op = op if op in documented else UNDOCUMENTED
                per_op[op][done["phase"]] += 1
                phases[done["phase"]] += 1
                answer = (recorder.get("interactions", {}).get(key) or {}).get("response")
                if answer:
                    per_op[op][f"{str(answer['status_code'])[0]}xx"] += 1
    return per_op, phases


def table(per_op: dict[str, Counter[str]], phases: Counter[str]) -> str:
    columns = ["coverage", "fuzzing", "stateful", "2xx", "4xx", "5xx"]
    lines = [f"{'operation':<48}" + "".join(f"{c:>9}" for c in columns)]
    for op in sorted(per_op, key=lambda o: (o == UNDOCUMENTED, o.split()[-1], o)):
        lines.append(f"{op:<48}" + "".join(f"{per_op[op][c]:>9}" for c in columns))
    lines.append(f"{len(per_op) - (UNDOCUMENTED in per_op)} operations, "
                 f"{sum(phases.values())} cases (" + ", ".join(
                     f"{phase} {n}" for phase, n in sorted(phases.items())) + ")")
    return "\n".join(lines)


async def test_schemathesis_finds_no_5xx_and_no_answer_off_the_document(
        start_roles: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rt = await start_roles("web", api=API)
    await seed(rt.web_url)
    report, events = tmp_path / "report.json", tmp_path / "events.ndjson"
    document = tmp_path / "openapi.json"  # from a file: read from the URL, schemathesis
    async with aiohttp.ClientSession(rt.web_url) as session, \
            session.get("/api/openapi.json") as r:  # would leave that operation out
        document.write_bytes(await r.read())
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "--config-file", str(config), "run", str(document), "--url", rt.web_url,
        "--header", f"Authorization: Bearer {ADMIN}", "--checks", "all",
        "--exclude-checks", SKIPPED_CHECKS,
        "--max-examples", str(EXAMPLES), "--exclude-path-regex", ENDLESS,
        "--seed", os.environ.get("DASHPIPE_FUZZ_SEED", "16"), "--workers", "1",
        "--generation-database", "none", "--request-timeout", "10", "--no-color",
        "--report", "json,ndjson", "--report-json-path", str(report),
        "--report-ndjson-path", str(events),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    fuzzed = {f"{m.upper()} {p}" for p, ops in openapi.document()["paths"].items()
              for m in ops if not re.search(ENDLESS, p)}
    per_op, phases = tally(events, fuzzed)
    events.unlink()  # tens of MB
    counts = table(per_op, phases)
    with capsys.disabled():  # the counts, in the log of every run (CI's included)
        print(f"\n== schemathesis against the web role\n{text}\n{counts}", flush=True)
    assert proc.returncode == 0, text[-4000:]
    summary = orjson.loads(report.read_bytes())
    assert summary["test_cases"]["with_failures"] == 0 and summary["errors"] == []
    assert set(per_op) - {UNDOCUMENTED} == fuzzed, "operations the run did not reach"
    assert sum(phases.values()) >= 2000
    assert all(per_op[op]["coverage"] and per_op[op]["fuzzing"] for op in fuzzed)
    assert sum(n["5xx"] for n in per_op.values()) == 0
