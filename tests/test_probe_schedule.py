"""The probe schedule (`membership._probe_schedule`), without a network: rounds on the wall
clock, the ring's per-round offset, and the random schedule's shuffled round-robin."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from swimthor.membership import Member, State
from swimthor.membership._probe_schedule import (
    ProbeSchedule,
    name_phase,
    ring_entry,
    round_mix,
)


def _members(*names: str, state: State = State.ALIVE) -> dict[str, Member]:
    return {
        n: Member(
            name=n,
            addr=("10.0.0.1", 1 + i),
            dc="dc1",
            roles=(),
            weight=1.0,
            tags={},
            incarnation=0,
            state=state,
            since=0.0,
        )
        for i, n in enumerate(names)
    }


def _ring(names: Iterable[str]) -> list[tuple[bytes, str]]:
    return sorted(ring_entry(n) for n in names)


def test_round_mix_is_splitmix64s_finalizer() -> None:
    # splitmix64 seeded with 0 gives these first two outputs: round r is its r-th state.
    assert round_mix(0) == 0
    assert round_mix(1) == 0xE220A8397B1DCDAF
    assert round_mix(2) == 0x6E789E6AA1B965F4
    assert all(0 <= round_mix(r) < 2**64 for r in range(-5, 100))
    assert len({round_mix(r) for r in range(1000)}) == 1000


def test_ring_entries_and_phases_are_pure_functions_of_the_name() -> None:
    assert ring_entry("a") == ring_entry("a")
    assert ring_entry("a")[1] == "a" and len(ring_entry("a")[0]) == 8
    assert ring_entry("a") != ring_entry("b")
    assert name_phase("a") == name_phase("a")
    assert 0.0 <= name_phase("a") < 1.0
    assert ProbeSchedule("a").phase == name_phase("a")


def test_rounds_start_at_each_members_phase_and_follow_the_wall_clock() -> None:
    s = ProbeSchedule("node-1")
    phase = s.phase
    base = 2.0
    assert s.round((3 + phase) * base, base) == 3
    assert s.round((3 + phase) * base - 0.01, base) == 2
    # The next round's start, in core time: the wall clock is core time + wall_offset.
    for now, offset in ((0.0, 0.0), (5.3, 0.0), (5.3, 1000.25), (-7.0, 3.5)):
        t = s.next_round(now, offset, base, base)
        assert now < t <= now + base + 1e-9
        r = s.round(t + offset + 1e-9, base)
        assert t + offset == pytest.approx((r + phase) * base)
    # A stretched interval (a slow member) pushes it out, never before now + interval - base.
    t = s.next_round(10.0, 0.0, 1.0, 4.0)
    assert t >= 10.0 + 3.0


def test_every_live_member_is_probed_exactly_once_a_round() -> None:
    names = [f"m{i}" for i in range(7)]
    members = _members(*names)
    ring = _ring(names)
    rng = random.Random(1)
    offsets = set()
    for r in range(20):
        targets = [ProbeSchedule(n).ring_target(ring, members, r, rng) for n in names]
        assert sorted(t.name for t in targets if t is not None) == sorted(names)
        assert all(t is not None and t.name != n for t, n in zip(targets, names, strict=True))
        order = [e[1] for e in ring]
        first = order.index(names[0])
        first_target = targets[0]
        assert first_target is not None
        offsets.add((order.index(first_target.name) - first) % len(order))
    assert len(offsets) > 1  # not the same neighbour every round


def test_ring_targets_need_two_members_and_a_place_on_the_ring() -> None:
    members = _members("a", "b", "c")
    rng = random.Random(2)
    assert ProbeSchedule("a").ring_target(_ring(["a"]), members, 0, rng) is None
    # Not on the ring (leaving): the random order stands in.
    s = ProbeSchedule("a")
    target = s.ring_target(_ring(["b", "c"]), members, 0, rng)
    assert target is not None and target.name in ("b", "c")
    assert s.order and s.index == 1
    # A ring entry that is no longer live in the member table is not probed.
    members["b"].state = State.DEAD
    hits = {ProbeSchedule("a").ring_target(_ring(["a", "b"]), members, r, rng) for r in range(5)}
    assert hits == {None}


def test_random_order_is_a_shuffled_round_robin_of_live_members() -> None:
    members = _members("me", "a", "b", "c", "d")
    members["d"].state = State.LEFT
    s = ProbeSchedule("me")
    rng = random.Random(3)
    first = [s.next_target(members, rng) for _ in range(3)]
    assert sorted(m.name for m in first if m is not None) == ["a", "b", "c"]
    # Exhausted: reshuffled from the live members at that time.
    members["a"].state = State.DEAD
    second = [s.next_target(members, rng) for _ in range(2)]
    assert sorted(m.name for m in second if m is not None) == ["b", "c"]
    # Nothing live: nothing to probe.
    alone = ProbeSchedule("me")
    assert alone.next_target(_members("me"), rng) is None


def test_a_new_member_is_inserted_where_this_round_still_reaches_it() -> None:
    members = _members("me", "a", "b", "c")
    s = ProbeSchedule("me")
    rng = random.Random(4)
    s.next_target(members, rng)
    members.update(_members("new"))
    s.add("new", rng)
    assert s.order.index("new") >= s.index
    rest = [s.next_target(members, rng) for _ in range(len(s.order) - s.index)]
    assert "new" in {m.name for m in rest if m is not None}


def test_schedule_draws_are_those_of_the_core_before_the_split() -> None:
    # The random schedule's draws (shuffle, randint) are the core's own, in the same order:
    # the simulator's traces depend on it.
    members = _members("me", "a", "b", "c")
    rng, ref = random.Random(5), random.Random(5)
    s = ProbeSchedule("me")
    s.next_target(members, rng)
    order = ["a", "b", "c"]
    ref.shuffle(order)
    assert s.order == order
    s.add("x", rng)
    assert s.order.index("x") == ref.randint(1, 3)
