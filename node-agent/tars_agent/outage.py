"""Logs a failure that repeats on every retry once per change of state, not once per retry.

An agent retries the API server every couple of seconds; while it is unreachable, a traceback per
attempt buried everything else in the log. :class:`OutageLog` writes one WARNING line when a loop
starts failing (or fails differently), one INFO line when it works again, and keeps the traceback
for DEBUG.
"""

from __future__ import annotations

import logging


def failure_kind(exc: BaseException) -> str:
    """What a failure is, for telling one outage from another: the type, and an HTTP status if any."""
    status = getattr(exc, "status", None)
    return f"{type(exc).__name__} {status}" if status is not None else type(exc).__name__


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}"


class OutageLog:
    def __init__(self, what: str, logger: logging.Logger) -> None:
        self.what = what
        self.log = logger
        self.failures = 0
        self._kind: str | None = None

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        kind = failure_kind(exc)
        if kind != self._kind:
            self._kind = kind
            self.log.warning("%s failed: %s (retrying; logged again when this changes)", self.what, one_line(exc))
        self.log.debug("%s failed (attempt %d)", self.what, self.failures, exc_info=exc)

    def succeeded(self) -> None:
        if self.failures:
            self.log.info("%s works again after %d failed attempts", self.what, self.failures)
        self.failures = 0
        self._kind = None
