"""Real clients against real agents: sipp (Debian sip-tester) registers and calls through a
three-node `swimthor join` cluster on loopback, and keeps calling after the AOR's first owner
is killed.

Rules: every process is started here and killed by PID when the test ends, pass or fail; every
wait and every sipp run is bounded; nothing is sent anywhere but 127.0.0.1. Skips when sipp is
not installed (`make test` installs it as root).
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from swimthor.membership import Keyring

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) missing"),
]

SCENARIOS = Path(__file__).parent.parent / "swimthor" / "sip" / "scenarios"
DOMAIN = "example.com"
N = 3


def _free_port() -> int:
    while True:
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def swimthor(*args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swimthor", *args], capture_output=True, text=True, timeout=timeout
    )


class Node:
    def __init__(self, tmp: Path, name: str, key_file: Path, seed: int | None) -> None:
        self.name = name
        self.port = _free_port()
        self.sip_port = _free_port()
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
        ]  # fmt: skip
        if seed is not None:
            self.argv.append(f"127.0.0.1:{seed}")
        self.p: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.p = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=log)

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


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            if cond():
                return
        except AssertionError as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {last}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Node]]:
    key_file = tmp_path / "cluster.key"
    key_file.write_text(Keyring.encode_key(Keyring.generate()) + "\n")
    key_file.chmod(0o600)
    first = Node(tmp_path, "n0", key_file, None)
    nodes = [first] + [Node(tmp_path, f"n{i}", key_file, first.port) for i in range(1, N)]
    try:
        for node in nodes:
            node.start()
        wait_until(
            lambda: all(
                sum(m["state"] == "alive" and "sip" in m["tags"] for m in n.members().values()) == N
                for n in nodes
            ),
            30,
            "three SIP agents to converge",
        )
        yield {n.name: n for n in nodes}
    finally:
        for node in nodes:
            if node.p is not None and node.p.poll() is None:
                node.p.kill()
                node.p.wait()


class Sipp:
    """sipp processes of one test, killed by PID at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def users(self, name: str, users: list[str]) -> Path:
        path = self.tmp / name
        path.write_text("SEQUENTIAL\n" + "".join(f"{u}\n" for u in users))
        return path

    def run(self, *args: str, timeout: float = 60) -> dict[str, int]:
        """Run sipp to its end; return the final statistics it wrote."""
        stat = self.tmp / f"stat-{time.monotonic_ns()}.csv"
        argv = ["sipp", *args, "-nostdin", "-trace_stat", "-stf", str(stat), "-fd", "1"]
        p = subprocess.Popen(argv, cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(p)
        try:
            p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError(f"sipp {args} did not finish in {timeout} s") from None
        return _last_stats(stat) | {"exit": p.returncode}

    def background(self, *args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            ["sipp", *args, "-nostdin"],
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _last_stats(path: Path) -> dict[str, int]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    head, last = rows[0], rows[-1]
    wanted = {
        "created": "TotalCallCreated",
        "ok": "SuccessfulCall(C)",
        "failed": "FailedCall(C)",
        "retrans": "Retransmissions(C)",
    }
    return {k: int(last[head.index(v)]) for k, v in wanted.items()}


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Sipp]:
    s = Sipp(tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_registrations_are_held_by_two_owners_each(cluster: dict[str, Node], sipp: Sipp) -> None:
    users = sipp.users("users.csv", [f"user{i}" for i in range(300)])
    entry = cluster["n0"]
    stats = sipp.run(
        f"127.0.0.1:{entry.sip_port}",
        "-sf", str(SCENARIOS / "register.xml"),
        "-inf", str(users),
        "-key", "domain", DOMAIN,
        "-i", "127.0.0.1", "-p", str(_free_port()),
        "-m", "300", "-r", "200",
    )  # fmt: skip
    assert stats["ok"] == 300 and stats["failed"] == 0, stats
    bindings = {n.name: n.status()["sip"]["bindings"] for n in cluster.values()}
    assert sum(bindings.values()) == 600, bindings  # R = 2
    assert all(count > 0 for count in bindings.values()), bindings


def _register_uas(sipp: Sipp, node: Node, port: int) -> None:
    bob = sipp.users("bob.csv", ["bob"])
    stats = sipp.run(
        f"127.0.0.1:{node.sip_port}",
        "-sf", str(SCENARIOS / "register.xml"),
        "-inf", str(bob),
        "-key", "domain", DOMAIN,
        "-i", "127.0.0.1", "-p", str(port),
        "-m", "1",
    )  # fmt: skip
    assert stats["ok"] == 1, stats


def _calls(sipp: Sipp, node: Node, count: int, transport: str = "u1") -> dict[str, int]:
    callers = sipp.users("callers.csv", [f"caller{i}" for i in range(count)])
    return sipp.run(
        f"127.0.0.1:{node.sip_port}",
        "-sf", str(SCENARIOS / "uac.xml"),
        "-inf", str(callers),
        "-key", "domain", DOMAIN,
        "-s", "bob",
        "-i", "127.0.0.1", "-p", str(_free_port()),
        "-t", transport,
        "-m", str(count), "-r", "20",
        "-recv_timeout", "5000",
    )  # fmt: skip


def test_calls_through_the_cluster_survive_the_owner_being_killed(
    cluster: dict[str, Node], sipp: Sipp
) -> None:
    owners = cluster["n0"].owners(f"sip:bob@{DOMAIN}")
    assert len(owners) == 2
    first, second = owners
    outsider = next(name for name in cluster if name not in owners)
    # The callee registers through the second owner; callers come in through the node that
    # owns nothing of bob's, so every call takes two hops to reach the phone.
    uas_port = _free_port()
    _register_uas(sipp, cluster[second], uas_port)
    sipp.background("-sf", str(SCENARIOS / "uas.xml"), "-i", "127.0.0.1", "-p", str(uas_port))
    time.sleep(0.5)
    stats = _calls(sipp, cluster[outsider], 20)
    assert stats["ok"] == 20 and stats["failed"] == 0, stats
    stats = _calls(sipp, cluster[outsider], 10, transport="t1")
    assert stats["ok"] == 10 and stats["failed"] == 0, ("tcp", stats)

    victim = cluster[first]
    assert victim.p is not None
    victim.p.send_signal(signal.SIGKILL)
    victim.p.wait(10)
    survivors = [n for n in cluster.values() if n is not victim]
    wait_until(
        lambda: all(n.members()[first]["state"] == "dead" for n in survivors),
        20,
        f"{first} to be declared dead",
    )
    for node in survivors:
        stats = _calls(sipp, node, 10)
        assert stats["ok"] == 10 and stats["failed"] == 0, (node.name, stats)


def test_the_demo_prints_sipp_commands_that_work(tmp_path: Path, sipp: Sipp) -> None:
    """`swimthor demo` (what `make run` starts) gives every node SIP and prints sipp command
    lines; run as printed, bob registers, answers, and 5 calls through node1 complete."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "swimthor", "demo", "--nodes", "3", "--duration", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert demo.stdout is not None
        commands: dict[str, list[str]] = {}
        deadline = time.monotonic() + 30
        while len(commands) < 3 and time.monotonic() < deadline:
            line = demo.stdout.readline()
            for label in ("register bob", "answer as bob", "call bob"):
                if line.strip().startswith(f"{label}: sipp "):
                    commands[label] = line.split(": ", 1)[1].split()[1:]
        assert len(commands) == 3, commands
        stats = sipp.run(*commands["register bob"])
        assert stats["ok"] == 1, stats
        sipp.background(*commands["answer as bob"])
        time.sleep(0.5)
        call = commands["call bob"]
        call[call.index("-m") + 1] = "5"
        call[call.index("-r") + 1] = "10"
        stats = sipp.run(*call, "-recv_timeout", "5000")
        assert stats["ok"] == 5 and stats["failed"] == 0, stats
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(15)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
