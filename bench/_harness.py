"""What the real-process benchmarks share (bench/membership_processes.py, bench/netns_processes.py,
bench/peers/run.py): a free loopback port for UDP and TCP, a nearest-rank percentile, one trial's
record, and a `swimthor join` agent process (bench/_procs.py's, as the tests run it) whose JSON
log lines are read as membership events.

Times of events come from the agents' own log timestamps (wall clock), so nothing polls an
agent while it works; the control socket is asked only to confirm a state at the end of a
phase."""

from __future__ import annotations

import contextlib
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swimthor.control import call
from swimthor.ports import free_ports

# The wait loop and the process wrapper (the benchmarks take them from here), under the name
# this module was imported by: as bench._harness from the repository root, as _harness where
# bench/ is on sys.path. (mypy reads the first, the name it gives bench/_procs.py.)
if TYPE_CHECKING or __package__ == "bench":
    from bench._procs import AgentProcess, WaitTimeout, wait_until
else:
    from _procs import AgentProcess, WaitTimeout, wait_until

# The membership events an agent logs (swimthor/agent.py, `_log_event`).
FAILED = "member failed"
SUSPECTED = "member suspected"
LEFT = "member left"
RECOVERED = "member recovered"
JOINED = "member joined"
BACK = (RECOVERED, JOINED)
STATE_EVENTS = (FAILED, SUSPECTED, LEFT, RECOVERED, JOINED)


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (gossip binds both), reserved for this
    process (`swimthor.ports`)."""
    return free_ports(1)[0]


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no samples (JSON null, not NaN)."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def summary(values: Sequence[float | None]) -> dict[str, float | None]:
    """p50, p99 and max of the samples that are there (None ones are left out)."""
    xs = [float(v) for v in values if v is not None]
    return {"p50": pct(xs, 0.5), "p99": pct(xs, 0.99), "max": max(xs, default=None)}


def record_trial(
    trials: list[dict[str, Any]],
    victim: str,
    seen: dict[str, float],
    survivors: int,
    label: str = "kill -9",
) -> dict[str, Any]:
    """Append one trial (per-survivor detection times in `seen`), print its line, return it."""
    each = sorted(seen.values())
    trial: dict[str, Any] = {
        "victim": victim,
        "first_s": each[0] if each else None,
        "all_s": each[-1] if len(each) == survivors else None,
        "each_s": each,
    }
    trials.append(trial)
    n = len(trials)
    print(
        f"trial {n}: {label} {victim}: first {each[0]:.3f}s, "
        f"all {len(each)}/{survivors} by {each[-1]:.3f}s"
        if each
        else f"trial {n}: {label} {victim}: not detected",
        flush=True,
    )
    return trial


# ---------------------------------------------------------------- agents and their logs


def event_time(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True, slots=True)
class Ev:
    """One membership event as an agent logged it: `observer` saw `member` become `event`."""

    observer: str
    event: str
    member: str
    t: float  # wall clock, from the log line


class Node:
    """One `swimthor join` process. `prefix` runs it through another command (for a network
    namespace: `ip netns exec NS`, which execs, so the PID is the agent's own)."""

    def __init__(
        self,
        name: str,
        port: int,
        workdir: Path,
        profile: str,
        seed: str | None,
        *,
        host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
    ):
        self.name = name
        self.port = port
        self.host = host
        self.sock = str(workdir / f"{name}.sock")
        self.log_path = workdir / f"{name}.log"
        self.args = [
            *prefix,
            sys.executable,
            "-m",
            "swimthor",
            "join",
            "--name",
            name,
            "--bind",
            f"{host}:{port}",
            "--profile",
            profile,
            "--insecure",
            "--control",
            self.sock,
            "--data-dir",
            str(workdir / name),
            "--log-format",
            "json",
        ]
        if seed:
            self.args.append(seed)
        self.agent = AgentProcess(self.args, self.log_path, self.sock)
        self.log_offset = 0

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.agent.proc

    def start(self) -> None:
        """Start the agent and return at once (its readiness shows in its events)."""
        self.agent.spawn()

    @property
    def pid(self) -> int:
        return self.agent.pid

    def members(self) -> list[dict[str, Any]]:
        return list(call(self.sock, "members", timeout=2.0))

    def status(self) -> dict[str, Any]:
        return dict(call(self.sock, "status", timeout=2.0))

    def cpu_seconds(self) -> float:
        return self.agent.cpu_seconds()

    def new_log_lines(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                data = f.read()
        except FileNotFoundError:
            return out
        end = data.rfind(b"\n") + 1
        self.log_offset += end
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def new_events(self) -> list[Ev]:
        out = []
        for line in self.new_log_lines():
            if line.get("event") in STATE_EVENTS:
                who = line.get("member") or line.get("name")
                with contextlib.suppress(KeyError, ValueError):
                    out.append(Ev(self.name, str(line["event"]), str(who), event_time(line)))
        return out

    def send(self, sig: int) -> None:
        self.agent.send(sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """`sig` by PID (SIGCONT first, so a paused agent acts on it), SIGKILL after 5 s."""
        self.agent.stop(sig, grace=5.0)


def watch(
    nodes: Iterable[Node],
    until: Callable[[list[Ev]], bool],
    timeout: float,
    into: list[Ev] | None = None,
    interval: float = 0.02,
) -> list[Ev]:
    """Read the agents' new membership events until `until(events)` holds or `timeout` seconds
    pass (bounded either way); returns every event read, appended to `into` if given."""
    evs: list[Ev] = [] if into is None else into
    nodes = list(nodes)
    end = time.monotonic() + timeout
    while True:
        for n in nodes:
            evs.extend(n.new_events())
        if until(evs) or time.monotonic() >= end:
            return evs
        time.sleep(interval)


def first_times(
    evs: Iterable[Ev], events: Sequence[str], member: str, observers: Iterable[str], t0: float
) -> dict[str, float]:
    """Per observer, seconds from t0 to its first `events` about `member` at or after t0."""
    obs = set(observers)
    out: dict[str, float] = {}
    for e in evs:
        if e.event in events and e.member == member and e.observer in obs and e.t >= t0 - 0.001:
            out.setdefault(e.observer, e.t - t0)
    return out


def all_back(evs: Iterable[Ev], member: str, observers: Iterable[str], since: float) -> bool:
    """Every observer's last state event about `member` since `since` (if any) says alive."""
    last: dict[str, str] = {}
    for e in evs:
        if e.member == member and e.t >= since - 0.001:
            last[e.observer] = e.event
    return all(last.get(o, RECOVERED) in BACK for o in observers)


def seconds_until_all_alive(
    nodes: Sequence[Node], since: float, timeout: float, interval: float
) -> float | None:
    """Wall seconds from `since` until every agent sees every one of `nodes` alive; None if
    that does not happen within `timeout`."""
    try:
        wait_until(
            lambda: all_see(nodes, "", "", len(nodes)),
            timeout,
            "every agent sees all alive",
            interval=interval,
        )
    except WaitTimeout:
        return None
    return round(time.time() - since, 3)


def all_see(nodes: Iterable[Node], name: str, state: str, n_alive: int | None = None) -> bool:
    for node in nodes:
        ms = {m["name"]: m for m in node.members()}
        if name and ms.get(name, {}).get("state") != state:
            return False
        if n_alive is not None and sum(m["state"] == "alive" for m in ms.values()) != n_alive:
            return False
    return True


def steady_state(nodes: Sequence[Node], seconds: float) -> dict[str, float]:
    """Mean datagrams and bytes sent per node per second and CPU % per agent over `seconds`
    (from the agents' own counters and /proc)."""
    before = [(n.status()["stats"], n.cpu_seconds()) for n in nodes]
    t_start = time.monotonic()
    time.sleep(seconds)
    span = time.monotonic() - t_start
    after = [(n.status()["stats"], n.cpu_seconds()) for n in nodes]
    pairs = list(zip(after, before, strict=True))
    pkts = [(a[0]["packets_out"] - b[0]["packets_out"]) / span for a, b in pairs]
    byts = [(a[0]["bytes_out"] - b[0]["bytes_out"]) / span for a, b in pairs]
    cpu = [(a[1] - b[1]) / span * 100 for a, b in pairs]
    return {
        "datagrams_per_node_s": round(statistics.mean(pkts), 2),
        "bytes_per_node_s": round(statistics.mean(byts), 1),
        "cpu_percent_per_agent": round(statistics.mean(cpu), 2),
    }
