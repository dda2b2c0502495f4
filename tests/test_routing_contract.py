"""The rendezvous ranking as a wire-level contract: fixed test vectors (the same as in
docs/routing.md), the exact score order, and independence from PYTHONHASHSEED and input order."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from decimal import Decimal, localcontext
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swimthor.routing import (
    Rendezvous,
    compare_draws,
    draw,
    fmix64,
    key_hash,
    member_seed,
    reference_rank,
    score,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "routing.md"

KEY_HASHES = {
    "": 0x8E7BFE877EE88F77,
    "sip:alice@example.com": 0x43C466F1B9BE7D4E,
    "sip:bob@example.org": 0xB5219883C34031F8,
    "bücher": 0x563660F2DC8154E2,
}
SEEDS = {
    "node-a": 0xE7EA475BD20424DB,
    "node-b": 0x0DCFCF79210792F0,
    "node-c": 0x2D2EF33B6CFF8757,
    "node-d": 0x998274D7A5CBF274,
}
WEIGHTS = {"node-a": 1.0, "node-b": 1.0, "node-c": 2.0, "node-d": 0.5}
# For the key "sip:alice@example.com": x, v and the score of each member.
ALICE = {
    "node-a": (0x9D1F2D9B91DC2E03, 5528231510948741, 2.048524592275903),
    "node-b": (0x09EE11AC770D5C2F, 349379308216747, 0.30772816714157664),
    "node-c": (0xDFD11F13E5F0D981, 7874856401813019, 14.886576393121693),
    "node-d": (0x98692A2CE6994FC9, 5362478290359081, 0.9641380392362627),
}
# Full rankings of the four members, weighted as in WEIGHTS, and all with weight 1.
RANKINGS = {
    "sip:alice@example.com": ("c a d b", "c a d b"),
    "sip:bob@example.org": ("a b c d", "a b c d"),
    "sip:carol@example.net": ("d c b a", "d b a c"),
    "bücher": ("c a b d", "c a d b"),
}


def _names(spec: str) -> list[str]:
    return [f"node-{c}" for c in spec.split()]


def test_fmix64_is_murmur3_finalizer() -> None:
    assert fmix64(0) == 0
    assert fmix64(1) == 0xB456BCFC34C2CB2C
    assert fmix64(0x0123456789ABCDEF) == 0x87CBFBFE89022CEA


def test_key_hash_vectors() -> None:
    for key, expected in KEY_HASHES.items():
        assert key_hash(key) == expected, key


def test_member_seed_vectors() -> None:
    for name, expected in SEEDS.items():
        assert member_seed(name) == expected, name


def test_draw_and_score_vectors() -> None:
    h = key_hash("sip:alice@example.com")
    for name, (x, v, s) in ALICE.items():
        assert fmix64(h ^ SEEDS[name]) == x
        assert draw(h, SEEDS[name]) == v == x >> 11
        assert score(v, WEIGHTS[name]) == pytest.approx(s, rel=1e-12)


def test_ranking_vectors() -> None:
    for key, (weighted, equal) in RANKINGS.items():
        assert reference_rank(key, WEIGHTS.items()) == _names(weighted), key
        assert reference_rank(key, [(n, 1.0) for n in WEIGHTS]) == _names(equal), key


def test_doc_carries_the_same_vectors() -> None:
    text = DOC.read_text(encoding="utf-8").lower()
    for value in [*KEY_HASHES.values(), *SEEDS.values()]:
        assert f"{value:016x}" in text
    for x, v, s in ALICE.values():
        assert f"{x:016x}" in text and str(v) in text and repr(s)[:12] in text
    for weighted, equal in RANKINGS.values():
        assert ", ".join(_names(weighted)) in text
        assert ", ".join(_names(equal)) in text


def test_bad_keys_and_names() -> None:
    with pytest.raises(ValueError, match="key must be a str"):
        key_hash(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="surrogate"):
        key_hash("\ud800")
    with pytest.raises(ValueError, match="member name"):
        member_seed(7)  # type: ignore[arg-type]


def test_weightless_members_own_nothing() -> None:
    members = [("a", 0.0), ("b", -1.0), ("c", math.nan), ("d", math.inf), ("e", 1.0)]
    assert reference_rank("k", members) == ["e"]


def _real_score(v: int, w: float) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 120
        return -Decimal(w) / (Decimal(2 * v + 1) / Decimal(2**54)).ln()


draws = st.integers(0, 2**53 - 1)
weights = st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False)


@given(draws, weights, draws, weights)
def test_compare_draws_is_the_real_order(va: int, wa: float, vb: int, wb: float) -> None:
    real_a, real_b = _real_score(va, wa), _real_score(vb, wb)
    expected = -1 if (real_a, "b") > (real_b, "a") else 1
    assert compare_draws((va, wa, "a"), (vb, wb, "b")) == expected
    assert compare_draws((vb, wb, "b"), (va, wa, "a")) == -expected


@given(draws, st.floats(1e-3, 1e3), st.integers(-3, 3))
def test_near_ties_between_weights_are_exact(v: int, w: float, ulps: int) -> None:
    # Two weights a few ulp apart and draws next to each other: the double-precision scores
    # cannot tell them apart; compare_draws's decimal fallback must.
    w2 = w
    for _ in range(abs(ulps) or 1):
        w2 = math.nextafter(w2, math.inf if ulps >= 0 else 0.0)
    for v2 in (v, max(v - 1, 0), min(v + 1, 2**53 - 1)):
        real = _real_score(v, w) > _real_score(v2, w2)
        assert compare_draws((v, w, "x"), (v2, w2, "y")) == (-1 if real else 1)


@pytest.mark.parametrize(
    ("va", "vb"), [(3132846908774515, 3132846908774514), (5189111146719522, 5189111146719521)]
)
def test_double_precision_alone_would_get_these_wrong(va: int, vb: int) -> None:
    # Weights one ulp apart: rounding puts b's double score above a's, but a's real score is
    # the higher one. Every node must agree on the real order, whatever its libm.
    wa, wb = 1.0, math.nextafter(1.0, 2.0)
    assert score(va, wa) < score(vb, wb)
    assert _real_score(va, wa) > _real_score(vb, wb)
    assert compare_draws((va, wa, "b"), (vb, wb, "a")) == -1
    assert compare_draws((vb, wb, "a"), (va, wa, "b")) == 1
    rz = Rendezvous(["a", "b"], [wb, wa], [seed_for(vb), seed_for(va)])
    assert rz.top(0, 2) == [1, 0]
    # The same two among many weight classes (the double-precision path over all members).
    fillers = [f"f{i:02d}" for i in range(20)]
    rz = Rendezvous(
        ["a", "b", *fillers],
        [wb, wa, *[1.5 + i / 100 for i in range(20)]],
        [seed_for(vb), seed_for(va), *[seed_for(1000 + i) for i in range(20)]],
    )
    for n in (1, 2, 3):
        assert rz.top(0, n) == [1, 0, 21][:n]


def seed_for(v: int) -> int:
    """A seed whose draw for the key hash 0 is ``v`` (fmix64 inverted)."""
    m64 = (1 << 64) - 1
    k = (v << 11) ^ ((v << 11) >> 33)
    y = (k * pow(0xC4CEB9FE1A85EC53, -1, 1 << 64)) & m64
    y ^= y >> 33
    z = (y * pow(0xFF51AFD7ED558CCD, -1, 1 << 64)) & m64
    return z ^ (z >> 33)


def test_equal_weight_and_draw_goes_by_name() -> None:
    assert compare_draws((5, 1.0, "a"), (5, 1.0, "b")) == -1
    assert compare_draws((5, 1.0, "b"), (5, 1.0, "a")) == 1
    assert compare_draws((5, 1.0, "a"), (5, 1.0, "a")) == 0
    assert compare_draws((6, 1.0, "b"), (5, 1.0, "a")) == -1


def test_extreme_draws() -> None:
    # u at both ends of (0, 1): the largest draw is the best score, the smallest the worst.
    top, bottom = 2**53 - 1, 0
    assert score(top, 1.0) > 1e15 and score(bottom, 1.0) == pytest.approx(1 / 37.43, rel=1e-3)
    assert compare_draws((top, 1e-6, "a"), (2**52, 1e6, "b")) == -1
    assert compare_draws((bottom, 1e6, "a"), (2**52, 1e-6, "b")) == -1


_SCRIPT = """
import json, random, sys
from swimthor.routing import RoutingTable, Rendezvous, key_hash, reference_rank
from swimthor.membership import Member, State
names = {f"m{i}-{c}" for i in range(30) for c in "xy"}   # set order follows PYTHONHASHSEED
weights = {n: (1.0, 2.0, 0.5)[int(n[1:].split("-")[0]) % 3] for n in names}
order = list(names)
random.Random(int(sys.argv[1])).shuffle(order)
table = RoutingTable()
table.sync(
    Member(n, ("10.0.0.1", 1000 + i), "dc1", ("sip",), weights[n], {}, 1, State.ALIVE, 0.0)
    for i, n in enumerate(order)
)
rz = Rendezvous(order, [weights[n] for n in order])
out = {}
for k in range(200):
    key = f"sip:user{k}@example.com"
    out[key] = [
        [r.name for r in table.owners(key, 3)],
        [order[i] for i in rz.top(key_hash(key), 60)],
    ]
print(json.dumps(out, sort_keys=True))
"""


def test_same_ranking_under_any_hash_seed_and_member_order() -> None:
    outputs = set()
    for hash_seed, shuffle in (("0", 1), ("1", 2), ("4242", 3), ("random", 4)):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(shuffle)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        outputs.add(done.stdout)
    assert len(outputs) == 1
    result = json.loads(outputs.pop())
    names = {f"m{i}-{c}" for i in range(30) for c in "xy"}
    weights = {n: (1.0, 2.0, 0.5)[int(n[1:].split("-")[0]) % 3] for n in names}
    for key, (top3, full) in list(result.items())[:40]:
        expected = reference_rank(key, sorted(weights.items()))
        assert full == expected and top3 == expected[:3]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.text("abcdef", min_size=1, max_size=4), min_size=1, max_size=12, unique=True),
    st.randoms(use_true_random=False),
    st.text(max_size=20),
)
def test_reference_ignores_member_order(names: list[str], rnd: random.Random, key: str) -> None:
    members = [(n, float(1 + len(n) % 3)) for n in names]
    shuffled = list(members)
    rnd.shuffle(shuffled)
    assert reference_rank(key, members) == reference_rank(key, shuffled)
