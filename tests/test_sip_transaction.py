"""The RFC 3261 §17 transaction machines, stepped by hand: every state and every timer of the
INVITE and non-INVITE client and server transactions (with RFC 6026's Accepted states), over
unreliable and reliable transports. No sockets, no clock: `now` is a number we move."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from swimthor.sip import (
    ClientTransaction,
    Deliver,
    Ended,
    Request,
    Response,
    ServerTransaction,
    TimedOut,
    TimerSettings,
    TransactionState,
    Transmit,
    TransportFailed,
    ack_for,
    cancel_for,
    client_key,
    parse_message,
    server_key,
)

T = TimerSettings()  # T1 0.5, T2 4, T4 5, 64*T1 = 32
VIA = "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-sf-abc.def.123"


def request(method: str = "INVITE", via: str = VIA, extra: tuple[str, ...] = ()) -> Request:
    lines = [
        f"{method} sip:bob@10.0.0.9:5080 SIP/2.0",
        f"Via: {via}",
        "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-caller",
        "Route: <sip:10.0.0.7;lr>",
        "Max-Forwards: 69",
        "From: <sip:alice@example.com>;tag=a1",
        "To: <sip:bob@example.com>",
        "Call-ID: call-1",
        f"CSeq: 7 {method}",
        "Contact: <sip:alice@10.0.0.2>",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    parsed = parse_message("\r\n".join(lines).encode())
    assert isinstance(parsed, Request)
    return parsed


def response(status: int, method: str = "INVITE", to_tag: str | None = "b1") -> Response:
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"SIP/2.0 {status} Whatever",
        f"Via: {VIA}",
        "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-caller",
        "From: <sip:alice@example.com>;tag=a1",
        f"To: {to}",
        "Call-ID: call-1",
        f"CSeq: 7 {method}",
        "Content-Length: 0",
        "",
        "",
    ]
    parsed = parse_message("\r\n".join(lines).encode())
    assert isinstance(parsed, Response)
    return parsed


def client(method: str = "INVITE", reliable: bool = False, now: float = 0.0) -> ClientTransaction:
    req = request(method)
    key = client_key("z9hG4bK-sf-abc.def.123", method)
    return ClientTransaction(key, req, req.to_bytes(), reliable=reliable, now=now)


def transmits(outputs: Sequence[object]) -> list[bytes]:
    return [o.data for o in outputs if isinstance(o, Transmit)]


def state(txn: ClientTransaction | ServerTransaction) -> TransactionState:
    """The machine's state now (read through a call: mypy would carry what one assert said of
    `txn.state` past the calls that change it)."""
    return txn.state


def run_timers(txn: ClientTransaction | ServerTransaction, until: float) -> list[float]:
    """Fire every timer up to `until`; the times at which something was transmitted."""
    sent = []
    while txn.deadline is not None and txn.deadline <= until:
        at = txn.deadline
        if transmits(txn.on_timer(at)):
            sent.append(at)
    return sent


# ====================================================================== INVITE client


def test_invite_client_retransmits_on_timer_a_doubling_until_timer_b() -> None:
    txn = client()
    assert transmits(txn.start()) == [txn.data]
    assert state(txn) is TransactionState.CALLING
    # Timer A: T1, then doubling (0.5, 1.5, 3.5, 7.5, 15.5, 31.5); timer B at 64*T1 = 32.
    assert run_timers(txn, 31.9) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert txn.deadline == 32.0
    assert txn.on_timer(32.0) == [TimedOut(), Ended()]
    assert state(txn) is TransactionState.TERMINATED
    assert txn.deadline is None


def test_invite_client_provisional_stops_retransmissions_and_timer_b() -> None:
    txn = client()
    txn.start()
    out = txn.receive(response(180), 0.2)
    assert [type(o) for o in out] == [Deliver] and state(txn) is TransactionState.PROCEEDING
    assert txn.deadline is None  # no A, no B: timer C is the proxy's
    assert [type(o) for o in txn.receive(response(183), 5.0)] == [Deliver]
    assert state(txn) is TransactionState.PROCEEDING


def test_invite_client_non_2xx_is_acked_and_absorbed_until_timer_d() -> None:
    txn = client()
    txn.start()
    txn.receive(response(180), 0.1)
    out = txn.receive(response(486), 1.0)
    assert state(txn) is TransactionState.COMPLETED
    (ack,) = transmits(out)
    assert [type(o) for o in out] == [Transmit, Deliver]
    parsed = parse_message(ack)
    assert isinstance(parsed, Request) and parsed.method == "ACK"
    # §17.1.1.3: same Request-URI, top Via only, To from the response, CSeq number, Route.
    assert parsed.uri_text == "sip:bob@10.0.0.9:5080"
    assert [v.text for v in parsed.vias] == [VIA]
    assert parsed.to_tag == "b1"
    assert parsed.cseq == (7, "ACK")
    assert parsed.get_all("route") == ["<sip:10.0.0.7;lr>"]
    assert parsed.get("contact") is None
    # A retransmitted final gets the ACK again and nothing goes up.
    again = txn.receive(response(486), 5.0)
    assert again == [Transmit(ack)]
    # Timer D: 32 s over UDP.
    assert txn.deadline == 33.0
    assert txn.on_timer(33.0) == [Ended()]
    assert state(txn) is TransactionState.TERMINATED


def test_invite_client_2xx_goes_up_and_ends_it() -> None:
    txn = client()
    txn.start()
    out = txn.receive(response(200), 0.3)
    # No ACK for a 2xx (that is end to end); the transaction ends (§17.1.1.2): the proxy
    # forwards retransmitted 2xx statelessly, on the MAC of its branch.
    assert [type(o) for o in out] == [Deliver, Ended]
    assert state(txn) is TransactionState.TERMINATED and txn.deadline is None
    assert txn.receive(response(200), 1.0) == []


def test_invite_client_over_tcp_never_retransmits_and_ends_at_once_after_a_final() -> None:
    txn = client(reliable=True)
    txn.start()
    assert txn.deadline == 32.0  # only timer B
    out = txn.receive(response(404), 1.0)
    assert [type(o) for o in out] == [Transmit, Deliver, Ended]


def test_client_transport_error_fails_it_once() -> None:
    txn = client()
    txn.start()
    assert txn.transport_error() == [TransportFailed(), Ended()]
    assert txn.transport_error() == []
    assert state(txn) is TransactionState.TERMINATED


# ====================================================================== non-INVITE client


def test_non_invite_client_timer_e_doubles_to_t2_and_timer_f_ends_it() -> None:
    txn = client("OPTIONS")
    assert state(txn) is TransactionState.TRYING
    txn.start()
    # E: 0.5, then 1, 2, 4, 4, 4 ... (capped at T2); F at 32.
    sent = run_timers(txn, 31.9)
    assert sent[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert all(b - a == 4.0 for a, b in itertools.pairwise(sent[3:]))
    assert txn.on_timer(32.0) == [TimedOut(), Ended()]


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    txn = client("OPTIONS")
    txn.start()
    txn.on_timer(0.5)  # E fired once: next at 1.5
    assert [type(o) for o in txn.receive(response(100, "OPTIONS"), 0.6)] == [Deliver]
    assert state(txn) is TransactionState.PROCEEDING
    assert txn.deadline == 1.5
    txn.on_timer(1.5)
    assert txn.deadline == 5.5  # T2 from now on (§17.1.2.2)


def test_non_invite_client_final_then_timer_k() -> None:
    txn = client("OPTIONS")
    txn.start()
    out = txn.receive(response(200, "OPTIONS"), 1.0)
    assert [type(o) for o in out] == [Deliver] and state(txn) is TransactionState.COMPLETED
    assert txn.receive(response(200, "OPTIONS"), 2.0) == []  # absorbed
    assert txn.deadline == 6.0  # K = T4
    assert txn.on_timer(6.0) == [Ended()]
    reliable = client("OPTIONS", reliable=True)
    reliable.start()
    assert [type(o) for o in reliable.receive(response(200, "OPTIONS"), 1.0)] == [Deliver, Ended]


# ====================================================================== INVITE server


def server(method: str = "INVITE", reliable: bool = False) -> ServerTransaction:
    req = request(method, via="SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-caller")
    return ServerTransaction(server_key(req), req, reliable=reliable, now=0.0)


def test_invite_server_resends_the_last_provisional_on_a_retransmission() -> None:
    txn = server()
    assert txn.request is not None
    assert state(txn) is TransactionState.PROCEEDING
    assert txn.receive_request(txn.request, 0.1) == []  # nothing sent yet
    assert txn.respond(100, b"100", 0.1) == [Transmit(b"100")]
    assert txn.respond(180, b"180", 0.2) == [Transmit(b"180")]
    assert txn.receive_request(txn.request, 0.6) == [Transmit(b"180")]


def test_invite_server_non_2xx_retransmits_on_timer_g_until_the_ack() -> None:
    txn = server()
    assert txn.request is not None
    txn.respond(486, b"486", 1.0)
    assert state(txn) is TransactionState.COMPLETED
    # G: T1, then doubling to T2: 1.5, 2.5, 4.5, 8.5, 12.5 ...
    sent = run_timers(txn, 12.6)
    assert sent == [1.5, 2.5, 4.5, 8.5, 12.5]
    assert txn.receive_request(txn.request, 13.0) == [Transmit(b"486")]  # INVITE again
    ack = request("ACK", via="SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-caller")
    assert server_key(ack) == txn.key
    assert txn.receive_request(ack, 14.0) == []
    assert state(txn) is TransactionState.CONFIRMED
    assert txn.deadline == 19.0  # timer I = T4
    assert txn.receive_request(ack, 15.0) == []  # absorbed
    assert txn.on_timer(19.0) == [Ended()]


def test_invite_server_timer_h_ends_it_when_no_ack_comes() -> None:
    txn = server()
    txn.respond(404, b"404", 0.0)
    run_timers(txn, 31.9)
    assert txn.on_timer(32.0) == [TimedOut(), Ended()]
    assert state(txn) is TransactionState.TERMINATED


def test_invite_server_2xx_accepted_absorbs_retransmissions_and_passes_more_2xx() -> None:
    txn = server()
    assert txn.request is not None
    txn.respond(180, b"180", 0.0)
    assert txn.respond(200, b"200a", 1.0) == [Transmit(b"200a")]
    assert state(txn) is TransactionState.ACCEPTED
    assert txn.last is None  # nothing to answer a retransmission with: not kept for 32 s
    assert txn.receive_request(txn.request, 2.0) == []  # RFC 6026: absorbed
    assert txn.respond(200, b"200b", 3.0) == [Transmit(b"200b")]  # another branch's 2xx
    assert txn.respond(486, b"486", 3.0) == []  # no non-2xx after a 2xx
    assert txn.deadline == 33.0  # timer L
    assert txn.on_timer(33.0) == [Ended()]


def test_invite_server_over_tcp_has_no_timer_g_and_ends_on_the_ack() -> None:
    txn = server(reliable=True)
    txn.respond(486, b"486", 0.0)
    assert txn.deadline == 32.0  # only H
    ack = request("ACK", via="SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-caller")
    assert txn.receive_request(ack, 1.0) == [Ended()]


# ====================================================================== non-INVITE server


def test_non_invite_server_trying_proceeding_completed_and_timer_j() -> None:
    txn = server("MESSAGE")
    assert txn.request is not None
    assert state(txn) is TransactionState.TRYING
    assert txn.receive_request(txn.request, 0.1) == []  # absorbed while Trying
    assert txn.respond(100, b"100", 0.2) == [Transmit(b"100")]
    assert state(txn) is TransactionState.PROCEEDING
    assert txn.receive_request(txn.request, 0.3) == [Transmit(b"100")]
    assert txn.respond(200, b"200", 1.0) == [Transmit(b"200")]
    assert state(txn) is TransactionState.COMPLETED
    assert txn.respond(500, b"500", 1.1) == []  # one final only
    assert txn.receive_request(txn.request, 2.0) == [Transmit(b"200")]
    assert txn.deadline == 33.0  # J = 64*T1
    assert txn.on_timer(33.0) == [Ended()]
    tcp = server("MESSAGE", reliable=True)
    assert tcp.respond(200, b"200", 0.0) == [Transmit(b"200"), Ended()]


# ====================================================================== keys and messages


def test_server_keys_follow_17_2_3() -> None:
    invite = request("INVITE", via="SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKx1")
    ack = request("ACK", via="SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKx1")
    cancel = request("CANCEL", via="SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKx1")
    other_host = request("INVITE", via="SIP/2.0/UDP 10.0.0.3:5060;branch=z9hG4bKx1")
    assert server_key(invite) == server_key(ack) == ("z9hG4bKx1", "10.0.0.2:5060", "INVITE")
    assert server_key(cancel) == ("z9hG4bKx1", "10.0.0.2:5060", "CANCEL")
    assert server_key(other_host) != server_key(invite)
    # RFC 2543 clients (no magic cookie): Request-URI, From tag, Call-ID, CSeq, Via, method;
    # their ACK (with the To tag of our answer) matches the INVITE.
    old = request("INVITE", via="SIP/2.0/UDP 10.0.0.2:5060;branch=1234")
    old_ack = request("ACK", via="SIP/2.0/UDP 10.0.0.2:5060;branch=1234")
    assert server_key(old)[0] == "2543" and server_key(old) == server_key(old_ack)
    assert client_key("z9hG4bK-sf-a", "ACK") == ("z9hG4bK-sf-a", "INVITE")


def test_cancel_copies_what_9_1_says() -> None:
    cancel = cancel_for(request("INVITE"))
    assert cancel.method == "CANCEL" and cancel.uri_text == "sip:bob@10.0.0.9:5080"
    assert [v.text for v in cancel.vias] == [VIA]
    assert cancel.cseq == (7, "CANCEL")
    assert cancel.get_all("route") == ["<sip:10.0.0.7;lr>"]
    assert cancel.to_tag is None and cancel.get("contact") is None
    again = parse_message(cancel.to_bytes())
    assert isinstance(again, Request) and again.method == "CANCEL"


def test_ack_of_a_joined_via_line_keeps_only_the_top_hop() -> None:
    joined = request(via=f"{VIA}, SIP/2.0/UDP 10.0.0.3;branch=z9hG4bKlow")
    ack = parse_message(ack_for(joined, response(404)))
    assert isinstance(ack, Request) and [v.text for v in ack.vias] == [VIA]
