"""Real clients against real agents: sipp (Debian sip-tester) registers and calls through a
three-node `swimthor join` cluster on loopback, and keeps calling after the AOR's first owner
is killed.

Rules: every process is started here and killed by PID when the test ends, pass or fail; every
wait and every sipp run is bounded; nothing is sent anywhere but 127.0.0.1. Skips when sipp is
not installed (`make test` installs it as root).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sip_agents import DOMAIN, Node, _free_port, cluster_of, wait_until
from sipp_helpers import SCENARIOS, Sipp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) missing"),
]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Node]]:
    with cluster_of(tmp_path, 3) as nodes:
        yield nodes


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
    # Each REGISTER an owner applied went to the other owner before its 200: timed.
    timed = sum(n.status()["sip"]["latency"]["register"]["count"] for n in cluster.values())
    assert timed == 300, timed


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
    # Returns once the UAS has bound its port: it answers from then on.
    sipp.background("-sf", str(SCENARIOS / "uas.xml"), "-i", "127.0.0.1", "-p", str(uas_port))
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
    """`swimthor demo` (what `make run` starts) gives every node SIP and DNS and prints sipp
    and dig command lines; run as printed, bob registers, answers, and 5 calls through node1
    complete, and dig finds the three SIP servers and bob's two owners."""
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
        while len(commands) < 5 and time.monotonic() < deadline:
            line = demo.stdout.readline()
            for label in ("register bob", "answer as bob", "call bob"):
                if line.strip().startswith(f"{label}: sipp "):
                    commands[label] = line.split(": ", 1)[1].split()[1:]
            for label in ("SIP servers", "bob's owners"):
                if line.strip().startswith(f"{label}: dig "):
                    commands[label] = line.split(": ", 1)[1].split()
        assert len(commands) == 5, commands
        stats = sipp.run(*commands["register bob"])
        assert stats["ok"] == 1, stats
        sipp.background(*commands["answer as bob"])  # returns once bob's port is bound
        call = commands["call bob"]
        call[call.index("-m") + 1] = "5"
        call[call.index("-r") + 1] = "10"
        stats = sipp.run(*call, "-recv_timeout", "5000")
        assert stats["ok"] == 5 and stats["failed"] == 0, stats
        if shutil.which("dig") is not None:
            servers = subprocess.run(
                [*commands["SIP servers"], "+short"], capture_output=True, text=True, timeout=10
            )
            assert len(servers.stdout.split("\n")) - 1 == 3, servers.stdout
            owners = subprocess.run(
                commands["bob's owners"], capture_output=True, text=True, timeout=10
            )
            assert [line.split()[0] for line in owners.stdout.splitlines()] == ["10", "20"]
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(15)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
