"""Whom a member probes, and when: the shared probe schedule and the random probe order.

The shared schedule (`probe_schedule = "shared"`): every live member sits on one ring, ordered
by a hash of its name, and probe rounds follow the wall clock (`probe_interval` long, each
member's offset by a phase from its name, so the cluster's probes spread over the interval).
In round r every member probes the member `1 + mix(r) % (n - 1)` places after it on the ring:
the same offset for all, so every live member is probed exactly once a round, and a different
one each round.

The random schedule (SWIM's own, and memberlist's): randomized round-robin over a shuffled
list of the live members, reshuffled when it runs out; a new member goes in at a random place,
so it is probed within the round.

Pure functions of their arguments and a `random.Random` the core passes in; the core keeps
the timers and the ring itself (`_live_set.LiveSet.ring`).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import random
from collections.abc import Mapping

from ._member import Member


# Shared by every core in a process (the simulator runs thousands): the ring position of a
# name. A pure function of its argument.
@functools.lru_cache(maxsize=1 << 16)
def ring_entry(name: str) -> tuple[bytes, str]:
    key = hashlib.blake2b(name.encode(), digest_size=8, person=b"swimthor-ring").digest()
    return (key, name)


def round_mix(r: int) -> int:
    """A well-mixed 64-bit value of a probe round number (splitmix64's finalizer)."""
    z = (r * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def name_phase(name: str) -> float:
    """Where in each round a member's own round starts, as a fraction of the interval."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big") / 2**32


class ProbeSchedule:
    """One member's probe schedule: its rounds on the shared schedule, and its probe order
    on the random one."""

    __slots__ = ("index", "order", "own", "phase")

    def __init__(self, own: str) -> None:
        self.own = own
        self.phase = name_phase(own)
        self.order: list[str] = []
        self.index = 0

    # ------------------------------------------------------------ shared schedule

    def round(self, wall_now: float, base: float) -> int:
        """The number of our round at wall clock `wall_now` (rounds `base` seconds long)."""
        return math.floor(wall_now / base - self.phase)

    def next_round(self, now: float, wall_offset: float, base: float, interval: float) -> float:
        """The start of the next round of ours, in core time (each member's rounds are offset
        by a phase from its name, so the cluster's probes spread over the interval); later
        when our health stretches the interval past `base`."""
        r = self.round(now + wall_offset, base) + 1
        t = (r + self.phase) * base - wall_offset
        if t <= now:  # float edge
            t += base
        return max(t, now + interval - base) if interval > base else t

    def ring_target(
        self,
        ring: list[tuple[bytes, str]],
        members: Mapping[str, Member],
        r: int,
        rng: random.Random,
    ) -> Member | None:
        """The member we probe in round r: the one `1 + round_mix(r) % (n - 1)` places after
        us on the ring of live members (None with fewer than two)."""
        n = len(ring)
        if n < 2:
            return None
        i = bisect.bisect_left(ring, ring_entry(self.own))
        if i >= n or ring[i][1] != self.own:
            return self.next_target(members, rng)  # we are not live in our own view (leaving)
        # The same offset for every member in a round (so every member is probed once a
        # round), but not the previous round's plus one: then each member's probers in
        # successive rounds had all probed its ring predecessor the round before, and a slow
        # predecessor kept all of them busy (simulator: a crash unnoticed for 20 s).
        offset = 1 + round_mix(r) % (n - 1)
        name = ring[(i + offset) % n][1]
        m = members.get(name)
        return m if m is not None and m.state.is_live and name != self.own else None

    # ------------------------------------------------------------ random schedule

    def next_target(self, members: Mapping[str, Member], rng: random.Random) -> Member | None:
        """The next live member in the probe order; a fresh shuffle of the live members when
        the order runs out."""
        for _ in range(len(self.order) + 1):
            if self.index >= len(self.order):
                self.order = [n for n, m in members.items() if n != self.own and m.state.is_live]
                rng.shuffle(self.order)
                self.index = 0
                if not self.order:
                    return None
            name = self.order[self.index]
            self.index += 1
            m = members.get(name)
            if m is not None and m.state.is_live and name != self.own:
                return m
        return None

    def add(self, name: str, rng: random.Random) -> None:
        # memberlist inserts a new member at a random position so it is probed this round.
        pos = rng.randint(self.index, len(self.order))
        self.order.insert(pos, name)
