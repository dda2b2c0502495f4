"""An in-memory network with virtual time that steps real `Membership` cores by hand.

Like memberlist's mock_transport and aioquic's test helpers: no sockets, no trio, no clock. Each
packet takes `latency` seconds; links can be cut one way; nodes can crash (stop running, drop
what reaches them) and come back. Streams (push-pull) take one latency each way.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from swimthor.config import MembershipConfig, profile
from swimthor.membership import Event, Keyring, Member, Membership, State

Addr = tuple[str, int]


@dataclass(order=True)
class _Item:
    at: float
    seq: int
    kind: str = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)


class CoreNet:
    def __init__(self, seed: int = 1, latency: float = 0.001, loss: float = 0.0) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.latency = latency
        # Per-pair one-way latency override: (src, dst) -> seconds.
        self.link_latency: dict[tuple[Addr, Addr], float] = {}
        self.loss = loss
        self.nodes: dict[Addr, Membership] = {}
        self.down: set[Addr] = set()
        self.cut: set[tuple[Addr, Addr]] = set()
        self.events: dict[str, list[Event]] = {}
        self.sent: list[tuple[Addr, Addr, bytes]] = []
        self._heap: list[_Item] = []
        self._seq = 0
        self._port = 7000

    # -- building
    def addr(self) -> Addr:
        self._port += 1
        return ("10.0.0.1", self._port)

    def add(
        self,
        name: str,
        config: MembershipConfig | None = None,
        addr: Addr | None = None,
        **kw: Any,
    ) -> Membership:
        addr = addr or self.addr()
        core = Membership(
            name=name,
            addr=addr,
            config=config or profile("local"),
            rng=random.Random(self.rng.random()),
            now=self.now,
            **kw,
        )
        self.nodes[addr] = core
        self.down.discard(addr)
        self.events.setdefault(name, [])
        return core

    def cluster(
        self, n: int, config: MembershipConfig | None = None, **kw: Any
    ) -> list[Membership]:
        cores = [self.add(f"n{i}", config, **kw) for i in range(n)]
        seed = cores[0].local.addr
        for c in cores[1:]:
            c.join([seed], self.now)
        self.run(3.0)
        return cores

    # -- faults
    def crash(self, core: Membership) -> None:
        self.down.add(core.local.addr)

    def cut_link(self, a: Membership, b: Membership, both: bool = True) -> None:
        self.cut.add((a.local.addr, b.local.addr))
        if both:
            self.cut.add((b.local.addr, a.local.addr))

    def heal(self) -> None:
        self.cut.clear()

    # -- running
    def _push(self, at: float, kind: str, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Item(at, self._seq, kind, args))

    def _flush(self, core: Membership) -> None:
        src = core.local.addr
        for data, dst in core.datagrams_to_send(self.now):
            self.sent.append((src, dst, data))
            if (src, dst) in self.cut or self.rng.random() < self.loss:
                continue
            delay = self.link_latency.get((src, dst), self.latency)
            self._push(self.now + delay, "dgram", dst, data, src)
        for req in core.streams_to_open(self.now):
            self._push(self.now + self.latency, "stream", req.addr, req.payload, src, req.id)
        while (ev := core.next_event()) is not None:
            self.events.setdefault(core.name, []).append(ev)

    def _live(self) -> Iterable[Membership]:
        return (c for a, c in self.nodes.items() if a not in self.down)

    def run(self, duration: float) -> None:
        end = self.now + duration
        for c in self._live():
            self._flush(c)
        while True:
            nxt = self._heap[0].at if self._heap else end
            timer_core = None
            for c in self._live():
                t = c.get_timer()
                if t is not None and t < nxt:
                    nxt, timer_core = t, c
            if nxt > end or (timer_core is None and not self._heap):
                break
            self.now = max(self.now, nxt)
            if timer_core is not None:
                timer_core.handle_timer(self.now)
                self._flush(timer_core)
                continue
            item = heapq.heappop(self._heap)
            self._deliver(item)
        self.now = end

    def _deliver(self, item: _Item) -> None:
        if item.kind == "dgram":
            dst, data, src = item.args
            core = self.nodes.get(dst)
            if core is None or dst in self.down:
                return
            core.receive_datagram(data, src, self.now)
            self._flush(core)
        elif item.kind == "stream":
            dst, payload, src, sid = item.args
            server = self.nodes.get(dst)
            reply = None
            if server is not None and dst not in self.down and (src, dst) not in self.cut:
                reply = server.handle_stream(payload, src, self.now)
                self._flush(server)
                if (dst, src) in self.cut:
                    reply = None
            self._push(self.now + self.latency, "reply", src, sid, reply)
        elif item.kind == "reply":
            src, sid, reply = item.args
            core = self.nodes.get(src)
            if core is None or src in self.down:
                return
            core.stream_response(sid, reply, self.now)
            self._flush(core)

    # -- looking
    def view(self, core: Membership, name: str) -> Member | None:
        return core.member(name)

    def state(self, core: Membership, name: str) -> State | None:
        m = core.member(name)
        return m.state if m is not None else None

    def run_until(self, cond: Any, timeout: float, step: float = 0.01) -> float:
        """Run until cond() holds; returns the virtual time it took, or raises."""
        start = self.now
        while not cond():
            if self.now - start > timeout:
                raise AssertionError(f"condition not met within {timeout}s of virtual time")
            self.run(step)
        return self.now - start


def keyring(seed: int = 0) -> Keyring:
    return Keyring([bytes([seed]) * 32])
