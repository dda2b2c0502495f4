"""Suspicion of a member: how long it runs, who looks for themselves, and how it ends.

SWIM's suspicion sub-protocol with Lifeguard's local-health-aware suspicion (LHA-suspicion):
a suspicion starts long (`suspicion_timeouts`, scaled by the cluster size) and shrinks with
each independent confirmation, down to a floor after `k` of them (`expected_confirmations`).
It runs longer for a member that told us it is slow, and for one that refuted a suspicion
recently, up to `suspicion_patience_max` times. A healthy member that hears a suspicion may
ping the suspect itself (our suspect check), so confirmations arrive within a round trip. When
a suspicion runs out short of its confirmations we look once more ourselves (the final check)
before declaring the failure.
And a death reported by another member, of a member we heard from more recently than any real
failure could have been declared, is taken as a suspicion only.

Steps of the core, written as functions of it; the arithmetic is `_lifeguard`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _probes
from ._events import MemberSuspected, MemberUpdated
from ._lifeguard import Suspicion, expected_confirmations, suspicion_timeouts
from ._member import Member, State
from ._messages import Alive, Dead, Suspect

if TYPE_CHECKING:
    from ._core import Membership


@dataclass(slots=True)
class SuspectState:
    suspicion: Suspicion
    since: float
    by: str
    # Final check: the suspicion ran out short of its confirmations, so we asked the suspect
    # ourselves; it is declared only if that goes unanswered until `hold`.
    hold: float | None = None
    answered: bool = False
    final_tries: int = 0
    # Started from another member's report of a death we doubted (see `doubt_death`): not
    # evidence that the member flaps, if it refutes.
    doubted: bool = False

    @property
    def due(self) -> float:
        return self.suspicion.deadline if self.hold is None else self.hold


def start(core: Membership, m: Member, s: Suspect, now: float, *, doubted: bool = False) -> None:
    """`m` has just become a suspect on `s`: start its suspicion, and maybe check ourselves
    (always, for a `doubted` one, which nobody else hears of from us)."""
    n = core.num_live()
    cfg = core.config
    if cfg.suspicion_confirmations is None:
        k = expected_confirmations(n, cfg.suspicion_mult)
    else:
        k = max(0, min(cfg.suspicion_confirmations, n - 2))
    if k > 0 and n - 2 <= 2 * k:
        k = min(k, _confirmers(core, m.name, s.origin))
    lo, hi = suspicion_timeouts(
        n, cfg.suspicion_mult, cfg.suspicion_max_timeout_mult, cfg.probe_interval
    )
    if lo < cfg.suspicion_min_floor:
        hi *= cfg.suspicion_min_floor / lo if lo > 0 else 1.0
        lo = cfg.suspicion_min_floor
    # More time for a member that said it is slow, or that just refuted a suspicion:
    # it is alive, and its refutation takes longer than a healthy member's.
    scale: float = 1 + min(m.health, 3)
    count, last = core._refuted.get(s.name, (0, 0.0))
    if count and now - last <= cfg.refutation_memory:
        scale += min(count, 2)
    scale = min(scale, max(1.0, cfg.suspicion_patience_max))
    lo, hi = lo * scale, hi * scale
    if m.held:
        # Held for flapping: it is out of routing already; declaring it again each time it
        # drops out for a few seconds would only count another flap.
        lo = max(lo, cfg.flap_well)
        hi = max(hi, lo)
    susp = Suspicion(origin=s.origin, k=k, min_timeout=lo, max_timeout=hi, start=now)
    core._suspects[s.name] = SuspectState(susp, now, s.origin, doubted=doubted)
    core._checked.pop(s.name, None)  # a new suspicion: we may look for ourselves again
    core._emit(MemberSuspected(m.copy(), by=s.origin))
    if doubted and core.config.suspect_check:
        _probes.suspect_check(core, m, now)
        return
    # Only a member in good health checks for itself: a slow member's failed check would
    # be a confirmation that says more about it than about the suspect (Lifeguard).
    if (
        s.origin != core.name
        and core.config.suspect_check
        and core._awareness.score == 0
        and core._rng.random() * n < core.config.suspect_checkers
    ):
        _probes.suspect_check(core, m, now)


def _confirmers(core: Membership, suspect: str, origin: str) -> int:
    """How many live members could confirm a suspicion of `suspect` (in a small cluster,
    where it matters): not us, the suspect or its accuser, nor a member whose health score
    says it is slow (its last summary, or its own announcement): a slow member does not
    check suspects itself (Lifeguard). Waiting for confirmations that cannot come made a
    suspicion in a cluster of five run twice as long for a minute after another member's
    outage, while that member's score came down."""
    count = 0
    for name in core._live.members():
        if name in (core.name, suspect, origin):
            continue
        m = core._members[name]
        heard = core._summaries.get(name)
        if m.health == 0 and (heard is None or heard[0].health == 0):
            count += 1
    return count


def expired(core: Membership, name: str, now: float) -> None:
    """The suspicion of `name` (or its final check's hold) ran out."""
    st = core._suspects.get(name)
    m = core._members.get(name)
    if st is None or m is None or m.state != State.SUSPECT:
        core._suspects.pop(name, None)
        return
    susp = st.suspicion
    # Asked twice (three times if it said it is slow) before it is declared: one lost
    # ping or ack must not turn a lone accusation into a failure.
    tries = 2 if m.health == 0 else 3
    if (
        core.config.suspect_final_check
        and not core._leaving
        and (susp.confirmations < susp.k or m.health > 0 or st.hold is not None)
        and (st.answered or st.final_tries < tries)
    ):
        # Nobody else confirmed it, or it told us it is slow (others' confirmations then
        # say little), or it answered our last look but its refutation has not reached
        # us: ask it ourselves, with the suspicion, before declaring it. A
        # live suspect refutes straight back to us.
        _probes.final_check(core, st, m, now)
        return
    core.stats["failures_declared"] += 1
    core._apply_dead(Dead(name, m.incarnation, core.name), now)


def doubt_death(core: Membership, d: Dead, m: Member, now: float) -> bool:
    """Whether to take another member's word that `m` died as a suspicion instead: we
    heard from `m` itself more recently than any real failure could have been declared
    (a suspicion lasts at least its minimum after the failed probe, and the dead member
    is silent all that time). A forged or mistaken death then costs a ping (our own
    suspect check, which lets `m` refute at once) instead of a failure, a routing
    change and a handoff on every node."""
    if d.origin in (d.name, core.name) or d.name in core._suspects:
        return False
    cfg = core.config
    lo, _ = suspicion_timeouts(
        core.num_live(), cfg.suspicion_mult, cfg.suspicion_max_timeout_mult, cfg.probe_interval
    )
    return now - m.last_heard < max(lo, cfg.suspicion_min_floor)


def answers(core: Membership, a: Alive, m: Member) -> bool:
    """Whether a newer alive of the suspect `m` answers the suspicion in force: its sender
    heard it (`refutes` is the incarnation it was accused at). One that answers none (it
    announced itself slow, or changed its tags, while deaf) does not clear the suspicion.
    From an older sender (no `refutes`), or with `strict_refutation` off, any newer alive
    does (memberlist's rule)."""
    return not core.config.strict_refutation or a.refutes is None or a.refutes >= m.incarnation


def carry(core: Membership, m: Member, a: Alive, now: float, *, rebroadcast: bool) -> None:
    """Take a non-answering alive's incarnation and metadata; the suspicion runs on (and
    what we probe, confirm or declare from now on is at the new incarnation)."""
    core.stats["alives_not_refuting"] += 1
    m = core._own(m)
    changed = (m.dc, m.roles, m.weight, m.tags) != (a.dc, a.roles, a.weight, a.tags)
    m.dc, m.roles, m.weight, m.tags = a.dc, a.roles, a.weight, dict(a.tags)
    m.incarnation = a.incarnation
    m.protocol = a.protocol
    m.health = a.health
    core._live.touch(m)
    if rebroadcast:
        core._queue_broadcast(m.name, a)
    core._update_digest()
    if changed:
        core._emit(MemberUpdated(m.copy()))


def refuted(core: Membership, m: Member, now: float) -> bool:
    """The suspect `m` refuted the suspicion in force. Remember it (more patience with it
    for `refutation_memory`), and say whether it counts as a flap: not a suspicion that was
    a doubted death (after a partition heals, the other side's declarations arrive as those)
    nor one we raised alone while isolated."""
    st = core._suspects.get(m.name)
    if st is None or st.doubted or m.name in core._alone:
        return False
    count, last = core._refuted.get(m.name, (0, now))
    if now - last > core.config.refutation_memory:
        count = 0
    core._refuted[m.name] = (count + 1, now)
    return True
