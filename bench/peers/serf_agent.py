"""HashiCorp serf agents run beside swimthor's (bench/netns_processes.py), read as membership
events in swimthor's own vocabulary.

One `SerfAgent` is one `serf agent` process (directly, or through a command that execs it,
such as `ip netns exec NS`, so the PID is serf's own): `-profile lan` (memberlist's
DefaultLANConfig: 1 s probes, 500 ms probe timeout, suspicion multiplier 4, Lifeguard's
confirmations and local health), `-log-level debug`, no encryption (swimthor runs
`--insecure` beside it), joined through a seed with `-retry-join` (bounded: one attempt a
second, at most `JOIN_RETRIES`), so an agent started while the seed is not listening yet waits
for it instead of exiting.

Timestamps: serf's log lines carry only a local time to the second (`2026/12/03 19:05:13
[INFO] serf: EventMemberFailed: h2 10.200.0.12`), too coarse for detection times of a few
seconds. So each agent's stdout (stderr joined to it) is read by a thread of its own that
stamps every line with `time.time()` the moment it arrives: the same wall clock swimthor's
JSON log timestamps use, late by the pipe and the thread's wake-up (well under a millisecond
on an idle machine, more on a busy one), never early. The lines are also written, with that
stamp, to the agent's log file.

What is read from the log (serf's own `serf:` lines and memberlist's, serf 0.8):

  `serf: EventMemberFailed: NAME ADDR`   this agent now holds NAME failed: "member failed"
                                        (logged by every agent, whether its own suspicion
                                        timed out or the death reached it by gossip)
  `serf: EventMemberJoin: NAME ADDR`     NAME alive here (first join or back): "member joined"
  `serf: EventMemberLeave: NAME ADDR`    NAME left gracefully: "member left"
  `memberlist: Suspect NAME has failed`  this agent's own probe of NAME failed: "member
                                        suspected" (suspicions learnt by gossip are not logged)
  `memberlist: Refuting a ...`           this agent refuted an accusation about itself

`members()` asks the agent itself (`serf members -format json` over its RPC port, which is on
127.0.0.1 of the agent's own network namespace), to confirm a state at the end of a phase.

The process itself (started, stopped by PID with a bounded grace, reaped, its CPU time) is
`_procs.AgentProcess`, the wrapper swimthor's agents use; what is serf's own here is the log
reader and the command line. Loaded where bench/ is on sys.path (bench/netns_processes.py puts
it and bench/peers there); mypy reads the wrapper as `bench._procs`.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from bench._procs import AgentProcess
else:
    from _procs import AgentProcess

__all__ = [
    "FAILED",
    "JOINED",
    "LEFT",
    "SERF_PORT",
    "SERF_RPC",
    "SUSPECTED",
    "SerfAgent",
    "SerfEvent",
    "parse_line",
    "serf_binary",
    "serf_version",
]

# swimthor's event names (swimthor/agent.py, bench/_harness.py), so one analysis reads both.
FAILED = "member failed"
SUSPECTED = "member suspected"
JOINED = "member joined"
LEFT = "member left"
REFUTED = "refuted"  # about the observer itself

SERF_PORT = 7947  # beside swimthor's 7946 on the same address
SERF_RPC = "127.0.0.1:7373"  # the namespace's own loopback: one per host namespace
JOIN_RETRIES = 60
CMD_TIMEOUT = 10.0
READER_JOIN_TIMEOUT = 5.0

_EVENT = re.compile(r"\bserf: EventMember(Join|Failed|Leave): (\S+)")
_SUSPECT = re.compile(r"\bmemberlist: Suspect (\S+) has failed")
_REFUTE = re.compile(r"\bmemberlist: Refuting an? \w+ message")
_NAMES = {"Join": JOINED, "Failed": FAILED, "Leave": LEFT}


@dataclass(frozen=True, slots=True)
class SerfEvent:
    """One line of an agent's log that changes what it holds: `observer` saw `member` become
    `event` (swimthor's names), at `t` (wall clock, when the line arrived)."""

    observer: str
    event: str
    member: str
    t: float


def parse_line(observer: str, line: str, t: float) -> SerfEvent | None:
    """The membership event in one serf log line, or None."""
    m = _EVENT.search(line)
    if m:
        return SerfEvent(observer, _NAMES[m.group(1)], m.group(2), t)
    m = _SUSPECT.search(line)
    if m:
        return SerfEvent(observer, SUSPECTED, m.group(1), t)
    if _REFUTE.search(line):
        return SerfEvent(observer, REFUTED, observer, t)
    return None


def serf_binary() -> str | None:
    """The `serf` executable on PATH, or None."""
    return shutil.which("serf")


def serf_version(exe: str) -> str:
    """`serf version`'s first line (e.g. "Serf v0.8.2-dev"), or "" if it does not answer."""
    try:
        out = subprocess.run(
            [exe, "version"], capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if lines else ""


class SerfAgent(AgentProcess):
    """One `serf agent` process, killed by PID; its log read by its own thread (see the module
    docstring for what that thread stamps)."""

    def __init__(
        self,
        name: str,
        host: str,
        log_path: Path,
        *,
        exe: str,
        seed: str | None = None,
        port: int = SERF_PORT,
        rpc: str = SERF_RPC,
        profile: str = "lan",
        prefix: Sequence[str] = (),
    ) -> None:
        self.node = name
        self.addr = f"{host}:{port}"
        self.rpc = rpc
        self.exe = exe
        self.prefix = list(prefix)
        argv = [
            *self.prefix,
            exe,
            "agent",
            "-node",
            name,
            "-bind",
            self.addr,
            "-rpc-addr",
            rpc,
            "-profile",
            profile,
            "-log-level",
            "debug",
        ]
        if seed:
            argv += ["-retry-join", seed, "-retry-interval", "1s"]
            argv += ["-retry-max", str(JOIN_RETRIES)]
        super().__init__(argv, log_path)
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._events: list[SerfEvent] = []
        self._lines = 0

    @property
    def name(self) -> str:
        return self.node

    def spawn(self) -> None:
        """Start the agent and its reader thread; returns at once (serf has no control
        socket to wait on: `members()` answers once it is up)."""
        if self.running:
            raise RuntimeError(f"serf {self.name} is running already")
        self._join_reader()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert self.proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read,
            args=(self.proc.stdout,),
            name=f"serf-{self.name}-log",
            daemon=True,
        )
        self._reader.start()

    def start(self, ready_timeout: float | None = None) -> None:
        """Start the agent; returns at once."""
        self.spawn()

    def _read(self, stream: IO[bytes]) -> None:
        # Ends at EOF, when the process (the only writer) has exited.
        with stream, open(self.log, "ab") as log:
            for raw in stream:
                t = time.time()
                line = raw.decode(errors="replace").rstrip("\n")
                log.write(f"{t:.6f} {line}\n".encode())
                log.flush()
                ev = parse_line(self.name, line, t)
                with self._lock:
                    self._lines += 1
                    if ev is not None:
                        self._events.append(ev)

    def new_events(self) -> list[SerfEvent]:
        """The events read since the last call."""
        with self._lock:
            out, self._events = self._events, []
        return out

    @property
    def lines_read(self) -> int:
        with self._lock:
            return self._lines

    def members(self) -> dict[str, str]:
        """Name -> status ("alive", "failed", "left", ...) as this agent holds them; raises
        OSError, ValueError or subprocess errors while it does not answer."""
        argv = [*self.prefix, self.exe, "members", "-rpc-addr", self.rpc, "-format", "json"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False)
        if out.returncode != 0:
            raise OSError(f"serf members on {self.name}: {out.stderr.strip() or out.returncode}")
        return {str(m["name"]): str(m["status"]) for m in json.loads(out.stdout)["members"]}

    def stop(self, sig: int = signal.SIGTERM, grace: float = 5.0) -> int | None:
        """`AgentProcess.stop` (by PID, SIGKILL after `grace`, reaped), then its log read to
        the end."""
        code = super().stop(sig, grace)
        self._join_reader()
        return code

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(READER_JOIN_TIMEOUT)
            self._reader = None
