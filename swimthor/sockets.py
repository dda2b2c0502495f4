"""Sockets every front-end binds the same way, one accept loop for their TCP listeners, and
the framing and sharing of the gossip TCP port.

The gossip port, the SIP port and the DNS port are each a UDP socket and a TCP listener on one
host:port (`bind_sockets`); each TCP listener admits connections up to a limit and serves
each in its own task (`serve_listener`).

The gossip TCP port carries frames (`encode_frame`, `read_frame`: a 4-byte big-endian length
and that many bytes) for membership's push-pull and queries and for SIP replication; its
`SharedPort` offers each new connection's first frame to the services that share the port
(SIP replication), and the connection goes to the one that claims it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import re
import socket as stdsocket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
import trio

from .config import format_hostport
from .ratelimit import RateLimit, SourceLimiter

__all__ = [
    "FRONT_END_BUFFER",
    "MAX_SERVICE_CONNECTIONS",
    "SO_TIMESTAMP",
    "TRANSIENT_RECV_ERRNOS",
    "BindError",
    "BoundSockets",
    "FrameError",
    "FrontEndServer",
    "SharedPort",
    "StreamClaim",
    "StreamHandler",
    "bind_front_end",
    "bind_listener",
    "bind_sockets",
    "connect",
    "encode_frame",
    "exchange",
    "family_of",
    "is_ip",
    "read_frame",
    "reason",
    "serve_listener",
    "write_frame",
]

log = structlog.get_logger("swimthor.sockets")

Addr = tuple[str, int]

SO_TIMESTAMP = getattr(stdsocket, "SO_TIMESTAMP", 29)

# recvfrom errors that report an earlier send's ICMP error (or a passing shortage), not a
# broken socket: the receive loops count them and read on.
TRANSIENT_RECV_ERRNOS = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EMSGSIZE,
        errno.ENOBUFS,
        errno.EINTR,
        errno.EAGAIN,
    }
)
# Kernel buffers of a front-end's UDP socket: a burst of a few thousand datagrams waits there.
FRONT_END_BUFFER = 4 << 20

# How often a front-end logs what its rate limit dropped.
REPORT_EVERY = 10.0

# Port 0: tries at a free port for both UDP and TCP (the kernel's pick for TCP may be taken
# for UDP).
BIND_ATTEMPTS = 8


class BindError(OSError):
    """An address could not be bound; `str()` says which address and why, and
    `errno` is the underlying error number (EADDRINUSE, EADDRNOTAVAIL, ...) when known."""

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.errno = err


def is_ip(host: str) -> bool:
    """Whether `host` is an IP address literal. Every datagram sent asks, to tens of
    thousands of phones' addresses (an edge's keepalives): IPv4 by one regular expression
    (what `ipaddress` takes: no leading zeros), IPv6 by `ipaddress`, cached."""
    if _IPV4.fullmatch(host):
        return True
    return ":" in host and _is_ipv6(host)


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}", re.ASCII)


@functools.lru_cache(maxsize=8192)
def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def family_of(host: str) -> stdsocket.AddressFamily:
    return stdsocket.AF_INET6 if ":" in host else stdsocket.AF_INET


def reason(exc: BaseException) -> str:
    """A short lower-case reason for an I/O failure."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, stdsocket.gaierror):
        return f"cannot resolve host ({exc.strerror or exc})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if isinstance(exc, trio.BrokenResourceError):
        cause = exc.__cause__
        return reason(cause) if cause is not None else "connection broken"
    text = str(exc)
    return text or type(exc).__name__


_Bound = TypeVar("_Bound")


@dataclass(slots=True)
class BoundSockets:
    """A UDP socket and a TCP listening socket bound to one host:port (non-blocking)."""

    udp: stdsocket.socket
    tcp: stdsocket.socket
    addr: Addr

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def _listen(host: str, port: int, backlog: int) -> stdsocket.socket:
    family = family_of(host)
    tcp = stdsocket.socket(family, stdsocket.SOCK_STREAM)
    try:
        tcp.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
        if family == stdsocket.AF_INET6:
            tcp.setsockopt(stdsocket.IPPROTO_IPV6, stdsocket.IPV6_V6ONLY, 1)
        tcp.bind((host, port))
        tcp.listen(backlog)
        tcp.setblocking(False)
    except BaseException:
        tcp.close()
        raise
    return tcp


def _bind_one(host: str, port: int, backlog: int) -> BoundSockets:
    family = family_of(host)
    tcp = _listen(host, port, backlog)
    udp: stdsocket.socket | None = None
    try:
        port = tcp.getsockname()[1]
        udp = stdsocket.socket(family, stdsocket.SOCK_DGRAM)
        if family == stdsocket.AF_INET6:
            udp.setsockopt(stdsocket.IPPROTO_IPV6, stdsocket.IPV6_V6ONLY, 1)
        udp.bind((host, port))
        udp.setblocking(False)
    except BaseException:
        tcp.close()
        if udp is not None:
            udp.close()
        raise
    return BoundSockets(udp=udp, tcp=tcp, addr=(host, port))


def bind_sockets(bind: Addr, backlog: int = 128) -> BoundSockets:
    """Bind a UDP socket and a TCP listener on one host:port (port 0: a free one for both);
    the gossip port, and the SIP and DNS front-ends' ports.

    `host` is an IP address, or a name resolved once here (its first address). Raises
    BindError with a one-line message.
    """
    return _bind(bind, lambda host, port: _bind_one(host, port, backlog))


def bind_listener(bind: Addr, backlog: int = 128) -> stdsocket.socket:
    """Bind a TCP listener alone (SIP over TLS or WebSocket), as `bind_sockets` does."""
    return _bind(bind, lambda host, port: _listen(host, port, backlog))


def _bind(bind: Addr, one: Callable[[str, int], _Bound]) -> _Bound:
    host, port = bind
    where = format_hostport(bind)
    if not is_ip(host):
        try:
            infos = stdsocket.getaddrinfo(host, port, type=stdsocket.SOCK_DGRAM)
        except OSError as e:
            raise BindError(f"cannot bind {where}: cannot resolve {host!r} ({e})") from None
        host = str(infos[0][4][0])
    attempts = BIND_ATTEMPTS if port == 0 else 1
    for attempt in range(attempts):
        try:
            return one(host, port)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                if attempt + 1 < attempts:
                    continue
                raise BindError(f"address {where} in use", e.errno) from None
            raise BindError(f"cannot bind {where}: {reason(e)}", e.errno) from None
    raise BindError(
        f"address {where} in use", errno.EADDRINUSE
    )  # pragma: no cover - loop always returns


def bind_front_end(bind: Addr, *, backlog: int, timestamps: bool = False) -> BoundSockets:
    """`bind_sockets` for a SIP or DNS front-end: bigger UDP buffers, and kernel receive
    timestamps (SO_TIMESTAMP) when asked for."""
    bound = bind_sockets(bind, backlog)
    if timestamps:
        with contextlib.suppress(OSError):
            bound.udp.setsockopt(stdsocket.SOL_SOCKET, SO_TIMESTAMP, 1)
    for opt in (stdsocket.SO_RCVBUF, stdsocket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            bound.udp.setsockopt(stdsocket.SOL_SOCKET, opt, FRONT_END_BUFFER)
    return bound


# Called for each accepted connection, synchronously (so a limit holds however fast clients
# connect): returns the coroutine function that serves it, or None to close it at once.
Admit = Callable[[trio.SocketStream], Callable[[], Awaitable[None]] | None]


async def serve_listener(
    listener: trio.SocketListener,
    admit: Admit,
    *,
    what: str,
    on_error: Callable[[OSError], None] | None = None,
) -> None:
    """Accept connections until the listener closes; each admitted one is served in a task
    of this loop's nursery. An accept failure (EMFILE and friends) is logged and retried
    after 100 ms, while descriptors free up."""
    async with trio.open_nursery() as nursery:
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as e:
                if on_error is not None:
                    on_error(e)
                log.warning(f"{what} accept failed", reason=reason(e))
                await trio.sleep(0.1)
                continue
            serve = admit(stream)
            if serve is None:
                await trio.aclose_forcefully(stream)
                continue
            nursery.start_soon(serve)


class FrontEndServer:
    """What the SIP and DNS servers share: a UDP socket and a TCP listener on one port, bound
    by `open()` before serving (so the agent can announce the address first), a UDP loop and
    an accept loop in one nursery, and everything closed when serving ends."""

    backlog = 128
    timestamps = False
    what = "front-end"  # for log lines

    def __init__(self, bind: Addr, limiter: SourceLimiter | None = None) -> None:
        self.bind = bind
        self.bound: Addr | None = None
        self._sockets: tuple[stdsocket.socket, stdsocket.socket] | None = None
        # The per-source flood guard (disabled unless a rate is configured).
        self.limiter = limiter if limiter is not None else SourceLimiter(RateLimit())

    def open(self) -> Addr:
        """Bind UDP and TCP on the same port now (port 0: one the kernel picks for both), so
        the caller knows the address before serving. Returns it; BindError otherwise."""
        if self._sockets is None:
            bound = bind_front_end(self.bind, backlog=self.backlog, timestamps=self.timestamps)
            self._sockets = (bound.udp, bound.tcp)
            self.bound = bound.addr
        assert self.bound is not None
        return self.bound

    def close(self) -> None:
        if self._sockets is not None:
            for sock in self._sockets:
                sock.close()
            self._sockets = None

    async def serve(self, *, task_status: trio.TaskStatus[Addr] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (binding first if `open()` was not called)."""
        self.open()
        assert self._sockets is not None and self.bound is not None
        udp, tcp = self._sockets
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(tcp))
        try:
            async with trio.open_nursery() as nursery:
                self._serving(nursery, udp)
                nursery.start_soon(self._udp_loop, udp)
                nursery.start_soon(self._accept_loop, listener)
                if self.limiter.enabled:
                    nursery.start_soon(self._report_drops)
                task_status.started(self.bound)
        finally:
            self._stopped()
            udp.close()
            tcp.close()
            self._sockets = None

    async def _report_drops(self) -> None:
        """A log line every REPORT_EVERY seconds while the rate limit drops anything."""
        while True:
            await trio.sleep(REPORT_EVERY)
            total, top = self.limiter.report()
            if total:
                log.warning(
                    f"{self.what} requests over the per-source rate limit dropped",
                    count=total,
                    top=", ".join(f"{src} {n}" for src, n in top),
                    limit=f"{self.limiter.rate:g}/s burst {self.limiter.burst:g}",
                )

    def _serving(self, nursery: trio.Nursery, udp: stdsocket.socket) -> None:
        """Hook: serving starts in `nursery`."""

    def _stopped(self) -> None:
        """Hook: serving ended."""

    async def _udp_loop(self, sock: stdsocket.socket) -> None:
        raise NotImplementedError

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------- frames on the gossip port

# Concurrent long-lived connections handed to other services (one per peer node and service).
MAX_SERVICE_CONNECTIONS = 4096

StreamHandler = Callable[[trio.abc.Stream], Awaitable[None]]
StreamClaim = Callable[[bytes, Addr], StreamHandler | None]


class FrameError(Exception):
    """A TCP frame was malformed (too long, cut short)."""


def encode_frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(min(n - len(buf), 65536))
        if not chunk:
            raise FrameError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def read_frame(stream: trio.abc.ReceiveStream, max_len: int) -> bytes:
    """One frame's payload; FrameError if the length exceeds `max_len` or the peer stops."""
    header = await _receive_exactly(stream, 4)
    length = int.from_bytes(header, "big")
    if length > max_len:
        raise FrameError(f"frame of {length} bytes exceeds the limit of {max_len}")
    return await _receive_exactly(stream, length)


async def write_frame(stream: trio.abc.SendStream, payload: bytes) -> None:
    await stream.send_all(encode_frame(payload))


async def connect(addr: Addr) -> trio.SocketStream:
    """A TCP connection to `addr` (a name is resolved; the first address is tried)."""
    host, port = addr
    infos = await trio.socket.getaddrinfo(host, port, type=stdsocket.SOCK_STREAM)
    if not infos:
        raise OSError(errno.EHOSTUNREACH, "no address")
    family, type_, proto, _, sockaddr = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        await sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def exchange(
    addr: Addr,
    payload: bytes,
    max_len: int,
    *,
    via: Callable[[Addr], Awaitable[trio.abc.Stream]] = connect,
) -> bytes:
    """Connect (with `via`: over TCP unless a test's network is given), send one frame, read
    one reply frame. Raises on any failure."""
    stream = await via(addr)
    async with stream:
        await write_frame(stream, payload)
        return await read_frame(stream, max_len)


class SharedPort:
    """The services that share the gossip TCP port with membership (SIP replication): each
    is offered a new connection's first frame and returns a handler if the frame is its own.
    At most `limit` handed-over connections at once."""

    def __init__(self, limit: int = MAX_SERVICE_CONNECTIONS) -> None:
        self._claims: list[StreamClaim] = []
        self.limit = limit
        self.active = 0

    def add(self, claim: StreamClaim) -> None:
        """Let `claim(first_frame, peer_addr)` take over inbound connections whose first
        frame it recognizes (it returns an async handler of the stream, or None)."""
        self._claims.append(claim)

    def claim(self, first_frame: bytes, addr: Addr) -> StreamHandler | None:
        """The handler of the first service that claims the connection, or None."""
        for claim in self._claims:
            service = claim(first_frame, addr)
            if service is not None:
                return service
        return None

    async def serve(self, service: StreamHandler, stream: trio.abc.Stream) -> bool:
        """Run `service` on `stream` unless `limit` connections are served already (then
        False at once, and the caller closes the stream)."""
        if self.active >= self.limit:
            return False
        self.active += 1
        try:
            await service(stream)
        finally:
            self.active -= 1
        return True
