"""One exception root. `retriable` tells a caller whether trying again can help."""

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
