"""The trio SIP transport: one UDP socket and one TCP listener on `--sip HOST:PORT`.

Every datagram and every complete TCP message goes to `Proxy.handle`; what it returns is sent
here. TCP messages are framed by Content-Length (RFC 3261 §18.3) with the same size bound as
a datagram; a connection that sends nothing for `tcp_idle` seconds, or takes more than
`tcp_message_time` to finish a message it started (a slowloris), is closed; at most
`max_connections` are open at once (new ones beyond that are refused at accept). Replies to a
TCP request go back on its connection; requests we forward over TCP reuse an open connection
to the target or open one. Non-IP targets are resolved, with a short-lived cache. The stream
connections themselves (TCP, TLS, WebSocket) are `StreamConnections`' (`_connections.py`).

A `Replicate` action runs in its own task: the store change is sent to the other owners and
the response goes out when they confirm (or the failure response when they do not in time).
"""

from __future__ import annotations

import contextlib
import errno
import math
import socket as stdsocket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from ..clocks import HOST_CLOCKS, Clocks
from ..metrics import Latency
from ..ratelimit import SourceLimiter
from ..sockets import (
    SO_TIMESTAMP,
    TRANSIENT_RECV_ERRNOS,
    FrontEndServer,
    bind_listener,
    is_ip,
)
from ._actions import Send, Source
from ._connections import RECV_SIZE, StreamConnections, StreamListen, _Conn
from ._hop import Action, FetchCredentials, Replicate
from ._message import MAX_MESSAGE_SIZE
from ._proxy import Proxy
from ._streams import STREAM_TRANSPORTS
from ._stun import is_stun, stun_binding_response

__all__ = ["SipServer", "SipTransportConfig", "StreamListen"]

log = structlog.get_logger("swimthor.sip")

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
    # A REGISTER's write: one attempt's wait, and how long it keeps being retried before the
    # phone gets 503 (the sip config's replication_timeout and replication_deadline).
    replication_timeout: float = 0.5
    replication_deadline: float = 8.0
    max_pending_fetches: int = 1_000
    dns_cache_time: float = 30.0
    # A request that waited in the socket longer than this is dropped unread: its sender has
    # retransmitted by then (RFC 3261 timer E/A start at T1 = 0.5 s).
    stale_after: float = 0.5


ReplicateFn = Callable[[list[Any], list[str]], Awaitable[set[str]]]
# aor, owners -> the subscriber record, None (no such subscriber) or False (nobody answered).
FetchFn = Callable[[str, list[str]], Awaitable[Any]]


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
        clocks: Clocks = HOST_CLOCKS,
        limiter: SourceLimiter | None = None,
        streams: tuple[StreamListen, ...] = (),
        tls_ca: str | None = None,
    ) -> None:
        super().__init__(bind, limiter)
        # More stream listeners (TLS, WebSocket), each bound by open(): transport -> address.
        self.streams = streams
        self.stream_bound: dict[str, tuple[str, int]] = {}
        self._stream_socks: dict[str, stdsocket.socket] = {}
        self.proxy = proxy
        self.config = config or SipTransportConfig()
        self.replicate = replicate
        # Fetches a caller's subscriber record from its owners (the replicator's).
        self.fetch: FetchFn | None = None
        self._fetching: set[str] = set()
        # Latency histograms for the metrics (swimthor.metrics.Latency).
        self.latency_handling = Latency()
        self.latency_register = Latency()
        self.clocks = clocks
        self._udp: trio.socket.SocketType | None = None
        self._udp_std: stdsocket.socket | None = None
        self._nursery: trio.Nursery | None = None
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
            "replication_rounds": 0,
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
        # The stream connections (TCP, TLS, WebSocket): what they read goes to
        # `_handle_stream`, a send they cannot write to `_transport_error`.
        self.stream_conns = StreamConnections(
            self.config, self.stats, self._handle_stream, self._transport_error, tls_ca
        )

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
            nursery.start_soon(self.stream_conns.accept, listener, spec)
        self._nursery = self.stream_conns.nursery = nursery
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
            now = self._timers_ran = self.clocks.trio()
            self.stats["timer_runs"] += 1
            try:
                actions = self.proxy.handle_timer(now, self.clocks.wall())
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
            sends = self.proxy.transport_error(send.txn, self.clocks.trio())
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
                sends = self.proxy.unreachable(data, self.clocks.trio(), dest)
            except Exception:
                self.stats["handler_errors"] += 1
                log.exception("sip unreachable handling raised")
                continue
            for out in sends:
                self._send_now(out)
        self._timers_moved()

    def _stopped(self) -> None:
        self._nursery = self.stream_conns.nursery = None
        self._udp_std = None
        self._udp = None

    # ------------------------------------------------------------ UDP

    async def _udp_loop(self, sock: stdsocket.socket) -> None:
        """Wait until the socket is readable, then drain it without a trio checkpoint per
        datagram (up to RECV_BURST, then yield): a checkpoint costs about as much as parsing a
        REGISTER, so this loop is where the per-message overhead goes."""
        handle = self.proxy.handle
        wall, mono = self.clocks.wall, self.clocks.trio
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
                now, mono_now = wall(), mono()
                if limit and not allow(addr[0], mono_now):
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
                    actions = handle(data, Source("udp", addr[0], addr[1]), now, mono_now)
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
                age = self.clocks.wall() - (seconds + micros / 1e6)
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
        now = self.clocks.wall()
        if found is False:
            # No owner answered: nothing is cached, so a retransmission tries again.
            self.stats["credential_fetch_failures"] += 1
            return
        self.proxy.remember_credentials(action.aor, found, now)
        try:
            actions = self.proxy.handle(action.data, action.source, now, self.clocks.trio())
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
            conn = self.stream_conns.conn_for(send)
            if conn is not None:
                self.stream_conns.queue(conn, send.data, send)
            elif self._nursery is not None:
                self._nursery.start_soon(self.stream_conns.send_stream, send)
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
        now = self.clocks.trio()
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
        started = self.clocks.trio()
        confirmed: set[str] = set()
        try:
            assert self.replicate is not None
            changes = [change for action in group for change in action.changes]
            confirmed = await self.replicate(changes, peers)
        except Exception:
            log.exception("replication raised")
        if not set(peers) - confirmed:
            for action in group:
                self._answer_replicated(action, True)
            return
        assert self._nursery is not None
        for action in group:
            self._nursery.start_soon(self._until_confirmed, action, confirmed, started)

    async def _until_confirmed(self, action: Replicate, holders: set[str], started: float) -> None:
        """Not every owner confirmed in time. The write keeps going, a round of at most one
        replication timeout at a time, until as many nodes as there are other owners hold it
        or `replication_deadline` has passed since the REGISTER's first attempt: each round
        asks again the owners that have not confirmed, whatever membership now thinks of them
        (a slow owner is not a dead one: a paused or starved host answers a second later)
        and, for each copy still missing, a stand-in, the next live member in rank that does
        not hold it, ranked afresh (`Registrar.copy_targets`). The phone's retransmissions
        meanwhile are absorbed by the pending transaction. 503 only at the deadline."""
        self.stats["replication_stand_ins"] += 1
        need = len(action.peers)
        holders = set(holders)
        deadline = started + self.config.replication_deadline
        while len(holders) < need:
            round_started = self.clocks.trio()
            if round_started >= deadline:
                break
            targets = self.proxy.copy_targets(action.aor, action.peers, holders)
            if not targets:
                break
            self.stats["replication_rounds"] += 1
            try:
                assert self.replicate is not None
                holders |= await self.replicate(action.changes, targets)
            except Exception:
                log.exception("replication raised")
            if len(holders) < need:
                # Refused at once (no route, a peer's port closed): wait out the round
                # rather than spin.
                round_end = round_started + self.config.replication_timeout
                await trio.sleep_until(min(deadline, round_end))
        self._answer_replicated(action, len(holders) >= need)

    def _answer_replicated(self, action: Replicate, ok: bool) -> None:
        self._pending -= 1
        self.stats["replications"] += 1
        send = action.response if ok else self.proxy.replication_failed(action)
        if not ok:
            self.stats["replication_failures"] += 1
            if action.txn is not None:
                self.proxy.txns.forget(action.txn)
        elif action.txn is not None:
            self.proxy.txns.answered(action.txn, self.clocks.wall(), send.data)
        self._send_now(send)
        if ok and action.received:
            self.latency_register.observe(time.perf_counter() - action.received)

    # ------------------------------------------------------------ streams: TCP, TLS, WebSocket

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        await self.stream_conns.accept(listener, StreamListen("tcp", self.bind))

    async def _handle_stream(self, data: bytes, conn: _Conn) -> None:
        now, mono = self.clocks.wall(), self.clocks.trio()
        if self.limiter.enabled and not self.limiter.allow(conn.peer[0], mono):
            self.stats["rate_limited"] += 1
            return
        try:
            actions = self.proxy.handle(
                data,
                Source(conn.transport, conn.peer[0], conn.peer[1], conn.id),
                now,
                mono,
            )
        except Exception:
            self.stats["handler_errors"] += 1
            log.exception("sip handler raised", source=f"{conn.peer[0]}:{conn.peer[1]}")
            return
        await self._execute(actions)

    def has_connection(self, conn_id: int) -> bool:
        """Whether the stream connection of that id is still open (a phone's flow)."""
        return conn_id in self.stream_conns.conns

    def connections(self) -> dict[str, int]:
        """Open stream connections by transport (each a phone's flow or a node's link)."""
        out = dict.fromkeys(STREAM_TRANSPORTS, 0)
        for conn in self.stream_conns.conns.values():
            out[conn.transport] += 1
        return out
