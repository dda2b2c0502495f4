"""Sockets every front-end binds the same way, and one accept loop for their TCP listeners.

The gossip port, the SIP port and the DNS port are each a UDP socket and a TCP listener on one
host:port (`bind_sockets`); each TCP listener admits connections up to a limit and serves
each in its own task (`serve_listener`).
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
    "SO_TIMESTAMP",
    "TRANSIENT_RECV_ERRNOS",
    "BindError",
    "BoundSockets",
    "FrontEndServer",
    "bind_front_end",
    "bind_listener",
    "bind_sockets",
    "family_of",
    "is_ip",
    "reason",
    "serve_listener",
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
