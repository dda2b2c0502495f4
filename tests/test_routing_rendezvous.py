"""The vectorized ranking (`Rendezvous`) against the slow reference, bit for bit, on every path
it takes: one weight class (with and without the early exit before fmix64's last step), a few
classes, many classes, exact ties and crafted near-ties; then minimal disruption and weighted
shares."""

from __future__ import annotations

import math
import random
from decimal import Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swimthor.membership import Member, State
from swimthor.routing import (
    Rendezvous,
    RoutingTable,
    fmix64,
    key_hash,
    member_seed,
    reference_rank,
)

# White-box: how many weight classes are still ranked class by class (_CLASS_SCAN).
from swimthor.routing import _rendezvous as rz_module

M64 = (1 << 64) - 1
C1 = 0xFF51AFD7ED558CCD
C2 = 0xC4CEB9FE1A85EC53
C1_INV = pow(C1, -1, 1 << 64)
C2_INV = pow(C2, -1, 1 << 64)


def _unshift(y: int) -> int:
    return y ^ (y >> 33)  # x ^ (x >> 33) is its own inverse for 64-bit x


def seed_for_x(h: int, x: int) -> int:
    """The seed whose member gets exactly ``x = fmix64(h ^ seed)`` for the key hash ``h``."""
    k = _unshift(x)
    y = _unshift((k * C2_INV) & M64)
    z = _unshift((y * C1_INV) & M64)
    return z ^ h


def test_seed_for_x_inverts_fmix64() -> None:
    h = key_hash("k")
    for x in (0, 1, 2**63, M64, 0x0123456789ABCDEF):
        assert fmix64(h ^ seed_for_x(h, x)) == x


def ranked(names: list[str], weights: list[float], key: str, n: int) -> list[str]:
    rz = Rendezvous(names, weights)
    return [names[i] for i in rz.top(key_hash(key), n)]


names_st = st.lists(
    st.text("abcdefghij-0123456789", min_size=1, max_size=6), min_size=1, max_size=40, unique=True
)
few_weights = st.sampled_from([0.0, 0.25, 1.0, 1.0, 1.0, 2.0, 3.0])
keys_st = st.lists(st.text(max_size=30), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(names_st, keys_st, st.integers(1, 45))
def test_one_weight_class_matches_reference(names: list[str], keys: list[str], n: int) -> None:
    weights = [1.0] * len(names)
    for key in keys:
        assert (
            ranked(names, weights, key, n)
            == reference_rank(key, zip(names, weights, strict=True))[:n]
        )


@settings(max_examples=150, deadline=None)
@given(names_st, st.data(), keys_st, st.integers(1, 45))
def test_few_weight_classes_match_reference(
    names: list[str], data: st.DataObject, keys: list[str], n: int
) -> None:
    weights = data.draw(st.lists(few_weights, min_size=len(names), max_size=len(names)))
    for key in keys:
        assert (
            ranked(names, weights, key, n)
            == reference_rank(key, zip(names, weights, strict=True))[:n]
        )


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.text("abcdefgh", min_size=2, max_size=5), min_size=17, max_size=60, unique=True),
    st.data(),
    keys_st,
    st.integers(1, 65),
)
def test_many_weight_classes_match_reference(
    names: list[str], data: st.DataObject, keys: list[str], n: int
) -> None:
    weights = data.draw(
        st.lists(st.floats(0.01, 1000.0), min_size=len(names), max_size=len(names), unique=True)
    )
    assert len(set(weights)) > rz_module._CLASS_SCAN  # the double-precision path
    for key in keys:
        assert (
            ranked(names, weights, key, n)
            == reference_rank(key, zip(names, weights, strict=True))[:n]
        )


def _crafted(h: int, xs: dict[str, int]) -> Rendezvous:
    names = list(xs)
    return Rendezvous(names, [1.0] * len(names), [seed_for_x(h, xs[n]) for n in names])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_equal_draws_rank_by_name(n: int) -> None:
    # Same 53-bit draw (the low 11 bits of x differ): a tie on score, broken by name.
    h = key_hash("tie")
    top = (M64 >> 11) << 11
    xs = {"d": top | 5, "b": top | 2000, "c": top | 0, "a": top | 7, "e": 2**62, "f": 2**61}
    xs.update({f"z{i}": i << 20 for i in range(1, 5)})
    rz = _crafted(h, xs)
    names = list(xs)
    got = [names[i] for i in rz.top(h, n)]
    assert got == ["a", "b", "c", "d", "e", "f", "z4", "z3"][:n]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_early_exit_falls_back_on_top33_ties(n: int) -> None:
    # Same top 33 bits of x but different draws: the shortcut before fmix64's last step cannot
    # order them and must hand over to the full path.
    h = key_hash("close")
    base = 0xFFFF_FFFF_8000_0000
    xs = {"p": base | 0x1000, "q": base | 0x7FFF_F800, "r": base | 0x0800_0000, "s": 2**63}
    xs.update({f"t{i}": i << 40 for i in range(1, 8)})
    names = list(xs)
    rz = _crafted(h, xs)
    assert rz._top_unfinished(h, n) is None
    expected = sorted(names, key=lambda m: (-(xs[m] >> 11), m))
    assert [names[i] for i in rz.top(h, n)] == expected[:n]


def test_member_whose_draw_is_zero() -> None:
    # seed == h gives x = 0: the knocked-out marker value must not be confused with it.
    h = key_hash("zero")
    for n in (1, 2, 3):
        rz = Rendezvous(["a", "b"], [1.0, 1.0], [h, seed_for_x(h, 12345 << 11)])
        assert rz.top(h, n) == [1, 0][:n]
        rz = Rendezvous(["a", "b", "c"], [1.0, 1.0, 1.0], [h, h, seed_for_x(h, 1 << 11)])
        assert rz.top(h, n) == [2, 0, 1][:n]
        rz = Rendezvous(["a", "b"], [1.0, 1.0], [h, h])
        assert rz.top(h, n) == [0, 1][:n]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([1.0, 2.0, 0.5]), min_size=3, max_size=20), st.data())
def test_crafted_ties_with_weight_classes(weights: list[float], data: st.DataObject) -> None:
    # Members of a class share draws: within a class, name order; across, exact scores.
    h = key_hash("classes")
    draws = data.draw(st.lists(st.sampled_from([1, 2**52, 2**53 - 1]), min_size=len(weights)))
    names = [f"m{i:02d}" for i in range(len(weights))]
    seeds = [seed_for_x(h, draws[i % len(draws)] << 11) for i in range(len(weights))]
    rz = Rendezvous(names, weights, seeds)
    got = [names[i] for i in rz.top(h, len(names))]

    def real(i: int) -> Decimal:
        v = draws[i % len(draws)]
        with localcontext() as ctx:
            ctx.prec = 80
            return -Decimal(weights[i]) / (Decimal(2 * v + 1) / Decimal(2**54)).ln()

    expected = sorted(range(len(names)), key=lambda i: (-real(i), names[i]))
    assert got == [names[i] for i in expected]


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match="same length"):
        Rendezvous(["a"], [1.0, 2.0])
    with pytest.raises(ValueError, match="unique"):
        Rendezvous(["a", "a"], [1.0, 1.0])
    with pytest.raises(ValueError, match="at least 1"):
        Rendezvous(["a"], [1.0]).top(1, 0)
    assert Rendezvous([], []).top(1, 3) == []
    assert Rendezvous(["a", "b"], [0.0, 0.0]).top(1, 3) == []
    assert len(Rendezvous(["a", "b"], [0.0, 1.0])) == 1


@settings(max_examples=100, deadline=None)
@given(names_st, st.data(), keys_st)
def test_removing_a_member_moves_only_its_keys_to_its_second(
    names: list[str], data: st.DataObject, keys: list[str]
) -> None:
    weights = data.draw(st.lists(few_weights, min_size=len(names), max_size=len(names)))
    gone = data.draw(st.sampled_from(names))
    rest = [(n, w) for n, w in zip(names, weights, strict=True) if n != gone]
    before_rz = Rendezvous(names, weights)
    after_rz = Rendezvous([n for n, _ in rest], [w for _, w in rest])
    for key in keys:
        h = key_hash(key)
        before = [names[i] for i in before_rz.top(h, len(names))]
        after = [rest[i][0] for i in after_rz.top(h, len(names))]
        assert after == [m for m in before if m != gone]  # the whole ranking, minus one
        top2 = [names[i] for i in before_rz.top(h, 2)]
        new_owner = [rest[i][0] for i in after_rz.top(h, 1)]
        if top2 and top2[0] != gone:
            assert new_owner == top2[:1]  # not its key: stays
        elif top2:
            assert new_owner == top2[1:2]  # its key: to the replica


@settings(max_examples=100, deadline=None)
@given(names_st, st.data(), keys_st)
def test_adding_a_member_moves_keys_only_to_it(
    names: list[str], data: st.DataObject, keys: list[str]
) -> None:
    weights = data.draw(st.lists(few_weights, min_size=len(names), max_size=len(names)))
    new, new_w = data.draw(st.sampled_from(names)), data.draw(st.sampled_from([0.5, 1.0, 2.0]))
    old = [(n, w) for n, w in zip(names, weights, strict=True) if n != new]
    before_rz = Rendezvous([n for n, _ in old], [w for _, w in old])
    after_rz = Rendezvous([*[n for n, _ in old], new], [*[w for _, w in old], new_w])
    after_names = [*[n for n, _ in old], new]
    for key in keys:
        h = key_hash(key)
        before = [old[i][0] for i in before_rz.top(h, 50)]
        after = [after_names[i] for i in after_rz.top(h, 50)]
        assert [m for m in after if m != new] == before
        for n in (1, 2):
            owners_before = [old[i][0] for i in before_rz.top(h, n)]
            owners_after = [after_names[i] for i in after_rz.top(h, n)]
            moved = set(owners_after) - set(owners_before)
            assert moved <= {new}


@settings(max_examples=12, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=2, max_size=8), st.integers(0, 2**32))
def test_shares_follow_the_weights(ws: list[int], salt: int) -> None:
    names = [f"node-{i}" for i in range(len(ws))]
    weights = [float(w) for w in ws]
    rz = Rendezvous(names, weights)
    keys = 20_000
    counts = [0] * len(names)
    for k in range(keys):
        counts[rz.top(key_hash(f"sip:{salt}-{k}@example.com"), 1)[0]] += 1
    total = sum(weights)
    for count, w in zip(counts, weights, strict=True):
        p = w / total
        # Binomial: five standard deviations (a false alarm about once in 3.5 million).
        assert abs(count - keys * p) <= 5 * math.sqrt(keys * p * (1 - p)), (counts, weights)


def test_seeds_default_to_member_seed() -> None:
    names = ["x", "y", "z"]
    a = Rendezvous(names, [1.0, 2.0, 1.0])
    b = Rendezvous(names, [1.0, 2.0, 1.0], [member_seed(n) for n in names])
    for k in range(50):
        h = key_hash(str(k))
        assert a.top(h, 3) == b.top(h, 3)


@settings(max_examples=80, deadline=None)
@given(names_st, st.data(), keys_st, st.randoms(use_true_random=False))
def test_member_order_does_not_matter(
    names: list[str], data: st.DataObject, keys: list[str], rnd: random.Random
) -> None:
    weights = data.draw(st.lists(few_weights, min_size=len(names), max_size=len(names)))
    pairs = list(zip(names, weights, strict=True))
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    a = Rendezvous([n for n, _ in pairs], [w for _, w in pairs])
    b = Rendezvous([n for n, _ in shuffled], [w for _, w in shuffled])
    table_a, table_b = RoutingTable(), RoutingTable()
    for table, members in ((table_a, pairs), (table_b, shuffled)):
        table.sync(
            Member(n, ("10.0.0.1", 1), "dc1", ("sip",), w, {}, 1, State.ALIVE, 0.0)
            for n, w in members
        )
    for key in keys:
        h = key_hash(key)
        for n in (1, 2, 5, len(names)):
            ranked_a = [pairs[i][0] for i in a.top(h, n)]
            assert ranked_a == [shuffled[i][0] for i in b.top(h, n)]
            assert [r.name for r in table_a.owners(key, n)] == ranked_a
            assert [r.name for r in table_b.owners(key, n)] == ranked_a
