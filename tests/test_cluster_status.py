"""Cluster-wide status from gossip: every member's view summary carries a small load report,
so one `swimthor status` shows every member's health, view and load."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
import trio

from swimthor.agent import Agent
from swimthor.cli import format_status_text
from swimthor.config import AgentConfig, SipConfig
from swimthor.membership._messages import (
    DecodeError,
    Summary,
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
    return AgentConfig(
        name=name,
        bind=("127.0.0.1", 0),
        seeds=seeds,
        insecure=True,
        profile="local",
        roles=["sip"],
        control=str(tmp_path / f"{name}.sock"),
        data_dir=str(tmp_path / name),
        sip=SipConfig(bind=("127.0.0.1", 0), domains=["example.com"], auth=False),
    )


async def test_one_status_shows_every_members_load(tmp_path: Path) -> None:
    a = Agent(config(tmp_path, "a", []), keyring=None, handle_signals=False)
    with trio.fail_after(30), structlog.testing.capture_logs():
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            assert a.bound_addr is not None
            b = Agent(config(tmp_path, "b", [a.bound_addr]), keyring=None, handle_signals=False)
            await nursery.start(b.run)

            def row(status: dict, name: str) -> dict:  # type: ignore[type-arg]
                return next((r for r in status["cluster"] if r["name"] == name), {})

            for _ in range(200):
                st = a.full_status()
                if "uptime" in row(st, "b").get("load", {}):
                    break
                await trio.sleep(0.05)
            st = a.full_status()
            rb = row(st, "b")
            assert rb["state"] == "alive" and rb["view"] == "same" and rb["dc"] == "dc1"
            assert rb["load"]["version"] == 100 and "sip_requests" in rb["load"]
            assert rb["load"]["bindings"] == 0
            assert row(st, "a")["load"]["version"] == 100
            text = format_status_text(st)
            assert "cluster:" in text
            line = next(x for x in text.splitlines() if x.strip().startswith("b "))
            assert "alive" in line and "same" in line
            nursery.cancel_scope.cancel()
