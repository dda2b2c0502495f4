"""`swimthor join`: run an agent in the foreground until it leaves, and print how another
host joins a cluster it has just created."""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swimthor.config import AgentConfig, format_hostport
from swimthor.keyring import Keyring

from ._config import KEYRING_FILE, _make_private_dir, build_agent_config, resolve_keyring
from ._errors import PROG, _bind_error, _first_leaf

if TYPE_CHECKING:
    from swimthor.agent import Agent


def _configure_logging(cfg: AgentConfig) -> None:
    from swimthor import log

    log.configure(cfg.log_format, cfg.log_level)


def _unspecified(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def _guess_local_ip() -> str:
    """The address this host would send from (no packet is sent), for the join hint."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing lookup only
        return str(s.getsockname()[0])
    return "THIS-HOST"


def _advertised(agent: Agent, cfg: AgentConfig) -> tuple[str, int]:
    addr: Any = None
    core = getattr(agent, "core", None)
    local = getattr(core, "local", None)
    addr = getattr(local, "addr", None) or cfg.advertise or getattr(agent, "bound_addr", None)
    if not (isinstance(addr, tuple) and len(addr) == 2):
        addr = cfg.bind
    host, port = str(addr[0]), int(addr[1])
    return (_guess_local_ip() if _unspecified(host) else host), port


def join_hint(
    key_path: Path, advertise: tuple[str, int], keyring: Keyring, cfg: AgentConfig
) -> str:
    """How another host joins the cluster this agent just created (printed to stderr)."""
    extra = ""
    if cfg.label:
        extra += f" --label {cfg.label}"
    if cfg.profile != "lan":
        extra += f" --profile {cfg.profile}"
    return (
        f"{PROG}: started a new sealed cluster; its key (id {Keyring.key_id(keyring.primary)}) "
        f"is in {key_path}\n"
        f"{PROG}: to add a host, copy that file to it (keep it mode 0600) and run there:\n"
        f"{PROG}:   {PROG} join --key-file {key_path}{extra} {format_hostport(advertise)}\n"
        f"{PROG}: (a file holding just the base64 key works too, e.g. one written by "
        f"'{PROG} keygen'; the key is the \"primary\" value in {KEYRING_FILE})\n"
    )


def _cmd_join(args: argparse.Namespace) -> int:
    import trio

    cfg = build_agent_config(args)
    keyring, created = resolve_keyring(cfg)
    assert cfg.data_dir is not None
    _make_private_dir(Path(cfg.data_dir))
    _configure_logging(cfg)
    from swimthor.agent import Agent

    agent = Agent(cfg, keyring=keyring)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            if created is not None and keyring is not None:
                sys.stderr.write(join_hint(created, _advertised(agent, cfg), keyring, cfg))
                sys.stderr.flush()

    try:
        trio.run(serve)
    except OSError as e:
        raise _bind_error(e, cfg) from None
    except BaseExceptionGroup as group:
        leaf = _first_leaf(group)
        if isinstance(leaf, OSError):
            raise _bind_error(leaf, cfg) from None
        raise
    return 0
