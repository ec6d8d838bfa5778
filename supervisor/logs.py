"""structlog, configured once at start: JSON lines to stdout unless on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def configure(level: str = "info", *, json: bool | None = None, sink: TextIO | None = None) -> None:
    """Set up structlog for the whole process. ``json=None`` picks JSON unless the sink (stdout
    by default) is a terminal."""
    out = sink or sys.stdout
    if json is None:
        json = not out.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )


def get(name: str, **bound: Any) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name, **bound)
    return logger


class BurstLog:
    """Logs the first of a burst of similar problems, then only counts until it goes quiet.

    A child that sends garbage at 100,000 lines a second must not turn the log into the
    bottleneck; the metric counts every line, the log says it once per ``quiet_s``.
    """

    def __init__(self, quiet_s: float = 5.0) -> None:
        self.quiet_s = quiet_s
        self._last: float = float("-inf")
        self.suppressed = 0

    def should_log(self, now: float) -> int | None:
        """None to stay silent, else how many were suppressed since the last line."""
        if now - self._last < self.quiet_s:
            self.suppressed += 1
            return None
        self._last = now
        n, self.suppressed = self.suppressed, 0
        return n
