"""Helpers for SIP tests on real loopback sockets: one in-process node, message builders, a
small response parser that does not share code with the server, and UDP/TCP clients.

The parser here is deliberately independent of `swimthor.sip._message`, so a test that checks
an answer does not trust the code it tests to read that answer.
"""

from __future__ import annotations

import itertools
import socket as stdsocket
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from swimthor.ratelimit import SourceLimiter
from swimthor.sip import Peer, Proxy, ProxySettings, SipServer, SipTransportConfig, StreamListen

DOMAIN = "example.com"
_serial = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_serial)}"


# ------------------------------------------------------------------ the node


@dataclass
class Node:
    server: SipServer
    proxy: Proxy
    host: str
    port: int

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)


def _own_proxy(host: str, port: int, listen: dict[str, tuple[str, int]]) -> Proxy:
    """The proxy of a one-node cluster at host:port: it owns every AOR itself."""
    me = Peer("n1", host, port)
    settings = ProxySettings("n1", host, port, frozenset({DOMAIN}), listen=listen)
    return Proxy(settings, owners=lambda aor, n: [me], peers=lambda: {"n1": me})


@asynccontextmanager
async def sip_node(
    config: SipTransportConfig | None = None,
    host: str = "127.0.0.1",
    limiter: SourceLimiter | None = None,
    streams: tuple[StreamListen, ...] = (),
) -> AsyncIterator[Node]:
    """One node serving UDP and TCP on a kernel-chosen port (and `streams`: TLS, WebSocket,
    each on one of its own); it owns every AOR itself, so a REGISTER is applied locally and
    answered at once."""
    # The proxy names the ports the server binds: the server starts with a stand-in, and gets
    # its proxy once open() has bound them.
    server = SipServer(
        _own_proxy(host, 0, {}), bind=(host, 0), config=config, limiter=limiter, streams=streams
    )
    _, port = server.open()
    proxy = _own_proxy(host, port, dict(server.stream_bound))
    server.proxy = proxy
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            yield Node(server, proxy, host, port)
            nursery.cancel_scope.cancel()
    finally:
        server.close()


async def serve_node(
    config: SipTransportConfig | None = None,
    *,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`sip_node` as a task, for fixtures: `node = await nursery.start(serve_node)` returns
    once the node's sockets are bound and served; it serves until the nursery is cancelled."""
    async with sip_node(config) as node:
        task_status.started(node)
        await trio.sleep_forever()


# ------------------------------------------------------------------ building messages

AUTO = object()


def build(
    start_line: str,
    headers: Iterable[tuple[str, str]],
    body: bytes = b"",
    *,
    content_length: object = AUTO,
) -> bytes:
    """A message from its parts. `content_length`: AUTO (the body's length), None (no
    Content-Length header at all) or the exact text to write."""
    lines = [start_line, *(f"{name}: {value}" for name, value in headers)]
    if content_length is AUTO:
        lines.append(f"Content-Length: {len(body)}")
    elif content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def hostport(host: str, port: int) -> str:
    """host:port for a Via or a URI (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def request_headers(
    method: str,
    via: tuple[str, int],
    *,
    user: str | None = None,
    transport: str = "UDP",
    branch: str | None = None,
    call_id: str | None = None,
    cseq: int = 1,
    contact: str | None = None,
) -> list[tuple[str, str]]:
    user = user or unique("user")
    branch = branch or unique("z9hG4bK-test-")
    headers = [
        ("Via", f"SIP/2.0/{transport} {hostport(*via)};branch={branch}"),
        ("Max-Forwards", "70"),
        ("From", f"<sip:{user}@{DOMAIN}>;tag={unique('ft')}"),
        ("To", f"<sip:{user}@{DOMAIN}>"),
        ("Call-ID", call_id or unique("call-")),
        ("CSeq", f"{cseq} {method}"),
    ]
    if contact is not None:
        headers.append(("Contact", contact))
    return headers


def register(
    via: tuple[str, int],
    *,
    user: str | None = None,
    transport: str = "UDP",
    contact: str | None = None,
    extra: Sequence[tuple[str, str]] = (),
    branch: str | None = None,
) -> bytes:
    user = user or unique("user")
    contact = contact or f"<sip:{user}@{hostport(*via)}>"
    headers = request_headers(
        "REGISTER", via, user=user, transport=transport, contact=contact, branch=branch
    )
    headers.append(("Expires", "600"))
    headers.extend(extra)
    return build(f"REGISTER sip:{DOMAIN} SIP/2.0", headers)


def without(headers: Iterable[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() != name.lower()]


def replaced(headers: Iterable[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(k, value if k.lower() == name.lower() else v) for k, v in headers]


# ------------------------------------------------------------------ reading answers


@dataclass
class Reply:
    """One SIP message as the wire carried it: start line, (lower-case name, value) headers
    in order, body, and the raw bytes."""

    start: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes = field(repr=False)

    @property
    def is_response(self) -> bool:
        return self.start.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        assert self.is_response, self.start
        return int(self.start.split(" ", 2)[1])

    @property
    def reason(self) -> str:
        return self.start.split(" ", 2)[2]

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0]

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]


def read_reply(data: bytes) -> Reply:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no end of headers in {data[:200]!r}"
    lines = head.decode().split("\r\n")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        assert colon, f"bad header line {line!r}"
        headers.append((name.strip().lower(), value.strip()))
    return Reply(lines[0], headers, body, data)


# ------------------------------------------------------------------ clients


class UdpClient:
    """A trio UDP socket on the loopback, talking to one node."""

    def __init__(self, node: Node, host: str | None = None) -> None:
        self.node = node
        host = host or node.host
        family = stdsocket.AF_INET6 if ":" in host else stdsocket.AF_INET
        self.sock = trio.socket.socket(family, stdsocket.SOCK_DGRAM)
        self._host = host

    async def __aenter__(self) -> UdpClient:
        await self.sock.bind((self._host, 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sock.close()

    @property
    def addr(self) -> tuple[str, int]:
        name = self.sock.getsockname()
        return (name[0], name[1])

    async def send(self, data: bytes, to: tuple[str, int] | None = None) -> None:
        await self.sock.sendto(data, to or self.node.addr)

    async def recv(self, timeout: float = 2.0) -> bytes | None:
        """The next datagram, or None after `timeout` seconds of silence."""
        with trio.move_on_after(timeout):
            data, _ = await self.sock.recvfrom(70_000)
            return data
        return None

    async def reply(self, timeout: float = 2.0) -> Reply:
        data = await self.recv(timeout)
        assert data is not None, "no reply"
        return read_reply(data)

    async def ask(self, data: bytes, timeout: float = 2.0) -> Reply:
        await self.send(data)
        return await self.reply(timeout)

    async def register(
        self,
        *,
        user: str | None = None,
        transport: str = "UDP",
        contact: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
        branch: str | None = None,
    ) -> Reply:
        return await self.ask(
            register(
                self.addr,
                user=user,
                transport=transport,
                contact=contact,
                extra=extra,
                branch=branch,
            )
        )


async def assert_serving(node: Node) -> None:
    """A REGISTER from a fresh socket is answered 200: the node still serves others."""
    async with UdpClient(node) as other:
        message = register(other.addr)
        reply = await other.ask(message)
        assert reply.status == 200, reply.start
        assert reply.get("call-id") == read_reply(message).get("call-id")


async def answer_to(client: UdpClient, data: bytes) -> Reply | None:
    """Send `data`, then a valid REGISTER from the same socket; return the answer to `data`,
    or None if there was none. The node handles datagrams in order on one UDP loop, so an
    answer to `data` comes before the REGISTER's 200; when the first datagram back is that
    200, `data` was dropped. Either way the REGISTER must be answered 200: the node survived
    `data`."""
    probe = register(client.addr)
    probe_call = read_reply(probe).get("call-id")
    await client.send(data)
    await client.send(probe)
    first = await client.reply()
    if first.get("call-id") == probe_call:
        assert first.status == 200, first.start
        return None
    second = await client.reply()
    assert second.get("call-id") == probe_call, f"unexpected {second.raw[:300]!r}"
    assert second.status == 200, second.start
    return first


async def read_tcp_message(stream: trio.abc.ReceiveStream, buf: bytearray) -> Reply:
    """One Content-Length-framed message from `stream` (leftovers stay in `buf`)."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            length = 0
            for line in bytes(buf[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() in (b"content-length", b"l"):
                    length = int(value.strip())
            total = end + 4 + length
            if len(buf) >= total:
                data = bytes(buf[:total])
                del buf[:total]
                return read_reply(data)
        chunk = await stream.receive_some(65_536)
        assert chunk, "connection closed before a whole message arrived"
        buf += chunk


async def wait_closed(stream: trio.abc.ReceiveStream) -> float:
    """Read until the server closes the connection (EOF or reset); return how long it took.
    Bytes that arrive meanwhile are ignored."""
    start = trio.current_time()
    try:
        while await stream.receive_some(65_536):
            pass
    except trio.BrokenResourceError:
        pass
    return trio.current_time() - start


async def tcp_register_ok(node: Node) -> None:
    """A new TCP connection carries a REGISTER and gets its 200."""
    stream = await trio.open_tcp_stream(node.host, node.port)
    async with stream:
        local = stream.socket.getsockname()
        await stream.send_all(register((local[0], local[1]), transport="TCP"))
        reply = await read_tcp_message(stream, bytearray())
        assert reply.status == 200, reply.start
