"""`dashpipe dlq` against the real broker and database: a fixed mapping redriven empties the
pipeline's dead letters (API count with the web role running, and `dlq list`) and only the fixed
rows appear in the transformed topic; rows that still fail are new dead letters, reported;
persist dead letters go back to the transformed topic, deliver dead letters back to their sink.
The CLI runs as a user runs it (`main(argv)`, settings from the environment), in a thread."""

from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web

from dashpipe.settings import ADMIN, Settings
from schemas.records import TransformedRecord
from tests.helpers import read_topic, topic_size, wait_until
from tests.integration.conftest import Run
from tests.integration.deliver.test_deliver import FAST, Receiver, hook, serve
from tests.integration.mapping.test_mapper import webhook_pipeline, write_raw

STRICT = {"records": "items[*]",
          "fields": {"n": {"path": "n", "type": "integer", "required": True}}}
# a JSON merge patch: `n` from `n`, else from `m`
FIXED = {"fields": {"n": {"path": None, "first_of": ["n", "m"]}}}


@pytest.fixture
def dashpipe(dashpipe_cli: Run) -> Run:
    return dashpipe_cli


def counts(rt: Any, pid: str) -> dict[str, int]:
    return dict(rt.service.view(rt.registry.pipelines[pid])["dead_letters"])


def resolved(rt: Any, pid: str, stage: str) -> float:
    return float(rt.metrics.value("dashpipe_dead_letters_resolved", pipeline_id=pid,
                                  stage=stage))


async def test_redrive_after_fixing_the_mapping_empties_the_dead_letters(
        start_roles: Any, settings: Settings, dashpipe: Run) -> None:
    rt = await start_roles("web", "map")
    await rt.service.create(webhook_pipeline("orders", STRICT), ADMIN)
    await rt.service.create(webhook_pipeline("other", STRICT), ADMIN)
    await write_raw(settings, rt.names.raw, "orders",
                    [b'{"items": [{"n": 1}, {"m": 2}, {"m": 3}]}', b'{"items": [{"m": 4}]}'])
    await write_raw(settings, rt.names.raw, "other", [b'{"items": [{"m": 9}]}'])
    await wait_until(lambda: counts(rt, "orders") == {"map": 3} and
                     counts(rt, "other") == {"map": 1}, what="the dead-letter counts")

    code, out, _ = await dashpipe("dlq", "list", "--pipeline", "orders")
    header, *lines = out.splitlines()
    assert code == 0 and header.split() == ["OFFSET", "STAGE", "FAILED", "AT", "LINEAGE",
                                            "REASON"]
    assert len(lines) == 3 and all(line.split()[1] == "map" for line in lines)
    assert all("field 'n': required, but 'n' is missing" in line for line in lines)
    code, out, _ = await dashpipe("dlq", "list", "--pipeline", "orders", "--json")
    letters = orjson.loads(out)["dead_letters"]
    assert sorted((d["lineage"]["raw_offset"], d["lineage"]["row_index"]) for d in letters) \
        == [(0, 1), (0, 2), (1, 0)]
    first = letters[0]["position"]

    await rt.service.patch("orders", {"data_mapping": FIXED}, ADMIN)
    code, out, err = await dashpipe("dlq", "redrive", "--pipeline", "orders")
    assert (code, err) == (0, ""), out
    *done, summary = out.splitlines()
    assert len(done) == 3 and all(": mapped: 1 row(s) to " in line and
                                  "mapping version 2" in line for line in done)
    assert summary.startswith("redriven 3 of 3 dead letter(s) of orders (resolution marker at ")
    assert summary.endswith("; 0 still fail(s)")

    await wait_until(lambda: counts(rt, "orders") == {}, what="the count to drop to zero")
    assert counts(rt, "other") == {"map": 1}  # another pipeline's dead letters still count
    assert resolved(rt, "orders", "map") == 3
    assert (await dashpipe("dlq", "list", "--pipeline", "orders"))[:2] == (
        0, "no unresolved dead letters of pipeline orders\n")
    assert orjson.loads((await dashpipe("dlq", "list", "--pipeline", "orders", "--json"))[1]
                        )["dead_letters"] == []
    code, out, _ = await dashpipe("dlq", "show", "--pipeline", "orders", "--offset", first)
    shown = orjson.loads(out)
    assert shown["dead_letter"]["stage"] == "map" and shown["position"] == first
    assert shown["resolved"]["outcome"].startswith("mapped: 1 row(s)")

    # the fixed rows, with their original lineage and the new mapping version; row 0 of the
    # first payload was mapped the first time and is not written again
    got = [TransformedRecord.model_validate_json(r.value)
           for r in await read_topic(settings, rt.names.transformed, 4)]
    assert await topic_size(settings, rt.names.transformed) == 4
    assert sorted((r.lineage.raw_offset, r.lineage.row_index, r.fields["n"], r.mapping_version)
                  for r in got) == [(0, 0, 1, 1), (0, 1, 2, 2), (0, 2, 3, 2), (1, 0, 4, 2)]
    # nothing left to redrive
    assert (await dashpipe("dlq", "redrive", "--pipeline", "orders"))[:2] == (
        0, "no unresolved dead letters of pipeline orders\n")


async def test_rows_that_still_fail_are_reported_as_new_dead_letters(
        start_roles: Any, settings: Settings, dashpipe: Run) -> None:
    rt = await start_roles("web", "map")
    await rt.service.create(webhook_pipeline("bad", STRICT), ADMIN)
    await write_raw(settings, rt.names.raw, "bad",
                    [b"not json {", b'{"items": [{"x": 1}, {"m": 2}]}'])
    await wait_until(lambda: counts(rt, "bad") == {"map": 3}, what="three dead letters")
    await rt.service.patch("bad", {"data_mapping": FIXED}, ADMIN)
    before = orjson.loads((await dashpipe("dlq", "list", "--pipeline", "bad", "--json"))[1])
    old = {d["position"] for d in before["dead_letters"]}
    by_row = {(d["lineage"]["raw_offset"], d["lineage"]["row_index"]): d["position"]
              for d in before["dead_letters"]}

    # one of them only, first
    code, out, _ = await dashpipe("dlq", "redrive", "--pipeline", "bad", "--offset",
                                  by_row[(1, 1)])
    assert code == 0 and out.startswith(f"{by_row[(1, 1)]} map: mapped: 1 row(s)")
    assert (await dashpipe("dlq", "redrive", "--pipeline", "bad", "--offset",
                           by_row[(1, 1)]))[0] == 3  # resolved now: not found

    code, out, err = await dashpipe("dlq", "redrive", "--pipeline", "bad")
    assert code == 1, (out, err)  # something still fails
    *done, summary = out.splitlines()
    assert summary.endswith("; 2 still fail(s)") and "redriven 2 of 2" in summary
    assert any("fails again: payload is not valid JSON" in line for line in done)
    assert any("fails again: field 'n': required, but 'n | m' is missing" in line
               for line in done)
    await wait_until(lambda: resolved(rt, "bad", "map") == 3, what="the marker counted")
    assert counts(rt, "bad") == {"map": 2}  # the old ones resolved, the new ones count
    after = orjson.loads((await dashpipe("dlq", "list", "--pipeline", "bad", "--json"))[1])
    assert {d["position"] for d in after["dead_letters"]}.isdisjoint(old)
    assert sorted(d["mapping_version"] for d in after["dead_letters"]) == [2, 2]
    for line in done:  # each report names the new dead letter that replaces the old one
        assert any(f"(new dead letter {d['position']})" in line for d in after["dead_letters"])
    code, _, err = await dashpipe("dlq", "list", "--pipeline", "nope")
    assert (code, err) == (3, "dashpipe: error: pipeline 'nope' not found\n")


async def test_persist_and_deliver_dead_letters_are_sent_again(
        start_roles: Any, settings: Settings, db: asyncpg.Pool, dashpipe: Run) -> None:
    receiver = Receiver()
    receiver.answer = lambda r, b: web.Response(status=400, text="not now")
    runner = await serve(receiver)
    try:
        rt = await start_roles("web", "map", "persist", "deliver", delivery=FAST)
        await rt.service.create({**webhook_pipeline("stored"), "persist_data": True}, ADMIN)
        await rt.service.create({**webhook_pipeline("sent", {"fields": {"n": "n"}}),
                                 "sinks": [hook(receiver.url)]}, ADMIN)
        # jsonb refuses \u0000 in text: a persist dead letter; 400: a deliver dead letter
        await write_raw(settings, rt.names.raw, "stored", [b'{"s": "a\\u0000b"}'])
        await write_raw(settings, rt.names.raw, "sent", [b'{"n": 7}'])
        await wait_until(lambda: counts(rt, "stored") == {"persist": 1} and
                         counts(rt, "sent") == {"deliver": 1}, 30, "the dead letters")
        [first_try] = receiver.seen

        receiver.answer = lambda r, b: web.Response(status=204)
        code, out, _ = await dashpipe("dlq", "redrive", "--pipeline", "sent")
        assert code == 0 and ": retry due now for sink 0 in " in out
        await wait_until(lambda: len(receiver.seen) == 2, what="the delivery again")
        assert receiver.seen[1][1]["webhook-id"] == first_try[1]["webhook-id"]  # same id
        assert orjson.loads(receiver.seen[1][2])["fields"] == {"n": 7}
        await wait_until(lambda: counts(rt, "sent") == {}, what="the deliver count at zero")

        old = orjson.loads((await dashpipe("dlq", "list", "--pipeline", "stored", "--json"))[1])
        code, out, _ = await dashpipe("dlq", "redrive", "--pipeline", "stored",
                                      "--stage", "persist")
        assert code == 0 and ": re-sent to " in out
        # the database still refuses it: the persist role writes a new dead letter
        await wait_until(lambda: resolved(rt, "stored", "persist") == 1, what="the marker")
        new = await wait_until(
            lambda: _positions(dashpipe, "stored", exclude=old["dead_letters"]), 30,
            "the new persist dead letter")
        assert len(new) == 1 and counts(rt, "stored") == {"persist": 1}
        records = await read_topic(settings, rt.names.transformed, 3)
        stored = [r for r in records if dict(r.headers)["dashpipe-pipeline-id"] == b"stored"]
        assert len(stored) == 2 and stored[0].value == stored[1].value
        assert stored[0].key == stored[1].key and stored[0].headers == stored[1].headers
    finally:
        await runner.cleanup()


async def _positions(dashpipe: Run, pid: str, exclude: list[dict[str, Any]]) -> list[str]:
    listed = orjson.loads((await dashpipe("dlq", "list", "--pipeline", pid, "--json"))[1])
    skip = {d["position"] for d in exclude}
    return [d["position"] for d in listed["dead_letters"] if d["position"] not in skip]
