"""Isolation: a member that hears nobody knows it is the one cut off.

A member whose inbound traffic is lost (a deaf host: a firewall dropping its input, a broken
receive path, a full socket buffer) still sends: it probes, hears no ack, asks relays, hears
no nack either, and would accuse every member it probes. Lifeguard's missing nacks already
say the fault is probably ours; here that becomes a state of the core:

- a probe none of whose relays answered raises no suspicion (`_probes`), only our health
  score, unless `silent_relays_suspect`;
- after `isolation_probes` such probes with nothing at all received meanwhile, we are
  isolated. What we conclude then (our own suspicions, confirmations and declarations of
  others) is kept to ourselves: not gossiped, not attached to pings, and reported as alive in
  our push-pulls. If the others really are all gone, we still declare them, to ourselves;
- we do not announce ourselves slow while we hear nothing (`_probes.announce_health` wants a
  late answer first): asking the others for patience would only keep a deaf member in their
  views longer;
- the first packet we receive ends it: the suspicions we raised alone are dropped, the
  failures we declared alone give way to any news of the member, our health score (raised by
  probes that failed because we heard nothing) goes back to 0, and we sync with whoever
  spoke to catch up on what the others concluded meanwhile.

Steps of the core, written as functions of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _sync
from ._events import Isolation, MemberRecovered
from ._member import Addr, Member, State

if TYPE_CHECKING:
    from ._core import Membership


def isolated(core: Membership) -> bool:
    need = core.config.isolation_probes
    return 0 < need <= core._unheard_probes and core.num_live() > 1


def keeps_to_itself(core: Membership, origin: str) -> bool:
    """Whether news that originates with `origin` stays with us: ours, while isolated."""
    return origin == core.name and isolated(core)


def unanswered(core: Membership) -> None:
    """A probe of ours went wholly unanswered: no ack, and no relay's nack."""
    core._unheard_probes += 1
    if core._unheard_probes == core.config.isolation_probes and isolated(core):
        core._emit(Isolation(True, core._unheard_probes))


def heard(core: Membership, addr: Addr, now: float, sender: str, *, sync: bool = True) -> None:
    """A packet (or, with `sync` False, a push-pull) from `sender` at `addr` reached us."""
    if isolated(core):
        core._emit(Isolation(False, core._unheard_probes))
        # We hear again after hearing nobody: what we concluded alone is doubtful, and
        # what the others concluded meanwhile we missed. Sync with whoever spoke (a
        # push-pull that reached us brought its view already).
        core.stats["isolations"] += 1
        core._unheard_probes = 0
        # Our probes failed because we heard nothing, not because we are slow: the score
        # they raised says nothing about our health now (left high, it kept us from checking
        # suspects, and the next suspicion in a small cluster waited for our confirmation).
        core._awareness.apply_delta(-core._awareness.max_multiplier)
        _drop_lone_suspicions(core, now, sorted(core._alone))
        if sync and not core._leaving:
            _sync.open_push_pull(core, addr, join=False, kind="repair", now=now)
    core._unheard_probes = 0
    if sender in core._alone:
        # The member we suspected alone speaks: it lives, whatever we concluded.
        _drop_lone_suspicions(core, now, [sender])


def declared_alone(core: Membership, m: Member) -> bool:
    """We declared `m` failed while isolated: any news that it lives, even at the
    incarnation we declared, is better than our word."""
    return m.state == State.DEAD and m.name in core._alone


def _drop_lone_suspicions(core: Membership, now: float, names: list[str]) -> None:
    """The suspicions of `names` we raised while isolated end when we hear again, or hear
    from the suspect: they were about our ears, not about the suspects. (Failures we
    declared then stand until any news of the member, or the repair sync, says otherwise.)
    `names` in name order, so that the events come out the same whatever the hash seed."""
    for name in names:
        m = core._members.get(name)
        if m is None or m.state != State.SUSPECT or name not in core._alone:
            continue
        m = core._own(m)
        core._alone.discard(name)
        core._suspects.pop(name, None)
        core._checked.pop(name, None)
        m.state = State.ALIVE
        m.since = now
        core._live.touch(m)
        core._emit(MemberRecovered(m.copy(), previous=State.SUSPECT.label))
    core._update_digest()
