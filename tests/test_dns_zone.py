"""The zone's answers (sans-IO): what each name gives, the RFC's codes, EDNS0, truncation,
letter case, and the answer cache following the directory."""

from __future__ import annotations

import dnslib
import pytest
from dnslib import QTYPE, RCODE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from swimthor.directory import SIPS_TAG, WS_TAG, WSS_TAG
from swimthor.dns import MAX_UDP, Node, Zone, node_of, user_label
from swimthor.membership import Member, State
from swimthor.routing import RoutingTable

ZONE = "example.com"
ZONE_LABELS = (b"example", b"com")


def nodes() -> list[Node]:
    return [
        Node("n1", "10.0.0.1", "dc1", 1.0, False, 5060, True),
        Node("n2", "10.0.0.2", "dc2", 2.0, False, 5062, True),
        Node("n3", "fd00::3", "dc1", 1.0, False, 5063, False),
    ]


def make_zone(owners: list[str] | None = None) -> Zone:
    zone = Zone(ZONE, me="n1", dc="dc1", owners=lambda aor: list(owners or []))
    zone.update(nodes())
    return zone


def ask(
    zone: Zone,
    name: str,
    qtype: str = "A",
    *,
    edns: int | None = None,
    do: bool = False,
    tcp: bool = False,
    rd: bool = True,
) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    q.header.rd = int(rd)
    if edns is not None:
        q.add_ar(dnslib.EDNS0(udp_len=edns, flags="do" if do else ""))
    data = bytes(q.pack())
    raw = zone.respond(data, tcp=tcp)
    assert raw is not None
    if not tcp:
        limit = 512 if edns is None else max(512, min(edns, MAX_UDP))
        assert len(raw) <= limit
    r = DNSRecord.parse(raw)
    assert r.header.id == q.header.id
    assert r.header.qr == 1 and r.header.ra == 0
    assert r.header.rd == int(rd)
    assert str(r.q.qname) == str(q.q.qname) and r.q.qtype == q.q.qtype
    return r


def rdatas(r: DNSRecord, section: str = "rr") -> list[str]:
    return [str(rr.rdata) for rr in getattr(r, section)]


def test_srv_lists_every_sip_member_local_dc_first_with_addresses() -> None:
    r = ask(make_zone(), "_sip._udp.example.com", "SRV")
    assert r.header.aa == 1 and r.header.rcode == RCODE.NOERROR
    srv = [(rr.rdata.priority, rr.rdata.weight, rr.rdata.port, str(rr.rdata.target)) for rr in r.rr]
    assert sorted(srv) == [
        (10, 100, 5060, "n1.node.example.com."),
        (10, 100, 5063, "n3.node.example.com."),
        (20, 200, 5062, "n2.node.example.com."),
    ]
    assert all(rr.ttl == 5 for rr in r.rr)
    glue = {(str(rr.rname), QTYPE[rr.rtype], str(rr.rdata)) for rr in r.ar}
    assert glue == {
        ("n1.node.example.com.", "A", "10.0.0.1"),
        ("n2.node.example.com.", "A", "10.0.0.2"),
        ("n3.node.example.com.", "AAAA", "fd00::3"),
    }
    tcp = ask(make_zone(), "_sip._tcp.example.com", "SRV")
    assert len(tcp.rr) == 3


def test_suspect_and_zero_weight_members_go_last() -> None:
    zone = make_zone()
    zone.update(
        [
            Node("n1", "10.0.0.1", "dc1", 1.0, True, 5060, True),
            Node("n2", "10.0.0.2", "dc2", 1.0, False, 5062, True),
            Node("n3", "10.0.0.3", "dc1", 0.0, False, 5063, False),
        ]
    )
    r = ask(zone, "_sip._udp.example.com", "SRV")
    prio = {str(rr.rdata.target): (rr.rdata.priority, rr.rdata.weight) for rr in r.rr}
    assert prio == {
        "n1.node.example.com.": (30, 100),
        "n2.node.example.com.": (20, 100),
        "n3.node.example.com.": (30, 0),
    }


def test_naptr_points_at_udp_and_tcp_srv_with_the_srv_sets_as_additional() -> None:
    r = ask(make_zone(), "example.com", "NAPTR", edns=1232)
    naptr = sorted((rr.rdata.order, rr.rdata.preference, rr.rdata.service) for rr in r.rr)
    assert naptr == [(10, 10, b"SIP+D2U"), (10, 20, b"SIP+D2T")]
    assert {str(rr.rdata.replacement) for rr in r.rr} == {
        "_sip._udp.example.com.",
        "_sip._tcp.example.com.",
    }
    assert all(rr.rdata.flags == b"s" and rr.rdata.regexp == b"" for rr in r.rr)
    extra = [rr for rr in r.ar if rr.rtype == QTYPE.SRV]
    assert len(extra) == 6


def test_naptr_replacement_is_not_compressed() -> None:
    zone = make_zone()
    raw = zone.respond(bytes(DNSRecord.question("example.com", "NAPTR").pack()))
    assert raw is not None
    # The replacement's labels appear spelled out twice (once per NAPTR), not as pointers.
    assert raw.count(b"\x04_sip\x04_udp\x07example\x03com\x00") >= 1
    assert raw.count(b"\x04_sip\x04_tcp\x07example\x03com\x00") >= 1


def test_apex_soa_ns_and_addresses() -> None:
    zone = make_zone()
    soa = ask(zone, "example.com", "SOA")
    assert len(soa.rr) == 1
    assert str(soa.rr[0].rdata.mname) == "n1.node.example.com."
    assert str(soa.rr[0].rdata.rname) == "hostmaster.example.com."
    assert soa.rr[0].rdata.times[4] == 5  # minimum: negative answers cached one TTL
    ns = ask(zone, "example.com", "NS")
    assert sorted(rdatas(ns)) == ["n1.node.example.com.", "n2.node.example.com."]
    assert {str(rr.rname) for rr in ns.ar} == {"n1.node.example.com.", "n2.node.example.com."}
    a = ask(zone, "example.com", "A")
    assert sorted(rdatas(a)) == ["10.0.0.1", "10.0.0.2"]
    aaaa = ask(zone, "example.com", "AAAA")
    assert rdatas(aaaa) == ["fd00::3"]
    # Members on one host (as on loopback) give one apex record, not duplicates.
    shared = Zone(ZONE, me="a")
    shared.update(Node(n, "127.0.0.1", sip_port=5060 + i) for i, n in enumerate("abc"))
    assert rdatas(ask(shared, "example.com", "A")) == ["127.0.0.1"]


def test_member_address_names() -> None:
    zone = make_zone()
    assert rdatas(ask(zone, "n2.node.example.com", "A")) == ["10.0.0.2"]
    assert rdatas(ask(zone, "n3.node.example.com", "AAAA")) == ["fd00::3"]
    nodata = ask(zone, "n3.node.example.com", "A")
    assert nodata.header.rcode == RCODE.NOERROR and not nodata.rr
    assert [QTYPE[rr.rtype] for rr in nodata.auth] == ["SOA"]


def test_unknown_name_is_nxdomain_with_soa_and_empty_non_terminals_are_nodata() -> None:
    zone = make_zone()
    nx = ask(zone, "nobody.example.com", "A")
    assert nx.header.rcode == RCODE.NXDOMAIN and nx.header.aa == 1
    assert [QTYPE[rr.rtype] for rr in nx.auth] == ["SOA"]
    assert ask(zone, "n9.node.example.com", "A").header.rcode == RCODE.NXDOMAIN
    assert ask(zone, "_sip._sctp.example.com", "SRV").header.rcode == RCODE.NXDOMAIN
    assert ask(zone, "_sips._udp.example.com", "SRV").header.rcode == RCODE.NXDOMAIN
    ents = ("node", "_udp", "_tcp", "_ws", "aor")
    for ent in (f"{label}.example.com" for label in ents):
        r = ask(zone, ent, "A")
        assert r.header.rcode == RCODE.NOERROR and not r.rr and r.auth, ent


def test_outside_the_zone_is_refused_without_authority() -> None:
    zone = make_zone()
    for name in ("example.org", "com", "xexample.com", "."):
        r = ask(zone, name, "A")
        assert r.header.rcode == RCODE.REFUSED and r.header.aa == 0, name
        assert not r.rr and not r.auth


def test_other_classes_and_zone_transfers_are_refused() -> None:
    zone = make_zone()
    q = DNSRecord.question("example.com", "TXT", "CH")
    raw = zone.respond(bytes(q.pack()))
    assert raw is not None and DNSRecord.parse(raw).header.rcode == RCODE.REFUSED
    assert ask(zone, "example.com", "AXFR").header.rcode == RCODE.REFUSED


def test_any_returns_every_rrset_over_tcp_and_one_hinfo_over_udp() -> None:
    r = ask(make_zone(), "example.com", "ANY", tcp=True)
    assert {QTYPE[rr.rtype] for rr in r.rr} == {"SOA", "NS", "NAPTR", "A", "AAAA"}
    small = ask(make_zone(), "example.com", "ANY", edns=1232)
    assert [(QTYPE[rr.rtype], rr.rdata.data) for rr in small.rr] == [("HINFO", b"\x07RFC8482\x00")]
    assert not [rr for rr in small.ar if rr.rtype != QTYPE.OPT]
    nx = ask(make_zone(), "nobody.example.com", "ANY")
    assert nx.header.rcode == RCODE.NXDOMAIN
    empty = ask(make_zone(), "node.example.com", "ANY")
    assert empty.header.rcode == RCODE.NOERROR and not empty.rr


def test_per_user_srv_lists_the_owners_in_rank_order() -> None:
    seen: list[str] = []

    def owners(aor: str) -> list[str]:
        seen.append(aor)
        return ["n2", "n3"]

    zone = Zone(ZONE, me="n1", dc="dc1", owners=owners)
    zone.update(nodes())
    r = ask(zone, "_sip._udp.alice.example.com.aor.example.com", "SRV")
    assert [(rr.rdata.priority, str(rr.rdata.target), rr.rdata.port) for rr in r.rr] == [
        (10, "n2.node.example.com.", 5062),
        (20, "n3.node.example.com.", 5063),
    ]
    assert seen == ["sip:alice@example.com"]
    assert {str(rr.rname) for rr in r.ar} == {"n2.node.example.com.", "n3.node.example.com."}
    # The other names under aor exist without data.
    assert ask(zone, "alice.example.com.aor.example.com", "A").header.rcode == RCODE.NOERROR
    assert not ask(zone, "alice.example.com.aor.example.com", "SRV").rr


def test_per_user_srv_puts_a_suspected_owner_last() -> None:
    zone = Zone(ZONE, me="n1", dc="dc1", owners=lambda aor: ["n2", "n3"])
    zone.update(
        [
            Node("n2", "10.0.0.2", "dc1", 1.0, True, 5062, False),
            Node("n3", "10.0.0.3", "dc1", 1.0, False, 5063, False),
        ]
    )
    r = ask(zone, "_sip._tcp.bob.example.com.aor.example.com", "SRV")
    assert [str(rr.rdata.target) for rr in r.rr] == [
        "n3.node.example.com.",
        "n2.node.example.com.",
    ]


def test_user_labels_with_capitals_and_dots_round_trip() -> None:
    asked: list[str] = []

    def owners(aor: str) -> list[str]:
        asked.append(aor)
        return ["n1"]

    zone = Zone(ZONE, me="n1", dc="dc1", owners=owners)
    zone.update(nodes())
    for user in ("Alice", "a.b", "x+y"):
        # dnslib does not read presentation escapes, so the name is built from its labels.
        label = user_label(user).replace("\\.", ".").encode()
        name = dnslib.DNSLabel((b"_sip", b"_udp", label, b"example", b"com", b"aor", *ZONE_LABELS))
        raw = zone.respond(bytes(DNSRecord(q=dnslib.DNSQuestion(name, QTYPE.SRV)).pack()))
        assert raw is not None and len(DNSRecord.parse(raw).rr) == 1, label
    assert asked == ["sip:Alice@example.com", "sip:a.b@example.com", "sip:x+y@example.com"]
    assert user_label("Alice").startswith("b32-")
    assert user_label("a.b") == "a\\.b"
    assert user_label("a b") == "a\\032b"


def test_per_user_names_agree_with_the_routing_table() -> None:
    routing = RoutingTable()
    members = [
        Member(f"n{i}", ("127.0.0.1", 7000 + i), "dc1", ("sip",), 1.0, {}, 1, State.ALIVE, 0.0)
        for i in range(1, 6)
    ]
    routing.sync(members)
    zone = Zone(ZONE, me="n1", owners=lambda aor: [r.name for r in routing.owners(aor, 3, "sip")])
    zone.update(
        Node(m.name, f"10.0.0.{i}", "dc1", 1.0, False, 5060, True) for i, m in enumerate(members, 1)
    )
    for user in ("alice", "bob", "carol", "dave"):
        r = ask(zone, f"_sip._udp.{user}.example.com.aor.example.com", "SRV", edns=1232)
        want = [r_.name for r_ in routing.owners(f"sip:{user}@example.com", 3, "sip")]
        assert [str(rr.rdata.target).split(".")[0] for rr in r.rr] == want


def test_question_case_is_echoed_and_answers_match_without_case() -> None:
    zone = make_zone()
    r = ask(zone, "_SIP._Udp.ExAmple.COM", "SRV")
    assert str(r.q.qname) == "_SIP._Udp.ExAmple.COM."
    assert len(r.rr) == 3
    # The cached answer (same name in another case) echoes the new case.
    r2 = ask(zone, "_sip._UDP.example.COM", "SRV")
    assert str(r2.q.qname) == "_sip._UDP.example.COM."
    assert zone.stats["cache_hits"] >= 1


def test_edns_is_answered_with_an_opt_and_do_echoed() -> None:
    zone = make_zone()
    r = ask(zone, "_sip._udp.example.com", "SRV", edns=4096, do=True)
    opt = [rr for rr in r.ar if rr.rtype == QTYPE.OPT]
    assert len(opt) == 1 and opt[0].rclass == MAX_UDP and opt[0].ttl & 0x8000
    plain = ask(zone, "_sip._udp.example.com", "SRV")
    assert not [rr for rr in plain.ar if rr.rtype == QTYPE.OPT]


def test_edns_version_above_zero_gets_badvers() -> None:
    zone = make_zone()
    q = DNSRecord.question("example.com", "A")
    q.add_ar(dnslib.EDNS0(udp_len=1232, version=1))
    raw = zone.respond(bytes(q.pack()))
    assert raw is not None
    r = DNSRecord.parse(raw)
    opt = [rr for rr in r.ar if rr.rtype == QTYPE.OPT]
    assert len(opt) == 1 and (opt[0].ttl >> 24) == 1  # BADVERS = 16: upper bits 1
    assert r.header.rcode == 0 and not r.rr


def many_nodes(n: int) -> list[Node]:
    return [
        Node(f"node{i:03d}", f"10.1.{i // 250}.{i % 250}", "dc1", 1.0, False, 5060, i < 3)
        for i in range(n)
    ]


def test_large_answers_drop_additional_then_truncate_over_udp_and_are_whole_over_tcp() -> None:
    zone = Zone(ZONE, me="node000", dc="dc1")
    zone.update(many_nodes(7))
    # 7 SRV records fit 512 bytes only without their addresses.
    r = ask(zone, "_sip._udp.example.com", "SRV")
    assert r.header.tc == 0 and len(r.rr) == 7 and not r.ar
    with_room = ask(zone, "_sip._udp.example.com", "SRV", edns=1232)
    assert len(with_room.rr) == 7 and len([rr for rr in with_room.ar if rr.rtype == QTYPE.A]) == 7
    zone.update(many_nodes(60))
    small = ask(zone, "_sip._udp.example.com", "SRV", edns=1232)
    assert small.header.tc == 1 and not small.rr
    assert [rr.rtype for rr in small.ar] == [QTYPE.OPT]
    whole = ask(zone, "_sip._udp.example.com", "SRV", tcp=True)
    assert whole.header.tc == 0 and len(whole.rr) == 60 and len(whole.ar) == 60
    assert zone.stats["truncated"] >= 1


def test_a_failed_member_leaves_the_answers_at_once() -> None:
    zone = make_zone()
    assert len(ask(zone, "_sip._udp.example.com", "SRV").rr) == 3
    assert ask(zone, "n2.node.example.com", "A").rr
    zone.update([n for n in nodes() if n.name != "n2"])
    r = ask(zone, "_sip._udp.example.com", "SRV")
    assert {str(rr.rdata.target) for rr in r.rr} == {
        "n1.node.example.com.",
        "n3.node.example.com.",
    }
    assert ask(zone, "n2.node.example.com", "A").header.rcode == RCODE.NXDOMAIN


def test_routing_change_drops_cached_per_user_answers() -> None:
    owners = ["n1", "n2"]
    zone = Zone(ZONE, me="n1", owners=lambda aor: list(owners))
    zone.update(nodes())
    name = "_sip._udp.alice.example.com.aor.example.com"
    assert str(ask(zone, name, "SRV").rr[0].rdata.target) == "n1.node.example.com."
    owners[:] = ["n2", "n1"]
    assert str(ask(zone, name, "SRV").rr[0].rdata.target) == "n1.node.example.com."  # cached
    zone.routing_changed()
    assert str(ask(zone, name, "SRV").rr[0].rdata.target) == "n2.node.example.com."


def test_member_names_that_are_not_host_names_get_a_hashed_label() -> None:
    zone = Zone(ZONE, me="a b")
    zone.update(
        [
            Node("a b", "10.0.0.1", sip_port=5060),
            Node("host.dc1", "10.0.0.2", sip_port=5060),
            Node("Host.DC1", "10.0.0.3", sip_port=5060),
        ]
    )
    targets = {zone.target_of(n) for n in ("a b", "host.dc1", "Host.DC1")}
    assert "host.dc1.node.example.com." in targets or "host.dc1.node.example.com" in {
        str(t).rstrip(".") + "." for t in targets
    }
    assert len(targets) == 3
    for t in targets:
        assert t is not None
        assert ask(zone, t, "A").rr, t
    # An empty non-terminal of a dotted member name exists.
    assert ask(zone, "dc1.node.example.com", "A").header.rcode == RCODE.NOERROR


def test_a_member_advertising_a_host_name_is_an_srv_target_as_is() -> None:
    zone = Zone(ZONE, me="n1")
    zone.update([Node("n1", "sip1.provider.net", sip_port=5060, dns=True)])
    r = ask(zone, "_sip._udp.example.com", "SRV")
    assert str(r.rr[0].rdata.target) == "sip1.provider.net."
    assert not r.ar


@pytest.mark.parametrize(
    ("data", "rcode"),
    [
        (b"\x12\x34", None),  # shorter than a header: nothing
        (b"\x12\x34\x81\x00" + b"\x00\x01" + b"\x00" * 6 + b"\x00\x00\x01\x00\x01", None),  # QR
        (b"\x12\x34\x28\x00" + b"\x00" * 8, RCODE.NOTIMP),  # opcode 5 (UPDATE)
        (
            b"\x12\x34\x01\x00" + b"\x00\x02" + b"\x00" * 6 + b"\x00\x00\x01\x00\x01" * 2,
            RCODE.FORMERR,
        ),
        (b"\x12\x34\x01\x00" + b"\x00\x01" + b"\x00" * 6 + b"\x07exam", RCODE.FORMERR),
        (
            b"\x12\x34\x01\x00" + b"\x00\x01" + b"\x00" * 6 + b"\xc0\x0c\x00\x01\x00\x01",
            RCODE.FORMERR,
        ),
        (b"\x12\x34\x01\x00" + b"\x00\x01" + b"\x00" * 6 + b"\x00\x00\x01", RCODE.FORMERR),
        (
            b"\x12\x34\x01\x00" + b"\x00\x01" + b"\x00" * 6 + b"\x00\x00\x01\x00\x01junk",
            RCODE.FORMERR,
        ),
        (b"\x12\x34\x01\x00" + b"\x00\x00" + b"\x00" * 6, RCODE.FORMERR),  # no question
    ],
)
def test_malformed_queries_get_formerr_notimp_or_nothing(data: bytes, rcode: int | None) -> None:
    zone = make_zone()
    raw = zone.respond(data)
    if rcode is None:
        assert raw is None
        return
    assert raw is not None
    assert raw[:2] == data[:2]
    r = DNSRecord.parse(raw)
    assert r.header.rcode == rcode and r.header.qr == 1
    assert not r.rr


def test_two_opt_records_are_formerr() -> None:
    q = DNSRecord.question("example.com", "A")
    q.add_ar(dnslib.EDNS0(udp_len=1232))
    q.add_ar(dnslib.EDNS0(udp_len=1232))
    raw = make_zone().respond(bytes(q.pack()))
    assert raw is not None and DNSRecord.parse(raw).header.rcode == RCODE.FORMERR


def test_edns_cookie_option_is_ignored() -> None:
    q = DNSRecord.question("example.com", "SOA")
    q.add_ar(dnslib.EDNS0(udp_len=1232, opts=[dnslib.EDNSOption(10, b"12345678")]))
    raw = make_zone().respond(bytes(q.pack()))
    assert raw is not None
    r = DNSRecord.parse(raw)
    assert r.header.rcode == RCODE.NOERROR and len(r.rr) == 1


def test_cached_answers_patch_id_and_rd_per_query() -> None:
    zone = make_zone()
    a = ask(zone, "_sip._udp.example.com", "SRV", rd=True)
    b = ask(zone, "_sip._udp.example.com", "SRV", rd=False)
    assert a.header.rd == 1 and b.header.rd == 0
    assert zone.stats["built"] == 1


# ---------------------------------------------------------------- TLS and WebSocket


def edge_nodes() -> list[Node]:
    """n1 offers TLS; n2 TLS, WebSocket and secure WebSocket; n3 UDP/TCP only; n4 is suspected
    and offers secure WebSocket; n5 offers only TLS (no UDP/TCP port)."""
    return [
        Node("n1", "10.0.0.1", "dc1", 1.0, False, 5060, True, tls_port=5061),
        Node("n2", "10.0.0.2", "dc2", 2.0, False, 5062, True, 5063, 8080, 8443),
        Node("n3", "fd00::3", "dc1", 1.0, False, 5064, False),
        Node("n4", "10.0.0.4", "dc1", 1.0, True, 5065, False, wss_port=443),
        Node("n5", "10.0.0.5", "dc1", 0.0, False, None, False, tls_port=5071),
    ]


def srv_set(r: DNSRecord) -> list[tuple[int, int, int, str]]:
    return sorted(
        (rr.rdata.priority, rr.rdata.weight, rr.rdata.port, str(rr.rdata.target)) for rr in r.rr
    )


def test_naptr_lists_tls_and_websocket_after_udp_and_tcp_only_when_offered() -> None:
    zone = make_zone()
    zone.update(edge_nodes())
    r = ask(zone, "example.com", "NAPTR", tcp=True)
    naptr = sorted(
        (rr.rdata.order, rr.rdata.preference, rr.rdata.service, str(rr.rdata.replacement))
        for rr in r.rr
    )
    assert naptr == [
        (10, 10, b"SIP+D2U", "_sip._udp.example.com."),
        (10, 20, b"SIP+D2T", "_sip._tcp.example.com."),
        (10, 30, b"SIPS+D2T", "_sips._tcp.example.com."),
        (10, 40, b"SIP+D2W", "_sip._ws.example.com."),
        (10, 50, b"SIPS+D2W", "_sips._ws.example.com."),
    ]
    assert all(rr.rdata.flags == b"s" and rr.rdata.regexp == b"" for rr in r.rr)
    # Every SRV set comes along: 4 + 4 (UDP, TCP) + 3 (TLS) + 1 (WS) + 2 (WSS), with glue.
    srv = [(str(rr.rname), rr.rdata.port) for rr in r.ar if rr.rtype == QTYPE.SRV]
    assert len(srv) == 14
    assert sorted(port for name, port in srv if name == "_sips._tcp.example.com.") == [
        5061,
        5063,
        5071,
    ]
    assert [port for name, port in srv if name == "_sip._ws.example.com."] == [8080]
    assert {str(rr.rname) for rr in r.ar if rr.rtype in (QTYPE.A, QTYPE.AAAA)} == {
        f"n{i}.node.example.com." for i in range(1, 6)
    }
    # A TLS-only member is one of the zone's SIP addresses.
    assert "10.0.0.5" in rdatas(ask(zone, "example.com", "A"))
    raw = zone.respond(bytes(DNSRecord.question("example.com", "NAPTR").pack()), tcp=True)
    assert raw is not None and b"\x05_sips\x03_ws\x07example\x03com\x00" in raw  # uncompressed

    # Only secure WebSocket left: its NAPTR stays, TLS and WS go, UDP and TCP stay.
    zone.update([Node("n1", "10.0.0.1", sip_port=5060, wss_port=443)])
    services = [rr.rdata.service for rr in ask(zone, "example.com", "NAPTR", edns=1232).rr]
    assert sorted(services) == [b"SIP+D2T", b"SIP+D2U", b"SIPS+D2W"]


def test_tls_and_websocket_srv_list_only_the_members_offering_them() -> None:
    zone = make_zone()
    zone.update(edge_nodes())
    # Same priorities as _sip._udp: local dc 10, other dc 20, suspected or weight 0 last.
    tls = ask(zone, "_sips._tcp.example.com", "SRV", edns=1232)
    assert tls.header.aa == 1 and tls.header.rcode == RCODE.NOERROR
    assert srv_set(tls) == [
        (10, 100, 5061, "n1.node.example.com."),
        (20, 200, 5063, "n2.node.example.com."),
        (30, 0, 5071, "n5.node.example.com."),
    ]
    assert {str(rr.rname) for rr in tls.ar if rr.rtype == QTYPE.A} == {
        "n1.node.example.com.",
        "n2.node.example.com.",
        "n5.node.example.com.",
    }
    assert srv_set(ask(zone, "_sip._ws.example.com", "SRV")) == [
        (20, 200, 8080, "n2.node.example.com.")
    ]
    assert srv_set(ask(zone, "_sips._ws.example.com", "SRV")) == [
        (20, 200, 8443, "n2.node.example.com."),
        (30, 100, 443, "n4.node.example.com."),
    ]
    # The member without a UDP/TCP port is not in those sets.
    udp = {str(rr.rdata.target) for rr in ask(zone, "_sip._udp.example.com", "SRV", tcp=True).rr}
    assert udp == {f"n{i}.node.example.com." for i in range(1, 5)}
    # Nobody offering a transport: the name exists without records (as _sip._udp does).
    zone.update(nodes())
    for name in ("_sips._tcp", "_sip._ws", "_sips._ws"):
        r = ask(zone, f"{name}.example.com", "SRV")
        assert r.header.rcode == RCODE.NOERROR and not r.rr, name
        assert [QTYPE[rr.rtype] for rr in r.auth] == ["SOA"], name


def test_per_user_tls_and_websocket_srv_list_the_owners_offering_them() -> None:
    zone = Zone(ZONE, me="n1", dc="dc1", owners=lambda aor: ["n3", "n2", "n4", "n1"])
    zone.update(edge_nodes())
    user = "alice.example.com.aor.example.com"

    def owners(prefix: str) -> list[tuple[int, str, int]]:
        r = ask(zone, f"{prefix}.{user}", "SRV", edns=1232)
        assert r.header.rcode == RCODE.NOERROR
        return [(rr.rdata.priority, str(rr.rdata.target), rr.rdata.port) for rr in r.rr]

    # n3 has no TLS and is left out; the others keep their rank order.
    assert owners("_sips._tcp") == [
        (10, "n2.node.example.com.", 5063),
        (20, "n1.node.example.com.", 5061),
    ]
    assert owners("_sip._ws") == [(10, "n2.node.example.com.", 8080)]
    # n4 is suspected: after the healthy owners, as in _sip._udp.
    assert owners("_sips._ws") == [
        (10, "n2.node.example.com.", 8443),
        (20, "n4.node.example.com.", 443),
    ]
    assert [t for _, t, _ in owners("_sip._udp")] == [
        "n3.node.example.com.",
        "n2.node.example.com.",
        "n1.node.example.com.",
        "n4.node.example.com.",
    ]
    # Not a transport (SIPS over UDP): exists, as every name under aor, without records.
    assert owners("_sips._udp") == []


def test_a_member_host_dns_cannot_write_is_left_out_not_a_crash() -> None:
    zone = Zone(ZONE, me="n1")
    zone.update(
        [
            Node("n1", "10.0.0.1", sip_port=5060, tls_port=5061, dns=True),
            Node("bad", "x" * 300, sip_port=5060, tls_port=5061, dns=True),
        ]
    )
    for name in ("_sip._udp", "_sips._tcp"):
        r = ask(zone, f"{name}.example.com", "SRV")
        assert [str(rr.rdata.target) for rr in r.rr] == ["n1.node.example.com."], name
    assert rdatas(ask(zone, "example.com", "NS")) == ["n1.node.example.com."]
    assert ask(zone, "bad.node.example.com", "A").header.rcode == RCODE.NOERROR
    assert zone.stats["servfail"] == 0


def member(tags: dict[str, str], roles: tuple[str, ...] = ("sip",)) -> Member:
    return Member("m1", ("10.9.9.9", 7946), "dc1", roles, 1.0, tags, 1, State.ALIVE, 0.0)


def test_member_tags_give_the_node_its_tls_and_websocket_ports() -> None:
    tags = {
        "sip": "10.0.0.1:5060",
        SIPS_TAG: "10.0.0.1:5071",
        WS_TAG: "10.0.0.1:8080",
        WSS_TAG: "10.0.0.1:8443",
    }
    node = node_of(member(tags))
    assert (node.host, node.sip_port, node.tls_port, node.ws_port, node.wss_port) == (
        "10.0.0.1",
        5060,
        5071,
        8080,
        8443,
    )
    # No port: the transport's default (5061 for TLS, RFC 7118's 80 and 443 for WebSocket).
    node = node_of(member({"sip": "10.0.0.1", SIPS_TAG: "10.0.0.1", WSS_TAG: "10.0.0.1"}))
    assert (node.sip_port, node.tls_port, node.ws_port, node.wss_port) == (5060, 5061, None, 443)
    v6 = node_of(member({"sip": "[fd00::1]:5060", SIPS_TAG: "[FD00:0::1]:5061"}))
    assert (v6.host, v6.tls_port) == ("fd00::1", 5061)
    # Only a secure WebSocket: the member is addressed by it.
    only = node_of(member({WSS_TAG: "10.0.0.7:443"}))
    assert (only.host, only.sip_port, only.wss_port, only.offers_sip) == (
        "10.0.0.7",
        None,
        443,
        True,
    )
    # A member without the sip role offers none of them.
    plain = node_of(member(tags, roles=()))
    assert (plain.sip_port, plain.tls_port, plain.ws_port, plain.wss_port) == (None,) * 4


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage:port",
        "10.0.0.1:0",
        "10.0.0.1:99999",
        "10.0.0.1:-1",
        "10.0.0.1:5061:1",
        "[10.0.0.1:5061",
        "not a host:5061",
        "x" * 300 + ":5061",
        "h\u00e9te:5061",
        "10.0.0.2:5061",  # another host than the member's address
        ":5061",  # no host
    ],
)
def test_a_bad_transport_tag_is_ignored(value: str) -> None:
    node = node_of(member({"sip": "10.0.0.1:5060", SIPS_TAG: value, WS_TAG: value, WSS_TAG: value}))
    assert (node.host, node.sip_port) == ("10.0.0.1", 5060)
    assert (node.tls_port, node.ws_port, node.wss_port) == (None, None, None)
    # And the zone built from it answers, with only UDP/TCP.
    zone = Zone(ZONE, me="m1")
    zone.update([node])
    services = [rr.rdata.service for rr in ask(zone, "example.com", "NAPTR").rr]
    assert sorted(services) == [b"SIP+D2T", b"SIP+D2U"]


@pytest.mark.parametrize("value", ["10.0.0.1:0", "10.0.0.1:99999", "x" * 300, "a b:5060", "::"])
def test_a_bad_sip_tag_leaves_the_member_out_of_sip(value: str) -> None:
    node = node_of(member({"sip": value, SIPS_TAG: "10.9.9.9:5061"}))
    # The bad sip tag is ignored; the TLS tag at the gossip host still counts.
    assert node.sip_port is None or value == "::"
    zone = Zone(ZONE, me="m1")
    zone.update([node])
    assert ask(zone, "example.com", "NAPTR").header.rcode == RCODE.NOERROR


# ---------------------------------------------------------------- one member at a time


_NAMES = ["n1", "N1", "a.b", "b", "x.a.b", "host-7", "é"]
_HOSTS = ["10.0.0.1", "10.0.0.2", "fd00::3", "sip.example.net", "bad host!"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(_NAMES), st.sampled_from(_HOSTS), st.booleans()),
        max_size=25,
    )
)
def test_putting_and_removing_members_one_by_one_is_a_full_rebuild(
    steps: list[tuple[str, str, bool]],
) -> None:
    """`put` and `remove` rebuild only one member's records; the zone they leave answers
    exactly as one rebuilt from the same members (`update`), labels that collide included."""
    zone = Zone(ZONE, me="n1", dc="dc1")
    live: dict[str, Node] = {}
    for name, host, join in steps:
        if join:
            node = Node(name, host, "dc1", 1.0, False, 5060, True, 5061, None, 443)
            zone.put(node)
            live[name] = node
        else:
            zone.remove(name)
            live.pop(name, None)
    full = Zone(ZONE, me="n1", dc="dc1")
    full.update(live.values())
    assert zone.nodes() == full.nodes()
    for name in _NAMES:
        assert zone.target_of(name) == full.target_of(name)
    questions = [("_sip._udp.example.com", "SRV"), ("_sips._tcp.example.com", "SRV"),
                 ("example.com", "NAPTR"), ("example.com", "NS"), ("b.node.example.com", "A"),
                 ("a.b.node.example.com", "A"), ("node.example.com", "A")]  # fmt: skip
    # (Not the SOA: its serial counts the changes, however they came.)
    for name in _NAMES:
        target = full.target_of(name)
        if target is not None:
            questions += [(target, "A"), (target, "AAAA")]
    for qname, qtype in questions:
        a, b = ask(zone, qname, qtype), ask(full, qname, qtype)
        assert (a.header.rcode, a.rr, a.ar) == (b.header.rcode, b.rr, b.ar), (qname, qtype)
