"""The member directory: one copy of who is live, fed from membership events, read by routing,
SIP and DNS; and the front-ends following it one member at a time."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from swimthor.config import DnsConfig
from swimthor.directory import (
    GONE_KEPT,
    DirectoryChange,
    MemberDirectory,
    live_after,
)
from swimthor.dns import DnsService, Node, Zone
from swimthor.membership import (
    Member,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    MemberSuspected,
    MemberUpdated,
    State,
)
from swimthor.routing import RoutingTable


def member(
    name: str,
    state: State = State.ALIVE,
    *,
    dc: str = "dc1",
    roles: tuple[str, ...] = ("sip",),
    tags: dict[str, str] | None = None,
    host: str = "10.0.0.1",
) -> Member:
    return Member(name, (host, 7946), dc, roles, 1.0, dict(tags or {}), 1, state, 0.0)


class Recorder:
    def __init__(self, directory: MemberDirectory) -> None:
        self.batches: list[list[DirectoryChange]] = []
        directory.subscribe(self.batches.append)


def test_live_is_alive_or_suspect_until_an_event_says_failed_or_left() -> None:
    d = MemberDirectory()
    d.apply(MemberJoined(member("a")))
    assert "a" in d and not d.is_suspect("a")
    d.apply(MemberSuspected(member("a", State.SUSPECT)))
    assert "a" in d and d.is_suspect("a")
    d.apply(MemberFailed(member("a", State.DEAD)))
    assert "a" not in d and not d.is_suspect("a") and d.get("a") is None
    d.apply(MemberRecovered(member("a")))
    assert d.get("a") is not None
    d.apply(MemberLeft(member("a", State.LEFT)))
    assert len(d) == 0
    # The rule itself, for every event kind: the event decides, then the member's state.
    assert not live_after(MemberFailed(member("a", State.SUSPECT)))
    assert live_after(MemberUpdated(member("a", State.SUSPECT)))
    assert not live_after(MemberUpdated(member("a", State.DEAD)))


def test_subscribers_get_each_change_once_and_nothing_for_no_change() -> None:
    d = MemberDirectory()
    seen = Recorder(d)
    d.apply(MemberJoined(member("a")))
    d.apply(MemberJoined(member("a")))  # the same record again: no change
    again = member("a")
    again.last_heard = 99.0  # not something readers see
    assert d.apply(MemberUpdated(again)) is None
    d.apply(MemberUpdated(member("a", tags={"sip": "10.0.0.1:5060"})))
    d.apply(MemberFailed(member("b", State.DEAD)))  # never live here: no change
    d.apply("not an event")
    assert [[(c.name, c.joined, c.gone) for c in b] for b in seen.batches] == [
        [("a", True, False)],
        [("a", False, False)],
    ]
    assert seen.batches[1][0].after is not None
    assert seen.batches[1][0].after.tags == {"sip": "10.0.0.1:5060"}
    assert d.version == 2


def test_sync_is_one_batch_and_reconciles() -> None:
    d = MemberDirectory()
    seen = Recorder(d)
    d.sync([member("a"), member("b"), member("c", State.DEAD)])
    assert [sorted(c.name for c in b) for b in seen.batches] == [["a", "b"]]
    d.sync([member("a"), member("c")])
    assert [(c.name, c.gone) for c in seen.batches[1]] == [("b", True), ("c", False)]
    assert [m.name for m in d.live()] == ["a", "c"]


def test_live_by_role_datacenter_zone_and_service_tag() -> None:
    d = MemberDirectory()
    d.sync(
        [
            member("a", dc="dc1", tags={"sip": "10.0.0.1:5060", "zone": "r1"}),
            member("b", dc="dc2", roles=(), tags={"dns": "10.0.0.2:53", "zone": "r1"}),
            member("c", State.SUSPECT, dc="dc2", tags={"sip": "10.0.0.3:5060", "zone": "r2"}),
        ]
    )

    def names(ms: Iterable[Member]) -> list[str]:
        return [m.name for m in ms]

    assert names(d.live()) == ["a", "b", "c"]
    assert names(d.live(role="sip")) == ["a", "c"]
    assert names(d.live(dc="dc2")) == ["b", "c"]
    assert names(d.live(zone="r1")) == ["a", "b"]
    assert names(d.live(tag="sip")) == ["a", "c"]
    assert names(d.live(role="sip", dc="dc2", zone="r2", tag="sip")) == ["c"]


def test_addresses_of_gone_members_are_kept_a_while_and_hosts_are_the_live_ones() -> None:
    d = MemberDirectory()
    d.apply(MemberJoined(member("a", host="10.0.0.1", tags={"sip": "192.0.2.1:5060"})))
    d.apply(MemberJoined(member("b", host="10.0.0.2", tags={"dns": "bad tag", "x": "1.2.3.4"})))
    assert d.hosts() == {"10.0.0.1", "192.0.2.1", "10.0.0.2"}  # service tags only
    d.apply(MemberLeft(member("a", State.LEFT, host="10.0.0.1")))
    assert d.address("a") == ("10.0.0.1", 7946)  # replication may still be finishing
    assert d.hosts() == {"10.0.0.2"}
    for i in range(GONE_KEPT + 1):
        d.apply(MemberFailed(member(f"g{i}", State.DEAD)))
    assert d.address("a") is None  # the oldest went first
    assert d.address(f"g{GONE_KEPT}") is not None
    assert d.address("nobody") is None


def test_routing_follows_the_directory_one_epoch_a_change() -> None:
    d = MemberDirectory()
    routing = RoutingTable(roles=None)

    def follow(changes: list[DirectoryChange]) -> None:
        routing.update((c.name, c.after) for c in changes)

    d.subscribe(follow)
    d.sync([member("a"), member("b")])
    assert routing.epoch == 1 and [r.name for r in routing.members()] == ["a", "b"]
    d.apply(MemberSuspected(member("b", State.SUSPECT)))  # suspects keep their keys
    assert routing.epoch == 1
    d.apply(MemberFailed(member("b", State.DEAD)))
    assert routing.epoch == 2 and [r.name for r in routing.members()] == ["a"]


def test_dns_rebuilds_only_the_member_that_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A join storm costs the zone one member's records per event (it was a whole rebuild per
    event: quadratic), and the zone is the one a full rebuild would give."""
    d = MemberDirectory()
    dns = DnsService(
        DnsConfig(bind=("127.0.0.1", 0), zone="example.com"),
        name="m0",
        dc="dc1",
        advertise_host="127.0.0.1",
        routing=RoutingTable(roles=None),
        replicas=2,
        directory=d,
    )
    full_rebuilds: list[int] = []
    real_update = Zone.update

    def counted_update(zone: Zone, nodes: Iterable[Node]) -> None:
        full_rebuilds.append(1)
        real_update(zone, nodes)

    monkeypatch.setattr(Zone, "update", counted_update)
    tags = {"sip": "10.0.1.{i}:5060", "dns": "10.0.1.{i}:53"}
    for i in range(200):
        d.apply(MemberJoined(member(f"m{i}", tags={k: v.format(i=i) for k, v in tags.items()})))
    d.apply(MemberFailed(member("m7", State.DEAD)))
    assert full_rebuilds == []
    assert len(dns.zone.nodes()) == 199
    assert dns.zone.target_of("m8") == "m8.node.example.com."
    assert dns.zone.target_of("m7") is None
    assert dns._is_member_host("10.0.1.8") and not dns._is_member_host("10.0.1.7")
