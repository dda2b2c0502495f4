"""Lifeguard arithmetic, stepped by hand.

Expected numbers are written out or computed here from the memberlist formulas, never taken
from the module under test. memberlist's own table (suspicion_test.go) is reproduced as is.
"""

from __future__ import annotations

import math
import random

import pytest

from swimthor.membership._lifeguard import (
    Awareness,
    Suspicion,
    expected_confirmations,
    remaining_suspicion_time,
    suspicion_timeouts,
)

# ---------------------------------------------------------------------------------------------
# Awareness


def test_awareness_starts_healthy() -> None:
    a = Awareness(8)
    assert a.score == 0
    assert a.scale_timeout(0.5) == 0.5


def test_awareness_rises_falls_and_clamps() -> None:
    a = Awareness(8)
    steps = [(1, 1), (1, 2), (3, 5), (-1, 4), (10, 7), (1, 7), (-2, 5), (-100, 0), (-1, 0)]
    for delta, expected in steps:
        a.apply_delta(delta)
        assert a.score == expected, (delta, expected)
    # Railed at zero: a later +1 counts in full, nothing "owed" from the clamp.
    a.apply_delta(1)
    assert a.score == 1


def test_awareness_scale_timeout_is_score_plus_one() -> None:
    a = Awareness(4)
    expected = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}
    for score, factor in expected.items():
        assert a.score == score
        assert a.scale_timeout(0.25) == pytest.approx(0.25 * factor)
        a.apply_delta(1)
    assert a.score == 3  # max_multiplier - 1
    assert a.scale_timeout(0.25) == pytest.approx(1.0)


def test_awareness_max_one_never_scales() -> None:
    a = Awareness(1)
    a.apply_delta(5)
    assert a.score == 0
    assert a.scale_timeout(2.0) == 2.0


def test_awareness_rejects_max_below_one() -> None:
    with pytest.raises(ValueError):
        Awareness(0)


# ---------------------------------------------------------------------------------------------
# suspicion_timeouts and expected_confirmations


@pytest.mark.parametrize(
    ("n", "mult", "max_mult", "interval", "expected_min", "expected_max"),
    [
        # node_scale = max(1, log10(max(1, n))): 1 up to n = 10, then log10(n).
        (0, 4.0, 6.0, 1.0, 4.0, 24.0),
        (1, 4.0, 6.0, 1.0, 4.0, 24.0),
        (5, 4.0, 6.0, 1.0, 4.0, 24.0),
        (10, 4.0, 6.0, 1.0, 4.0, 24.0),
        (100, 4.0, 6.0, 1.0, 8.0, 48.0),
        (1000, 4.0, 6.0, 1.0, 12.0, 72.0),
        (1000, 6.0, 6.0, 5.0, 90.0, 540.0),  # memberlist WAN-like: mult 6, 5 s probes
        (100, 3.0, 2.0, 0.2, 1.2, 2.4),
        (5, 3.0, 6.0, 0.2, 0.6, 3.6),
    ],
)
def test_suspicion_timeouts_table(
    n: int,
    mult: float,
    max_mult: float,
    interval: float,
    expected_min: float,
    expected_max: float,
) -> None:
    lo, hi = suspicion_timeouts(n, mult, max_mult, interval)
    assert lo == pytest.approx(expected_min)
    assert hi == pytest.approx(expected_max)


def test_suspicion_timeouts_between_powers_of_ten_follow_log10() -> None:
    lo, hi = suspicion_timeouts(50, 4.0, 6.0, 1.0)
    assert lo == pytest.approx(4.0 * 1.6989700043360187)
    assert hi == pytest.approx(6.0 * 4.0 * 1.6989700043360187)


@pytest.mark.parametrize(
    ("n", "mult", "expected_k"),
    [
        # k = mult - 2, but 0 when n - 2 < k (too few others to confirm).
        (1, 4.0, 0),
        (2, 4.0, 0),
        (3, 4.0, 0),  # n - 2 = 1 < 2
        (4, 4.0, 2),  # n - 2 = 2, not < 2
        (100, 4.0, 2),
        (5, 6.0, 0),  # 3 < 4
        (6, 6.0, 4),
        (1000, 6.0, 4),
        (100, 2.0, 0),
        (100, 1.0, 0),  # memberlist gives -1, which behaves as 0
        (100, 4.5, 2),  # float multiplier floored
    ],
)
def test_expected_confirmations(n: int, mult: float, expected_k: int) -> None:
    assert expected_confirmations(n, mult) == expected_k


# ---------------------------------------------------------------------------------------------
# remaining_suspicion_time


@pytest.mark.parametrize(
    ("c", "k", "elapsed", "expected"),
    [
        # memberlist suspicion_test.go TestSuspicion_remainingSuspicionTime, min 2 s, max 30 s.
        (0, 3, 0.0, 30.0),
        (1, 3, 2.0, 14.0),
        (2, 3, 3.0, 4.81),
        (3, 3, 4.0, -2.0),
        (4, 3, 5.0, -3.0),
        (5, 3, 10.0, -8.0),
    ],
)
def test_remaining_suspicion_time_memberlist_table(
    c: int, k: int, elapsed: float, expected: float
) -> None:
    assert remaining_suspicion_time(c, k, elapsed, 2.0, 30.0) == pytest.approx(expected)


def test_remaining_suspicion_time_is_logarithmic_not_linear() -> None:
    # k = 3, min 2, max 12. Linear would give 12 - 10/3 = 8.667 after one confirmation.
    assert remaining_suspicion_time(1, 3, 0.0, 2.0, 12.0) == pytest.approx(7.0)
    # log(3)/log(4) = 0.7924812503605781; 12 - 7.924812503605781 = 4.0751875 -> 4.075 (ms floor)
    assert remaining_suspicion_time(2, 3, 0.0, 2.0, 12.0) == pytest.approx(4.075)


def test_remaining_suspicion_time_floors_to_milliseconds() -> None:
    assert remaining_suspicion_time(0, 2, 0.0, 1.0, 2.0009) == pytest.approx(2.0)
    # 1 confirmation of 1: frac = 1 -> exactly min, min is not floored.
    assert remaining_suspicion_time(1, 1, 0.0, 1.2345, 9.0) == pytest.approx(1.2345)


def test_remaining_suspicion_time_without_expected_confirmations_is_min() -> None:
    assert remaining_suspicion_time(0, 0, 0.0, 4.0, 24.0) == pytest.approx(4.0)
    assert remaining_suspicion_time(0, 0, 1.5, 4.0, 24.0) == pytest.approx(2.5)
    assert remaining_suspicion_time(0, -1, 0.0, 4.0, 24.0) == pytest.approx(4.0)


def _expected_total(c: int, k: int, lo: float, hi: float) -> float:
    """Independent restatement of the memberlist formula (log base 2, same ratio)."""
    if k < 1:
        return lo
    raw = hi - (math.log2(c + 1) / math.log2(k + 1)) * (hi - lo)
    return max(lo, math.floor(raw * 1000) / 1000)


# ---------------------------------------------------------------------------------------------
# Suspicion


def test_suspicion_deadline_after_each_confirmation() -> None:
    s = Suspicion(origin="o", k=3, min_timeout=2.0, max_timeout=30.0, start=100.0)
    assert s.deadline == pytest.approx(130.0)
    assert s.confirmations == 0
    assert s.confirmers == frozenset()

    assert s.confirm("a", 101.0) is True
    assert s.confirmations == 1
    assert s.deadline == pytest.approx(116.0)  # 30 - 0.5 * 28

    assert s.confirm("b", 102.0) is True
    assert s.deadline == pytest.approx(107.81)  # 30 - 0.79248 * 28 = 7.8105 -> 7.810

    assert s.confirm("c", 103.0) is True
    assert s.deadline == pytest.approx(102.0)  # min
    assert s.confirmers == frozenset({"a", "b", "c"})


def test_suspicion_ignores_origin_and_duplicates() -> None:
    s = Suspicion(origin="o", k=3, min_timeout=2.0, max_timeout=30.0, start=0.0)
    assert s.confirm("o", 1.0) is False
    assert s.confirmations == 0
    assert s.deadline == pytest.approx(30.0)
    assert s.confirm("a", 1.0) is True
    before = s.deadline
    assert s.confirm("a", 2.0) is False
    assert s.confirm("o", 2.0) is False
    assert s.confirmations == 1
    assert s.deadline == before
    assert "o" not in s.confirmers


def test_suspicion_ignores_confirmations_beyond_k() -> None:
    s = Suspicion(origin="o", k=2, min_timeout=3.0, max_timeout=9.0, start=10.0)
    assert s.confirm("a", 11.0)
    assert s.confirm("b", 11.0)
    assert s.deadline == pytest.approx(13.0)
    assert s.confirm("c", 11.0) is False
    assert s.confirmations == 2
    assert s.confirmers == frozenset({"a", "b"})
    assert s.deadline == pytest.approx(13.0)


def test_suspicion_k_zero_fires_at_min_and_takes_no_confirmations() -> None:
    s = Suspicion(origin="o", k=0, min_timeout=4.0, max_timeout=24.0, start=50.0)
    assert s.deadline == pytest.approx(54.0)
    assert s.confirm("a", 51.0) is False
    assert s.confirmations == 0
    assert s.deadline == pytest.approx(54.0)


def test_suspicion_deadline_is_absolute_whatever_now() -> None:
    early = Suspicion(origin="o", k=3, min_timeout=2.0, max_timeout=30.0, start=0.0)
    late = Suspicion(origin="o", k=3, min_timeout=2.0, max_timeout=30.0, start=0.0)
    early.confirm("a", 0.1)
    late.confirm("a", 25.0)
    assert early.deadline == late.deadline == pytest.approx(16.0)
    # A confirmation can move the deadline into the past: the caller fires at once.
    assert late.remaining(25.0) == pytest.approx(-9.0)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6, 8])
def test_suspicion_matches_formula_and_never_grows(k: int) -> None:
    rng = random.Random(k)
    lo = rng.uniform(0.5, 5.0)
    hi = lo * rng.uniform(1.0, 8.0)
    start = rng.uniform(0.0, 1000.0)
    s = Suspicion(origin="o", k=k, min_timeout=lo, max_timeout=hi, start=start)
    assert s.deadline == pytest.approx(start + hi)
    senders = ["o", "o", *[f"m{i}" for i in range(k + 3)]]
    senders += senders[:5]
    rng.shuffle(senders)
    previous = s.deadline
    counted: set[str] = set()
    for sender in senders:
        new = sender != "o" and sender not in counted and len(counted) < k
        assert s.confirm(sender, start + 1.0) is new
        if new:
            counted.add(sender)
        assert s.confirmations == len(counted)
        assert s.deadline == pytest.approx(start + _expected_total(len(counted), k, lo, hi))
        assert s.deadline <= previous
        assert s.deadline >= start + lo - 1e-9
        previous = s.deadline
    assert s.confirmations == k
    assert s.deadline == pytest.approx(start + lo)
