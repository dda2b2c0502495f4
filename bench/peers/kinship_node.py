"""One kinship node as a process, for bench/peers/run.py.

kinship (PyPI ``kinship``, 0.4.0) is SWIM with Lifeguard in Rust, with an asyncio API:
``kinship.Config.<preset>(name=, bind=, seeds=, **overrides)`` builds a frozen config,
``async with kinship.Cluster(cfg)`` binds and joins the seeds, ``cluster.events()`` yields
``MemberJoined``/``MemberSuspect``/``MemberRecovered``/``MemberDead``/``MemberLeft``, and
``cluster.members()``/``cluster.stats()`` are read without waiting on the network. This script
prints one JSON line per membership event and one ``stats`` line a second (see _nodeutil).

Presets:

- ``local``: ``Config.local()`` (probe 200 ms / timeout 100 ms, 3 indirect checks, suspicion
  multiplier 3, gossip 200 ms to 3, plaintext on loopback, no TCP fallback ping).
- ``lan`` (also ``default`` and ``matched-lan``): ``Config.lan()``, memberlist's LAN defaults
  (1 s / 500 ms, 3, 4, 200 ms to 3), which are also swimthor's ``lan`` profile; plaintext like
  the swimthor runs (``--insecure``), since no key leaves loopback. ``Config()`` with no preset
  is the same as ``lan``.
- ``matched-local``: ``Config.local()`` with swimthor's ``local`` timings (150 ms / 80 ms, 2
  indirect checks, suspicion multiplier 4, gossip 50 ms to 3, retransmit multiplier 4,
  push-pull 15 s).

    python bench/peers/kinship_node.py --name n1 --bind 127.0.0.1:7947 --seed 127.0.0.1:7946
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import kinship
from _nodeutil import STATS_INTERVAL, UdpCounters, cpu_seconds, emit, parse_addr

MATCHED_LOCAL: dict[str, Any] = {
    "probe_interval": 0.15,
    "probe_timeout": 0.08,
    "indirect_checks": 2,
    "suspicion_mult": 4,
    "gossip_interval": 0.05,
    "gossip_nodes": 3,
    "retransmit_mult": 4,
    "push_pull_interval": 15.0,
    "gossip_to_the_dead": 15.0,
}

SETTINGS_SHOWN = (
    "probe_interval",
    "probe_timeout",
    "indirect_checks",
    "suspicion_mult",
    "suspicion_max_mult",
    "gossip_interval",
    "gossip_nodes",
    "retransmit_mult",
    "push_pull_interval",
    "tcp_fallback_ping",
    "insecure_plaintext",
)


def make_config(preset: str, name: str, bind: str, seeds: list[str]) -> kinship.Config:
    common: dict[str, Any] = {"name": name, "bind": bind, "seeds": seeds}
    if preset == "local":
        return kinship.Config.local(**common)
    if preset == "matched-local":
        return kinship.Config.local(**common, **MATCHED_LOCAL)
    if preset in ("lan", "default", "matched-lan"):
        return kinship.Config.lan(**common, insecure_plaintext=True)
    raise SystemExit(f"unknown kinship preset {preset!r}")


EVENTS: dict[type[Any], str] = {
    kinship.MemberJoined: "member joined",
    kinship.MemberRecovered: "member alive",
    kinship.MemberSuspect: "member suspect",
    kinship.MemberDead: "member failed",
    kinship.MemberLeft: "member left",
}
MEMBER_EVENTS = (
    kinship.MemberJoined,
    kinship.MemberRecovered,
    kinship.MemberSuspect,
    kinship.MemberDead,
    kinship.MemberLeft,
)


async def main(args: argparse.Namespace) -> None:
    parse_addr(args.bind)
    seeds = [args.seed] if args.seed else []
    for s in seeds:
        parse_addr(s)
    cfg = make_config(args.preset, args.name, args.bind, seeds)
    counters = UdpCounters()
    parent = os.getppid()
    end = time.monotonic() + args.max_seconds
    async with kinship.Cluster(cfg) as cluster:
        events = cluster.events()
        emit(
            "started",
            member=args.name,
            peer="kinship",
            version=kinship.__version__,
            preset=cfg.preset,
            settings={k: getattr(cfg, k) for k in SETTINGS_SHOWN},
        )

        async def read_events() -> None:
            async for ev in events:
                now = time.time()
                if isinstance(ev, MEMBER_EVENTS):
                    emit(EVENTS[type(ev)], member=ev.member.name, timestamp=now)
                elif isinstance(ev, kinship.EventsLost):
                    emit("events lost", count=ev.count, timestamp=now)

        reader = asyncio.create_task(read_events())
        try:
            while time.monotonic() < end and os.getppid() == parent and not reader.done():
                st = cluster.stats()
                dgrams, nbytes = counters.read()
                emit(
                    "stats",
                    alive=sorted(
                        m.name for m in cluster.members() if m.state is kinship.State.ALIVE
                    ),
                    datagrams_out=dgrams,
                    bytes_out=nbytes,
                    packets_in=st.packets_received,
                    probes_sent=st.probes_sent,
                    suspicions=st.suspicions,
                    refutations=st.refutations,
                    local_health=st.local_health,
                    cpu_s=cpu_seconds(),
                )
                await asyncio.sleep(STATS_INTERVAL)
        finally:
            reader.cancel()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--bind", required=True, help="127.0.0.1:PORT")
    p.add_argument("--seed", default=None, help="127.0.0.1:PORT of a node to join through")
    p.add_argument("--preset", default="local")
    p.add_argument("--nodes", type=int, default=5, help="cluster size (unused by kinship)")
    p.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long")
    asyncio.run(main(p.parse_args()))
