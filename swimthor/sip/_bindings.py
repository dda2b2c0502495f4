"""The binding store: contacts per address-of-record, with expiry and replica merging.

Sans-IO: every call takes `now`, wall-clock seconds since the epoch, because bindings travel
between nodes and must expire at the same moment on each of them (hosts are expected to keep
NTP time; a skew of a second shortens or lengthens a binding by a second).

Each binding carries a version, `(stamp, origin)`: the wall time of the write that made it and
the node that made it. Replicas merge by keeping the higher version, so merging is
commutative, idempotent and order-free, and owners converge whatever order updates and
repairs arrive in. A removal is kept as a tombstone (`removed=True`) until the binding it
removed would have expired, so an older copy arriving late cannot bring it back.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

__all__ = [
    "MAX_FIELD_LENGTH",
    "SUBSCRIBER_KEY",
    "Binding",
    "BindingStore",
    "aor_bucket",
    "subscriber_record",
]

# The longest text field a binding may carry on the wire (`Binding.from_wire`); the registrar
# refuses longer ones so that whatever it stores can be replicated.
MAX_FIELD_LENGTH = 2048

# A subscriber's credentials travel and live with its bindings: a record under this key (no
# contact URI can have it), whose `contact` is the credentials text (`_auth.Credentials`). So
# subscribers are kept on their AOR's owners, replicated, handed off and repaired exactly as
# bindings are; everything that deals in contacts skips it (`contacts`, `lookup`).
SUBSCRIBER_KEY = "!subscriber"
# A subscriber does not expire (the expiry is only there to keep the store's arithmetic one);
# the tombstone of a removed one is kept long enough that no stale copy can come back.
SUBSCRIBER_LIFETIME = 10 * 365 * 86_400.0
SUBSCRIBER_TOMBSTONE = 30 * 86_400.0

# The wire form of a binding (`Binding.to_wire`) only grows: the first 11 fields, then from
# WIRE_FIELDS_2 on the instance, reg-id and User-Agent. A reader takes more fields than it
# knows (a later version's) and ignores them, up to MAX_WIRE_FIELDS.
WIRE_FIELDS = 11
WIRE_FIELDS_2 = 14
# The 15th field: the binding's Path (RFC 3327), a list of strings; readers of 14 ignore it.
WIRE_FIELDS_3 = 15
MAX_WIRE_FIELDS = 64
MAX_PATH = 8  # Path values kept for one binding (each hop that adds one is a proxy of ours or
# the phone's outbound proxy: a handful at most)

# Anti-entropy digests cover this many buckets of address-of-record space.
DIGEST_BUCKETS = 64


@functools.lru_cache(maxsize=1 << 18)
def aor_bucket(aor: str) -> int:
    return hashlib.blake2b(aor.encode(), digest_size=2).digest()[0] % DIGEST_BUCKETS


@dataclass(frozen=True, slots=True)
class Binding:
    """One contact of an address-of-record."""

    aor: str
    contact: str  # the Contact URI as registered (what requests are sent to)
    key: str  # the URI in comparable form (RFC 3261 §19.1.4, simplified): one binding per key
    expires_at: float  # wall-clock seconds
    q: float  # 0..1, higher first
    call_id: str
    cseq: int
    source: str  # "udp:1.2.3.4:5060": where the REGISTER came from
    stamp: float  # wall-clock seconds of the write: the version
    origin: str  # the node that made the write: breaks ties between equal stamps
    removed: bool = False
    # RFC 5626 §6 / RFC 5627: the device this contact belongs to. `instance` is the
    # +sip.instance value as written ('"<urn:uuid:...>"'), `reg_id` its reg-id (0: none); a
    # binding with an instance is keyed by them rather than by its URI, and a forking proxy
    # makes one branch per instance.
    instance: str = ""
    reg_id: int = 0
    user_agent: str = ""  # the REGISTER's User-Agent (cut to MAX_FIELD_LENGTH)
    # RFC 3327: the Path values of the REGISTER, top first. A call to this binding is sent to
    # the first (the edge holding the phone's flow, its URI carrying the flow token) with them
    # all as its Route set.
    path: tuple[str, ...] = ()
    # `digest()`, made on first use (anti-entropy asks for it every round): not part of the
    # binding's value.
    _digest: int = field(default=-1, init=False, compare=False, repr=False)

    @property
    def version(self) -> tuple[float, str, int]:
        return (self.stamp, self.origin, self.cseq)

    def live(self, now: float) -> bool:
        return not self.removed and self.expires_at > now

    def to_wire(self) -> list[object]:
        """The replication (and journal) form: 11 fields, or 14 when the binding names an
        instance, a reg-id or a User-Agent, 15 with a Path. Nodes older than those fields accept
        exactly 11 (or 14, and ignore the Path),
        so a binding without them keeps the form they read."""
        wire: list[object] = [
            self.aor,
            self.contact,
            self.key,
            self.expires_at,
            self.q,
            self.call_id,
            self.cseq,
            self.source,
            self.stamp,
            self.origin,
            self.removed,
        ]
        if self.instance or self.reg_id or self.user_agent or self.path:
            wire += [self.instance, self.reg_id, self.user_agent]
        if self.path:
            wire.append(list(self.path))
        return wire

    @classmethod
    def from_wire(cls, item: object) -> Binding:
        """ValueError unless `item` is what `to_wire` makes: 11 fields, or 14 and more (the
        fields after the 14th are a later version's, and are ignored), each checked."""
        if not isinstance(item, list) or not (
            len(item) == WIRE_FIELDS or WIRE_FIELDS_2 <= len(item) <= MAX_WIRE_FIELDS
        ):
            raise ValueError(
                f"a binding is a list of {WIRE_FIELDS} or {WIRE_FIELDS_2} to "
                f"{MAX_WIRE_FIELDS} fields"
            )
        aor, contact, key, expires_at, q, call_id, cseq, source, stamp, origin, removed = item[
            :WIRE_FIELDS
        ]
        instance, reg_id, user_agent = (
            item[WIRE_FIELDS:WIRE_FIELDS_2] if len(item) >= WIRE_FIELDS_2 else ("", 0, "")
        )
        path = item[WIRE_FIELDS_2] if len(item) >= WIRE_FIELDS_3 else []
        if (
            not isinstance(path, list)
            or len(path) > MAX_PATH
            or not all(isinstance(p, str) and 0 < len(p) <= MAX_FIELD_LENGTH for p in path)
        ):
            raise ValueError(f"a binding's path is a list of at most {MAX_PATH} strings")
        for text in (aor, contact, key, call_id, source, origin, instance, user_agent):
            if not isinstance(text, str) or len(text) > MAX_FIELD_LENGTH:
                raise ValueError("binding text fields must be strings of at most 2048 chars")
        for number in (expires_at, q, stamp):
            if not isinstance(number, int | float) or isinstance(number, bool):
                raise ValueError("binding times and q must be numbers")
            # NaN would break the version order (merge) and the expiry heap; an int too big for
            # a float would raise OverflowError instead of ValueError below.
            if isinstance(number, int) and abs(number) > 2**53:
                raise ValueError("binding times and q must be finite")
            if not math.isfinite(number):
                raise ValueError("binding times and q must be finite")
        if not isinstance(cseq, int) or isinstance(cseq, bool) or not 0 <= cseq < 2**32:
            raise ValueError("binding cseq must be a 32-bit integer")
        if not isinstance(removed, bool):
            raise ValueError("binding removed flag must be a boolean")
        if not 0.0 <= float(q) <= 1.0:
            raise ValueError("binding q must be within 0..1")
        if not isinstance(reg_id, int) or isinstance(reg_id, bool) or not 0 <= reg_id < 2**31:
            raise ValueError("binding reg-id must be an integer 0 to 2**31 - 1")
        return cls(
            aor,
            contact,
            key,
            float(expires_at),
            float(q),
            call_id,
            cseq,
            source,
            float(stamp),
            origin,
            removed,
            instance,
            reg_id,
            user_agent,
            tuple(path),
        )

    def digest(self) -> int:
        """A 64-bit fingerprint of this version, for anti-entropy digests."""
        found = self._digest
        if found < 0:
            text = f"{self.aor}\0{self.key}\0{self.stamp!r}\0{self.origin}\0{int(self.removed)}"
            found = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
            object.__setattr__(self, "_digest", found)
        return found


class BindingStore:
    """Bindings by address-of-record, with expiry by a heap and per-bucket digests."""

    def __init__(
        self,
        max_bindings: int = 1_000_000,
        on_subscriber: Callable[[Binding], None] | None = None,
    ) -> None:
        """`on_subscriber(record)`: called for every subscriber record stored (the service
        writes them to its journal, so subscribers survive a restart of every node)."""
        self.max_bindings = max_bindings
        self.on_subscriber = on_subscriber
        self._aors: dict[str, dict[str, Binding]] = {}
        self._expiry: list[tuple[float, str, str]] = []
        self._count = 0
        # The AORs that hold a subscriber record (a tombstone too): status and `subscriber
        # list` read these without walking every binding.
        self._subscribed: set[str] = set()
        self.stats = {"stored": 0, "expired": 0, "merged": 0, "stale": 0, "full": 0}

    def __len__(self) -> int:
        return self._count

    def aors(self) -> Iterator[str]:
        return iter(list(self._aors))

    def aor_count(self) -> int:
        return len(self._aors)

    @property
    def subscriber_records(self) -> int:
        """Subscriber records held, tombstones included (they count in `len` too)."""
        return len(self._subscribed)

    def all(self, aor: str) -> list[Binding]:
        """Every record of `aor`, tombstones and the subscriber record included (what
        replication moves)."""
        return list(self._aors.get(aor, {}).values())

    def contacts(self, aor: str) -> list[Binding]:
        """Every contact binding of `aor`, tombstones included (not the subscriber)."""
        return [b for b in self._aors.get(aor, {}).values() if b.key != SUBSCRIBER_KEY]

    def subscriber(self, aor: str, now: float) -> Binding | None:
        """The live subscriber record of `aor`, if any."""
        record = self._aors.get(aor, {}).get(SUBSCRIBER_KEY)
        return record if record is not None and record.live(now) else None

    def subscribers(self, now: float) -> list[Binding]:
        """Every live subscriber record held here."""
        out = []
        for aor in self._subscribed:
            record = self._aors[aor][SUBSCRIBER_KEY]
            if record.live(now):
                out.append(record)
        return out

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """The live contacts of `aor`, highest q first, then the most recently refreshed."""
        found = [
            b for b in self._aors.get(aor, {}).values() if b.live(now) and b.key != SUBSCRIBER_KEY
        ]
        found.sort(key=lambda b: (-b.q, -b.stamp))
        return found

    def put(self, binding: Binding) -> bool:
        """Store `binding` if it is newer than what we hold (merge rule). True if stored."""
        contacts = self._aors.get(binding.aor)
        if contacts is None:
            contacts = self._aors[binding.aor] = {}
        held = contacts.get(binding.key)
        if held is not None and held.version >= binding.version:
            self.stats["stale"] += 1
            if not contacts:
                del self._aors[binding.aor]
            return False
        if held is None:
            if self._count >= self.max_bindings:
                self.stats["full"] += 1
                if not contacts:
                    del self._aors[binding.aor]
                return False
            self._count += 1
        contacts[binding.key] = binding
        heapq.heappush(self._expiry, (binding.expires_at, binding.aor, binding.key))
        self.stats["stored"] += 1
        if binding.key == SUBSCRIBER_KEY:
            self._subscribed.add(binding.aor)
            if self.on_subscriber is not None:
                self.on_subscriber(binding)
        return True

    def merge(self, bindings: Iterable[Binding], now: float) -> list[Binding]:
        """Store each binding that is newer than ours and not already expired; returns those."""
        out = []
        for b in bindings:
            if b.expires_at <= now:
                continue
            if self.put(b):
                out.append(b)
        if out:
            self.stats["merged"] += len(out)
        return out

    def drop(self, aor: str) -> int:
        """Forget `aor` entirely (this node no longer owns it). Returns how many went."""
        contacts = self._aors.pop(aor, None)
        self._subscribed.discard(aor)
        if not contacts:
            return 0
        self._count -= len(contacts)
        return len(contacts)

    def expire(self, now: float) -> int:
        """Remove bindings and tombstones whose time has passed. Returns how many."""
        gone = 0
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _expires_at, aor, key = heapq.heappop(heap)
            contacts = self._aors.get(aor)
            if contacts is None:
                continue
            held = contacts.get(key)
            if held is None or held.expires_at > now:
                continue  # refreshed since; a later heap entry covers it
            del contacts[key]
            if key == SUBSCRIBER_KEY:
                self._subscribed.discard(aor)
            self._count -= 1
            gone += 1
            if not contacts:
                del self._aors[aor]
        self.stats["expired"] += gone
        return gone

    def next_expiry(self) -> float | None:
        return self._expiry[0][0] if self._expiry else None

    @staticmethod
    def tombstone(
        binding: Binding, *, stamp: float, origin: str, call_id: str, cseq: int
    ) -> Binding:
        return replace(
            binding, removed=True, stamp=stamp, origin=origin, call_id=call_id, cseq=cseq
        )


def subscriber_record(
    aor: str, credentials: str, *, stamp: float, origin: str, removed: bool = False
) -> Binding:
    """The store record of a subscriber (`credentials`: `_auth.Credentials.to_text()`), or
    its tombstone."""
    return Binding(
        aor=aor,
        contact="" if removed else credentials,
        key=SUBSCRIBER_KEY,
        expires_at=stamp + (SUBSCRIBER_TOMBSTONE if removed else SUBSCRIBER_LIFETIME),
        q=0.0,
        call_id="",
        cseq=0,
        source=f"admin:{origin}",
        stamp=stamp,
        origin=origin,
        removed=removed,
    )
