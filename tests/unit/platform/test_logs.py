"""The log formats and filters of `dashpipe.logs`: one JSON object per line with its fields,
an exception as one field, secrets masked in both formats, client faults and aiokafka's
retried start-up errors lowered while real errors keep their level."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from aiohttp.http_exceptions import LineTooLong
from aiokafka.errors import (
    GroupCoordinatorNotAvailableError,
    NodeNotReadyError,
    UnsupportedVersionError,
)

from dashpipe import logs

PASSWORD = "s3cr3t-pw"
URL = f"postgresql://dashpipe:{PASSWORD}@db:5432/dashpipe"
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@contextmanager
def captured(name: str, fmt: logs.LogFormat = "json", roles: tuple[str, ...] = (),
             started: float | None = None) -> Iterator[io.StringIO]:
    """Records of logger `name` (at INFO) through dashpipe's handler, into a string."""
    out = io.StringIO()
    handler = logs.Handler(out)
    masker = logs.Masker([URL, PASSWORD])
    handler.setFormatter(logs.JsonFormatter(masker, roles) if fmt == "json"
                         else logs.TextFormatter(masker))
    handler.addFilter(logs.ClientFaults())
    handler.addFilter(logs.Settling(time.monotonic() if started is None else started))
    logger = logging.getLogger(name)
    saved = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    text = out.getvalue()
    assert text.endswith("\n")
    return [orjson.loads(line) for line in text.splitlines()]


def boom() -> None:
    raise ValueError(f"cannot connect to {URL}\nsecond line")


def test_a_web_process_of_processes_names_its_index_in_both_formats() -> None:
    record = logging.LogRecord("agents.web.server", logging.INFO, __file__, 1,
                               "web listening on %s", ("http://127.0.0.1:8080",), None)
    masker = logs.Masker()
    doc = orjson.loads(logs.JsonFormatter(masker, ["web"], process_index=1).format(record))
    assert (doc["roles"], doc["process_index"]) == (["web"], 1)
    assert "process_index" not in orjson.loads(logs.JsonFormatter(masker).format(record))
    text = logs.TextFormatter(masker, process_index=1).format(record)
    assert f"] [{record.process} #1] [INFO] web listening on http://127.0.0.1:8080" in text
    assert f"] [{record.process}] [INFO] web" in logs.TextFormatter(masker).format(record)


def test_a_record_is_one_json_object_with_its_fields() -> None:
    with captured("dashpipe.test", roles=("map", "persist")) as out:
        logging.getLogger("dashpipe.test").warning("poll of %s failed (%d in a row)", "p1", 3)
    [doc] = lines(out)
    assert RFC3339_UTC.match(doc.pop("time"))
    assert doc == {"level": "WARNING", "logger": "dashpipe.test",
                   "message": "poll of p1 failed (3 in a row)", "pid": doc["pid"],
                   "roles": ["map", "persist"]}


async def test_role_and_pipeline_come_from_the_task_or_the_call() -> None:
    log = logging.getLogger("dashpipe.test")

    async def role_main() -> None:
        log.info("in the role")
        with logs.for_pipeline("p7"):
            log.info("for a pipeline")
        log.info("explicit", extra={"pipeline_id": "p8", "trace_id": "4bf92f35"})

    with captured("dashpipe.test") as out:
        await asyncio.create_task(logs.in_role("deliver", role_main()))
        log.info("outside")
    got = [{k: d.get(k) for k in ("message", "role", "pipeline_id", "trace_id")}
           for d in lines(out)]
    assert got == [
        {"message": "in the role", "role": "deliver", "pipeline_id": None, "trace_id": None},
        {"message": "for a pipeline", "role": "deliver", "pipeline_id": "p7", "trace_id": None},
        {"message": "explicit", "role": "deliver", "pipeline_id": "p8", "trace_id": "4bf92f35"},
        {"message": "outside", "role": None, "pipeline_id": None, "trace_id": None}]


def test_an_exception_is_one_field_and_secrets_are_masked() -> None:
    with captured("asyncpg.test") as out:
        try:
            boom()
        except ValueError:
            logging.getLogger("asyncpg.test").exception("connect to %s failed", URL)
    text = out.getvalue()
    assert text.count("\n") == 1 and PASSWORD not in text
    [doc] = lines(out)
    assert doc["level"] == "ERROR" and doc["message"] == "connect to *** failed"
    assert doc["exc_type"] == "ValueError"
    assert doc["exc"].startswith("Traceback (most recent call last):\n")
    assert doc["exc"].endswith("ValueError: cannot connect to ***\nsecond line")


def test_the_text_format_masks_too_and_keeps_the_workers_shape() -> None:
    with captured("aiokafka.test", fmt="text") as out:
        logging.getLogger("aiokafka.test").info("Updating subscribed topics to: %s",
                                                frozenset({"t.raw"}))
        try:
            boom()
        except ValueError:
            logging.getLogger("aiokafka.test").exception("role persist failed: %s", URL)
    text = out.getvalue()
    assert PASSWORD not in text
    first, second = text.splitlines()[:2]
    # one line, not Faust's terminal table of the topics
    assert re.match(r"^\[[\d:, -]+\] \[\d+\] \[INFO\] Updating subscribed topics to: "
                    r"frozenset\(\{'t.raw'\}\)$", first), first
    assert re.search(r"\[ERROR\] role persist failed: \*\*\*$", second), second
    assert "Traceback" in text


def test_a_record_whose_arguments_do_not_fit_still_gives_one_line() -> None:
    with captured("dashpipe.test") as out:
        logging.getLogger("dashpipe.test").info("%d rows", "many")
    [doc] = lines(out)
    assert doc["message"] == "%d rows ('many',)"


def test_a_lone_surrogate_is_escaped_not_lost() -> None:
    with captured("dashpipe.test") as out:
        logging.getLogger("dashpipe.test").info("header %s",
                                                b"\xff".decode(errors="surrogateescape"))
    [doc] = lines(out)
    assert doc["message"] == "header \\udcff"


def test_a_malformed_request_is_info_without_a_traceback() -> None:
    with captured("aiohttp.server") as out:
        try:
            raise LineTooLong(b"a" * 200, "8190")
        except LineTooLong as exc:
            logging.getLogger("aiohttp.server").exception(
                "Error handling request from %s", "127.0.0.1", exc_info=exc)
        try:
            raise ConnectionResetError("Cannot write to closing transport")
        except ConnectionResetError as exc:
            logging.getLogger("aiohttp.server").exception(
                "Error handling request from %s", "127.0.0.1", exc_info=exc)
        try:
            boom()
        except ValueError as exc:  # a bug of ours stays an error, with its traceback
            logging.getLogger("aiohttp.server").exception("Error handling request",
                                                          exc_info=exc)
    malformed, gone, bug = lines(out)
    assert malformed == {**malformed, "level": "INFO", "message": "Error handling request "
                         "from 127.0.0.1: malformed request (LineTooLong, answered 400)"}
    assert "exc" not in malformed and "aaaa" not in malformed["message"]
    assert gone["level"] == "INFO" and "exc" not in gone
    assert gone["message"].endswith("the client went away (ConnectionResetError)")
    assert bug["level"] == "ERROR" and bug["exc_type"] == "ValueError"


def test_a_lowered_record_is_dropped_where_info_is_not_logged() -> None:
    with captured("aiohttp.server") as out:
        logging.getLogger("aiohttp.server").setLevel(logging.WARNING)
        try:
            raise LineTooLong(b"a", "8190")
        except LineTooLong as exc:
            logging.getLogger("aiohttp.server").error("Error handling request", exc_info=exc)
    assert out.getvalue() == ""


@pytest.mark.parametrize(("since_start", "level"), [(0.0, "INFO"), (600.0, "WARNING")])
def test_retried_coordinator_errors_are_info_while_the_broker_settles(
        since_start: float, level: str) -> None:
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    with captured(coordinator.name, started=time.monotonic() - since_start) as out:
        coordinator.error("Group Coordinator Request failed: %s",
                          GroupCoordinatorNotAvailableError())
        coordinator.warning("Marking the coordinator dead (node %s)for group %s.", 1, "g")
        coordinator.error("Unexpected error in join group '%s' response: %s", "g",
                          UnsupportedVersionError())  # not retried: stays an error
    retried, moved, fatal = lines(out)
    assert retried["level"] == level and "GroupCoordinatorNotAvailableError" in \
        retried["message"]
    assert moved["level"] == level
    assert fatal["level"] == "ERROR"


def test_a_broker_that_is_down_stays_an_error_while_settling() -> None:
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    with captured(fetcher.name) as out:
        fetcher.error("Failed fetch messages from %s: %s", 1, NodeNotReadyError())
    assert lines(out)[0]["level"] == "ERROR"


def test_configure_replaces_its_own_handler_and_leaves_a_hosts_alone() -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        root.handlers = []
        logs.configure("json", secrets=[PASSWORD], level="warn")
        logs.configure("text", roles=["web"], level=logging.INFO)
        [handler] = root.handlers
        assert isinstance(handler, logs.Handler)
        assert isinstance(handler.formatter, logs.TextFormatter)
        assert root.level == logging.INFO
        host = logging.NullHandler()
        root.handlers = [host]
        logs.configure("json")
        assert root.handlers == [host]
    finally:
        root.handlers = saved
        root.setLevel(level)
