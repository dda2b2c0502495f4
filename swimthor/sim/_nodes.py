"""The simulator's records: heap entry kinds, node states, the event codes of the recorded
log, one simulated host (`_Node`), a partition and the network's counters. Shared by the engine
(`_engine.py`) and nothing else; `EV_*` are public (the recorded log's codes).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field, fields
from typing import Any

from ..keyring import Keyring
from ..membership import (
    Addr,
    MemberFailed,
    MemberHeld,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    MemberReleased,
    Membership,
    MemberSuspected,
)

# Heap entry kinds.
_DGRAM = 0  # (t, seq, kind, dst_addr, src_idx, src_addr, data, sent_at)
_TIMER = 1  # (t, seq, kind, node, gen)
_HANDLE = 2  # (t, seq, kind, node, gen, item): a slow node handles a queued input
_SREQ = 3  # (t, seq, kind, dst_addr, client_idx, client_gen, sid, client_addr, payload, opened)
_SREPLY = 4  # (t, seq, kind, client_idx, client_gen, sid, reply, server_idx)
_STIMEOUT = 5  # (t, seq, kind, client_idx, client_gen, sid)
_CALL = 6  # (t, seq, kind, fn, args): a fault transition or a join

# The cluster label of a sealed scenario (`Scenario.sealed`).
SIM_LABEL = "sim"

# Node states.
RUNNING = 0
PAUSED = 1
CRASHED = 2
LEFT = 3

# Event codes in the recorded log.
EV_JOINED = 1
EV_SUSPECTED = 2
EV_FAILED = 3
EV_LEFT = 4
EV_RECOVERED = 5
EV_HELD = 6  # held out of routing for flapping
EV_RELEASED = 7
_EV_CODES: dict[type, int] = {
    MemberJoined: EV_JOINED,
    MemberSuspected: EV_SUSPECTED,
    MemberFailed: EV_FAILED,
    MemberLeft: EV_LEFT,
    MemberRecovered: EV_RECOVERED,
    MemberHeld: EV_HELD,
    MemberReleased: EV_RELEASED,
}

# A core timer still due right after handle_timer: refire this often at once, then back off
# (the trio runtime does the same).
_STUCK_REFIRES = 8
_STUCK_BACKOFF = 0.01
# TCP connect timeout toward a host that does not answer (capped by tcp_timeout).
_CONNECT_TIMEOUT = 1.0
GOSSIP_PORT = 7946
# Warm-up: everyone joins node 0 within the first second, then once more at 1.5-2 s.

_PACK_DELIVERY = struct.Struct("<dII").pack
_PACK_EVENT = struct.Struct("<dIBQ").pack

# Inputs held for a paused or slow node: ("d", src_idx, src_addr, data, arrived, sent),
# ("s", client_idx, client_gen, sid, client_addr, payload, opened), ("r", sid, reply),
# ("t", sid) (a stream timeout that fired while paused).
_Item = tuple[Any, ...]


class _Node:
    """One simulated host: its current core (a restart replaces it) and its fault state."""

    __slots__ = (
        "addr",
        "core",
        "dc",
        "dci",
        "deaf",
        "flip_period",
        "flip_start",
        "ge_bad",
        "gen",
        "idx",
        "last_fire",
        "leaving",
        "live_count",
        "lossy",
        "mute",
        "name",
        "open_streams",
        "queue",
        "queue_dropped",
        "queued_dgrams",
        "sent_bytes",
        "sent_msgs",
        "slow",
        "slow_backlog",
        "slow_last",
        "special",
        "spins",
        "started",
        "state",
        "stream_bytes",
        "timer_at",
    )

    @property
    def no_tcp(self) -> bool:
        """Deaf or mute to everything: no TCP connection to or from it completes."""
        return self.deaf >= 1.0 or self.mute >= 1.0

    def __init__(self, idx: int, name: str, dc: str, dci: int, addr: Addr) -> None:
        self.idx = idx
        self.name = name
        self.dc = dc
        self.dci = dci
        self.addr = addr
        self.core: Membership | None = None
        self.gen = 0
        self.state = RUNNING
        self.started = 0.0
        self.timer_at: float | None = None
        self.spins = 0
        self.last_fire = -1.0
        self.leaving = False
        # Ingress needs the slow path (paused, slow, flip-flopping, or a slow backlog).
        self.special = False
        self.queue: list[_Item] = []
        self.queued_dgrams = 0
        self.queue_dropped = 0
        self.slow = False
        self.slow_last = 0.0
        self.slow_backlog = 0
        self.flip_start = 0.0
        self.flip_period = 0.0
        self.lossy = 0.0
        # One-way faults: the share of its inbound (deaf) or outbound (mute) datagrams lost.
        self.deaf = 0.0
        self.mute = 0.0
        self.ge_bad = False
        self.open_streams: set[int] = set()
        self.live_count = 1
        self.sent_msgs = 0
        self.sent_bytes = 0
        self.stream_bytes = 0


@dataclass(slots=True)
class _Partition:
    a: frozenset[int]
    b: frozenset[int] | None  # None: everybody not in a
    oneway: bool


@dataclass(slots=True)
class _Counters:
    delivered: int = 0
    dropped_loss: int = 0
    dropped_burst: int = 0
    dropped_lossy: int = 0
    dropped_partition: int = 0
    dropped_down: int = 0
    dropped_flipflop: int = 0
    dropped_deaf: int = 0
    dropped_mute: int = 0
    dropped_queue_full: int = 0
    no_route: int = 0
    duplicated: int = 0
    streams: int = 0
    streams_failed: int = 0
    timer_stuck: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def as_stats(self) -> dict[str, int]:
        """The counters by name, in declaration order (the result's `network` object)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}


def sealing(cluster_key: bytes, seed: int, node: _Node) -> dict[str, Any]:
    """A sealed scenario's keyring arguments for a node's core: the one cluster key, a keyring
    of its own per core (the replay cache is a node's), nonces from the seed."""
    return {
        "keyring": Keyring([cluster_key]),
        "label": SIM_LABEL,
        "nonce_source": random.Random(f"{seed}/nonce/{node.idx}/{node.gen}").randbytes,
    }
