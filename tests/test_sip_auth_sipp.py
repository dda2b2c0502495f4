"""Digest authentication against real clients and real agents: subscribers added with the
CLI, sipp registering with the right and the wrong password through every node, a call
challenged with 407 and then set up, and subscribers surviving a restart of the whole
cluster (the journal in each data dir).

Rules as in test_sip_sipp: processes killed by PID at the end, every wait bounded, loopback
only; skipped without sipp.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sip_agents import DOMAIN, Node, _free_port, cluster_of, swimthor, wait_until
from sipp_helpers import SCENARIOS, Sipp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) missing"),
]


def register(sipp: Sipp, node: Node, user: str, password: str, port: int) -> dict[str, int]:
    users = sipp.users(f"{user}-{port}.csv", [user])
    return sipp.run(
        f"127.0.0.1:{node.sip_port}",
        "-sf", str(SCENARIOS / "register_auth.xml"), "-inf", str(users),
        "-key", "domain", DOMAIN, "-au", user, "-ap", password,
        "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-recv_timeout", "3000",
        timeout=30,
    )  # fmt: skip


def bindings_of(nodes: dict[str, Node], aor: str) -> int:
    owners = nodes["n0"].owners(aor)
    return sum(nodes[o].status()["sip"]["bindings"] for o in owners)


def test_subscribers_register_with_digest_and_survive_a_full_restart(
    tmp_path: Path, sipp: Sipp
) -> None:
    with cluster_of(tmp_path, 3, auth=True) as nodes:
        n0 = nodes["n0"]
        r = swimthor("subscriber", "add", f"sip:alice@{DOMAIN}", "--password", "s3cret",
                     "--control", n0.sock)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"sip:alice@{DOMAIN}: stored on ")
        r = subprocess.run(
            [*_cli(), "subscriber", "add", f"sip:bob@{DOMAIN}", "--password-file", "-",
             "--control", nodes["n1"].sock],
            input="b0b-pass\n", capture_output=True, text=True, timeout=15,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        for node in nodes.values():
            r = swimthor("subscriber", "list", "--control", node.sock)
            assert r.stdout.split() == [f"sip:alice@{DOMAIN}", f"sip:bob@{DOMAIN}"], r.stdout
        # A bad AOR, a foreign domain: one error line each.
        for bad in ("alice", "sip:alice@elsewhere.org"):
            r = swimthor("subscriber", "add", bad, "--password", "x", "--control", n0.sock)
            assert r.returncode == 1 and r.stderr.startswith("swimthor: error: "), r.stderr

        # The wrong password registers nothing, through any node.
        for node in nodes.values():
            stats = register(sipp, node, "alice", "guess", _free_port())
            assert stats["ok"] == 0, stats
        assert bindings_of(nodes, f"sip:alice@{DOMAIN}") == 0
        # The right one registers, through a node that owns alice and through one that
        # does not (the REGISTER is forwarded with its credentials to an owner).
        for node in nodes.values():
            stats = register(sipp, node, "alice", "s3cret", _free_port())
            assert stats["ok"] == 1 and stats["failed"] == 0, (node.name, stats)
        # Three contacts (one sipp port per run), each on both owners (R = 2).
        assert bindings_of(nodes, f"sip:alice@{DOMAIN}") == 6

        # A call from outside by alice: challenged with 407, then set up with credentials.
        bob_port = _free_port()
        stats = register(sipp, nodes["n2"], "bob", "b0b-pass", bob_port)
        assert stats["ok"] == 1, stats
        # Returns once bob's UAS has bound its port: it answers from then on.
        sipp.background("-sf", str(SCENARIOS / "uas.xml"), "-i", "127.0.0.1", "-p", str(bob_port))
        callers = sipp.users("alice.csv", ["alice"])
        for node in nodes.values():
            stats = sipp.run(
                f"127.0.0.1:{node.sip_port}",
                "-sf", str(SCENARIOS / "uac_auth.xml"), "-inf", str(callers),
                "-key", "domain", DOMAIN, "-s", "bob", "-au", "alice", "-ap", "s3cret",
                "-i", "127.0.0.1", "-p", str(_free_port()), "-m", "2", "-r", "5",
                "-recv_timeout", "5000", timeout=30,
            )  # fmt: skip
            assert stats["ok"] == 2 and stats["failed"] == 0, (node.name, stats)
        # Without the right password the call is never set up.
        stats = sipp.run(
            f"127.0.0.1:{n0.sip_port}",
            "-sf", str(SCENARIOS / "uac_auth.xml"), "-inf", str(callers),
            "-key", "domain", DOMAIN, "-s", "bob", "-au", "alice", "-ap", "nope",
            "-i", "127.0.0.1", "-p", str(_free_port()), "-m", "1", "-recv_timeout", "2000",
            timeout=30,
        )  # fmt: skip
        assert stats["ok"] == 0, stats

        # Remove bob; then the whole cluster goes down and comes back on the same data dirs.
        r = swimthor("subscriber", "remove", f"sip:bob@{DOMAIN}", "--control", n0.sock)
        assert r.returncode == 0 and "removed" in r.stdout, r.stderr
        for node in nodes.values():
            node.kill()
        for node in nodes.values():
            node.start()
        wait_until(
            lambda: all(
                sum(m["state"] == "alive" for m in n.members().values()) == 3
                for n in nodes.values()
            ),
            30,
            "the restarted cluster to converge",
        )
        wait_until(
            lambda: (
                swimthor("subscriber", "list", "--control", n0.sock).stdout.split()
                == [f"sip:alice@{DOMAIN}"]
            ),
            20,
            "the subscribers to be back (alice, not the removed bob)",
        )
        stats = register(sipp, nodes["n1"], "alice", "s3cret", _free_port())
        assert stats["ok"] == 1, stats
        stats = register(sipp, nodes["n1"], "bob", "b0b-pass", _free_port())
        assert stats["ok"] == 0, stats


def _cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "swimthor"]
