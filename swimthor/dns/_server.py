"""The trio DNS transport: UDP and TCP (RFC 7766) on `--dns HOST:PORT`.

UDP: the loop waits until the socket is readable, then drains it without a trio checkpoint per
datagram (an answer from the cache costs a few microseconds, a checkpoint more than that).

TCP (RFC 7766): each message has a two-byte length prefix; a connection carries any number of
queries, pipelined queries are answered in order; a connection idle for `tcp_idle` seconds, or
that takes longer than `tcp_message_time` to finish a message it started, is closed; at most
`max_connections` are open (more are refused at accept). A length under 12 bytes (no header)
closes the connection.
"""

from __future__ import annotations

import errno
import functools
import socket as stdsocket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
import trio

from ..clocks import Clocks
from ..ratelimit import SourceLimiter
from ..sockets import TRANSIENT_RECV_ERRNOS, FrontEndServer, serve_listener
from ._zone import Zone

__all__ = ["DnsServer", "DnsTransportConfig"]

log = structlog.get_logger("swimthor.dns")

RECV_SIZE = 65_535
RECV_BURST = 64


@dataclass(frozen=True, slots=True)
class DnsTransportConfig:
    max_connections: int = 256
    tcp_idle: float = 10.0  # RFC 7766 §6.2.3: "a few seconds" between queries
    tcp_message_time: float = 5.0


class DnsServer(FrontEndServer):
    what = "dns"
    backlog = 256

    def __init__(
        self,
        zone: Zone,
        bind: tuple[str, int],
        config: DnsTransportConfig | None = None,
        limiter: SourceLimiter | None = None,
    ) -> None:
        super().__init__(bind, limiter)
        self.zone = zone
        self.config = config or DnsTransportConfig()
        self._open_conns = 0
        self.stats: dict[str, int] = {
            "udp_received": 0,
            "udp_sent": 0,
            "tcp_accepted": 0,
            "tcp_refused": 0,
            "tcp_received": 0,
            "tcp_sent": 0,
            "tcp_closed_idle": 0,
            "tcp_closed_slow": 0,
            "tcp_bad_frames": 0,
            "send_errors": 0,
            "handler_errors": 0,
            "rate_limited": 0,
        }

    # ------------------------------------------------------------ UDP

    async def _udp_loop(self, sock: stdsocket.socket) -> None:
        respond = self.zone.respond
        stats = self.stats
        limit = self.limiter.enabled
        allow = self.limiter.allow
        clock = Clocks.trio  # the buckets' clock (swimthor.clocks)
        while True:
            try:
                await trio.lowlevel.wait_readable(sock)
            except (trio.ClosedResourceError, OSError):
                return
            for _ in range(RECV_BURST):
                try:
                    data, addr = sock.recvfrom(RECV_SIZE)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in TRANSIENT_RECV_ERRNOS:
                        continue
                    if e.errno == errno.EBADF:
                        return
                    raise
                stats["udp_received"] += 1
                if limit and not allow(addr[0], clock()):
                    stats["rate_limited"] += 1
                    continue
                try:
                    answer = respond(data)
                except Exception:
                    stats["handler_errors"] += 1
                    log.exception("dns handler raised", source=f"{addr[0]}:{addr[1]}")
                    continue
                if answer is None:
                    continue
                try:
                    sock.sendto(answer, addr)
                    stats["udp_sent"] += 1
                except OSError:
                    # A full send buffer drops the answer as a lossy network would; the
                    # client retries.
                    stats["send_errors"] += 1
            await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------ TCP

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        def admit(stream: trio.SocketStream) -> Callable[[], Awaitable[None]] | None:
            if self._open_conns >= self.config.max_connections:
                self.stats["tcp_refused"] += 1
                return None
            self.stats["tcp_accepted"] += 1
            self._open_conns += 1
            return functools.partial(self._serve_conn, stream)

        await serve_listener(listener, admit, what="dns")

    async def _serve_conn(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        started: float | None = None
        cfg = self.config
        try:
            peer = str(stream.socket.getpeername()[0])
        except OSError:
            peer = "?"
        try:
            while True:
                deadline = Clocks.trio() + cfg.tcp_idle
                if started is not None:
                    deadline = min(deadline, started + cfg.tcp_message_time)
                with trio.move_on_at(deadline):
                    chunk = await stream.receive_some(RECV_SIZE)
                    if not chunk:
                        return
                    if started is None:
                        started = Clocks.trio()
                    buf += chunk
                    answers = []
                    while len(buf) >= 2:
                        length = (buf[0] << 8) | buf[1]
                        if length < 12:
                            self.stats["tcp_bad_frames"] += 1
                            return
                        if len(buf) < 2 + length:
                            break
                        message = bytes(buf[2 : 2 + length])
                        del buf[: 2 + length]
                        self.stats["tcp_received"] += 1
                        if self.limiter.enabled and not self.limiter.allow(peer, Clocks.trio()):
                            self.stats["rate_limited"] += 1
                            continue
                        try:
                            answer = self.zone.respond(message, tcp=True)
                        except Exception:
                            self.stats["handler_errors"] += 1
                            log.exception("dns handler raised")
                            return
                        if answer is not None:
                            answers.append(len(answer).to_bytes(2, "big") + answer)
                    if answers:
                        await stream.send_all(b"".join(answers))
                        self.stats["tcp_sent"] += len(answers)
                    started = Clocks.trio() if buf else None
                    continue
                if started is not None:
                    self.stats["tcp_closed_slow"] += 1
                else:
                    self.stats["tcp_closed_idle"] += 1
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        finally:
            self._open_conns -= 1
            await trio.aclose_forcefully(stream)
