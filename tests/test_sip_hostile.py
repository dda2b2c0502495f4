"""Hostile input to one SIP node on real loopback sockets (UDP and TCP on one port).

Each test sends something broken, oversized, slow or forged, and checks two things: the exact
RFC 3261 answer (or that there was none), and that the node keeps serving: a valid REGISTER,
from the same socket and from another one, is still answered 200.

"No answer" is checked without waiting out a timeout: the node reads datagrams in order on one
UDP loop, so after a hostile datagram we send a valid REGISTER from the same socket, and the
first datagram back must be that REGISTER's 200 (`answer_to`).

Rules (after trio-websocket's tests): the node under test is the `node` fixture, started with
`nursery.start` and serving until the test's nursery is cancelled, and `client` is a UDP
socket talking to it; a test that needs another configuration starts its own with
`sip_node(config)`. Every test is `@bounded`: an absolute `trio.fail_after(LIMIT)` around
its body. The tests of TCP timers (slow, dribbling, idle peers, floods) run under
`autojump_clock`: the node's deadlines are trio's, so they fire in virtual time, exactly when
configured, and are asserted to the configured value. (Real loopback I/O stays correct
under the jumping clock: the kernel delivers at once, and trio only jumps when no socket is
ready.)
"""

from __future__ import annotations

import functools
import random
import socket as stdsocket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, ParamSpec

import pytest
import trio
from sip_helpers import (
    DOMAIN,
    Node,
    Reply,
    UdpClient,
    answer_to,
    assert_serving,
    build,
    hostport,
    read_reply,
    read_tcp_message,
    register,
    request_headers,
    serve_node,
    sip_node,
    tcp_register_ok,
    unique,
    wait_closed,
    without,
)

from swimthor.sip import (
    BRANCH_PREFIX,
    Request,
    SipTransportConfig,
    loop_hash,
    parse_message,
    parse_via,
)

LIMIT = 10  # seconds, for every test

P = ParamSpec("P")


def bounded(test: Callable[P, Awaitable[None]]) -> Callable[P, Coroutine[Any, Any, None]]:
    """The test's body under an absolute `trio.fail_after(LIMIT)`."""

    @functools.wraps(test)
    async def run(*args: P.args, **kwargs: P.kwargs) -> None:
        with trio.fail_after(LIMIT):
            await test(*args, **kwargs)

    return run


@pytest.fixture
async def node(nursery: trio.Nursery) -> Node:
    """One node with the default transport configuration, serving UDP and TCP on one port."""
    started: Node = await nursery.start(serve_node)
    return started


@pytest.fixture
async def client(node: Node) -> AsyncIterator[UdpClient]:
    """A UDP socket on the loopback talking to `node`."""
    async with UdpClient(node) as udp:
        yield udp


def _stats(node: Node) -> dict[str, int]:
    return {**{f"server.{k}": v for k, v in node.server.stats.items()}, **node.proxy.stats}


def _delta(before: dict[str, int], node: Node) -> dict[str, int]:
    after = _stats(node)
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def _invite(client: UdpClient, user: str, extra: list[tuple[str, str]] | None = None) -> bytes:
    headers = request_headers(
        "INVITE", client.addr, contact=f"<sip:caller@{hostport(*client.addr)}>"
    )
    headers = [*headers, *(extra or [])]
    return build(f"INVITE sip:{user}@{DOMAIN} SIP/2.0", headers)


async def _register_contact(node: Node, user: str, contact: tuple[str, int]) -> None:
    async with UdpClient(node) as client:
        reply = await client.ask(
            register(client.addr, user=user, contact=f"<sip:{user}@{hostport(*contact)}>")
        )
        assert reply.status == 200, reply.start


def _assert_response_to(reply: Reply, data: bytes) -> None:
    """The response copies the request's Via, Call-ID and CSeq (RFC 3261 §8.2.6.2)."""
    request = read_reply(data)
    assert reply.get_all("via") == request.get_all("via")
    for name in ("call-id", "cseq"):
        if request.get(name) is not None:
            assert reply.get(name) == request.get(name), name


# ====================================================================== malformed datagrams


@pytest.mark.parametrize(
    "cut",
    ["no blank line", "mid header line", "start line only", "mid start line"],
)
@bounded
async def test_truncated_datagram_is_dropped(cut: str, node: Node, client: UdpClient) -> None:
    whole = register(client.addr)
    head = whole.split(b"\r\n\r\n")[0]
    data = {
        "no blank line": head + b"\r\n",
        "mid header line": head[: head.index(b"Call-ID") + 5],
        "start line only": head.split(b"\r\n")[0] + b"\r\n",
        "mid start line": head[:12],
    }[cut]
    before = _stats(node)
    assert await answer_to(client, data) is None
    delta = _delta(before, node)
    assert delta.get("parse_errors") == 1
    assert delta.get("dropped") == 1
    assert "server.handler_errors" not in delta
    await assert_serving(node)


@bounded
async def test_random_binary_junk_is_dropped(node: Node, client: UdpClient) -> None:
    junk: list[bytes] = []
    for seed in range(10):
        rng = random.Random(seed)
        blob = rng.randbytes(rng.randint(1, 1400))
        junk.append(blob)
        junk.append(blob + b"\r\n\r\n")  # past the end-of-headers check
        junk.append(b"REGISTER sip:example.com SIP/2.0\r\n" + blob + b"\r\n\r\n")
    before = _stats(node)
    for blob in junk:
        await client.send(blob)
    assert await answer_to(client, b"\x00\xff") is None
    delta = _delta(before, node)
    assert delta.get("parse_errors") == len(junk) + 1
    assert delta.get("dropped") == len(junk) + 1
    assert "server.handler_errors" not in delta
    assert delta["server.udp_received"] == len(junk) + 2
    await assert_serving(node)


@pytest.mark.parametrize(
    "damage",
    [b"\r\nSubject: \xff\xfe\r\n", b"\r\nno colon here\r\n", b"\r\nBad Name: x\r\n"],
    ids=["not utf-8", "no colon", "space in name"],
)
@bounded
async def test_unreadable_header_line_is_dropped(
    damage: bytes, node: Node, client: UdpClient
) -> None:
    """A header section that is not SIP's grammar is not read further: dropped."""
    data = register(client.addr).replace(b"\r\n", damage, 1)
    before = _stats(node)
    assert await answer_to(client, data) is None
    assert (
        _delta(before, node).get("parse_errors"),
        node.server.stats["handler_errors"],
    ) == (1, 0)
    await assert_serving(node)


@bounded
async def test_missing_via_is_dropped(node: Node, client: UdpClient) -> None:
    """No Via: nowhere to send a response (§8.2.6.2, §18.2.2), so nothing is sent."""
    headers = without(request_headers("OPTIONS", client.addr), "Via")
    data = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers)
    before = _stats(node)
    assert await answer_to(client, data) is None
    assert _delta(before, node).get("dropped") == 1
    await assert_serving(node)


@pytest.mark.parametrize("header", ["From", "To", "Call-ID", "CSeq"])
@bounded
async def test_missing_mandatory_header_gets_400_naming_it(
    header: str, node: Node, client: UdpClient
) -> None:
    """§8.1.1 / §21.4.1: a request without one of them is malformed: 400, with a reason
    phrase naming the header, sent where the Via says (§18.2.2)."""
    headers = without(request_headers("OPTIONS", client.addr), header)
    data = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers)
    before = _stats(node)
    reply = await answer_to(client, data)
    assert reply is not None, "no answer"
    assert (reply.status, reply.reason) == (400, f"Missing {header}")
    _assert_response_to(reply, data)
    delta = _delta(before, node)
    assert "server.handler_errors" not in delta
    await assert_serving(node)


@pytest.mark.parametrize("header", ["From", "To"])
@bounded
async def test_unparseable_from_or_to_gets_400(header: str, node: Node, client: UdpClient) -> None:
    """A From or To that is not a name-addr/addr-spec: 400 "Bad From"/"Bad To", and the
    handler must not raise while building it."""
    headers = request_headers("OPTIONS", client.addr)
    headers = [(k, "<sip:broken" if k == header else v) for k, v in headers]
    data = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers)
    before = _stats(node)
    reply = await answer_to(client, data)
    assert "server.handler_errors" not in _delta(before, node)
    assert reply is not None, "no answer"
    assert (reply.status, reply.reason) == (400, f"Bad {header}")
    await assert_serving(node)


@bounded
async def test_ack_with_a_parse_error_is_never_answered(node: Node, client: UdpClient) -> None:
    """§17.1.1.3 / §17.2.1: no response is ever sent to an ACK, not even a 400."""
    headers = without(request_headers("ACK", client.addr), "Call-ID")
    data = build(f"ACK sip:{DOMAIN} SIP/2.0", headers)
    before = _stats(node)
    assert await answer_to(client, data) is None
    assert _delta(before, node).get("parse_errors") == 1
    await assert_serving(node)


# ====================================================================== size bounds


@bounded
async def test_header_longer_than_8k_is_answered_400_when_the_via_is_readable(
    node: Node, client: UdpClient
) -> None:
    """Issue 14: a header line over the limit gets 400, not a silent drop, when what an
    answer copies (Via, From, To, Call-ID, CSeq) can be read."""
    headers = [*request_headers("OPTIONS", client.addr), ("Subject", "x" * 8_300)]
    data = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers)
    before = _stats(node)
    reply = await answer_to(client, data)
    assert reply is not None and reply.status == 400, reply
    delta = _delta(before, node)
    assert delta.get("parse_errors") == 1 and not delta.get("dropped")
    _assert_response_to(reply, data)
    await assert_serving(node)


@bounded
async def test_more_than_200_headers_is_dropped(node: Node, client: UdpClient) -> None:
    pads = [(f"X-Pad-{i}", "v") for i in range(200)]
    headers = [*request_headers("OPTIONS", client.addr), *pads]
    data = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers)
    before = _stats(node)
    assert await answer_to(client, data) is None
    delta = _delta(before, node)
    assert (delta.get("parse_errors"), delta.get("dropped")) == (1, 1)
    await assert_serving(node)


@bounded
async def test_200_headers_is_still_served(node: Node, client: UdpClient) -> None:
    """The bound is exactly 200: a request with 200 header lines is answered."""
    headers = request_headers("OPTIONS", client.addr)
    headers += [(f"X-Pad-{i}", "v") for i in range(199 - len(headers))]
    data = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers)  # + Content-Length = 200
    reply = await answer_to(client, data)
    assert reply is not None and reply.status == 200, reply


def _ipv6_loopback() -> bool:
    try:
        with stdsocket.socket(stdsocket.AF_INET6, stdsocket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="needs ::1 (IPv4 cannot carry >65,507 bytes)")
@bounded
async def test_datagram_larger_than_max_is_dropped() -> None:
    """65,507 bytes is the bound (the IPv4 UDP ceiling); over IPv6 a larger datagram can
    arrive, and it is dropped before parsing."""
    async with sip_node(host="::1") as node, UdpClient(node) as client:
        headers = request_headers("OPTIONS", client.addr)
        empty = len(build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers, b"x" * 10_000)) - 10_000
        size = 65_520  # over the bound, under the IPv6 UDP ceiling (65,527)
        data = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers, b"x" * (size - empty))
        assert len(data) == size
        before = _stats(node)
        assert await answer_to(client, data) is None
        delta = _delta(before, node)
        assert delta["server.udp_received"] == 2
        assert "parse_errors" not in delta  # never reached the parser
        await assert_serving(node)


@bounded
async def test_tcp_content_length_over_the_bound_closes_the_connection(
    node: Node,
    autojump_clock: trio.abc.Clock,
) -> None:
    stream = await trio.open_tcp_stream(node.host, node.port)
    async with stream:
        local = stream.socket.getsockname()
        headers = request_headers("OPTIONS", local, transport="TCP")
        data = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers, content_length="70000")
        await stream.send_all(data)
        assert await wait_closed(stream) == 0.0  # at once: no timer ran
    assert node.server.stats["tcp_bad_frames"] == 1
    await tcp_register_ok(node)
    await assert_serving(node)


@bounded
async def test_tcp_headers_without_end_over_the_bound_close_the_connection(
    node: Node,
    autojump_clock: trio.abc.Clock,
) -> None:
    stream = await trio.open_tcp_stream(node.host, node.port)
    async with stream:
        await stream.send_all(b"OPTIONS sip:example.com SIP/2.0\r\n")
        try:
            for _ in range(70):
                await stream.send_all(b"X-Pad: " + b"y" * 1000 + b"\r\n")
        except trio.BrokenResourceError:
            pass
        assert await wait_closed(stream) == 0.0  # at once: no timer ran
    assert node.server.stats["tcp_bad_frames"] == 1
    await tcp_register_ok(node)


# ====================================================================== Max-Forwards


@bounded
async def test_max_forwards_zero_on_invite_to_registered_aor_gets_483(node: Node) -> None:
    """§16.3 step 3: Max-Forwards 0 and the request must be forwarded: 483, nothing sent on.
    Then the same INVITE with 70 reaches the contact with 69: the first thing it receives."""
    async with UdpClient(node) as callee, UdpClient(node) as caller:
        user = unique("bob")
        await _register_contact(node, user, callee.addr)
        zero = _invite(caller, user, [("Max-Forwards", "0")])
        zero = zero.replace(b"Max-Forwards: 70\r\n", b"")
        reply = await answer_to(caller, zero)
        assert reply is not None
        assert (reply.status, reply.reason) == (483, "Too Many Hops")
        _assert_response_to(reply, zero)
        ok = _invite(caller, user)
        await caller.send(ok)
        forwarded = read_reply((await callee.recv()) or b"")
        assert forwarded.method == "INVITE"
        assert forwarded.get("call-id") == read_reply(ok).get("call-id")
        assert forwarded.get("max-forwards") == "69"
        await assert_serving(node)


@bounded
async def test_max_forwards_zero_on_invite_to_unregistered_aor_gets_483(node: Node) -> None:
    """§16.3 step 3 comes before target determination (§16.5): 483, not 480, even when the
    AOR has no binding."""
    async with UdpClient(node) as caller:
        data = _invite(caller, unique("nobody")).replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
        reply = await answer_to(caller, data)
        assert reply is not None
        assert (reply.status, reply.reason) == (483, "Too Many Hops")


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "-1",
        "1.5",
        "",
        "0x10",
        pytest.param("\u00b2", id="superscript-2"),  # isdigit() is True, int() raises
        pytest.param("\u0663", id="arabic-indic-3"),  # isdigit() and int() accept it
    ],
)
@bounded
async def test_max_forwards_not_a_number_gets_400(value: str, node: Node) -> None:
    """Max-Forwards is 1*DIGIT, ASCII digits only (§25.1): anything else is a 400."""
    async with UdpClient(node) as caller:
        data = _invite(caller, unique("bob")).replace(
            b"Max-Forwards: 70", f"Max-Forwards: {value}".encode()
        )
        reply = await answer_to(caller, data)
        assert reply is not None
        assert (reply.status, reply.reason) == (400, "Bad Max-Forwards")
        _assert_response_to(reply, data)
        await assert_serving(node)


# ====================================================================== Content-Length


@bounded
async def test_udp_content_length_larger_than_body_gets_400(node: Node, client: UdpClient) -> None:
    """§18.3: over UDP a Content-Length larger than the body that arrived is a 400."""
    headers = request_headers("OPTIONS", client.addr)
    data = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers, b"abc", content_length="10")
    reply = await answer_to(client, data)
    assert reply is not None
    assert (reply.status, reply.reason) == (400, "Content-Length Larger Than Body")
    _assert_response_to(reply, data)
    await assert_serving(node)


@pytest.mark.parametrize("value", ["-1", "abc", "", "1e3"])
@bounded
async def test_udp_bad_content_length_gets_400(value: str, node: Node, client: UdpClient) -> None:
    headers = request_headers("OPTIONS", client.addr)
    data = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers, content_length=value)
    reply = await answer_to(client, data)
    assert reply is not None
    assert (reply.status, reply.reason) == (400, "Bad Content-Length")
    await assert_serving(node)


@bounded
async def test_udp_body_beyond_content_length_is_discarded(node: Node, client: UdpClient) -> None:
    """§18.3: over UDP, bytes past Content-Length are discarded, and the request served."""
    data = register(client.addr) + b"trailing junk \x00\xff"
    reply = await answer_to(client, data)
    assert reply is not None and reply.status == 200, reply


@pytest.mark.parametrize("value", ["-1", "abc"])
@bounded
async def test_tcp_bad_content_length_closes_without_answer(value: str) -> None:
    """Over a stream a bad Content-Length loses the framing: the connection is closed at once
    (no 400: the server cannot tell where the next message would start)."""
    config = SipTransportConfig(tcp_message_time=5.0, tcp_idle=5.0)
    async with sip_node(config) as node:
        stream = await trio.open_tcp_stream(node.host, node.port)
        async with stream:
            local = stream.socket.getsockname()
            headers = request_headers("OPTIONS", local, transport="TCP")
            data = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers, content_length=value)
            await stream.send_all(data)
            got = bytearray()
            with trio.move_on_after(2.0) as scope:
                try:
                    while chunk := await stream.receive_some(65_536):
                        got += chunk
                except trio.BrokenResourceError:
                    pass
            assert not scope.cancelled_caught, "connection not closed"
            assert bytes(got) == b""
        assert node.server.stats["tcp_bad_frames"] == 1
        await tcp_register_ok(node)


@bounded
async def test_tcp_missing_content_length_gets_400(node: Node) -> None:
    """§18.3 / §20.14: Content-Length is mandatory on a stream."""
    stream = await trio.open_tcp_stream(node.host, node.port)
    async with stream:
        local = stream.socket.getsockname()
        headers = request_headers("OPTIONS", local, transport="TCP")
        data = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers, content_length=None)
        await stream.send_all(data)
        reply = await read_tcp_message(stream, bytearray())
        assert (reply.status, reply.reason) == (400, "Missing Content-Length")
    await tcp_register_ok(node)


async def _answers_until(
    stream: trio.SocketStream, buf: bytearray, answers: dict[str, int], call_id: str
) -> None:
    """Record Call-ID -> status of every answer on `stream` until the one for `call_id`
    arrives or the server closes the connection."""
    try:
        while call_id not in answers:
            reply = await read_tcp_message(stream, buf)
            answers[reply.get("call-id") or ""] = reply.status
    except (AssertionError, trio.BrokenResourceError):
        pass  # closed


_LENGTH_TRICKS = {
    # §7.3.1: a line that starts with whitespace continues the header before it.
    "folded": [("Subject", "hello\r\n Content-Length: 0")],
    # Not a header line at all (VT is not LWS): the parser rejects the header section.
    "vt-before-colon": [("Content-Length\x0b", "0")],
    # Content-Length is single-valued (§7.3.1, §20.14): two values are malformed.
    "compact-and-full": [("l", "0")],
    "two-full": [("Content-Length", "0")],
}


@pytest.mark.parametrize(
    "trick",
    [
        "folded",
        "vt-before-colon",
        "compact-and-full",
        "two-full",
    ],
)
@bounded
async def test_tcp_body_is_never_handled_as_a_request(trick: str, node: Node) -> None:
    """Framing and parsing must agree on where a message ends: the body (here, bytes that
    look like a request) must never be answered as a request. A 400, a drop or a close are
    all fine; answering the hidden request is not."""
    stream = await trio.open_tcp_stream(node.host, node.port)
    async with stream:
        local = stream.socket.getsockname()
        hidden = build(
            f"OPTIONS sip:{DOMAIN} SIP/2.0",
            request_headers("OPTIONS", local, transport="TCP", call_id="hidden"),
        )
        headers = request_headers("OPTIONS", local, transport="TCP", call_id="outer")
        headers[1:1] = _LENGTH_TRICKS[trick]
        outer = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers, hidden)
        follow = build(
            f"OPTIONS sip:{DOMAIN} SIP/2.0",
            request_headers("OPTIONS", local, transport="TCP", call_id="follow"),
        )
        await stream.send_all(outer + follow)
        # Each answer is written by its own task, so they may come in any order; an
        # answer queued before "follow"'s is surely out before "sync"'s, which is only
        # sent once "follow" is answered.
        buf = bytearray()
        answers: dict[str, int] = {}
        await _answers_until(stream, buf, answers, "follow")
        if "follow" in answers:
            sync = build(
                f"OPTIONS sip:{DOMAIN} SIP/2.0",
                request_headers("OPTIONS", local, transport="TCP", call_id="sync"),
            )
            await stream.send_all(sync)
            await _answers_until(stream, buf, answers, "sync")
        assert "hidden" not in answers, answers
        if trick == "folded":  # well-formed: answered once, as one message
            assert answers == {"outer": 200, "follow": 200, "sync": 200}, answers
    await tcp_register_ok(node)


@bounded
async def test_udp_two_content_lengths_get_400(node: Node, client: UdpClient) -> None:
    """§7.3.1: Content-Length may appear once; two different values are malformed (400)."""
    headers = [*request_headers("OPTIONS", client.addr), ("Content-Length", "3")]
    data = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers, b"abc", content_length="0")
    reply = await answer_to(client, data)
    assert reply is not None and reply.status == 400, reply


@bounded
async def test_tcp_content_length_larger_than_sent_closes_after_message_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = SipTransportConfig(tcp_message_time=0.3, tcp_idle=3.0)
    async with sip_node(config) as node:
        stream = await trio.open_tcp_stream(node.host, node.port)
        async with stream:
            local = stream.socket.getsockname()
            headers = request_headers("OPTIONS", local, transport="TCP")
            data = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers, b"0123456789")
            data = data.replace(b"Content-Length: 10", b"Content-Length: 100")
            await stream.send_all(data)
            async with trio.open_nursery() as nursery:
                took: list[float] = []

                async def watch() -> None:
                    took.append(await wait_closed(stream))

                nursery.start_soon(watch)
                await tcp_register_ok(node)  # served while the other one waits
                await assert_serving(node)
        assert took[0] == pytest.approx(0.3), took  # tcp_message_time (virtual time)
        assert node.server.stats["tcp_closed_slow"] == 1
        assert node.server.stats["tcp_closed_idle"] == 0


# ====================================================================== scheme, extensions, methods


@pytest.mark.parametrize("uri", ["mailto:bob@example.com", "http://example.com/", "urn:x:y"])
@bounded
async def test_non_sip_request_uri_gets_416(uri: str, node: Node, client: UdpClient) -> None:
    headers = request_headers("INVITE", client.addr)
    data = build(f"INVITE {uri} SIP/2.0", headers)
    reply = await answer_to(client, data)
    assert reply is not None
    assert (reply.status, reply.reason) == (416, "Unsupported URI Scheme")
    _assert_response_to(reply, data)
    assert "tag=" in (reply.get("to") or "")  # §8.2.6.2: the UAS adds a To tag
    await assert_serving(node)


@bounded
async def test_proxy_require_unknown_gets_420_with_unsupported(
    node: Node, client: UdpClient
) -> None:
    """§16.3 step 5 / §8.2.2.3: 420 Bad Extension, Unsupported listing each unknown tag."""
    data = _invite(client, unique("bob"), [("Proxy-Require", "foo, bar")])
    reply = await answer_to(client, data)
    assert reply is not None
    assert (reply.status, reply.reason) == (420, "Bad Extension")
    tags = {t.strip() for v in reply.get_all("unsupported") for t in v.split(",")}
    assert tags == {"foo", "bar"}
    _assert_response_to(reply, data)
    await assert_serving(node)


@bounded
async def test_register_require_unknown_gets_420(node: Node, client: UdpClient) -> None:
    user = unique("alice")
    data = register(client.addr, user=user, extra=[("Require", "foo")])
    reply = await answer_to(client, data)
    assert reply is not None
    assert (reply.status, reply.reason) == (420, "Bad Extension")
    assert reply.get("unsupported") == "foo"
    assert reply.get_all("contact") == []  # nothing was registered
    await assert_serving(node)


@bounded
async def test_invite_require_is_forwarded_not_refused(node: Node) -> None:
    """Require is for the UAS (§8.2.2.3); a proxy only checks Proxy-Require (§16.3 step 5)."""
    async with UdpClient(node) as callee, UdpClient(node) as caller:
        user = unique("bob")
        await _register_contact(node, user, callee.addr)
        await caller.send(_invite(caller, user, [("Require", "foo")]))
        forwarded = read_reply((await callee.recv()) or b"")
        assert forwarded.method == "INVITE"
        assert forwarded.get("require") == "foo"


@bounded
async def test_unknown_method_gets_405_with_allow(node: Node, client: UdpClient) -> None:
    headers = request_headers("FOO", client.addr)
    data = build(f"FOO sip:{DOMAIN} SIP/2.0", headers)
    reply = await answer_to(client, data)
    assert reply is not None
    assert (reply.status, reply.reason) == (405, "Method Not Allowed")
    allow = {m.strip() for v in reply.get_all("allow") for m in v.split(",")}
    assert {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"} <= allow
    assert "FOO" not in allow
    _assert_response_to(reply, data)
    await assert_serving(node)


@bounded
async def test_request_that_already_passed_here_gets_482(node: Node, client: UdpClient) -> None:
    """§16.3 step 4: our own Via with this request's loop hash in its branch: 482."""
    data = _invite(client, unique("bob"))
    parsed = parse_message(data)
    assert isinstance(parsed, Request)
    loop = loop_hash(parsed)
    ours = f"SIP/2.0/UDP {hostport(*node.addr)};branch=z9hG4bK-st-0123456789abcdef.{loop}.0"
    data = data.replace(b"\r\nMax-Forwards", f"\r\nVia: {ours}\r\nMax-Forwards".encode())
    reply = await answer_to(client, data)
    assert reply is not None
    assert (reply.status, reply.reason) == (482, "Loop Detected")
    await assert_serving(node)


# ====================================================================== slow and many TCP peers


@bounded
async def test_tcp_half_message_closed_after_message_time_while_others_served(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = SipTransportConfig(tcp_message_time=0.3, tcp_idle=3.0)
    async with sip_node(config) as node:
        slow = await trio.open_tcp_stream(node.host, node.port)
        async with slow:
            local = slow.socket.getsockname()
            data = register((local[0], local[1]), transport="TCP")
            await slow.send_all(data[: len(data) // 2])
            took: list[float] = []
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    took.append(await wait_closed(slow))

                nursery.start_soon(watch)
                await tcp_register_ok(node)
                await assert_serving(node)
                assert not took, "closed before the others were served"
        assert took[0] == pytest.approx(0.3), took  # tcp_message_time (virtual time)
        stats = node.server.stats
        assert (stats["tcp_closed_slow"], stats["tcp_closed_idle"]) == (1, 0)
        await tcp_register_ok(node)


@bounded
async def test_tcp_dribbling_peer_is_closed_although_never_idle(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A slowloris that sends a few bytes every 0.1 s (well under tcp_idle) is still closed
    once the message has taken tcp_message_time."""
    config = SipTransportConfig(tcp_message_time=0.8, tcp_idle=0.3)
    async with sip_node(config) as node:
        slow = await trio.open_tcp_stream(node.host, node.port)
        async with slow:
            local = slow.socket.getsockname()
            data = register((local[0], local[1]), transport="TCP")
            took: list[float] = []
            async with trio.open_nursery() as nursery:

                async def dribble() -> None:
                    try:
                        for i in range(0, len(data), 8):
                            await slow.send_all(data[i : i + 8])
                            await trio.sleep(0.1)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass

                async def watch() -> None:
                    took.append(await wait_closed(slow))
                    nursery.cancel_scope.cancel()

                nursery.start_soon(dribble)
                nursery.start_soon(watch)
                await tcp_register_ok(node)
        assert took and took[0] == pytest.approx(0.8), took  # tcp_message_time, never idle
        assert node.server.stats["tcp_closed_slow"] == 1
        assert node.server.stats["tcp_closed_idle"] == 0
        await assert_serving(node)


@bounded
async def test_idle_tcp_connection_closed_after_tcp_idle(autojump_clock: trio.abc.Clock) -> None:
    config = SipTransportConfig(tcp_idle=0.4, tcp_message_time=5.0)
    async with sip_node(config) as node:
        idle = await trio.open_tcp_stream(node.host, node.port)
        async with idle:
            took: list[float] = []
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    took.append(await wait_closed(idle))

                nursery.start_soon(watch)
                await tcp_register_ok(node)
                await assert_serving(node)
        assert took[0] == pytest.approx(0.4), took  # tcp_idle (virtual time)
        stats = node.server.stats
        assert (stats["tcp_closed_idle"], stats["tcp_closed_slow"]) == (1, 0)


@bounded
async def test_crlf_keepalives_keep_a_tcp_connection_open() -> None:
    """RFC 5626 §3.5.1: CRLFCRLF pings reset the idle timer, do not start a message, and
    are each answered with a CRLF pong (§4.4.1)."""
    config = SipTransportConfig(tcp_idle=0.4, tcp_message_time=0.3)
    async with sip_node(config) as node:
        stream = await trio.open_tcp_stream(node.host, node.port)
        async with stream:
            for _ in range(6):
                await stream.send_all(b"\r\n\r\n")
                assert await stream.receive_some(16) == b"\r\n"
                await trio.sleep(0.15)
            local = stream.socket.getsockname()
            await stream.send_all(register((local[0], local[1]), transport="TCP"))
            reply = await read_tcp_message(stream, bytearray())
            assert reply.status == 200, reply.start
        stats = node.server.stats
        assert (stats["tcp_closed_idle"], stats["tcp_closed_slow"]) == (0, 0)


@bounded
async def test_connections_beyond_max_are_refused_while_existing_ones_work(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = SipTransportConfig(max_connections=2)
    async with sip_node(config) as node:
        held = [await trio.open_tcp_stream(node.host, node.port) for _ in range(2)]
        buffers = [bytearray(), bytearray()]

        async def register_on(i: int) -> None:
            local = held[i].socket.getsockname()
            await held[i].send_all(register((local[0], local[1]), transport="TCP"))
            reply = await read_tcp_message(held[i], buffers[i])
            assert reply.status == 200, reply.start

        for i in range(2):
            await register_on(i)  # both accepted and counted
        for _ in range(3):
            extra = await trio.open_tcp_stream(node.host, node.port)
            async with extra:
                assert await wait_closed(extra) == 0.0  # refused at once
        assert node.server.stats["tcp_refused"] == 3
        assert node.server.stats["tcp_accepted"] == 2
        for i in range(2):
            await register_on(i)  # the held ones still work
        await assert_serving(node)  # and UDP
        # Once one closes, a new connection is accepted again.
        await held[0].aclose()
        while True:
            stream = await trio.open_tcp_stream(node.host, node.port)
            try:
                async with stream:
                    local = stream.socket.getsockname()
                    await stream.send_all(register((local[0], local[1]), transport="TCP"))
                    reply = await read_tcp_message(stream, bytearray())
                    assert reply.status == 200
                    break
            except (trio.BrokenResourceError, AssertionError):
                await trio.sleep(0.05)  # refused: the close was not seen yet
        await held[1].aclose()


# ====================================================================== transactions


@bounded
async def test_retransmitted_register_gets_identical_response_bytes(
    node: Node, client: UdpClient
) -> None:
    """§17.2.3: same branch, sent-by and method is the same transaction; the cached final
    response is sent again, byte for byte, and the REGISTER is applied once."""
    data = register(client.addr)
    before = _stats(node)
    first = await client.ask(data)
    again = await client.ask(data)
    assert first.status == 200
    assert again.raw == first.raw
    delta = _delta(before, node)
    assert (delta.get("registers"), delta.get("retransmissions")) == (1, 1)
    await assert_serving(node)


@bounded
async def test_same_branch_with_other_content_is_the_same_transaction(
    node: Node, client: UdpClient
) -> None:
    """§17.2.3: the transaction is matched by branch, sent-by and method, not by content. A
    second REGISTER on the same branch with another Contact gets the first answer again and
    changes nothing."""
    user = unique("carol")
    branch = unique("z9hG4bK-same-")
    first = await client.ask(
        register(client.addr, user=user, branch=branch, contact=f"<sip:{user}@10.0.0.1>")
    )
    assert first.status == 200
    forged = register(client.addr, user=user, branch=branch, contact=f"<sip:{user}@10.6.6.6>")
    again = await client.ask(forged)
    assert again.raw == first.raw
    query = build(
        f"REGISTER sip:{DOMAIN} SIP/2.0",
        request_headers("REGISTER", client.addr, user=user),
    )
    bindings = (await client.ask(query)).get_all("contact")
    assert len(bindings) == 1 and "10.0.0.1" in bindings[0], bindings


@bounded
async def test_junk_flood_from_several_sockets_while_a_client_registers(node: Node) -> None:
    """Three sockets blast random bytes; a client's REGISTERs meanwhile all get 200."""
    done = trio.Event()

    async def flood(seed: int) -> None:
        rng = random.Random(seed)
        async with UdpClient(node) as hostile:
            while not done.is_set():
                for _ in range(50):
                    await hostile.send(rng.randbytes(rng.randint(1, 1200)))
                await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        for seed in range(3):
            nursery.start_soon(flood, seed)
        async with UdpClient(node) as client:
            for _ in range(20):
                reply = await client.register()
                assert reply.status == 200, reply.start
        done.set()
    assert node.server.stats["handler_errors"] == 0
    assert node.proxy.stats["parse_errors"] > 0


@bounded
async def test_response_for_a_foreign_transaction_is_dropped(node: Node) -> None:
    """§16.7 step 1 / §18.1.2: a response whose top Via is not ours is discarded. A control
    response with our Via on top is relayed to the next Via, so the victim socket would have
    seen any of the forged ones before it."""
    async with UdpClient(node) as client, UdpClient(node) as victim:
        me = hostport(*node.addr)
        to_victim = f"SIP/2.0/UDP {hostport(*victim.addr)};branch=z9hG4bK-victim"

        def response(*vias: str) -> bytes:
            headers = [("Via", v) for v in vias] + [
                ("From", f"<sip:a@{DOMAIN}>;tag=1"),
                ("To", f"<sip:b@{DOMAIN}>;tag=2"),
                ("Call-ID", unique("resp-")),
                ("CSeq", "1 INVITE"),
            ]
            return build("SIP/2.0 180 Ringing", headers)

        forged = [
            response(to_victim),  # a UA's transaction, not ours
            response("SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-st-aa.bb", to_victim),
            response(f"SIP/2.0/UDP {me};branch=z9hG4bK-st-aa.bb"),  # ours, no next hop
            response(f"SIP/2.0/UDP {me};branch=z9hG4bK-foreign", to_victim),
            # Ours in form, but made up: no MAC of ours for that next hop. Relaying it
            # would send the victim a response it never asked for.
            response(f"SIP/2.0/UDP {me};branch=z9hG4bK-st-aa.bb.0123456789ab", to_victim),
            response(f"SIP/2.0/UDP {me};branch=z9hG4bK-sf-aa.bb.0123456789ab", to_victim),
            response(f"SIP/2.0/UDP {me};branch=z9hG4bK-st-aa.bb", to_victim),
        ]
        before = _stats(node)
        for data in forged:
            assert await answer_to(client, data) is None
        delta = _delta(before, node)
        assert (delta.get("responses"), delta.get("dropped")) == (7, 7)
        assert delta.get("bad_branch") == 4
        # A branch the node really made for the victim's hop is relayed there.
        real = node.proxy._branch(BRANCH_PREFIX, "cc", "dd", parse_via(to_victim))
        control = response(f"SIP/2.0/UDP {me};branch={real}", to_victim)
        await client.send(control)
        relayed = await victim.reply()
        assert relayed.get("call-id") == read_reply(control).get("call-id")
        assert relayed.get_all("via") == [to_victim]
        await assert_serving(node)


@bounded
async def test_response_goes_to_the_source_when_via_sent_by_lies(
    node: Node, client: UdpClient
) -> None:
    """§18.2.1: a sent-by that differs from the packet's source gets received=<source>, and
    §18.2.2 sends the response there: never to whatever address the sender names (which
    would make the node a reflector)."""
    port = client.addr[1]
    headers = request_headers("OPTIONS", ("127.0.0.2", port))  # not where we are
    data = build(f"OPTIONS sip:{DOMAIN} SIP/2.0", headers)
    reply = await answer_to(client, data)
    assert reply is not None, "the answer went to the Via's sent-by, not to the source"
    assert reply.status == 200
    assert "received=127.0.0.1" in (reply.get("via") or "")
    await assert_serving(node)


@bounded
async def test_a_request_that_waited_past_t1_is_dropped_unread() -> None:
    """Overload defence: a request the kernel received longer ago than `stale_after` has been
    retransmitted by its sender already; it is dropped unread (SO_TIMESTAMP), responses and
    ACKs never are. With stale_after < 0 every request counts as stale."""
    async with sip_node(SipTransportConfig(stale_after=-1.0)) as node, UdpClient(node) as c:
        await c.send(register(c.addr))
        with trio.move_on_after(0.5) as quiet:
            await c.reply()
        assert quiet.cancelled_caught  # no answer
        assert node.server.stats["udp_stale_dropped"] == 1
        assert node.proxy.stats["requests"] == 0
    async with sip_node() as node, UdpClient(node) as c:
        await c.send(register(c.addr))
        assert (await c.reply()).status == 200
        assert node.server.stats["udp_stale_dropped"] == 0
