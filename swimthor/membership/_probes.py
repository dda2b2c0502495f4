"""Probes in flight: ping, ping-req and nack, suspect checks, final checks and claims.

Every ping a member sends waits in `Membership._pending` (by sequence number) for its ack.
What the ping was for is its kind, and `KINDS` says what each kind does when the ack comes and
when it times out:

- probe: our own failure probe of a member (SWIM): a direct ping, then after the probe
  timeout a ping-req through k members, which nack if the target does not answer them either
  (Lifeguard); no ack by the end of the indirect phase makes the target a suspect, and every
  missing nack counts against our own health;
- relay: a ping we send on behalf of another member's ping-req; we pass its ack back, or a
  nack when it times out;
- check: a suspect check (ours): we heard a suspicion and ping the suspect ourselves, with
  the suspicion, so it can refute; no answer is an independent confirmation;
- final: a suspicion ran out short of its confirmations: one last look before declaring;
- claim: a live member showed up at another address (a restart, or two nodes with one
  name): is the old address still answering under the name?

Timeouts follow Lifeguard: our own health stretches them, a member that said it is slow gets
longer, and a member in another datacenter at least a multiple of the round trip measured to
that datacenter. Our own health score moves with the probes' outcomes (an ack lowers it, a
failed probe and every missing nack raise it), and `announce_health` tells the cluster when we
become slow and when we are healthy again. These are steps of the core, written as functions
of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _isolation
from ._events import NameConflict
from ._member import Addr, Member, State
from ._messages import Ack, Alive, Nack, Ping, PingReq, Suspect, encode_message

if TYPE_CHECKING:
    from ._core import Membership
    from ._suspicion import SuspectState

PROBE = "probe"  # our own failure probe of a member
RELAY = "relay"  # a ping we send on behalf of a ping-req
CHECK = "check"  # a suspect check (we heard a suspicion and look for ourselves)
CLAIM = "claim"  # is the old address of a name still answering?
FINAL = "final"  # a suspicion ran out unconfirmed: one last look before declaring

_RTT_ALPHA = 0.2


@dataclass(slots=True)
class Pending:
    """A ping in flight, waiting for an ack."""

    kind: str
    target: str
    target_addr: Addr
    sent: float
    deadline: float  # direct-ack deadline (probe), nack deadline (relay), give-up (check/claim)
    final: float = 0.0  # probe only: end of the indirect phase
    indirect: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    incarnation: int = 0
    # relay: where to send the ack or nack, and under which sequence number
    reply_to: Addr = ("", 0)
    reply_seq: int = 0
    want_nack: bool = False
    claim: Alive | None = None


def next_seq(core: Membership) -> int:
    core._seq = (core._seq + 1) & 0x7FFFFFFF
    return core._seq


def send_ping(core: Membership, p: Pending, suspicion: Suspect | None = None) -> int:
    """Put `p` in flight: ping its target, after `suspicion` when the ping carries one (so a
    live suspect can refute at once); the ping's sequence number."""
    seq = next_seq(core)
    core._pending[seq] = p
    if suspicion is not None:
        core._send(p.target_addr, encode_message(suspicion))
    me = core._members[core.name]
    core._send(p.target_addr, encode_message(Ping(seq, p.target, core.name, me.addr, core.dc)))
    return seq


# ---------------------------------------------------------------- sending probes


def probe(core: Membership, now: float) -> None:
    """The probe tick: schedule the next one, and ping this round's target."""
    # Lifeguard: a slow member probes less often (on the shared schedule: skips rounds).
    interval = core._awareness.scale_timeout(core.config.probe_interval)
    shared = core.config.probe_schedule == "shared"
    if shared:
        # A healthy member probes its target every round even while an earlier probe (of
        # a slow member, with a long timeout) is still in flight: this round's target has
        # no other prober. On the random schedule, one probe at a time.
        core._next_probe = next_shared_probe(core, now, interval)
    else:
        core._next_probe = now + interval
    if core._leaving or (core._probing is not None and not shared):
        return
    target = shared_probe_target(core, now) if shared else next_probe_target(core)
    if target is None:
        return
    timeout = probe_timeout(core, target)
    p = Pending(
        kind=PROBE,
        target=target.name,
        target_addr=target.addr,
        sent=now,
        deadline=now + timeout,
        # The indirect phase ends when the relays' answers are due (they nack at 0.8 of
        # their timeout after our ping-req at `timeout`), not at the end of the interval
        # as in memberlist: the suspicion starts as soon as the evidence is in.
        final=now + 2 * timeout,
        incarnation=target.incarnation,
    )
    # Buddy system: the probe of a suspect carries the suspicion so it can refute (not a
    # suspicion we raised alone while isolated: that one is ours to keep).
    buddy = target.state == State.SUSPECT and target.name not in core._alone
    suspicion = Suspect(target.name, target.incarnation, core.name) if buddy else None
    core._probing = send_ping(core, p, suspicion)
    core.stats["pings_sent"] += 1


def next_shared_probe(core: Membership, now: float, interval: float) -> float:
    base = core.config.probe_interval
    return core._schedule.next_round(now, core.wall_offset, base, interval)


def shared_probe_target(core: Membership, now: float) -> Member | None:
    r = core._schedule.round(now + core.wall_offset, core.config.probe_interval)
    return core._schedule.ring_target(core._live.ring, core._members, r, core._rng)


def next_probe_target(core: Membership) -> Member | None:
    return core._schedule.next_target(core._members, core._rng)


def add_to_probe_order(core: Membership, name: str) -> None:
    if core.config.probe_schedule == "shared":
        return  # the shared schedule probes along the ring, not this list
    core._schedule.add(name, core._rng)


def start_indirect(core: Membership, seq: int, p: Pending, now: float) -> None:
    p.indirect = True
    k = core.config.indirect_checks

    def can_relay(m: Member) -> bool:
        return m.state == State.ALIVE and m.name not in (core.name, p.target)

    # Relays that told us they are slow would answer late: a missing nack from them
    # would count against our own health. Healthy relays first, the others if too few.
    chosen = random_members(core, k, lambda m: can_relay(m) and m.health == 0)
    if len(chosen) < k:
        chosen += random_members(core, k - len(chosen), lambda m: can_relay(m) and m.health > 0)
    me = core._members[core.name]
    for relay in chosen:
        core.stats["ping_reqs_sent"] += 1
        msg = PingReq(seq, p.target, p.target_addr, core.name, me.addr, True)
        core._send(relay.addr, encode_message(msg))
    p.expected_nacks = len(chosen)


def random_members(core: Membership, k: int, eligible: Callable[[Member], bool]) -> list[Member]:
    """Up to k distinct random members that satisfy `eligible`. Samples by index from the
    list of names when the cluster is large, so a failed probe costs O(k), not O(N)."""
    names = core._names
    if len(names) > 8 * k + 16:
        out: dict[str, Member] = {}
        for _ in range(16 * k):
            m = core._members.get(names[core._rng.randrange(len(names))])
            if m is not None and m.name not in out and eligible(m):
                out[m.name] = m
                if len(out) == k:
                    return list(out.values())
    pool = [m for m in core._members.values() if eligible(m)]
    return core._rng.sample(pool, min(k, len(pool)))


def suspect_check(core: Membership, m: Member, now: float) -> None:
    if core._leaving or core._checked.get(m.name) == m.incarnation:
        return
    core._checked[m.name] = m.incarnation
    core.stats["suspect_checks"] += 1
    timeout = probe_timeout(core, m)
    p = Pending(kind=CHECK, target=m.name, target_addr=m.addr, sent=now, deadline=now + timeout)
    send_ping(core, p, Suspect(m.name, m.incarnation, core.name))


def final_check(core: Membership, st: SuspectState, m: Member, now: float) -> None:
    """Ask a suspect ourselves, with the suspicion, before declaring it; it is declared only
    if that goes unanswered until `st.hold`."""
    st.final_tries = 0 if st.answered else st.final_tries + 1
    st.answered = False
    st.hold = now + max(probe_timeout(core, m), core.config.probe_interval)
    core.stats["final_checks"] += 1
    p = Pending(kind=FINAL, target=m.name, target_addr=m.addr, sent=now, deadline=st.hold)
    alone = m.name in core._alone
    send_ping(core, p, None if alone else Suspect(m.name, m.incarnation, core.name))


def verify_claim(core: Membership, a: Alive, m: Member, now: float, *, own: bool = False) -> None:
    if a.name in core._claims:
        return
    timeout = max(probe_timeout(core, m), core.config.probe_interval)
    addr = a.addr if own else m.addr
    p = Pending(
        kind=CLAIM, target=a.name, target_addr=addr, sent=now, deadline=now + timeout, claim=a
    )
    core._claims[a.name] = send_ping(core, p)


def probe_timeout(core: Membership, m: Member | None) -> float:
    base = core._awareness.scale_timeout(core.config.probe_timeout)
    if m is not None and m.health:
        # It told us it is slow: wait longer for its answers (Lifeguard, the other way).
        base *= 1 + min(m.health, 3)
    if m is not None and m.dc != core.dc:
        rtt = core._rtt.get(m.dc)
        if rtt is not None:
            base = max(base, core.config.remote_timeout_rtt_mult * rtt)
    return base


def measure_rtt(core: Membership, name: str, rtt: float) -> None:
    m = core._members.get(name)
    if m is None or rtt < 0:
        return
    old = core._rtt.get(m.dc)
    core._rtt[m.dc] = rtt if old is None else old + _RTT_ALPHA * (rtt - old)


def announce_health(core: Membership, now: float) -> None:
    """Tell the cluster when we become slow (score >= health_announce_score), and when
    we have been healthy again for health_dwell seconds.

    Slow, not deaf: we say so only once an answer to one of our probes came late (within
    the last health_dwell seconds). A member that hears nothing raises its score just as
    fast, but asking the others for patience would only keep it in their views longer."""
    threshold = core.config.health_announce_score
    if threshold <= 0 or core._leaving:
        return
    me = core._members[core.name]
    score = core._awareness.score
    if score >= threshold and me.health == 0:
        if now - core._late_at > core.config.health_dwell or core.isolated():
            return
        me.health = score
    elif score == 0 and me.health > 0:
        if core._healthy_since is None:
            core._healthy_since = now
        if now - core._healthy_since < core.config.health_dwell:
            return
        me.health = 0
    else:
        if score > 0:
            core._healthy_since = None
        return
    core._healthy_since = None
    me.incarnation += 1
    core._live.touch(me)
    core._broadcast_self_alive()
    core._update_digest()


# ---------------------------------------------------------------- pings, ping-reqs, answers


def on_ping(core: Membership, msg: Ping, addr: Addr, now: float) -> None:
    if msg.target != core.name:
        # Meant for a member that used to live at this address: stay silent.
        core.stats["misdirected"] += 1
        return
    core._send(addr, encode_message(Ack(msg.seq, core.name)))
    core._send(addr, encode_message(core._own_summary()))


def on_ping_req(core: Membership, msg: PingReq, addr: Addr, now: float) -> None:
    if msg.target == core.name:
        core._send(addr, encode_message(Ack(msg.seq, core.name)))
        return
    # Answer a little before the requester's indirect phase ends, so the nack counts.
    timeout = 0.8 * probe_timeout(core, core._members.get(msg.target))
    p = Pending(
        kind=RELAY,
        target=msg.target,
        target_addr=msg.target_addr,
        sent=now,
        deadline=now + timeout,
        reply_to=addr,
        reply_seq=msg.seq,
        want_nack=msg.nack,
    )
    send_ping(core, p)


# How many of our timed-out probes we remember, to recognise their late answers.
_RECENT_PROBES = 32


def _late_answer(core: Membership, seq: int, now: float) -> None:
    """An ack or nack for a probe of ours that timed out: we hear, only slowly."""
    if seq in core._recent_probes:
        core.stats["late_answers"] += 1
        core._late_at = now
        announce_health(core, now)


def on_ack(core: Membership, msg: Ack, addr: Addr, now: float) -> None:
    p = core._pending.get(msg.seq)
    if p is None:
        _late_answer(core, msg.seq, now)
        return
    if msg.source != p.target:
        return
    core.stats["acks_received"] += 1
    kind = KINDS[p.kind]
    if addr == p.target_addr and kind.measures_rtt:
        # Straight from the target (not relayed), even if late: a round trip to its dc.
        measure_rtt(core, p.target, now - p.sent)
    del core._pending[msg.seq]
    kind.acked(core, p, now)


def on_nack(core: Membership, msg: Nack, addr: Addr, now: float) -> None:
    p = core._pending.get(msg.seq)
    if p is not None and p.kind == PROBE:
        p.nacks += 1
        core.stats["nacks_received"] += 1
    elif p is None:
        _late_answer(core, msg.seq, now)


def is_due(p: Pending, now: float) -> bool:
    if p.kind == PROBE and p.indirect:
        return p.final <= now
    return p.deadline <= now


def timed_out(core: Membership, seq: int, now: float) -> None:
    """A ping's deadline passed without its ack."""
    p = core._pending[seq]
    if p.kind == PROBE and not p.indirect:
        # The direct phase is over: ask others (ping-req), unless the indirect phase is
        # over already too.
        start_indirect(core, seq, p, now)
        if p.final > now:
            return
    del core._pending[seq]
    if p.kind == PROBE:
        recent = core._recent_probes
        recent[seq] = p.sent
        if len(recent) > _RECENT_PROBES:
            del recent[next(iter(recent))]
    KINDS[p.kind].timed_out(core, p, now)


# ---------------------------------------------------------------- what each kind does


def _probe_acked(core: Membership, p: Pending, now: float) -> None:
    core._probing = None
    core._awareness.apply_delta(-1)
    announce_health(core, now)


def _probe_failed(core: Membership, p: Pending, now: float) -> None:
    core._probing = None
    core.stats["probes_failed"] += 1
    if p.expected_nacks > 0:
        missing = p.expected_nacks - p.nacks
        if missing > 0:
            core._awareness.apply_delta(missing)
    else:
        core._awareness.apply_delta(1)
    if p.nacks == 0:
        _isolation.unanswered(core)
    announce_health(core, now)
    m = core._members.get(p.target)
    if m is None or not m.state.is_live:
        return
    if (
        p.expected_nacks > 0
        and p.nacks == 0
        and not core.config.silent_relays_suspect
        and not core.isolated()
    ):
        # Not even the relays answered: the fault is more likely ours than the target's
        # (Lifeguard's missing nacks). If the others really are gone we soon hear nobody
        # at all, and then suspect (kept to ourselves: see `Membership.isolated`).
        core.stats["silent_probes"] += 1
        return
    if m.incarnation > p.incarnation:
        # It announced itself alive (refuted, most likely) after we sent the probe: our
        # evidence is older than its news, and would accuse it at an incarnation it has
        # already answered (a probe sent into a partition that times out after the heal).
        return
    core.stats["suspicions"] += 1
    core._apply_suspect(Suspect(m.name, m.incarnation, core.name), now)


def _relay_acked(core: Membership, p: Pending, now: float) -> None:
    core._send(p.reply_to, encode_message(Ack(p.reply_seq, p.target)))


def _relay_timed_out(core: Membership, p: Pending, now: float) -> None:
    if p.want_nack:
        core._send(p.reply_to, encode_message(Nack(p.reply_seq, core.name)))


def _check_timed_out(core: Membership, p: Pending, now: float) -> None:
    m = core._members.get(p.target)
    if m is not None and m.state == State.SUSPECT:
        # Independent confirmation: we could not reach it either.
        core._apply_suspect(Suspect(m.name, m.incarnation, core.name), now)


def _final_acked(core: Membership, p: Pending, now: float) -> None:
    st = core._suspects.get(p.target)
    if st is not None:
        st.answered = True


def _claim_acked(core: Membership, p: Pending, now: float) -> None:
    # The old address still answers under this name: two live nodes claim it.
    core._claims.pop(p.target, None)
    kept = core._members.get(p.target)
    if p.claim is not None and kept is not None:
        core.stats["conflicts"] += 1
        other = p.target_addr if p.target == core.name else p.claim.addr
        event = NameConflict(kept.copy(), other=other)
        if p.target == core.name:
            # We are the newcomer: do not announce ourselves over a live member.
            core._conflict = event
        core._emit(event)


def _claim_timed_out(core: Membership, p: Pending, now: float) -> None:
    core._claims.pop(p.target, None)
    claim = p.claim
    if claim is None:
        return
    if p.target == core.name:
        # Nobody answers at our old address: it was us, before a restart.
        core._refute(claim.incarnation, now)
        return
    m = core._members.get(p.target)
    if m is not None and claim.incarnation > m.incarnation:
        core._accept_alive(m, claim, now)


def _nothing(core: Membership, p: Pending, now: float) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Kind:
    """What a kind of ping in flight does when its ack comes and when it times out (the
    ping has left `_pending` by then)."""

    measures_rtt: bool  # an ack straight from the target is a round trip to its datacenter
    acked: Callable[[Membership, Pending, float], None]
    timed_out: Callable[[Membership, Pending, float], None]


KINDS: dict[str, Kind] = {
    PROBE: Kind(True, _probe_acked, _probe_failed),
    RELAY: Kind(False, _relay_acked, _relay_timed_out),
    CHECK: Kind(True, _nothing, _check_timed_out),
    # The suspicion's hold runs out at the same time as a final check.
    FINAL: Kind(False, _final_acked, _nothing),
    CLAIM: Kind(False, _claim_acked, _claim_timed_out),
}
