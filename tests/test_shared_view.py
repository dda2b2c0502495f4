"""One view shared by every simulated core (`membership._shared_view`): the same run as with a
copy each, in a fraction of the memory; records are copied by a core only when they change
for it, and a shared record cannot be changed in place."""

from __future__ import annotations

import gc
import random
import tracemalloc
from dataclasses import replace

import pytest

from swimthor.config import profile
from swimthor.membership import Dead, Member, Membership, SharedMember, SharedView, State
from swimthor.sim import Scenario, Simulator, parse_fault, run

MIXES = [
    ("crash:2@5", "deaf:1@5+10", "mute:1@4+6", "flipflop:1@2+20/6", "lossy:1@0+30/0.5"),
    ("partition:dc1|dc2@5+8", "restart:1@3+4/newaddr", "leave:1@6", "pause:1@2+5", "slow:2@0+30"),
]


@pytest.mark.parametrize("faults", MIXES)
@pytest.mark.parametrize("profile_name", ["lan", "memberlist-lan"])
def test_a_shared_view_gives_the_same_run(faults: tuple[str, ...], profile_name: str) -> None:
    s = Scenario(
        nodes=120,
        dcs=2,
        loss=0.02,
        duration=30.0,
        seed=3,
        profile=profile_name,
        faults=tuple(parse_fault(f) for f in faults),
    )
    copies, shared = run(replace(s, shared_records=False)), run(replace(s, shared_records=True))
    assert copies.events == shared.events
    a, b = copies.to_json(), shared.to_json()
    for key in ("wall_s", "wall_warmup_s", "trace_digest"):  # the merge's join events
        a.pop(key), b.pop(key)
    assert a == b


def test_large_clusters_share_and_small_ones_do_not() -> None:
    assert Scenario(nodes=1001).shares_records and not Scenario(nodes=1000).shares_records
    assert Scenario(nodes=10, shared_records=True).shares_records


def _member(name: str) -> Member:
    return Member(name, ("10.0.0.1", 1), "dc1", (), 1.0, {}, 0, State.ALIVE, 0.0)


def test_a_shared_record_is_read_only_and_its_copy_is_not() -> None:
    shared = SharedMember.of(_member("a"))
    with pytest.raises(AttributeError, match="copy"):
        shared.state = State.DEAD
    mine = shared.copy()
    assert type(mine) is Member
    mine.state = State.DEAD
    assert shared.state == State.ALIVE


def test_a_core_copies_a_record_when_it_changes_it_and_only_then() -> None:
    members = [_member(f"n{i}") for i in range(5)]
    view = SharedView.of(members, 0.0)
    cores = [
        Membership(name=m.name, addr=m.addr, config=profile("lan"), rng=random.Random(i), now=0.0)
        for i, m in enumerate(members)
    ]
    for c in cores:
        c.adopt_view(view, 0.0)
    a, b = cores[0], cores[1]
    assert a._members["n3"] is b._members["n3"] is view.records["n3"]
    assert a._members["n0"] is not view.records["n0"]  # its own record is its own
    a._apply_dead(Dead("n3", 0, "n2"), 10.0)
    assert type(a._members["n3"]) is Member and a._members["n3"] is not view.records["n3"]
    assert b._members["n3"] is view.records["n3"] and view.records["n3"].state == State.ALIVE


def test_a_shared_view_is_for_new_cores_only() -> None:
    view = SharedView.of([_member("n0"), _member("n1")], 0.0)
    core = Membership(
        name="n0", addr=("10.0.0.1", 1), config=profile("lan"), rng=random.Random(1), now=0.0
    )
    core.adopt_view(view, 0.0)
    with pytest.raises(ValueError):
        core.adopt_view(view, 0.0)  # it knows them already
    stranger = Membership(
        name="x", addr=("10.0.0.1", 2), config=profile("lan"), rng=random.Random(1), now=0.0
    )
    with pytest.raises(ValueError):
        stranger.adopt_view(view, 0.0)
    with pytest.raises(ValueError):
        SharedView.of([_member("n0"), _member("n0")], 0.0)


def _bytes_per_record(shared: bool) -> float:
    """Memory the simulator holds after a short run, per (core, member) pair: the growth
    from 200 to 600 members over the growth of the pairs (what is not per pair cancels).
    Counted by tracemalloc, so the same on a busy machine as on a quiet one."""

    def held(nodes: int) -> int:
        gc.collect()
        tracemalloc.start()
        try:
            sim = Simulator(
                Scenario(nodes=nodes, duration=0.2, seed=1, shared_records=shared, trace=False)
            )
            sim.run()
            gc.collect()
            return tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()

    return (held(600) - held(200)) / (600**2 - 200**2)


def test_a_shared_view_needs_a_fraction_of_the_memory() -> None:
    shared, copies = _bytes_per_record(True), _bytes_per_record(False)
    # Measured: about 100 against 240 bytes a pair (at 10,000 members: 10 GB against 24).
    assert shared < 0.55 * copies, (shared, copies)
    assert shared < 130, shared
