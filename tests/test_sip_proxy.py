"""The proxy's routing decisions, sans-IO: three nodes wired by hand, no sockets.

Each node is a `Proxy`; `Net.send` delivers what one returns to the node (or the phone) whose
address it names, the way the trio server would. Owners of an address-of-record are fixed per
test so the paths are known.
"""

from __future__ import annotations

import pytest

from swimthor.sip import (
    BRANCH_PREFIX,
    Action,
    Peer,
    Proxy,
    ProxySettings,
    Replicate,
    Request,
    Response,
    Send,
    Source,
    parse_message,
)

NOW = 1_000_000.0
PHONE_A = ("127.0.0.1", 5081)  # the caller
PHONE_B = ("127.0.0.1", 5080)  # bob's phone
NODES = {
    name: Peer(name, "127.0.0.1", port) for name, port in (("n1", 5071), ("n2", 5072), ("n3", 5073))
}


class Net:
    def __init__(
        self, owners: dict[str, list[str]] | None = None, default: tuple[str, ...] = ("n2", "n3")
    ) -> None:
        self.owners = owners or {}
        self.default = list(default)
        self.live = dict(NODES)
        self.nodes = {
            name: Proxy(
                ProxySettings(name, p.host, p.port, frozenset({"example.com"})),
                owners=self._owners,
                peers=lambda: self.live,
            )
            for name, p in NODES.items()
        }

    def _owners(self, aor: str, n: int) -> list[Peer]:
        names = self.owners.get(aor, self.default)
        return [self.live[x] for x in names if x in self.live][:n]

    def node_at(self, host: str, port: int) -> Proxy | None:
        for name, p in NODES.items():
            if (p.host, p.port) == (host, port):
                return self.nodes[name]
        return None

    def handle(self, node: str, data: bytes, frm: tuple[str, int]) -> list[Action]:
        return self.nodes[node].handle(data, Source("udp", frm[0], frm[1]), NOW)

    def run(self, node: str, data: bytes, frm: tuple[str, int], hops: int = 10) -> list[Send]:
        """Deliver `data` to `node`, then follow every node-to-node send; return what left the
        cluster (sends to non-node addresses), replicating REGISTER changes at once."""
        out: list[Send] = []
        queue: list[tuple[Proxy, bytes, tuple[str, int]]] = [(self.nodes[node], data, frm)]
        while queue and hops:
            hops -= 1
            proxy, payload, source = queue.pop(0)
            for action in proxy.handle(payload, Source("udp", *source), NOW):
                if isinstance(action, Replicate):
                    for peer in action.peers:
                        self.nodes[peer].store.merge(action.changes, NOW)
                    action = action.response
                assert isinstance(action, Send), action  # no credentials to fetch: no auth here
                target = self.node_at(action.host, action.port)
                me = (proxy.settings.host, proxy.settings.port)
                if target is None:
                    out.append(action)
                else:
                    queue.append((target, action.data, me))
        return out


def msg(
    method: str,
    uri: str,
    *extra: str,
    via: str = "SIP/2.0/UDP 127.0.0.1:5081;branch=z9hG4bK-a1;rport",
    to: str = "<sip:bob@example.com>",
    cseq: int = 1,
    call_id: str = "call-1",
    body: bytes = b"",
) -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {via}",
        "From: <sip:alice@example.com>;tag=a",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Max-Forwards: 70",
        *extra,
        f"Content-Length: {len(body)}",
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + body


def parsed_response(data: bytes) -> Response:
    message = parse_message(data)
    assert isinstance(message, Response), message
    return message


def parsed_request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request), message
    return message


def only_sends(actions: list[Action]) -> list[Send]:
    """`actions`, each of them a Send."""
    sends = []
    for action in actions:
        assert isinstance(action, Send), action
        sends.append(action)
    return sends


def register_bob(
    net: Net, through: str = "n1", contact: str = "<sip:bob@127.0.0.1:5080>"
) -> Response:
    out = net.run(
        through,
        msg(
            "REGISTER",
            "sip:example.com",
            f"Contact: {contact}",
            via="SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-r1;rport",
            call_id="reg-1",
        ),
        PHONE_B,
    )
    assert len(out) == 1
    response = parse_message(out[0].data)
    assert isinstance(response, Response)
    return response


def test_register_through_a_non_owner_reaches_the_owner_and_both_owners_hold_it() -> None:
    net = Net()
    response = register_bob(net, "n1")
    assert response.status == 200
    assert [v.host for v in response.vias] == ["127.0.0.1"]  # only the phone's Via is left
    assert response.vias[0].params.get("rport") == "5080"
    assert "expires=3600" in (response.get("contact") or "")
    assert len(net.nodes["n2"].store) == 1 and len(net.nodes["n3"].store) == 1
    assert len(net.nodes["n1"].store) == 0  # n1 is not an owner
    assert net.nodes["n1"].stats["forwarded"] == 2  # the request out, the response back


def test_invite_goes_entry_node_to_owner_to_contact_with_one_record_route() -> None:
    net = Net()
    register_bob(net)
    out = net.run("n1", msg("INVITE", "sip:bob@example.com"), PHONE_A)
    # The owner answers 100 Trying at once (§16.2), relayed back by the entry node, and
    # forwards the INVITE to bob's one binding.
    by_address = {(o.host, o.port): o for o in out}
    assert len(out) == 2 and set(by_address) == {PHONE_A, PHONE_B}
    trying = parse_message(by_address[PHONE_A].data)
    assert isinstance(trying, Response) and trying.status == 100
    assert [f"{v.host}:{v.port}" for v in trying.vias] == ["127.0.0.1:5081"]
    invite = parse_message(by_address[PHONE_B].data)
    assert isinstance(invite, Request)
    assert invite.uri_text == "sip:bob@127.0.0.1:5080"
    assert invite.get_all("record-route") == ["<sip:127.0.0.1:5071;lr>"]
    assert [f"{v.host}:{v.port}" for v in invite.vias] == [
        "127.0.0.1:5072",
        "127.0.0.1:5071",
        "127.0.0.1:5081",
    ]
    assert invite.get("max-forwards") == "68"
    # The phone's Via got received/rport (RFC 3581).
    assert invite.vias[2].params.get("rport") == "5081"


def test_retransmission_and_cancel_take_the_same_branches() -> None:
    """The stateless entry node gives an INVITE, its retransmission and its CANCEL one branch
    (§16.11), so the owner's server transaction sees them as one transaction."""
    net = Net()
    register_bob(net)

    def via_of(data: bytes) -> str:
        (send,) = net.handle("n1", data, PHONE_A)
        assert isinstance(send, Send) and (send.host, send.port) == ("127.0.0.1", 5072)
        forwarded = parse_message(send.data)
        return forwarded.vias[0].branch or ""

    first = via_of(msg("INVITE", "sip:bob@example.com"))
    assert first.startswith(BRANCH_PREFIX)
    assert via_of(msg("INVITE", "sip:bob@example.com")) == first
    assert via_of(msg("CANCEL", "sip:bob@example.com")) == first
    other = via_of(
        msg("INVITE", "sip:bob@example.com", via="SIP/2.0/UDP 127.0.0.1:5081;branch=z9hG4bK-zz")
    )
    assert other != first


def test_owner_absorbs_a_retransmitted_invite() -> None:
    net = Net()
    register_bob(net)
    out = net.run("n1", msg("INVITE", "sip:bob@example.com"), PHONE_A)
    assert sorted((o.host, o.port) for o in out) == [PHONE_B, PHONE_A]
    # The caller retransmits: the owner's server transaction gives the 100 again and does
    # not ring bob twice.
    again = net.run("n1", msg("INVITE", "sip:bob@example.com"), PHONE_A)
    assert [(o.host, o.port) for o in again] == [PHONE_A]
    assert parsed_response(again[0].data).status == 100


def test_owner_with_no_binding_answers_480_and_ack_is_never_answered() -> None:
    net = Net()
    out = net.run("n1", msg("INVITE", "sip:carol@example.com"), PHONE_A)
    response = parse_message(out[0].data)
    assert isinstance(response, Response) and response.status == 480
    assert (out[0].host, out[0].port) == PHONE_A
    assert net.run("n1", msg("ACK", "sip:carol@example.com"), PHONE_A) == []


def test_no_live_owner_is_503_with_retry_after() -> None:
    net = Net(default=())
    out = net.run("n1", msg("INVITE", "sip:bob@example.com"), PHONE_A)
    response = parse_message(out[0].data)
    assert isinstance(response, Response) and response.status == 503
    assert response.get("retry-after") == "5"


@pytest.mark.parametrize(
    ("uri", "extra"),
    [
        ("sip:bob@elsewhere.org", ()),  # a foreign domain
        ("sip:bob@elsewhere.org", ("Route: <sip:10.9.9.9;lr>",)),  # a route we did not put
    ],
)
def test_no_open_relay_for_strangers(uri: str, extra: tuple[str, ...]) -> None:
    net = Net()
    out = net.run("n1", msg("INVITE", uri, *extra), PHONE_A)
    response = parse_message(out[0].data)
    assert isinstance(response, Response) and response.status == 403


def test_in_dialog_request_is_loose_routed_by_the_node_that_record_routed() -> None:
    net = Net()
    bye = msg(
        "BYE",
        "sip:uas@127.0.0.1:5080",
        "Route: <sip:127.0.0.1:5071;lr>",
        to="<sip:bob@example.com>;tag=b",
        cseq=2,
    )
    out = net.run("n1", bye, PHONE_A)
    assert len(out) == 1 and (out[0].host, out[0].port) == PHONE_B
    forwarded = parse_message(out[0].data)
    assert isinstance(forwarded, Request)
    assert forwarded.get_all("route") == [] and forwarded.uri_text == "sip:uas@127.0.0.1:5080"
    assert forwarded.get("record-route") is None


def test_strict_router_request_uri_is_replaced_by_the_last_route() -> None:
    net = Net()
    bye = msg(
        "BYE",
        "sip:127.0.0.1:5071",
        "Route: <sip:uas@127.0.0.1:5080>",
        to="<sip:bob@example.com>;tag=b",
        cseq=2,
    )
    out = net.run("n1", bye, PHONE_A)
    assert (out[0].host, out[0].port) == PHONE_B
    assert parsed_request(out[0].data).uri_text == "sip:uas@127.0.0.1:5080"


def test_loop_is_482() -> None:
    net = Net()
    register_bob(net)
    first = net.run("n1", msg("INVITE", "sip:bob@example.com"), PHONE_A)
    invite = parse_message(first[0].data)
    # The same request comes back to n1 unchanged but for Vias added on the way: a loop.
    n1_via = next(v for v in invite.vias if v.port == 5071)
    looped = msg(
        "INVITE",
        "sip:bob@example.com",
        via=f"SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-x, {n1_via.text}, "
        "SIP/2.0/UDP 127.0.0.1:5081;branch=z9hG4bK-a1",
    )
    response = parse_message(only_sends(net.handle("n1", looped, ("127.0.0.1", 5099)))[0].data)
    assert isinstance(response, Response) and response.status == 482


def test_responses_follow_the_via_chain_and_foreign_ones_are_dropped() -> None:
    net = Net()
    register_bob(net)
    invite = parse_message(net.run("n1", msg("INVITE", "sip:bob@example.com"), PHONE_A)[0].data)
    assert isinstance(invite, Request)
    vias = ", ".join(v.text for v in invite.vias)
    ok = (
        "SIP/2.0 200 OK\r\n"
        f"Via: {vias}\r\n"
        "From: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>;tag=b\r\n"
        "Call-ID: call-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    out = net.run("n2", ok, PHONE_B)
    assert len(out) == 1 and (out[0].host, out[0].port) == PHONE_A
    assert [v.port for v in parse_message(out[0].data).vias] == [5081]
    # Sent to the wrong node (sipp's UAS does that): handed on to the right one.
    out = net.run("n3", ok, PHONE_B)
    assert len(out) == 1 and (out[0].host, out[0].port) == PHONE_A
    foreign = ok.replace(b"z9hG4bK-st-", b"z9hG4bK-xx-")
    assert net.run("n2", foreign, PHONE_B) == []


def test_options_to_the_node_is_answered_and_an_unknown_method_is_forwarded() -> None:
    net = Net()
    out = net.run("n1", msg("OPTIONS", "sip:127.0.0.1:5071"), PHONE_A)
    response = parse_message(out[0].data)
    assert isinstance(response, Response) and response.status == 200
    assert "REGISTER" in (response.get("allow") or "")
    # RFC 3261 §16: a proxy forwards a method it does not know like any other.
    register_bob(net)
    out = net.run("n1", msg("FOO", "sip:bob@example.com"), PHONE_A)
    assert [(o.host, o.port) for o in out] == [PHONE_B]
    request = parse_message(out[0].data)
    assert isinstance(request, Request) and request.method == "FOO"
    assert request.uri_text == "sip:bob@127.0.0.1:5080"


def test_register_for_a_foreign_domain_is_404() -> None:
    net = Net()
    out = net.run(
        "n1",
        msg(
            "REGISTER",
            "sip:example.com",
            "Contact: <sip:x@127.0.0.1:5080>",
            to="<sip:bob@other.org>",
        ),
        PHONE_A,
    )
    response = parse_message(out[0].data)
    assert isinstance(response, Response) and response.status == 404


def test_register_on_an_owner_waits_for_the_replicas() -> None:
    net = Net(default=("n1", "n2"))
    actions = net.handle(
        "n1",
        msg("REGISTER", "sip:example.com", "Contact: <sip:bob@127.0.0.1:5080>"),
        PHONE_B,
    )
    assert len(actions) == 1 and isinstance(actions[0], Replicate)
    rep = actions[0]
    assert rep.peers == ["n2"] and len(rep.changes) == 1
    assert parsed_response(rep.response.data).status == 200
    failed = net.nodes["n1"].replication_failed(rep)
    assert parsed_response(failed.data).status == 503
    # A retransmission while the replicas are asked is absorbed, not applied twice.
    again = net.handle(
        "n1",
        msg("REGISTER", "sip:example.com", "Contact: <sip:bob@127.0.0.1:5080>"),
        PHONE_B,
    )
    assert again == []


def test_stand_ins_skip_this_node_and_the_owners_already_written() -> None:
    net = Net(default=("n1", "n2", "n3"))
    n1 = net.nodes["n1"]
    assert n1.stand_ins("sip:bob@example.com", 1, ["n2"]) == ["n3"]
    # An owner declared dead meanwhile is no longer ranked at all.
    del net.live["n3"]
    assert n1.stand_ins("sip:bob@example.com", 1, ["n2"]) == []


@pytest.mark.parametrize("joined", [True, False])
def test_the_fast_response_path_gives_what_the_full_parser_gives(joined: bool) -> None:
    net = Net()
    register_bob(net)
    (to_owner,) = only_sends(net.handle("n1", msg("INVITE", "sip:bob@example.com"), PHONE_A))
    invite = parse_message(to_owner.data)
    assert isinstance(invite, Request)
    # A response on its way back through the stateless entry node n1: its Via, the phone's.
    via_lines = (
        [f"Via: {', '.join(v.text for v in invite.vias)}"]
        if joined
        else [f"Via: {v.text}" for v in invite.vias]
    )
    ok = "\r\n".join(
        [
            "SIP/2.0 200 OK",
            *via_lines,
            "From: <sip:alice@example.com>;tag=a",
            "To: <sip:bob@example.com>;tag=b",
            "Call-ID: call-1",
            "CSeq: 1 INVITE",
            "Content-Length: 0",
            "",
            "",
        ]
    ).encode()
    n1 = net.nodes["n1"]
    relayed = n1._relay_fast(ok)
    assert relayed is not None
    fast = only_sends(relayed)
    full = only_sends(n1._response(parsed_response(ok)))
    assert [(s.host, s.port) for s in fast] == [(s.host, s.port) for s in full]
    fast_msg, full_msg = parsed_response(fast[0].data), parsed_response(full[0].data)
    assert [v.text for v in fast_msg.vias] == [v.text for v in full_msg.vias]
    assert fast_msg.get("call-id") == "call-1" and fast_msg.status == 200
    # Not ours: the fast path declines and the full parser decides.
    assert net.nodes["n3"]._relay_fast(ok) is None
    # Ours, but re-addressed to another next hop: the branch's MAC does not match it.
    moved = ok.replace(b"127.0.0.1:5081", b"127.0.0.1:5999").replace(b"rport=5081", b"rport=5999")
    assert n1._relay_fast(moved) is None
    assert n1._response(parsed_response(moved)) == []


def test_the_fast_response_path_never_relays_past_a_foreign_top_via() -> None:
    # Our Via sits second, behind a compact "v:" line of someone else's: the top hop is not
    # ours, so the response must be dropped as the full parser drops it.
    net = Net()
    ours = f"SIP/2.0/UDP 127.0.0.1:5072;branch={BRANCH_PREFIX}aa.bb"
    forged = (
        "SIP/2.0 200 OK\r\n"
        "v: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bK-x\r\n"
        f"Via: {ours}\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5081;branch=z9hG4bK-a1\r\n"
        "From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\n"
        "Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    n2 = net.nodes["n2"]
    assert n2._relay_fast(forged) is None
    assert n2.handle(forged, Source("udp", "127.0.0.1", 5080), NOW) == []


def test_an_owner_our_datagrams_bounce_off_is_tried_last_for_a_while() -> None:
    """The entry node's INVITE to bob's first owner comes back as ICMP port unreachable (the
    owner died, not declared yet): the caller's retransmission goes to the other owner, which
    holds the same bindings, instead of into the void until SWIM declares the failure."""
    net = Net()
    register_bob(net)
    n1 = net.nodes["n1"]
    (first,) = n1.handle(msg("INVITE", "sip:bob@example.com"), Source("udp", *PHONE_A), NOW)
    assert isinstance(first, Send) and first.port == 5072  # n2, the first owner
    assert n1.unreachable(first.data[:520], 10.0, (first.host, first.port)) == []
    (again,) = n1.handle(msg("INVITE", "sip:bob@example.com"), Source("udp", *PHONE_A), NOW, 10.5)
    assert isinstance(again, Send) and again.port == 5073  # n3
    # A few seconds later n2 is tried first again (it may have been restarted).
    (later,) = n1.handle(msg("INVITE", "sip:bob@example.com"), Source("udp", *PHONE_A), NOW, 16.0)
    assert isinstance(later, Send) and later.port == 5072
    # A datagram that bounced off a phone, not a node, changes no routing.
    assert n1.unreachable(first.data[:520], 20.0, PHONE_B) == []
    assert n1._unreachable == {}


def test_an_owner_with_no_binding_yet_asks_the_other_owner() -> None:
    """n1 has just become one of bob's owners (a co-owner died) and the handoff has not
    reached it: a call entering there goes on to the owner that holds bob's binding, not
    480 from an empty store (seen as lost calls when a node was killed under call load)."""
    net = Net()
    register_bob(net)  # held by n2 and n3
    net.owners["sip:bob@example.com"] = ["n1", "n2"]  # n3 died; n1 moved up
    del net.live["n3"]
    out = net.run("n1", msg("INVITE", "sip:bob@example.com"), PHONE_A)
    assert sorted((o.host, o.port) for o in out) == [PHONE_B, PHONE_A]
    invite = parse_message(next(o for o in out if (o.host, o.port) == PHONE_B).data)
    assert isinstance(invite, Request) and invite.get_all("record-route") == [
        "<sip:127.0.0.1:5071;lr>"
    ]
    # Nobody has carol: the other owner answers 480, once, and nothing loops.
    net.owners["sip:carol@example.com"] = ["n1", "n2"]
    out = net.run("n1", msg("INVITE", "sip:carol@example.com", call_id="c2"), PHONE_A)
    assert [parsed_response(o.data).status for o in out] == [480]


def test_copy_targets_ask_the_silent_owner_again_and_a_stand_in() -> None:
    net = Net(default=("n1", "n2", "n3", "n4"))
    n1 = net.nodes["n1"]
    aor = "sip:bob@example.com"
    # n2 did not confirm: asked again (slow is not dead) and, beside it, one stand-in.
    assert n1.copy_targets(aor, ["n2"], set()) == ["n2", *n1.stand_ins(aor, 1, ["n2"])]
    # A stand-in that confirmed is a holder: nothing more is sent.
    assert n1.copy_targets(aor, ["n2"], {"n3"}) == []
    # Even once n2 is no longer live (a suspect, a member declared dead): it costs a datagram,
    # and a paused host answers; the stand-in is ranked without it.
    del net.live["n2"]
    targets = n1.copy_targets(aor, ["n2"], set())
    assert targets[0] == "n2" and len(targets) == 2 and "n1" not in targets


def test_a_query_at_an_owner_with_no_binding_yet_asks_the_other_owner() -> None:
    """As a call does (above): a REGISTER without Contact at an owner that holds nothing for
    the AOR (a co-owner died, or it joined, and the handoff has not reached it) is answered
    by the other owner, with the bindings it holds, not an empty 200."""
    net = Net()
    register_bob(net)  # held by n2 and n3
    net.owners["sip:bob@example.com"] = ["n1", "n2"]  # n3 died; n1 moved up
    del net.live["n3"]
    query = msg(
        "REGISTER",
        "sip:example.com",
        via="SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-q1;rport",
        call_id="reg-1",
        cseq=2,
    )
    out = net.run("n1", query, PHONE_B)
    assert len(out) == 1 and (out[0].host, out[0].port) == PHONE_B
    answer = parsed_response(out[0].data)
    assert answer.status == 200 and answer.get_all("contact")
    # Nobody has carol: one empty 200, and the query does not loop between the owners.
    net.owners["sip:carol@example.com"] = ["n1", "n2"]
    out = net.run("n1", msg("REGISTER", "sip:example.com", to="<sip:carol@example.com>"), PHONE_A)
    assert [parsed_response(o.data).status for o in out] == [200]
    assert not parsed_response(out[0].data).get_all("contact")
