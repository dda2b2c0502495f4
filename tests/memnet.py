"""An in-memory network for `MembershipRuntime` (its `GossipTransport`): datagrams through
memory channels, streams through `trio.testing.memory_stream_pair`, no sockets, no latency.

With it a cluster of real runtimes runs on trio's clock alone, so `autojump_clock` drives
their timers: a test of probe rounds, suspicion and leave takes virtual seconds, and nothing
in it waits on the host. (trio's own fake network is private API; this is the idea of it,
after memberlist's `mock_transport.go`.) Tests of what the kernel does (bind errors, garbage
on a real port, connection floods) keep real sockets.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Awaitable, Callable

import trio
import trio.testing

from swimthor.membership import Addr

Admit = Callable[[trio.abc.Stream, Addr], Callable[[], Awaitable[None]] | None]

INBOX = 10_000  # datagrams a host's inbox holds; more are dropped, as a full socket would


class MemoryNetwork:
    """Hosts at 10.0.0.x:7946, each a `MemoryTransport`. `cut(addr)` makes a host
    unreachable both ways (its datagrams go nowhere, connecting to it is refused)."""

    def __init__(self) -> None:
        self.hosts: dict[Addr, MemoryTransport] = {}
        self.cut_off: set[Addr] = set()
        self._next = itertools.count(1)
        self.sent = 0
        self.dropped = 0

    def transport(self) -> MemoryTransport:
        addr = (f"10.0.0.{next(self._next)}", 7946)
        host = self.hosts[addr] = MemoryTransport(self, addr)
        return host

    def cut(self, addr: Addr) -> None:
        self.cut_off.add(addr)

    def heal(self, addr: Addr) -> None:
        self.cut_off.discard(addr)

    def reachable(self, src: Addr, dst: Addr) -> MemoryTransport | None:
        if src in self.cut_off or dst in self.cut_off:
            return None
        host = self.hosts.get(dst)
        return None if host is None or host.closed else host


class MemoryTransport:
    """One host of a `MemoryNetwork`."""

    def __init__(self, net: MemoryNetwork, addr: Addr) -> None:
        self.net = net
        self._addr = addr
        self.closed = False
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[bytes, Addr]](INBOX)
        self._accept_send, self._accepts = trio.open_memory_channel[tuple[trio.abc.Stream, Addr]](
            64
        )

    @property
    def addr(self) -> Addr:
        return self._addr

    def send(self, data: bytes, addr: Addr) -> bool:
        self.net.sent += 1
        dest = self.net.reachable(self._addr, addr)
        if dest is None:
            return True  # sent, and lost on the way: UDP says nothing
        try:
            dest._inbox_send.send_nowait((data, self._addr))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.net.dropped += 1
        return True

    async def send_to_name(self, data: bytes, addr: Addr) -> None:
        raise OSError(errno.EHOSTUNREACH, f"no names on a memory network: {addr[0]}")

    async def receive(
        self, deliver: Callable[[bytes, Addr], None], error: Callable[[], None]
    ) -> None:
        async for data, src in self._inbox:
            deliver(data, src)

    async def connect(self, addr: Addr) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        dest = self.net.reachable(self._addr, addr)
        if dest is None:
            raise OSError(errno.ECONNREFUSED, "connection refused")
        ours, theirs = trio.testing.memory_stream_pair()
        try:
            dest._accept_send.send_nowait((theirs, self._addr))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            raise OSError(errno.ECONNREFUSED, "connection refused") from None
        return ours

    async def accept(self, admit: Admit, error: Callable[[OSError], None]) -> None:
        async with trio.open_nursery() as nursery:
            async for stream, peer in self._accepts:
                serve = admit(stream, peer)
                if serve is None:
                    await trio.aclose_forcefully(stream)
                    continue
                nursery.start_soon(serve)

    def close(self) -> None:
        self.closed = True
        self._inbox_send.close()
        self._accept_send.close()
