"""One swim-protocol node as a process, for bench/peers/run.py.

swim-protocol (PyPI ``swim-protocol``, 0.6.3, module ``swimprotocol``) is SWIM in pure Python
on asyncio, without Lifeguard. A member's name is its ``host:port``. It is driven the way its
own demo (``swimprotocol.demo.run``) drives it: ``UdpConfig(secret=, local_name=, peers=,
ping_interval=, ...)``, then ``Members(config)``, ``Worker(config, members)`` and
``UdpTransport(config, worker)``, the transport and the worker entered as async context
managers. Status changes (``ONLINE``, ``SUSPECT``, ``OFFLINE``) come through
``members.listener.on_notify(callback)``; ``member.status_time`` is the wall clock of the
change, which is the timestamp printed. There is no shutdown beyond leaving the contexts, and
no leave message. Packets are always signed (HMAC with ``secret``); there is no plaintext mode.

The worker asserts that it has someone to ping, so the first node is started with one other
node's address as its peer (run.py passes it as ``--seed``), and every other node with the
first node's.

Presets (swim-protocol has no presets of its own, and no Lifeguard, gossip fan-out or
retransmit knobs):

- ``default``: ``UdpConfig`` defaults: ping every 1 s, ping timeout 300 ms, 1 ping-req,
  ping-req timeout 900 ms, suspect timeout 5 s, sync (gossip) every 500 ms to one member.
- ``local`` (also ``matched-local``): swimthor's ``local`` profile mapped onto its knobs: ping
  150 ms, timeout 80 ms, 2 ping-reqs, ping-req timeout 70 ms (the rest of the probe interval,
  as memberlist waits), suspect timeout ``suspicion_mult * log10(n) * probe_interval`` with
  multiplier 4 (the suspicion timeout memberlist uses before Lifeguard stretches it; 0.42 s at
  5 nodes), sync every 50 ms / 3 = 16.7 ms (one member per sync, so this gives the same 60
  gossip targets a second as 3 members every 50 ms).
- ``lan`` (also ``matched-lan``): swimthor's ``lan`` (memberlist LAN) the same way: 1 s, 500
  ms, 3 ping-reqs, 500 ms, suspect timeout ``4 * log10(n) * 1 s``, sync every 200 ms / 3.

    python bench/peers/swimprotocol_node.py --bind 127.0.0.1:7947 --seed 127.0.0.1:7946
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import time
from contextlib import AsyncExitStack
from typing import Any

from _nodeutil import STATS_INTERVAL, UdpCounters, cpu_seconds, emit, parse_addr
from swimprotocol.members import Member, Members
from swimprotocol.status import Status
from swimprotocol.udp import UdpTransport
from swimprotocol.udp.config import UdpConfig
from swimprotocol.worker import Worker

SECRET = "swimthor-bench"


def settings(preset: str, n: int) -> dict[str, Any]:
    def matched(interval: float, timeout: float, indirect: int, gossip: float) -> dict[str, Any]:
        return {
            "ping_interval": interval,
            "ping_timeout": timeout,
            "ping_req_count": indirect,
            "ping_req_timeout": round(interval - timeout, 6),
            "suspect_timeout": round(4 * math.log10(max(1, n)) * interval, 6),
            "sync_interval": round(gossip / 3, 6),
        }

    if preset == "default":
        return {}
    if preset in ("local", "matched-local"):
        return matched(0.15, 0.08, 2, 0.05)
    if preset in ("lan", "matched-lan"):
        return matched(1.0, 0.5, 3, 0.2)
    raise SystemExit(f"unknown swim-protocol preset {preset!r}")


SHOWN = (
    "ping_interval",
    "ping_timeout",
    "ping_req_count",
    "ping_req_timeout",
    "suspect_timeout",
    "sync_interval",
)


async def main(args: argparse.Namespace) -> None:
    parse_addr(args.bind)
    peers = [args.seed] if args.seed else []
    for s in peers:
        parse_addr(s)
    config = UdpConfig(
        secret=SECRET, local_name=args.bind, peers=peers, **settings(args.preset, args.nodes)
    )
    members = Members(config)
    worker = Worker(config, members)
    transport = UdpTransport(config, worker)
    counters = UdpCounters()
    # What this node last printed for each member, so that a change is printed once even when
    # two changes reach the callback together, and none is lost if a callback is late.
    shown: dict[str, Status] = {}
    ever_online: set[str] = set()

    def report(member: Member) -> None:
        if member.local:
            return
        status = member.status
        if shown.get(member.name, Status.OFFLINE) == status:
            return
        if status == Status.ONLINE:
            kind = "member alive" if member.name in ever_online else "member joined"
            ever_online.add(member.name)
        elif status == Status.SUSPECT:
            kind = "member suspect"
        else:
            kind = "member failed"
        shown[member.name] = status
        emit(kind, member=member.name, timestamp=member.status_time)

    async def on_change(member: Member) -> None:
        report(member)

    parent = os.getppid()
    end = time.monotonic() + args.max_seconds
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(transport)
        await stack.enter_async_context(worker)
        await stack.enter_async_context(members.listener.on_notify(on_change))
        emit(
            "started",
            member=args.bind,
            peer="swim-protocol",
            preset=args.preset,
            settings={k: getattr(config, k) for k in SHOWN},
        )
        while time.monotonic() < end and os.getppid() == parent:
            for m in list(members.non_local):
                report(m)
            dgrams, nbytes = counters.read()
            emit(
                "stats",
                alive=sorted(
                    [members.local.name]
                    + [m.name for m in members.non_local if m.status == Status.ONLINE]
                ),
                datagrams_out=dgrams,
                bytes_out=nbytes,
                cpu_s=cpu_seconds(),
            )
            await asyncio.sleep(STATS_INTERVAL)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", default=None, help="ignored: a swim-protocol name is its address")
    p.add_argument("--bind", required=True, help="127.0.0.1:PORT, also the member's name")
    p.add_argument("--seed", default=None, help="127.0.0.1:PORT of a node to join through")
    p.add_argument("--preset", default="default")
    p.add_argument("--nodes", type=int, default=5, help="cluster size, for the suspect timeout")
    p.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long")
    asyncio.run(main(p.parse_args()))
