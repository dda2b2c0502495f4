"""Cluster-wide status from gossip: every member's view summary carries a small load report,
so one `swimthor status` shows every member's health, view and load."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
import trio
from agent_helpers import agent_config

from swimthor.agent import Agent
from swimthor.cli import format_status_text
from swimthor.config import AgentConfig, SipConfig
from swimthor.membership import (
    ClusterRow,
    DecodeError,
    StatusReply,
    Summary,
    Suspect,
    decode_packet,
    encode_message,
    encode_packet,
)


def test_summary_load_round_trips_and_is_bounded() -> None:
    s = Summary("n1", 3, b"\x01" * 16, 0, 5, (("bindings", 12), ("uptime", 30)))
    packet = decode_packet(encode_packet("n1", [encode_message(s)]))
    assert list(packet.messages) == [s]
    plain = Summary("n1", 3, b"\x01" * 16, 0, 5)  # an older sender: no load at all
    assert list(decode_packet(encode_packet("n1", [encode_message(plain)])).messages) == [plain]
    too_many = Summary("n1", 3, b"", 0, 5, tuple((f"k{i}", i) for i in range(9)))
    with pytest.raises(DecodeError, match="load"):
        decode_packet(encode_packet("n1", [encode_message(too_many)]))
    negative = Summary("n1", 3, b"", 0, 5, (("x", -1),))
    with pytest.raises(DecodeError):
        decode_packet(encode_packet("n1", [encode_message(negative)]))


def config(tmp_path: Path, name: str, seeds: list[tuple[str, int]]) -> AgentConfig:
    sip = SipConfig(bind=("127.0.0.1", 0), domains=["example.com"], auth=False)
    return agent_config(tmp_path, name, seeds, sip=sip)


async def test_one_status_shows_every_members_load(tmp_path: Path) -> None:
    a = Agent(config(tmp_path, "a", []), keyring=None, handle_signals=False)
    with trio.fail_after(30), structlog.testing.capture_logs():
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            assert a.bound_addr is not None
            b = Agent(config(tmp_path, "b", [a.bound_addr]), keyring=None, handle_signals=False)
            await nursery.start(b.run)

            def row(status: StatusReply, name: str) -> ClusterRow | None:
                return next((r for r in status["cluster"] if r["name"] == name), None)

            for _ in range(400):  # until b's summary (with its load) matches our view
                st = a.full_status()
                rb = row(st, "b")
                if rb is not None and "uptime" in rb.get("load", {}) and rb["view"] == "same":
                    break
                await trio.sleep(0.05)
            st = a.full_status()
            rb, ra = row(st, "b"), row(st, "a")
            assert rb is not None and ra is not None
            assert rb["state"] == "alive" and rb["view"] == "same" and rb["dc"] == "dc1"
            assert rb["load"]["version"] == 100 and "sip_requests" in rb["load"]
            assert rb["load"]["bindings"] == 0
            assert ra["load"]["version"] == 100
            text = format_status_text(st)
            assert "cluster:" in text
            line = next(x for x in text.splitlines() if x.strip().startswith("b "))
            assert "alive" in line and "same" in line
            nursery.cancel_scope.cancel()


async def test_status_shows_a_suspected_member_and_one_whose_view_differs(tmp_path: Path) -> None:
    """Three live agents; a third member's gossip says b is suspect and that c's view differs
    (forged straight into a's core, so the states hold while status is read)."""
    import json

    from swimthor.cli import format_status_json
    from swimthor.keyring import wrap_plain

    a = Agent(config(tmp_path, "a", []), keyring=None, handle_signals=False)
    with trio.fail_after(30), structlog.testing.capture_logs():
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            assert a.bound_addr is not None
            for name in ("b", "c"):
                other = Agent(
                    config(tmp_path, name, [a.bound_addr]), keyring=None, handle_signals=False
                )
                await nursery.start(other.run)
            for _ in range(200):
                if a.core.num_live() == 3:
                    break
                await trio.sleep(0.05)
            b = a.core.member("b")
            assert b is not None
            news = [
                encode_message(Suspect("b", b.incarnation, "c")),
                encode_message(Summary("c", 2**40, b"\x00" * 16, 0, 3)),
            ]
            now = trio.current_time()
            a.core.receive_datagram(wrap_plain("", encode_packet("c", news)), ("127.0.0.1", 9), now)
            status = a.full_status()  # read in the same tick: nothing has refuted it yet
            rows = {r["name"]: r for r in status["cluster"]}
            assert rows["b"]["state"] == "suspect"
            assert rows["c"]["view"] == "differs"
            # (b may differ too: a's own digest moved when it marked b suspect.)
            assert "c" in status["converged"]["members_disagreeing"]
            text = format_status_text(status)
            b_line = next(x for x in text.splitlines() if x.strip().startswith("b "))
            c_line = next(x for x in text.splitlines() if x.strip().startswith("c "))
            assert "suspect" in b_line and "differs" in c_line
            assert "disagree (" in text and "c)" in text
            doc = json.loads(format_status_json(status))
            assert {r["name"]: r["state"] for r in doc["cluster"]}["b"] == "suspect"
            nursery.cancel_scope.cancel()
