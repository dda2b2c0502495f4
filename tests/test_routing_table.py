"""The routing table fed with membership events: which members own keys, when the epoch moves,
the per-epoch cache, the epoch history behind `owners_changed`, and bad input. A stateful
hypothesis test drives it with random event sequences against a plain model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict, Unpack

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from swimthor.membership import (
    Joined,
    Member,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    MemberSuspected,
    MemberUpdated,
    NameConflict,
    State,
)
from swimthor.routing import EpochUnavailable, MemberRecord, RoutingTable, reference_rank


def member(
    name: str,
    *,
    state: State = State.ALIVE,
    weight: float = 1.0,
    roles: tuple[str, ...] = ("sip",),
    dc: str = "dc1",
    port: int = 5060,
    tags: dict[str, str] | None = None,
    incarnation: int = 1,
) -> Member:
    return Member(name, ("10.0.0.1", port), dc, roles, weight, tags or {}, incarnation, state, 0.0)


class TableOptions(TypedDict, total=False):
    """RoutingTable's keyword arguments."""

    roles: Iterable[str] | None
    suspects_keep_keys: bool
    history: int
    cache_size: int


def table_of(*names: str, **options: Unpack[TableOptions]) -> RoutingTable:
    t = RoutingTable(**options)
    for n in names:
        t.handle_event(MemberJoined(member(n)))
    return t


KEYS = [f"sip:user{i}@example.com" for i in range(300)]


def test_owners_are_the_reference_ranking() -> None:
    t = table_of(*[f"n{i}" for i in range(12)])
    for key in KEYS[:50]:
        expected = reference_rank(key, [(f"n{i}", 1.0) for i in range(12)])
        assert [r.name for r in t.owners(key, 3)] == expected[:3]
        assert [r.name for r in t.owners(key, 1)] == expected[:1]
        assert [r.name for r in t.owners(key, 20)] == expected


def test_records_carry_what_callers_need() -> None:
    t = RoutingTable()
    t.handle_event(MemberJoined(member("a", weight=2.5, dc="fra", port=5070, roles=("sip", "x"))))
    (rec,) = t.owners("k", 1)
    assert rec == MemberRecord("a", ("10.0.0.1", 5070), "fra", 2.5, ("sip", "x"))
    assert rec.seed != 0


def test_epoch_moves_on_owner_set_and_record_changes_only() -> None:
    t = RoutingTable()
    assert t.epoch == 0
    assert t.handle_event(MemberJoined(member("a")))
    assert t.handle_event(MemberJoined(member("b")))
    assert t.epoch == 2
    # Incarnation and tags are not routing's business.
    assert not t.handle_event(MemberUpdated(member("a", incarnation=5, tags={"x": "y"})))
    assert not t.handle_event(MemberJoined(member("a")))  # duplicate news
    assert t.epoch == 2
    for changed in (
        member("a", weight=2.0),
        member("a", weight=2.0, dc="dc2"),
        member("a", weight=2.0, dc="dc2", port=6000),
        member("a", weight=2.0, dc="dc2", port=6000, roles=("sip", "dns")),
    ):
        assert t.handle_event(MemberUpdated(changed))
    assert t.epoch == 6
    # A suspect keeps its keys by default; its failure moves them.
    assert not t.handle_event(MemberSuspected(member("b", state=State.SUSPECT), by="a"))
    assert [r.name for r in t.members()] == ["a", "b"]
    assert t.handle_event(MemberFailed(member("b", state=State.DEAD)))
    assert t.epoch == 7
    assert not t.handle_event(MemberFailed(member("b", state=State.DEAD)))
    assert t.handle_event(MemberRecovered(member("b", incarnation=2), previous="dead"))
    assert t.handle_event(MemberLeft(member("b", state=State.LEFT)))
    assert t.epoch == 9
    # Not member events: ignored.
    assert not t.handle_event(Joined(("10.0.0.9", 1), 3))
    assert not t.handle_event("nonsense")
    assert t.epoch == 9


def test_suspects_can_lose_their_keys_at_once() -> None:
    t = table_of("a", "b", suspects_keep_keys=False)
    assert t.handle_event(MemberSuspected(member("b", state=State.SUSPECT)))
    assert [r.name for r in t.members()] == ["a"]
    # News about a suspect while it is suspect does not bring it back.
    assert not t.handle_event(MemberUpdated(member("b", state=State.SUSPECT, weight=3.0)))
    assert t.handle_event(MemberRecovered(member("b"), previous="suspect"))
    assert [r.name for r in t.members()] == ["a", "b"]


def test_suspicion_refuted_moves_nothing_by_default() -> None:
    t = table_of(*[f"n{i}" for i in range(8)])
    before = {k: t.owners(k) for k in KEYS}
    e = t.epoch
    t.handle_event(MemberSuspected(member("n3", state=State.SUSPECT)))
    t.handle_event(MemberRecovered(member("n3", incarnation=2), previous="suspect"))
    assert t.epoch == e
    assert {k: t.owners(k) for k in KEYS} == before


def test_name_conflict_and_updates_follow_the_snapshot_state() -> None:
    t = table_of("a")
    assert t.handle_event(NameConflict(member("a", port=7000), other=("10.0.0.2", 1)))
    assert t.members()[0].addr == ("10.0.0.1", 7000)
    assert t.handle_event(MemberUpdated(member("a", state=State.DEAD)))
    assert t.members() == ()


def test_sync_replaces_the_owner_set_in_one_epoch() -> None:
    t = table_of("a", "b", "c")
    e = t.epoch
    assert t.sync(
        [member("b"), member("c", weight=2.0), member("d"), member("e", state=State.DEAD)]
    )
    assert t.epoch == e + 1
    assert [(r.name, r.weight) for r in t.members()] == [("b", 1.0), ("c", 2.0), ("d", 1.0)]
    assert not t.sync([member("b"), member("c", weight=2.0), member("d")])
    # Both epochs stay answerable.
    for key in KEYS[:30]:
        assert [r.name for r in t.owners_at(e, key, 5)] == reference_rank(
            key, [("a", 1.0), ("b", 1.0), ("c", 1.0)]
        )


def test_weightless_and_unusual_weights_own_nothing() -> None:
    t = RoutingTable()
    for name, w in (("a", 0.0), ("b", float("nan")), ("c", -1.0), ("d", 1.0)):
        t.handle_event(MemberJoined(member(name, weight=w)))
    assert [r.name for r in t.members()] == ["a", "b", "c", "d"]
    assert [r.weight for r in t.members()] == [0.0, 0.0, 0.0, 1.0]
    assert [r.name for r in t.owners("k", 4)] == ["d"]
    assert t.shares() == {"d": 1.0}


def test_roles_and_datacenters_filter() -> None:
    t = RoutingTable()
    for i in range(10):
        roles = ("sip",) if i % 2 else ("sip", "dns")
        t.handle_event(MemberJoined(member(f"n{i}", roles=roles, dc=f"dc{i % 3}")))
    for key in KEYS[:40]:
        dns = [r.name for r in t.owners(key, 10, role="dns")]
        assert dns == reference_rank(key, [(f"n{i}", 1.0) for i in range(0, 10, 2)])
        dc1 = [r.name for r in t.owners(key, 10, dc="dc1")]
        assert dc1 == reference_rank(key, [(f"n{i}", 1.0) for i in (1, 4, 7)])
        both = [r.name for r in t.owners(key, 10, role="dns", dc="dc1")]
        assert both == [n for n in dns if n in dc1]
    assert t.owners("k", dc="nowhere") == ()
    assert [r.name for r in t.members(role="dns", dc="dc0")] == ["n0", "n6"]


def test_shares_follow_weights() -> None:
    t = RoutingTable()
    for name, w in (("a", 1.0), ("b", 3.0), ("c", 0.0)):
        t.handle_event(MemberJoined(member(name, weight=w)))
    t.handle_event(MemberJoined(member("d", weight=4.0, roles=("dns",))))
    assert t.shares() == {"a": 0.25, "b": 0.75}
    assert t.shares("dns") == {"d": 1.0}
    assert t.shares("sip", dc="elsewhere") == {}


def test_bad_input_is_a_clear_value_error() -> None:
    t = table_of("a")
    for call, match in (
        (lambda: t.owners(b"k"), "key must be a str"),  # type: ignore[arg-type]
        (lambda: t.owners(None), "key must be a str"),  # type: ignore[arg-type]
        (lambda: t.owners("k", 0), "n must be"),
        (lambda: t.owners("k", -2), "n must be"),
        (lambda: t.owners("k", True), "n must be"),
        (lambda: t.owners("k", 2.0), "n must be"),  # type: ignore[arg-type]
        (lambda: t.owners("k", role="spi"), "unknown role 'spi'"),
        (lambda: t.owners("k", role=None), "unknown role"),  # type: ignore[arg-type]
        (lambda: t.owners("k", dc=3), "dc must be"),  # type: ignore[arg-type]
        (lambda: t.owners("\udcff"), "surrogate"),
        (lambda: t.shares("nope"), "unknown role"),
        (lambda: t.members(role="nope"), "unknown role"),
        (lambda: t.owners_at("1", "k"), "epoch must be an int"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValueError, match=match):
            call()
    assert RoutingTable(roles=None).owners("k", role="anything") == ()
    with pytest.raises(ValueError):
        RoutingTable(history=0)
    with pytest.raises(ValueError):
        RoutingTable(cache_size=-1)


def test_cache_answers_repeats_and_never_goes_stale() -> None:
    t = table_of("a", "b", "c", cache_size=8)
    first = t.owners("sip:x@example.com")
    assert t.owners("sip:x@example.com") is first
    assert t.stats["cache_hits"] == 1
    for key in KEYS[:20]:
        t.owners(key)
    assert len(t._cache) == 8
    owner = first[0].name
    t.handle_event(MemberFailed(member(owner, state=State.DEAD)))
    after = t.owners("sip:x@example.com")
    assert owner not in [r.name for r in after] and after[0] == first[1]
    assert len(RoutingTable(cache_size=0)._cache) == 0
    long_key = "k" * 10_000
    t.owners(long_key)
    assert all(k[0] != long_key for k in t._cache)


def test_owners_changed_across_a_failure() -> None:
    t = table_of(*[f"n{i}" for i in range(10)])
    assert t.owners("warm")
    e0 = t.epoch
    before = {k: t.owners(k) for k in KEYS}
    t.handle_event(MemberFailed(member("n4", state=State.DEAD)))
    e1 = t.epoch
    for key in KEYS:
        names = [r.name for r in before[key]]
        assert t.owners_changed(key, e0, e1) == ("n4" in names)
        assert t.owners_changed(key, e0, e1, n=1) == (names[0] == "n4")
        assert not t.owners_changed(key, e1, e1)
        if names[0] == "n4":
            assert t.owners(key)[0] == before[key][1]


def test_history_is_bounded() -> None:
    t = table_of("base", history=5)
    for i in range(12):
        t.handle_event(MemberJoined(member(f"m{i}")))
    assert t.epoch == 13 and t.oldest_epoch == 8
    for e in range(8, 14):
        expected = ["base", *[f"m{i}" for i in range(e - 1)]]
        for key in KEYS[:10]:
            got = [r.name for r in t.owners_at(e, key, 20)]
            assert got == reference_rank(key, [(n, 1.0) for n in expected])
    with pytest.raises(EpochUnavailable, match="not available"):
        t.owners_at(7, "k")
    with pytest.raises(EpochUnavailable):
        t.owners_changed("k", 14, 13)
    assert isinstance(EpochUnavailable("x"), ValueError)


NAMES = [f"m{i}" for i in range(7)]


class TableMachine(RuleBasedStateMachine):
    """Random event sequences against a dictionary of who should own keys."""

    keep_suspects = True

    def __init__(self) -> None:
        super().__init__()
        self.table = RoutingTable(suspects_keep_keys=self.keep_suspects, history=6)
        self.state: dict[str, Member] = {}
        self.snapshots: dict[int, dict[str, tuple[float, tuple[str, ...], str]]] = {0: {}}
        self.last_epoch = 0

    def _owning(self) -> dict[str, tuple[float, tuple[str, ...], str]]:
        own = {}
        for name, m in self.state.items():
            if m.state == State.ALIVE or (m.state == State.SUSPECT and self.keep_suspects):
                own[name] = (m.weight, m.roles, m.dc)
        return own

    def _feed(self, event: object, m: Member) -> None:
        before = self._owning()
        self.state[m.name] = m
        moved = self.table.handle_event(event)
        after = self._owning()
        assert moved == (before != after)
        if moved:
            self.snapshots[self.table.epoch] = after

    @rule(
        name=st.sampled_from(NAMES),
        weight=st.sampled_from([0.0, 1.0, 1.0, 2.0]),
        roles=st.sampled_from([("sip",), ("sip", "dns"), ("dns",)]),
        dc=st.sampled_from(["a", "b"]),
    )
    def join_or_update(self, name: str, weight: float, roles: tuple[str, ...], dc: str) -> None:
        old = self.state.get(name)
        m = member(name, weight=weight, roles=roles, dc=dc)
        if old is None or not old.state.is_live:
            self._feed(MemberJoined(m) if old is None else MemberRecovered(m), m)
        else:
            self._feed(MemberUpdated(m), m)

    @rule(name=st.sampled_from(NAMES))
    def suspect(self, name: str) -> None:
        old = self.state.get(name)
        if old is not None and old.state == State.ALIVE:
            m = old.copy()
            m.state = State.SUSPECT
            self._feed(MemberSuspected(m, by="x"), m)

    @rule(name=st.sampled_from(NAMES), how=st.sampled_from(["failed", "left", "refuted"]))
    def settle(self, name: str, how: str) -> None:
        old = self.state.get(name)
        if old is None or not old.state.is_live:
            return
        m = old.copy()
        if how == "failed":
            m.state = State.DEAD
            self._feed(MemberFailed(m), m)
        elif how == "left":
            m.state = State.LEFT
            self._feed(MemberLeft(m), m)
        elif old.state == State.SUSPECT:
            m.state = State.ALIVE
            self._feed(MemberRecovered(m, previous="suspect"), m)

    @rule(
        key=st.text(max_size=8),
        n=st.integers(1, 8),
        role=st.sampled_from(["sip", "dns"]),
        dc=st.sampled_from([None, "a", "b"]),
    )
    def lookup(self, key: str, n: int, role: str, dc: str | None) -> None:
        epochs = [e for e in self.snapshots if e >= self.table.oldest_epoch]
        for epoch in epochs:
            members = [
                (name, w)
                for name, (w, roles, mdc) in sorted(self.snapshots[epoch].items())
                if role in roles and (dc is None or mdc == dc)
            ]
            expected = reference_rank(key, members)[:n]
            got = [r.name for r in self.table.owners_at(epoch, key, n, role, dc)]
            assert got == expected, (epoch, self.table.epoch)
        got_now = [r.name for r in self.table.owners(key, n, role, dc)]
        assert got_now == [r.name for r in self.table.owners_at(self.table.epoch, key, n, role, dc)]

    @invariant()
    def members_match(self) -> None:
        assert {r.name for r in self.table.members()} == set(self._owning())


class TableMachineDropSuspects(TableMachine):
    keep_suspects = False


TestTable = TableMachine.TestCase
TestTable.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestTableDropSuspects = TableMachineDropSuspects.TestCase
TestTableDropSuspects.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=2, max_size=25, unique=True),
    st.data(),
)
def test_failure_moves_only_its_keys_to_the_replica(names: list[str], data: st.DataObject) -> None:
    weights = data.draw(
        st.lists(st.sampled_from([1.0, 2.0, 0.5]), min_size=len(names), max_size=len(names))
    )
    t = RoutingTable()
    for n, w in zip(names, weights, strict=True):
        t.handle_event(MemberJoined(member(n, weight=w)))
    gone = data.draw(st.sampled_from(names))
    keys = KEYS[:60]
    before = {k: [r.name for r in t.owners(k, 2)] for k in keys}
    event = data.draw(st.sampled_from([MemberFailed, MemberLeft]))
    t.handle_event(event(member(gone, state=State.DEAD)))
    for k in keys:
        owner = t.owners(k, 1)[0].name
        assert owner == (before[k][1] if before[k][0] == gone else before[k][0])
    t.handle_event(MemberRecovered(member(gone, weight=weights[names.index(gone)])))
    assert {k: [r.name for r in t.owners(k, 2)] for k in keys} == before
