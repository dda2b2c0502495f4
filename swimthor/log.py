"""structlog configuration, done once by the entry point (structlog's logging best practices).

Library modules only call ``structlog.get_logger()``. `configure()` picks the console renderer
on a terminal and JSON lines otherwise, filters by level, and merges context variables so that
`bind_node(name)` at an agent's start tags every line its tasks write.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

__all__ = ["FORMATS", "LEVELS", "bind_node", "configure"]

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS = ("auto", "console", "json")


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of each write, so that a caller (or a
    test harness) that swaps stderr later does not leave loggers writing to a closed file."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(fmt: str = "auto", level: str = "info", *, stream: TextIO | None = None) -> None:
    """Configure structlog for the whole process; log lines go to `stream` (stderr).

    `fmt`: "console" (colored key=value for people), "json" (one object a line for
    collectors) or "auto" (console on a terminal, JSON otherwise). ValueError on an unknown
    format or level, naming the allowed ones.
    """
    lvl = LEVELS.get(level.lower()) if isinstance(level, str) else None
    if lvl is None:
        raise ValueError(f"unknown log level {level!r} (choose from {', '.join(LEVELS)})")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (choose from {', '.join(FORMATS)})")
    out: Any = stream if stream is not None else _CurrentStderr()
    isatty = getattr(out, "isatty", None)
    tty = bool(isatty is not None and isatty())
    if fmt == "auto":
        fmt = "console" if tty else "json"

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.StackInfoRenderer(),
    ]
    processors: list[Any]
    if fmt == "console":
        processors = [
            *shared,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.set_exc_info,
            structlog.dev.ConsoleRenderer(colors=tty),
        ]
    else:
        processors = [
            *shared,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        context_class=dict,
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )


def bind_node(name: str) -> None:
    """Tag every log line written from this context (and tasks started from it) with
    ``node=name``. Trio tasks copy the context of the task that starts them."""
    structlog.contextvars.bind_contextvars(node=name)
