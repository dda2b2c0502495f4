"""Per-source rate limits for the SIP and DNS front-ends (a pike-like flood guard).

Each source address gets a token bucket: `rate` requests a second on average, bursts of up
to `burst`. A source over its limit has its datagrams dropped unread (counted), so one
flooding address costs a dictionary lookup per packet and cannot starve the others. The
cluster's own members and the `exempt` networks (an edge proxy, a resolver farm) are never
limited.

Memory is bounded: at most `max_sources` buckets. When the table is full, buckets that have
refilled (their source went quiet) are dropped; if it is still full (a flood from many
spoofed addresses), new sources share one bucket, so they are limited together and the
sources already known keep theirs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["RateLimit", "SourceLimiter"]

SHARED = "*"  # the bucket new sources share while the table is full
MAX_SOURCES = 65_536


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`rate` requests a second per source (0: no limit), bursts up to `burst`, never for
    sources in `exempt` (CIDR strings)."""

    rate: float = 0.0
    burst: float = 0.0
    exempt: tuple[str, ...] = ()

    def check(self, what: str) -> None:
        """ValueError naming the setting when this cannot work."""
        if self.rate < 0 or self.burst < 0:
            raise ValueError(f"{what}: rate_limit and rate_burst must be >= 0")
        if self.rate > 0 and self.burst < 1:
            raise ValueError(f"{what}: rate_burst must be >= 1 when rate_limit is set")
        for net in self.exempt:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{what}: rate_exempt has a bad network {net!r}") from None


class SourceLimiter:
    def __init__(
        self,
        limit: RateLimit,
        *,
        trusted: Callable[[str], bool] | None = None,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        """`trusted(ip)`: whether a source is one of ours (cluster members), checked after
        the buckets say no, so it costs nothing while a source is within its limit."""
        self.rate = float(limit.rate)
        self.burst = float(limit.burst)
        self.enabled = self.rate > 0
        self._exempt = [ipaddress.ip_network(n, strict=False) for n in limit.exempt]
        self._trusted = trusted
        self._max = max_sources
        self._buckets: dict[str, list[float]] = {}  # source -> [tokens, last refill]
        self._exempt_cache: dict[str, bool] = {}
        self.dropped = 0
        self.dropped_by: dict[str, int] = {}  # since the last `report()`, bounded

    def allow(self, source: str, now: float) -> bool:
        """Take one token for `source`; False when it is over its limit (counted)."""
        if not self.enabled:
            return True
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._new_bucket(source, now)
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        if self._is_exempt(source):
            bucket[0] = self.burst
            return True
        self.dropped += 1
        if len(self.dropped_by) < 1024 or source in self.dropped_by:
            self.dropped_by[source] = self.dropped_by.get(source, 0) + 1
        return False

    def _new_bucket(self, source: str, now: float) -> list[float]:
        if len(self._buckets) >= self._max:
            self._prune(now)
            if len(self._buckets) >= self._max:
                shared = self._buckets.get(SHARED)
                if shared is None:
                    shared = self._buckets[SHARED] = [self.burst, now]
                return shared
        bucket = self._buckets[source] = [self.burst, now]
        return bucket

    def _prune(self, now: float) -> None:
        """Forget the sources whose bucket has refilled: they have been quiet."""
        full = self.burst / self.rate
        self._buckets = {
            s: b for s, b in self._buckets.items() if now - b[1] < full and b[0] < self.burst
        }

    def _is_exempt(self, source: str) -> bool:
        if self._trusted is not None and self._trusted(source):
            return True
        cached = self._exempt_cache.get(source)
        if cached is None:
            try:
                ip = ipaddress.ip_address(source)
                cached = any(ip in net for net in self._exempt)
            except ValueError:
                cached = False
            if len(self._exempt_cache) >= self._max:
                self._exempt_cache.clear()
            self._exempt_cache[source] = cached
        return cached

    def report(self) -> tuple[int, list[tuple[str, int]]]:
        """Drops since the last report and the sources that caused most of them (top 5)."""
        top = sorted(self.dropped_by.items(), key=lambda kv: -kv[1])[:5]
        total = sum(self.dropped_by.values())
        self.dropped_by = {}
        return total, top

    def sources(self) -> Iterable[str]:
        return self._buckets.keys()
