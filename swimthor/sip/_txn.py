"""Answers to retransmissions: the part of a server transaction (RFC 3261 §17.2.2) that a
stateless node still needs for the requests it answers itself.

A REGISTER or OPTIONS that we answer is remembered by its transaction key (top Via branch,
sent-by and method, §17.2.3) for 64*T1 = 32 s. A retransmission that arrives while the first
copy is still being processed (a REGISTER waiting for its replicas) is absorbed; one that
arrives after gets the same response bytes again. Bounded in entries; the oldest go first.
"""

from __future__ import annotations

from collections import OrderedDict

from ._message import Request

__all__ = ["PENDING", "ResponseCache", "transaction_key"]

PENDING = b""
TIMER_J = 32.0  # 64 * T1 (RFC 3261 §17.2.2)


def transaction_key(request: Request) -> tuple[str, ...] | None:
    """(branch, sent-by, method) for RFC 3261 branches; None for pre-3261 clients."""
    top = request.vias[0]
    branch = top.branch
    if not branch or not branch.startswith("z9hG4bK"):
        return None
    method = "INVITE" if request.method == "ACK" else request.method
    return (branch, f"{top.host}:{top.port}", method)


class ResponseCache:
    def __init__(self, max_entries: int = 100_000, lifetime: float = TIMER_J) -> None:
        self.max_entries = max_entries
        self.lifetime = lifetime
        self._entries: OrderedDict[tuple[str, ...], tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, ...], now: float) -> bytes | None:
        """PENDING while the first copy is in progress, the response bytes after, else None."""
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= now:
            del self._entries[key]
            return None
        return found[1]

    def pending(self, key: tuple[str, ...], now: float) -> None:
        self._store(key, now, PENDING)

    def answered(self, key: tuple[str, ...], now: float, response: bytes) -> None:
        self._store(key, now, response)

    def forget(self, key: tuple[str, ...]) -> None:
        self._entries.pop(key, None)

    def _store(self, key: tuple[str, ...], now: float, value: bytes) -> None:
        entries = self._entries
        entries[key] = (now + self.lifetime, value)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
        # Drop expired entries from the old end, a few per call.
        for _ in range(4):
            if not entries:
                break
            oldest_key, (until, _) = next(iter(entries.items()))
            if until > now:
                break
            del entries[oldest_key]
