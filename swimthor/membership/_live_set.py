"""The live set and the view digest, kept incrementally as members change state.

A member is live while it is alive or suspect. The core keeps, for its own view: each live
member's term of the digest (by name; their number is how many are live), the same members
as the shared probe schedule's ring (sorted by `ring_entry`), and the view digest: the XOR of
a hash of (name, incarnation) over the live members, which every summary gossips so members
can tell whether their views agree. Each
change of one member's state or incarnation costs O(log N) (`touch`), so nothing per packet is
O(members). During a push-pull merge the ring is appended to and sorted once at the end, and
the digest is settled once (`batching`).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from collections.abc import Iterator, Mapping, Sequence

from ._member import Member, State
from ._probe_schedule import ring_entry

__all__ = ["LiveSet", "digest_part", "ring_entry"]  # ring_entry: the order of the ring it keeps


# Shared by every core in a process (the simulator runs thousands): the digest term of a
# (name, incarnation). A pure function of its arguments.
@functools.lru_cache(maxsize=1 << 16)
def digest_part(name: str, incarnation: int) -> int:
    h = hashlib.blake2b(digest_size=8)
    h.update(name.encode())
    h.update(incarnation.to_bytes(8, "big"))
    return int.from_bytes(h.digest(), "big")


class LiveSet:
    """The live members of one view, their ring, and the view digest over them."""

    __slots__ = ("_acc", "_part", "_ring_dirty", "batching", "digest", "ring")

    def __init__(self) -> None:
        # Live members sorted by a hash of their name: the shared probe schedule's ring.
        self.ring: list[tuple[bytes, str]] = []
        self._ring_dirty = False  # appended to during a merge, sorted when it ends
        self.batching = False  # a merge is under way: settle once at its end
        self.digest = b""  # the view digest as last settled
        self._acc = 0  # the XOR of every live member's digest part
        # name -> its term in _acc, for the live members only (the simulator keeps thousands
        # of views of thousands of members: one dict, no set beside it)
        self._part: dict[str, int] = {}

    @property
    def count(self) -> int:
        """How many members are live."""
        return len(self._part)

    def __contains__(self, name: str) -> bool:
        return name in self._part

    def members(self) -> Iterator[str]:
        """The live members' names (O(live): for small clusters and tests)."""
        return iter(self._part)

    def touch(self, m: Member) -> None:
        """Account for a change of m's state or incarnation in the live set and digest."""
        name = m.name
        live = m.state <= State.SUSPECT  # is_live, without the property call (hot path)
        old = self._part.get(name)
        if live != (old is not None):
            entry = ring_entry(name)
            if live:
                if self.batching:
                    self.ring.append(entry)  # sorted once when the batch ends
                    self._ring_dirty = True
                else:
                    bisect.insort(self.ring, entry)
            elif self._ring_dirty:
                self.ring.remove(entry)
            else:
                i = bisect.bisect_left(self.ring, entry)
                if i < len(self.ring) and self.ring[i] == entry:
                    del self.ring[i]
        if live:
            part = digest_part(name, m.incarnation)
            self._part[name] = part
        else:
            part = 0
            self._part.pop(name, None)
        self._acc ^= (old or 0) ^ part

    def load(self, ring: Sequence[tuple[bytes, str]], parts: Mapping[str, int], acc: int) -> None:
        """Take a whole live set at once (a `SharedView`'s): the sorted ring, the digest
        terms of the live members, their XOR. `settle` then publishes the digest."""
        self.ring = list(ring)
        self._part = dict(parts)
        self._acc = acc
        self._ring_dirty = False

    def forget(self, name: str) -> None:
        """A reaped member (never live again under this record): nothing is kept of it."""
        self._part.pop(name, None)

    def settle(self) -> bool:
        """Bring the ring and `digest` up to date, unless batching; whether the digest
        changed."""
        if self.batching:
            return False
        if self._ring_dirty:
            self.ring.sort()
            self._ring_dirty = False
        digest = self._acc.to_bytes(8, "big")
        if digest == self.digest:
            return False
        self.digest = digest
        return True
