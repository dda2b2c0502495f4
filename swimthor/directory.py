"""The member directory: who is live, and where, as this node's membership last said.

One copy of the live members for everything that is not membership: routing, the SIP service
and the DNS front-end read it, and it is fed by the agent from membership events only
(`apply`), or from a full member list at start (`sync`). Its one definition of live is
membership's: a member is live while it is alive or suspect (`State.is_live`), until an event
says it failed or left; it is suspect while its state is SUSPECT. A member membership holds
out for flapping (`Member.held`, from `MemberHeld` until `MemberReleased`) is not live here.

Each change is one `DirectoryChange` (the member's record before and after, either None).
Subscribers get the changes of one event, or of one `sync`, as one list, in the order they
subscribed, so that each updates only what those members change (DNS rebuilds one member's
records, not the zone; routing moves one epoch for a whole sync). A change that changes
nothing the directory keeps (an event repeating what it holds) is no change and reaches
nobody.

The names of the tags that announce services live here too (`SIP_TAG` ...): the SIP service
writes them and the DNS front-end reads them.

Views: live members by role, datacenter, zone and service tag (`live`), one member
(`get`), suspicion (`is_suspect`), the gossip address of a live or recently gone member
(`address`: replication may still be finishing with one that just left), and every host a
live member uses for gossip or a service (`hosts`, what the rate limiters never limit).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .config import parse_hostport
from .membership import (
    Addr,
    Member,
    MemberEvent,
    MemberFailed,
    MemberLeft,
    State,
)
from .routing import ZONE_TAG

__all__ = [
    "DNS_TAG",
    "GONE_KEPT",
    "SERVICE_TAGS",
    "SIPS_TAG",
    "SIP_TAG",
    "STREAM_TAGS",
    "WSS_TAG",
    "WS_TAG",
    "ZONE_TAG",
    "DirectoryChange",
    "MemberDirectory",
    "live_after",
]

# The member tags that announce a service, each "host:port": SIP over UDP and TCP, over TLS,
# over WebSocket, over secure WebSocket (RFC 7118), and the DNS front-end. The SIP service
# writes them, the DNS front-end publishes them (NAPTR, SRV) and everybody trusts their hosts.
SIP_TAG = "sip"
SIPS_TAG = "sips"
WS_TAG = "ws"
WSS_TAG = "wss"
DNS_TAG = "dns"
SERVICE_TAGS = (SIP_TAG, SIPS_TAG, WS_TAG, WSS_TAG, DNS_TAG)
# The tag of each SIP stream transport.
STREAM_TAGS = {"tls": SIPS_TAG, "ws": WS_TAG, "wss": WSS_TAG}
# Members that failed or left whose last record is kept (for `address`): members come and go
# over months, so a bound, oldest dropped first.
GONE_KEPT = 4096


@dataclass(frozen=True, slots=True)
class DirectoryChange:
    """One member's record before and after a change; None where it was or is not live."""

    name: str
    before: Member | None
    after: Member | None

    @property
    def joined(self) -> bool:
        return self.before is None and self.after is not None

    @property
    def gone(self) -> bool:
        return self.before is not None and self.after is None


def live_after(event: MemberEvent) -> bool:
    """Whether the member of `event` is live once it happened: the directory's (and so
    routing's and the front-ends') one definition."""
    if isinstance(event, MemberFailed | MemberLeft):
        return False
    return _counts(event.member)


def _counts(m: Member) -> bool:
    """Live, and not held out (a member that keeps flapping: membership tracks it, routing
    and DNS leave it out until it has been well for a while)."""
    return m.state.is_live and not m.held


def _same(a: Member, b: Member) -> bool:
    """The same record as far as the directory's readers can tell (not when it was last
    heard from, nor its health score)."""
    return (
        a.addr == b.addr
        and a.dc == b.dc
        and a.roles == b.roles
        and a.weight == b.weight
        and a.tags == b.tags
        and a.state == b.state
        and a.incarnation == b.incarnation
        and a.protocol == b.protocol
    )


class MemberDirectory:
    """The live members; see the module's docstring."""

    def __init__(self) -> None:
        self._live: dict[str, Member] = {}
        self._gone: OrderedDict[str, Member] = OrderedDict()
        self._subscribers: list[Callable[[list[DirectoryChange]], None]] = []
        self._hosts: frozenset[str] | None = None  # built on demand, dropped on changes
        self.version = 0  # grows by one with every change

    # ------------------------------------------------------------ feeding

    def subscribe(self, fn: Callable[[list[DirectoryChange]], None]) -> None:
        """Call `fn` with the changes of every event and sync from now on."""
        self._subscribers.append(fn)

    def apply(self, event: object) -> DirectoryChange | None:
        """Follow one membership event (anything else is ignored); the change it made, if
        any, after every subscriber had it."""
        if not isinstance(event, MemberEvent):
            return None
        m = event.member
        change = self._put(m.name, m.copy() if live_after(event) else None, m)
        if change is not None:
            self._publish([change])
        return change

    def sync(self, members: Iterable[Member]) -> list[DirectoryChange]:
        """Make the directory that of a full member list (`Membership.members()`); the
        changes, handed to the subscribers as one list."""
        wanted = {m.name: m for m in members}
        changes = []
        for name in list(self._live):
            if name not in wanted or not _counts(wanted[name]):
                change = self._put(name, None, wanted.get(name))
                if change is not None:
                    changes.append(change)
        for name, m in wanted.items():
            change = self._put(name, m.copy() if _counts(m) else None, m)
            if change is not None:
                changes.append(change)
        if changes:
            self._publish(changes)
        return changes

    def _publish(self, changes: list[DirectoryChange]) -> None:
        for fn in self._subscribers:
            fn(changes)

    def _put(self, name: str, after: Member | None, last: Member | None) -> DirectoryChange | None:
        before = self._live.get(name)
        if after is None:
            if last is not None:
                self._gone[name] = last.copy()
                self._gone.move_to_end(name)
                while len(self._gone) > GONE_KEPT:
                    self._gone.popitem(last=False)
            if before is None:
                return None
            del self._live[name]
        else:
            if before is not None and _same(before, after):
                self._live[name] = after  # the newer snapshot, for last_heard and health
                return None
            self._live[name] = after
            self._gone.pop(name, None)
        self._hosts = None
        self.version += 1
        return DirectoryChange(name, before, after)

    # ------------------------------------------------------------ views

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, name: object) -> bool:
        return name in self._live

    def get(self, name: str) -> Member | None:
        """The live member of that name, if any."""
        return self._live.get(name)

    def is_suspect(self, name: str) -> bool:
        m = self._live.get(name)
        return m is not None and m.state == State.SUSPECT

    def live(
        self,
        *,
        role: str | None = None,
        dc: str | None = None,
        zone: str | None = None,
        tag: str | None = None,
    ) -> list[Member]:
        """Live members (alive or suspect) in name order, those with `role`, in datacenter
        `dc`, in `zone` (their `zone` tag) and announcing service `tag`, where given."""
        out = []
        for name in sorted(self._live):
            m = self._live[name]
            if role is not None and role not in m.roles:
                continue
            if dc is not None and m.dc != dc:
                continue
            if zone is not None and m.tags.get(ZONE_TAG) != zone:
                continue
            if tag is not None and not m.tags.get(tag):
                continue
            out.append(m)
        return out

    def address(self, name: str) -> Addr | None:
        """The gossip address of a live member, or of one that failed or left lately."""
        m = self._live.get(name) or self._gone.get(name)
        return None if m is None else (str(m.addr[0]), int(m.addr[1]))

    def hosts(self) -> frozenset[str]:
        """Every host a live member gossips from or announces a service at (its
        SERVICE_TAGS)."""
        hosts = self._hosts
        if hosts is None:
            found = set()
            for m in self._live.values():
                found.add(str(m.addr[0]))
                for tag in SERVICE_TAGS:
                    text = m.tags.get(tag)
                    if not text:
                        continue
                    try:
                        found.add(parse_hostport(text, 0)[0])
                    except ValueError:
                        continue
            hosts = self._hosts = frozenset(found)
        return hosts
