"""Fast top-n rendezvous ranking over one fixed set of members, vectorized with numpy.

A ``Rendezvous`` is built once per set of candidates (one role, optionally one datacenter, at
one routing epoch) and then answers ``top(h, n)`` for any number of keys. Per key it runs the
contract's mixing (``_hrw``) over all member seeds in a handful of in-place array operations,
about 1 ns per member plus a few microseconds of call overhead, and needs no logarithm at all
when the members share one weight:

* Members of equal weight rank by their 53-bit draw ``v`` alone (the score only grows with it),
  and among equal draws by name. The members are stored by (weight class, name), so the first
  maximum that ``argmax`` finds in a class is also the right one on a tie. The full path holds
  ``x | 0x7ff`` rather than ``x >> 11``: the same order, and never 0, so a picked member can be
  knocked out with a 0 before looking for the next.
* fmix64's first step is linear over GF(2) and is folded into the stored seeds; its last step
  leaves the top 33 bits alone, so one weight class is ranked from the value before it
  whenever the top ``n + 1`` differ in those bits (``_top_unfinished``), else by the full path.
* With a few weight classes, each class yields its own top n by the integer draw and only those
  few candidates are compared by score (exactly, ``_hrw.compare_draws``).
* With many weight classes, every score is computed in double precision, everything within
  10**-9 of the n-th best is kept, and those candidates are ordered exactly.

The results are the contract's ranking bit for bit; ``tests/test_routing_rendezvous.py`` checks
them against ``_hrw.reference_rank``. Not thread-safe: each instance reuses its scratch arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cmp_to_key

import numpy as np
import numpy.typing as npt

from ._hrw import compare_draws, draw, member_seed, owns_keys

__all__ = ["Rendezvous"]

U64 = npt.NDArray[np.uint64]

_S33 = np.uint64(33)
_S11 = np.uint64(11)
_C1 = np.uint64(0xFF51AFD7ED558CCD)
_C2 = np.uint64(0xC4CEB9FE1A85EC53)
_LOW11 = np.uint64(0x7FF)
_TWO52 = np.uint64(1 << 52)
_TWO53 = np.uint64(1 << 53)
_EPS53 = 2.0**-53
_MARGIN = 1.0 - 1e-9

# Up to this many picks are found by repeated argmax (one pass each); more by a partition.
_ARGMAX_PICKS = 4
# Up to this many weight classes are ranked class by class on the integer draw; more by
# double-precision scores over all members.
_CLASS_SCAN = 16

_by_rank = cmp_to_key(compare_draws)
# Up to this many members, a plain Python loop over the draws beats numpy's per-call overhead
# (about 1 microsecond per member against about 15 per lookup).
_SMALL = 12
# Bound once: the output array passed positionally saves ~0.1 us per call over ``out=``.
_xor = np.bitwise_xor
_shr = np.right_shift
_mul = np.multiply
_or = np.bitwise_or


def _top_positions(buf: U64, n: int, raws: list[int] | None = None) -> list[int]:
    """Positions of the ``n`` largest values in ``buf`` (ties: lowest position first), best
    first; their values are appended to ``raws`` if given. May overwrite picked entries of
    ``buf`` with 0 (all values are nonzero)."""
    size = buf.shape[0]
    if n <= _ARGMAX_PICKS and n < size:
        out = []
        for _ in range(n):
            p = int(buf.argmax())
            out.append(p)
            if raws is not None:
                raws.append(int(buf[p]))
            buf[p] = 0
        return out
    neg = ~buf
    if n >= size:
        cand = np.argsort(neg, kind="stable")
    else:
        nth = neg[np.argpartition(neg, n - 1)[n - 1]]
        cand = np.flatnonzero(neg <= nth)  # every value tied with the n-th is in
        cand = cand[np.argsort(neg[cand], kind="stable")][:n]
    if raws is not None:
        raws.extend(int(r) for r in buf[cand])
    return [int(p) for p in cand]


class Rendezvous:
    """The members ``names`` with ``weights`` (and optionally precomputed ``seeds``), ready to
    rank for any key. ``top`` returns indices into the sequences given here."""

    __slots__ = (
        "_buf",
        "_classes",
        "_names",
        "_perm",
        "_pre",
        "_pyseeds",
        "_seeds",
        "_size",
        "_tmp",
        "_weights",
    )

    def __init__(
        self,
        names: Sequence[str],
        weights: Sequence[float],
        seeds: Sequence[int] | None = None,
    ) -> None:
        if len(names) != len(weights) or (seeds is not None and len(seeds) != len(names)):
            raise ValueError("names, weights and seeds must have the same length")
        if len(set(names)) != len(names):
            raise ValueError("member names must be unique")
        if seeds is None:
            seeds = [member_seed(name) for name in names]
        # Members that own keys, grouped by weight (heaviest class first), by name within.
        keep = [i for i, w in enumerate(weights) if owns_keys(float(w))]
        keep.sort(key=lambda i: (-float(weights[i]), names[i]))
        self._perm = keep
        self._size = len(keep)
        self._names = [names[i] for i in keep]
        self._weights = [float(weights[i]) for i in keep]
        self._pyseeds = [int(seeds[i]) for i in keep]
        self._seeds: U64 = np.array(self._pyseeds, dtype=np.uint64)
        self._pre: U64 = self._seeds ^ (self._seeds >> _S33)
        self._buf: U64 = np.empty(self._size, dtype=np.uint64)
        self._tmp: U64 = np.empty(self._size, dtype=np.uint64)
        classes: list[tuple[int, int, float]] = []
        start = 0
        for p in range(1, self._size + 1):
            if p == self._size or self._weights[p] != self._weights[start]:
                classes.append((start, p, self._weights[start]))
                start = p
        self._classes = classes

    def __len__(self) -> int:
        return self._size

    def _mix_k(self, h: int) -> U64:
        """Fill the scratch array with ``k``, fmix64 of ``h ^ seed`` short of its last step.

        The first step, ``x ^= x >> 33``, is linear over GF(2): of ``h ^ s`` it is that of ``h``
        xor that of ``s``, so the seeds are stored with it applied and the key gets it once."""
        buf, tmp = self._buf, self._tmp
        _xor(self._pre, np.uint64(h ^ (h >> 33)), buf)
        _mul(buf, _C1, buf)
        _shr(buf, _S33, tmp)
        _xor(buf, tmp, buf)
        _mul(buf, _C2, buf)
        return buf

    def _mix(self, h: int) -> U64:
        """Fill the scratch array with ``fmix64(h ^ seed) | 0x7ff`` for every member."""
        buf, tmp = self._mix_k(h), self._tmp
        _shr(buf, _S33, tmp)
        _xor(buf, tmp, buf)
        _or(buf, _LOW11, buf)
        return buf

    def top(self, h: int, n: int) -> list[int]:
        """The ``n`` best members for the key with hash ``h`` (``_hrw.key_hash``), best first,
        as indices into the constructor's sequences. Fewer if fewer members own keys."""
        if n < 1:
            raise ValueError("n must be at least 1")
        size = self._size
        if size == 0:
            return []
        classes = self._classes
        perm = self._perm
        if size <= _SMALL:
            return self._top_small(h, n)
        if len(classes) == 1:
            if n < size and n <= _ARGMAX_PICKS:
                found = self._top_unfinished(h, n)
                if found is not None:
                    return [perm[p] for p in found]
            return [perm[p] for p in _top_positions(self._mix(h), n)]
        buf = self._mix(h)
        if len(classes) <= _CLASS_SCAN:
            # Each class's own top n by the integer draw, then those few by exact score.
            cands: list[tuple[int, float, str, int]] = []
            raws: list[int] = []
            for start, stop, weight in classes:
                raws.clear()
                picks = _top_positions(buf[start:stop], n, raws)
                for p, raw in zip(picks, raws, strict=True):
                    cands.append((raw >> 11, weight, self._names[start + p], start + p))
            return self._ranked(cands, n)
        return self._top_by_float(buf, n)

    def _top_small(self, h: int, n: int) -> list[int]:
        """`top` for a few members, in plain Python: the same draws, the same order."""
        names, weights, perm = self._names, self._weights, self._perm
        draws = [draw(h, seed) for seed in self._pyseeds]
        if len(self._classes) == 1:
            # One weight: higher draw first, then name (positions are in name order).
            order = sorted(range(len(draws)), key=lambda p: -draws[p])
        else:
            order = sorted(
                range(len(draws)), key=lambda p: _by_rank((draws[p], weights[p], names[p]))
            )
        return [perm[p] for p in order[:n]]

    def _top_unfinished(self, h: int, n: int) -> list[int] | None:
        """Top ``n`` of one weight class from ``k``, skipping fmix64's last step.

        That step, ``x = k ^ (k >> 33)``, leaves the top 33 bits alone. So if the best ``n + 1``
        values of ``k`` differ from one another in their top 33 bits, they are in the same
        strict order by ``x``, hence by ``v = x >> 11``, and every other member's ``v`` is lower
        than the n-th. Otherwise (about once in 2**33 / N lookups, and on exact ties) returns
        None and the caller takes the full path."""
        buf = self._mix_k(h)
        out: list[int] = []
        last = -1
        for _ in range(n + 1):
            p = int(buf.argmax())
            top33 = int(buf[p]) >> 31
            if top33 == last or not buf[p]:
                return None
            last = top33
            out.append(p)
            buf[p] = 0
        del out[n]
        return out

    def _ranked(self, cands: list[tuple[int, float, str, int]], n: int) -> list[int]:
        cands.sort(key=lambda c: _by_rank(c[:3]))
        return [self._perm[c[3]] for c in cands[:n]]

    def _top_by_float(self, buf: U64, n: int) -> list[int]:
        v = buf >> _S11
        with np.errstate(divide="ignore", invalid="ignore"):
            low = -np.log((v.astype(np.float64) + 0.5) * _EPS53)
            high = -np.log1p(-((_TWO53 - v).astype(np.float64) - 0.5) * _EPS53)
        neg_ln = np.where(v < _TWO52, low, high)
        scores = np.asarray(self._weights, dtype=np.float64) / neg_ln
        if n < self._size:
            nth = np.partition(scores, self._size - n)[self._size - n]
            picked = np.flatnonzero(scores >= nth * _MARGIN)
        else:
            picked = np.arange(self._size)
        return self._ranked(
            [(int(v[p]), self._weights[p], self._names[p], int(p)) for p in picked], n
        )
