"""The live set and the view digest (`membership._live_set`), without a network: the names,
the ring and the digest kept incrementally agree with the same things computed from scratch,
one member at a time and in a merge's batch."""

from __future__ import annotations

import random

from swimthor.membership import Member, State
from swimthor.membership._live_set import LiveSet, digest_part, ring_entry


def _member(name: str, incarnation: int = 0, state: State = State.ALIVE) -> Member:
    return Member(
        name=name,
        addr=("10.0.0.1", 1),
        dc="dc1",
        roles=(),
        weight=1.0,
        tags={},
        incarnation=incarnation,
        state=state,
        since=0.0,
    )


def _expected(members: dict[str, Member]) -> tuple[set[str], list[tuple[bytes, str]], bytes]:
    live = {n for n, m in members.items() if m.state.is_live}
    acc = 0
    for n in live:
        acc ^= digest_part(n, members[n].incarnation)
    return live, sorted(ring_entry(n) for n in live), acc.to_bytes(8, "big")


def _live(view: LiveSet, members: dict[str, Member]) -> set[str]:
    """The members the view counts as live (it keeps their number and answers `in`)."""
    live = {n for n in members if n in view}
    assert view.count == len(live)
    return live


def _check(view: LiveSet, members: dict[str, Member]) -> None:
    live, ring, digest = _expected(members)
    assert _live(view, members) == live
    assert view.ring == ring
    assert view.digest == digest


def test_digest_part_is_a_hash_of_name_and_incarnation() -> None:
    assert digest_part("a", 1) == digest_part("a", 1)
    assert digest_part("a", 1) != digest_part("a", 2)
    assert digest_part("a", 1) != digest_part("b", 1)
    assert 0 <= digest_part("a", 1) < 2**64


def test_an_empty_view_settles_to_the_zero_digest_once() -> None:
    view = LiveSet()
    assert view.digest == b""
    assert view.settle() is True
    assert view.digest == bytes(8)
    assert view.settle() is False  # unchanged: no new summary


def test_touch_follows_state_and_incarnation_changes() -> None:
    view = LiveSet()
    members: dict[str, Member] = {}
    rng = random.Random(7)
    states = [State.ALIVE, State.SUSPECT, State.DEAD, State.LEFT]
    for step in range(400):
        name = f"m{rng.randrange(12)}"
        m = members.get(name)
        if m is None:
            m = members[name] = _member(name)
        else:
            m.state = rng.choice(states)
            m.incarnation += rng.randrange(2)
        view.touch(m)
        changed = view.settle()
        _check(view, members)
        if step == 0:
            assert changed


def test_suspects_are_live_and_the_dead_and_departed_are_not() -> None:
    view = LiveSet()
    members = {n: _member(n, 1) for n in ("a", "b", "c", "d")}
    members["b"].state = State.SUSPECT
    members["c"].state = State.DEAD
    members["d"].state = State.LEFT
    for m in members.values():
        view.touch(m)
    view.settle()
    assert _live(view, members) == {"a", "b"}
    _check(view, members)


def test_a_batch_settles_once_at_its_end() -> None:
    view = LiveSet()
    members = {n: _member(n) for n in ("x", "y")}
    for m in members.values():
        view.touch(m)
    view.settle()
    before = view.digest
    view.batching = True
    for i in range(50):
        m = members[f"n{i}"] = _member(f"n{i}", i)
        view.touch(m)
    members["x"].state = State.DEAD  # a removal while the ring is unsorted
    view.touch(members["x"])
    assert view.settle() is False  # not while batching
    assert view.digest == before
    view.batching = False
    assert view.settle() is True
    _check(view, members)


def test_forgetting_a_reaped_member_keeps_the_digest() -> None:
    view = LiveSet()
    members = {n: _member(n) for n in ("a", "b")}
    for m in members.values():
        view.touch(m)
    members["b"].state = State.DEAD
    view.touch(members["b"])
    view.settle()
    digest = view.digest
    view.forget("b")
    del members["b"]
    # It comes back later as a new record, at incarnation 0 again.
    again = members["b"] = _member("b")
    view.touch(again)
    view.settle()
    _check(view, members)
    assert view.digest != digest
