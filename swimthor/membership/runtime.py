"""The trio driver of one `Membership` core: its network, its clock.

The core decides everything; this module only moves bytes and time. The network is a
`GossipTransport`: on a host, `SocketTransport` (one UDP socket and one TCP listener sharing a
host:port); in tests, an in-memory one (`tests/memnet.py`), so that `autojump_clock` drives
whole clusters. A receive loop puts datagrams into a bounded queue (dropping and counting when
it is full, like trio's ``dtls_receive_loop``); one driver task feeds the core from that queue
and from its timer, and after every input flushes what the core wants done: datagrams are
sent, streams are opened (one task each), events go to subscribers. Time is
``trio.current_time()``, so ``MockClock``/``autojump_clock`` drives the core in tests.

TCP frames (`swimthor.sockets.encode_frame`) are a 4-byte big-endian length and that many
bytes; one request frame and one reply frame per connection; a connection whose first frame
another service claims (`add_stream_service`, SIP replication) is handed to it. Nothing a peer
sends (garbage, a huge length, one byte a minute) can do
more than waste one bounded connection slot for `tcp_timeout` seconds.
"""

from __future__ import annotations

import errno
import functools
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
import trio

from ..config import MembershipConfig, format_hostport
from ..keyring import Keyring, new_nonce
from ..sockets import (
    TRANSIENT_RECV_ERRNOS,
    BoundSockets,
    FrameError,
    SharedPort,
    StreamClaim,
    bind_sockets,
    connect,
    exchange,
    is_ip,
    read_frame,
    reason,
    serve_listener,
    write_frame,
)
from ._core import Membership, StreamRequest
from ._events import Event
from ._member import Addr, State
from ._query import QueryError, key_op_frame, query_frame, read_key_op_reply, read_query_reply

__all__ = ["MembershipRuntime", "QueryError", "query"]

log = structlog.get_logger("swimthor.membership.runtime")

# Concurrent inbound TCP connections; further ones are closed at once and counted.
MAX_TCP_CONNECTIONS = 64
# Datagrams read per wake-up of the receive loop before yielding to the scheduler.
RECV_BURST = 256
# Largest datagram read (the IPv4 UDP maximum, so an oversized one is seen and dropped whole).
RECV_SIZE = 65536
# Datagrams taken from the queue per driver step before flushing and yielding.
DRIVE_BATCH = 64
# Retries when binding port 0 and the UDP side of the TCP port's number is taken.
# A core timer still due right after handle_timer: refire this often at once, then back off.
STUCK_TIMER_REFIRES = 8
STUCK_TIMER_BACKOFF = 0.01
# How far the host's wall clock may move against trio's before the core's wall offset follows
# it (`_follow_wall_clock`): well inside the keyring's replay window (30 s), and far above the
# drift of two clocks read a microsecond apart, so the shared probe schedule does not jitter.
WALL_STEP = 1.0
# Extra room in a frame above max_stream_size (envelope and framing overhead).
FRAME_SLACK = 64


# ---------------------------------------------------------------- the network

Admit = Callable[[trio.abc.Stream, Addr], Callable[[], Awaitable[None]] | None]
Deliver = Callable[[bytes, Addr], None]


class GossipTransport(Protocol):
    """What the runtime needs of the network: datagrams both ways and streams both ways on
    one address. `SocketTransport` is the host's (a UDP socket and a TCP listener on one
    port); tests give an in-memory one, so that a cluster of runtimes runs on trio's clock
    alone (`autojump_clock`)."""

    @property
    def addr(self) -> Addr: ...

    def send(self, data: bytes, addr: Addr) -> bool:
        """Send a datagram to an IP address now; False if it was dropped (a full buffer)."""
        ...

    async def send_to_name(self, data: bytes, addr: Addr) -> None:
        """Send a datagram to a host name (resolved first); OSError if it cannot be."""
        ...

    async def receive(
        self, deliver: Callable[[bytes, Addr], None], error: Callable[[], None]
    ) -> None:
        """Hand every datagram that arrives to `deliver` (a burst at a time, then yield)
        until the transport closes; `error()` for each transient receive error."""
        ...

    async def connect(self, addr: Addr) -> trio.abc.Stream: ...

    async def accept(self, admit: Admit, error: Callable[[OSError], None]) -> None:
        """Accept streams until the transport closes; `admit(stream, peer)` returns how to
        serve one (in a task of this loop), or None to close it at once."""
        ...

    def close(self) -> None: ...


class SocketTransport:
    """The host's network: the UDP socket and TCP listener of `bind_sockets`."""

    def __init__(self, sockets: BoundSockets) -> None:
        self._std = sockets.udp
        self._udp = trio.socket.from_stdlib_socket(sockets.udp)
        self._listener = trio.SocketListener(trio.socket.from_stdlib_socket(sockets.tcp))
        self._addr = sockets.addr

    @property
    def addr(self) -> Addr:
        return self._addr

    def send(self, data: bytes, addr: Addr) -> bool:
        try:
            self._std.sendto(data, addr)
        except OSError:  # includes BlockingIOError: a full send buffer drops, like a network
            return False
        return True

    async def send_to_name(self, data: bytes, addr: Addr) -> None:
        await self._udp.sendto(data, addr)

    async def receive(
        self, deliver: Callable[[bytes, Addr], None], error: Callable[[], None]
    ) -> None:
        std = self._std
        try:
            while True:
                await trio.lowlevel.wait_readable(self._udp)
                for _ in range(RECV_BURST):
                    try:
                        data, addr = std.recvfrom(RECV_SIZE)
                    except BlockingIOError:
                        break
                    except OSError as e:
                        if e.errno in (errno.EBADF, errno.ENOTSOCK):
                            return
                        if e.errno in TRANSIENT_RECV_ERRNOS:
                            error()
                            continue
                        raise
                    deliver(data, (addr[0], addr[1]))
        except trio.ClosedResourceError:
            return

    async def connect(self, addr: Addr) -> trio.abc.Stream:
        return await connect(addr)

    async def accept(self, admit: Admit, error: Callable[[OSError], None]) -> None:
        def admit_socket(stream: trio.SocketStream) -> Callable[[], Awaitable[None]] | None:
            try:
                peer = stream.socket.getpeername()
            except OSError as e:
                error(e)
                return None
            return admit(stream, (peer[0], peer[1]))

        await serve_listener(self._listener, admit_socket, what="gossip", on_error=error)

    def close(self) -> None:
        self._udp.close()
        self._listener.socket.close()


# ---------------------------------------------------------------- the runtime


class MembershipRuntime:
    """Drives one `Membership` core with trio: sockets, timer, streams, event fan-out."""

    def __init__(
        self,
        core: Membership,
        bind: Addr,
        config: MembershipConfig,
        *,
        sockets: BoundSockets | None = None,
        transport: GossipTransport | None = None,
    ) -> None:
        """`sockets`: already bound with `bind_sockets` (so the caller knows the port before
        it builds the core); `transport`: another network than the host's (tests); with
        neither, `serve()` binds `bind` itself."""
        self.core = core
        self.config = config
        self._bind = bind
        self._sockets = sockets
        self._transport = transport
        self.bound_addr: Addr | None = (
            sockets.addr if sockets is not None else transport.addr if transport else None
        )
        self.stats: dict[str, int] = {
            "inbound_dropped": 0,
            "datagrams_received": 0,
            "datagrams_sent": 0,
            "send_errors": 0,
            "recv_errors": 0,
            "streams_opened": 0,
            "stream_failures": 0,
            "tcp_accepted": 0,
            "tcp_rejected": 0,
            "tcp_errors": 0,
            "subscriber_dropped": 0,
            "core_errors": 0,
            "timer_stuck": 0,
        }
        self._max_frame = config.max_stream_size + FRAME_SLACK
        send, recv = trio.open_memory_channel[tuple[bytes, Addr]](config.inbound_queue_size)
        self._inbound_send: trio.MemorySendChannel[tuple[bytes, Addr]] = send
        self._inbound_recv: trio.MemoryReceiveChannel[tuple[bytes, Addr]] = recv
        self._activity = trio.Event()
        self._subscribers: list[trio.MemorySendChannel[Event]] = []
        self._tcp_active = 0
        # Other services that share the gossip TCP port (SIP replication).
        self.services = SharedPort()
        self._nursery: trio.Nursery | None = None
        self._net: GossipTransport | None = None

    # ------------------------------------------------------------ public

    def subscribe(self, max_buffer: int = 1000) -> trio.MemoryReceiveChannel[Event]:
        """A channel that receives every event from now on; a full one misses (counted)."""
        send, recv = trio.open_memory_channel[Event](max_buffer)
        self._subscribers.append(send)
        return recv

    def add_stream_service(self, claim: StreamClaim) -> None:
        """Let `claim(first_frame, peer_addr)` take over inbound connections whose first
        frame it recognizes (it returns an async handler of the stream, or None)."""
        self.services.add(claim)

    def wake(self) -> None:
        """Tell the driver the core got input from outside (leave, metadata, keys), so it
        flushes and rereads the timer now."""
        self._activity.set()

    async def serve(self, *, task_status: trio.TaskStatus[Addr] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the bound address with `task_status.started`, run until cancelled."""
        net = self._transport
        if net is None:
            net = SocketTransport(self._sockets or bind_sockets(self._bind))
        self._sockets = self._transport = None  # owned from here on
        self._net = net
        self.bound_addr = net.addr
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._receive_loop, net)
                nursery.start_soon(self._tcp_loop, net)
                nursery.start_soon(self._drive)
                task_status.started(net.addr)
        finally:
            # Synchronous on purpose: an await here would be cancelled before the cleanup.
            self._nursery = None
            net.close()
            for s in self._subscribers:
                s.close()

    async def leave(self, timeout: float) -> bool:
        """Broadcast our leave and keep driving until the core says it went out, or
        `timeout` seconds. True if the core reported the leave complete."""
        with trio.move_on_after(timeout):
            self.core.leave(trio.current_time())
            self.wake()
            while not self.core.leave_complete(trio.current_time()):
                await trio.sleep(0.01)
            return True
        return False

    async def key_op_all(self, op: str, key: bytes) -> dict[str, str | None]:
        """Send a key operation to every live member but us, concurrently; name -> None if
        it applied the operation, else the error text."""
        core = self.core
        targets = [
            m for m in core.members() if m.name != core.local.name and State(m.state).is_live
        ]
        results: dict[str, str | None] = {}
        frame = key_op_frame(op, key, core.keyring, core.label, time.time(), new_nonce())

        async def one(name: str, addr: Addr) -> None:
            try:
                with trio.fail_after(self.config.tcp_timeout):
                    reply = await self._exchange(addr, frame)
                read_key_op_reply(reply, core.keyring, core.label, time.time())
            except QueryError as e:
                results[name] = str(e)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, FrameError) as e:
                results[name] = f"no answer from {format_hostport(addr)}: {reason(e)}"
            else:
                results[name] = None

        async with trio.open_nursery() as nursery:
            for m in targets:
                nursery.start_soon(one, m.name, m.addr)
        return results

    # ------------------------------------------------------------ tasks

    async def _receive_loop(self, net: GossipTransport) -> None:
        send = self._inbound_send
        stats = self.stats

        def deliver(data: bytes, addr: Addr) -> None:
            stats["datagrams_received"] += 1
            try:
                send.send_nowait((data, addr))
            except trio.WouldBlock:
                stats["inbound_dropped"] += 1
            self._activity.set()

        def error() -> None:
            stats["recv_errors"] += 1

        await net.receive(deliver, error)

    def _follow_wall_clock(self, now: float) -> None:
        """The core's wall clock is trio's plus `wall_offset`; when the host's clock steps
        (NTP, an operator) by more than WALL_STEP, the core follows it, so that what it seals
        is stamped, and what it opens checked, against the host's wall clock."""
        offset = time.time() - now
        if abs(offset - self.core.wall_offset) > WALL_STEP:
            self.core.wall_offset = offset

    async def _drive(self) -> None:
        """One step per wake-up: fire the timer if due, feed queued datagrams, flush, then
        sleep until the core's timer or new input (a datagram, a stream, `wake()`)."""
        core = self.core
        recv = self._inbound_recv
        spins = 0
        while True:
            now = trio.current_time()
            self._follow_wall_clock(now)
            timer = core.get_timer()
            if timer is not None and timer <= now:
                self._guard(core.handle_timer, now)
                after = core.get_timer()
                spins = spins + 1 if after is not None and after <= now else 0
            else:
                spins = 0
            self._activity = trio.Event()  # inputs from here on wake us again
            for _ in range(DRIVE_BATCH):
                try:
                    data, addr = recv.receive_nowait()
                except trio.WouldBlock:
                    break
                self._guard(core.receive_datagram, data, addr, now)
            else:
                self._activity.set()  # more may be queued: come back after yielding
            self._flush(now)
            timer = core.get_timer()
            deadline = math.inf if timer is None else timer
            if spins > STUCK_TIMER_REFIRES:
                # The core's timer stays due after handle_timer: do not spin on it.
                self.stats["timer_stuck"] += 1
                deadline = max(deadline, now + STUCK_TIMER_BACKOFF)
            with trio.move_on_at(deadline):
                await self._activity.wait()

    def _guard(self, fn: Any, *args: Any) -> None:
        """Call a core input; a core exception is logged and counted, never fatal."""
        try:
            fn(*args)
        except Exception:
            self.stats["core_errors"] += 1
            log.exception("membership core raised", call=getattr(fn, "__name__", "?"))

    def _flush(self, now: float) -> None:
        core = self.core
        nursery = self._nursery
        assert nursery is not None
        for data, addr in core.datagrams_to_send(now):
            self._send_datagram(data, addr, nursery)
        for req in core.streams_to_open(now):
            self.stats["streams_opened"] += 1
            nursery.start_soon(self._open_stream, req)
        while (event := core.next_event()) is not None:
            self._publish(event)

    def _send_datagram(self, data: bytes, addr: Addr, nursery: trio.Nursery) -> None:
        net = self._net
        assert net is not None
        if not is_ip(addr[0]):
            nursery.start_soon(self._send_resolved, data, addr)
            return
        if net.send(data, addr):
            self.stats["datagrams_sent"] += 1
        else:
            self.stats["send_errors"] += 1

    async def _send_resolved(self, data: bytes, addr: Addr) -> None:
        net = self._net
        assert net is not None
        try:
            with trio.fail_after(self.config.tcp_timeout):
                await net.send_to_name(data, addr)
            self.stats["datagrams_sent"] += 1
        except (OSError, trio.TooSlowError, trio.ClosedResourceError):
            self.stats["send_errors"] += 1

    async def _exchange(self, addr: Addr, payload: bytes) -> bytes:
        """Connect, send one frame, read one reply frame. Raises on any failure."""
        net = self._net
        assert net is not None
        return await exchange(addr, payload, self._max_frame, via=net.connect)

    def _publish(self, event: Event) -> None:
        alive: list[trio.MemorySendChannel[Event]] = []
        for s in self._subscribers:
            try:
                s.send_nowait(event)
            except trio.WouldBlock:
                self.stats["subscriber_dropped"] += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue
            alive.append(s)
        self._subscribers = alive

    async def _open_stream(self, req: StreamRequest) -> None:
        reply: bytes | None = None
        try:
            with trio.fail_after(self.config.tcp_timeout):
                reply = await self._exchange(req.addr, req.payload)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, FrameError) as e:
            self.stats["stream_failures"] += 1
            log.debug("stream failed", peer=format_hostport(req.addr), reason=reason(e))
        now = trio.current_time()
        self._follow_wall_clock(now)
        self._guard(self.core.stream_response, req.id, reply, now)
        self.wake()

    async def _tcp_loop(self, net: GossipTransport) -> None:
        def admit(stream: trio.abc.Stream, addr: Addr) -> Callable[[], Awaitable[None]] | None:
            if self._tcp_active >= MAX_TCP_CONNECTIONS:
                self.stats["tcp_rejected"] += 1
                return None
            self._tcp_active += 1
            self.stats["tcp_accepted"] += 1
            return functools.partial(self._serve_connection, stream, addr)

        def failed(_e: OSError) -> None:
            self.stats["tcp_errors"] += 1

        await net.accept(admit, failed)

    async def _serve_connection(self, stream: trio.abc.Stream, addr: Addr) -> None:
        try:
            with trio.move_on_after(self.config.tcp_timeout) as scope:
                payload = await read_frame(stream, self._max_frame)
                service = self.services.claim(payload, addr)
                if service is not None:
                    # A long-lived service connection: it does not hold one of the slots
                    # kept for gossip streams (the services have their own bound).
                    scope.deadline = math.inf
                    self._tcp_active -= 1
                    try:
                        if not await self.services.serve(service, stream):
                            self.stats["tcp_rejected"] += 1
                    finally:
                        self._tcp_active += 1
                    return
                reply: bytes | None = None
                try:
                    now = trio.current_time()
                    self._follow_wall_clock(now)
                    reply = self.core.handle_stream(payload, addr, now)
                except Exception:
                    self.stats["core_errors"] += 1
                    log.exception("membership core raised", call="handle_stream")
                self.wake()
                if reply is not None:
                    await write_frame(stream, reply)
            if scope.cancelled_caught:
                self.stats["tcp_errors"] += 1
        except (OSError, trio.BrokenResourceError, FrameError):
            self.stats["tcp_errors"] += 1
        finally:
            self._tcp_active -= 1
            await trio.aclose_forcefully(stream)


# ---------------------------------------------------------------- client helpers


async def query(
    addr: Addr,
    what: str,
    keyring: Keyring | None,
    label: str,
    timeout: float,
    max_size: int = MembershipConfig().max_stream_size,
) -> Any:
    """Ask the agent at `addr` over its gossip TCP port for `what` ("members", "status").

    Raises QueryError with one line: "no answer from 10.0.0.1:7946: connection refused",
    "reply could not be opened: wrong key or label", ...
    """
    where = format_hostport(addr)
    frame = query_frame(what, keyring, label, time.time(), new_nonce())
    try:
        with trio.fail_after(timeout):
            reply = await exchange(addr, frame, max_size + FRAME_SLACK)
    except FrameError as e:
        if "closed after 0 of 4" in str(e):
            raise QueryError(
                f"no answer from {where}: connection closed without a reply (wrong key or label?)"
            ) from None
        raise QueryError(f"no answer from {where}: {e}") from None
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as e:
        raise QueryError(f"no answer from {where}: {reason(e)}") from None
    return read_query_reply(reply, keyring, label, time.time(), max_size)
