"""The routing table: which live members own a key, kept current from membership events.

Sans-IO like the membership core: feed it every event from ``Membership.next_event()`` with
``handle_event`` (and, once at start, ``sync(membership.members())``, which includes this node),
then ask ``owners(key)``. Nothing here reads a clock or a socket.

* The *owner set* is the live members: alive ones and, by default, suspect ones too, so a brief
  suspicion that is refuted moves no traffic back and forth; a member loses its keys when it is
  declared failed or leaves (``suspects_keep_keys=False`` drops suspects at once instead).
* ``epoch`` grows by one on every change of the owner set or of an owner's address, datacenter,
  zone, roles, weight or placement rule, and on nothing else (incarnations, other tags and
  suspicion, by default, leave it).
* Per epoch the table builds, on first use, one ``Rendezvous`` per (role, datacenter) asked
  for (and, where the spread rule applies, one per failure domain in it: ``_spread``), and
  keeps an LRU cache of answers: SIP traffic asks for the same address-of-record over and
  over. Both are dropped when the epoch moves.
* The changes of the last ``history`` epochs are kept, so ``owners_at`` and ``owners_changed``
  can answer for any of them: what the SIP layer needs to hand bindings over after a change.

Not thread-safe; one table per trio thread.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..membership import (
    Addr,
    Member,
    MemberEvent,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    MemberSuspected,
    State,
)
from ._hrw import key_hash, member_seed, owns_keys
from ._rendezvous import Rendezvous
from ._spread import PLACEMENT_SPREAD, ZONE_TAG, placement_of, spread_prefix

__all__ = ["DEFAULT_ROLES", "EpochUnavailable", "MemberRecord", "RoutingTable"]

# The roles the SIP and DNS front-ends route by. A lookup for any other role is a bug in the
# caller and raises; pass ``roles=None`` to accept any role.
DEFAULT_ROLES: tuple[str, ...] = ("sip", "dns")
# Answers cached per epoch. An entry is ~0.3 KB, so the default costs a few MB at most.
DEFAULT_CACHE_SIZE = 16384
# Epochs whose owner sets stay available to ``owners_at`` / ``owners_changed``.
DEFAULT_HISTORY = 64
# Keys longer than this are answered but not cached (nothing a peer sends can fill memory).
_MAX_CACHED_KEY = 512
# Past epochs whose member set and rendezvous arrays are kept built.
_PAST_VIEWS = 4


class EpochUnavailable(ValueError):
    """The epoch asked for is older than the kept history, or has not happened yet."""


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """A live member as routing sees it: what ``owners`` returns. ``zone`` is its failure
    domain below the datacenter (its ``zone`` tag, "" for none), ``placement`` the highest
    placement rule it knows (its ``placement`` tag; ``_spread``). ``seed`` is its rendezvous
    seed (``member_seed(name)``), computed once."""

    name: str
    addr: Addr
    dc: str
    weight: float
    roles: tuple[str, ...]
    zone: str = ""
    placement: int = 1
    seed: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", member_seed(self.name))

    @classmethod
    def from_member(cls, m: Member) -> MemberRecord:
        weight = float(m.weight)
        # A weight the ranking cannot use (negative, NaN, infinite) means no keys, like 0.
        if not owns_keys(weight):
            weight = 0.0
        return cls(
            m.name,
            (str(m.addr[0]), int(m.addr[1])),
            m.dc,
            weight,
            tuple(m.roles),
            m.tags.get(ZONE_TAG, ""),
            placement_of(m.tags),
        )


Change = tuple[str, MemberRecord | None, MemberRecord | None]  # name, before, after


class _Pool:
    """The candidates of one (role, datacenter) at one epoch, ready to rank, and their failure
    domains if the spread rule applies to them (they span several and all know the rule)."""

    __slots__ = ("domains", "records", "rendezvous")

    def __init__(self, records: list[MemberRecord]) -> None:
        self.records = records
        self.rendezvous = Rendezvous(
            [r.name for r in records], [r.weight for r in records], [r.seed for r in records]
        )
        domains = {(r.dc, r.zone) for r in records}
        spread = len(domains) > 1 and all(r.placement >= PLACEMENT_SPREAD for r in records)
        self.domains = frozenset(domains) if spread else None

    def owners(self, key: str, n: int) -> tuple[MemberRecord, ...]:
        h = key_hash(key)
        records = self.records
        if self.domains is None:
            return tuple(records[i] for i in self.rendezvous.top(h, n))
        # The spread rule on the best few of the ranking, a longer prefix when they cannot
        # decide (a datacenter or zone with no member among them); the whole ranking at worst.
        size = len(self.rendezvous)
        m = min(size, 2 * n + 2)
        while True:
            ranked = [records[i] for i in self.rendezvous.top(h, m)]
            doms = [(r.dc, r.zone) for r in ranked]
            picks = spread_prefix(doms, n, self.domains if m < size else None)
            if picks is not None:
                return tuple(ranked[i] for i in picks)
            m = min(size, 4 * m)


class _View:
    """The owner set of one epoch and the candidate pools built from it on demand."""

    __slots__ = ("epoch", "members", "pools")

    def __init__(self, epoch: int, members: dict[str, MemberRecord]) -> None:
        self.epoch = epoch
        self.members = members
        self.pools: dict[tuple[str, str | None], _Pool] = {}

    def pool(self, role: str, dc: str | None) -> _Pool:
        found = self.pools.get((role, dc))
        if found is None:
            found = self.pools[(role, dc)] = _Pool(
                [
                    r
                    for r in self.members.values()
                    if role in r.roles and (dc is None or r.dc == dc) and r.weight > 0.0
                ]
            )
        return found

    def owners(self, key: str, n: int, role: str, dc: str | None) -> tuple[MemberRecord, ...]:
        return self.pool(role, dc).owners(key, n)


class RoutingTable:
    """Rendezvous routing over the live members, following membership events.

    ``roles``: the roles lookups may ask for (``None``: any). ``suspects_keep_keys``: whether a
    suspect member keeps owning its keys until it is declared failed. ``history``: how many
    past epochs ``owners_at`` can still answer for. ``cache_size``: answers cached per epoch
    (0: none).
    """

    def __init__(
        self,
        *,
        roles: Iterable[str] | None = DEFAULT_ROLES,
        suspects_keep_keys: bool = True,
        history: int = DEFAULT_HISTORY,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if history < 1:
            raise ValueError("history must be at least 1")
        if cache_size < 0:
            raise ValueError("cache_size must be 0 or more")
        self._roles = None if roles is None else frozenset(roles)
        self.suspects_keep_keys = suspects_keep_keys
        self._epoch = 0
        self._live: dict[str, MemberRecord] = {}
        self._history: deque[tuple[int, tuple[Change, ...]]] = deque(maxlen=history)
        self._view: _View | None = None
        self._past: OrderedDict[int, _View] = OrderedDict()
        self._cache: OrderedDict[tuple[str, int, str, str | None], tuple[MemberRecord, ...]]
        self._cache = OrderedDict()
        self._cache_size = cache_size
        self.stats = {"cache_hits": 0, "cache_misses": 0}

    # ---- feeding -------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """Grows by one on every change of the owner set or of an owner's record."""
        return self._epoch

    @property
    def oldest_epoch(self) -> int:
        """The oldest epoch ``owners_at`` can still answer for."""
        if not self._history:
            return self._epoch
        return self._history[0][0] - 1

    def _owns_in(self, state: State) -> bool:
        return state == State.ALIVE or (state == State.SUSPECT and self.suspects_keep_keys)

    def handle_event(self, event: object) -> bool:
        """Apply one membership event; anything that is not a member event is ignored.
        Returns whether the epoch moved."""
        if not isinstance(event, MemberEvent):
            return False
        m = event.member
        if isinstance(event, MemberFailed | MemberLeft):
            live = False
        elif isinstance(event, MemberSuspected):
            live = self.suspects_keep_keys
        elif isinstance(event, MemberJoined | MemberRecovered):
            live = True
        else:  # MemberUpdated, NameConflict: the snapshot's state says
            live = self._owns_in(m.state)
        after = MemberRecord.from_member(m) if live else None
        before = self._live.get(m.name)
        if before == after:
            return False
        return self._apply(((m.name, before, after),))

    def update(self, changes: Iterable[tuple[str, Member | None]]) -> bool:
        """Follow the member directory: each `(name, member)` is a member's record now, None
        once it is not live; all of them in one epoch. Returns whether the epoch moved."""
        moved: list[Change] = []
        for name, m in changes:
            after = (
                MemberRecord.from_member(m) if m is not None and self._owns_in(m.state) else None
            )
            before = self._live.get(name)
            if before != after:
                moved.append((name, before, after))
        return self._apply(tuple(moved))

    def sync(self, members: Iterable[Member]) -> bool:
        """Make the owner set that of a full member list (``Membership.members()``), in one
        epoch. Returns whether the epoch moved."""
        wanted: dict[str, MemberRecord] = {}
        for m in members:
            if self._owns_in(m.state):
                wanted[m.name] = MemberRecord.from_member(m)
        changes: list[Change] = [
            (name, record, None) for name, record in self._live.items() if name not in wanted
        ]
        for name, record in wanted.items():
            before = self._live.get(name)
            if before != record:
                changes.append((name, before, record))
        return self._apply(tuple(changes))

    def _apply(self, changes: tuple[Change, ...]) -> bool:
        if not changes:
            return False
        for name, _, after in changes:
            if after is None:
                del self._live[name]
            else:
                self._live[name] = after
        if self._view is not None:
            self._past[self._view.epoch] = self._view
            while len(self._past) > _PAST_VIEWS:
                self._past.popitem(last=False)
            self._view = None
        self._epoch += 1
        self._history.append((self._epoch, changes))
        self._cache.clear()
        return True

    # ---- lookups -------------------------------------------------------------------------

    def _check(self, key: object, n: object, role: object, dc: object) -> None:
        if not isinstance(key, str):
            raise ValueError(f"key must be a str, not {type(key).__name__}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int of at least 1, not {n!r}")
        if not isinstance(role, str) or (self._roles is not None and role not in self._roles):
            known = "any role" if self._roles is None else ", ".join(sorted(self._roles))
            raise ValueError(f"unknown role {role!r} (known: {known})")
        if dc is not None and not isinstance(dc, str):
            raise ValueError(f"dc must be a str or None, not {type(dc).__name__}")

    def _current(self) -> _View:
        view = self._view
        if view is None:
            view = self._view = _View(self._epoch, dict(self._live))
        return view

    def _at(self, epoch: int) -> _View:
        if epoch == self._epoch:
            return self._current()
        if epoch > self._epoch or epoch < self.oldest_epoch:
            raise EpochUnavailable(
                f"epoch {epoch} is not available (kept: {self.oldest_epoch} to {self._epoch})"
            )
        view = self._past.get(epoch)
        if view is not None:
            self._past.move_to_end(epoch)
            return view
        members = dict(self._live)
        for e, changes in reversed(self._history):
            if e <= epoch:
                break
            for name, before, _ in reversed(changes):
                if before is None:
                    del members[name]
                else:
                    members[name] = before
        view = self._past[epoch] = _View(epoch, members)
        while len(self._past) > _PAST_VIEWS:
            self._past.popitem(last=False)
        return view

    def owners(
        self, key: str, n: int = 2, role: str = "sip", dc: str | None = None
    ) -> tuple[MemberRecord, ...]:
        """The ``n`` live members of ``role`` (in datacenter ``dc`` if given) that own ``key``,
        owner first, then its replicas. Fewer if there are fewer; empty if there are none."""
        self._check(key, n, role, dc)
        cache_key = (key, n, role, dc)
        cache = self._cache
        found = cache.get(cache_key)
        if found is not None:
            cache.move_to_end(cache_key)
            self.stats["cache_hits"] += 1
            return found
        self.stats["cache_misses"] += 1
        found = self._current().owners(key, n, role, dc)
        if self._cache_size and len(key) <= _MAX_CACHED_KEY:
            cache[cache_key] = found
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        return found

    def owners_at(
        self, epoch: int, key: str, n: int = 2, role: str = "sip", dc: str | None = None
    ) -> tuple[MemberRecord, ...]:
        """``owners`` as it was at ``epoch``; raises ``EpochUnavailable`` outside the history."""
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise ValueError(f"epoch must be an int, not {type(epoch).__name__}")
        self._check(key, n, role, dc)
        if epoch == self._epoch:
            return self.owners(key, n, role, dc)
        return self._at(epoch).owners(key, n, role, dc)

    def owners_changed(
        self,
        key: str,
        epoch_a: int,
        epoch_b: int,
        n: int = 2,
        role: str = "sip",
        dc: str | None = None,
    ) -> bool:
        """Whether the ranked owners (by name) of ``key`` differ between two epochs. Raises
        ``EpochUnavailable`` if either is outside the kept history: treat that as changed."""
        a = self.owners_at(epoch_a, key, n, role, dc)
        b = self.owners_at(epoch_b, key, n, role, dc)
        return [r.name for r in a] != [r.name for r in b]

    def members(self, role: str | None = None, dc: str | None = None) -> tuple[MemberRecord, ...]:
        """The live members (of ``role``, in ``dc``, if given), by name, weight 0 included."""
        if role is not None:
            self._check("", 1, role, dc)
        elif dc is not None and not isinstance(dc, str):
            raise ValueError(f"dc must be a str or None, not {type(dc).__name__}")
        return tuple(
            r
            for _, r in sorted(self._live.items())
            if (role is None or role in r.roles) and (dc is None or r.dc == dc)
        )

    def shares(self, role: str = "sip", dc: str | None = None) -> Mapping[str, float]:
        """Each live member's expected share of the key space as owner (weight over the total
        weight of the live members of ``role``, in ``dc`` if given), by name."""
        self._check("", 1, role, dc)
        weights = {
            r.name: r.weight
            for r in self.members(role, dc)
            if r.weight > 0.0 and math.isfinite(r.weight)
        }
        total = math.fsum(weights.values())
        return {name: w / total for name, w in weights.items()} if total > 0 else {}

    def cache_clear(self) -> None:
        """Drop the cached answers (they are dropped on every epoch anyway)."""
        self._cache.clear()
