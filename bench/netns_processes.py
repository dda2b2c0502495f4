"""Faults between real `swimthor join` processes and HashiCorp serf agents side by side, each
host in its own network namespace.

Needs root, `ip` (iproute2) and `nft` (nftables); without them it says so and exits 0 having
done nothing. It creates K host namespaces (`stb-<tag>-h<i>`, address 10.200.0.<10+i>/24 on
`eth0`, loopback up) joined by veth pairs to one bridge in a hub namespace (`stb-<tag>-hub`):
the 10.200.0.0/24 subnet exists only inside those namespaces, and nothing is sent anywhere
else. Every host namespace runs two agents on the same address: one `swimthor join` (gossip on
port 7946, lan profile by default) and one `serf agent` (port 7947, `-profile lan`, which is
memberlist's DefaultLANConfig; RPC on 127.0.0.1:7373 of the namespace's own loopback); h0 is
the seed of both, and the trials start once every agent of each kind sees all K alive.
Without serf on PATH (apt-get install serf) or with `--no-serf`, swimthor runs alone and the
result says why serf's column is missing.

Faults hit both systems on the same host at the same moment, one victim a trial, never the
seed. nftables rules live in the victim's own namespace (table `inet stb`), so they drop both
systems' packets alike:

  crash      `kill -9` of the victim's swimthor and its serf agent (two kill(2) calls by PID,
             microseconds apart); once every other agent of both systems has declared it (or
             `--duration` seconds, which bound that wait, have passed), both are started again:
             `heal` is the time until every agent of each kind sees all K alive.
  deaf       everything arriving at the victim dropped (it still sends) for `--duration`
             seconds, then healed. `oneway` is an alias (the name older results use).
  mute       everything the victim sends dropped (it still hears) for `--duration` seconds,
             then healed.
  partition  both directions dropped for `--duration` seconds, then healed.
  loss       X% of the packets arriving at the victim dropped (`numgen random mod 100 < X`)
             for `--duration` seconds: no member has failed, so every failure is false.

Per trial and per system: seconds from the fault until every healthy agent has declared the
victim failed ("all declared"; also the first, and each), how many healthy agents declared
it, false failures, and after the heal (or the restart) seconds until every agent sees all K
alive. A false failure is a member declared failed while it was healthy by an agent that was
healthy: among the others, a declaration of anyone but the victim; any declaration after the
heal was confirmed; in `loss`, every declaration. The run's total adds those logged in the
steady state and between trials.

Where the times come from:
  swimthor  its agents' JSON log lines (`member failed`, `member suspected`, ...), stamped by
            the agent itself to the microsecond (bench/_harness.py).
  serf      serf's log has local time to the second only, so the time recorded is when this
            process read the line: one reader thread per serf process stamps every line with
            time.time() on arrival (bench/peers/serf_agent.py). That is the same wall clock,
            late by the pipe and a thread wake-up, never early: on a busy machine it favours
            swimthor by at most that latency.
  heal      both systems polled together every 0.1 s (swimthor's control sockets, `serf
            members` in each namespace) until each sees all K alive: same resolution for both.
Steady-state load is measured over the same window for both: CPU of every agent process from
/proc, and what each system sends on `eth0` from nftables counters in each host's own table
(`acct` chain: UDP datagrams and IP bytes, TCP included, by port); swimthor's own counters are
kept under the older keys. If serf does not see all K alive `--heal-timeout` seconds after a
heal, its victim agent is restarted (counted as `forced_rejoins`) so the next trial starts
from a whole cluster (not after the last trial); swimthor not healing stops the run. Either
way the trial records what each agent did not hold alive when the heal timed out.

`--baseline-crash` runs one `crash` trial first (on the last host, which the scenario's trials
do not use unless there are more trials than hosts) and keeps it as `crash_baseline`: the
scenario's times next to a crash's measured on the same cluster in the same run.

Every phase is bounded in time and every loop in count. Namespaces, links, nft tables (they
live in the namespaces) and the agents (by PID) are removed in a `finally`; `--cleanup`
removes whatever an interrupted run left (every namespace named `stb-*`, or `stb-<tag>-*` with
`--tag`, and the processes in it) and exits.

    python bench/netns_processes.py --scenario crash --hosts 5 --trials 3
    python bench/netns_processes.py --scenario deaf --hosts 5 --trials 3 --baseline-crash
    python bench/netns_processes.py --scenario mute --hosts 5 --trials 3 --no-serf
    python bench/netns_processes.py --cleanup

Results: bench/results/netns_<scenario>.json (swimthor's figures at the top level, as before;
both systems under `systems`, their ratio under `comparison`, the issue's targets under
`verdicts`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

# bench/_harness.py and bench/_procs.py, and bench/peers/serf_agent.py (also when loaded by path)
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from _harness import (
    BACK,
    FAILED,
    SUSPECTED,
    Ev,
    Node,
    first_times,
    summary,
)
from _procs import TRANSIENT
from serf_agent import REFUTED, SERF_PORT, SerfAgent, serf_binary, serf_version

HERE = Path(__file__).resolve().parent
PREFIX = "stb-"  # every namespace made here starts with this; --cleanup removes them
SUBNET = "10.200.0"  # only ever inside the namespaces made here
PORT = 7946
SCENARIOS = ("crash", "deaf", "mute", "partition", "loss")
ALIASES = {"oneway": "deaf"}
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
TABLE = "stb"
FAULT_CHAINS = ("input", "output")
CMD_TIMEOUT = 20.0
SWIMTHOR = "swimthor"
SERF = "serf"
# The targets (checked, with the numbers, in `verdicts`).
CRASH_TARGET_RATIO = 0.6  # kill -9 declared by all in <= 0.6 x serf's median
CRASH_TARGET = f"kill -9 declared by all in <= {CRASH_TARGET_RATIO} x serf's median"
DEAF_TARGET = "a deaf host declared by all no later than serf, where serf declares it"
POLL_S = 0.1  # heal and convergence polls, both systems
FOLLOW_S = 0.02  # how often the logs are read while a phase runs


def which(cmd: str) -> str | None:
    return shutil.which(cmd, path=SBIN_PATH)


def unavailable() -> str | None:
    """Why this cannot run here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces and nftables need root"
    missing = [c for c in ("ip", "nft") if which(c) is None]
    if missing:
        return f"missing {' and '.join(missing)} (apt-get install iproute2 nftables)"
    return None


def serf_unavailable() -> str | None:
    """Why serf cannot run beside swimthor here, or None when it can."""
    if serf_binary() is None:
        return "no `serf` on PATH (apt-get install serf, or scripts/install-debs.sh)"
    return None


def sh(*argv: str, check: bool = True, input: str | None = None) -> str:
    """Run one ip/nft command, bounded in time; its stdout."""
    exe = which(argv[0]) or argv[0]
    out = subprocess.run(
        [exe, *argv[1:]],
        input=input,
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT,
        check=False,
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip() or out.returncode}")
    return out.stdout


def namespaces(prefix: str = PREFIX) -> list[str]:
    """Network namespaces whose name starts with `prefix`."""
    out = sh("ip", "netns", "list", check=False)
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def remove_namespaces(names: Sequence[str]) -> list[str]:
    """Kill the processes inside each namespace (by PID), delete it; what is still there."""
    for ns in names:
        for pid in sh("ip", "netns", "pids", ns, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    for ns in names:
        for _ in range(10):  # bounded: a namespace whose process is still exiting is busy
            sh("ip", "netns", "del", ns, check=False)
            if ns not in namespaces(ns):
                break
            time.sleep(0.1)
    return [ns for ns in names if ns in namespaces(ns)]


def cleanup(prefix: str = PREFIX) -> list[str]:
    """Remove every namespace named `prefix*` (and so its links, bridge and nft tables) and the
    processes in it; returns the names that could not be removed."""
    return remove_namespaces(namespaces(prefix))


class Netns:
    """K host namespaces on one bridge in a hub namespace, each with an nft table whose input
    and output chains the faults fill (and `heal` empties), and an `acct` chain counting what
    the host sends from each of `count_ports`. Use as a context manager: it always tears
    down."""

    def __init__(self, hosts: int, tag: str | None = None, count_ports: Sequence[int] = ()):
        if not 2 <= hosts <= 200:
            raise ValueError("between 2 and 200 hosts")
        tag = tag or f"{os.getpid():x}"
        self.prefix = f"{PREFIX}{tag}-"
        self.hub = self.prefix + "hub"
        self.names = [f"{self.prefix}h{i}" for i in range(hosts)]
        self.addrs = [f"{SUBNET}.{10 + i}" for i in range(hosts)]
        self.count_ports = tuple(count_ports)

    def __enter__(self) -> Netns:
        if namespaces(self.prefix):  # not ours to remove here (--cleanup does that)
            raise RuntimeError(f"namespaces {self.prefix}* exist already (run --cleanup)")
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def create(self) -> None:
        sh("ip", "netns", "add", self.hub)
        sh("ip", "-n", self.hub, "link", "set", "lo", "up")
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(zip(self.names, self.addrs, strict=True)):
            sh("ip", "netns", "add", ns)
            # Both ends are made inside the namespaces: nothing appears in the caller's.
            peer = ["peer", "name", "eth0", "netns", ns]
            sh("ip", "-n", self.hub, "link", "add", f"v{i}", "type", "veth", *peer)
            sh("ip", "-n", self.hub, "link", "set", f"v{i}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            # serf's RPC (and anything else on 127.0.0.1) is the namespace's own loopback.
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            script = (
                f"add table inet {TABLE}\n"
                f"add chain inet {TABLE} input {{ type filter hook input priority 0; }}\n"
                f"add chain inet {TABLE} output {{ type filter hook output priority 0; }}\n"
            )
            if self.count_ports:
                # Before the fault chain (priority -10 < 0): counts what the host tries to send.
                script += (
                    f"add chain inet {TABLE} acct {{ type filter hook output priority -10; }}\n"
                )
                for port in self.count_ports:
                    out = f'add rule inet {TABLE} acct oifname "eth0"'
                    script += f'{out} udp sport {port} counter comment "udp {port}"\n'
                    script += f'{out} tcp sport {port} counter comment "tcp {port}"\n'
                    script += f'{out} tcp dport {port} counter comment "tcp {port}"\n'
            self.nft(i, script)

    def destroy(self) -> list[str]:
        """Remove this topology's namespaces (their processes first); what could not go."""
        return remove_namespaces([*self.names, self.hub])

    def exec_prefix(self, i: int) -> list[str]:
        return [which("ip") or "ip", "netns", "exec", self.names[i]]

    def nft(self, i: int, script: str) -> None:
        sh(*self.exec_prefix(i), which("nft") or "nft", "-f", "-", input=script)

    # Faults: rules in host i's own table; `heal` empties it.
    def drop_ingress(self, i: int, percent: int = 100) -> None:
        if not 0 < percent <= 100:
            raise ValueError("loss percent in 1..100")
        match = "" if percent == 100 else f"numgen random mod 100 < {percent} "
        self.nft(i, f'add rule inet {TABLE} input iifname "eth0" {match}counter drop\n')

    def drop_egress(self, i: int) -> None:
        self.nft(i, f'add rule inet {TABLE} output oifname "eth0" counter drop\n')

    def isolate(self, i: int) -> None:
        self.drop_ingress(i)
        self.drop_egress(i)

    def heal(self, i: int) -> None:
        self.nft(i, "".join(f"flush chain inet {TABLE} {c}\n" for c in FAULT_CHAINS))

    def _rules(self, i: int) -> list[dict[str, Any]]:
        out = sh(*self.exec_prefix(i), which("nft") or "nft", "-j", "list", "table", "inet", TABLE)
        return [item["rule"] for item in json.loads(out).get("nftables", []) if "rule" in item]

    def dropped(self, i: int) -> int:
        """Packets the fault rules in host i's table have dropped so far."""
        total = 0
        for rule in self._rules(i):
            if rule.get("chain") in FAULT_CHAINS:
                for e in rule.get("expr", []):
                    if "counter" in e:
                        total += int(e["counter"].get("packets", 0))
        return total

    def rules(self, i: int) -> int:
        """Fault rules in host i's table (the counting chain is not one)."""
        return sum(1 for rule in self._rules(i) if rule.get("chain") in FAULT_CHAINS)

    def sent(self, i: int) -> dict[int, tuple[int, int]]:
        """Per port in `count_ports`: (UDP datagrams, IP bytes of UDP and TCP) host i has sent
        on eth0 so far, from the kernel's counters."""
        out = {port: (0, 0) for port in self.count_ports}
        for rule in self._rules(i):
            if rule.get("chain") != "acct":
                continue
            proto, _, port_s = str(rule.get("comment", "")).partition(" ")
            port = int(port_s) if port_s.isdigit() else None
            if port not in out:
                continue
            for e in rule.get("expr", []):
                if "counter" in e:
                    pkts, nbytes = int(e["counter"]["packets"]), int(e["counter"]["bytes"])
                    dgrams, total = out[port]
                    out[port] = (dgrams + (pkts if proto == "udp" else 0), total + nbytes)
        return out

    def reachable(self, src: int, dst: int, attempts: int = 5) -> bool:
        """Whether host src reaches host dst: ping if installed, else a TCP connect to a closed
        port (a refusal means the packets got through). True at the first success."""
        ping = which("ping")
        addr = self.addrs[dst]
        if ping:
            argv = [*self.exec_prefix(src), ping, "-n", "-c1", "-W1", addr]
        else:
            code = (
                "import socket, sys\n"
                "s = socket.socket()\n"
                "s.settimeout(1.0)\n"
                "try:\n"
                f"    s.connect(({addr!r}, 9))\n"
                "except ConnectionRefusedError:\n"
                "    sys.exit(0)\n"
                "except OSError:\n"
                "    sys.exit(1)\n"
            )
            argv = [*self.exec_prefix(src), sys.executable, "-c", code]
        for _ in range(attempts):
            r = subprocess.run(argv, capture_output=True, timeout=CMD_TIMEOUT, check=False)
            if r.returncode == 0:
                return True
        return False


# ------------------------------------------------------------ the two systems' agents


class Agents(ABC):
    """One system's K agents, agent i on host i (named h<i>), read as swimthor's events."""

    label: str
    port: int

    def __init__(self, hosts: int) -> None:
        self.names = [f"h{i}" for i in range(hosts)]

    @abstractmethod
    def start_all(self) -> None:
        """Start every agent; returns at once (readiness shows in `all_alive`)."""

    @abstractmethod
    def events(self) -> list[Ev]:
        """The membership events every agent logged since the last call."""

    @abstractmethod
    def view(self, i: int) -> dict[str, str]:
        """Member name -> state as agent i holds them (may raise one of _procs.TRANSIENT)."""

    def all_alive(self) -> bool:
        """Every agent sees all K alive (may raise one of _procs.TRANSIENT while one does not
        answer)."""
        k = len(self.names)
        return all(list(self.view(i).values()).count("alive") == k for i in range(k))

    def not_alive(self) -> dict[str, Any]:
        """Per agent, the members it does not hold alive (or why it did not answer): what a
        heal that timed out left."""
        out: dict[str, Any] = {}
        for i, name in enumerate(self.names):
            try:
                wrong = {m: st for m, st in self.view(i).items() if st != "alive"}
                missing = sorted(set(self.names) - set(self.view(i)))
            except TRANSIENT as e:
                out[name] = f"{type(e).__name__}: {e}"
                continue
            if wrong or missing:
                out[name] = {**wrong, **dict.fromkeys(missing, "unknown")}
        return out

    @abstractmethod
    def kill(self, i: int) -> None:
        """SIGKILL agent i by PID; no wait (`restart` reaps it)."""

    @abstractmethod
    def restart(self, i: int) -> None:
        """Reap agent i (SIGKILL first if it still runs) and start it again."""

    @abstractmethod
    def cpu_seconds(self, i: int) -> float: ...

    @abstractmethod
    def stop_all(self) -> None:
        """SIGKILL every agent by PID, reaped."""


class SwimthorAgents(Agents):
    label = SWIMTHOR
    port = PORT

    def __init__(self, net: Netns, workdir: Path, profile: str) -> None:
        super().__init__(len(net.names))
        seed = f"{net.addrs[0]}:{PORT}"
        self.nodes = [
            Node(
                name,
                PORT,
                workdir,
                profile,
                None if i == 0 else seed,
                host=net.addrs[i],
                prefix=net.exec_prefix(i),
            )
            for i, name in enumerate(self.names)
        ]

    def start_all(self) -> None:
        for n in self.nodes:
            n.start()

    def events(self) -> list[Ev]:
        return [e for n in self.nodes for e in n.new_events()]

    def view(self, i: int) -> dict[str, str]:
        return {str(m["name"]): str(m["state"]) for m in self.nodes[i].members()}

    def kill(self, i: int) -> None:
        self.nodes[i].send(signal.SIGKILL)

    def restart(self, i: int) -> None:
        self.nodes[i].stop(signal.SIGKILL)
        self.nodes[i].start()

    def cpu_seconds(self, i: int) -> float:
        return float(self.nodes[i].cpu_seconds())

    def stop_all(self) -> None:
        for n in self.nodes:
            n.stop(signal.SIGKILL)


class SerfAgents(Agents):
    label = SERF
    port = SERF_PORT

    def __init__(self, net: Netns, workdir: Path, exe: str) -> None:
        super().__init__(len(net.names))
        seed = f"{net.addrs[0]}:{SERF_PORT}"
        self.agents = [
            SerfAgent(
                name,
                net.addrs[i],
                workdir / f"serf-{name}.log",
                exe=exe,
                seed=None if i == 0 else seed,
                prefix=net.exec_prefix(i),
            )
            for i, name in enumerate(self.names)
        ]

    def start_all(self) -> None:
        for a in self.agents:
            a.start()

    def events(self) -> list[Ev]:
        return [Ev(e.observer, e.event, e.member, e.t) for a in self.agents for e in a.new_events()]

    def view(self, i: int) -> dict[str, str]:
        return self.agents[i].members()

    def kill(self, i: int) -> None:
        self.agents[i].send(signal.SIGKILL)

    def restart(self, i: int) -> None:
        self.agents[i].kill()
        self.agents[i].start()

    def cpu_seconds(self, i: int) -> float:
        return self.agents[i].cpu_seconds()

    def stop_all(self) -> None:
        for a in self.agents:
            a.kill()


class Log:
    """Every event each system logged in the run, and where each trial's share begins.
    (A plain class: this file is also loaded by path, outside sys.modules, where a dataclass
    cannot resolve its annotations.)"""

    def __init__(self, systems: list[Agents]) -> None:
        self.systems = systems
        self.evs: dict[str, list[Ev]] = {s.label: [] for s in systems}
        # Read in the steady state and between trials.
        self.outside: dict[str, list[Ev]] = {s.label: [] for s in systems}
        self._marks = {s.label: 0 for s in systems}

    def collect(self) -> None:
        for s in self.systems:
            self.evs[s.label].extend(s.events())

    def follow(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Read the logs for `seconds`, or until `until()` holds (bounded either way)."""
        end = time.monotonic() + seconds
        while True:
            self.collect()
            if (until is not None and until()) or time.monotonic() >= end:
                return
            time.sleep(FOLLOW_S)

    def begin(self) -> None:
        """A trial starts: what was read since the last trial ended is outside any trial."""
        self.collect()
        for label, evs in self.evs.items():
            self.outside[label].extend(evs[self._marks[label] :])
            self._marks[label] = len(evs)

    def end(self) -> dict[str, list[Ev]]:
        """A trial ends: its events, per system."""
        self.collect()
        out = {}
        for label, evs in self.evs.items():
            out[label] = evs[self._marks[label] :]
            self._marks[label] = len(evs)
        return out

    def since(self, label: str) -> list[Ev]:
        """This trial's events so far."""
        return self.evs[label][self._marks[label] :]

    def finish(self) -> None:
        self.begin()


def heal_times(
    systems: Sequence[Agents], log: Log, since: float, timeout: float
) -> dict[str, float | None]:
    """Per system, wall seconds from `since` until every agent sees all K alive, polled
    together every POLL_S; None for a system that does not get there within `timeout`."""
    out: dict[str, float | None] = {s.label: None for s in systems}
    pending = list(systems)
    end = time.monotonic() + timeout
    while pending:
        for s in list(pending):
            with contextlib.suppress(*TRANSIENT):
                if s.all_alive():
                    out[s.label] = round(time.time() - since, 3)
                    pending.remove(s)
        log.collect()
        if not pending or time.monotonic() >= end:
            break
        time.sleep(POLL_S)
    return out


# ------------------------------------------------------------------------- the benchmark


def fault_label(scenario: str, loss: int) -> str:
    return {
        "crash": "kill -9",
        "deaf": "deafen",
        "mute": "mute",
        "partition": "isolate",
        "loss": f"{loss}% ingress loss on",
    }[scenario]


def declared(evs: Sequence[Ev], victim: str, others: Sequence[str], t0: float) -> bool:
    return len(first_times(evs, (FAILED,), victim, others, t0)) == len(others)


def analyse(
    scenario: str,
    evs: list[Ev],
    victim: str,
    others: list[str],
    t0: float,
    t_heal: float,
    heal_s: float | None,
) -> dict[str, Any]:
    """One system's figures for one trial, from the events it logged during the trial."""
    seen = first_times(evs, (FAILED,), victim, others, t0)
    each = sorted(seen.values())
    sus = sorted(first_times(evs, (SUSPECTED,), victim, others, t0).values())
    by_victim = {
        e.member: e.t - t0
        for e in reversed(evs)
        if e.observer == victim and e.event == FAILED and t0 <= e.t < t_heal
    }
    healed_at = t_heal + (heal_s if heal_s is not None else 1e9)
    wrong = [
        e
        for e in evs
        if e.event == FAILED
        and (scenario == "loss" or e.t > healed_at or (e.observer != victim and e.member != victim))
    ]
    back = [e.t - t_heal for e in evs if e.event in BACK and e.t >= t_heal]
    trial: dict[str, Any] = {
        "first_s": each[0] if each else None,
        "all_s": each[-1] if len(each) == len(others) else None,
        "each_s": each,
        "declared_by": len(each),
        "healthy_agents": len(others),
        "suspected_first_s": sus[0] if sus else None,
        "suspected_all_s": sus[-1] if len(sus) == len(others) else None,
        "victim_declared_failed": len(by_victim),
        "victim_declared_all_s": (
            max(by_victim.values()) if set(by_victim) >= set(others) else None
        ),
        "heal_s": heal_s,
        "last_recovered_log_s": round(max(back), 3) if back else None,
        "suspicions_logged": sum(1 for e in evs if e.event == SUSPECTED),
        "false_failures": len(wrong),
    }
    if wrong:
        trial["false_failure_detail"] = [
            {"observer": e.observer, "member": e.member, "t_s": round(e.t - t0, 3)}
            for e in wrong[:20]
        ]
    return trial


def run_trial(
    args: argparse.Namespace,
    scenario: str,
    net: Netns,
    systems: list[Agents],
    log: Log,
    v: int,
    last: bool = False,
) -> dict[str, Any]:
    """One fault on host v for every system at once; its record (per system under its label).
    `last`: no trial follows (so a serf that did not heal is left as it is)."""
    names = systems[0].names
    victim = names[v]
    others = [n for n in names if n != victim]
    swim = next(s for s in systems if isinstance(s, SwimthorAgents))
    stats_before = None if scenario == "crash" else swim.nodes[v].status()["stats"]
    # Above 0: the victim has refuted a suspicion at some time. One refuted in the last
    # minute gets longer suspicions (refutation memory; --gap 65 lets that lapse).
    incarnation = {m["name"]: m["incarnation"] for m in swim.nodes[0].members()}[victim]

    def everyone_declared() -> bool:
        return all(declared(log.since(s.label), victim, others, t0) for s in systems)

    log.begin()
    dropped: int | None = None
    kill_spread: float | None = None
    t0 = time.time()
    if scenario == "crash":
        for s in systems:
            s.kill(v)
        kill_spread = time.time() - t0
        log.follow(args.duration, until=everyone_declared)
        t_heal = time.time()
        for s in systems:
            s.restart(v)
    else:
        if scenario == "loss":
            net.drop_ingress(v, args.loss)
        elif scenario == "partition":
            net.isolate(v)
        elif scenario == "deaf":
            net.drop_ingress(v)
        else:
            net.drop_egress(v)
        log.follow(args.duration)
        dropped = net.dropped(v)
        t_heal = time.time()
        net.heal(v)

    heal = heal_times(systems, log, t_heal, args.heal_timeout)
    unhealed = {s.label: s.not_alive() for s in systems if heal[s.label] is None}
    forced: dict[str, float | None] = {}
    for s in systems:
        if heal[s.label] is None and isinstance(s, SerfAgents) and not last:
            # So that the next trial starts from a whole serf cluster; counted, not hidden.
            t_force = time.time()
            s.restart(v)
            forced[s.label] = heal_times([s], log, t_force, args.heal_timeout)[s.label]
    log.follow(args.settle)
    evs = log.end()

    trial: dict[str, Any] = {
        "victim": victim,
        "fault": scenario,
        "dropped_packets": dropped,
        "kill_spread_s": None if kill_spread is None else round(kill_spread, 6),
        "victim_incarnation": incarnation,
    }
    for s in systems:
        rec = analyse(scenario, evs[s.label], victim, others, t0, t_heal, heal[s.label])
        if s.label in unhealed:
            rec["not_alive_at_heal_timeout"] = unhealed[s.label]
        if s.label in forced:
            rec["forced_rejoin_s"] = forced[s.label]
        if isinstance(s, SerfAgents):
            rec["victim_refutations"] = sum(
                1 for e in evs[s.label] if e.event == REFUTED and e.observer == victim
            )
        elif stats_before is not None:
            after = swim.nodes[v].status()["stats"]
            rec["victim_refutations"] = after.get("refutations", 0) - stats_before.get(
                "refutations", 0
            )
        else:
            rec["victim_refutations"] = None  # a restarted agent's counters start again
        trial[s.label] = rec
    print_trial(trial, scenario, args.loss, [s.label for s in systems])
    return trial


def print_trial(trial: dict[str, Any], scenario: str, loss: int, labels: list[str]) -> None:
    parts = []
    for label in labels:
        r = trial[label]
        each = r["each_s"]
        got = f"all {r['declared_by']}/{r['healthy_agents']}"
        parts.append(f"{label} {got} by {each[-1]:.3f}s" if each else f"{label} not declared")
    print(
        f"trial: {fault_label(scenario, loss)} {trial['victim']}: {' | '.join(parts)}",
        flush=True,
    )
    heal = ", ".join(f"{label} {seconds(trial[label]['heal_s'])}" for label in labels)
    false = ", ".join(f"{label} {trial[label]['false_failures']}" for label in labels)
    drop = "" if trial["dropped_packets"] is None else f"dropped {trial['dropped_packets']}; "
    print(f"         {drop}heal {heal}; false failures {false}", flush=True)
    for label in labels:
        if "not_alive_at_heal_timeout" in trial[label]:
            left = trial[label]["not_alive_at_heal_timeout"]
            print(f"         {label} not healed, not alive: {left}", flush=True)


def steady_load(
    net: Netns, systems: list[Agents], swim: SwimthorAgents, seconds: float
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Over one window of `seconds`, for both systems at once: swimthor's own counters (the
    older keys), and per system CPU % per agent and what it sends on eth0 per node per second
    (nftables counters)."""
    hosts = range(len(net.names))

    def sample() -> tuple[list[dict[str, Any]], dict[str, list[float]], list[dict[int, Any]]]:
        stats = [n.status()["stats"] for n in swim.nodes]
        cpu = {s.label: [s.cpu_seconds(i) for i in hosts] for s in systems}
        return stats, cpu, [net.sent(i) for i in hosts]

    before = sample()
    t_start = time.monotonic()
    time.sleep(seconds)
    after = sample()
    span = time.monotonic() - t_start
    pairs = list(zip(after[0], before[0], strict=True))
    legacy = {
        "datagrams_per_node_s": round(
            statistics.mean((a["packets_out"] - b["packets_out"]) / span for a, b in pairs), 2
        ),
        "bytes_per_node_s": round(
            statistics.mean((a["bytes_out"] - b["bytes_out"]) / span for a, b in pairs), 1
        ),
        "cpu_percent_per_agent": round(
            statistics.mean(
                (a - b) / span * 100
                for a, b in zip(after[1][SWIMTHOR], before[1][SWIMTHOR], strict=True)
            ),
            2,
        ),
    }
    per: dict[str, dict[str, float]] = {}
    for s in systems:
        sent = [(after[2][i][s.port], before[2][i][s.port]) for i in hosts]
        cpu = zip(after[1][s.label], before[1][s.label], strict=True)
        per[s.label] = {
            "wire_datagrams_per_node_s": round(
                statistics.mean((a[0] - b[0]) / span for a, b in sent), 2
            ),
            "wire_bytes_per_node_s": round(
                statistics.mean((a[1] - b[1]) / span for a, b in sent), 1
            ),
            "cpu_percent_per_agent": round(
                statistics.mean((a - b) / span * 100 for a, b in cpu), 2
            ),
        }
    return legacy, per


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="swimthor-netns-"))
    net = Netns(args.hosts, tag=args.tag, count_ports=(PORT, SERF_PORT))
    systems: list[Agents] = []
    trials: list[dict[str, Any]] = []
    baseline: dict[str, Any] | None = None
    aborted: str | None = None
    load_start = os.getloadavg()
    try:
        with net:
            swim = SwimthorAgents(net, workdir, args.profile)
            systems.append(swim)
            if args.serf_exe:
                systems.append(SerfAgents(net, workdir, args.serf_exe))
            log = Log(systems)
            for s in systems:
                s.start_all()
            converge = heal_times(systems, log, time.time(), 30 + 1.5 * args.hosts)
            missing = [label for label, t in converge.items() if t is None]
            if missing:
                raise RuntimeError(f"{', '.join(missing)} did not converge to {args.hosts} alive")
            log.follow(2.0)
            load, per_system_load = steady_load(net, systems, swim, args.steady)
            if args.baseline_crash:
                print("baseline: one crash on the last host first", flush=True)
                baseline = run_trial(args, "crash", net, systems, log, args.hosts - 1)
                if baseline[SWIMTHOR]["heal_s"] is None:
                    aborted = f"the baseline crash did not heal within {args.heal_timeout}s"
                    print(f"stopping: {aborted}", flush=True)
            for t in range(0 if aborted else args.trials):
                if t and args.gap:
                    log.follow(args.gap)  # quiet time, watched for false failures like the rest
                v = 1 + t % (args.hosts - 1)
                last = t == args.trials - 1
                trial = run_trial(args, args.scenario, net, systems, log, v, last)
                trials.append(trial)
                if trial[SWIMTHOR]["heal_s"] is None:
                    aborted = f"trial {t + 1} did not heal within {args.heal_timeout}s"
                    print(f"stopping: {aborted}", flush=True)
                    break
            log.finish()
            for s in systems:
                s.stop_all()
            left = net.destroy()
    finally:
        for s in systems:
            s.stop_all()
        if args.keep_logs:
            print(f"agent logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return summarize(
        args,
        [s.label for s in systems],
        trials,
        baseline,
        converge,
        log.outside,
        load,
        per_system_load,
        aborted,
        left,
        load_start,
    )


def median(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return statistics.median(xs) if xs else None


def system_summary(
    label: str,
    trials: list[dict[str, Any]],
    baseline: dict[str, Any] | None,
    converge_s: float | None,
    outside: list[Ev],
    load: dict[str, float],
) -> dict[str, Any]:
    recs = [t[label] for t in trials]
    alls = [r["all_s"] for r in recs]
    heals = [r["heal_s"] for r in recs]
    steady_false = sum(1 for e in outside if e.event == FAILED)
    every = [*recs, *([baseline[label]] if baseline else [])]
    return {
        "converge_s": converge_s,
        "detected": sum(1 for a in alls if a is not None),
        "declared_by": sum(r["declared_by"] for r in recs),
        "healthy_agents": sum(r["healthy_agents"] for r in recs),
        "all_failed_s": {
            "median": median(alls),
            "max": max((a for a in alls if a is not None), default=None),
        },
        "first_failed_s": {"median": median([r["first_s"] for r in recs])},
        "all_suspected_s": {"median": median([r["suspected_all_s"] for r in recs])},
        "false_failures": steady_false + sum(r["false_failures"] for r in every),
        "false_failures_steady": steady_false,
        "healed": sum(1 for h in heals if h is not None),
        "heal_s": {
            "median": median(heals),
            "max": max((h for h in heals if h is not None), default=None),
        },
        "forced_rejoins": sum(1 for r in recs if "forced_rejoin_s" in r),
        "suspicions_logged": sum(r["suspicions_logged"] for r in recs),
        **load,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def verdicts(
    scenario: str, trials: list[dict[str, Any]], systems: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The issue's targets, with the numbers they are judged on (`met` None: not judged)."""
    if SERF not in systems:
        return []
    out: list[dict[str, Any]] = []
    if scenario == "crash":
        s = systems[SWIMTHOR]["all_failed_s"]["median"]
        f = systems[SERF]["all_failed_s"]["median"]
        bound = None if f is None else round(CRASH_TARGET_RATIO * f, 3)
        out.append(
            {
                "target": CRASH_TARGET,
                "swimthor_median_s": s,
                "serf_median_s": f,
                "bound_s": bound,
                "ratio": ratio(s, f),
                "met": None if s is None or bound is None else s <= bound,
            }
        )
    if scenario == "deaf":
        pairs = [
            (t[SWIMTHOR]["all_s"], t[SERF]["all_s"]) for t in trials if t[SERF]["all_s"] is not None
        ]
        out.append(
            {
                "target": DEAF_TARGET,
                "trials_serf_declared": len(pairs),
                "trials_met": sum(1 for s, f in pairs if s is not None and s <= f),
                "pairs_s": [[s, f] for s, f in pairs],
                "met": all(s is not None and s <= f for s, f in pairs) if pairs else None,
            }
        )
    return out


def summarize(
    args: argparse.Namespace,
    labels: list[str],
    trials: list[dict[str, Any]],
    baseline: dict[str, Any] | None,
    converge: dict[str, float | None],
    outside: dict[str, list[Ev]],
    load: dict[str, float],
    per_system_load: dict[str, dict[str, float]],
    aborted: str | None,
    left: list[str],
    load_start: tuple[float, float, float],
) -> dict[str, Any]:
    sw = [t[SWIMTHOR] for t in trials]
    alls = [r["all_s"] for r in sw]
    each = [x for r in sw for x in r["each_s"]]
    systems = {
        label: system_summary(
            label, trials, baseline, converge[label], outside[label], per_system_load[label]
        )
        for label in labels
    }
    out: dict[str, Any] = {
        "scenario": args.scenario,
        "hosts": args.hosts,
        "nodes": args.hosts,
        "profile": args.profile,
        "trials": len(trials),
        "duration_s": args.duration,
        "gap_s": args.gap,
        "converge_s": converge[SWIMTHOR],
    }
    if args.scenario == "loss":
        out["loss_percent"] = args.loss
    # swimthor's figures under the keys older results (and bench/report.py) use.
    out["detected"] = sum(1 for a in alls if a is not None)
    out["all_failed_s"] = summary(alls)
    out["each_failed_s"] = {"p50": summary(each)["p50"], "max": max(each, default=None)}
    out["all_suspected_s"] = summary([r["suspected_all_s"] for r in sw])
    out["victim_declared_all_failed_s"] = summary([r["victim_declared_all_s"] for r in sw])
    out["false_failures"] = systems[SWIMTHOR]["false_failures"]
    out["healed"] = systems[SWIMTHOR]["healed"]
    out["heal_s"] = summary([r["heal_s"] for r in sw])
    out["suspicions_logged"] = sum(r["suspicions_logged"] for r in sw)
    out["victim_refutations"] = sum(r.get("victim_refutations") or 0 for r in sw)
    out["dropped_packets"] = sum(t["dropped_packets"] or 0 for t in trials)
    out.update(load)
    # Both systems, same hosts, same faults, same moments.
    out["serf"] = args.serf_version if SERF in labels else None
    out["serf_skipped"] = args.serf_skipped
    out["systems"] = systems
    if SERF in labels:
        s, f = systems[SWIMTHOR], systems[SERF]
        out["comparison"] = {
            "all_failed_median_ratio": ratio(
                s["all_failed_s"]["median"], f["all_failed_s"]["median"]
            ),
            "all_failed_max_ratio": ratio(s["all_failed_s"]["max"], f["all_failed_s"]["max"]),
            "heal_median_ratio": ratio(s["heal_s"]["median"], f["heal_s"]["median"]),
        }
    else:
        out["comparison"] = None
    out["verdicts"] = verdicts(args.scenario, trials, systems)
    out["crash_baseline"] = baseline
    out["machine"] = {
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    out["aborted"] = aborted
    out["namespaces_left"] = left
    out["detail"] = trials
    return out


def seconds(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}s"


def table(result: dict[str, Any]) -> str:
    """The side-by-side table of one result (plain text, also used in NETNS.md)."""
    systems: dict[str, dict[str, Any]] = result["systems"]
    labels = list(systems)
    two = SERF in systems

    def row(name: str, values: list[str], r: str = "") -> list[str]:
        return [name, *values, *([r] if two else [])]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    rows = [row("", labels, "swimthor/serf")]
    for what, key, sub in (
        ("all declared, median", "all_failed_s", "median"),
        ("all declared, max", "all_failed_s", "max"),
        ("heal, median", "heal_s", "median"),
        ("heal, max", "heal_s", "max"),
    ):
        vals = [systems[label][key][sub] for label in labels]
        rows.append(
            row(
                what,
                [seconds(v) for v in vals],
                fmt(ratio(vals[0], vals[1])) if two else "",
            )
        )
    rows.append(
        row(
            "all declared, each trial",
            [
                " ".join(
                    "-" if t[label]["all_s"] is None else f"{t[label]['all_s']:.2f}"
                    for t in result["detail"]
                )
                for label in labels
            ],
        )
    )
    rows.append(
        row(
            "declared by all (trials)",
            [f"{systems[label]['detected']}/{result['trials']}" for label in labels],
        )
    )
    rows.append(
        row(
            "healthy agents that declared",
            [
                f"{systems[label]['declared_by']}/{systems[label]['healthy_agents']}"
                for label in labels
            ],
        )
    )
    rows.append(row("false failures", [str(systems[label]["false_failures"]) for label in labels]))
    rows.append(
        row(
            "wire datagrams/s per node",
            [f"{systems[label]['wire_datagrams_per_node_s']:g}" for label in labels],
        )
    )
    rows.append(
        row(
            "wire bytes/s per node",
            [f"{systems[label]['wire_bytes_per_node_s']:g}" for label in labels],
        )
    )
    rows.append(
        row("CPU % per agent", [f"{systems[label]['cpu_percent_per_agent']:g}" for label in labels])
    )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    )


def verdict_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for v in result["verdicts"]:
        met = {True: "MET", False: "NOT MET", None: "not judged"}[v["met"]]
        if "bound_s" in v:
            lines.append(
                f"target: {v['target']}: swimthor {seconds(v['swimthor_median_s'])} vs "
                f"{CRASH_TARGET_RATIO} x serf {seconds(v['serf_median_s'])} = "
                f"{seconds(v['bound_s'])} (ratio {v['ratio']}): {met}"
            )
        else:
            pairs = ", ".join(f"{seconds(s)} vs {seconds(f)}" for s, f in v["pairs_s"])
            lines.append(
                f"target: {v['target']}: {v['trials_met']}/{v['trials_serf_declared']} trials "
                f"(swimthor vs serf: {pairs or 'serf declared it in none'}): {met}"
            )
    return lines


def report(result: dict[str, Any]) -> str:
    """What a run prints, from its result alone (so `--show FILE` prints a stored one)."""
    d = result["duration_s"]
    what = {
        "crash": "one host's agents killed (kill -9) and restarted",
        "loss": f"{result.get('loss_percent')}% ingress loss at one host for {d}s",
        "partition": f"one host isolated for {d}s",
        "deaf": f"one host deaf (ingress dropped) for {d}s",
        "mute": f"one host mute (egress dropped) for {d}s",
    }.get(result["scenario"], result["scenario"])
    load = result["machine"]
    gap = f", {result['gap_s']:g}s between trials" if result.get("gap_s") else ""
    lines = [
        f"{result['hosts']} hosts in namespaces, swimthor profile {result['profile']}"
        f"{', serf -profile lan' if result['serf'] else ''}, {what}, {result['trials']} "
        f"trial(s){gap}; load average {load['loadavg_start'][0]} -> "
        f"{load['loadavg_end'][0]} on {load['cpus']} CPUs:",
        "",
        table(result),
    ]
    if result["crash_baseline"]:
        b = result["crash_baseline"]
        lines += [
            "",
            "crash baseline, same run: "
            + ", ".join(
                f"{label} all declared {seconds(b[label]['all_s'])}" for label in result["systems"]
            ),
        ]
    lines += verdict_lines(result)
    if result["serf_skipped"]:
        lines.append(f"serf: not run ({result['serf_skipped']})")
    return "\n".join(lines)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so that the finally blocks tear everything down


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenario", choices=[*SCENARIOS, *ALIASES], default="partition")
    p.add_argument("--hosts", type=int, default=5)
    p.add_argument("--profile", default="lan", help="swimthor's profile (serf runs -profile lan)")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--loss", type=int, default=30, help="percent dropped, scenario loss")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds the fault lasts (loss 30, deaf, mute and partition 12); for crash, the\n"
        "longest wait for every agent to declare it before the restart (30)",
    )
    p.add_argument("--steady", type=float, default=5.0, help="seconds of steady-state sampling")
    p.add_argument("--heal-timeout", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=5.0, help="seconds watched after each heal")
    p.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="quiet seconds between trials, not after --baseline-crash (65 lets swimthor's\n"
        "60 s refutation memory lapse)",
    )
    p.add_argument(
        "--baseline-crash",
        action="store_true",
        help="one crash trial on the last host first, kept as crash_baseline",
    )
    p.add_argument("--no-serf", action="store_true", help="swimthor alone, no serf beside it")
    p.add_argument("--tag", default=None, help="namespace tag (stb-<tag>-*); default the PID")
    p.add_argument("--out", default=None, help="JSON result file")
    p.add_argument("--keep-logs", action="store_true", help="keep the agents' logs (a temp dir)")
    p.add_argument(
        "--cleanup",
        action="store_true",
        help=f"remove leftover {PREFIX}* namespaces (only {PREFIX}<tag>-* with --tag) and exit",
    )
    p.add_argument(
        "--show", metavar="FILE", default=None, help="print a stored result's table and exit"
    )
    args = p.parse_args(argv)
    args.scenario = ALIASES.get(args.scenario, args.scenario)
    if args.show:
        print(report(json.loads(Path(args.show).read_text())))
        return 0
    why = unavailable()
    if why:
        print(f"netns_processes: skipped: {why}", file=sys.stderr)
        return 0
    if args.cleanup:
        prefix = PREFIX if args.tag is None else f"{PREFIX}{args.tag}-"
        found = namespaces(prefix)
        left = cleanup(prefix)
        print(f"removed {len(found) - len(left)} namespace(s) {' '.join(found)}".rstrip())
        if left:
            print(f"could not remove: {' '.join(left)}", file=sys.stderr)
        return 1 if left else 0
    if args.hosts < 3 or args.trials < 1:
        p.error("need --hosts >= 3 and --trials >= 1")
    if args.duration is None:
        args.duration = {"loss": 30.0, "crash": 30.0}.get(args.scenario, 12.0)
    args.serf_skipped = "--no-serf" if args.no_serf else serf_unavailable()
    args.serf_exe = None if args.serf_skipped else serf_binary()
    args.serf_version = serf_version(args.serf_exe) if args.serf_exe else None
    if args.serf_skipped and not args.no_serf:
        print(
            f"netns_processes: serf skipped: {args.serf_skipped}; swimthor runs alone",
            file=sys.stderr,
        )
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        result = run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("\n" + report(result))
    if result["aborted"]:
        print(f"aborted: {result['aborted']}", file=sys.stderr)
    if result["namespaces_left"]:
        print(f"namespaces left behind: {result['namespaces_left']}", file=sys.stderr)
    out = args.out or str(HERE / "results" / f"netns_{args.scenario}.json")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
