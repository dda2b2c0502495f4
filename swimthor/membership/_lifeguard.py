"""Lifeguard arithmetic: the local health multiplier and the dynamic suspicion timeout.

Pure functions and two small state holders, no I/O and no clock reads: every time is a float
number of seconds on the core's clock, passed in by the caller. The rules follow
hashicorp/memberlist (``awareness.go``, ``suspicion.go``, ``util.go`` ``suspicionTimeout`` and
``state.go`` ``suspectNode``), which implement Lifeguard (Dadgar et al., 2018, sections IV-A
"Local Health Multiplier" and IV-B "Local Health Aware Suspicion").
"""

from __future__ import annotations

import math

__all__ = [
    "Awareness",
    "Suspicion",
    "expected_confirmations",
    "remaining_suspicion_time",
    "suspicion_timeouts",
]


class Awareness:
    """This node's own health score (Lifeguard "local health multiplier").

    Lower is healthier; 0 is fully healthy. The score stays in ``[0, max_multiplier - 1]`` and
    timeouts are stretched by ``score + 1``, so a node that is itself slow (missed acks, nacks
    it did not get, having to refute a suspicion of itself) probes less eagerly instead of
    accusing healthy peers. Same semantics as memberlist ``awareness.go``.
    """

    __slots__ = ("_max", "_score")

    def __init__(self, max_multiplier: int) -> None:
        # memberlist does not check this; with max < 1 its clamp would yield a negative score
        # and ScaleTimeout would return zero or negative timeouts.
        if max_multiplier < 1:
            raise ValueError(f"max_multiplier must be >= 1, got {max_multiplier}")
        self._max = max_multiplier
        self._score = 0

    @property
    def max_multiplier(self) -> int:
        return self._max

    @property
    def score(self) -> int:
        """Current score, ``0 <= score < max_multiplier``."""
        return self._score

    def apply_delta(self, delta: int) -> None:
        """Add ``delta`` to the score, clamped into ``[0, max_multiplier - 1]``.

        The clamp applies after adding, so a delta railed at one end is absorbed there (score 0
        plus -1 stays 0; one +1 after that counts in full).
        """
        self._score = min(max(self._score + delta, 0), self._max - 1)

    def scale_timeout(self, timeout: float) -> float:
        """Return ``timeout * (score + 1)``."""
        return timeout * (self._score + 1)


def suspicion_timeouts(
    n: int, suspicion_mult: float, max_timeout_mult: float, probe_interval: float
) -> tuple[float, float]:
    """Return ``(min_timeout, max_timeout)`` of a suspicion in a cluster of ``n`` members.

    Exactly memberlist ``util.go`` ``suspicionTimeout`` and ``state.go`` ``suspectNode``::

        node_scale  = max(1.0, log10(max(1.0, n)))
        min_timeout = suspicion_mult * node_scale * probe_interval
        max_timeout = max_timeout_mult * min_timeout

    So clusters of up to 10 members all get ``suspicion_mult * probe_interval``; beyond that the
    timeout grows with log10(n) (100 members: x2, 1000: x3). memberlist computes with integer
    nanoseconds and truncates ``node_scale`` to thousandths; here the arithmetic is in float
    seconds without that truncation, a difference below 0.1 %.
    """
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    min_timeout = suspicion_mult * node_scale * probe_interval
    return min_timeout, max_timeout_mult * min_timeout


def expected_confirmations(n: int, suspicion_mult: float) -> int:
    """Return k, the independent confirmations that drive a suspicion to its minimum timeout.

    memberlist ``state.go`` ``suspectNode``::

        k = suspicion_mult - 2
        if n - 2 < k: k = 0

    ``- 2`` in ``k`` makes the nominal timeout land two probe intervals short of what the
    multiplier alone would give (there is no known phase relation with peers). ``n - 2`` leaves
    out this node and the suspect: if the rest of the cluster is too small to supply k
    confirmations, none are expected and the suspicion fires at the minimum timeout.

    ``suspicion_mult`` is an int in memberlist; a float here is floored first. The result is
    never negative (memberlist's negative k, possible with a multiplier below 2, behaves the
    same as 0: no confirmation is ever accepted and the timeout is the minimum).
    """
    k = math.floor(suspicion_mult) - 2
    if n - 2 < k:
        k = 0
    return max(k, 0)


def remaining_suspicion_time(
    confirmations: int, k: int, elapsed: float, min_timeout: float, max_timeout: float
) -> float:
    """Return how long a suspicion still has to run; negative means it is already overdue.

    memberlist ``suspicion.go`` ``remainingSuspicionTime``, with c = ``confirmations``::

        frac    = log(c + 1) / log(k + 1)
        raw     = max_timeout - frac * (max_timeout - min_timeout)
        timeout = floor(1000 * raw) / 1000          # whole milliseconds, rounded down
        timeout = max(timeout, min_timeout)
        return timeout - elapsed

    The total timeout starts at ``max_timeout`` (c = 0) and falls logarithmically to
    ``min_timeout`` at c = k. When ``k < 1`` no confirmations are expected and the total is
    ``min_timeout`` from the start (memberlist ``newSuspicion``: ``if k < 1 { timeout = min }``);
    that case is handled here rather than dividing by log(1) = 0.
    """
    if k < 1:
        return min_timeout - elapsed
    frac = math.log(confirmations + 1.0) / math.log(k + 1.0)
    raw = max_timeout - frac * (max_timeout - min_timeout)
    timeout = math.floor(1000.0 * raw) / 1000.0
    timeout = max(timeout, min_timeout)
    return timeout - elapsed


class Suspicion:
    """One running suspicion of one member, as memberlist's ``suspicion`` but without a timer.

    The suspicion starts at ``start`` with a total timeout of ``max_timeout`` (``min_timeout``
    when ``k < 1``). Each new independent confirmation, up to ``k`` of them, shortens the total
    per :func:`remaining_suspicion_time`; :attr:`deadline` is the absolute time at which the
    suspect should be declared dead. It never grows, and it never falls below
    ``start + min_timeout``. The caller owns the clock: it compares ``deadline`` with its own
    ``now`` and fires when ``now >= deadline`` (a confirmation may move the deadline into the
    past, which means "fire at once", as memberlist does with a negative remaining time).
    """

    __slots__ = ("_confirmers", "_deadline", "_k", "_max", "_min", "_origin", "_start")

    def __init__(
        self, *, origin: str, k: int, min_timeout: float, max_timeout: float, start: float
    ) -> None:
        self._origin = origin
        self._k = k
        self._min = min_timeout
        self._max = max_timeout
        self._start = start
        self._confirmers: set[str] = set()
        self._deadline = start + (min_timeout if k < 1 else max_timeout)

    @property
    def origin(self) -> str:
        """The member whose accusation started this suspicion; it never counts as a confirmer."""
        return self._origin

    @property
    def k(self) -> int:
        return self._k

    @property
    def min_timeout(self) -> float:
        return self._min

    @property
    def max_timeout(self) -> float:
        return self._max

    @property
    def start(self) -> float:
        return self._start

    @property
    def confirmations(self) -> int:
        """Number of independent confirmations counted so far (at most ``k``)."""
        return len(self._confirmers)

    @property
    def confirmers(self) -> frozenset[str]:
        """The members whose confirmations were counted; excludes the origin."""
        return frozenset(self._confirmers)

    @property
    def deadline(self) -> float:
        """Absolute time (core clock) at which the suspicion expires."""
        return self._deadline

    def remaining(self, now: float) -> float:
        """Time left until :attr:`deadline`; zero or negative once it is due."""
        return self._deadline - now

    def confirm(self, from_: str, now: float) -> bool:
        """Count a suspicion of the same member, same incarnation, raised by ``from_``.

        Returns True when it was new information: ``from_`` is not the origin, has not
        confirmed before, and fewer than ``k`` confirmations had been counted. Only then is
        the deadline recomputed. (memberlist ``suspicion.Confirm``, which also refuses once k
        is reached, before looking at ``from_``.)

        ``now`` does not change the result or the deadline, which is absolute; it is taken so a
        caller can pass its clock as with every other core input. Check ``remaining(now)`` after
        a True result: it can already be due.
        """
        del now  # the deadline is absolute: start + total timeout for the new count
        if len(self._confirmers) >= self._k:
            return False
        if from_ == self._origin or from_ in self._confirmers:
            return False
        self._confirmers.add(from_)
        total = remaining_suspicion_time(len(self._confirmers), self._k, 0.0, self._min, self._max)
        # The formula is monotone in the count; min() guards against float noise only.
        self._deadline = min(self._deadline, self._start + total)
        return True
