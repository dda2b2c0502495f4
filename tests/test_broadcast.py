"""The transmit-limited piggyback queue, stepped by hand and against a naive model."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from swimthor.membership._broadcast import TransmitLimitedQueue, retransmit_limit


@pytest.mark.parametrize(
    ("mult", "n", "expected"),
    [
        (3, 0, 0),
        (3, 1, 3),
        (3, 9, 3),
        (3, 10, 6),
        (3, 99, 6),
        (3, 100, 9),
        (4, 999, 12),
        (4, 1000, 16),
        (4, 10_000, 20),
    ],
)
def test_retransmit_limit(mult: int, n: int, expected: int) -> None:
    assert retransmit_limit(mult, n) == expected
    assert TransmitLimitedQueue(mult).retransmit_limit(n) == expected


def test_empty_queue_gives_nothing() -> None:
    q = TransmitLimitedQueue(4)
    assert q.get_broadcasts(2, 1400, 10) == []
    assert len(q) == 0


def test_newer_update_supersedes_older_with_same_key() -> None:
    q = TransmitLimitedQueue(4)
    q.queue("a", b"a-1")
    q.queue("b", b"b-1")
    q.queue("a", b"a-2")
    assert len(q) == 2
    assert sorted(k for k in q.pending_keys() if k is not None) == ["a", "b"]
    assert sorted(q.get_broadcasts(0, 1400, 10)) == [b"a-2", b"b-1"]


def test_supersede_resets_transmit_count() -> None:
    q = TransmitLimitedQueue(1)  # limit 2 at n = 10
    q.queue("a", b"a-1")
    assert q.get_broadcasts(0, 1400, 10) == [b"a-1"]
    q.queue("a", b"a-2")
    assert q.pending() == [("a", b"a-2", 0)]
    assert q.get_broadcasts(0, 1400, 10) == [b"a-2"]
    assert q.get_broadcasts(0, 1400, 10) == [b"a-2"]
    assert len(q) == 0


def test_unkeyed_items_never_invalidate() -> None:
    q = TransmitLimitedQueue(4)
    q.queue(None, b"x")
    q.queue(None, b"x")
    q.queue("x", b"k")
    q.queue(None, b"y")
    assert len(q) == 4
    assert sorted(q.get_broadcasts(0, 1400, 10)) == [b"k", b"x", b"x", b"y"]


def test_fewest_transmitted_first_newest_first_within_a_count() -> None:
    q = TransmitLimitedQueue(3)  # limit 6 at n = 10
    for key in "abc":
        q.queue(key, key.encode())
    # overhead 2, limit 3: exactly one 1-byte item per packet.
    sent = [q.get_broadcasts(2, 3, 10) for _ in range(7)]
    assert sent == [[b"c"], [b"b"], [b"a"], [b"c"], [b"b"], [b"a"], [b"c"]]
    q.queue("d", b"d")  # fresh: jumps ahead of every once- and twice-sent item
    assert q.get_broadcasts(2, 3, 10) == [b"d"]
    assert q.get_broadcasts(2, 3, 10) == [b"d"]  # d at 1 beats b and a at 2
    assert q.get_broadcasts(2, 3, 10) == [b"d"]  # d, b, a all at 2: newest wins
    assert q.get_broadcasts(2, 3, 10) == [b"b"]
    assert q.get_broadcasts(2, 3, 10) == [b"a"]
    assert q.get_broadcasts(2, 3, 10) == [b"d"]  # all four at 3 now: d is the newest


def test_longer_payload_first_within_a_transmit_count() -> None:
    # memberlist limitedBroadcast.Less: transmits, then length descending, then newest.
    q = TransmitLimitedQueue(4)
    q.queue("long", b"LLLL")
    q.queue("short", b"s")
    q.queue("mid", b"MM")
    assert q.pending_keys() == ["long", "mid", "short"]
    assert q.get_broadcasts(0, 1400, 10) == [b"LLLL", b"MM", b"s"]


def test_size_limit_with_overhead() -> None:
    q = TransmitLimitedQueue(4)
    q.queue("ten", b"t" * 10)
    q.queue("eight", b"e" * 8)
    q.queue("five", b"f" * 5)
    # limit 20, overhead 3: ten costs 13, leaving 7 -> neither 11 (eight) nor 8 (five) fits.
    assert q.get_broadcasts(3, 20, 10) == [b"t" * 10]
    # eight costs 11, five 8: 19 <= 20. ten (sent once) would need 13 more.
    assert q.get_broadcasts(3, 20, 10) == [b"e" * 8, b"f" * 5]
    assert q.get_broadcasts(3, 20, 10) == [b"t" * 10]


def test_exact_fit_is_taken_one_byte_more_is_not() -> None:
    q = TransmitLimitedQueue(4)
    q.queue("a", b"a" * 7)
    assert q.get_broadcasts(3, 9, 10) == []
    assert q.get_broadcasts(3, 10, 10) == [b"a" * 7]


def test_item_too_big_for_any_packet_stays_queued() -> None:
    q = TransmitLimitedQueue(4)
    q.queue("big", b"b" * 2000)
    q.queue("small", b"s")
    assert q.get_broadcasts(2, 1400, 10) == [b"s"]
    assert q.get_broadcasts(2, 1400, 10) == [b"s"]
    assert "big" in q.pending_keys()


def test_each_item_at_most_once_per_packet() -> None:
    q = TransmitLimitedQueue(4)
    q.queue("a", b"a")
    assert q.get_broadcasts(0, 1400, 10) == [b"a"]
    assert q.pending() == [("a", b"a", 1)]


def test_items_dropped_at_the_retransmit_limit() -> None:
    q = TransmitLimitedQueue(2)  # n = 5: limit 2 * 1 = 2
    q.queue("a", b"a")
    q.queue(None, b"z")
    assert sorted(q.get_broadcasts(0, 1400, 5)) == [b"a", b"z"]
    assert len(q) == 2
    assert sorted(q.get_broadcasts(0, 1400, 5)) == [b"a", b"z"]
    assert len(q) == 0
    assert q.get_broadcasts(0, 1400, 5) == []
    # The key was released: a new "a" is queued and not treated as superseding anything.
    q.queue("a", b"a2")
    q.queue("b", b"b")
    assert len(q) == 2


def test_limit_follows_current_cluster_size() -> None:
    q = TransmitLimitedQueue(1)
    q.queue("a", b"a")
    for _ in range(2):  # n = 100: limit 3
        assert q.get_broadcasts(0, 1400, 100) == [b"a"]
    # The cluster shrank to 5 (limit 1): already past it, dropped after this send.
    assert q.get_broadcasts(0, 1400, 5) == [b"a"]
    assert len(q) == 0


def test_zero_members_still_sends_once() -> None:
    q = TransmitLimitedQueue(4)  # n = 0: limit 0, as memberlist
    q.queue("a", b"a")
    assert q.get_broadcasts(0, 1400, 0) == [b"a"]
    assert len(q) == 0


def test_prune_keeps_freshest() -> None:
    q = TransmitLimitedQueue(10)
    for key in "abcd":
        q.queue(key, b"x")
    assert q.get_broadcasts(1, 2, 10) == [b"x"]  # sends d only
    q.queue("e", b"x")
    # Order now: e, c, b, a (transmits 0, newest first), then d (transmits 1).
    assert q.pending_keys() == ["e", "c", "b", "a", "d"]
    q.prune(3)
    assert q.pending_keys() == ["e", "c", "b"]
    q.prune(10)
    assert len(q) == 3
    # Pruned keys are released; surviving ones still supersede.
    q.queue("a", b"y")
    q.queue("b", b"y")
    assert len(q) == 4
    q.prune(0)
    assert len(q) == 0
    q.queue("e", b"z")
    assert q.pending() == [("e", b"z", 0)]


def test_reset() -> None:
    q = TransmitLimitedQueue(4)
    q.queue("a", b"a")
    q.queue(None, b"b")
    q.reset()
    assert len(q) == 0
    assert q.get_broadcasts(0, 1400, 10) == []
    q.queue("a", b"a2")
    assert q.pending() == [("a", b"a2", 0)]


# ---------------------------------------------------------------------------------------------
# Against a naive model: memberlist's algorithm by linear scans over a plain list.


@dataclass
class _ModelItem:
    key: str | None
    payload: bytes
    transmits: int
    id: int


class _Model:
    def __init__(self, mult: int) -> None:
        self.mult = mult
        self.items: list[_ModelItem] = []
        self.next_id = 0

    def queue(self, key: str | None, payload: bytes) -> None:
        if key is not None:
            self.items = [it for it in self.items if it.key != key]
        self.next_id += 1
        self.items.append(_ModelItem(key, payload, 0, self.next_id))

    def get(self, overhead: int, limit: int, n: int) -> list[bytes]:
        tl = self.mult * len(str(n)) if n > 0 else 0
        used = 0
        out: list[bytes] = []
        taken: set[int] = set()
        while True:
            free = limit - used - overhead
            if free <= 0:
                break
            fits = [it for it in self.items if id(it) not in taken and len(it.payload) <= free]
            if not fits:
                break
            best = min(fits, key=lambda it: (it.transmits, -len(it.payload), -it.id))
            taken.add(id(best))
            out.append(best.payload)
            used += overhead + len(best.payload)
        for it in [it for it in self.items if id(it) in taken]:
            it.transmits += 1
        self.items = [it for it in self.items if it.transmits < tl or id(it) not in taken]
        return out

    def order(self) -> list[str | None]:
        ranked = sorted(self.items, key=lambda it: (it.transmits, -len(it.payload), -it.id))
        return [it.key for it in ranked]


def test_matches_naive_model_on_random_operations() -> None:
    rng = random.Random(20240611)
    q = TransmitLimitedQueue(3)
    model = _Model(3)
    keys: list[str | None] = [f"m{i}" for i in range(30)] + [None]
    for step in range(3000):
        if rng.random() < 0.55:
            key = rng.choice(keys)
            payload = bytes([step % 256]) * rng.randint(1, 120)
            q.queue(key, payload)
            model.queue(key, payload)
        else:
            overhead = rng.randint(0, 8)
            limit = rng.randint(0, 600)
            n = rng.choice([0, 1, 5, 10, 50, 200])
            assert q.get_broadcasts(overhead, limit, n) == model.get(overhead, limit, n), step
        assert len(q) == len(model.items)
        assert q.pending_keys() == model.order(), step


def test_large_queue() -> None:
    q = TransmitLimitedQueue(4)
    n = 5000
    limit_per_item = q.retransmit_limit(n)  # 4 * 4 = 16
    final: dict[str, bytes] = {}
    for i in range(n):
        key = f"member-{i}"
        final[key] = key.encode().ljust(40 + (i * 37) % 80, b".")
        q.queue(key, final[key])
    for i in range(0, n, 3):  # a third of them superseded by a second update
        key = f"member-{i}"
        final[key] = key.encode().ljust(40 + (i * 37) % 80, b"!")
        q.queue(key, final[key])
    assert len(q) == n

    sends: dict[bytes, int] = {}
    fills: list[int] = []  # bytes used in each packet, in order
    while len(q):
        got = q.get_broadcasts(3, 1400, n)
        assert got
        fills.append(sum(len(p) + 3 for p in got))
        assert fills[-1] <= 1400
        assert len(set(got)) == len(got)
        for p in got:
            sends[p] = sends.get(p, 0) + 1

    assert set(sends) == set(final.values())  # superseded payloads were never sent
    assert set(sends.values()) == {limit_per_item}
    # Packets are filled: every one but the last has no room left for the smallest update
    # (40 bytes and 3 of overhead), so the drain takes about total / 1400 packets, not one
    # per update. (How fast it drains is a figure of bench/broadcast.py, not a test.)
    smallest = min(len(p) for p in final.values()) + 3
    assert all(fill > 1400 - smallest for fill in fills[:-1]), min(fills[:-1])
    total = sum(len(p) + 3 for p in final.values()) * limit_per_item
    assert -(-total // 1400) <= len(fills) <= -(-total // (1400 - smallest + 1)) + 1


def test_dest_passes_over_items_already_sent_there() -> None:
    q = TransmitLimitedQueue(retransmit_mult=4)
    q.queue("a", b"a")
    q.queue("b", b"bb")
    assert sorted(q.get_broadcasts(0, 1400, 10, dest="x")) == [b"a", b"bb"]
    # The same destination gets nothing again; the items keep their budget for others.
    assert q.get_broadcasts(0, 1400, 10, dest="x") == []
    assert sorted(q.get_broadcasts(0, 1400, 10, dest="y")) == [b"a", b"bb"]
    q.queue("c", b"c")
    assert q.get_broadcasts(0, 1400, 10, dest="x") == [b"c"]
    assert [t for _, _, t in q.pending()] == [1, 2, 2]


def test_floor_raises_the_transmit_limit() -> None:
    q = TransmitLimitedQueue(retransmit_mult=1)
    q.queue("a", b"a")
    sent = 0
    while q.get_broadcasts(0, 1400, 5, floor=6):
        sent += 1
    assert sent == 6
