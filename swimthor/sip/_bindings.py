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
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

__all__ = [
    "EXPIRE_BUDGET",
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

# Due entries one `BindingStore.expire` step takes before the caller yields to other work: a
# million bindings registered in one burst expire in one second too, and removing them in one
# call stalls the event loop for seconds.
EXPIRE_BUDGET = 2_000

_Q1 = 1.0  # the q most bindings have, one float for them all

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

    def __post_init__(self) -> None:
        # A store holds a million of these: share what repeats rather than keep a copy in
        # each (about 200 bytes a binding). The key is most often the contact itself; User-
        # Agents and node names are a handful of values; q is most often 1.
        if self.key == self.contact and self.key is not self.contact:
            object.__setattr__(self, "key", self.contact)
        if self.user_agent:
            object.__setattr__(self, "user_agent", sys.intern(self.user_agent))
        object.__setattr__(self, "origin", sys.intern(self.origin))
        if self.q == 1.0:
            object.__setattr__(self, "q", _Q1)

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


# What the store keeps for one address-of-record: its one record as it is (most AORs have
# one: a dict for it would cost 200 bytes more), or a dict of them by key.
_Held = Binding | dict[str, Binding]


def _records(held: _Held | None) -> Iterable[Binding]:
    if held is None:
        return ()
    if type(held) is Binding:
        return (held,)
    assert isinstance(held, dict)
    return held.values()


def _record(held: _Held | None, key: str) -> Binding | None:
    if held is None:
        return None
    if type(held) is Binding:
        return held if held.key == key else None
    assert isinstance(held, dict)
    return held.get(key)


class BindingStore:
    """Bindings by address-of-record, with expiry by whole seconds and per-bucket digests.

    Expiry: each stored record puts its AOR (the string the store keys it by, so 8 bytes) in
    the list of the second it expires in; `expire` takes the seconds that have come, oldest
    first, and removes the records of each AOR listed that are due. A record refreshed or
    dropped since leaves a stale entry that finds nothing to remove."""

    def __init__(
        self,
        max_bindings: int = 1_000_000,
        on_subscriber: Callable[[Binding], None] | None = None,
    ) -> None:
        """`on_subscriber(record)`: called for every subscriber record stored (the service
        writes them to its journal, so subscribers survive a restart of every node)."""
        self.max_bindings = max_bindings
        self.on_subscriber = on_subscriber
        self._aors: dict[str, _Held] = {}
        self._due: dict[int, list[str]] = {}  # whole second -> AORs with a record due in it
        self._seconds: list[int] = []  # the keys of _due, as a heap
        # (second, as of when, AORs): looked at, due later in that second (`_park`).
        self._parked: tuple[int, float, list[str]] | None = None
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
        return list(_records(self._aors.get(aor)))

    def contacts(self, aor: str) -> list[Binding]:
        """Every contact binding of `aor`, tombstones included (not the subscriber)."""
        return [b for b in _records(self._aors.get(aor)) if b.key != SUBSCRIBER_KEY]

    def subscriber(self, aor: str, now: float) -> Binding | None:
        """The live subscriber record of `aor`, if any."""
        record = _record(self._aors.get(aor), SUBSCRIBER_KEY)
        return record if record is not None and record.live(now) else None

    def subscribers(self, now: float) -> list[Binding]:
        """Every live subscriber record held here."""
        out = []
        for aor in self._subscribed:
            record = _record(self._aors.get(aor), SUBSCRIBER_KEY)
            if record is not None and record.live(now):
                out.append(record)
        return out

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """The live contacts of `aor`, highest q first, then the most recently refreshed."""
        found = [
            b for b in _records(self._aors.get(aor)) if b.live(now) and b.key != SUBSCRIBER_KEY
        ]
        found.sort(key=lambda b: (-b.q, -b.stamp))
        return found

    def put(self, binding: Binding) -> bool:
        """Store `binding` if it is newer than what we hold (merge rule). True if stored."""
        aor = binding.aor
        held_all = self._aors.get(aor)
        held = _record(held_all, binding.key)
        if held is not None and held.version >= binding.version:
            self.stats["stale"] += 1
            return False
        if held is None and self._count >= self.max_bindings:
            self.stats["full"] += 1
            return False
        if held_all is None:
            self._aors[aor] = binding
        else:
            # One string for the AOR, the one the store is keyed by (an equal value).
            aor = next(iter(_records(held_all))).aor
            object.__setattr__(binding, "aor", aor)
            if held is not None and type(held_all) is Binding:
                self._aors[aor] = binding  # the one record, replaced
            elif type(held_all) is Binding:
                self._aors[aor] = {held_all.key: held_all, binding.key: binding}
            else:
                assert isinstance(held_all, dict)
                held_all[binding.key] = binding
        if held is None:
            self._count += 1
        self._schedule(aor, binding.expires_at)
        self.stats["stored"] += 1
        if binding.key == SUBSCRIBER_KEY:
            self._subscribed.add(aor)
            if self.on_subscriber is not None:
                self.on_subscriber(binding)
        return True

    def _schedule(self, aor: str, expires_at: float) -> None:
        second = math.floor(expires_at)
        due = self._due.get(second)
        if due is None:
            due = self._due[second] = []
            heapq.heappush(self._seconds, second)
        due.append(aor)

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
        held = self._aors.pop(aor, None)
        self._subscribed.discard(aor)
        gone = len(list(_records(held)))
        self._count -= gone
        return gone

    def expire(self, now: float, limit: int | None = None) -> int:
        """Remove bindings and tombstones whose time has passed, looking at no more than
        `limit` entries of the expiry lists (None: all); returns how many went. `expire_some`
        also says whether entries due are left (`expire_due` calls it until none are)."""
        return self.expire_some(now, limit)[0]

    def expire_some(self, now: float, limit: int | None = None) -> tuple[int, bool]:
        """`expire`, and whether it stopped at `limit` with entries due still to look at."""
        self._unpark(now)
        gone = 0
        budget = -1 if limit is None else limit
        seconds = self._seconds
        more = False
        while seconds and seconds[0] <= now:
            second = seconds[0]
            due = self._due[second]
            while due and budget != 0:
                budget -= 1
                aor = due.pop()
                removed, left = self._expire_aor(aor, now, second)
                gone += removed
                if left:
                    self._park(second, now, aor)
            if due:
                more = True  # the budget ran out within this second's list
                break
            del self._due[second]
            heapq.heappop(seconds)
            if self._parked is not None:
                break  # the current second: the rest of it is not due yet
            if budget == 0:
                more = bool(seconds) and seconds[0] <= now
                break
        self.stats["expired"] += gone
        return gone, more

    def _park(self, second: int, now: float, aor: str) -> None:
        """Set `aor` aside: it has a record due later in `second`, the current one, and
        looking at it again at this same `now` would find the same (a budgeted expiry that
        put it back in the list would take it again and again)."""
        if self._parked is None:
            self._parked = (second, now, [])
        self._parked[2].append(aor)

    def _unpark(self, now: float) -> None:
        """Back into their second's list, once time has moved, the AORs set aside."""
        parked = self._parked
        if parked is None or parked[1] == now:
            return
        self._parked = None
        second, _, aors = parked
        due = self._due.get(second)
        if due is None:
            due = self._due[second] = []
            heapq.heappush(self._seconds, second)
        due.extend(aors)

    def _expire_aor(self, aor: str, now: float, second: int) -> tuple[int, bool]:
        """Remove the records of `aor` due by `now`; how many, and whether one that expires
        later in `second` is left."""
        held = self._aors.get(aor)
        if held is None:
            return 0, False
        if type(held) is Binding:
            if held.expires_at > now:
                return 0, math.floor(held.expires_at) == second
            del self._aors[aor]
            if held.key == SUBSCRIBER_KEY:
                self._subscribed.discard(aor)
            self._count -= 1
            return 1, False
        assert isinstance(held, dict)
        gone = 0
        left = False
        for key, record in list(held.items()):
            if record.expires_at <= now:
                del held[key]
                if key == SUBSCRIBER_KEY:
                    self._subscribed.discard(aor)
                gone += 1
            elif math.floor(record.expires_at) == second:
                left = True
        self._count -= gone
        if len(held) == 1:
            self._aors[aor] = next(iter(held.values()))
        elif not held:
            del self._aors[aor]
        return gone, left

    def next_expiry(self) -> float | None:
        """When the next record held expires (a walk of the expiry lists from the earliest
        second: for tests and diagnostics, not for a loop)."""
        lists = {second: list(due) for second, due in self._due.items()}
        if self._parked is not None:
            lists.setdefault(self._parked[0], []).extend(self._parked[2])
        for second in sorted(lists):
            times = [
                record.expires_at
                for aor in lists[second]
                for record in _records(self._aors.get(aor))
                if math.floor(record.expires_at) == second
            ]
            if times:
                return min(times)
        return None

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
