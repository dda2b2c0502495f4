"""`swimthor monitor`: the agent's recent membership and routing events, text and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog
import trio
from agent_helpers import agent_config, cli_in_thread

from swimthor.agent import Agent
from swimthor.cli import format_event
from swimthor.config import AgentConfig


def config(tmp_path: Path, name: str, seeds: list[tuple[str, int]]) -> AgentConfig:
    return agent_config(tmp_path, name, seeds)


async def test_monitor_shows_joins_failures_and_routing_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = Agent(config(tmp_path, "a", []), keyring=None, handle_signals=False)

    cli = cli_in_thread(capsys)

    with trio.fail_after(30), structlog.testing.capture_logs():
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            assert a.bound_addr is not None
            b = Agent(config(tmp_path, "b", [a.bound_addr]), keyring=None, handle_signals=False)
            b_scope = trio.CancelScope()

            async def run_b() -> None:
                with b_scope:
                    await b.run()

            nursery.start_soon(run_b)
            sock = str(tmp_path / "a.sock")
            for _ in range(100):
                if any(e["event"] == "member joined" for e in a._recent):
                    break
                await trio.sleep(0.05)
            b_scope.cancel()  # b vanishes without leaving: a declares it failed
            for _ in range(200):
                if any(e["event"] == "member failed" for e in a._recent):
                    break
                await trio.sleep(0.05)

            code, out, err = await cli("monitor", "--once", "--format", "json", "--control", sock)
            assert code == 0, err
            events = [json.loads(line) for line in out.splitlines()]
            kinds = [e["event"] for e in events]
            assert "member joined" in kinds and "member failed" in kinds
            assert "owners changed" in kinds
            failed = next(e for e in events if e["event"] == "member failed")
            assert failed["member"] == "b" and failed["by"] == "a"
            assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)

            code, out, _ = await cli("monitor", "--once", "--control", sock)
            assert code == 0
            line = next(x for x in out.splitlines() if "member failed" in x)
            assert "member=b" in line and "by=a" in line and "confirmations=" in line

            # --since 0 keeps nothing of the past.
            code, out, _ = await cli("monitor", "--once", "--since", "0", "--control", sock)
            assert code == 0 and out == ""
            code, _, err = await cli("monitor", "--once", "--since", "-1", "--control", sock)
            assert code == 1 and "--since" in err
            nursery.cancel_scope.cancel()


def test_format_event() -> None:
    line = format_event({"seq": 3, "time": 0.0, "event": "member left", "member": "n2", "x": None})
    assert line.endswith("member left  member=n2")
