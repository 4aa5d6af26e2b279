"""One exception root for every error dashpipe raises on purpose; `retriable` tells whoever
decides on a retry whether trying again can help.

    DashpipeError
    ├── ConfigError          a setting or definition is wrong; the message names the field
    ├── Unavailable          Kafka or PostgreSQL cannot be reached now (retriable, retry_after)
    ├── ToolMissing          a program the local stack needs is not installed
    ├── StackError           a local service did not start or stop as asked
    ├── InvalidJson          a body is not the JSON it should be (dashpipe.jsonio)
    ├── SignatureError       a webhook signature is missing, stale or wrong (dashpipe.signatures)
    ├── NotFound, Conflict, Invalid   pipeline operations (dashpipe.pipelines)
    ├── SourceError          a poll could not read its API this time (retriable; agents.ingest)
    └── RoleFailed, GroupActive, FileError   the command line (dashpipe.cli)
"""

from __future__ import annotations


class DashpipeError(Exception):
    retriable = False


class ConfigError(DashpipeError):
    """A setting or a definition is wrong; the message names the field."""


class ToolMissing(DashpipeError):
    """A program the local stack needs is not installed."""

    def __init__(self, tool: str, hint: str) -> None:
        super().__init__(f"{tool} not found: {hint}")
        self.tool = tool
        self.hint = hint


class StackError(DashpipeError):
    """A local service did not start or stop as asked."""


class Unavailable(DashpipeError):
    """A service (Kafka, PostgreSQL) cannot be reached right now."""

    retriable = True

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
