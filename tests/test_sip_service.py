"""The SIP service's directory: SIP addresses from member tags, owners from the routing table,
suspected owners asked last, owners that just gained an AOR asked after those that held it."""

from __future__ import annotations

from swimthor.config import SipConfig
from swimthor.membership import Member, MemberFailed, MemberRecovered, MemberSuspected, State
from swimthor.routing import RoutingTable
from swimthor.sip import SipService


def member(name: str, port: int, state: State = State.ALIVE, sip: bool = True) -> Member:
    return Member(
        name=name,
        addr=("127.0.0.1", 7000 + port),
        dc="dc1",
        roles=("sip",),
        weight=1.0,
        tags={"sip": f"127.0.0.1:{5000 + port}"} if sip else {},
        incarnation=0,
        state=state,
        since=0.0,
    )


def service(members: list[Member]) -> SipService:
    routing = RoutingTable(roles=None)
    routing.sync(members)
    svc = SipService(
        SipConfig(bind=("127.0.0.1", 0), domains=["example.com"]),
        name="n1",
        advertise_host="127.0.0.1",
        routing=routing,
        keyring=lambda: None,
        label="",
    )
    svc.directory.sync(members)
    return svc


def test_directory_follows_tags_and_states() -> None:
    members = [member("n1", 1), member("n2", 2), member("n3", 3, sip=False)]
    svc = service(members)
    assert set(svc.peers()) == {"n1", "n2"}  # n3 announces no SIP address
    n2 = svc.peer_at("127.0.0.1", 5002)
    assert n2 is not None and n2.name == "n2"
    svc.directory.apply(MemberFailed(member("n2", 2, State.DEAD)))
    assert svc.peer_at("127.0.0.1", 5002) is None and "n2" not in svc.peers()


def test_a_suspected_owner_is_asked_last() -> None:
    members = [member(f"n{i}", i) for i in range(1, 4)]
    svc = service(members)
    aor = next(
        f"sip:u{i}@example.com"
        for i in range(1000)
        if svc.owner_names(f"sip:u{i}@example.com")[0] == "n2"
    )
    assert svc.owners(aor, 2)[0].name == "n2"
    svc.directory.apply(MemberSuspected(member("n2", 2, State.SUSPECT)))
    ranked = [p.name for p in svc.owners(aor, 2)]
    assert ranked[-1] == "n2" and len(ranked) == 2  # still an owner, asked last
    svc.directory.apply(MemberRecovered(member("n2", 2, State.ALIVE)))
    assert svc.owners(aor, 2)[0].name == "n2"


def test_the_sip_address_of_a_member_that_died_is_known_gone_until_it_is_back() -> None:
    """An owner uses this to see that a Path's edge is gone (430 at once, issue 15)."""
    members = [member("n1", 1), member("n2", 2)]
    svc = service(members)
    assert not svc.member_gone_at("127.0.0.1", 5002)
    svc.directory.apply(MemberFailed(member("n2", 2, State.DEAD)))
    assert svc.member_gone_at("127.0.0.1", 5002)
    assert not svc.member_gone_at("127.0.0.1", 5009)  # never a member's: not known gone
    svc.directory.apply(MemberRecovered(member("n2", 2)))
    assert not svc.member_gone_at("127.0.0.1", 5002)


def test_an_owner_that_just_gained_an_aor_is_asked_after_one_that_held_it() -> None:
    # n4 joins and ranks first for some AORs. Until handoff has had time to give it their
    # bindings, a query or a call is better sent to the owner that held them; once the
    # epoch has settled, rank order again.
    members = [member(f"n{i}", i) for i in range(1, 5)]
    svc = service(members[:3])
    now = [100.0]
    svc.monotonic = lambda: now[0]
    after = RoutingTable(roles=None)
    after.sync(members)

    def ranked(table: RoutingTable, aor: str) -> list[str]:
        return [r.name for r in table.owners(aor, 2, "sip")]

    aor = next(
        a
        for a in (f"sip:u{i}@example.com" for i in range(5000))
        if ranked(after, a)[0] == "n4" and ranked(after, a)[1] in ranked(svc.routing, a)
    )
    held = ranked(after, aor)[1]
    svc.routing.sync(members)
    svc.directory.sync(members)
    assert svc.owner_names(aor) == ["n4", held]  # the ranking itself is unchanged
    assert [p.name for p in svc.owners(aor, 2)] == [held, "n4"]
    now[0] += 9.0
    assert [p.name for p in svc.owners(aor, 2)] == [held, "n4"]
    now[0] += 2.0
    assert [p.name for p in svc.owners(aor, 2)] == ["n4", held]
