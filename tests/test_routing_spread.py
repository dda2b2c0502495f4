"""Owners spread over failure domains (`swimthor.routing._spread`, contract v2 of
docs/routing.md): datacenters first, then zones, on the same ranking; what it keeps of
rendezvous hashing (same answer everywhere, first owner's share, a non-owner's coming and going
changes nothing, a leaver's keys go to one new member); the test vectors of the doc; and the
version rule that keeps the plain ranking while any candidate does not know the spread rule."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swimthor.membership import Member, MemberJoined, MemberLeft, MemberUpdated, State
from swimthor.routing import (
    PLACEMENT_TAG,
    ZONE_TAG,
    RoutingTable,
    placement_of,
    reference_rank,
    reference_spread,
    spread_order,
)

KEYS = [f"sip:user{i}@example.com" for i in range(400)]


def member(
    name: str, dc: str = "dc1", zone: str = "", weight: float = 1.0, placement: str | None = "2"
) -> Member:
    tags: dict[str, str] = {}
    if placement is not None:
        tags[PLACEMENT_TAG] = placement
    if zone:
        tags[ZONE_TAG] = zone
    return Member(name, ("10.0.0.1", 5060), dc, ("sip",), weight, tags, 1, State.ALIVE, 0.0)


def table(members: list[Member]) -> RoutingTable:
    t = RoutingTable()
    t.sync(members)
    return t


def owners(t: RoutingTable, key: str, n: int = 2, dc: str | None = None) -> list[str]:
    return [r.name for r in t.owners(key, n, "sip", dc)]


def two_datacenters(per_dc: int = 3, placement: str | None = "2") -> list[Member]:
    return [
        member(f"{dc}-{i}", dc, placement=placement) for dc in ("dc1", "dc2") for i in range(per_dc)
    ]


def test_two_datacenters_every_key_has_an_owner_in_each() -> None:
    ms = two_datacenters()
    t = table(ms)
    for key in KEYS:
        found = t.owners(key, 2)
        assert {r.dc for r in found} == {"dc1", "dc2"}, key
    # The plain ranking, for contrast: about 2 keys in 5 have both owners in one datacenter.
    plain = [reference_rank(key, [(m.name, 1.0) for m in ms])[:2] for key in KEYS]
    same = sum(1 for a, b in plain if a[:3] == b[:3])
    assert same > len(KEYS) // 4


def test_one_domain_is_the_plain_ranking() -> None:
    ms = [member(f"n{i}", weight=1.0 + (i % 3)) for i in range(20)]
    t = table(ms)
    for key in KEYS:
        assert owners(t, key, 3) == reference_rank(key, [(m.name, m.weight) for m in ms])[:3]


def test_zones_no_two_owners_in_one_zone_while_another_has_a_member() -> None:
    ms = [member(f"r{z}-{i}", zone=f"rack{z}") for z in range(3) for i in range(4)]
    t = table(ms)
    for n in (2, 3):
        for key in KEYS:
            zones = [r.zone for r in t.owners(key, n)]
            assert len(set(zones)) == n, (key, zones)
    # Four owners over three zones: one zone has two, never three.
    for key in KEYS:
        assert max(Counter(r.zone for r in t.owners(key, 4)).values()) == 2


def test_datacenters_come_before_zones() -> None:
    # dc1 has three racks, dc2 one: two owners are one per datacenter, not two racks of dc1.
    ms = [member(f"a{z}-{i}", "dc1", f"rack{z}") for z in range(3) for i in range(2)]
    ms += [member(f"b-{i}", "dc2", "rack0") for i in range(2)]
    t = table(ms)
    for key in KEYS:
        assert {r.dc for r in t.owners(key, 2)} == {"dc1", "dc2"}
        # A third and fourth owner go to racks not used yet (dc1's), before a second in dc2.
        four = t.owners(key, 4)
        assert len({(r.dc, r.zone) for r in four}) == 4


def test_one_datacenter_asked_for_spreads_over_its_zones() -> None:
    ms = [member(f"a{z}-{i}", "dc1", f"rack{z}") for z in range(2) for i in range(3)]
    ms += [member(f"b-{i}", "dc2") for i in range(3)]
    t = table(ms)
    for key in KEYS:
        found = t.owners(key, 2, dc="dc1")
        assert {r.dc for r in found} == {"dc1"}
        assert {r.zone for r in found} == {"rack0", "rack1"}


def test_a_node_that_does_not_know_the_rule_keeps_the_plain_ranking_everywhere() -> None:
    ms = two_datacenters()
    ms[0] = member(ms[0].name, ms[0].dc, placement=None)  # a node from before the rule
    t = table(ms)
    for key in KEYS:
        assert owners(t, key) == reference_rank(key, [(m.name, 1.0) for m in ms])[:2]
    # Once it is upgraded (its tag says 2), the whole table moves to the spread rule at once.
    epoch = t.epoch
    t.handle_event(MemberUpdated(member(ms[0].name, ms[0].dc)))
    assert t.epoch == epoch + 1
    assert all({r.dc for r in t.owners(key, 2)} == {"dc1", "dc2"} for key in KEYS)


def test_placement_tag_is_read_strictly() -> None:
    assert placement_of({}) == 1
    assert placement_of({PLACEMENT_TAG: "2"}) == 2
    assert placement_of({PLACEMENT_TAG: "7"}) == 7
    for bad in ("", "two", "-2", "2.0", " 2", "9" * 10):
        assert placement_of({PLACEMENT_TAG: bad}) == 1


def test_a_zone_change_moves_the_epoch() -> None:
    t = table([member("a", zone="r1"), member("b", zone="r2")])
    epoch = t.epoch
    t.handle_event(MemberUpdated(member("a", zone="r2")))
    assert t.epoch == epoch + 1
    assert t.members()[0].zone == "r2"


# The vectors of docs/routing.md ("The spread rule"): two datacenters of three members,
# dc1-0..2 and dc2-0..2, R = 2; the plain ranking's first two, then the spread rule's.
VECTORS = [
    ("sip:alice@example.com", ["dc1-2", "dc1-1"], ["dc1-2", "dc2-2"]),
    ("sip:bob@example.org", ["dc1-2", "dc2-0"], ["dc1-2", "dc2-0"]),
    ("bücher", ["dc2-2", "dc2-0"], ["dc2-2", "dc1-0"]),
]


@pytest.mark.parametrize(("key", "plain", "spread"), VECTORS)
def test_vectors(key: str, plain: list[str], spread: list[str]) -> None:
    ms = two_datacenters()
    assert reference_rank(key, [(m.name, 1.0) for m in ms])[:2] == plain
    assert reference_spread(key, [(m.name, 1.0, m.dc, "") for m in ms], 2) == spread
    assert owners(table(ms), key) == spread
    assert owners(table(two_datacenters(placement=None)), key) == plain


def test_spread_order_on_given_domains() -> None:
    # Ranked a1 a2 b1 a3 b2 (datacenters a, b; no zones): a1, then b1, then a2 ...
    doms = [("a", ""), ("a", ""), ("b", ""), ("a", ""), ("b", "")]
    assert spread_order(doms, 1) == [0]
    assert spread_order(doms, 2) == [0, 2]
    assert spread_order(doms, 3) == [0, 2, 1]
    assert spread_order(doms, 9) == [0, 2, 1, 4, 3]
    assert spread_order([], 2) == []


# Random clusters: 1-4 datacenters, 0-3 zones, mixed weights; up to 40 members, so that the
# table's fast path (the rule on the best 2n + 2, a longer prefix when they cannot decide)
# meets prefixes too short.
clusters = st.lists(
    st.tuples(
        st.sampled_from(["dc1", "dc2", "dc3", "dc4"]),
        st.sampled_from(["", "z1", "z2", "z3"]),
        st.sampled_from([1.0, 1.0, 2.0, 0.5]),
    ),
    min_size=1,
    max_size=40,
).map(lambda xs: [(f"m{i}", w, dc, zone) for i, (dc, zone, w) in enumerate(xs)])


@settings(max_examples=150, deadline=None)
@given(clusters, st.integers(1, 4), st.integers(0, 10_000))
def test_properties(members: list[tuple[str, float, str, str]], n: int, k: int) -> None:
    key = f"sip:u{k}@example.com"
    ms = [member(name, dc, zone, w) for name, w, dc, zone in members]
    t = table(ms)
    got = owners(t, key, n)
    # The table's answer is the slow reference's.
    assert got == reference_spread(key, members, n)
    # The first owner is the plain ranking's: owners' shares are still w / W.
    assert got[0] == reference_rank(key, [(m[0], m[1]) for m in members])[0]
    where = {name: (dc, zone) for name, _, dc, zone in members}
    dcs = {dc for _, _, dc, _ in members}
    domains = set(where.values())
    assert len({where[o][0] for o in got}) == min(n, len(dcs))
    assert len({where[o] for o in got}) == min(n, len(domains))
    # A member that owns nothing can leave without changing anything ...
    for name, *_ in members:
        if name not in got:
            rest = [m for m in members if m[0] != name]
            assert reference_spread(key, rest, n) == got
            break
    # ... and when an owner leaves, the others stay owners: one member takes its place.
    leaver = got[-1]
    after = reference_spread(key, [m for m in members if m[0] != leaver], n)
    assert set(got) - {leaver} <= set(after)


def test_a_leaver_moves_only_its_own_keys() -> None:
    ms = [member(f"a{z}-{i}", "dc1", f"r{z}") for z in range(2) for i in range(3)]
    ms += [member(f"b{z}-{i}", "dc2", f"r{z}") for z in range(2) for i in range(3)]
    t = table(ms)
    before = {key: owners(t, key, 3) for key in KEYS}
    t.handle_event(MemberLeft(ms[4]))
    for key in KEYS:
        now = owners(t, key, 3)
        if ms[4].name in before[key]:
            assert len(set(now) - set(before[key])) == 1
        else:
            assert now == before[key]
    # A newcomer changes only keys it now owns, and each of those loses one owner to it.
    before = {key: owners(t, key, 3) for key in KEYS}
    t.handle_event(MemberJoined(member("c-new", "dc2", "r9")))
    moved = 0
    for key in KEYS:
        now = owners(t, key, 3)
        if "c-new" in now:
            moved += 1
            assert set(now) - {"c-new"} <= set(before[key])
        else:
            assert now == before[key]
    assert moved > 0
