"""Dissemination: the gossip tick, whom it goes to, and what rides on every packet.

SWIM spreads membership news by piggybacking it on the packets the protocol sends anyway
(pings, acks, ping-reqs) from a transmit-limited queue (`_broadcast`), each update
retransmitted about λ·log(N) times. Besides, every `gossip_interval` a member sends the
freshest pending updates to `gossip_nodes` members: live ones, and recently dead ones so they
can refute; at least `cross_dc_gossip_nodes` of them in other datacenters when there are any,
so news crosses datacenters every round. Targets come from shuffled round-robin lists, like
probe targets, so consecutive ticks reach different members.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ._member import Addr, Member, State

if TYPE_CHECKING:
    from ._core import Membership


class GossipRotation:
    """The shuffled round-robin lists gossip targets come from, by which members they hold:
    "all" of them, or the "remote" ones (in other datacenters than ours).

    Each list is shuffled as it is consumed (Fisher-Yates from the end, one step per member
    taken), not all at once when it is refilled: a refill copies the names, which is cheap,
    and the shuffling costs O(1) per target. (A whole shuffle per refill made the
    simulator's warm-up quadratic: 10,000 cores shuffling 10,000 names each.)"""

    __slots__ = ("_empty", "_order")

    def __init__(self) -> None:
        # which -> (names, how many of them are not yet taken this round)
        self._order: dict[str, tuple[list[str], int]] = {}
        self._empty: dict[str, int] = {}  # which -> members known when it came out empty

    def take(
        self,
        which: str,
        k: int,
        eligible: Callable[[Member], bool],
        taken: set[str],
        members: Mapping[str, Member],
        own: str,
        own_dc: str,
        rng: random.Random,
        known: int,
    ) -> list[Member]:
        """Up to k eligible members from the `which` list, added to `taken`; a fresh round
        over `members` (all but us, or those outside `own_dc`) when the list runs out.
        `known` is how many members we know (no refill while it stays what an empty list
        saw)."""
        out: list[Member] = []
        order, left = self._order.get(which, ([], 0))
        if not order and self._empty.get(which) == known:
            return out  # nothing there last time, and no member added since
        refilled = False
        while len(out) < k:
            if left == 0:
                if refilled:
                    break
                refilled = True
                if which == "all":
                    order = [n for n in members if n != own]
                else:
                    order = [n for n, m in members.items() if m.dc != own_dc]
                left = len(order)
                if not order:
                    self._empty[which] = known
                    break
            # One Fisher-Yates step: a uniform pick among the names not taken this round.
            left -= 1
            j = rng.randrange(left + 1)
            order[j], order[left] = order[left], order[j]
            name = order[left]
            m = members.get(name)
            if m is not None and eligible(m):
                out.append(m)
                taken.add(name)
        self._order[which] = (order, left)
        return out


def gossip(core: Membership, now: float) -> None:
    """The gossip tick: the pending updates to a few members."""
    if len(core._broadcasts) == 0:
        return
    n = core.num_live()
    limit = core.config.max_packet_size - core._overhead
    for target in gossip_targets(core, core.config.gossip_nodes, now):
        for m in take_broadcasts(core, limit, n, target.addr):
            core._send(target.addr, m)


def gossip_targets(core: Membership, k: int, now: float) -> list[Member]:
    """k members to gossip to: live ones, and recently dead ones so they can refute; at
    least `cross_dc_gossip_nodes` of them in other datacenters when there are any.

    Targets come from shuffled round-robin lists, like probe targets, so consecutive
    ticks reach different members: with a retransmit limit of at least the number of
    members, a broadcast reaches every one of them directly. Amortized O(k) a tick."""
    grace = core.config.gossip_to_dead_time
    chosen: list[Member] = []
    taken: set[str] = {core.name}

    def eligible(m: Member) -> bool:
        return m.name not in taken and (
            m.state.is_live or (m.state == State.DEAD and now - m.since < grace)
        )

    def rotate(which: str, k: int) -> list[Member]:
        members, known = core._members, len(core._names)
        return core._rotation.take(
            which, k, eligible, taken, members, core.name, core.dc, core._rng, known
        )

    remote_wanted = min(core.config.cross_dc_gossip_nodes, k)
    if remote_wanted:
        chosen += rotate("remote", remote_wanted)
    chosen += rotate("all", k - len(chosen))
    return chosen


def take_broadcasts(core: Membership, room: int, n: int, dest: Addr) -> list[bytes]:
    """The freshest pending updates that fit in `room` bytes of a packet to `dest`."""
    # In a small cluster every member gets every update directly: at least n - 1
    # transmissions (to distinct members, see `dest`), up to 2 x retransmit_mult.
    floor = min(n - 1, 2 * core.config.retransmit_mult)
    return core._broadcasts.get_broadcasts(0, room, n, dest=dest, floor=floor)
