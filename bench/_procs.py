"""Waiting on a condition, bounded: the one wait loop the tests and the benchmarks share.

`wait_until(cond, timeout, what)` polls `cond()` until it holds and returns the seconds that
took; after `timeout` seconds it raises `WaitTimeout` naming `what` and the last state seen
(the last value `cond` returned, or the last transient error it raised). A test waits on a
condition this way, never on a sleep.

Imported as `_procs` by the scripts run as `python bench/NAME.py` (bench/ is on sys.path) and
as `bench._procs` from the repository root (the tests, `python -m bench.sip.bench`); it needs
nothing but the standard library and swimthor.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from swimthor.control import ControlError

__all__ = ["TRANSIENT", "ProcessExited", "WaitTimeout", "wait_until"]

# What a condition may raise while the thing it looks at is not ready yet: an assertion about
# an answer, a socket or file not there yet, an answer not parsed or without the key asked
# for, a CLI run that timed out, an agent not listening on its control socket yet.
TRANSIENT: tuple[type[BaseException], ...] = (
    AssertionError,
    OSError,
    ValueError,
    KeyError,
    subprocess.SubprocessError,
    ControlError,
)


class WaitTimeout(AssertionError):
    """A condition did not hold in time (an AssertionError: in a test, a failed check)."""


class ProcessExited(RuntimeError):
    """A process a wait depends on ended; raised from a condition, it ends the wait at once
    (it is not transient)."""


def wait_until(
    cond: Callable[[], object],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    transient: tuple[type[BaseException], ...] = TRANSIENT,
) -> float:
    """Poll `cond()` every `interval` seconds until it returns something true; return the
    seconds it took. An exception in `transient` counts as "not yet" (and is reported if the
    wait times out); any other ends the wait. `cond` is tried at least once, and once more at
    the deadline."""
    start = time.monotonic()
    deadline = start + timeout
    last = "never checked"
    while True:
        try:
            value = cond()
        except transient as e:
            last = f"{type(e).__name__}: {e}"
        else:
            if value:
                return time.monotonic() - start
            last = f"returned {value!r}"
        now = time.monotonic()
        if now >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what} (last: {last})")
        time.sleep(min(interval, deadline - now))  # the wait's poll interval, bounded
