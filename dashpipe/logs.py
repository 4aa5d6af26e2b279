"""What a process writes to stderr: one handler on the root logger for the records of every
library (ours, Faust's and mode's, aiokafka's, aiohttp's, asyncpg's), as text for people or,
with `DASHPIPE_LOG_FORMAT=json`, as one JSON object per line for a log pipeline.

Both formats mask the process's secrets and never let a client's mistake or a normal start-up
race look like a failure: a malformed request or a client that went away is INFO without a
traceback (`ClientFaults`); the coordinator errors aiokafka logs and then retries are INFO
while the broker settles and WARNING after (`Settling`). Records name the role and the
pipeline they belong to when the code that logged knows them (`ROLE`, `PIPELINE_ID`, or
`extra={"pipeline_id": ...}`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, Literal, TextIO, TypeVar

import orjson
from aiohttp.http_exceptions import HttpProcessingError
from aiokafka.errors import KafkaError

LogFormat = Literal["text", "json"]

#: the role whose task logs (set by `in_role`); tasks a role starts inherit it
ROLE: ContextVar[str | None] = ContextVar("dashpipe_role", default=None)
#: the pipeline the code that logs works for (set by `for_pipeline`)
PIPELINE_ID: ContextVar[str | None] = ContextVar("dashpipe_pipeline_id", default=None)

TEXT_FORMAT = "[%(asctime)s] [%(process)s] [%(levelname)s] %(message)s"  # as mode's worker's
# of web process #i of `dashpipe run web --processes N`: the pid and the index, which names its
# metrics port (DASHPIPE_WEB_METRICS_PORT + i)
CHILD_TEXT_FORMAT = "[%(asctime)s] [%(process)s #{index}] [%(levelname)s] %(message)s"
SETTLE_SECONDS = 60.0  # how long after start retried coordinator errors are only INFO
MASK = "***"

COORDINATOR = "aiokafka.consumer.group_coordinator"
# its lines about a coordinator that moved or is not there yet and about a group that
# rebalances (processes joining at start); each is followed by a new lookup or a rejoin
COORDINATOR_MOVES = frozenset({
    "Marking the coordinator dead (node %s)for group %s.",
    "Heartbeat failed for group %s: coordinator (node %s) is either not started or not valid",
    "Heartbeat failed for group %s because it is rebalancing",
})

T = TypeVar("T")


async def in_role(role: str, main: Coroutine[Any, Any, T]) -> T:
    """Run a role's main coroutine as its own task does, its records naming the role."""
    ROLE.set(role)  # the task's own context: the process's other tasks keep theirs
    return await main


@contextlib.contextmanager
def for_pipeline(pipeline_id: str) -> Iterator[None]:
    """The records logged inside (and by the tasks started inside) name this pipeline."""
    token = PIPELINE_ID.set(pipeline_id)
    try:
        yield
    finally:
        PIPELINE_ID.reset(token)


class Masker:
    """Replaces every secret by `***` (the longest first: a password inside a URL that is
    itself a secret)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


def _message(record: logging.LogRecord) -> str:
    """The %-formatted message; a record whose arguments do not fit its format still gives a
    line (a formatter that raises makes `logging` print a multi-line report instead)."""
    try:
        return record.getMessage()
    except Exception:  # a bug at the call site, not a reason to lose the record
        return f"{record.msg!s} {record.args!r}"


class TextFormatter(logging.Formatter):
    """mode's worker format (what `dashpipe run` printed before), secrets masked, without
    Faust's terminal tables: a record stays on one line unless it carries a traceback."""

    def __init__(self, masker: Masker, process_index: int | None = None) -> None:
        super().__init__(TEXT_FORMAT if process_index is None
                         else CHILD_TEXT_FORMAT.format(index=process_index))
        self.masker = masker

    def formatMessage(self, record: logging.LogRecord) -> str:
        return self.masker(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return self.masker(super().formatException(ei))

    def format(self, record: logging.LogRecord) -> str:
        # formatted here: `Formatter.format` would raise on arguments that do not fit
        saved = record.msg, record.args
        record.msg, record.args = _message(record), None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = saved


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: `time` (RFC 3339, UTC), `level`, `logger`,
    `message`, `pid`; `roles` (the process's), `process_index` (`--processes`), `role`,
    `pipeline_id` and `trace_id` when known; `exc_type` and `exc` (the traceback as one
    string) for an exception."""

    def __init__(self, masker: Masker, roles: Sequence[str] = (),
                 process_index: int | None = None) -> None:
        super().__init__()
        self.masker = masker
        self.roles = list(roles)
        self.process_index = process_index

    def format(self, record: logging.LogRecord) -> str:
        mask = self.masker
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": mask(_message(record)),
            "pid": record.process,
        }
        if self.roles:
            doc["roles"] = self.roles
        if self.process_index is not None:
            doc["process_index"] = self.process_index
        for key, var in (("role", ROLE), ("pipeline_id", PIPELINE_ID)):
            value = getattr(record, key, None) or var.get()
            if value:
                doc[key] = str(value)
        trace = getattr(record, "trace_id", None)
        if trace:
            doc["trace_id"] = str(trace)
        if record.exc_info and record.exc_info[0] is not None:
            doc["exc_type"] = record.exc_info[0].__name__
            doc["exc"] = mask(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exc"] = mask(record.exc_text)
        if record.stack_info:
            doc["stack"] = mask(self.formatStack(record.stack_info))
        try:
            return orjson.dumps(doc).decode()
        except TypeError:  # a lone surrogate (bytes decoded with surrogateescape): spelled
            # out as `\udcff`, which every JSON parser reads, unlike a lone `\udcff` escape
            return orjson.dumps({k: v.encode("utf-8", "backslashreplace").decode()
                                 if isinstance(v, str) else v for k, v in doc.items()}).decode()


def _downgrade(record: logging.LogRecord, level: int) -> bool:
    """Lower a record's level; False (drop it) when its logger would not log that level."""
    record.levelno, record.levelname = level, logging.getLevelName(level)
    return logging.getLogger(record.name).isEnabledFor(level)


class ClientFaults(logging.Filter):
    """aiohttp's server logs a request it could not parse (a header over 8190 bytes, a
    broken request line) and a client that went away with ERROR and a traceback, so any
    client could write tracebacks into the log. They are the client's doing: INFO, one line,
    the error's type. aiohttp still answers the client (400) as before."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "aiohttp.server" or not record.exc_info:
            return True
        exc = record.exc_info[1]
        if isinstance(exc, HttpProcessingError):
            what = f"malformed request ({type(exc).__name__}, answered {exc.code})"
        elif isinstance(exc, ConnectionResetError):
            what = f"the client went away ({type(exc).__name__})"
        else:
            return True
        record.msg, record.args = "%s: %s", (_message(record), what)
        record.exc_info, record.exc_text = None, None
        return _downgrade(record, logging.INFO)


class Settling(logging.Filter):
    """aiokafka's group coordinator logs ERROR for a request that failed with a retriable
    error (`GroupCoordinatorNotAvailableError` while a fresh broker creates
    `__consumer_offsets`) and WARNING for a coordinator that moved or a group that
    rebalances, then retries. During the first `SETTLE_SECONDS` of the process these are
    INFO; later WARNING (a retry, not a failure, but one an operator may want to see).
    Errors it does not retry, and every other logger's (a fetch from a broker that is
    down), are untouched."""

    def __init__(self, started: float, settle_seconds: float = SETTLE_SECONDS) -> None:
        super().__init__()
        self.until = started + settle_seconds

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != COORDINATOR or record.levelno < logging.WARNING:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        retried = any(isinstance(a, KafkaError) and a.retriable for a in args) \
            or record.msg in COORDINATOR_MOVES
        if not retried:
            return True
        return _downgrade(record, logging.INFO if time.monotonic() < self.until
                          else min(record.levelno, logging.WARNING))


class Handler(logging.StreamHandler[TextIO]):
    """dashpipe's stderr handler (a class of its own, so `configure` finds and replaces it)."""


_started: float | None = None


def configure(fmt: LogFormat = "text", *, secrets: Iterable[str] = (),
              roles: Sequence[str] = (), level: int | str | None = None,
              process_index: int | None = None) -> None:
    """Install (or replace) dashpipe's handler on the root logger. Called by the CLI and
    again by `dashpipe run` once it knows its roles, its level and every secret (and, in a
    process started by `--processes`, its index). When the root logger already has handlers
    that are not ours, whoever installed them owns the output (a test runner, a program
    embedding dashpipe): they stay, nothing is added."""
    global _started
    if _started is None:
        _started = time.monotonic()
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, Handler)]
    if len(ours) < len(root.handlers):
        return
    for old in ours:
        root.removeHandler(old)
    masker = Masker(secrets)
    handler = Handler(sys.stderr)
    handler.setFormatter(JsonFormatter(masker, roles, process_index) if fmt == "json"
                         else TextFormatter(masker, process_index))
    handler.addFilter(ClientFaults())
    handler.addFilter(Settling(_started))
    root.addHandler(handler)
    if level is not None:
        root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)  # Python's warnings in the same format, not bare lines
