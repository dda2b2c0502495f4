"""In-process agents for tests: one configuration shape (loopback, port 0, plaintext, local
profile, role sip), so each test says only what differs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from swimthor.cli import main
from swimthor.config import AgentConfig


def agent_config(
    tmp_path: Path, name: str, seeds: list[tuple[str, int]] | None = None, **changes: Any
) -> AgentConfig:
    cfg = AgentConfig(
        name=name,
        bind=("127.0.0.1", 0),
        seeds=list(seeds or []),
        insecure=True,
        profile="local",
        roles=["sip"],
        control=str(tmp_path / f"{name}.sock"),
        data_dir=str(tmp_path / name),
    )
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def cli_in_thread(
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., Awaitable[tuple[int, str, str]]]:
    """`swimthor ARGV...` run by `main` in a worker thread (the agents under test keep
    running on trio's loop meanwhile): the exit code and what it printed."""

    async def cli(*argv: str) -> tuple[int, str, str]:
        code = await trio.to_thread.run_sync(main, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return cli
