"""The discrete-event engine: real `Membership` cores on a virtual clock and a seeded network.

One heap of ``(time, seq, kind, ...)`` entries holds everything that will happen: datagrams in
flight, stream (push-pull) legs, node timers and fault transitions. ``seq`` is unique, so
entries never compare past it and equal times run in the order they were scheduled.

Node timers use lazy invalidation: after a node is fed anything, its ``get_timer()`` is read
and a timer entry is pushed only when it is earlier than the one already queued; when a timer
entry pops it is checked against the node's current one (and its generation, so a restarted
node ignores its predecessor's entries), and re-queued if the core's deadline moved later.
Nothing ever loops over all nodes per event; a node is flushed (datagrams, streams, events,
timer) only right after it was fed.

Every random choice comes from the scenario's seed: each core gets its own `random.Random`
(derived from the seed, the node's index and its generation), the network has its own, the
choice of fault targets its own. The same scenario therefore gives the same trace, bit for
bit; `trace_digest` is a sha256 over every delivered datagram (time, source, destination,
bytes) and every event the cores report.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import random
import time
from collections.abc import Callable
from typing import Any

from ..config import MembershipConfig
from ..keyring import KEY_SIZE
from ..membership import (
    Addr,
    Event,
    MemberEvent,
    MemberRecovered,
    Membership,
)
from ._faults import fault_targets
from ._metrics import Crash, Observation, SimResult, compute_result
from ._nodes import (
    _CALL,
    _CONNECT_TIMEOUT,
    _DGRAM,
    _EV_CODES,
    _HANDLE,
    _PACK_DELIVERY,
    _PACK_EVENT,
    _SREPLY,
    _SREQ,
    _STIMEOUT,
    _STUCK_BACKOFF,
    _STUCK_REFIRES,
    _TIMER,
    CRASHED,
    EV_FAILED,
    EV_JOINED,
    EV_LEFT,
    EV_RECOVERED,
    GOSSIP_PORT,
    LEFT,
    PAUSED,
    RUNNING,
    _Counters,
    _Item,
    _Node,
    _Partition,
    sealing,
)
from ._scenario import ONE_WAY_KINDS, Fault, Scenario, membership_config
from ._warmup import know_everyone

__all__ = ["Simulator", "run"]


class Simulator:
    """Runs one `Scenario`. `run()` once; the result is also kept as `self.result`.

    With `record=True` every handled datagram is kept in `deliveries` as
    ``(handled, src, dst, arrived, sent)`` (times relative to the scenario's time 0, node
    indexes) for tests; `events` always holds the member events after time 0 as
    ``(t, observer, code, member, incarnation)``.
    """

    def __init__(self, scenario: Scenario, *, record: bool = False) -> None:
        self.scenario = scenario
        self.config: MembershipConfig = membership_config(scenario)
        self.record = record
        self.now = 0.0
        self.origin = 0.0
        self.end = 0.0
        s = scenario
        self._heap: list[tuple[Any, ...]] = []
        self._seq = 0
        self._net = random.Random(f"{s.seed}/net")
        self._pick = random.Random(f"{s.seed}/faults")
        self._boot = random.Random(f"{s.seed}/boot")
        self._cluster_key = random.Random(f"{s.seed}/key").randbytes(KEY_SIZE)
        self._hash = hashlib.sha256() if s.trace else None
        self.counters = _Counters()
        self.nodes: list[_Node] = []
        self._by_addr: dict[Addr, _Node] = {}
        self._by_name: dict[str, int] = {}
        self._partitions: list[_Partition] = []
        self._lossy_nodes = 0
        self.deliveries: list[tuple[float, int, int, float, float]] = []
        self.events: list[tuple[float, int, int, str, int]] = []
        self._recording_events = False
        self._n_full = 0  # nodes that see every member alive (warm-up and bootstrap)
        self._full_at: float | None = None
        self.crashes: list[Crash] = []
        # Per node: (start, end or None, kind) of every fault that touched it.
        self.fault_log: dict[int, list[tuple[float, float | None, str]]] = {}
        # Per node: (start, end or None) while it was crashed or gone after leaving.
        self.down_log: dict[int, list[tuple[float, float | None, str]]] = {}
        self.fault_targets: list[dict[str, Any]] = []
        self.result: SimResult | None = None
        self.wall_warmup = 0.0
        # Latency tables by datacenter index: one-way base and jitter amplitude.
        dcs = s.dcs
        self._base = [
            [(s.rtt_intra if i == j else s.rtt_inter) / 2.0 for j in range(dcs)] for i in range(dcs)
        ]
        self._jit = [
            [s.jitter_s if s.jitter_s is not None else s.jitter * b for b in row]
            for row in self._base
        ]
        self._connect_timeout = min(self.config.tcp_timeout, _CONNECT_TIMEOUT)
        self._queue_cap = self.config.inbound_queue_size
        for i in range(s.nodes):
            dci = i % dcs
            node = _Node(i, f"n{i}", f"dc{dci + 1}", dci, self._address(i, 0))
            self.nodes.append(node)
            self._by_addr[node.addr] = node
            self._by_name[node.name] = i

    # ------------------------------------------------------------------ building

    @staticmethod
    def _address(idx: int, gen: int) -> Addr:
        return (f"10.{(idx >> 16) & 255}.{(idx >> 8) & 255}.{idx & 255}", GOSSIP_PORT + gen)

    def _start_core(self, node: _Node) -> None:
        s = self.scenario
        node.core = Membership(
            name=node.name,
            addr=node.addr,
            config=self.config,
            rng=random.Random(f"{s.seed}/node/{node.idx}/{node.gen}"),
            now=self.now,
            dc=node.dc,
            **(sealing(self._cluster_key, s.seed, node) if s.sealed else {}),
        )
        node.state = RUNNING
        node.started = self.now
        node.timer_at = None
        node.spins = 0
        node.leaving = False
        node.live_count = 1
        node.open_streams = set()
        self._flush(node)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, _CALL, fn, args))

    # ------------------------------------------------------------------ running

    def run(self) -> SimResult:
        """Form the cluster, run the scenario, and compute the result (once)."""
        if self.result is not None:
            return self.result
        # Thousands of cores hold millions of long-lived member records: the cyclic collector
        # rescanning them took 40% of a 2000-member warm-up. Off while the cluster forms, then
        # the formed cluster is frozen out of collection and the young generation collected
        # less often. The cores make no reference cycles per packet; restored at the end.
        was_enabled = gc.isenabled()
        thresholds = gc.get_threshold()
        gc.disable()
        try:
            return self._run()
        finally:
            gc.unfreeze()
            gc.set_threshold(*thresholds)
            if was_enabled:
                gc.enable()

    def _run(self) -> SimResult:
        wall0 = time.perf_counter()
        s = self.scenario
        n = s.nodes
        for node in self.nodes:
            self._start_core(node)
        seed_addr = self.nodes[0].addr
        if s.bootstrap:
            for node in self.nodes[1:]:
                self._at(self._boot.uniform(0.0, 1.0), self._join, node, (seed_addr,))
        else:
            know_everyone(self)
        if n == 1:
            self._n_full = 1
            self._full_at = 0.0
        warmup_s = 0.0
        warmup_converged = True
        if not s.bootstrap:
            step = 0.1
            t = 0.0
            while self._n_full < n and t < s.warmup_max:
                t = min(t + step, s.warmup_max)
                self._run_until(t)
            warmup_converged = self._n_full == n
            settle = s.warmup_settle if warmup_converged else 0.0
            self._run_until(self.now + settle)
            warmup_s = self.now
            self.origin = self.now
        self.wall_warmup = time.perf_counter() - wall0
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        gc.enable()
        self.end = self.origin + s.duration
        self._recording_events = True
        snap = [(nd.sent_msgs, nd.sent_bytes, nd.stream_bytes) for nd in self.nodes]
        self._schedule_faults()
        self._run_until(self.end)
        self.now = self.end
        load = [
            (nd.sent_msgs - a, nd.sent_bytes - b, nd.stream_bytes - c)
            for nd, (a, b, c) in zip(self.nodes, snap, strict=True)
        ]
        bootstrap_s = None
        if s.bootstrap and self._full_at is not None:
            bootstrap_s = self._full_at
        obs = Observation(
            scenario=s,
            origin=self.origin,
            end=self.end,
            names=[nd.name for nd in self.nodes],
            events=self.events,
            crashes=self.crashes,
            fault_log=self.fault_log,
            down_log=self.down_log,
            load=load,
            final_state=[nd.state for nd in self.nodes],
            started=[nd.started for nd in self.nodes],
            digests=[
                nd.core.view_digest() if nd.core is not None and nd.state == RUNNING else None
                for nd in self.nodes
            ],
            view_live=self._truth_check(),
        )
        c = self.counters
        stats = c.as_stats()
        self.result = compute_result(
            obs,
            wall_s=time.perf_counter() - wall0,
            wall_warmup_s=self.wall_warmup,
            warmup_s=warmup_s,
            warmup_converged=warmup_converged,
            bootstrap_s=bootstrap_s,
            trace_digest=self._hash.hexdigest() if self._hash is not None else None,
            faults=self.fault_targets,
            stats=stats,
        )
        return self.result

    def _truth_check(self) -> bool | None:
        """Does one running node's view of the live members match who is really running?"""
        running = {nd.name for nd in self.nodes if nd.state in (RUNNING, PAUSED)}
        for nd in self.nodes:
            if nd.state == RUNNING and nd.core is not None:
                live = {m.name for m in nd.core.members() if m.state.is_live}
                return live == running
        return None

    def _run_until(self, t_end: float) -> None:
        """Process every entry due at or before `t_end`. The hot loop: datagrams and timers
        are handled inline, everything else in methods."""
        heap = self._heap
        pop = heapq.heappop
        by_addr = self._by_addr
        c = self.counters
        h = self._hash
        record = self.record and self._recording_events
        while heap and heap[0][0] <= t_end:
            entry = pop(heap)
            now = entry[0]
            self.now = now
            kind = entry[2]
            if kind == _DGRAM:
                node = by_addr.get(entry[3])
                if node is None or node.state >= CRASHED:
                    c.dropped_down += 1
                    continue
                if self._partitions and self._cut(entry[4], node.idx):
                    c.dropped_partition += 1
                    continue
                if node.special:
                    self._ingress(node, ("d", entry[4], entry[5], entry[6], now, entry[7]))
                    continue
                core = node.core
                assert core is not None
                c.delivered += 1
                if h is not None:
                    h.update(_PACK_DELIVERY(now, entry[4], node.idx))
                    h.update(entry[6])
                if record:
                    o = self.origin
                    self.deliveries.append((now - o, entry[4], node.idx, now - o, entry[7] - o))
                core.receive_datagram(entry[6], entry[5], now)
                self._flush(node)
            elif kind == _TIMER:
                node = entry[3]
                if node.gen != entry[4] or node.timer_at != now or node.state != RUNNING:
                    if node.gen == entry[4] and node.timer_at == now:
                        node.timer_at = None  # paused or stopped: resume reschedules
                    continue
                node.timer_at = None
                core = node.core
                assert core is not None
                due = core.get_timer()
                if due is None:
                    continue
                if due > now:
                    node.timer_at = due
                    self._seq += 1
                    heapq.heappush(heap, (due, self._seq, _TIMER, node, node.gen))
                    continue
                if node.last_fire == now:
                    node.spins += 1
                else:
                    node.spins = 0
                    node.last_fire = now
                core.handle_timer(now)
                self._flush(node)
            elif kind == _HANDLE:
                node = entry[3]
                if node.gen != entry[4] or node.state >= CRASHED:
                    continue
                node.slow_backlog -= 1
                if node.state == PAUSED:
                    self._enqueue_paused(node, entry[5])
                else:
                    self._process(node, entry[5], entry[5][0] == "d")
                self._refresh_special(node)
            elif kind == _SREQ:
                self._stream_arrives(entry)
            elif kind == _SREPLY:
                self._reply_arrives(entry)
            elif kind == _STIMEOUT:
                node = self.nodes[entry[3]]
                if node.gen != entry[4] or entry[5] not in node.open_streams:
                    continue
                if node.state >= CRASHED:
                    continue
                if node.state == PAUSED:
                    self._enqueue_paused(node, ("t", entry[5]))
                    continue
                self._process(node, ("t", entry[5]), False)
            else:
                entry[3](*entry[4])
        if self.now < t_end:
            self.now = t_end

    # ------------------------------------------------------------------ node inputs

    def _flush(self, node: _Node) -> None:
        """Collect what the core wants done after an input: datagrams, streams, events, and
        its next timer."""
        core = node.core
        assert core is not None
        now = self.now
        dgrams = core.datagrams_to_send(now)
        if dgrams:
            self._send(node, dgrams)
        streams = core.streams_to_open(now)
        if streams:
            for req in streams:
                self._open_stream(node, req.id, req.addr, req.payload)
        ev = core.next_event()
        while ev is not None:
            self._on_event(node, ev)
            ev = core.next_event()
        if node.leaving and core.leave_complete(now):
            self._stop(node, LEFT, "left")
            return
        due = core.get_timer()
        if due is None:
            return
        ta = node.timer_at
        if ta is not None and ta <= due:
            return
        if due <= now:
            due = now
            if node.last_fire == now and node.spins >= _STUCK_REFIRES:
                self.counters.timer_stuck += 1
                due = now + _STUCK_BACKOFF
        node.timer_at = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, _TIMER, node, node.gen))

    def _send(self, node: _Node, dgrams: list[tuple[bytes, Addr]]) -> None:
        s = self.scenario
        rand = self._net.random
        by_addr = self._by_addr
        base = self._base[node.dci]
        jit = self._jit[node.dci]
        loss = s.loss
        burst = s.burst_enter > 0.0
        lossy = self._lossy_nodes > 0
        parts = self._partitions
        reorder = s.reorder
        dup = s.dup
        c = self.counters
        now = self.now
        src_idx = node.idx
        src_addr = node.addr
        heap = self._heap
        mute = node.mute
        for data, addr in dgrams:
            node.sent_msgs += 1
            node.sent_bytes += len(data)
            dst = by_addr.get(addr)
            if dst is None:
                c.no_route += 1
                continue
            if mute and rand() < mute:
                c.dropped_mute += 1
                continue
            if burst:
                if node.ge_bad:
                    if rand() < s.burst_exit:
                        node.ge_bad = False
                elif rand() < s.burst_enter:
                    node.ge_bad = True
                if node.ge_bad:
                    if rand() < s.burst_loss:
                        c.dropped_burst += 1
                        continue
                elif loss and rand() < loss:
                    c.dropped_loss += 1
                    continue
            elif loss and rand() < loss:
                c.dropped_loss += 1
                continue
            if lossy and (
                (node.lossy and rand() < node.lossy) or (dst.lossy and rand() < dst.lossy)
            ):
                c.dropped_lossy += 1
                continue
            if parts and self._cut(src_idx, dst.idx):
                c.dropped_partition += 1
                continue
            copies = 2 if dup and rand() < dup else 1
            if copies == 2:
                c.duplicated += 1
            for _ in range(copies):
                b = base[dst.dci]
                j = jit[dst.dci]
                delay = b + j * (2.0 * rand() - 1.0) if j else b
                if reorder and rand() < reorder:
                    delay += 2.0 * b * rand()
                if delay < 0.0:
                    delay = 0.0
                self._seq += 1
                heapq.heappush(
                    heap, (now + delay, self._seq, _DGRAM, addr, src_idx, src_addr, data, now)
                )

    def _latency(self, a: _Node, b: _Node) -> float:
        base = self._base[a.dci][b.dci]
        j = self._jit[a.dci][b.dci]
        delay = base + j * (2.0 * self._net.random() - 1.0) if j else base
        return delay if delay > 0.0 else 0.0

    def _cut(self, src: int, dst: int) -> bool:
        for p in self._partitions:
            a = p.a
            if src in a and ((dst not in a) if p.b is None else (dst in p.b)):
                return True
            if not p.oneway and dst in a and ((src not in a) if p.b is None else (src in p.b)):
                return True
        return False

    def _on_event(self, node: _Node, ev: Event) -> None:
        code = _EV_CODES.get(type(ev))
        if code is None:
            return
        assert isinstance(ev, MemberEvent)
        member = ev.member
        before = node.live_count
        if code == EV_JOINED:
            node.live_count += 1
        elif code in (EV_FAILED, EV_LEFT):
            node.live_count -= 1
        elif code == EV_RECOVERED:
            assert isinstance(ev, MemberRecovered)
            if ev.previous in ("dead", "left"):
                node.live_count += 1
        n = self.scenario.nodes
        if before != node.live_count:
            if node.live_count == n:
                self._n_full += 1
                if self._n_full == n and self._full_at is None:
                    self._full_at = self.now
            elif before == n:
                self._n_full -= 1
        if self._hash is not None:
            self._hash.update(_PACK_EVENT(self.now, node.idx, code, member.incarnation))
            self._hash.update(member.name.encode())
        if self._recording_events:
            self.events.append(
                (self.now - self.origin, node.idx, code, member.name, member.incarnation)
            )

    def _ingress(self, node: _Node, item: _Item) -> None:
        """An input reaches a node that is paused, slow, deaf or flip-flopping."""
        if node.flip_period and self._flip_dropping(node):
            self.counters.dropped_flipflop += 1
            return
        if node.deaf and item[0] == "d" and self._net.random() < node.deaf:
            self.counters.dropped_deaf += 1
            return
        if node.state == PAUSED:
            self._enqueue_paused(node, item)
            return
        if node.slow or node.slow_backlog:
            if item[0] == "d" and node.slow_backlog >= self._queue_cap:
                self.counters.dropped_queue_full += 1
                return
            now = self.now
            lo, hi = self.scenario.slow_delay
            at = now + self._net.uniform(lo, hi) if node.slow else now
            if at < node.slow_last:
                at = node.slow_last
            node.slow_last = at
            node.slow_backlog += 1
            self._seq += 1
            heapq.heappush(self._heap, (at, self._seq, _HANDLE, node, node.gen, item))
            return
        self._process(node, item, item[0] == "d")

    def _enqueue_paused(self, node: _Node, item: _Item) -> None:
        if item[0] == "d":
            if node.queued_dgrams >= self._queue_cap:
                node.queue_dropped += 1
                self.counters.dropped_queue_full += 1
                return
            node.queued_dgrams += 1
        node.queue.append(item)

    def _flip_dropping(self, node: _Node) -> bool:
        phase = (self.now - node.flip_start) % node.flip_period
        return phase < node.flip_period / 2.0

    def _process(self, node: _Node, item: _Item, is_dgram: bool) -> None:
        """Feed one (possibly delayed) input to a running node's core, then flush it."""
        core = node.core
        assert core is not None
        now = self.now
        what = item[0]
        if is_dgram:
            _, src_idx, src_addr, data, arrived, sent = item
            self.counters.delivered += 1
            if self._hash is not None:
                self._hash.update(_PACK_DELIVERY(now, src_idx, node.idx))
                self._hash.update(data)
            if self.record and self._recording_events:
                o = self.origin
                self.deliveries.append((now - o, src_idx, node.idx, arrived - o, sent - o))
            core.receive_datagram(data, src_addr, now)
        elif what == "s":
            _, client_idx, client_gen, sid, client_addr, payload, _opened = item
            reply = core.handle_stream(payload, client_addr, now)
            self._flush(node)
            client = self.nodes[client_idx]
            if client.gen != client_gen:
                return
            delay = self._latency(node, client)
            self._seq += 1
            heapq.heappush(
                self._heap,
                (now + delay, self._seq, _SREPLY, client_idx, client_gen, sid, reply, node.idx),
            )
            if reply is not None:
                node.stream_bytes += len(reply)
            return
        else:  # "r": a reply, "t": a timeout
            sid = item[1]
            if sid not in node.open_streams:
                return
            node.open_streams.discard(sid)
            reply = item[2] if what == "r" else None
            if reply is None:
                self.counters.streams_failed += 1
            core.stream_response(sid, reply, now)
        if node.state == RUNNING:
            self._flush(node)

    def _refresh_special(self, node: _Node) -> None:
        busy = node.slow or node.slow_backlog > 0 or node.flip_period or node.deaf
        node.special = node.state == PAUSED or bool(busy)

    # ------------------------------------------------------------------ streams

    def _open_stream(self, node: _Node, sid: int, addr: Addr, payload: bytes) -> None:
        self.counters.streams += 1
        node.stream_bytes += len(payload)
        node.open_streams.add(sid)
        now = self.now
        self._seq += 1
        heapq.heappush(
            self._heap,
            (now + self.config.tcp_timeout, self._seq, _STIMEOUT, node.idx, node.gen, sid),
        )
        dst = self._by_addr.get(addr)
        if dst is None:
            # Nobody at that address: refused, after a round trip.
            self._stream_reply(node, sid, now + 2.0 * self._base[node.dci][node.dci])
            return
        self._seq += 1
        heapq.heappush(
            self._heap,
            (
                now + self._latency(node, dst),
                self._seq,
                _SREQ,
                addr,
                node.idx,
                node.gen,
                sid,
                node.addr,
                payload,
                now,
            ),
        )

    def _stream_reply(self, client: _Node, sid: int, at: float, reply: bytes | None = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, _SREPLY, client.idx, client.gen, sid, reply, -1))

    def _stream_arrives(self, entry: tuple[Any, ...]) -> None:
        _, _, _, addr, client_idx, client_gen, sid, client_addr, payload, opened = entry
        client = self.nodes[client_idx]
        server = self._by_addr.get(addr)
        now = self.now
        if server is None:
            self._stream_reply(client, sid, now + self._latency(client, client))
            return
        if server.state >= CRASHED or self._unreachable(client, server):
            # No SYN-ACK: the connect times out.
            self._stream_reply(client, sid, max(now, opened + self._connect_timeout))
            return
        item = ("s", client_idx, client_gen, sid, client_addr, payload, opened)
        if server.special:
            self._ingress(server, item)
        else:
            self._process(server, item, False)

    def _unreachable(self, a: _Node, b: _Node) -> bool:
        """No TCP connection between `a` and `b` completes (a SYN or its SYN-ACK is lost)."""
        cut = self._partitions and (self._cut(a.idx, b.idx) or self._cut(b.idx, a.idx))
        return a.no_tcp or b.no_tcp or bool(cut)

    def _reply_lost(self, client: _Node, server_idx: int) -> bool:
        cut = self._partitions and self._cut(server_idx, client.idx)
        return client.no_tcp or self.nodes[server_idx].no_tcp or bool(cut)

    def _reply_arrives(self, entry: tuple[Any, ...]) -> None:
        _, _, _, client_idx, client_gen, sid, reply, server_idx = entry
        client = self.nodes[client_idx]
        if client.gen != client_gen or client.state >= CRASHED or sid not in client.open_streams:
            return
        if reply is not None and server_idx >= 0 and self._reply_lost(client, server_idx):
            return  # the reply is lost; the client's tcp_timeout will fire
        item = ("r", sid, reply)
        if client.special:
            self._ingress(client, item)
        else:
            self._process(client, item, False)

    # ------------------------------------------------------------------ faults

    def _join(self, node: _Node, seeds: tuple[Addr, ...]) -> None:
        if node.state != RUNNING or node.core is None:
            return
        node.core.join(list(seeds), self.now)
        self._flush(node)

    def _stop(self, node: _Node, state: int, why: str) -> None:
        node.state = state
        node.timer_at = None
        node.queue = []
        node.queued_dgrams = 0
        node.open_streams = set()
        node.slow_backlog = 0
        node.leaving = False
        self._refresh_special(node)
        if self._recording_events and why != "left":  # a leave was logged when it began
            self.down_log.setdefault(node.idx, []).append((self.now - self.origin, None, why))

    def _schedule_faults(self) -> None:
        s = self.scenario
        dcs = [nd.dc for nd in self.nodes]
        for f, targets, sides in fault_targets(
            s.faults, dcs, s.dc_names, self._by_name, self._pick
        ):
            if sides is not None:
                self._plan_partition(f, sides[0], sides[1], targets)
            else:
                self._plan(f, targets)

    def _note(self, f: Fault, targets: list[int]) -> None:
        self.fault_targets.append(
            {
                "kind": f.kind,
                "at": f.at,
                "duration": f.duration,
                "nodes": [self.nodes[i].name for i in targets],
            }
        )

    def _plan_partition(
        self, f: Fault, a: frozenset[int], b: frozenset[int] | None, targets: list[int]
    ) -> None:
        self._note(f, targets)
        part = _Partition(a, b, f.oneway)
        t0 = self.origin + f.at
        assert f.duration is not None
        self._at(t0, self._partition_on, part, f, targets)
        self._at(t0 + f.duration, self._partition_off, part, f, targets)

    def _partition_on(self, part: _Partition, f: Fault, targets: list[int]) -> None:
        self._partitions.append(part)
        for i in targets:
            self._log_fault(i, "partition", f)

    def _partition_off(self, part: _Partition, f: Fault, targets: list[int]) -> None:
        self._partitions.remove(part)

    def _log_fault(self, i: int, kind: str, f: Fault) -> None:
        t = self.now - self.origin
        end = None if f.duration is None else t + f.duration
        self.fault_log.setdefault(i, []).append((t, end, kind))

    def _plan(self, f: Fault, targets: list[int]) -> None:
        self._note(f, targets)
        t0 = self.origin + f.at
        t1 = None if f.duration is None else t0 + f.duration
        for i in targets:
            node = self.nodes[i]
            self._at(t0, self._fault_on, node, f)
            if t1 is not None:
                self._at(t1, self._fault_off, node, f)

    def _fault_on(self, node: _Node, f: Fault) -> None:
        kind = f.kind
        if node.state >= CRASHED:
            return
        self._log_fault(node.idx, kind, f)
        rel = self.now - self.origin
        if kind in ("crash", "restart"):
            end = self.end if f.duration is None else self.now + f.duration
            self.crashes.append(Crash(node.idx, node.name, rel, end - self.origin, kind))
            self._stop(node, CRASHED, kind)
        elif kind == "leave":
            if node.state == PAUSED:
                return
            assert node.core is not None
            node.core.leave(self.now)
            node.leaving = True
            self.down_log.setdefault(node.idx, []).append((rel, None, "leave"))
            self._flush(node)
        elif kind == "pause":
            node.state = PAUSED
            self._refresh_special(node)
        elif kind == "slow":
            node.slow = True
            self._refresh_special(node)
        elif kind == "lossy":
            if not node.lossy:
                self._lossy_nodes += 1
            node.lossy = f.loss
        elif kind == "flipflop":
            node.flip_start = self.now
            node.flip_period = f.period
            self._refresh_special(node)
        elif kind == "deaf":
            node.deaf = f.loss
            self._refresh_special(node)
        elif kind == "mute":
            node.mute = f.loss
        if kind in ONE_WAY_KINDS and f.loss >= 1.0:
            # Cut off one way from everybody: to the others, a failure they should declare.
            assert f.duration is not None
            self.crashes.append(Crash(node.idx, node.name, rel, rel + f.duration, kind))

    def _fault_off(self, node: _Node, f: Fault) -> None:
        kind = f.kind
        if kind == "restart":
            if node.state != CRASHED:
                return
            self._restart(node, f.new_addr)
            return
        if node.state >= CRASHED:
            return
        if kind == "pause":
            self._resume(node)
        elif kind == "slow":
            node.slow = False
            self._refresh_special(node)
        elif kind == "lossy":
            node.lossy = 0.0
            self._lossy_nodes -= 1
        elif kind == "flipflop":
            node.flip_period = 0.0
            self._refresh_special(node)
        elif kind == "deaf":
            node.deaf = 0.0
            self._refresh_special(node)
        elif kind == "mute":
            node.mute = 0.0

    def _resume(self, node: _Node) -> None:
        """SIGCONT: overdue timers fire first, then the queued inputs, in arrival order."""
        if node.state != PAUSED:
            return
        node.state = RUNNING
        self._refresh_special(node)
        core = node.core
        assert core is not None
        now = self.now
        due = core.get_timer()
        if due is not None and due <= now:
            node.last_fire = now
            node.spins = 0
            core.handle_timer(now)
            self._flush(node)
        queue, node.queue = node.queue, []
        node.queued_dgrams = 0
        for item in queue:
            if node.state != RUNNING:
                break
            if item[0] == "t":
                if item[1] in node.open_streams:
                    self._process(node, ("t", item[1]), False)
            elif node.slow:
                self._ingress(node, item)
            else:
                self._process(node, item, item[0] == "d")
        if node.state == RUNNING:
            self._flush(node)

    def _restart(self, node: _Node, new_addr: bool) -> None:
        if self._recording_events:
            log = self.down_log.get(node.idx)
            if log and log[-1][1] is None:
                start, _, why = log[-1]
                log[-1] = (start, self.now - self.origin, why)
        node.gen += 1
        if new_addr:
            if self._by_addr.get(node.addr) is node:
                del self._by_addr[node.addr]
            node.addr = self._address(node.idx, node.gen)
            self._by_addr[node.addr] = node
        node.slow = False
        self._start_core(node)
        live = [nd for nd in self.nodes if nd.state == RUNNING and nd is not node]
        seeds: list[Addr] = []
        if self.nodes[0].state == RUNNING and self.nodes[0] is not node:
            seeds.append(self.nodes[0].addr)
        others = [nd for nd in live if nd.idx != 0]
        for nd in self._pick.sample(others, min(2, len(others))):
            seeds.append(nd.addr)
        if seeds:
            self._join(node, tuple(seeds))


def run(scenario: Scenario, *, record: bool = False) -> SimResult:
    """Run `scenario` and return its result (see `SimResult`)."""
    return Simulator(scenario, record=record).run()
