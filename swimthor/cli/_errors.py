"""How the command line fails: the two kinds of error, the one line on stderr and the exit
status that any failure becomes (`_report`), and `join`'s failed bind as one line
(`_bind_error`).

Exit status: 0 done, 1 the command failed, 2 the command line or config file is wrong, 130
interrupted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys

from swimthor.config import AgentConfig, ConfigError, format_hostport
from swimthor.keyring import KeyringFileError

PROG = "swimthor"


class UsageError(Exception):
    """The command line or a file it names is wrong: one line on stderr, exit status 2."""


class CommandError(Exception):
    """The command could not be carried out: one line on stderr, exit status 1."""


def _bind_error(e: OSError, cfg: AgentConfig) -> Exception:
    """A one-line error for a failed bind (the runtime's BindError already is one)."""
    if e.strerror is None:
        return e
    if e.errno == errno.EADDRINUSE:
        return CommandError(f"cannot bind {format_hostport(cfg.bind)}: address already in use")
    if e.errno == errno.EADDRNOTAVAIL:
        return CommandError(f"cannot bind {format_hostport(cfg.bind)}: address not available")
    return e


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in a (nested) group that is not a cancellation."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt):
            return leaf
    for leaf in leaves:
        if type(leaf).__name__ != "Cancelled":
            return leaf
    return leaves[0] if leaves else group


def _runtime_errors() -> tuple[type[BaseException], ...]:
    """Errors reported as one line with exit status 1 (imported here, on the error path, so
    that a command that needs no agent does not load the control and gossip clients)."""
    from swimthor.control import ControlError
    from swimthor.membership import QueryError as CoreQueryError
    from swimthor.membership.runtime import QueryError

    return (
        CommandError,
        KeyringFileError,
        OSError,
        ValueError,
        ControlError,
        QueryError,
        CoreQueryError,
    )


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _report(exc: BaseException) -> int:
    """Exit status for `exc` after writing its one line to stderr; re-raise what is a bug."""
    if isinstance(exc, BaseExceptionGroup):
        exc = _first_leaf(exc)
    if isinstance(exc, SystemExit):  # --help
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, BrokenPipeError):  # `swimthor members | head`: the reader is gone
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1
    if isinstance(exc, UsageError | ConfigError):
        status = 2
    elif isinstance(exc, _runtime_errors()):
        status = 1
    else:
        raise exc
    sys.stderr.write(f"{PROG}: error: {_one_line(exc)}\n")
    return status
