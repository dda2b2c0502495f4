"""In-process agents for tests: one configuration shape (loopback, port 0, plaintext, local
profile, role sip), so each test says only what differs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
