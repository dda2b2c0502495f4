"""Flows at the edge (RFC 5626, RFC 3327), sans-IO: a phone behind NAT registers through a node
that does not own its AOR (its *edge*, n1); that node adds a Path whose URI carries a MACed
flow token; the owners keep the Path with the binding; a call to the phone goes from the owner
to the edge, and the edge sends it on the phone's own flow (the NAT's public address), with a
Record-Route that brings the rest of the dialog back the same way.

The three nodes and the scripted endpoints are those of test_sip_fork's `Cluster`: bob's owners
are n2 and n3. The phone's packets come from NAT_PUBLIC; its Via and Contact name NAT_PRIVATE.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_sip_fork import CALLER, NODES, Cluster, answer, msg, statuses

from swimthor.sip import (
    Action,
    Binding,
    Flow,
    Request,
    Response,
    SipService,
    Source,
    decode_token,
    location_reply,
    make_token,
    parse_message,
)

NAT_PUBLIC = ("127.0.0.1", 40000)  # where the NAT sends the phone's packets from
NAT_PRIVATE = ("10.0.0.5", 5060)  # what the phone believes its address is
BOB = "sip:bob@example.com"
NOW_WALL = 1_000_000.0  # the Cluster's wall clock, as it hands the nodes `now`
OUTBOUND_DEVICE = ';reg-id=1;+sip.instance="<urn:uuid:0000-0001>"'  # an RFC 5626 UA's Contact


def nat_register(
    c: Cluster, to: str = "n1", extra: tuple[str, ...] = (), cseq: int = 1, device: str = ""
) -> Response:
    """bob's phone behind NAT registers through `to`; `device`: Contact parameters after the
    URI (an outbound UA's reg-id and +sip.instance)."""
    host, port = NAT_PRIVATE
    data = msg(
        "REGISTER",
        "sip:example.com",
        *extra,
        contact=f"<sip:bob@{host}:{port}>{device}",
        via=f"SIP/2.0/UDP {host}:{port};branch=z9hG4bK-nat-{cseq};rport",
        call_id="nat-reg",
        cseq=cseq,
    )
    c.deliver(data, NAT_PUBLIC, to)
    (ok,) = c.take(NAT_PUBLIC)
    assert isinstance(ok, Response)
    return ok


def held(c: Cluster, node: str) -> list[Binding]:
    return c.nodes[node].store.lookup(BOB, c.nodes[node]._mono + NOW_WALL)


def test_flow_tokens_round_trip_and_refuse_what_we_did_not_make() -> None:
    key = b"k" * 32
    for flow in (Flow("udp", "192.0.2.7", 4321), Flow("tcp", "2001:db8::1", 5060, 17)):
        token = make_token(flow, key)
        assert decode_token(token, [b"old" * 11, key]) == flow  # any key of the ring
        assert decode_token(token, [b"x" * 32]) is None
        # One character changed anywhere: not ours.
        for i in range(len(token)):
            flipped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
            assert decode_token(flipped, [key]) is None
    for junk in ("", "!!!", "a" * 500, make_token(Flow("udp", "h", 1), key)[:8]):
        assert decode_token(junk, [key]) is None


def test_the_edge_adds_a_path_with_the_phones_flow_and_the_owners_keep_it() -> None:
    c = Cluster()
    ok = nat_register(c, extra=("Supported: path",))
    assert ok.status == 200
    (binding,) = held(c, "n2")
    assert held(c, "n3") == [binding]  # replicated with its Path
    (path,) = binding.path
    assert path.endswith("@127.0.0.1:5071;lr;ob>")  # the edge, n1
    token = path.removeprefix("<sip:").split("@")[0]
    assert decode_token(token, c.nodes["n1"]._branch_keys()) == Flow("udp", *NAT_PUBLIC)
    # RFC 3327 §5.3: the Path goes back to a UA that supports path; and what we support.
    assert ok.get_all("path") == [path]
    assert "path" in (ok.get("supported") or "")
    assert c.nodes["n1"].stats["paths_added"] == 1


def test_a_phone_that_is_not_behind_nat_gets_no_path() -> None:
    c = Cluster()
    data = msg(
        "REGISTER",
        "sip:example.com",
        contact="<sip:bob@127.0.0.1:40000>",
        via="SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-plain;rport",
        call_id="plain",
    )
    c.deliver(data, NAT_PUBLIC)
    (ok,) = c.take(NAT_PUBLIC)
    assert isinstance(ok, Response) and ok.status == 200
    assert ok.get_all("path") == []
    (binding,) = held(c, "n2")
    assert binding.path == ()


def test_a_third_party_registration_of_a_public_contact_gets_no_path() -> None:
    c = Cluster()
    data = msg(
        "REGISTER",
        "sip:example.com",
        contact="<sip:bob@192.0.2.10:5060>",  # elsewhere, but not behind a NAT
        via="SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-3rd;rport",
        call_id="third",
    )
    c.deliver(data, NAT_PUBLIC)
    c.take(NAT_PUBLIC)
    (binding,) = held(c, "n2")
    assert binding.path == ()


def test_an_outbound_ua_gets_require_outbound_and_a_flow_timer() -> None:
    c = Cluster()
    ok = nat_register(c, extra=("Supported: path, outbound",), device=OUTBOUND_DEVICE)
    assert ok.status == 200, ok.start_line()
    assert ok.get("require") == "outbound"
    assert ok.get("flow-timer") == "30"
    assert len(ok.get_all("path")) == 1


def call_to_nat_phone(c: Cluster, entry: str = "n3") -> tuple[list[Response], bytes]:
    """The caller calls bob through `entry`; the phone rings and answers. The 200 the caller
    got, and the INVITE the phone got."""
    c.deliver(msg("INVITE"), CALLER, entry)
    assert 100 in statuses(c.take(CALLER))
    (invite,) = c.requests(NAT_PUBLIC)
    c.reply(NAT_PUBLIC, answer(invite, 180, "Ringing", "phone"))
    c.reply(NAT_PUBLIC, answer(invite, 200, "OK", "phone"))
    got = [m for m in c.take(CALLER) if isinstance(m, Response)]
    return got, invite.to_bytes()


def test_a_call_reaches_the_phone_over_its_flow_through_its_edge() -> None:
    c = Cluster()
    nat_register(c)
    got, raw = call_to_nat_phone(c)
    invite = parse_message(raw)
    assert isinstance(invite, Request)
    # Sent to the NAT's public address (the flow), not to the private Contact; through n1.
    assert invite.uri_text == "sip:bob@10.0.0.5:5060"
    assert [v.port for v in invite.vias] == [5071, 5073, 5081]  # edge, owner (the entry), caller
    (rr,) = invite.get_all("record-route")[:1]
    assert rr.endswith("@127.0.0.1:5071;lr;ob>")  # the edge, with the flow token
    assert [r.status for r in got] == [180, 200]
    assert c.nodes["n1"].stats["to_flows"] == 1


def _in_dialog(method: str, routes: list[str], cseq: int, to_tag: str = "phone") -> bytes:
    return msg(
        method,
        "sip:bob@10.0.0.5:5060",
        *[f"Route: {r}" for r in routes],
        via=f"SIP/2.0/UDP 127.0.0.1:5081;branch=z9hG4bK-{method.lower()}-{cseq};rport",
        to=f"<sip:bob@example.com>;tag={to_tag}",
        cseq=cseq,
    )


def test_ack_and_bye_from_the_caller_follow_the_record_route_onto_the_flow() -> None:
    c = Cluster()
    nat_register(c)
    _got, raw = call_to_nat_phone(c)
    # The phone's 200 copies the Record-Route it got; the caller reverses it (§12.1.2).
    routes = list(reversed(parse_message(raw).get_all("record-route")))
    assert any("@127.0.0.1:5071;lr;ob>" in r for r in routes)
    first = routes[0]
    entry = next(n for n, p in NODES.items() if f"{p.host}:{p.port}" in first)
    c.deliver(_in_dialog("ACK", routes, 1), CALLER, entry)
    (ack,) = c.requests(NAT_PUBLIC)
    assert ack.method == "ACK"
    c.deliver(_in_dialog("BYE", routes, 2), CALLER, entry)
    (bye,) = c.requests(NAT_PUBLIC)
    assert bye.method == "BYE"


def test_bye_from_the_phone_goes_out_by_the_next_route_not_back_to_it() -> None:
    c = Cluster()
    nat_register(c)
    _got, raw = call_to_nat_phone(c)
    invite = parse_message(raw)
    # The callee's route set is the Record-Route as it got it (§12.1.1), the edge first.
    routes = invite.get_all("record-route")
    host, port = NAT_PRIVATE
    bye = msg(
        "BYE",
        "sip:alice@127.0.0.1:5081",
        *[f"Route: {r}" for r in routes],
        via=f"SIP/2.0/UDP {host}:{port};branch=z9hG4bK-pbye;rport",
        to="<sip:alice@example.com>;tag=a",
        call_id="call-1",
        cseq=1,
    )
    c.deliver(bye, NAT_PUBLIC, "n1")  # over the flow, to its edge
    (out,) = c.requests(CALLER)
    assert out.method == "BYE"
    assert c.take(NAT_PUBLIC) == []


def test_the_owner_that_is_the_edge_sends_onto_the_flow_itself() -> None:
    c = Cluster()
    nat_register(c, to="n2")  # n2 owns bob and is the phone's edge
    (binding,) = held(c, "n3")
    assert "@127.0.0.1:5072;lr;ob>" in binding.path[0]
    got, raw = call_to_nat_phone(c, entry="n1")
    invite = parse_message(raw)
    assert invite.get_all("route") == []  # n2 followed its own Path: nothing left of it
    rr = invite.get_all("record-route")
    assert rr[0].endswith("@127.0.0.1:5072;lr;ob>")  # so the dialog comes back to n2
    assert [r.status for r in got] == [180, 200]


def test_a_forged_flow_token_gets_403_and_nothing_is_sent() -> None:
    c = Cluster()
    forged = make_token(Flow("udp", "192.0.2.99", 9), b"not-the-cluster-key" * 2)
    data = _in_dialog("INVITE", [f"<sip:{forged}@127.0.0.1:5071;lr;ob>"], 1, to_tag="x")
    c.deliver(data, CALLER, "n1")
    assert statuses(c.take(CALLER)) == [403]
    assert c.take(("192.0.2.99", 9)) == []
    assert c.nodes["n1"].stats["bad_flow_tokens"] == 1


def test_a_stream_flow_that_closed_gets_430_flow_failed() -> None:
    c = Cluster()
    edge = c.nodes["n1"]
    host, port = NAT_PRIVATE
    data = msg(
        "REGISTER",
        "sip:example.com",
        contact=f"<sip:bob@{host}:{port};transport=tcp>",
        via=f"SIP/2.0/TCP {host}:{port};branch=z9hG4bK-tcp",
        call_id="tcp-reg",
    )
    queue: list[tuple[str, bytes, tuple[str, int]]] = []
    for action in edge.handle(data, Source("tcp", *NAT_PUBLIC, 7), 1_000_000.0, 0.0):
        c._route("n1", action, queue)
    c._run(queue)
    c.take(NAT_PUBLIC)
    (binding,) = held(c, "n2")
    assert binding.path  # a stream is a flow: always through its edge
    edge._flow_alive = lambda conn: conn != 7
    c.deliver(msg("INVITE"), CALLER, "n3")
    assert 430 in statuses(c.take(CALLER))
    assert edge.stats["flows_gone"] == 1


@pytest.mark.parametrize("value", ["<sip:edge;lr>", "<http://x>", "garbage<<"])
def test_a_register_with_a_bad_path_is_refused(value: str) -> None:
    c = Cluster()
    data = msg(
        "REGISTER",
        "sip:example.com",
        f"Path: {value}",
        contact="<sip:bob@127.0.0.1:40000>",
        via="SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-bad;rport",
        call_id="bad-path",
    )
    c.deliver(data, NAT_PUBLIC)
    (reply,) = c.take(NAT_PUBLIC)
    assert isinstance(reply, Response)
    if value == "<sip:edge;lr>":
        assert reply.status == 200  # a host name is a fine Path
    else:
        assert reply.status == 400


def _one_keyring(c: Cluster) -> None:
    """The nodes share the cluster's keys (as with a keyring): each can check the others'
    flow tokens."""
    for proxy in c.nodes.values():
        proxy._branch_keys = lambda: [b"cluster-key" * 3]


def _edge_dead_for(c: Cluster, node: str, edge: str = "n1") -> None:
    """`node` sees `edge` gone from the membership (no live member at its address)."""
    gone = (NODES[edge].host, NODES[edge].port)
    c.nodes[node]._peer_at = lambda h, p: (
        None
        if (h, p) == gone
        else next((x for x in NODES.values() if (x.host, x.port) == (h, p)), None)
    )


def test_a_call_to_a_phone_whose_edge_died_gets_430_at_once() -> None:
    c = Cluster()
    _one_keyring(c)
    nat_register(c)  # through n1
    _edge_dead_for(c, "n3")
    c.deliver(msg("INVITE"), CALLER, "n3")
    assert statuses(c.take(CALLER))[-1] == 430  # no timer ran: at once
    assert c.nodes["n1"].stats["to_flows"] == 0  # nothing went to the dead edge
    assert c.nodes["n3"].stats["flows_gone"] == 1


def test_with_its_edge_dead_the_call_goes_to_the_users_other_device_at_once() -> None:
    c = Cluster()
    _one_keyring(c)
    nat_register(c)  # the NAT'd device, through n1
    desk = ("127.0.0.1", 5090)
    other = msg(
        "REGISTER",
        "sip:example.com",
        contact=f'<sip:bob@{desk[0]}:{desk[1]}>;+sip.instance="<urn:uuid:desk>"',
        via=f"SIP/2.0/UDP {desk[0]}:{desk[1]};branch=z9hG4bK-desk;rport",
        call_id="desk-reg",
    )
    c.deliver(other, desk, "n3")
    c.take(desk)
    _edge_dead_for(c, "n3")
    c.deliver(msg("INVITE"), CALLER, "n3")
    (invite,) = c.requests(desk)  # the desk phone rings; the dead edge gets nothing
    assert invite.method == "INVITE"
    assert c.nodes["n1"].stats["to_flows"] == 0


def _outbound_flow(
    c: Cluster, edge: str, reg_id: int, source: tuple[str, int], conn: int | None = None
) -> None:
    """bob's one outbound device (one +sip.instance) registers flow `reg_id` through `edge`,
    from `source` (UDP, or TCP connection `conn`)."""
    host, port = NAT_PRIVATE
    transport = "TCP" if conn is not None else "UDP"
    data = msg(
        "REGISTER",
        "sip:example.com",
        "Supported: path, outbound",
        contact=f'<sip:bob@{host}:{port};ob>;reg-id={reg_id};+sip.instance="<urn:uuid:two-flows>"',
        via=f"SIP/2.0/{transport} {host}:{port};branch=z9hG4bK-flow{reg_id};rport",
        call_id=f"flow-{reg_id}",
    )
    frm = Source("tcp" if conn is not None else "udp", *source, conn)
    queue: list[tuple[str, bytes, tuple[str, int]]] = []
    for action in c.nodes[edge].handle(data, frm, NOW_WALL + c.now, c.now):
        c._route(edge, action, queue)
    c._run(queue)
    (ok,) = c.take(source)
    assert isinstance(ok, Response) and ok.status == 200, ok


def test_a_device_with_two_flows_is_called_on_the_second_when_the_first_edge_died() -> None:
    """RFC 5626 §5.3 with two edges: the first flow's edge failed (the owner knows it from
    the membership), so the branch goes to the other flow at once."""
    c = Cluster()
    _one_keyring(c)
    other = ("127.0.0.1", 40001)
    _outbound_flow(c, "n3", 2, other)
    c.advance(1.0)
    _outbound_flow(c, "n1", 1, NAT_PUBLIC)  # the newer: tried first
    assert len(held(c, "n2")) == 2  # one binding per flow
    _edge_dead_for(c, "n2")
    c.deliver(msg("INVITE"), CALLER, "n2")
    (invite,) = c.requests(other)  # through n3, on the second flow
    assert invite.method == "INVITE"
    assert c.take(NAT_PUBLIC) == [] and c.nodes["n1"].stats["to_flows"] == 0


def test_a_flow_that_failed_at_its_edge_is_retried_on_the_devices_other_flow() -> None:
    """The edge is up but the phone's TCP connection there closed: 430 from the edge, and
    the owner tries the device's other flow, through the other edge, in the same call."""
    c = Cluster()
    _one_keyring(c)
    other = ("127.0.0.1", 40001)
    _outbound_flow(c, "n3", 2, other, conn=8)
    c.advance(1.0)
    _outbound_flow(c, "n1", 1, NAT_PUBLIC, conn=7)  # the newer: tried first
    c.nodes["n1"]._flow_alive = lambda conn: conn != 7
    c.deliver(msg("INVITE"), CALLER, "n2")
    (invite,) = c.requests(other)
    assert invite.method == "INVITE"
    assert c.nodes["n2"].forks.stats["flow_retries"] == 1
    assert 430 not in statuses(c.take(CALLER))  # the caller never saw the failed flow
    c.reply(other, answer(invite, 200, "OK", "phone"))
    assert 200 in statuses(c.take(CALLER))


# ---------------------------------------------------------------- the address we advertise


def test_sip_advertise_from_the_flag_and_what_a_bad_one_says(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from swimthor.cli import build_agent_config, build_parser, main

    sip = ["--role", "sip", "--domain", "example.com", "--insecure"]
    cfg = build_agent_config(
        build_parser().parse_args(["join", *sip, "--sip-advertise", "sip1.example.net"])
    )
    assert cfg.sip is not None and cfg.sip.advertise_host == "sip1.example.net"
    cfg = build_agent_config(
        build_parser().parse_args(["join", *sip, "--sip-advertise", "[2001:db8::5]"])
    )
    assert cfg.sip is not None and cfg.sip.advertise_host == "2001:db8::5"
    for bad in ("0.0.0.0", "host:5060", "a b", ""):
        code = main(["join", *sip, "--sip-advertise", bad])
        err = capsys.readouterr().err
        assert code == 2, (bad, err)
        assert "advertise" in err and len(err.splitlines()) == 1, err


def test_the_sip_address_defaults_to_the_one_sip_is_bound_to() -> None:
    """A node whose SIP is bound to one address announces that one, not its gossip one."""
    from swimthor.config import SipConfig
    from swimthor.routing import RoutingTable

    def advertised(config: SipConfig) -> str:
        svc = SipService(
            config, name="n1", advertise_host="192.0.2.1", routing=RoutingTable(roles=None),
            keyring=lambda: None, label="",
        )  # fmt: skip
        host, _port = svc.open()
        svc.server.close()
        return host

    assert advertised(SipConfig(bind=("127.0.0.1", 0), domains=["example.com"])) == "127.0.0.1"
    assert advertised(SipConfig(bind=("0.0.0.0", 0), domains=["example.com"])) == "192.0.2.1"
    configured = SipConfig(bind=("127.0.0.1", 0), domains=["example.com"], advertise_host="sip.x")
    assert advertised(configured) == "sip.x"


def test_location_names_the_edge_of_a_binding_with_a_path() -> None:
    from swimthor.cli import format_location_text

    c = Cluster()
    nat_register(c)
    now = c.nodes["n2"]._mono + NOW_WALL
    copies = {n: c.nodes[n].store.contacts(BOB) for n in ("n2", "n3")}
    keys = c.nodes["n1"]._branch_keys()
    reply = location_reply(BOB, ["n2", "n3"], copies, [], now, asked="n2", keys=keys)
    (b,) = reply["bindings"]
    assert b["edge"] == "127.0.0.1:5071" and len(b["path"]) == 1
    assert (b["flow"], b["transport"]) == ("udp:127.0.0.1:40000", "udp")
    header, row = format_location_text(reply).splitlines()[1:]
    assert row.split()[header.split().index("EDGE")] == "127.0.0.1:5071"
    assert "udp:127.0.0.1:40000" in row
    # Without the cluster's keys the token cannot be read: the flow is unknown, not made up.
    (blind,) = location_reply(BOB, ["n2", "n3"], copies, [], now, asked="n2")["bindings"]
    assert blind["flow"] == "?"


def test_without_shared_keys_a_dead_edge_is_known_from_the_membership() -> None:
    """With --insecure the owner cannot read another node's token; that the Path's first hop
    is a member that failed is enough."""
    c = Cluster()
    nat_register(c)  # through n1; each node has keys of its own
    _edge_dead_for(c, "n3")
    c.nodes["n3"]._gone_at = lambda h, p: (h, p) == ("127.0.0.1", 5071)
    c.deliver(msg("INVITE"), CALLER, "n3")
    assert statuses(c.take(CALLER))[-1] == 430
    assert c.nodes["n1"].stats["to_flows"] == 0


# ---------------------------------------------------------------- keepalives from the edge


def options_to(c: Cluster, who: tuple[str, int]) -> list[Request]:
    return [m for m in c.requests(who) if m.method == "OPTIONS"]


def test_only_the_edge_pings_a_natd_phone_and_an_answer_keeps_it_bound() -> None:
    c = Cluster()
    nat_register(c)  # through n1, its edge
    for t in (30.0, 60.0, 90.0, 120.0, 150.0):
        c.advance(t)
        (ping,) = options_to(c, NAT_PUBLIC)  # one ping an interval, and only one node's
        assert ping.vias[0].port == 5071 and ping.uri_text == "sip:bob@10.0.0.5:5060"
        c.reply(NAT_PUBLIC, answer(ping, 200, "OK", "phone"))
    assert [c.nodes[n].pinger.stats["pings"] for n in ("n1", "n2", "n3")] == [5, 0, 0]
    assert c.nodes["n1"].pinger.stats["answers"] == 5
    assert held(c, "n2") and held(c, "n3")  # still bound


def test_a_register_its_owners_refuse_makes_no_flow_to_ping() -> None:
    """The edge watches a flow only once the owners accept its REGISTER (their 2xx passes
    back through it). Else anybody could send a REGISTER naming someone's contact from an
    address that never answers, and the edge would, three pings later, remove that binding
    itself, as a node, without a challenge."""
    c = Cluster()
    edge = c.nodes["n1"]
    host, port = NAT_PRIVATE
    data = msg(
        "REGISTER",
        "sip:example.com",
        contact=f"<sip:bob@{host}:{port}>;expires=5",  # under min_expires: 423
        via=f"SIP/2.0/UDP {host}:{port};branch=z9hG4bK-brief;rport",
        call_id="brief",
    )
    c.deliver(data, NAT_PUBLIC, "n1")
    (refused,) = c.take(NAT_PUBLIC)
    assert isinstance(refused, Response) and refused.status == 423
    assert edge.stats["paths_added"] == 1  # it was forwarded as the phone's edge
    assert edge.pinger.flows == {} and edge.pinger.expected == {}
    c.advance(200.0)
    assert options_to(c, NAT_PUBLIC) == [] and edge.pinger.stats["pings"] == 0
    nat_register(c)  # accepted: watched from its 200 on
    assert list(edge.pinger.flows) == [NAT_PUBLIC] and edge.pinger.expected == {}


def test_a_phone_that_stops_answering_is_removed_from_both_owners() -> None:
    c = Cluster()
    nat_register(c)
    assert held(c, "n2") and held(c, "n3")
    for t in (30.0, 60.0, 90.0):
        c.advance(t)
        assert len(options_to(c, NAT_PUBLIC)) == 1  # pinged, never answered
    c.advance(120.0)  # the third miss: the edge asks the owners to remove it
    assert options_to(c, NAT_PUBLIC) == []
    assert held(c, "n2") == [] and held(c, "n3") == []
    assert c.nodes["n1"].pinger.stats["lost"] == 1
    c.advance(300.0)
    assert options_to(c, NAT_PUBLIC) == []  # and it is no longer pinged


def test_a_removal_ends_the_pings_and_nobody_outside_can_claim_a_node_removal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = Cluster()
    nat_register(c)
    host, port = NAT_PRIVATE
    seen: list[bytes] = []
    owner = c.nodes["n2"]
    original = owner.handle

    def spy(data: bytes, source: Source, now: float, mono: float | None = None) -> list[Action]:
        seen.append(data)
        return original(data, source, now, mono)

    monkeypatch.setattr(owner, "handle", spy)
    data = msg(
        "REGISTER",
        "sip:example.com",
        "Expires: 0",
        "Swimthor-Flow-Lost: 10.0.0.5:5060",
        contact=f"<sip:bob@{host}:{port}>",
        via=f"SIP/2.0/UDP {host}:{port};branch=z9hG4bK-nat-off;rport",
        call_id="nat-reg",
        cseq=2,
    )
    c.deliver(data, NAT_PUBLIC, "n1")
    c.take(NAT_PUBLIC)
    assert held(c, "n2") == []
    assert seen and all(b"Swimthor-Flow-Lost" not in d for d in seen)  # stripped at the edge
    c.advance(30.0)
    assert options_to(c, NAT_PUBLIC) == []


def test_keepalive_settings_from_the_flag_and_the_toml_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from swimthor.cli import build_agent_config, build_parser, main

    sip = ["--role", "sip", "--domain", "example.com", "--insecure"]
    for text, want in (("15", 15.0), ("0", 0.0)):
        cfg = build_agent_config(build_parser().parse_args(["join", *sip, "--sip-keepalive", text]))
        assert cfg.sip is not None and cfg.sip.keepalive_interval == want
    for bad in ("soon", "-1", "0.5", "nan", "4000"):
        assert main(["join", *sip, "--sip-keepalive", bad]) == 2
        err = capsys.readouterr().err
        assert "keepalive interval" in err and len(err.splitlines()) == 1, err
    path = tmp_path / "c.toml"
    path.write_text('roles = ["sip"]\n[sip]\ndomains = ["example.com"]\nkeepalive_misses = 0\n')
    assert main(["join", "--config", str(path)]) == 2
    assert "keepalive_misses" in capsys.readouterr().err


def test_a_route_of_ours_with_a_user_part_but_no_ob_is_just_routed_on() -> None:
    """Only our flow URIs carry `ob`: a UA's preloaded `<sip:outbound@node;lr>` is no token."""
    c = Cluster()
    data = msg(
        "MESSAGE",
        "sip:alice@127.0.0.1:5081",
        "Route: <sip:outbound@127.0.0.1:5071;lr>",
        via="SIP/2.0/UDP 127.0.0.1:5081;branch=z9hG4bK-pre;rport",
    )
    c.deliver(data, CALLER, "n1")
    assert 403 not in statuses(c.take(CALLER))
    assert c.nodes["n1"].stats["bad_flow_tokens"] == 0


def test_a_silent_outbound_device_is_removed_by_its_instance() -> None:
    """A device registered with +sip.instance and reg-id is bound by them: the edge's removal
    names them, or it would miss the binding."""
    c = Cluster()
    nat_register(c, extra=("Supported: path, outbound",), device=OUTBOUND_DEVICE)
    (binding,) = held(c, "n2")
    assert binding.instance and binding.reg_id == 1
    for t in (30.0, 60.0, 90.0, 120.0):
        c.advance(t)
    assert held(c, "n2") == [] and held(c, "n3") == []
