"""The trio SIP transport: one UDP socket and one TCP listener on `--sip HOST:PORT`.

Every datagram and every complete TCP message goes to `Proxy.handle`; what it returns is sent
here. TCP messages are framed by Content-Length (RFC 3261 §18.3) with the same size bound as
a datagram; a connection that sends nothing for `tcp_idle` seconds, or takes more than
`tcp_message_time` to finish a message it started (a slowloris), is closed; at most
`max_connections` are open at once (new ones beyond that are refused at accept). Replies to a
TCP request go back on its connection; requests we forward over TCP reuse an open connection
to the target or open one. Non-IP targets are resolved, with a short-lived cache.

A `Replicate` action runs in its own task: the store change is sent to the other owners and
the response goes out when they confirm (or the failure response when they do not in time).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import math
import socket as stdsocket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from ..metrics import Latency
from ..ratelimit import SourceLimiter
from ..sockets import (
    SO_TIMESTAMP,
    TRANSIENT_RECV_ERRNOS,
    FrontEndServer,
    bind_listener,
    is_ip,
    serve_listener,
)
from ._actions import Send, Source
from ._hop import Action, FetchCredentials, Replicate
from ._message import MAX_MESSAGE_SIZE
from ._proxy import Proxy
from ._streams import (
    STREAM_TRANSPORTS,
    BadStream,
    StreamFramer,
    WsFramer,
    client_tls_context,
)
from ._stun import is_stun, stun_binding_response

__all__ = ["SipServer", "SipTransportConfig", "StreamListen"]

log = structlog.get_logger("swimthor.sip")

RECV_SIZE = 65_536
# Kernel receive timestamps of datagrams (SO_TIMESTAMP: a struct timeval in the ancillary data).
_TIMEVAL = struct.Struct("@ll")
_ANC_SIZE = stdsocket.CMSG_SPACE(_TIMEVAL.size)
# Linux socket options (not all in Python's socket module): queue ICMP errors on the socket.
_IP_RECVERR = 11
_SOL_IPV6 = 41
_IPV6_RECVERR = 25
# Datagrams handled per wake-up of the UDP loop before yielding to other tasks.
RECV_BURST = 64
# The transaction timers run at most this often: each run takes every timer then due. One
# run per deadline meant a wake-up per call at 1,000 calls/s (each answered INVITE's timer L
# ends 32 s later); RFC 3261's timers are 500 ms and up, so 10 ms late changes nothing.
TIMER_TICK = 0.01


@dataclass(frozen=True, slots=True)
class SipTransportConfig:
    max_connections: int = 1024
    tcp_idle: float = 300.0  # seconds without a byte before a TCP connection is closed
    tcp_message_time: float = 10.0  # seconds to finish a message once it has started
    # Seconds a new TLS or WebSocket connection has to finish its handshake (TLS, then the
    # HTTP upgrade): a client that opens connections and stalls is cut off by then.
    handshake_time: float = 5.0
    connect_timeout: float = 2.0
    max_pending_replications: int = 20_000
    max_pending_fetches: int = 1_000
    dns_cache_time: float = 30.0
    # A request that waited in the socket longer than this is dropped unread: its sender has
    # retransmitted by then (RFC 3261 timer E/A start at T1 = 0.5 s).
    stale_after: float = 0.5


ReplicateFn = Callable[[list[Any], list[str]], Awaitable[set[str]]]
# aor, owners -> the subscriber record, None (no such subscriber) or False (nobody answered).
FetchFn = Callable[[str, list[str]], Awaitable[Any]]


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


class SipServer(FrontEndServer):
    what = "sip"
    backlog = 512
    timestamps = True  # SO_TIMESTAMP: requests that waited past T1 are dropped unread

    def __init__(
        self,
        proxy: Proxy,
        bind: tuple[str, int],
        *,
        replicate: ReplicateFn | None = None,
        config: SipTransportConfig | None = None,
        clock: Callable[[], float] = time.time,
        limiter: SourceLimiter | None = None,
        streams: tuple[StreamListen, ...] = (),
        tls_ca: str | None = None,
    ) -> None:
        super().__init__(bind, limiter)
        # More stream listeners (TLS, WebSocket), each bound by open(): transport -> address.
        self.streams = streams
        self.stream_bound: dict[str, tuple[str, int]] = {}
        self._stream_socks: dict[str, stdsocket.socket] = {}
        # What the TLS connections we open check the peer's certificate against.
        self.tls_ca = tls_ca
        self._client_ctx: ssl.SSLContext | None = None
        self._handshaking = 0  # connections accepted whose TLS or upgrade is not done yet
        self.proxy = proxy
        self.config = config or SipTransportConfig()
        self.replicate = replicate
        # Fetches a caller's subscriber record from its owners (the replicator's).
        self.fetch: FetchFn | None = None
        self._fetching: set[str] = set()
        # Latency histograms for the metrics (swimthor.metrics.Latency).
        self.latency_handling = Latency()
        self.latency_register = Latency()
        self._clock = clock
        self._udp: trio.socket.SocketType | None = None
        self._udp_std: stdsocket.socket | None = None
        self._nursery: trio.Nursery | None = None
        self._conns: dict[int, _Conn] = {}
        self._by_peer: dict[tuple[str, int], int] = {}
        self._ids = itertools.count(1)
        self._pending = 0
        self._queued: list[Replicate] = []
        self._round_scheduled = False
        self._dns: dict[str, tuple[float, str]] = {}
        self.stats: dict[str, int] = {
            "udp_received": 0,
            "udp_sent": 0,
            # Per stream transport (tcp, tls, ws, wss): messages in and out, connections
            # accepted and refused (max_connections), closed idle, closed in the middle of a
            # message (slowloris), closed for bad framing, CRLF pings answered.
            **{
                f"{t}_{what}": 0
                for t in STREAM_TRANSPORTS
                for what in (
                    "received",
                    "sent",
                    "accepted",
                    "refused",
                    "closed_idle",
                    "closed_slow",
                    "bad_frames",
                    "pongs",
                )
            },
            # TLS and WebSocket handshakes: failed TLS (garbage, bad certificates), too slow
            # (handshake_time), upgrades refused (no "sip" subprotocol, not an upgrade), and
            # WebSocket connections closed for a frame that broke RFC 6455 or was too big.
            "tls_handshake_failed": 0,
            "tls_closed_slow_handshake": 0,
            "ws_closed_slow_handshake": 0,
            "wss_closed_slow_handshake": 0,
            "ws_rejected": 0,
            "ws_closed_by_frame": 0,
            "send_errors": 0,
            "handler_errors": 0,
            "replications": 0,
            "replication_failures": 0,
            "replication_stand_ins": 0,
            "replication_overload": 0,
            "unresolved": 0,
            "udp_stale_dropped": 0,
            "timer_runs": 0,  # runs of the transaction timers (at most one per TIMER_TICK)
            # Keepalives (RFC 5626 §4.4): STUN bindings answered on UDP (and what was not a
            # binding request), CRLF pings answered with a pong on TCP.
            "stun_bindings": 0,
            "stun_dropped": 0,
            "rate_limited": 0,
            "credential_fetches": 0,
            "credential_fetch_failures": 0,
            "fetch_overload": 0,
            "udp_unreachable": 0,
        }
        self._timer_wake = trio.Event()
        self._sleeping_until = math.inf
        self._timers_ran = -math.inf  # trio time of the last timer run

    # ------------------------------------------------------------ lifecycle

    def open(self) -> tuple[str, int]:
        """Bind UDP and TCP (as every front-end), then each stream listener (TLS, WebSocket)
        in `stream_bound`; BindError naming the one that failed."""
        bound = super().open()
        try:
            for spec in self.streams:
                if spec.transport not in self._stream_socks:
                    sock = bind_listener(spec.bind, self.backlog)
                    self._stream_socks[spec.transport] = sock
                    name = sock.getsockname()
                    self.stream_bound[spec.transport] = (spec.bind[0], name[1])
        except BaseException:
            self.close()
            raise
        return bound

    def close(self) -> None:
        super().close()
        for sock in self._stream_socks.values():
            sock.close()
        self._stream_socks.clear()

    def _serving(self, nursery: trio.Nursery, udp: stdsocket.socket) -> None:
        for spec in self.streams:
            sock = self._stream_socks[spec.transport]
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            nursery.start_soon(self._accept_stream, listener, spec)
        self._nursery = nursery
        self._udp_std = udp
        self._udp = trio.socket.from_stdlib_socket(udp)
        # ICMP errors for what we send (port unreachable: a phone that is gone) are queued on
        # the socket's error queue, so a branch to a dead contact fails at once, not at timer B.
        for level, option in ((stdsocket.SOL_IP, _IP_RECVERR), (_SOL_IPV6, _IPV6_RECVERR)):
            with contextlib.suppress(OSError):
                udp.setsockopt(level, option, 1)
        self._timer_wake = trio.Event()
        nursery.start_soon(self._timer_loop)

    # ------------------------------------------------------------ transaction timers

    async def _timer_loop(self) -> None:
        """Run the proxy's transaction timers (retransmissions, timeouts, fork groups) on
        trio's clock: sleep until the next deadline, or until a message moved it earlier."""
        while True:
            deadline = self.proxy.next_timer()
            self._sleeping_until = (
                math.inf if deadline is None else max(deadline, self._timers_ran + TIMER_TICK)
            )
            with trio.move_on_at(self._sleeping_until):
                await self._timer_wake.wait()
            self._timer_wake = trio.Event()
            now = self._timers_ran = trio.current_time()
            self.stats["timer_runs"] += 1
            try:
                actions = self.proxy.handle_timer(now, self._clock())
            except Exception:
                self.stats["handler_errors"] += 1
                log.exception("sip timer raised")
                continue
            for action in actions:
                if isinstance(action, Send):
                    self._send_now(action)
                elif isinstance(action, Replicate):
                    action.received = time.perf_counter()
                    self._start_replication(action)  # a keepalive's removal, at an owner

    def _timers_moved(self) -> None:
        """After handling a message: wake the timer loop if a deadline is now earlier."""
        deadline = self.proxy.next_timer()
        if deadline is not None and deadline < self._sleeping_until:
            wake_at = max(deadline, self._timers_ran + TIMER_TICK)
            if wake_at < self._sleeping_until:
                self._sleeping_until = wake_at
                self._timer_wake.set()

    def _transport_error(self, send: Send) -> None:
        """`send` could not be delivered: fail its client transaction (if it has one)."""
        self.stats["send_errors"] += 1
        if send.txn is None:
            return
        try:
            sends = self.proxy.transport_error(send.txn, trio.current_time())
        except Exception:
            self.stats["handler_errors"] += 1
            log.exception("sip transport error handling raised")
            return
        for out in sends:
            self._send_now(out)
        self._timers_moved()

    def _drain_errors(self, sock: stdsocket.socket) -> None:
        """Read the socket's error queue (IP_RECVERR): each entry gives back the first bytes
        of a datagram of ours that could not be delivered."""
        for _ in range(RECV_BURST):
            try:
                data, _anc, _flags, addr = sock.recvmsg(2048, 512, stdsocket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.stats["udp_unreachable"] += 1
            try:
                dest = (str(addr[0]), int(addr[1])) if addr else None
                sends = self.proxy.unreachable(data, trio.current_time(), dest)
            except Exception:
                self.stats["handler_errors"] += 1
                log.exception("sip unreachable handling raised")
                continue
            for out in sends:
                self._send_now(out)
        self._timers_moved()

    def _stopped(self) -> None:
        self._nursery = None
        self._udp_std = None
        self._udp = None

    # ------------------------------------------------------------ UDP

    async def _udp_loop(self, sock: stdsocket.socket) -> None:
        """Wait until the socket is readable, then drain it without a trio checkpoint per
        datagram (up to RECV_BURST, then yield): a checkpoint costs about as much as parsing a
        REGISTER, so this loop is where the per-message overhead goes."""
        handle = self.proxy.handle
        clock = self._clock
        stats = self.stats
        limit = self.limiter.enabled
        allow = self.limiter.allow
        handling = self.latency_handling
        perf_counter = time.perf_counter
        while True:
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                return
            for _ in range(RECV_BURST):
                try:
                    data, anc, _flags, addr = sock.recvmsg(RECV_SIZE, _ANC_SIZE)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in TRANSIENT_RECV_ERRNOS:
                        self._drain_errors(sock)
                        continue
                    if e.errno == errno.EBADF:
                        return
                    raise
                stats["udp_received"] += 1
                now = clock()
                if limit and not allow(addr[0], now):
                    stats["rate_limited"] += 1
                    continue
                if len(data) > MAX_MESSAGE_SIZE:
                    continue
                if anc and self._stale(anc, data):
                    # Waited in the socket longer than the client's first retransmission
                    # timer: its retransmission is already queued behind it and will be
                    # served. Working on both is how an overloaded server collapses.
                    stats["udp_stale_dropped"] += 1
                    continue
                if data[:1] < b"@" and is_stun(data):
                    # A phone's STUN keepalive (RFC 5626 §4.4.2): what address we see it at.
                    self._stun(sock, data, addr)
                    continue
                started = perf_counter()
                try:
                    actions = handle(
                        data, Source("udp", addr[0], addr[1]), now, trio.current_time()
                    )
                except Exception:
                    stats["handler_errors"] += 1
                    log.exception("sip handler raised", source=f"{addr[0]}:{addr[1]}")
                    continue
                for action in actions:
                    if isinstance(action, Send):
                        self._send_now(action)
                    elif isinstance(action, Replicate):
                        action.received = started
                        self._start_replication(action)
                    else:
                        self._start_fetch(action)
                handling.observe(perf_counter() - started)
            self._timers_moved()
            await trio.lowlevel.checkpoint()

    def _stun(self, sock: stdsocket.socket, data: bytes, addr: tuple[str, int]) -> None:
        reply = stun_binding_response(data, addr[0], addr[1], "swimthor")
        if reply is None:
            self.stats["stun_dropped"] += 1
            return
        self.stats["stun_bindings"] += 1
        with contextlib.suppress(OSError):  # a full buffer: the phone asks again
            sock.sendto(reply, addr[:2])

    def _stale(self, anc: list[tuple[int, int, bytes]], data: bytes) -> bool:
        """A request (not an ACK, not a response) that the kernel received more than
        `stale_after` seconds ago (SO_TIMESTAMP)."""
        for level, kind, value in anc:
            if level == stdsocket.SOL_SOCKET and kind == SO_TIMESTAMP and len(value) >= 16:
                seconds, micros = _TIMEVAL.unpack_from(value)
                age = time.time() - (seconds + micros / 1e6)
                if age <= self.config.stale_after:
                    return False
                return not (data.startswith(b"SIP/2.0 ") or data.startswith(b"ACK "))
        return False

    def _send_now(self, send: Send) -> None:
        """Send a datagram from this task if the kernel takes it at once; anything else
        (TCP, a name to resolve, a full socket buffer) goes to a task of its own."""
        udp = self._udp_std
        if send.transport == "udp" and udp is not None and is_ip(send.host):
            for attempt in range(2):
                try:
                    udp.sendto(send.data, (send.host, send.port))
                    self.stats["udp_sent"] += 1
                    return
                except BlockingIOError:
                    break
                except OSError:
                    # With IP_RECVERR an ICMP error for an EARLIER datagram (to another
                    # address) is reported by this call: read the error queue, which blames
                    # the right branch, then try once more; only a second failure is ours.
                    self._drain_errors(udp)
                    if attempt:
                        self._transport_error(send)
                        return
        if self._nursery is not None:
            self._nursery.start_soon(self._send, send)

    async def _execute(self, actions: list[Action]) -> None:
        self._timers_moved()
        for action in actions:
            if isinstance(action, Send):
                await self._send(action)
            elif isinstance(action, Replicate):
                self._start_replication(action)
            else:
                self._start_fetch(action)

    # ------------------------------------------------------------ credentials

    def _start_fetch(self, action: FetchCredentials) -> None:
        """Fetch a caller's credentials from its owners, then handle the request again. One
        fetch per AOR at a time: retransmissions meanwhile are left to the one in flight."""
        if self._nursery is None or self.fetch is None or action.aor in self._fetching:
            return
        if len(self._fetching) >= self.config.max_pending_fetches:
            self.stats["fetch_overload"] += 1
            return
        self._fetching.add(action.aor)
        self._nursery.start_soon(self._fetch_then_handle, action)

    async def _fetch_then_handle(self, action: FetchCredentials) -> None:
        try:
            assert self.fetch is not None
            found = await self.fetch(action.aor, action.owners)
        except Exception:
            log.exception("fetching credentials raised", aor=action.aor)
            found = False
        finally:
            self._fetching.discard(action.aor)
        self.stats["credential_fetches"] += 1
        now = self._clock()
        if found is False:
            # No owner answered: nothing is cached, so a retransmission tries again.
            self.stats["credential_fetch_failures"] += 1
            return
        self.proxy.remember_credentials(action.aor, found, now)
        try:
            actions = self.proxy.handle(action.data, action.source, now, trio.current_time())
        except Exception:
            self.stats["handler_errors"] += 1
            log.exception("sip handler raised", source=f"{action.source.host}")
            return
        # The credentials are cached now: handling cannot ask for them again.
        await self._execute([a for a in actions if not isinstance(a, FetchCredentials)])

    async def _send(self, send: Send) -> None:
        host = send.host
        if not is_ip(host):
            if self._nursery is not None:
                self._nursery.start_soon(self._resolve_and_send, send)
            return
        if send.transport != "udp":
            conn = self._conn_for(send)
            if conn is not None:
                self._queue(conn, send.data, send)
            elif self._nursery is not None:
                self._nursery.start_soon(self._send_stream, send)
            return
        udp = self._udp
        if udp is None or self._udp_std is None:
            return
        for attempt in range(2):
            try:
                await udp.sendto(send.data, (host, send.port))
                self.stats["udp_sent"] += 1
                return
            except trio.ClosedResourceError:
                self.stats["send_errors"] += 1
                return
            except OSError:
                self._drain_errors(self._udp_std)  # maybe an earlier datagram's ICMP error
                if attempt:
                    self._transport_error(send)
                    return

    async def _resolve_and_send(self, send: Send) -> None:
        now = time.monotonic()
        cached = self._dns.get(send.host.lower())
        if cached is not None and cached[0] > now:
            address = cached[1]
        else:
            try:
                with trio.fail_after(self.config.connect_timeout):
                    infos = await trio.socket.getaddrinfo(
                        send.host, send.port, type=stdsocket.SOCK_DGRAM
                    )
            except (OSError, trio.TooSlowError):
                self.stats["unresolved"] += 1
                self._transport_error(send)
                return
            if not infos:
                self.stats["unresolved"] += 1
                self._transport_error(send)
                return
            address = str(infos[0][4][0])
            self._dns[send.host.lower()] = (now + self.config.dns_cache_time, address)
            if len(self._dns) > 10_000:
                self._dns.clear()
        await self._send(Send(send.transport, address, send.port, send.data, send.conn))

    # ------------------------------------------------------------ replication

    def _start_replication(self, action: Replicate) -> None:
        if self._nursery is None or self.replicate is None:
            return
        if self._pending >= self.config.max_pending_replications:
            self.stats["replication_overload"] += 1
            if action.txn is not None:
                self.proxy.txns.forget(action.txn)
            self._send_now(self.proxy.replication_failed(action))
            return
        self._pending += 1
        self._queued.append(action)
        if not self._round_scheduled:
            self._round_scheduled = True
            self._nursery.start_soon(self._replication_round)

    async def _replication_round(self) -> None:
        """Every REGISTER of this scheduler tick at once: one write per set of owners (not
        one task and one wait per REGISTER), then each answer."""
        await trio.lowlevel.checkpoint()  # let the rest of this burst join
        actions, self._queued = self._queued, []
        self._round_scheduled = False
        groups: dict[tuple[str, ...], list[Replicate]] = {}
        for action in actions:
            groups.setdefault(tuple(action.peers), []).append(action)
        assert self._nursery is not None
        for peers, group in groups.items():
            self._nursery.start_soon(self._replicate_group, list(peers), group)

    async def _replicate_group(self, peers: list[str], group: list[Replicate]) -> None:
        confirmed: set[str] = set()
        try:
            assert self.replicate is not None
            changes = [change for action in group for change in action.changes]
            confirmed = await self.replicate(changes, peers)
        except Exception:
            log.exception("replication raised")
        missing = len(set(peers) - confirmed)
        if not missing:
            for action in group:
                self._answer_replicated(action, True)
            return
        assert self._nursery is not None
        for action in group:
            self._nursery.start_soon(self._stand_in_then_answer, action, missing)

    async def _stand_in_then_answer(self, action: Replicate, missing: int) -> None:
        """An owner did not confirm in time: the next member in rank (a stand-in) takes the
        copy instead, so the 200 still means "on R nodes". Only when that fails too does
        the phone get 503."""
        self.stats["replication_stand_ins"] += 1
        try:
            assert self.replicate is not None
            stand_ins = self.proxy.stand_ins(action.aor, missing, action.peers)
            if len(stand_ins) >= missing:
                more = await self.replicate(action.changes, stand_ins[:missing])
                missing -= len(more)
        except Exception:
            log.exception("replication raised")
        self._answer_replicated(action, missing == 0)

    def _answer_replicated(self, action: Replicate, ok: bool) -> None:
        self._pending -= 1
        self.stats["replications"] += 1
        send = action.response if ok else self.proxy.replication_failed(action)
        if not ok:
            self.stats["replication_failures"] += 1
            if action.txn is not None:
                self.proxy.txns.forget(action.txn)
        elif action.txn is not None:
            self.proxy.txns.answered(action.txn, self._clock(), send.data)
        self._send_now(send)
        if ok and action.received:
            self.latency_register.observe(time.perf_counter() - action.received)

    # ------------------------------------------------------------ streams: TCP, TLS, WebSocket

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        await self._accept_stream(listener, StreamListen("tcp", self.bind))

    async def _accept_stream(self, listener: trio.SocketListener, spec: StreamListen) -> None:
        stats = self.stats
        transport = spec.transport

        def admit(stream: trio.SocketStream) -> Callable[[], Awaitable[None]] | None:
            if len(self._conns) + self._handshaking >= self.config.max_connections:
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
        self._conns[conn.id] = conn
        self._by_peer[peer] = conn.id
        if self._nursery is not None:
            self._nursery.start_soon(self._write_loop, conn)
        return conn

    def _queue(
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
        self._conns.pop(conn.id, None)
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
            deadline = trio.current_time() + cfg.tcp_idle
            if started is not None:
                deadline = min(deadline, started + cfg.tcp_message_time)
            with trio.move_on_at(deadline):
                chunk = await conn.stream.receive_some(RECV_SIZE)
                if not chunk:
                    return
                if started is None:
                    started = trio.current_time()
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
                    self._queue(conn, reply, framed=True)
                for message in messages:
                    if not message.strip(b"\r\n"):
                        # A WebSocket message of CRLFs: a keepalive (RFC 5626 §4.4.1 as
                        # SIP.js and JsSIP send it over WebSocket); a ping gets a pong.
                        if len(message) >= 4:
                            stats[f"{transport}_pongs"] += 1
                            self._queue(conn, b"\r\n")
                        continue
                    stats[f"{transport}_received"] += 1
                    await self._handle_stream(message, conn)
                if isinstance(framer, WsFramer) and framer.closed:
                    stats["ws_closed_by_frame"] += 1
                    return
                if not framer.partial:
                    started = None
                elif messages:
                    started = trio.current_time()  # the next message started now
                continue
            # The deadline passed.
            if started is not None:
                stats[f"{transport}_closed_slow"] += 1
            else:
                stats[f"{transport}_closed_idle"] += 1
            return

    async def _handle_stream(self, data: bytes, conn: _Conn) -> None:
        now = self._clock()
        if self.limiter.enabled and not self.limiter.allow(conn.peer[0], now):
            self.stats["rate_limited"] += 1
            return
        try:
            actions = self.proxy.handle(
                data,
                Source(conn.transport, conn.peer[0], conn.peer[1], conn.id),
                now,
                trio.current_time(),
            )
        except Exception:
            self.stats["handler_errors"] += 1
            log.exception("sip handler raised", source=f"{conn.peer[0]}:{conn.peer[1]}")
            return
        await self._execute(actions)

    def has_connection(self, conn_id: int) -> bool:
        """Whether the stream connection of that id is still open (a phone's flow)."""
        return conn_id in self._conns

    def connections(self) -> dict[str, int]:
        """Open stream connections by transport (each a phone's flow or a node's link)."""
        out = dict.fromkeys(STREAM_TRANSPORTS, 0)
        for conn in self._conns.values():
            out[conn.transport] += 1
        return out

    def _conn_for(self, send: Send) -> _Conn | None:
        """The open connection `send` goes on: its own, else one to its address."""
        conn = self._conns.get(send.conn) if send.conn is not None else None
        if conn is None:
            cid = self._by_peer.get((send.host, send.port))
            conn = self._conns.get(cid) if cid is not None else None
        return conn

    async def _send_stream(self, send: Send) -> None:
        conn = self._conn_for(send)
        if conn is None:
            # A reply whose connection is gone (§18.2.2: open one to the sent-by, which the
            # caller put in host/port), or a request to a target with no open connection.
            if send.transport not in ("tcp", "tls"):
                # WebSocket clients are never connected to: their flow is all there is.
                self._transport_error(send)
                return
            if len(self._conns) + self._handshaking >= self.config.max_connections:
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
            if self._nursery is not None:
                self._nursery.start_soon(self._read_conn, conn)
        self._queue(conn, send.data, send)

    def _client_tls(self) -> ssl.SSLContext:
        if self._client_ctx is None:
            self._client_ctx = client_tls_context(self.tls_ca)
        return self._client_ctx
