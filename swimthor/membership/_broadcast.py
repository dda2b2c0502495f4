"""The transmit-limited piggyback queue: which pending updates ride on the next packet.

Every gossip or probe packet carries as many pending membership updates as fit. Each update is
sent about ``retransmit_mult * ceil(log10(n + 1))`` times and then dropped; fresher updates
(fewer transmits so far) go first; a newer update about a member replaces the older one still
queued. Semantics of hashicorp/memberlist ``queue.go`` ``TransmitLimitedQueue`` with named
broadcasts, without locks, callbacks or I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["TransmitLimitedQueue", "retransmit_limit"]


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """Return ``retransmit_mult * ceil(log10(n + 1))`` (memberlist ``util.go``).

    ``ceil(log10(n + 1))`` is the number of decimal digits of ``n`` for ``n >= 1`` and 0 for
    ``n <= 0``; it is computed that way, in integers, so no float rounding can move a boundary
    (9 -> 1, 10 -> 2, 99 -> 2, 100 -> 3).
    """
    digits = len(str(n)) if n > 0 else 0
    return retransmit_mult * digits


@dataclass(slots=True, eq=False)
class _Item:
    key: str | None
    payload: bytes
    transmits: int
    id: int
    # Destinations this item already went to (only when the caller names them).
    sent_to: set[Hashable] = field(default_factory=set)

    def order(self) -> tuple[int, int, int]:
        return (self.transmits, -len(self.payload), -self.id)


class TransmitLimitedQueue:
    """Pending broadcasts, each sent a bounded number of times, fewest-transmitted first.

    Order (memberlist ``limitedBroadcast.Less``): fewer transmits first; within a transmit
    count, longer payloads first (they are the hardest to fit later); among equal lengths the
    newest first. ``get_broadcasts`` walks the transmit counts upward and in each takes the
    first item in that order that still fits, until the packet is full.

    The items live in one list kept sorted by ``(transmits, -len, -id)``: finding the best
    item of a transmit count that fits in ``free`` bytes is one binary search, and insertions
    and removals are a memmove of pointers, cheap for tens of thousands of items. A dict by key
    finds the item a newer update supersedes.
    """

    __slots__ = ("_by_key", "_items", "_next_id", "_orders", "retransmit_mult")

    def __init__(self, retransmit_mult: int) -> None:
        self.retransmit_mult = retransmit_mult
        # _orders[i] == _items[i].order(); kept in step so bisect compares plain int tuples.
        self._orders: list[tuple[int, int, int]] = []
        self._items: list[_Item] = []
        self._by_key: dict[str, _Item] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._items)

    def retransmit_limit(self, n: int) -> int:
        """Transmissions per item in a cluster of ``n`` members, see :func:`retransmit_limit`."""
        return retransmit_limit(self.retransmit_mult, n)

    def queue(self, key: str | None, payload: bytes) -> None:
        """Queue ``payload``; with a ``key``, drop any queued item with the same key first.

        ``key`` names what the update is about (a member name), so a newer update replaces an
        older one still in flight. ``key=None`` marks an update that supersedes nothing and is
        never superseded.
        """
        self._next_id += 1
        item = _Item(key, payload, 0, self._next_id)
        if key is not None:
            old = self._by_key.get(key)
            if old is not None:
                self._remove(old)
            self._by_key[key] = item
        self._insert(item)

    def get_broadcasts(
        self,
        overhead: int,
        limit: int,
        n: int,
        *,
        dest: Hashable | None = None,
        floor: int = 0,
    ) -> list[bytes]:
        """Take the payloads for one packet with ``limit`` bytes of room.

        Each payload costs ``len(payload) + overhead`` bytes (the framing around it). Items are
        chosen fewest-transmitted first as described on the class; each chosen item's transmit
        count rises by one, and an item that reaches ``max(retransmit_limit(n), floor)``
        transmissions is dropped. An item is sent at most once per call.

        With ``dest`` (not in memberlist): an item already sent to that destination is passed
        over and keeps its transmissions for members that have not had it, so piggybacking on
        the probes and acks of one peer does not use up an update.
        """
        if not self._items:
            return []
        transmit_limit = max(self.retransmit_limit(n), floor)
        used = 0
        out: list[bytes] = []
        reinsert: list[_Item] = []
        transmits = self._orders[0][0]
        max_transmits = self._orders[-1][0]
        while transmits <= max_transmits:
            free = limit - used - overhead
            if free <= 0:
                break
            # First item with this transmit count whose length is <= free: in the order
            # (transmits, -len, -id) that is the first one >= (transmits, -free, -inf).
            i = bisect.bisect_left(self._orders, (transmits, -free, -self._next_id - 1))
            if dest is not None:
                # Items after i in this tier are no longer, so they fit as well.
                while (
                    i < len(self._orders)
                    and self._orders[i][0] == transmits
                    and dest in self._items[i].sent_to
                ):
                    i += 1
            if i == len(self._orders) or self._orders[i][0] != transmits:
                transmits += 1
                continue
            item = self._items[i]
            del self._orders[i]
            del self._items[i]
            out.append(item.payload)
            used += overhead + len(item.payload)
            if item.transmits + 1 >= transmit_limit:
                if item.key is not None:
                    del self._by_key[item.key]
            else:
                # Reinsert after the walk, or the item would be met again one tier up.
                item.transmits += 1
                if dest is not None:
                    item.sent_to.add(dest)
                reinsert.append(item)
        for item in reinsert:
            self._insert(item)
        return out

    def prune(self, max_retain: int) -> None:
        """Drop items from the back of the order until at most ``max_retain`` remain.

        The back holds the most-transmitted items and, within a transmit count, the shortest
        and oldest (memberlist ``Prune`` drops ``Max()`` repeatedly).
        """
        max_retain = max(max_retain, 0)
        if len(self._items) <= max_retain:
            return
        for item in self._items[max_retain:]:
            if item.key is not None:
                del self._by_key[item.key]
        del self._items[max_retain:]
        del self._orders[max_retain:]

    def reset(self) -> None:
        """Forget every queued item."""
        self._orders.clear()
        self._items.clear()
        self._by_key.clear()
        self._next_id = 0

    def pending_keys(self) -> list[str | None]:
        """Keys of the queued items in send order (for tests and inspection)."""
        return [item.key for item in self._items]

    def pending(self) -> list[tuple[str | None, bytes, int]]:
        """``(key, payload, transmits)`` of the queued items in send order."""
        return [(item.key, item.payload, item.transmits) for item in self._items]

    def _insert(self, item: _Item) -> None:
        order = item.order()
        i = bisect.bisect_left(self._orders, order)
        self._orders.insert(i, order)
        self._items.insert(i, item)

    def _remove(self, item: _Item) -> None:
        i = bisect.bisect_left(self._orders, item.order())
        # ids are unique, so the order tuple names exactly this item.
        del self._orders[i]
        del self._items[i]
