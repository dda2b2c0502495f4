"""The SWIM core with the Lifeguard extensions, sans-IO.

`Membership` is a plain object: bytes and `now` go in (`receive_datagram`, `handle_stream`,
`stream_response`, `handle_timer`), bytes and events come out (`datagrams_to_send`,
`streams_to_open`, `next_event`). It never reads a clock, a socket or the global `random`; the
same object runs under the trio runtime, the simulator and hand-stepped tests.

What it does, following SWIM (Das et al. 2002), Lifeguard (Dadgar et al. 2018) and
hashicorp/memberlist where the papers leave things open:

- probing in randomized round-robin order: ping, then ping-req through k members with nack;
- suspicion with incarnation numbers, refutation by the suspect, declaration of failure;
- Lifeguard: the local health multiplier stretches our own probe interval and timeouts; the
  suspicion timeout starts long and shrinks with each independent confirmation; a probe of a
  suspect carries the suspicion so the suspect can refute at once (buddy system);
- suspect checks (ours): a member that hears a suspicion pings the suspect itself and, if it
  gets no answer, sends its own confirmation, so confirmations arrive within a round trip;
- dissemination by piggybacking on every packet from a transmit-limited queue, a gossip tick
  to a few random members (some in other datacenters), and push-pull full-state sync;
- datacenters: probe timeouts toward another datacenter follow the round trip measured to it;
- restarts: a node that comes back raises its incarnation past what the cluster remembers;
  at a new address it first checks that nobody answers at the old one; two live nodes with one
  name are reported as a conflict, never merged.

This module is the facade: the sans-IO API, the member table, the timers, and the incarnation
rules (alive, suspect, dead, refutation). The rest lives next door, as functions of the core
or small classes it holds: `_probes` (pings in flight, by kind: probe, relay, suspect check,
final check, claim), `_probe_schedule` (whom to probe), `_suspicion` (how long a suspicion
runs and how it ends), `_isolation` (a member that hears nobody keeps its conclusions
to itself), `_gossip` (dissemination), `_sync` (push-pull: join, periodic sync,
repair, reconnect, merge), `_damping` (flap damping), `_tombstones` (forgetting the
dead), `_live_set` (the live set and the view digest), `_query` (queries
and key operations), `_status` (the status and members replies) and `_stats` (counters).
"""

from __future__ import annotations

import math
import os
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import MembershipConfig
from ..keyring import NONCE_SIZE, SEAL_OVERHEAD, Keyring, SealError, open_frame, seal_frame
from . import _damping, _gossip, _isolation, _probes, _query, _suspicion, _sync
from ._broadcast import TransmitLimitedQueue
from ._events import (
    Event,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    MemberUpdated,
    NameConflict,
)
from ._gossip import GossipRotation
from ._lifeguard import Awareness, Suspicion
from ._live_set import LiveSet
from ._member import Addr, Member, SharedMember, State
from ._messages import (
    MAX_DC,
    MAX_NAME,
    Ack,
    Alive,
    Dead,
    DecodeError,
    KeyOp,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Query,
    StreamError,
    StreamMessage,
    Summary,
    Suspect,
    check_metadata,
    decode_packet,
    decode_stream,
    encode_message,
    encode_packet,
    encode_stream,
    packet_overhead,
)
from ._probe_schedule import ProbeSchedule
from ._probes import PROBE
from ._shared_view import SharedView, adopt
from ._stats import MembershipStats, Rejections, new_stats, seal_refusal
from ._status import StatusReply, members_json, status_reply
from ._tombstones import reap, reap_interval

# Incarnations: a member raises its own by one per refutation, so news that jumps further
# than this past what we know is forged; and the top of the wire's range is kept free so a
# refutation always fits.
MAX_INCARNATION = 2**63 - 1 - 2**32
MAX_INCARNATION_STEP = 2**32


# One empty tag map shared by every member without tags. The core never changes a member's
# tags in place (it replaces the map), and hands out copies (`Member.copy`), so sharing is safe.
_NO_TAGS: dict[str, str] = {}


def _own_tags(tags: Mapping[str, str]) -> dict[str, str]:
    return dict(tags) if tags else _NO_TAGS


def _metadata(x: Member | Alive) -> tuple[Addr, str, tuple[str, ...], float, Mapping[str, str]]:
    return x.addr, x.dc, x.roles, x.weight, x.tags


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """A TCP exchange the runtime should perform: connect to `addr`, send `payload` as one
    frame, read one reply frame, and hand it to `Membership.stream_response(id, ...)`."""

    id: int
    addr: Addr
    payload: bytes


class Membership:
    """One node's SWIM membership. See the module docstring and docs/internal-api.md."""

    def __init__(
        self,
        *,
        name: str,
        addr: Addr,
        config: MembershipConfig,
        rng: random.Random,
        now: float,
        dc: str = "dc1",
        roles: Sequence[str] = (),
        weight: float = 1.0,
        tags: Mapping[str, str] | None = None,
        keyring: Keyring | None = None,
        label: str = "",
        wall_offset: float = 0.0,
        nonce_source: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """`now` and every other `now` given to the core are the driver's clock (trio's, or
        the simulator's virtual one); `now + wall_offset` is the wall clock, what sealed
        envelopes are stamped with and checked against and what the shared probe schedule and
        status times follow (the driver moves `wall_offset` when the wall clock steps).
        `nonce_source(n)` gives n bytes for each sealed envelope: the OS's randomness in
        production, a seeded generator in the simulator."""
        if not name or len(name) > MAX_NAME or not name.isprintable():
            raise ValueError(f"bad node name {name!r}")
        if not dc or len(dc) > MAX_DC or not dc.isprintable():
            raise ValueError(f"bad datacenter name {dc!r}")
        self.config = config
        self.name = name
        self.dc = dc
        self.keyring = keyring
        self.label = label
        self.wall_offset = wall_offset
        self._nonce_source = nonce_source
        self._rng = rng
        self._awareness = Awareness(config.awareness_max_multiplier)
        self._broadcasts = TransmitLimitedQueue(config.retransmit_mult)
        self._members: dict[str, Member] = {}
        self._suspects: dict[str, _suspicion.SuspectState] = {}
        self._events: deque[Event] = deque()
        self._out: dict[Addr, list[bytes]] = {}
        self._streams: list[StreamRequest] = []
        self._stream_kind: dict[int, tuple[str, Addr]] = {}
        self._next_stream = 1
        self._pending: dict[int, _probes.Pending] = {}
        self._seq = rng.randrange(1 << 30)
        self._schedule = ProbeSchedule(name)  # the probe order, and our shared-schedule rounds
        self._rotation = GossipRotation()  # whom the gossip ticks go to next
        self._probing: int | None = None
        self._rtt: dict[str, float] = {}
        self._summaries: dict[str, tuple[Summary, float]] = {}
        # Our own load report, set by the agent (what serving SIP and DNS costs here); it
        # rides on our view summaries, so every member can show every member's load.
        self.local_load: tuple[tuple[str, int], ...] = ()
        self._summary_seq = 0
        # Kept incrementally so nothing per packet is O(members): the live members, their ring,
        # and the XOR of a hash of (name, incarnation) over them, the gossiped view digest.
        self._live = LiveSet()
        self._names: list[str] = []  # every member's name, for O(1) random picks
        self._refuted: dict[str, tuple[int, float]] = {}  # name -> (refutations, last one)
        # The incarnation of the last accusation of us we refuted (-1: none), said in our
        # alives so that others know which suspicion they answer.
        self._refutes = -1
        # Isolation: our probes that went wholly unanswered since we last received anything,
        # and the members we declared failed while isolated (our word alone, kept to
        # ourselves, taken back on any news).
        self._unheard_probes = 0
        self._alone: set[str] = set()
        # Late answers: probes of ours that timed out lately (seq -> sent), and when an
        # answer to one came anyway (we hear, slowly: the sign of a slow member, not a deaf
        # one).
        self._recent_probes: dict[int, float] = {}
        self._late_at = -math.inf
        # Flap damping: members declared again and again are held out (see `_damping`).
        self._damper = _damping.FlapDamper(
            config.flap_half_life, config.flap_suppress, config.flap_reuse
        )
        self._next_release = math.inf
        self._healthy_since: float | None = None
        self._checked: dict[str, int] = {}
        # Repair sync: since when we hear that others see more live members than we do.
        self._behind_since: float | None = None
        self._last_repair = -math.inf
        self._claims: dict[str, int] = {}
        self._join: _sync.Join | None = None
        self._leaving = False
        self._leave_wakeup: float | None = None  # wake the driver once the leave is complete
        self._leave_at = 0.0
        self._conflict: NameConflict | None = None
        # Rejections not yet reported, by reason, and when each reason was last reported.
        self._rejections = Rejections()
        self.stats: MembershipStats = new_stats()
        self._check_metadata(tuple(roles), weight, dict(tags or {}))
        self._members[name] = Member(
            name=name,
            addr=addr,
            dc=dc,
            roles=tuple(roles),
            weight=float(weight),
            tags=dict(tags or {}),
            incarnation=0,
            state=State.ALIVE,
            since=now,
            last_heard=now,
        )
        self._overhead = packet_overhead(name) + (
            SEAL_OVERHEAD if keyring is not None else 2 + len(label.encode())
        )
        if config.probe_schedule == "shared":
            self._next_probe = _probes.next_shared_probe(self, now, config.probe_interval)
        else:
            self._next_probe = now + rng.uniform(0, config.probe_interval)
        self._next_gossip = now + rng.uniform(0, config.gossip_interval)
        # The first sync comes in the second half of the first interval, so that members that
        # start together do not sync together; the interval is re-read when it is due.
        self._last_push_pull = now - self._push_pull_interval() * rng.uniform(0.0, 0.5)
        self._next_push_pull = self._last_push_pull + self._push_pull_interval()
        self._next_reap = now + reap_interval(config)
        self._next_reconnect = (
            now + config.reconnect_interval * rng.uniform(0.5, 1.0)
            if config.reconnect_interval > 0
            else math.inf
        )
        self._names.append(name)
        self._live.touch(self._members[name])
        self._update_digest()

    # ------------------------------------------------------------------ public views

    @property
    def local(self) -> Member:
        return self._members[self.name].copy()

    @property
    def health_score(self) -> int:
        return self._awareness.score

    @property
    def conflict(self) -> NameConflict | None:
        """Set when a join found another live node answering under our name."""
        return self._conflict

    def member(self, name: str) -> Member | None:
        m = self._members.get(name)
        return m.copy() if m is not None else None

    def members(self) -> list[Member]:
        return [m.copy() for m in self._members.values()]

    def suspicions(self) -> Mapping[str, Suspicion]:
        """The running suspicions, by suspect. Read-only: each is the core's own record, whose
        deadline moves as confirmations arrive."""
        return {name: st.suspicion for name, st in self._suspects.items()}

    def num_live(self) -> int:
        return self._live.count

    def isolated(self) -> bool:
        """Whether our last `isolation_probes` probes went wholly unanswered (no ack, no
        relay's nack) and nothing at all reached us meanwhile, while others are live: we
        cannot hear (deaf, or cut off from everyone). See `_isolation`."""
        return _isolation.isolated(self)

    def lone_verdicts(self) -> frozenset[str]:
        """Members we suspect or declared failed on our word alone while isolated: kept to
        ourselves (not gossiped, and reported alive in our push-pulls)."""
        return frozenset(self._alone)

    def view_digest(self) -> str:
        return self._live.digest.hex()

    def members_json(self) -> list[dict[str, Any]]:
        return members_json(self._members.values(), self.wall_offset)

    def status(self, now: float) -> StatusReply:
        return status_reply(self, now)

    # ------------------------------------------------------------------ lifecycle

    def join(self, seeds: Sequence[Addr], now: float) -> None:
        """Start joining through `seeds` (push-pull to each); retried with backoff until one
        answers. Seeds equal to our own address are skipped."""
        own = self._members[self.name].addr
        targets = tuple(dict.fromkeys(s for s in seeds if s != own))
        if not targets:
            return
        self._join = _sync.Join(seeds=targets, backoff=self.config.join_retry_initial)
        _sync.join_attempt(self, now)

    def leave(self, now: float) -> None:
        """Leave gracefully: tell the cluster we left (state `left`, never `dead`)."""
        if self._leaving:
            return
        self._leaving = True
        self._leave_at = now
        if self._conflict is not None:
            # Our name belongs to another live node: saying "left" would remove it.
            return
        self._leave_wakeup = now + self.config.leave_propagate_time
        me = self._members[self.name]
        msg = Dead(self.name, me.incarnation, self.name)
        self._apply_dead(msg, now)
        # Besides the queue, tell a few members directly right away.
        data = encode_message(msg)
        for target in _gossip.gossip_targets(self, max(self.config.gossip_nodes, 3), now):
            self._send(target.addr, data)

    def leave_complete(self, now: float) -> bool:
        if not self._leaving:
            return False
        if now - self._leave_at >= self.config.leave_propagate_time:
            return True
        if self.num_live() == 0:
            return True
        # Sent directly on leave(); give the gossip ticks a couple of rounds to repeat it.
        return now - self._leave_at >= min(
            2 * self.config.gossip_interval + 0.05, self.config.leave_propagate_time
        )

    def update_metadata(
        self,
        now: float,
        *,
        roles: Sequence[str] | None = None,
        weight: float | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Change our roles, weight or tags at run time; spreads with a higher incarnation."""
        me = self._members[self.name]
        new_roles = tuple(roles) if roles is not None else me.roles
        new_weight = float(weight) if weight is not None else me.weight
        new_tags = dict(tags) if tags is not None else dict(me.tags)
        self._check_metadata(new_roles, new_weight, new_tags)
        me.roles, me.weight, me.tags = new_roles, new_weight, new_tags
        me.incarnation += 1
        self._live.touch(me)
        self._broadcast_self_alive()
        self._update_digest()
        self._emit(MemberUpdated(me.copy()))

    def _check_metadata(self, roles: tuple[str, ...], weight: float, tags: dict[str, str]) -> None:
        cfg = self.config
        room = cfg.max_packet_size - (packet_overhead(self.name) + SEAL_OVERHEAD + 64)
        check_metadata(
            self.name,
            self.dc,
            roles,
            weight,
            tags,
            max_tags=cfg.max_tags,
            max_tag_bytes=cfg.max_tag_bytes,
            room=room,
        )

    # ------------------------------------------------------------------ inputs

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        self.stats["packets_in"] += 1
        self.stats["bytes_in"] += len(data)
        try:
            plain = self._open(data, now)
        except SealError as e:
            self._refused_seal(e, addr, now)
            return
        try:
            packet = decode_packet(plain)
        except DecodeError as e:
            self.stats["rejected_decode"] += 1
            self._rejected("malformed", addr, str(e), now)
            return
        self.stats["unknown_messages"] += packet.unknown
        _isolation.heard(self, addr, now, packet.sender)
        sender = self._members.get(packet.sender)
        if sender is not None and sender.state.is_live:
            self._own(sender).last_heard = now
        for msg in packet.messages:
            self.stats["messages_in"] += 1
            self._handle_message(msg, addr, now)

    def handle_stream(self, payload: bytes, addr: Addr, now: float) -> bytes | None:
        """Server side of a TCP exchange: one request frame in, one reply frame out."""
        try:
            plain = self._open(payload, now)
        except SealError as e:
            self._refused_seal(e, addr, now)
            return None
        try:
            msg = decode_stream(plain, self.config.max_stream_size)
        except DecodeError as e:
            self.stats["stream_rejected"] += 1
            self._rejected("malformed stream", addr, str(e), now)
            return self._seal(encode_stream(StreamError(str(e))), now)
        if isinstance(msg, PushPull) and msg.states:
            _isolation.heard(self, addr, now, msg.states[0].name, sync=False)
        handler = _ON_STREAM.get(type(msg))
        reply = handler(self, msg, now) if handler is not None else None
        if reply is None:
            self.stats["stream_rejected"] += 1
            reply = StreamError("unexpected message")
        return self._seal(encode_stream(reply), now)

    def stream_response(self, stream_id: int, payload: bytes | None, now: float) -> None:
        kind = self._stream_kind.pop(stream_id, None)
        if kind is None:
            return
        what, addr = kind
        msg: StreamMessage | None = None
        if payload is not None:
            try:
                msg = decode_stream(self._open(payload, now), self.config.max_stream_size)
            except (SealError, DecodeError):
                self.stats["stream_rejected"] += 1
                msg = None
        _sync.answered(self, stream_id, what, addr, msg, now)

    # ------------------------------------------------------------------ outputs

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        out: list[tuple[bytes, Addr]] = []
        limit = self.config.max_packet_size
        n = self.num_live()
        for addr, msgs in self._out.items():
            batch: list[bytes] = []
            size = self._overhead
            for m in msgs:
                if batch and size + len(m) > limit:
                    out.append((self._finish_packet(batch, now), addr))
                    batch, size = [], self._overhead
                batch.append(m)
                size += len(m)
            # Piggyback the freshest pending updates on every packet.
            batch.extend(_gossip.take_broadcasts(self, limit - size, n, addr))
            out.append((self._finish_packet(batch, now), addr))
        self._out.clear()
        for data, _ in out:
            self.stats["packets_out"] += 1
            self.stats["bytes_out"] += len(data)
        return out

    def streams_to_open(self, now: float) -> list[StreamRequest]:
        out, self._streams = self._streams, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        t = min(
            self._next_probe,
            self._next_gossip,
            self._next_push_pull,
            self._next_reap,
            self._next_reconnect,
            self._next_release,
        )
        for p in self._pending.values():
            t = min(t, p.final if p.kind == PROBE and p.indirect else p.deadline)
        for s in self._suspects.values():
            t = min(t, s.due)
        if self._join is not None and self._join.retry_at is not None:
            t = min(t, self._join.retry_at)
        if self._leave_wakeup is not None:
            t = min(t, self._leave_wakeup)
        return t

    def handle_timer(self, now: float) -> None:
        if self._leave_wakeup is not None and self._leave_wakeup <= now:
            self._leave_wakeup = None
        # Suspicion timeouts first: declarations should not wait behind a probe.
        for name in [n for n, s in self._suspects.items() if s.due <= now]:
            _suspicion.expired(self, name, now)
        for seq in [s for s, p in self._pending.items() if _probes.is_due(p, now)]:
            _probes.timed_out(self, seq, now)
        _sync.retry_join(self, now)
        if now >= self._next_probe:
            _probes.probe(self, now)
        if now >= self._next_gossip:
            self._next_gossip = now + self.config.gossip_interval
            _gossip.gossip(self, now)
        _sync.sync_when_due(self, now)
        if now >= self._next_release:
            _damping.release_due(self, now)
        if now >= self._next_reap:
            self._next_reap = now + reap_interval(self.config)
            reap(self, now)

    # ------------------------------------------------------------------ message handling

    def _handle_message(self, msg: Message, addr: Addr, now: float) -> None:
        handler = _ON_MESSAGE.get(type(msg))
        if handler is not None:
            handler(self, msg, addr, now)

    def _on_alive(self, msg: Alive, addr: Addr, now: float) -> None:
        self._apply_alive(msg, now)

    def _on_suspect(self, msg: Suspect, addr: Addr, now: float) -> None:
        self._apply_suspect(msg, now)
        if msg.name == self.name:
            self._answer_accusation(addr)

    def _on_dead(self, msg: Dead, addr: Addr, now: float) -> None:
        self._apply_dead(msg, now)
        if msg.name == self.name and msg.origin != self.name:
            self._answer_accusation(addr)

    def _on_summary(self, msg: Summary, now: float) -> None:
        if msg.name == self.name:
            return
        heard = self._summaries.get(msg.name)
        if heard is None or msg.seq >= heard[0].seq:
            self._summaries[msg.name] = (msg, now)
            _sync.check_behind(self, msg, now)

    # ------------------------------------------------------------------ state rules

    def _implausible(self, name: str, incarnation: int, now: float) -> bool:
        """Whether news about `name` carries an incarnation no member could have reached:
        far past what we know of it (a member raises its incarnation by one per refutation),
        or so near the top of the range that we could not refute it. Such news is forged or
        broken; taken, it would leave us unable to answer (our refutation would not fit the
        wire) or let one packet decide a member's fate for good."""
        known = self._members.get(name)
        floor = known.incarnation if known is not None else 0
        if incarnation <= floor + MAX_INCARNATION_STEP and incarnation < MAX_INCARNATION:
            return False
        self.stats["rejected_incarnation"] += 1
        self._rejected(
            "implausible incarnation",
            None,
            f"{name} at incarnation {incarnation} (we know {floor})",
            now,
        )
        return True

    def _apply_alive(self, a: Alive, now: float, *, rebroadcast: bool = True) -> None:
        if self._implausible(a.name, a.incarnation, now):
            return
        if a.name == self.name:
            self._alive_about_self(a, now)
            return
        m = self._members.get(a.name)
        if m is None:
            m = Member(
                name=a.name,
                addr=a.addr,
                dc=a.dc,
                roles=a.roles,
                weight=a.weight,
                tags=_own_tags(a.tags),
                incarnation=a.incarnation,
                state=State.ALIVE,
                since=now,
                protocol=a.protocol,
                health=a.health,
                last_heard=now,
            )
            self._members[a.name] = m
            self._names.append(a.name)
            self._live.touch(m)
            _probes.add_to_probe_order(self, a.name)
            if rebroadcast:
                self._queue_broadcast(a.name, a)
            self._update_digest()
            self._emit(MemberJoined(m.copy()))
            return
        if a.addr != m.addr:
            if m.state.is_live:
                # A live member at another address: a restart elsewhere, or two nodes with one
                # name. Ask the old address before believing it.
                if a.incarnation > m.incarnation:
                    _probes.verify_claim(self, a, m, now)
                return
            # A dead or departed member back at a new address (memberlist: updatesNode).
        elif a.incarnation < m.incarnation or (
            a.incarnation == m.incarnation and not _isolation.declared_alone(self, m)
        ):
            return
        elif m.state == State.SUSPECT and not _suspicion.answers(self, a, m):
            _suspicion.carry(self, m, a, now, rebroadcast=rebroadcast)
            return
        self._accept_alive(m, a, now, rebroadcast=rebroadcast)

    def _accept_alive(self, m: Member, a: Alive, now: float, *, rebroadcast: bool = True) -> None:
        m = self._own(m)
        previous = m.state
        changed = _metadata(m) != _metadata(a)
        m.addr, m.dc, m.roles, m.weight, m.tags = a.addr, a.dc, a.roles, a.weight, _own_tags(a.tags)
        m.incarnation = a.incarnation
        m.protocol = a.protocol
        m.health = a.health
        flap = previous == State.SUSPECT and _suspicion.refuted(self, m, now)
        self._suspects.pop(m.name, None)
        self._checked.pop(m.name, None)
        self._alone.discard(m.name)
        if previous != State.ALIVE:
            m.state = State.ALIVE
            m.since = now
            if not previous.is_live:
                _probes.add_to_probe_order(self, m.name)
        m.last_heard = now
        self._live.touch(m)
        if rebroadcast or previous != State.ALIVE:
            self._queue_broadcast(m.name, a)
        self._update_digest()
        held = _damping.flapped(self, m, now, self.config.flap_suspicion_weight) if flap else None
        if previous != State.ALIVE:
            self._emit(MemberRecovered(m.copy(), previous=previous.label))
        elif changed:
            self._emit(MemberUpdated(m.copy()))
        if held is not None:
            self._emit(held)

    def _alive_about_self(self, a: Alive, now: float) -> None:
        me = self._members[self.name]
        if self._leaving:
            return
        if a.addr != me.addr and a.incarnation >= me.incarnation:
            # Someone else speaks under our name (or the cluster remembers us elsewhere).
            if self._join is not None and not self._join.done and a.name not in self._claims:
                # Joining after a restart at a new address: check the old one first.
                _probes.verify_claim(self, a, me, now, own=True)
                return
            self.stats["conflicts"] += 1
            self._emit(NameConflict(me.copy(), other=a.addr))
        if a.incarnation < me.incarnation:
            return
        same = _metadata(a) == _metadata(me)
        if a.incarnation == me.incarnation and same:
            return
        self._refute(a.incarnation, now)

    def _apply_suspect(self, s: Suspect, now: float, *, doubted: bool = False) -> None:
        """`doubted`: not news to pass on (a reported death of a member we just heard from,
        a peer's stale view in a push-pull): kept here, and checked with the suspect itself,
        which refutes to us directly if it lives."""
        if self._implausible(s.name, s.incarnation, now):
            return
        m = self._members.get(s.name)
        if m is None or s.incarnation < m.incarnation:
            return
        st = self._suspects.get(s.name)
        if st is not None and m.state == State.SUSPECT:
            if st.suspicion.confirm(s.origin, now):
                self.stats["confirmations"] += 1
                # Pass the confirmation on so others shrink their timeouts too (not ours
                # while we hear nobody).
                if not _isolation.keeps_to_itself(self, s.origin):
                    self._queue_broadcast(s.name, s, suffix=":confirm:" + s.origin)
            return
        if m.state != State.ALIVE:
            return
        if s.name == self.name:
            if not self._leaving:
                accuser = self._members.get(s.origin)
                # An accusation from a member that told us it is slow says more about it
                # than about us: refute it, but do not count it against our own health.
                self._refute(s.incarnation, now, blame=accuser is None or accuser.health == 0)
            return
        if _isolation.keeps_to_itself(self, s.origin):
            self._alone.add(s.name)  # our word alone: kept to ourselves (see `isolated`)
        elif not doubted:
            self._queue_broadcast(s.name, s)
        m = self._own(m)
        m.state = State.SUSPECT
        m.incarnation = s.incarnation
        m.since = now
        self._live.touch(m)
        self._update_digest()
        _suspicion.start(self, m, s, now, doubted=doubted)

    def _apply_dead(self, d: Dead, now: float) -> None:
        if self._implausible(d.name, d.incarnation, now):
            return
        m = self._members.get(d.name)
        if m is None or d.incarnation < m.incarnation:
            return
        left = d.origin == d.name
        if not m.state.is_live:
            # A tombstone only takes newer news: a later incarnation, or a leave over a
            # failure at the same one. This keeps every view converging on one record.
            if d.incarnation > m.incarnation or (left and m.state == State.DEAD):
                m = self._own(m)
                m.incarnation = d.incarnation
                m.state = State.LEFT if left else State.DEAD
                self._live.touch(m)
            return
        if d.name == self.name and not self._leaving:
            self._refute(d.incarnation, now)
            return
        if _suspicion.doubt_death(self, d, m, now):
            self.stats["deaths_doubted"] += 1
            self._rejected(
                "death of a member heard from just now",
                None,
                f"{d.origin} says {d.name} died; taken as a suspicion",
                now,
            )
            self._apply_suspect(Suspect(d.name, d.incarnation, d.origin), now, doubted=True)
            return
        susp = self._suspects.pop(d.name, None)
        if not left and _isolation.keeps_to_itself(self, d.origin):
            # Our word alone, while we hear nobody: kept to ourselves (see `isolated`).
            self._alone.add(d.name)
            self.stats["declared_alone"] += 1
        else:
            self._queue_broadcast(d.name, d)
        m = self._own(m)
        m.state = State.LEFT if left else State.DEAD
        m.incarnation = d.incarnation
        self._live.touch(m)
        suspected_for = now - susp.since if susp is not None else 0.0
        m.since = now
        self._checked.pop(d.name, None)
        self._update_digest()
        if left:
            self._emit(MemberLeft(m.copy()))
            return
        self._emit(
            MemberFailed(
                m.copy(),
                by=d.origin,
                suspected_for=suspected_for,
                confirmations=susp.suspicion.confirmations if susp is not None else 0,
            )
        )
        held = None if d.name in self._alone else _damping.flapped(self, m, now, 1.0)
        if held is not None:
            self._emit(held)

    def _refused_seal(self, e: SealError, addr: Addr, now: float) -> None:
        counter, reason = seal_refusal(e.kind)
        self.stats[counter] += 1
        self._rejected(reason, addr, str(e), now)

    def _rejected(self, reason: str, addr: Addr | None, detail: str, now: float) -> None:
        """Count a refused packet; report each reason at most every REJECTED_EVERY seconds
        (a `Rejected` event with the count since the last report)."""
        event = self._rejections.note(reason, addr, detail, now)
        if event is not None:
            self._emit(event)

    def _answer_accusation(self, addr: Addr) -> None:
        """Someone sent us news that we are suspect or dead: answer it directly with our
        current alive (refuted already if the news was current), not only by gossip, which
        may miss the accuser for a long time when many updates compete."""
        if not self._leaving and self._conflict is None:
            self._send(addr, encode_message(self._own_alive()))

    def _refute(self, incarnation: int, now: float, *, blame: bool = True) -> None:
        me = self._members[self.name]
        self._refutes = max(self._refutes, incarnation)
        me.incarnation = min(max(me.incarnation, incarnation) + 1, MAX_INCARNATION)
        self._live.touch(me)
        self.stats["refutations"] += 1
        # Lifeguard: being suspected is a hint that we are the slow one.
        if blame:
            self._awareness.apply_delta(1)
        threshold = self.config.health_announce_score
        if 0 < threshold <= self._awareness.score and me.health == 0:
            me.health = self._awareness.score  # said in the same alive as the refutation
        self._broadcast_self_alive()
        self._update_digest()

    def _broadcast_self_alive(self) -> None:
        self._queue_broadcast(self.name, self._own_alive())

    # ------------------------------------------------------------------ dissemination

    def _queue_broadcast(self, name: str, msg: Message, suffix: str = "") -> None:
        self._broadcasts.queue(name + suffix if suffix else name, encode_message(msg))

    def _push_pull_interval(self) -> float:
        return _sync.push_pull_interval(self.num_live(), self.config.push_pull_interval)

    def merge_full_state(self, members: Iterable[Member], now: float) -> None:
        """Take `members` as a push-pull from a peer would bring them (their name, address,
        datacenter, roles, weight, tags, incarnation and state): the simulator's warm-up,
        which starts every member knowing every other without the O(N^2) packets of a real
        formation."""
        _sync.merge_members(self, members, now)

    def adopt_view(self, view: SharedView, now: float) -> None:
        """`merge_full_state` of every member of `view`, sharing its records with the other
        cores given it (the simulator at thousands of members; see `_shared_view`)."""
        adopt(self, view, now)

    # ------------------------------------------------------------------ helpers

    def _own(self, m: Member) -> Member:
        """`m` as a record of our own to change: a shared one (`SharedMember`, the
        simulator's) is first copied into our table."""
        if type(m) is SharedMember:
            m = m.copy()
            self._members[m.name] = m
        return m

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _send(self, addr: Addr, encoded: bytes) -> None:
        self._out.setdefault(addr, []).append(encoded)

    def _open_stream(self, addr: Addr, kind: str, msg: StreamMessage, now: float) -> int:
        """Queue a TCP exchange for the driver; its id (`stream_response` gets the reply)."""
        sid = self._next_stream
        self._next_stream += 1
        self._streams.append(StreamRequest(sid, addr, self._seal(encode_stream(msg), now)))
        self._stream_kind[sid] = (kind, addr)
        return sid

    def _finish_packet(self, encoded: list[bytes], now: float) -> bytes:
        return self._seal(encode_packet(self.name, encoded), now)

    def _seal(self, data: bytes, now: float) -> bytes:
        nonce = self._nonce_source(NONCE_SIZE) if self.keyring is not None else b""
        return seal_frame(self.keyring, data, self.label, now + self.wall_offset, nonce)

    def _open(self, data: bytes, now: float) -> bytes:
        return open_frame(self.keyring, data, self.label, now + self.wall_offset)

    def _own_alive(self) -> Alive:
        m = self._members[self.name]
        return Alive(
            m.name,
            m.incarnation,
            m.addr,
            m.dc,
            m.roles,
            m.weight,
            dict(m.tags),
            health=m.health,
            refutes=self._refutes,
        )

    def _own_summary(self) -> Summary:
        return Summary(
            self.name,
            self._summary_seq,
            self._live.digest,
            self._awareness.score,
            self.num_live(),
            self.local_load,
        )

    def _update_digest(self) -> None:
        if self._live.settle():
            self._summary_seq += 1
            # Tell a few members directly through the queue (not relayed further by them).
            self._broadcasts.queue("summary:" + self.name, encode_message(self._own_summary()))


# What each gossip message does, by its type (every type in `Message`).
_ON_MESSAGE: dict[type, Callable[[Membership, Any, Addr, float], None]] = {
    Ping: _probes.on_ping,
    Ack: _probes.on_ack,
    Nack: _probes.on_nack,
    PingReq: _probes.on_ping_req,
    Alive: Membership._on_alive,
    Suspect: Membership._on_suspect,
    Dead: Membership._on_dead,
    Summary: lambda core, msg, addr, now: core._on_summary(msg, now),
}

# What each stream request is answered with, by its type (None: it is no request).
_ON_STREAM: dict[type, Callable[[Membership, Any, float], StreamMessage | None]] = {
    PushPull: _sync.serve,
    Query: _query.serve_query,
    KeyOp: _query.serve_key_op,
}
