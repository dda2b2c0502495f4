"""SIP over TLS and WebSocket (RFC 3261 §26, RFC 7118) at one node: REGISTER and a call onto
the flow, client certificates, and hostile input on the new ports (TLS garbage, a stalled
handshake, an upgrade without the sip subprotocol, unmasked and oversized frames, a
connection flood): refused or closed, the node serving the others meanwhile."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from sip_helpers import (
    DOMAIN,
    Node,
    UdpClient,
    assert_serving,
    build,
    read_reply,
    read_tcp_message,
    register,
    request_headers,
    sip_node,
    tcp_register_ok,
    unique,
    wait_closed,
)
from tls_certs import Pki, make_pki
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectConnection,
    Request,
    TextMessage,
)

from swimthor.sip import (
    SipTransportConfig,
    StreamFramer,
    StreamListen,
    TlsFiles,
    TlsStream,
    WsFramer,
    server_tls_context,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _streams(pki: Pki, verify: str = "none") -> tuple[StreamListen, ...]:
    ctx = server_tls_context(TlsFiles(str(pki.cert), str(pki.key), str(pki.ca), verify))
    return (
        StreamListen("tls", ("127.0.0.1", 0), ctx),
        StreamListen("ws", ("127.0.0.1", 0)),
        StreamListen("wss", ("127.0.0.1", 0), ctx),
    )


def _client_ctx(pki: Pki, *, with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if with_cert:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


@asynccontextmanager
async def node_with(
    pki: Pki, verify: str = "none", config: SipTransportConfig | None = None
) -> AsyncIterator[Node]:
    async with sip_node(config, streams=_streams(pki, verify)) as node:
        yield node


async def tls_connect(node: Node, ctx: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    raw = await trio.open_tcp_stream(*node.server.stream_bound["tls"])
    stream = trio.SSLStream(raw, ctx, server_hostname="127.0.0.1")
    await stream.do_handshake()
    return stream


class WsClient:
    """A WebSocket client speaking SIP (wsproto framing), plain or over TLS."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[bytes] = []
        self.closed: CloseConnection | None = None

    @classmethod
    async def connect(
        cls, node: Node, transport: str = "ws", ctx: ssl.SSLContext | None = None
    ) -> WsClient:
        raw = await trio.open_tcp_stream(*node.server.stream_bound[transport])
        stream: trio.abc.Stream = raw
        if transport == "wss":
            assert ctx is not None
            tls = trio.SSLStream(raw, ctx, server_hostname="127.0.0.1")
            await tls.do_handshake()
            stream = tls
        client = cls(stream)
        await client.upgrade(["sip"])
        return client

    async def upgrade(self, subprotocols: list[str]) -> AcceptConnection | RejectConnection:
        await self.stream.send_all(
            self.ws.send(Request(host="127.0.0.1", target="/", subprotocols=subprotocols))
        )
        while True:
            for event in await self._events():
                if isinstance(event, AcceptConnection | RejectConnection):
                    return event

    async def _events(self) -> list[object]:
        data = await self.stream.receive_some(65_536)
        self.ws.receive_data(bytes(data) or None)
        return list(self.ws.events())

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=data.decode())))

    async def receive(self) -> bytes:
        """The next SIP message, or b"" once the server closed the WebSocket."""
        while not self.messages:
            if self.closed is not None:
                return b""
            parts: list[bytes] = []
            for event in await self._events():
                if isinstance(event, TextMessage | BytesMessage):
                    data = event.data
                    parts.append(data.encode() if isinstance(data, str) else bytes(data))
                    if event.message_finished:
                        self.messages.append(b"".join(parts))
                        parts = []
                elif isinstance(event, CloseConnection):
                    self.closed = event
        return self.messages.pop(0)


def ws_register(user: str, *, transport: str = "WS") -> bytes:
    """A REGISTER as SIP.js and JsSIP send it over WebSocket (RFC 7118 §5.2): the Via and
    Contact host a random `.invalid` name, nothing anybody could send to."""
    host = f"{unique('df7jal')}.invalid"
    headers = request_headers("REGISTER", (host, 0), user=user, transport=transport)
    headers[0] = ("Via", f"SIP/2.0/{transport} {host};branch={unique('z9hG4bK-ws')}")
    headers += [
        ("Contact", f"<sip:{user}@{host};transport={transport.lower()}>;expires=600"),
        ("Supported", "path, outbound"),
    ]
    return build(f"REGISTER sip:{DOMAIN} SIP/2.0", headers)


def invite(user: str, via: tuple[str, int]) -> bytes:
    headers = request_headers("INVITE", via, user=unique("caller"))
    headers[3] = ("To", f"<sip:{user}@{DOMAIN}>")
    headers.append(("Contact", f"<sip:caller@{via[0]}:{via[1]}>"))
    return build(f"INVITE sip:{user}@{DOMAIN} SIP/2.0", headers)


# ------------------------------------------------------------------ TLS


async def test_register_over_tls_and_the_call_comes_on_the_same_connection(pki: Pki) -> None:
    async with node_with(pki) as node:
        stream = await tls_connect(node, _client_ctx(pki))
        async with stream:
            user = unique("tls")
            local = ("127.0.0.1", 5999)  # a Contact nobody listens at: only the flow works
            buf = bytearray()
            await stream.send_all(register(local, user=user, transport="TLS"))
            reply = await read_tcp_message(stream, buf)
            assert reply.status == 200, reply.start
            assert node.server.stats["tls_received"] == 1
            assert node.server.connections()["tls"] == 1
            # A call from elsewhere (UDP) reaches the phone on its TLS connection.
            with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as caller:
                await caller.bind(("127.0.0.1", 0))
                await caller.sendto(invite(user, caller.getsockname()), node.addr)
                with trio.fail_after(5):
                    request = await read_tcp_message(stream, buf)
                assert request.method == "INVITE"
                top = request.get_all("via")[0]
                tls_port = node.server.stream_bound["tls"][1]
                assert top.startswith(f"SIP/2.0/TLS 127.0.0.1:{tls_port};"), top
                # RFC 5658: the phone's leg is TLS, the caller's UDP; one entry for each, the
                # phone's (with its flow token) on top.
                rr = request.get_all("record-route")
                assert ";transport=tls;lr;ob>" in rr[0] and f":{tls_port};" in rr[0], rr
                assert rr[1] == f"<sip:127.0.0.1:{node.port};lr>", rr
                # The phone's 180 goes back to the caller by UDP.
                ringing = _answer(request, 180, "Ringing")
                await stream.send_all(ringing)
                with trio.fail_after(5):
                    while True:
                        data, _ = await caller.recvfrom(65_536)
                        got = read_reply(data)
                        if got.status == 180:
                            break


def _answer(request: object, status: int, reason: str) -> bytes:
    from sip_helpers import Reply

    assert isinstance(request, Reply)
    headers = [
        (name.title(), value)
        for name, value in request.headers
        if name in ("via", "from", "to", "call-id", "cseq", "record-route")
    ]
    headers = [
        ("To", f"{v};tag=callee") if k == "To" else ("CSeq" if k == "Cseq" else k, v)
        for k, v in headers
    ]
    return build(f"SIP/2.0 {status} {reason}", headers)


async def test_tls_garbage_and_a_stalled_handshake_are_closed_and_others_served(
    pki: Pki,
) -> None:
    config = SipTransportConfig(handshake_time=0.5)
    async with node_with(pki, config=config) as node:
        where = node.server.stream_bound["tls"]
        garbage = await trio.open_tcp_stream(*where)
        await garbage.send_all(b"REGISTER sip:x SIP/2.0\r\n\r\n" * 10)
        with trio.fail_after(5):
            await wait_closed(garbage)
        assert node.server.stats["tls_handshake_failed"] == 1
        # A client that connects and never says a word is cut off at handshake_time.
        stalled = await trio.open_tcp_stream(*where)
        with trio.fail_after(5):
            await wait_closed(stalled)
        assert node.server.stats["tls_closed_slow_handshake"] == 1
        # A client that does not trust our certificate fails its own handshake.
        raw = await trio.open_tcp_stream(*where)
        wrong = trio.SSLStream(
            raw, ssl.create_default_context(cafile=str(pki.other_ca)), server_hostname="x"
        )
        with pytest.raises(trio.BrokenResourceError):
            await wrong.do_handshake()
        await trio.aclose_forcefully(wrong)
        await assert_serving(node)
        await tcp_register_ok(node)
        stream = await tls_connect(node, _client_ctx(pki))
        async with stream:
            await stream.send_all(register(("127.0.0.1", 5999), transport="TLS"))
            assert (await read_tcp_message(stream, bytearray())).status == 200


async def test_a_required_client_certificate_is_checked(pki: Pki) -> None:
    async with node_with(pki, verify="required") as node:
        # TLS 1.3 reports the server's refusal after the handshake: on the first read.
        with pytest.raises(trio.BrokenResourceError):
            stream = await tls_connect(node, _client_ctx(pki))
            await stream.send_all(register(("127.0.0.1", 5999), transport="TLS"))
            await read_tcp_message(stream, bytearray())
        with trio.fail_after(5):
            while node.server.stats["tls_handshake_failed"] < 1:
                await trio.sleep(0.01)  # wait for the server's side of the failure
        stream = await tls_connect(node, _client_ctx(pki, with_cert=True))
        async with stream:
            await stream.send_all(register(("127.0.0.1", 5999), transport="TLS"))
            assert (await read_tcp_message(stream, bytearray())).status == 200


# ------------------------------------------------------------------ WebSocket


@pytest.mark.parametrize("transport", ["ws", "wss"])
async def test_a_websocket_phone_registers_and_is_called_on_its_websocket(
    pki: Pki, transport: str
) -> None:
    async with node_with(pki) as node:
        client = await WsClient.connect(node, transport, _client_ctx(pki))
        user = unique("web")
        await client.send(ws_register(user, transport=transport.upper()))
        reply = read_reply(await client.receive())
        assert reply.status == 200, reply.start
        assert reply.get("contact") and ".invalid" in (reply.get("contact") or "")
        assert node.server.connections()[transport] == 1
        # RFC 5626 §4.4.1 keepalive as SIP.js sends it over WebSocket: a CRLF pong.
        await client.send(b"\r\n\r\n")
        assert await client.receive() == b"\r\n"
        assert node.server.stats[f"{transport}_pongs"] == 1
        with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as caller:
            await caller.bind(("127.0.0.1", 0))
            await caller.sendto(invite(user, caller.getsockname()), node.addr)
            with trio.fail_after(5):
                request = read_reply(await client.receive())
            assert request.method == "INVITE"
            port = node.server.stream_bound[transport][1]
            top = request.get_all("via")[0]
            assert top.startswith(f"SIP/2.0/{transport.upper()} 127.0.0.1:{port};"), top
            rr = request.get_all("record-route")
            assert f";transport={transport};lr;ob>" in rr[0], rr
            await client.send(_answer(request, 486, "Busy Here"))
            with trio.fail_after(5):
                while True:
                    data, _ = await caller.recvfrom(65_536)
                    got = read_reply(data)
                    if got.is_response and got.status == 486:
                        break
        await trio.aclose_forcefully(client.stream)


async def test_an_upgrade_without_the_sip_subprotocol_is_refused(pki: Pki) -> None:
    async with node_with(pki) as node:
        raw = await trio.open_tcp_stream(*node.server.stream_bound["ws"])
        client = WsClient(raw)
        answer = await client.upgrade(["chat"])
        assert isinstance(answer, RejectConnection) and answer.status_code == 400
        with trio.fail_after(5):
            await wait_closed(raw)
        # Not even HTTP: closed too.
        junk = await trio.open_tcp_stream(*node.server.stream_bound["ws"])
        await junk.send_all(b"\x16\x03\x01\x00\xff" + b"\x00" * 300)
        with trio.fail_after(5):
            await wait_closed(junk)
        assert node.server.stats["ws_rejected"] == 2
        await assert_serving(node)


async def test_unmasked_and_oversized_frames_close_the_websocket(pki: Pki) -> None:
    async with node_with(pki) as node:
        # RFC 6455 §5.1: a client's frames are masked; an unmasked one is a protocol error.
        client = await WsClient.connect(node)
        payload = ws_register(unique("web"))
        header = bytes([0x81, 126]) + len(payload).to_bytes(2, "big")  # FIN text, no mask
        await client.stream.send_all(header + payload)
        assert await client.receive() == b""
        assert client.closed is not None and client.closed.code == 1002
        # A message bigger than any SIP message we take: 1009, in pieces or in one frame.
        big = await WsClient.connect(node)
        await big.stream.send_all(big.ws.send(TextMessage(data="x" * 70_000)))
        assert await big.receive() == b""
        assert big.closed is not None and big.closed.code == 1009
        with trio.fail_after(5):
            await wait_closed(big.stream)
        assert node.server.stats["ws_closed_by_frame"] == 2
        await assert_serving(node)
        ok = await WsClient.connect(node)
        await ok.send(ws_register(unique("web")))
        assert read_reply(await ok.receive()).status == 200
        await trio.aclose_forcefully(ok.stream)


async def test_a_connection_flood_is_refused_at_the_limit_and_the_node_serves_on(
    pki: Pki,
) -> None:
    config = SipTransportConfig(max_connections=8, handshake_time=30)
    async with node_with(pki, config=config) as node:
        held = []
        for transport in ("tls", "ws", "wss", "tls", "ws", "wss", "tls", "ws"):
            held.append(await trio.open_tcp_stream(*node.server.stream_bound[transport]))
        with trio.fail_after(5):
            while node.server.stats["ws_accepted"] + node.server.stats["tls_accepted"] < 6:
                await trio.sleep(0.01)  # wait for the accepts to be counted
        # Every slot is held by a handshake that never ends: the next are refused at once.
        refused = []
        for transport in ("tls", "wss", "ws"):
            stream = await trio.open_tcp_stream(*node.server.stream_bound[transport])
            with trio.fail_after(5):
                await wait_closed(stream)
            refused.append(transport)
        stats = node.server.stats
        assert stats["tls_refused"] + stats["ws_refused"] + stats["wss_refused"] == 3
        await assert_serving(node)  # UDP is served meanwhile
        for stream in held:
            await trio.aclose_forcefully(stream)
        # The slots free up once the held connections are gone.
        with trio.fail_after(5):
            while node.server.stream_conns._handshaking:
                await trio.sleep(0.01)  # wait for the server to see the closes
        await tcp_register_ok(node)


async def test_a_sips_request_uri_defaults_to_tls_and_port_5061(pki: Pki) -> None:
    async with node_with(pki) as node:
        proxy = node.proxy
        assert proxy._ours("127.0.0.1", node.server.stream_bound["tls"][1])
        assert not proxy._ours("127.0.0.1", 1)


def test_server_tls_context_names_a_bad_file(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(OSError):
        server_tls_context(TlsFiles(str(missing), str(pki.key)))
    with pytest.raises(ssl.SSLError):
        server_tls_context(TlsFiles(str(pki.cert), str(pki.client_key)))  # not its key


async def test_udp_caller_and_tls_phone_bye_from_the_phone_reaches_the_caller(
    pki: Pki,
) -> None:
    """In a dialog the phone's BYE follows its route set: our TLS entry, then the UDP entry
    (both ours, both consumed), then the caller's Contact."""
    async with node_with(pki) as node:
        stream = await tls_connect(node, _client_ctx(pki))
        async with stream:
            user = unique("tls")
            buf = bytearray()
            await stream.send_all(register(("127.0.0.1", 5999), user=user, transport="TLS"))
            assert (await read_tcp_message(stream, buf)).status == 200
            async with UdpClient(node) as caller:
                await caller.send(invite(user, caller.addr), node.addr)
                with trio.fail_after(5):
                    request = await read_tcp_message(stream, buf)
                rr = request.get_all("record-route")
                call_id = request.get("call-id")
                local = stream.transport_stream.socket.getsockname()
                bye_headers = [
                    ("Via", f"SIP/2.0/TLS 127.0.0.1:{local[1]};branch={unique('z9hG4bK-b')}"),
                    ("Max-Forwards", "70"),
                    ("Route", ", ".join(rr)),  # the route set: Record-Route in order (UAS)
                    ("From", f"<sip:{user}@{DOMAIN}>;tag=callee"),
                    ("To", request.get("from") or ""),
                    ("Call-ID", call_id or ""),
                    ("CSeq", "1 BYE"),
                ]
                await stream.send_all(
                    build(f"BYE sip:caller@{caller.addr[0]}:{caller.addr[1]} SIP/2.0", bye_headers)
                )
                with trio.fail_after(5):
                    while True:
                        got = await caller.reply()
                        if not got.is_response and got.method == "BYE":
                            break
                assert got.get("route") is None  # every Route of ours consumed


async def test_websocket_origins_outside_the_list_are_refused(pki: Pki) -> None:
    ctx = server_tls_context(TlsFiles(str(pki.cert), str(pki.key)))
    origins = frozenset({"https://app.example.com"})
    streams = (
        StreamListen("ws", ("127.0.0.1", 0), None, origins),
        StreamListen("wss", ("127.0.0.1", 0), ctx, origins),
    )
    async with sip_node(streams=streams) as node:

        async def upgrade(origin: str | None) -> AcceptConnection | RejectConnection:
            raw = await trio.open_tcp_stream(*node.server.stream_bound["ws"])
            client = WsClient(raw)
            headers = [(b"origin", origin.encode())] if origin else []
            await raw.send_all(
                client.ws.send(
                    Request(
                        host="127.0.0.1", target="/", subprotocols=["sip"], extra_headers=headers
                    )
                )
            )
            while True:
                for event in await client._events():
                    if isinstance(event, AcceptConnection | RejectConnection):
                        await trio.aclose_forcefully(raw)
                        return event

        for origin in ("https://evil.example", None, "https://app.example.com.evil.example"):
            refused = await upgrade(origin)
            assert isinstance(refused, RejectConnection) and refused.status_code == 403, origin
        for origin in ("https://app.example.com", "HTTPS://APP.EXAMPLE.COM/"):
            assert isinstance(await upgrade(origin), AcceptConnection), origin
        assert node.server.stats["ws_rejected"] == 3


def _join(*flags: str) -> list[str]:
    return ["join", "--role", "sip", "--domain", "example.com", "--insecure", *flags]


def test_tls_and_websocket_flags_and_what_bad_ones_say(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from swimthor.cli import build_agent_config, build_parser, main

    cfg = build_agent_config(
        build_parser().parse_args(
            _join(
                "--sip-tls", "0.0.0.0", "--sip-wss", "0.0.0.0:8443", "--sip-ws", "[::]:8080",
                "--sip-tls-cert", str(pki.cert), "--sip-tls-key", str(pki.key),
                "--sip-tls-ca", str(pki.ca), "--sip-tls-verify-client", "optional",
                "--sip-ws-origin", "https://app.example.com",
            )
        )
    )  # fmt: skip
    sip = cfg.sip
    assert sip is not None
    assert (sip.tls_bind, sip.wss_bind, sip.ws_bind) == (
        ("0.0.0.0", 5061),
        ("0.0.0.0", 8443),
        ("::", 8080),
    )
    assert (sip.tls_verify_client, sip.ws_origins) == ("optional", ["https://app.example.com"])
    missing = str(tmp_path / "nope.pem")
    cases = [
        (["--sip-tls", "0.0.0.0"], "certificate and its key"),
        (["--sip-wss", "0.0.0.0", "--sip-tls-cert", missing, "--sip-tls-key", str(pki.key)],
         "nope.pem"),
        (["--sip-tls", "0.0.0.0", "--sip-tls-cert", str(pki.cert), "--sip-tls-key",
          str(pki.client_key)], "cannot use certificate"),
        (["--sip-ws", "0.0.0.0:5060"], "a port of its own"),
        (["--sip-ws", "0.0.0.0:8080", "--sip-ws-origin", "app.example.com"], "origin"),
        (["--sip-tls", "0.0.0.0:99999"], "port"),
    ]  # fmt: skip
    for flags, says in cases:
        code = main(_join(*flags))
        err = capsys.readouterr().err
        assert code == 2, (flags, err)
        assert says in err and len(err.strip().splitlines()) == 1, (flags, err)


def test_tls_and_websocket_from_the_toml_table(pki: Pki, tmp_path: Path) -> None:
    from swimthor.config import ConfigError, SipConfig, check_sip, sip_from_toml

    table = {
        "domains": ["example.com"],
        "tls_bind": "0.0.0.0",
        "ws_bind": "127.0.0.1:8080",
        "tls_cert": str(pki.cert),
        "tls_key": str(pki.key),
        "tls_verify_client": "required",
        "tls_ca": str(pki.ca),
        "handshake_time": 2,
        "ws_origins": ["https://app.example.com"],
    }
    sip = sip_from_toml(table, SipConfig())
    check_sip(sip)
    assert sip.tls_bind == ("0.0.0.0", 5061) and sip.ws_bind == ("127.0.0.1", 8080)
    assert sip.handshake_time == 2
    with pytest.raises(ConfigError, match="tls_verify_client"):
        check_sip(sip_from_toml({**table, "tls_verify_client": "maybe"}, SipConfig()))
    with pytest.raises(ConfigError):
        sip_from_toml({**table, "tls_bind": 5061}, SipConfig())  # not a string


# ------------------------------------------------------------------ what the fuzz targets found


def _upgrade_bytes(subprotocols: list[str]) -> bytes:
    return WSConnection(ConnectionType.CLIENT).send(
        Request(host="h", target="/", subprotocols=subprotocols)
    )


def test_regression_a_ping_split_across_reads_is_still_a_ping() -> None:
    message = register(("127.0.0.1", 5999), transport="TCP")
    whole = StreamFramer().feed(message + b"\r\n\r\n" + message)[0]
    framer = StreamFramer()
    got, _ = framer.feed(message + b"\r")  # the ping's first byte ends this read
    more, pong = framer.feed(b"\n\r\n" + message)
    assert got + more == whole and len(whole) == 2 and pong == b"\r\n"


def test_regression_the_subprotocol_is_answered_as_the_client_spelled_it() -> None:
    framer = WsFramer()
    _, reply = framer.feed(_upgrade_bytes(["SIP"]))
    assert framer.open and b"Sec-WebSocket-Protocol: SIP\r\n" in reply


def test_regression_a_non_ascii_upgrade_header_is_a_400_not_an_exception() -> None:
    framer = WsFramer()
    request = _upgrade_bytes(["sip"]).replace(b": sip\r\n", b": \x80\r\n")
    _, reply = framer.feed(request)
    assert framer.closed and not framer.open and reply.startswith(b"HTTP/1.1 400")


def test_regression_frames_in_the_same_read_as_the_upgrade_are_not_lost() -> None:
    from wsproto.frame_protocol import FrameProtocol

    message = ws_register(unique("web"))
    frames = FrameProtocol(client=True, extensions=[]).send_data(message.decode(), True)
    framer = WsFramer()
    got, _ = framer.feed(_upgrade_bytes(["sip"]) + frames)
    assert got == [message]
    # An upgrade request that never ends is refused once it is too big to be one.
    endless = WsFramer()
    got, reply = endless.feed(b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20_000)
    assert got == [] and endless.closed and reply.startswith(b"HTTP/1.1 431")


async def test_our_tls_stream_as_a_client_checks_the_server_and_carries_sip(pki: Pki) -> None:
    """TlsStream, the server's TLS layer, in its client role (connections a node opens to a
    TLS target): the server's certificate is checked, then SIP goes both ways on it."""
    async with node_with(pki) as node:
        where = node.server.stream_bound["tls"]
        raw = await trio.open_tcp_stream(*where)
        wrong = TlsStream(
            raw,
            ssl.create_default_context(cafile=str(pki.other_ca)),
            server_side=False,
            server_hostname="127.0.0.1",
        )
        with pytest.raises(trio.BrokenResourceError):
            await wrong.do_handshake()
        await trio.aclose_forcefully(wrong)
        raw = await trio.open_tcp_stream(*where)
        stream = TlsStream(raw, _client_ctx(pki), server_side=False, server_hostname="127.0.0.1")
        await stream.do_handshake()
        buf = bytearray()
        for _ in range(3):  # several messages on one connection
            await stream.send_all(register(("127.0.0.1", 5999), transport="TLS"))
            assert (await read_tcp_message(stream, buf)).status == 200
        await stream.aclose()
