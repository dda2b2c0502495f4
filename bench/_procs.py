"""Waiting on a condition and running `swimthor join`: the one wait loop and the one agent
process wrapper the tests and the benchmarks share.

`wait_until(cond, timeout, what)` polls `cond()` until it holds and returns the seconds that
took; after `timeout` seconds it raises `WaitTimeout` naming `what` and the last state seen
(the last value `cond` returned, or the last transient error it raised). A test waits on a
condition this way, never on a sleep.

`AgentProcess` is one `swimthor join` process (directly, or through a command that execs it,
such as `ip netns exec NS`): started with its stderr appended to a log file, ready once its
control socket answers (the agent binds its gossip, SIP and DNS sockets before it serves
that socket), stopped by PID (the signal, then SIGKILL after a bounded grace), reaped.

Imported as `_procs` by the scripts run as `python bench/NAME.py` (bench/ is on sys.path) and
as `bench._procs` from the repository root (the tests, `python -m bench.sip.bench`); it needs
nothing but the standard library and swimthor.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from swimthor.control import ControlError, call

__all__ = [
    "READY_TIMEOUT",
    "TRANSIENT",
    "AgentProcess",
    "ProcessExited",
    "WaitTimeout",
    "stop_process",
    "wait_until",
]

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


class ProcessExited(Exception):
    """A process a wait depends on ended; raised from a condition, it ends the wait at once
    (it is none of the transient errors)."""


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


async def trio_wait_until(cond: Callable[[], object], *, interval: float = 0.01) -> None:
    """`wait_until` inside a trio run: check `cond()` every `interval` seconds of trio's clock
    until it holds. Bounded by the caller's cancel scope (a test's `fail_after`), so that under
    `autojump_clock` the wait costs virtual time only."""
    import trio

    while not cond():
        await trio.sleep(interval)  # the wait's poll interval, trio's clock


# An agent is up in about a second on an idle machine (Python's start and swimthor's imports);
# a busy shared one can take many times that.
READY_TIMEOUT = 30.0

# How an agent that could not bind an address it was given says so (swimthor.sockets,
# swimthor.agent, the CLI's errors); not "name ... in use by a live member".
_ADDRESS_IN_USE = re.compile(rb"address[^\n]* in use")


class AgentProcess:
    """One agent process, killed by PID; `argv` may be rewritten between starts.

    `control`: the agent's control socket; `wait_ready` waits until it answers `status`.
    `on_address_in_use`: called when the agent exits at start because an address it was given
    is in use (a port picked as free that another process took meanwhile); it rewrites `argv`
    with fresh ports and `wait_ready` starts the agent again, at most three times.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        control: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        new_session: bool = False,
        on_address_in_use: Callable[[], None] | None = None,
    ) -> None:
        # The caller's list itself, when it is one: `on_address_in_use` may rewrite it.
        self.argv = argv if isinstance(argv, list) else list(argv)
        self.log = log
        self.control = control
        self.env = env
        self.cwd = cwd
        self.new_session = new_session
        self.on_address_in_use = on_address_in_use
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where this start's lines begin in the log

    @property
    def name(self) -> str:
        """The agent's --name (for messages), else the command."""
        if "--name" in self.argv[:-1]:
            return self.argv[self.argv.index("--name") + 1]
        return self.argv[0]

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def spawn(self) -> None:
        """Start the process and return at once (no readiness wait)."""
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=subprocess.DEVNULL,
                stderr=out,
                env=None if self.env is None else dict(self.env),
                cwd=self.cwd,
                start_new_session=self.new_session,
            )

    def start(self, ready_timeout: float | None = READY_TIMEOUT) -> None:
        """Start the agent; unless `ready_timeout` is None, return once it is ready."""
        self.spawn()
        if ready_timeout is not None:
            self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until the control socket answers; ProcessExited (with the log of this start) if
        the agent ends first, unless it lost an address and `on_address_in_use` gives it
        new ones."""
        assert self.control is not None, f"{self.name}: readiness needs its control socket"
        control = self.control
        retries = 3

        def ready() -> bool:
            nonlocal retries
            if self.proc is None or self.proc.poll() is not None:
                lines = self.log_since_start()
                if self.on_address_in_use and retries and _ADDRESS_IN_USE.search(lines.encode()):
                    retries -= 1
                    self.on_address_in_use()
                    self.spawn()
                    return False
                raise ProcessExited(
                    f"{self.name} exited ({self.returncode}) before it was ready: {lines[-2000:]}"
                )
            call(control, "status", timeout=2.0)
            return True

        wait_until(ready, timeout, f"{self.name} to answer on {control}", transient=TRANSIENT)

    def send(self, sig: int) -> None:
        """Send `sig` to the PID if the process is still running."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, grace: float = 5.0) -> int | None:
        """`stop_process`: `sig`, SIGKILL after `grace` seconds, reaped; the exit status."""
        return None if self.proc is None else stop_process(self.proc, sig, grace)

    def kill(self) -> int | None:
        """SIGKILL, reaped."""
        return self.stop(signal.SIGKILL)

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used (/proc/PID/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_since_start(self) -> str:
        """What the agent has logged since it was last started."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self._log_start)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""


def stop_process(
    proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 5.0
) -> int | None:
    """Stop any process by PID: send `sig` (after SIGCONT, so a paused process can act on it),
    wait up to `grace` seconds for it to end, then SIGKILL it; reaped either way (bounded).
    Its exit status (None if it outlived even SIGKILL's 10 s)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if sig != signal.SIGKILL:
                os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    return proc.poll()
