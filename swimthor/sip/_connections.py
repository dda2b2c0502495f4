"""The stream connections of the SIP transport (TCP, TLS, WebSocket): accepting them (at
most `max_connections` open, handshakes included), the TLS and WebSocket handshakes (each
bounded in time), one reader and one writer task per connection (the idle and slowloris
limits, a bounded outbox), and the connections we open to send on. `SipServer`
(`_server.py`) holds one `StreamConnections`, which hands it every message read and every
send that could not be written."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
import trio

from ..clocks import Clocks
from ..sockets import serve_listener
from ._actions import Send
from ._streams import BadStream, StreamFramer, WsFramer, client_tls_context

if TYPE_CHECKING:
    from ._server import SipTransportConfig

__all__ = ["RECV_SIZE", "StreamConnections", "StreamListen", "TlsStream"]

log = structlog.get_logger("swimthor.sip")

RECV_SIZE = 65_536


class TlsStream(trio.abc.Stream):
    """TLS over a connected socket stream with `ssl.SSLObject` and memory BIOs, made for a
    reader and a writer task: records the TLS layer wants sent (handshake, session tickets,
    alerts, our data) leave in the order they were made, under one lock; everything else is
    in the caller's task. A leaner path per message than `trio.SSLStream`, which SIP over TLS
    crosses twice per request (its answer): the TLS REGISTER rate is bound by it."""

    def __init__(
        self,
        raw: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = raw
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=server_hostname
        )
        self._send_lock = trio.Lock()

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._out.read()
            if data:
                await self.transport_stream.send_all(data)

    async def _more(self) -> bool:
        """Read more from the socket into the TLS layer; False at EOF."""
        if self._out.pending:
            await self._flush()
        data = await self.transport_stream.receive_some(RECV_SIZE)
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    async def do_handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if not await self._more():
                    raise trio.BrokenResourceError("the peer closed during the handshake") from None
            except (ssl.SSLError, ssl.CertificateError) as e:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._flush()  # our alert, if any
                raise trio.BrokenResourceError(f"TLS handshake failed: {e}") from e
        await self._flush()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while True:
            try:
                data = self._tls.read(max_bytes or RECV_SIZE)
            except ssl.SSLWantReadError:
                if not await self._more():
                    return b""
                continue
            except ssl.SSLZeroReturnError:
                return b""  # close_notify
            except ssl.SSLError as e:
                raise trio.BrokenResourceError(f"TLS: {e}") from e
            if self._out.pending:
                await self._flush()  # what reading made the TLS layer say (a KeyUpdate)
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._tls.write(data)
        except ssl.SSLError as e:
            raise trio.BrokenResourceError(f"TLS: {e}") from e
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


@dataclass(frozen=True, slots=True)
class StreamListen:
    """A listener for one more stream transport: "tls", "ws" or "wss" (TLS and WSS with
    `ssl`, the server context) on `bind`; the "tcp" one shares the UDP port."""

    transport: str
    bind: tuple[str, int]
    ssl: ssl.SSLContext | None = None
    # WebSocket: the web origins allowed to open one (None: any).
    origins: frozenset[str] | None = None


# A connection whose writer has this much queued (a peer that does not read) is closed.
MAX_OUTBOX = 4 << 20
# Seconds a closing connection's writer has to send what is still queued.
FLUSH_TIME = 1.0


class _Conn:
    """One stream connection: what reads it (`framer`) and its outbox. Everything sent on it
    goes through the outbox, which one writer task drains: what is queued while a write is
    in progress goes out together in the next one (one TLS record and one system call for a
    burst of answers), and nothing waits on a slow peer but that writer."""

    __slots__ = (
        "closed",
        "framer",
        "id",
        "outbox",
        "peer",
        "queued",
        "scope",
        "stream",
        "transport",
        "wake",
        "written",
    )

    def __init__(
        self,
        cid: int,
        stream: trio.abc.Stream,
        peer: tuple[str, int],
        transport: str,
        framer: StreamFramer | WsFramer,
    ) -> None:
        self.id = cid
        self.stream = stream
        self.peer = peer
        self.transport = transport
        self.framer = framer
        self.outbox: list[tuple[bytes, Send | None]] = []
        self.queued = 0  # bytes in the outbox
        self.wake = trio.Event()
        self.closed = False  # no more is sent: the reader ended, or the writer failed
        self.written = trio.Event()  # the writer is done (flushed what it could)
        self.scope = trio.CancelScope()  # the reader's: cancelled when the writer fails


class StreamConnections:
    """The open stream connections of a `SipServer` and what is done with them; see the
    module docstring. `handle` gets each message read from one, `transport_error` each send
    that could not be written."""

    def __init__(
        self,
        config: SipTransportConfig,
        stats: dict[str, int],
        handle: Callable[[bytes, _Conn], Awaitable[None]],
        transport_error: Callable[[Send], None],
        tls_ca: str | None = None,
    ) -> None:
        self.config = config
        self.stats = stats  # the server's: the per-transport counters are kept there
        self._handle = handle
        self._transport_error = transport_error
        # What the TLS connections we open check the peer's certificate against.
        self.tls_ca = tls_ca
        self._client_ctx: ssl.SSLContext | None = None
        self._handshaking = 0  # connections accepted whose TLS or upgrade is not done yet
        # The server's nursery while it serves: each connection's reader and writer run there.
        self.nursery: trio.Nursery | None = None
        self.conns: dict[int, _Conn] = {}
        self._by_peer: dict[tuple[str, int], int] = {}
        self._ids = itertools.count(1)

    async def accept(self, listener: trio.SocketListener, spec: StreamListen) -> None:
        stats = self.stats
        transport = spec.transport

        def admit(stream: trio.SocketStream) -> Callable[[], Awaitable[None]] | None:
            if len(self.conns) + self._handshaking >= self.config.max_connections:
                stats[f"{transport}_refused"] += 1
                return None
            try:
                peer = stream.socket.getpeername()
            except OSError:
                return None
            stats[f"{transport}_accepted"] += 1
            if spec.ssl is None and transport == "tcp":
                conn = self._register(stream, (peer[0], peer[1]), transport, StreamFramer())
                return functools.partial(self._read_conn, conn)
            self._handshaking += 1
            return functools.partial(self._handshake, stream, (peer[0], peer[1]), spec)

        await serve_listener(listener, admit, what=f"sip {transport}")

    async def _handshake(
        self, raw: trio.SocketStream, peer: tuple[str, int], spec: StreamListen
    ) -> None:
        """TLS, then for WebSocket the HTTP upgrade, each bounded in time (a client that
        opens connections and says nothing holds one of max_connections that long); then the
        connection is read like any other."""
        stats = self.stats
        transport = spec.transport
        stream: trio.abc.Stream = raw
        framer: StreamFramer | WsFramer = StreamFramer()
        conn: _Conn | None = None
        try:
            with trio.move_on_after(self.config.handshake_time) as scope:
                if spec.ssl is not None:
                    ssl_stream = TlsStream(raw, spec.ssl, server_side=True)
                    stream = ssl_stream
                    try:
                        await ssl_stream.do_handshake()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        stats["tls_handshake_failed"] += 1
                        return
                if transport in ("ws", "wss"):
                    framer = WsFramer(spec.origins)
                    while not framer.open:
                        chunk = await stream.receive_some(RECV_SIZE)
                        if not chunk:
                            return
                        try:
                            _, reply = framer.feed(chunk)
                        except Exception:
                            # A bug of ours or the library's: this connection goes, the node
                            # stays up.
                            log.exception("sip websocket upgrade raised", peer=f"{peer}")
                            stats["ws_rejected"] += 1
                            return
                        if reply:
                            await stream.send_all(reply)
                        if framer.closed:
                            stats["ws_rejected"] += 1
                            return
            if scope.cancelled_caught:
                stats[f"{transport}_closed_slow_handshake"] += 1
                return
            conn = self._register(stream, peer, transport, framer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        finally:
            self._handshaking -= 1
            if conn is None:
                await trio.aclose_forcefully(stream)
        await self._read_conn(conn)

    def _register(
        self,
        stream: trio.abc.Stream,
        peer: tuple[str, int],
        transport: str,
        framer: StreamFramer | WsFramer,
    ) -> _Conn:
        conn = _Conn(next(self._ids), stream, peer, transport, framer)
        self.conns[conn.id] = conn
        self._by_peer[peer] = conn.id
        if self.nursery is not None:
            self.nursery.start_soon(self._write_loop, conn)
        return conn

    def queue(
        self, conn: _Conn, data: bytes, send: Send | None = None, *, framed: bool = False
    ) -> None:
        """Hand `data` to the connection's writer (framed for it here unless `framed`);
        `send` is failed (transport_error) if it cannot be written."""
        if conn.closed:
            if send is not None:
                self._transport_error(send)
            return
        out = data if framed else conn.framer.frame(data)
        conn.outbox.append((out, send))
        conn.queued += len(out)
        if conn.queued > MAX_OUTBOX:
            # The peer does not read what we send: give it up rather than hold it all.
            self.stats[f"{conn.transport}_closed_slow"] += 1
            self._fail(conn)
            return
        conn.wake.set()

    def _fail(self, conn: _Conn) -> None:
        """Give the connection up now: what is queued fails, the reader is cancelled (and
        closes it)."""
        conn.closed = True
        self._unregister(conn)
        for _data, send in conn.outbox:
            if send is not None:
                self._transport_error(send)
        conn.outbox, conn.queued = [], 0
        conn.wake.set()
        conn.scope.cancel()

    async def _write_loop(self, conn: _Conn) -> None:
        """Write what is queued, a batch at a time, until the connection is closed (then
        flush what is left, briefly) or a write fails."""
        key = f"{conn.transport}_sent"
        try:
            while True:
                await conn.wake.wait()
                conn.wake = trio.Event()
                if not conn.outbox:
                    if conn.closed:
                        return
                    continue
                batch, conn.outbox, conn.queued = conn.outbox, [], 0
                data = batch[0][0] if len(batch) == 1 else b"".join(d for d, _s in batch)
                try:
                    with trio.move_on_after(FLUSH_TIME if conn.closed else math.inf):
                        await conn.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    for _data, send in batch:
                        if send is not None:
                            self._transport_error(send)
                    self._fail(conn)
                    return
                self.stats[key] += sum(1 for _d, send in batch if send is not None)
                if conn.closed and not conn.outbox:
                    return
                if conn.outbox:
                    conn.wake.set()
        finally:
            conn.written.set()

    def _unregister(self, conn: _Conn) -> None:
        self.conns.pop(conn.id, None)
        if self._by_peer.get(conn.peer) == conn.id:
            del self._by_peer[conn.peer]

    async def _read_conn(self, conn: _Conn) -> None:
        """Read the connection until it ends, then close it (after its writer flushed)."""
        try:
            with conn.scope:
                await self._reading(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            # What is queued goes out first (a WebSocket close, the last answers), briefly.
            self._unregister(conn)
            conn.closed = True
            conn.wake.set()
            with trio.move_on_after(FLUSH_TIME + 0.5):
                await conn.written.wait()
            await trio.aclose_forcefully(conn.stream)

    async def _reading(self, conn: _Conn) -> None:
        started: float | None = None
        cfg = self.config
        stats = self.stats
        transport = conn.transport
        framer = conn.framer
        while True:
            deadline = Clocks.trio() + cfg.tcp_idle
            if started is not None:
                deadline = min(deadline, started + cfg.tcp_message_time)
            with trio.move_on_at(deadline):
                chunk = await conn.stream.receive_some(RECV_SIZE)
                if not chunk:
                    return
                if started is None:
                    started = Clocks.trio()
                try:
                    messages, reply = framer.feed(chunk)
                except BadStream:
                    stats[f"{transport}_bad_frames"] += 1
                    return
                except Exception:
                    log.exception("sip stream framing raised", peer=f"{conn.peer}")
                    stats[f"{transport}_bad_frames"] += 1
                    return
                if reply:
                    if isinstance(framer, StreamFramer):
                        stats[f"{transport}_pongs"] += 1
                    self.queue(conn, reply, framed=True)
                for message in messages:
                    if not message.strip(b"\r\n"):
                        # A WebSocket message of CRLFs: a keepalive (RFC 5626 §4.4.1 as
                        # SIP.js and JsSIP send it over WebSocket); a ping gets a pong.
                        if len(message) >= 4:
                            stats[f"{transport}_pongs"] += 1
                            self.queue(conn, b"\r\n")
                        continue
                    stats[f"{transport}_received"] += 1
                    await self._handle(message, conn)
                if isinstance(framer, WsFramer) and framer.closed:
                    stats["ws_closed_by_frame"] += 1
                    return
                if not framer.partial:
                    started = None
                elif messages:
                    started = Clocks.trio()  # the next message started now
                continue
            # The deadline passed.
            if started is not None:
                stats[f"{transport}_closed_slow"] += 1
            else:
                stats[f"{transport}_closed_idle"] += 1
            return

    def conn_for(self, send: Send) -> _Conn | None:
        """The open connection `send` goes on: its own, else one to its address."""
        conn = self.conns.get(send.conn) if send.conn is not None else None
        if conn is None:
            cid = self._by_peer.get((send.host, send.port))
            conn = self.conns.get(cid) if cid is not None else None
        return conn

    async def send_stream(self, send: Send) -> None:
        conn = self.conn_for(send)
        if conn is None:
            # A reply whose connection is gone (§18.2.2: open one to the sent-by, which the
            # caller put in host/port), or a request to a target with no open connection.
            if send.transport not in ("tcp", "tls"):
                # WebSocket clients are never connected to: their flow is all there is.
                self._transport_error(send)
                return
            if len(self.conns) + self._handshaking >= self.config.max_connections:
                self._transport_error(send)
                return
            raw: trio.SocketStream | None = None
            try:
                with trio.fail_after(self.config.connect_timeout):
                    raw = await trio.open_tcp_stream(send.host, send.port)
                    stream: trio.abc.Stream = raw
                    if send.transport == "tls":
                        stream = TlsStream(
                            raw, self._client_tls(), server_side=False, server_hostname=send.host
                        )
                        await stream.do_handshake()
            except (OSError, trio.TooSlowError, trio.BrokenResourceError):
                if raw is not None:
                    await trio.aclose_forcefully(raw)  # connected, but the handshake failed
                self._transport_error(send)
                return
            conn = self._register(stream, (send.host, send.port), send.transport, StreamFramer())
            if self.nursery is not None:
                self.nursery.start_soon(self._read_conn, conn)
        self.queue(conn, send.data, send)

    def _client_tls(self) -> ssl.SSLContext:
        if self._client_ctx is None:
            self._client_ctx = client_tls_context(self.tls_ca)
        return self._client_ctx
