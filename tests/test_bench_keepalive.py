"""bench/sip/keepalive.py at a small scale: 200 phones behind NAT on one UDP socket, a
three-node cluster pinging them every second, and the figures it prints checked for sense
(each contact pinged by its edge and no other node, none removed, the counts adding up).

Real processes: three `swimthor join` on 127.0.0.1, killed by PID when the bench ends. No
wall-clock thresholds: CPU figures are only checked to be figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# The benchmarks are run as `python -m bench.sip.keepalive` from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.sip import keepalive

CONTACTS = 200


def test_phone_addresses_are_distinct_loopback_and_contacts_private() -> None:
    hosts = {keepalive.phone_host(i) for i in range(100_000)}
    assert len(hosts) == 100_000
    assert all(h.startswith("127.") and not h.startswith("127.0.") for h in hosts)
    assert all(not h.endswith((".0", ".255")) for h in hosts)
    assert keepalive.private_host(70_000).startswith("10.")
    register = keepalive.register_message(7, 5555, 600).decode()
    assert f"Via: SIP/2.0/UDP {keepalive.phone_host(7)}:5555;" in register
    assert f"Contact: <sip:ka7@{keepalive.private_host(7)}:5060>" in register


def test_options_answer_copies_the_transaction_and_tags_to() -> None:
    ping = (
        b"OPTIONS sip:ka1@10.0.0.1:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-ka-1\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:keepalive@127.0.0.1:5060>;tag=x\r\n"
        b"To: <sip:ka1@10.0.0.1:5060>\r\n"
        b"Call-ID: z9hG4bK-ka-1@127.0.0.1:5060\r\n"
        b"CSeq: 1 OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    answer = keepalive.options_answer(ping)
    assert answer is not None
    lines = answer.split(b"\r\n")
    assert lines[0] == b"SIP/2.0 200 OK"
    assert b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-ka-1" in lines
    assert b"To: <sip:ka1@10.0.0.1:5060>;tag=kb" in lines
    assert b"CSeq: 1 OPTIONS" in lines and b"Max-Forwards: 70" not in lines


@pytest.mark.slow
def test_small_keepalive_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keepalive.json"
    argv = ["--contacts", str(CONTACTS), "--interval", "1", "--windows", "3", "--rate", "200"]
    assert keepalive.main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "checks: all passed" in printed and "idle window" in printed
    assert "bindings window" in printed and "keepalive window" in printed
    r = json.loads(out.read_text())

    assert r["registration"]["acknowledged"] == CONTACTS
    totals = r["totals"]
    assert totals["contacts_registered"] == CONTACTS
    assert totals["not_pinged_in_window"] == 0
    assert totals["pinged_by_more_than_one_node"] == 0
    assert totals["pinged_by_a_node_not_their_edge"] == 0
    assert totals["pinged_twice_within_half_an_interval"] == 0
    assert totals["removed"] == 0
    assert totals["wrong_request_uri"] == 0 and totals["stray_datagrams"] == {}
    assert sum(totals["pings_per_contact_in_window"].values()) == CONTACTS

    rows = r["nodes"]
    assert [row["edge_for"] for row in rows] == [67, 67, 66]  # round robin
    for row in rows:
        assert row["watched"] == row["edge_for"]  # the edge, and only it, watches its phones
        assert row["paths_added"] >= row["edge_for"]  # (and again for a retransmission)
        assert row["lost"] == 0
        assert row["pings_per_s"] > 0 and row["node_pings"] > 0
        assert row["idle_cpu_percent"] >= 0 and row["cpu_percent"] >= 0
        assert row["bindings_cpu_percent"] >= 0
    assert totals["watched_without_a_200"] == 0
    # With keepalives off the same contacts are registered (and get their Paths) but never
    # pinged.
    held = r["bindings_window"]
    assert held["registration"]["acknowledged"] == CONTACTS
    assert held["pings_received"] == 0
    assert all(row["watched"] == 0 for row in held["nodes"])
    assert sum(row["bindings"] for row in held["nodes"]) == 2 * CONTACTS
    assert sum(row["bindings"] for row in rows) == 2 * CONTACTS  # R = 2
    assert r["passed"] is True and isinstance(r["verdict"]["met"], bool)
