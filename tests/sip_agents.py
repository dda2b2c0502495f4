"""Real `swimthor join` SIP agents on loopback for tests: start, read, kill.

Every process is started by `cluster_of` and killed by PID when the block ends, pass or fail;
every wait is bounded; nothing is sent anywhere but 127.0.0.1. The process wrapper and the
wait loop are bench/_procs.py's, shared with the benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from bench._procs import AgentProcess
from bench._procs import wait_until as _wait_until
from swimthor.membership import Keyring
from swimthor.ports import free_ports

DOMAIN = "example.com"


def _free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP, reserved for this run."""
    return free_ports(1)[0]


def swimthor(*args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swimthor", *args], capture_output=True, text=True, timeout=timeout
    )


class Node:
    def __init__(
        self,
        tmp: Path,
        name: str,
        key_file: Path,
        seed: int | None,
        dns: bool = False,
        auth: bool = False,
        extra: list[str] | None = None,
    ) -> None:
        """`extra`: more `swimthor join` flags, put before the seed address."""
        self.name = name
        self.port = _free_port()
        self.sip_port = _free_port()
        self.dns_port = _free_port() if dns else None
        self.sock = str(tmp / f"{name}.sock")
        self.log = tmp / f"{name}.log"
        self.argv = [
            sys.executable, "-m", "swimthor", "join",
            "--name", name,
            "--bind", f"127.0.0.1:{self.port}",
            "--profile", "local",
            "--key-file", str(key_file),
            "--control", self.sock,
            "--data-dir", str(tmp / name),
            "--log-format", "json",
            "--role", "sip",
            "--sip", f"127.0.0.1:{self.sip_port}",
            "--domain", DOMAIN,
            "--sip-auth", "off",  # the sipp scenarios do not authenticate
        ]  # fmt: skip
        if self.dns_port is not None:
            self.argv += ["--dns", f"127.0.0.1:{self.dns_port}"]
        if auth:
            # sipp 3.6 reads only the first challenge and knows only MD5.
            at = self.argv.index("--sip-auth")
            self.argv[at : at + 2] = ["--sip-auth", "on", "--sip-auth-algorithms", "MD5,SHA-256"]
        self.argv += extra or []
        if seed is not None:
            self.argv.append(f"127.0.0.1:{seed}")
        self.agent = AgentProcess(self.argv, self.log, self.sock, on_address_in_use=self._new_ports)

    @property
    def p(self) -> subprocess.Popen[bytes] | None:
        """The agent's process (None before it is started)."""
        return self.agent.proc

    def spawn(self) -> None:
        """Start the agent and return at once; `wait_ready` waits for it."""
        self.agent.spawn()

    def wait_ready(self) -> None:
        """Until its control socket answers (again on new ports if one picked as free was
        taken meanwhile)."""
        self.agent.wait_ready()

    def start(self) -> None:
        """Start the agent and return once it is ready."""
        self.spawn()
        self.wait_ready()

    def _new_ports(self) -> None:
        for flag, attr in (("--bind", "port"), ("--sip", "sip_port"), ("--dns", "dns_port")):
            if flag in self.argv:
                port = _free_port()
                setattr(self, attr, port)
                self.argv[self.argv.index(flag) + 1] = f"127.0.0.1:{port}"

    def kill(self) -> None:
        """SIGKILL by PID, reaped."""
        assert self.p is not None
        self.agent.kill()

    def pause(self, seconds: float) -> threading.Timer:
        """SIGSTOP now and SIGCONT `seconds` later (a stalled host: a GC pause, a starved
        VM); the timer that resumes it, for the caller to join."""
        self.agent.send(signal.SIGSTOP)
        resume = threading.Timer(seconds, self.agent.send, (signal.SIGCONT,))
        resume.start()
        return resume

    def status(self) -> dict[str, Any]:
        r = swimthor("status", "--control", self.sock, "--format", "json")
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout))

    def members(self) -> dict[str, dict[str, Any]]:
        r = swimthor("members", "--control", self.sock, "--format", "json")
        assert r.returncode == 0, r.stderr
        return {m["name"]: m for m in json.loads(r.stdout)}

    def owners(self, aor: str) -> list[str]:
        r = swimthor("route", aor, "--control", self.sock, "--format", "json")
        assert r.returncode == 0, r.stderr
        return [o["name"] for o in json.loads(r.stdout)["owners"]]


# Why a cluster's forks cancelled or gave up branches (the owner's `transactions` counters).
FORK_REASONS = ("cancels_sent", "cancels_received", "branch_timeouts", "branch_transport_errors")


def fork_counts(nodes: Iterable[Node]) -> Counter[str]:
    """FORK_REASONS so far, summed over the nodes: subtract two readings to see what a call
    did, which two phones' clocks cannot tell (each stamps a message when it logs it)."""
    total: Counter[str] = Counter()
    for node in nodes:
        counts = node.status()["sip"]["transactions"]
        total.update({k: counts[k] for k in FORK_REASONS})
    return total


def wait_until(cond: Callable[[], object], timeout: float, what: str) -> None:
    """bench/_procs.py's wait, polling every 0.2 s: each check here runs the CLI."""
    _wait_until(cond, timeout, what, interval=0.2)


@contextlib.contextmanager
def cluster_of(
    tmp_path: Path,
    n: int,
    dns: bool = False,
    auth: bool = False,
    extra: list[str] | None = None,
    extra_of: Callable[[int], list[str]] | None = None,
) -> Iterator[dict[str, Node]]:
    """n SIP agents n0..n{n-1} (local profile, sealed; each with a DNS front-end if `dns`, and
    the `extra` join flags, and node i's own `extra_of(i)`) converged; killed by PID at the
    end."""

    def flags(i: int) -> list[str]:
        return [*(extra or []), *(extra_of(i) if extra_of is not None else [])]

    key_file = tmp_path / "cluster.key"
    key_file.write_text(Keyring.encode_key(Keyring.generate()) + "\n")
    key_file.chmod(0o600)
    first = Node(tmp_path, "n0", key_file, None, dns, auth, flags(0))
    nodes = [first]
    try:
        first.start()  # first, and ready: the others join through the port it really got
        nodes += [
            Node(tmp_path, f"n{i}", key_file, first.port, dns, auth, flags(i)) for i in range(1, n)
        ]
        for node in nodes[1:]:
            node.spawn()
        for node in nodes[1:]:
            node.wait_ready()
        wait_until(
            lambda: all(
                sum(m["state"] == "alive" and "sip" in m["tags"] for m in n.members().values())
                == len(nodes)
                for n in nodes
            ),
            30,
            f"{len(nodes)} SIP agents to converge",
        )
        yield {n.name: n for n in nodes}
    finally:
        for node in nodes:
            node.agent.kill()
