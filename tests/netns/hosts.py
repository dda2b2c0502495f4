"""Real hosts for tests: H network namespaces on one bridge, grouped into datacenters, one
`swimthor join` per host, and the faults the namespace tests inject.

Built on `bench/netns_processes.Netns` (namespaces `stb-<tag>-h<i>` on 10.200.0.0/24, which
exists only inside them, each with its own nft table `inet stb`). Added here:

- every agent runs SIP and DNS on its host's address (`--role sip --sip ADDR:5060
  --domain example.com --dns ADDR:8053`), with the host's datacenter;
- `cut(a, b)` drops what host a sends to host b (and, unless one-way, what b sends to a) with
  rules in the senders' own tables; `loss(i, pct)` drops a share of what host i receives
  (nftables `numgen random`); `heal()` empties every table;
- `kill`, `pause` (SIGSTOP), `resume`, and `restart(i, new_address=True)`, which gives host i
  a fresh address first, as a host that came back from a reboot with a new lease;
- `members(i)`, `dig(i, ...)`, `run(i, argv)`: look at the cluster from inside a host.

`Hosts` is a context manager: on the way out, pass or fail, every agent is killed by PID and
the namespaces (with their links, addresses and nft tables) are deleted; it raises if any is
left behind.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # bench/_procs.py
from bench._procs import AgentProcess
from bench._procs import wait_until as _wait_until

BENCH = Path(__file__).resolve().parent.parent.parent / "bench"
DOMAIN = "example.com"
GOSSIP_PORT = 7946
SIP_PORT = 5060
DNS_PORT = 8053


def _load_netns() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # bench scripts import bench/_harness.py
    spec = importlib.util.spec_from_file_location(
        "bench_netns_processes", BENCH / "netns_processes.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


netns = _load_netns()


def unavailable() -> str | None:
    """Why the namespace tests cannot run here, or None."""
    return str(netns.unavailable()) if netns.unavailable() else None


def wait_until(
    cond: Callable[[], object], timeout: float, what: str, interval: float = 0.2
) -> float:
    """bench/_procs.py's wait, polling every `interval` s: seconds until `cond()` held."""
    return _wait_until(cond, timeout, what, interval=interval)


class Host:
    def __init__(self, index: int, name: str, dc: str, addr: str, workdir: Path) -> None:
        self.index = index
        self.name = name
        self.dc = dc
        self.addr = addr
        self.addrs = [addr]  # every address it has had (cuts cover them all)
        self.sock = str(workdir / f"{name}.sock")
        self.log = workdir / f"{name}.log"
        self.data = workdir / name
        self.agent: AgentProcess | None = None  # its `swimthor join`, once started

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return None if self.agent is None else self.agent.proc


class Hosts:
    def __init__(
        self,
        tmp: Path,
        dcs: Sequence[str],
        *,
        tag: str | None = None,
        profile: str = "local",
        extra: Sequence[str] = (),
    ) -> None:
        """`extra`: more `swimthor join` flags for every agent."""
        self.tmp = tmp
        self.extra = list(extra)
        self.net = netns.Netns(len(dcs), tag or f"t{os.getpid():x}")
        self.profile = profile
        self.hosts = [Host(i, f"h{i}", dc, self.net.addrs[i], tmp) for i, dc in enumerate(dcs)]
        self._helpers: list[subprocess.Popen[bytes]] = []

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Hosts:
        self.net.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.hosts:
            if h.agent is not None:
                h.agent.kill()
        for p in self._helpers:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
        left = self.net.destroy()
        assert left == [], f"namespaces left behind: {left}"

    def prefix(self, i: int) -> list[str]:
        return list(self.net.exec_prefix(i))

    def start(self, i: int, *, seed: int | None = 0) -> None:
        """Start host i's agent; it joins through host `seed` (None: starts a cluster)."""
        h = self.hosts[i]
        argv = [
            *self.prefix(i), sys.executable, "-m", "swimthor", "join",
            "--name", h.name,
            "--bind", f"{h.addr}:{GOSSIP_PORT}",
            "--dc", h.dc,
            "--profile", self.profile,
            "--insecure",
            "--role", "sip", "--sip", f"{h.addr}:{SIP_PORT}", "--domain", DOMAIN,
            "--sip-auth", "off",
            "--dns", f"{h.addr}:{DNS_PORT}",
            "--control", h.sock,
            "--data-dir", str(h.data),
            "--log-format", "json",
        ]  # fmt: skip
        argv += self.extra
        if seed is not None and seed != i:
            argv.append(f"{self.hosts[seed].addr}:{GOSSIP_PORT}")
        h.agent = AgentProcess(argv, h.log, h.sock)
        h.agent.spawn()

    def start_all(self, timeout: float = 30) -> None:
        self.start(0, seed=None)
        # The others join through h0: wait until it is up (its control socket answers once
        # its gossip, SIP and DNS sockets are bound).
        self._agent(0).wait_ready(timeout)
        for i in range(1, len(self.hosts)):
            self.start(i)
        self.wait_converged(timeout)

    def _agent(self, i: int) -> AgentProcess:
        agent = self.hosts[i].agent
        assert agent is not None, f"h{i} was never started"
        return agent

    def kill(self, i: int) -> None:
        self._agent(i).kill()

    def pause(self, i: int) -> None:
        os.kill(self._agent(i).pid, signal.SIGSTOP)

    def resume(self, i: int) -> None:
        os.kill(self._agent(i).pid, signal.SIGCONT)

    def restart(self, i: int, *, new_address: bool = True, seed: int = 0) -> None:
        """Start host i's agent again (it must be stopped), on a fresh address if asked."""
        h = self.hosts[i]
        if new_address:
            addr = f"{netns.SUBNET}.{100 + i + 10 * (len(h.addrs) - 1)}"
            netns.sh("ip", "-n", self.net.names[i], "addr", "add", f"{addr}/24", "dev", "eth0")
            h.addr = addr
            h.addrs.append(addr)
        self.start(i, seed=seed)

    # ------------------------------------------------------------ faults

    def cut(self, a: int, b: int, *, oneway: bool = False) -> None:
        """Drop what a sends to b; unless `oneway`, what b sends to a too."""
        pairs = [(a, b)] if oneway else [(a, b), (b, a)]
        for src, dst in pairs:
            daddrs = ", ".join(self.hosts[dst].addrs)
            self.net.nft(
                src, f"add rule inet {netns.TABLE} output ip daddr {{ {daddrs} }} counter drop\n"
            )

    def cut_between(self, left: Sequence[int], right: Sequence[int]) -> None:
        for a in left:
            for b in right:
                self.cut(a, b)

    def loss(self, i: int, percent: int) -> None:
        self.net.drop_ingress(i, percent)

    def heal(self) -> None:
        for i in range(len(self.hosts)):
            self.net.heal(i)

    # ------------------------------------------------------------ looking

    def members(self, i: int) -> dict[str, dict[str, Any]]:
        from swimthor.control import call

        return {m["name"]: m for m in call(self.hosts[i].sock, "members", timeout=2.0)}

    def status(self, i: int) -> dict[str, Any]:
        """Host i's `swimthor status` (the JSON form)."""
        from swimthor.control import call

        reply = call(self.hosts[i].sock, "status", timeout=2.0)
        assert isinstance(reply, dict)
        return reply

    def states(self, i: int) -> dict[str, str]:
        return {name: str(m["state"]) for name, m in self.members(i).items()}

    def sees(self, i: int, want: dict[str, str]) -> bool:
        """Whether host i's view has each named member in the given state."""
        states = self.states(i)
        return all(states.get(name) == state for name, state in want.items())

    def wait_converged(self, timeout: float, among: Sequence[int] | None = None) -> float:
        """Until every host in `among` (default: every running one) sees all of them alive."""
        idx = list(among) if among is not None else self.running()
        want = {self.hosts[i].name: "alive" for i in idx}
        return wait_until(
            lambda: all(self.sees(i, want) for i in idx),
            timeout,
            f"{', '.join(want)} to see each other alive",
        )

    def running(self) -> list[int]:
        return [h.index for h in self.hosts if h.proc is not None and h.proc.poll() is None]

    def run(
        self, i: int, argv: Sequence[str], timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside host i's namespace to its end (bounded)."""
        return subprocess.run(
            [*self.prefix(i), *argv], capture_output=True, text=True, timeout=timeout
        )

    def background(
        self, i: int, argv: Sequence[str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            [*self.prefix(i), *argv],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._helpers.append(p)
        return p

    def dig(self, i: int, server: int, name: str, qtype: str) -> list[str]:
        """`dig +short` from inside host i, asking host `server`'s DNS front-end."""
        r = self.run(
            i,
            ["dig", f"@{self.hosts[server].addr}", "-p", str(DNS_PORT), name, qtype, "+short",
             "+tries=1", "+time=2"],
            timeout=15,
        )  # fmt: skip
        if r.returncode != 0:
            raise AssertionError(f"dig failed: {r.stdout} {r.stderr}")
        return [line for line in r.stdout.splitlines() if line and not line.startswith(";")]

    def owners(self, i: int, aor: str) -> list[str]:
        from swimthor.control import call

        reply = call(self.hosts[i].sock, "route", {"key": aor}, timeout=2.0)
        return [o["name"] for o in reply["owners"]]

    def events(self, i: int) -> list[dict[str, Any]]:
        """Host i's JSON log lines so far."""
        out = []
        for line in self.hosts[i].log.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out
