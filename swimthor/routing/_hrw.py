"""The rendezvous ranking contract: how every node turns a key and a member into a score.

This is a wire-level contract. Every node must rank the members for a key exactly as every
other node does, whatever its platform, Python version or ``PYTHONHASHSEED``, or requests for
one address-of-record land on different owners. Changing anything here changes where keys live
in a running cluster; a new rule needs a new person string (``-v2``) and a migration.

For a key (a ``str``) and a member called ``name`` with weight ``w > 0``::

    h = BLAKE2b(key.encode("utf-8"),  digest_size=8, person=b"swimthor-key-v1")   # big-endian
    s = BLAKE2b(name.encode("utf-8"), digest_size=8, person=b"swimthor-seed-v1")  # big-endian
    x = fmix64(h ^ s)                          # MurmurHash3's 64-bit finalizer, mod 2**64
    v = x >> 11                                # 53 bits
    u = (v + 0.5) / 2**53                      # exactly (2v + 1) / 2**54, in (0, 1)
    score = -w / ln(u)                         # the real number, not a rounded double

Members are ranked by score, highest first; equal scores, which happen only for equal weights
and equal ``v``, go by name ascending (Unicode code points, the same order as UTF-8 bytes).
Members with weight 0 (or anything not a finite positive number) own no keys.

The order is that of the real numbers, so it does not depend on a libm:

* equal weights: the score only grows with ``v``, so the order is ``v`` descending, then the
  name, in integers;
* different weights: two scores are never equal (``u_a**p == u_b**q`` has no solution with
  ``w_a / w_b = p / q`` in lowest terms unless ``p == q``, since both ``u`` are odd numbers over
  ``2**54``), and the comparison is decided in double precision when the two scores differ by
  more than one part in 10**9 (far beyond any libm's error), otherwise in decimal arithmetic
  with as many digits as it takes.

``reference_rank`` is the slow, obviously-correct version of the ranking (decimal arithmetic
throughout) that the fast one is tested against. The test vectors are in ``docs/routing.md``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from decimal import Decimal, localcontext

__all__ = [
    "KEY_PERSON",
    "SEED_PERSON",
    "compare_draws",
    "draw",
    "fmix64",
    "key_hash",
    "member_seed",
    "reference_rank",
    "score",
]

KEY_PERSON = b"swimthor-key-v1"
SEED_PERSON = b"swimthor-seed-v1"

_M64 = (1 << 64) - 1
_C1 = 0xFF51AFD7ED558CCD
_C2 = 0xC4CEB9FE1A85EC53
_TWO52 = 1 << 52
_TWO53 = 1 << 53
_EPS53 = 2.0**-53
# Two double-precision scores further apart than this (relative) are ordered as the real
# scores are: each is within a few ulp (~1e-16) of its real value.
_FLOAT_MARGIN = 1e-9


def _blake64(text: str, person: bytes, what: str) -> int:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a str, not {type(text).__name__}")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text (lone surrogate)") from None
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "big")


def key_hash(key: str) -> int:
    """The 64-bit hash of a key, computed once per lookup."""
    return _blake64(key, KEY_PERSON, "key")


def member_seed(name: str) -> int:
    """The 64-bit seed of a member, computed once per member."""
    return _blake64(name, SEED_PERSON, "member name")


def fmix64(k: int) -> int:
    """MurmurHash3's 64-bit finalizer: a bijection on 64-bit integers that mixes every bit."""
    k ^= k >> 33
    k = (k * _C1) & _M64
    k ^= k >> 33
    k = (k * _C2) & _M64
    k ^= k >> 33
    return k


def draw(h: int, seed: int) -> int:
    """``v``: the 53-bit draw of the member with ``seed`` for the key with hash ``h``."""
    return fmix64(h ^ seed) >> 11


def _neg_ln_unit(v: int) -> float:
    """``-ln(u)`` for ``u = (v + 0.5) / 2**53``, accurate to a few ulp over the whole range.

    Below one half ``u`` is exact in a double and ``log`` is well conditioned; above it ``log1p``
    of the exact ``u - 1`` keeps the digits that ``log(u)`` near 1 would lose."""
    if v < _TWO52:
        return -math.log((v + 0.5) * _EPS53)
    return -math.log1p(-((_TWO53 - v) - 0.5) * _EPS53)


def score(v: int, weight: float) -> float:
    """The score ``-weight / ln(u)`` in double precision (for display and as a fast first
    comparison; the ranking itself is exact, see ``compare_draws``)."""
    return weight / _neg_ln_unit(v)


def _exact_greater(va: int, wa: float, vb: int, wb: float) -> bool:
    """Whether ``-wa/ln(ua) > -wb/ln(ub)`` as real numbers, for ``wa != wb`` (never equal).

    With ``L = -ln(u) > 0`` that is ``wa * Lb > wb * La``. Decimal's ``ln`` is correctly rounded,
    so the difference is known to within a bound; the precision doubles until the difference is
    clear of it."""
    da, db = Decimal(wa), Decimal(wb)  # exact: a double is a dyadic rational
    digits = 40
    while True:
        with localcontext() as ctx:
            # 2v+1 < 2**54 has 17 digits and 1/2**54 = 5**54 / 10**54 another 38, so u is exact.
            ctx.prec = max(digits, 60) + 10
            scale = Decimal(_TWO53 * 2)
            la = -(Decimal(2 * va + 1) / scale).ln()
            lb = -(Decimal(2 * vb + 1) / scale).ln()
            left, right = da * lb, db * la
            diff = left - right
            bound = (left + right) * Decimal(10) ** (-digits)
            if abs(diff) > bound:
                return diff > 0
        digits *= 2
        if digits > 4000:  # unreachable: the scores differ (see the module docstring)
            raise ArithmeticError("rendezvous scores could not be separated")


def compare_draws(a: tuple[int, float, str], b: tuple[int, float, str]) -> int:
    """Order two members for one key: ``-1`` if ``a`` ranks before ``b``, ``1`` if after, ``0``
    if they are the same member. Each is ``(v, weight, name)`` with ``weight > 0``."""
    va, wa, na = a
    vb, wb, nb = b
    if wa == wb:
        if va != vb:
            return -1 if va > vb else 1
        return -1 if na < nb else (1 if na > nb else 0)
    sa, sb = score(va, wa), score(vb, wb)
    if sa > sb * (1.0 + _FLOAT_MARGIN):
        return -1
    if sb > sa * (1.0 + _FLOAT_MARGIN):
        return 1
    return -1 if _exact_greater(va, wa, vb, wb) else 1


def owns_keys(weight: float) -> bool:
    """Whether a member with this weight takes part in the ranking at all."""
    return math.isfinite(weight) and weight > 0.0


def reference_rank(key: str, members: Iterable[tuple[str, float]]) -> list[str]:
    """The contract, slowly: ``members`` as ``(name, weight)`` pairs ranked for ``key``, best
    first, members that own no keys left out. Scores in 70-digit decimal arithmetic
    (``u`` itself is exact at that precision)."""
    h = key_hash(key)
    scored: list[tuple[Decimal, str]] = []
    with localcontext() as ctx:
        ctx.prec = 70
        for name, weight in members:
            if not owns_keys(weight):
                continue
            v = fmix64(h ^ member_seed(name)) >> 11
            u = Decimal(2 * v + 1) / Decimal(2**54)
            s = -Decimal(weight) / u.ln()
            scored.append((s, name))
    scored.sort(key=lambda t: (-t[0], t[1]))
    return [name for _, name in scored]
