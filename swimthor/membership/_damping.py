"""Flap damping: a member declared failed again and again is held out until it stays well.

A member that fails in a gray way (it hears half the time, loses most of its packets,
restarts in a loop) is declared failed, refutes, is declared again: each time its keys move
to their next owners and back, on every node, with a handoff each way; or it is suspected and
refutes, again and again, unreachable part of the time while it stays in routing. ringpop
damps flaps; memberlist does not. Here, as in BGP's route flap damping (RFC 2439), every
declaration of a member adds 1 to its penalty, and every suspicion of it that it refuted
`flap_suspicion_weight` (a suspicion that was a doubted death, or ours alone while
isolated, counts nothing); the penalty halves every `flap_half_life` seconds. A member whose
penalty reaches `flap_suppress` (two declarations within about a half-life, with the
defaults) is held: membership still tracks it (probes, suspicions, refutations), but it is
out of routing and DNS, as a failed member is (`Member.held`, `MemberHeld`). Its suspicions
run at least `flap_well` seconds, so a member that flaps faster than that is not declared
again and again. It is released (`MemberReleased`) once its penalty has decayed below
`flap_reuse` and it has been alive, unsuspected, for `flap_well` seconds.

A pure state holder: every time is the core's clock, passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._events import MemberHeld, MemberReleased
from ._member import Member, State

if TYPE_CHECKING:
    from ._core import Membership

__all__ = ["HELD_FLAPPING", "FlapDamper", "flapped", "release_due"]

# Why a member is held (`Member.held`).
HELD_FLAPPING = "flapping"
# A penalty below this is forgotten.
_NEGLIGIBLE = 0.01


@dataclass(slots=True)
class _Penalty:
    value: float  # at `at`
    at: float


class FlapDamper:
    """Per-member flap penalties and who is held. Off when `half_life` is 0."""

    __slots__ = ("_half_life", "_held", "_penalties", "_reuse", "_suppress")

    def __init__(self, half_life: float, suppress: float, reuse: float) -> None:
        if half_life < 0 or not 0 < reuse < suppress:
            raise ValueError("flap damping needs half_life >= 0 and 0 < reuse < suppress")
        self._half_life = half_life
        self._suppress = suppress
        self._reuse = reuse
        self._penalties: dict[str, _Penalty] = {}
        self._held: set[str] = set()

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    def is_held(self, name: str) -> bool:
        return name in self._held

    def penalty(self, name: str, now: float) -> float:
        p = self._penalties.get(name)
        if p is None or self._half_life <= 0:
            return 0.0
        return p.value * math.exp(-math.log(2.0) * max(0.0, now - p.at) / self._half_life)

    def add(self, name: str, now: float, weight: float = 1.0) -> bool:
        """`name` flapped at `now` (declared failed: 1; a suspicion it refuted: less): add
        `weight` to its penalty. True when that makes it held (it was not before)."""
        if self._half_life <= 0 or weight <= 0:
            return False
        self._penalties[name] = _Penalty(self.penalty(name, now) + weight, now)
        if name in self._held or self.penalty(name, now) < self._suppress:
            return False
        self._held.add(name)
        return True

    def decayed_at(self, name: str) -> float:
        """When the penalty of `name` falls below `reuse` (its last value's decay)."""
        p = self._penalties.get(name)
        if p is None or p.value < self._reuse:
            return -math.inf
        return p.at + self._half_life * math.log2(p.value / self._reuse)

    def release(self, name: str) -> None:
        self._held.discard(name)

    def forget(self, name: str) -> None:
        self._held.discard(name)
        self._penalties.pop(name, None)

    def prune(self, now: float) -> None:
        """Forget the penalties that have decayed to nothing (of members not held)."""
        for name in [
            n for n in self._penalties if n not in self._held and self.penalty(n, now) < _NEGLIGIBLE
        ]:
            del self._penalties[name]


# ---------------------------------------------------------------- steps of the core


def flapped(core: Membership, m: Member, now: float, weight: float) -> MemberHeld | None:
    """`m` was just declared failed here (weight 1), or refuted a suspicion (weight
    `flap_suspicion_weight`): count it; the event to emit if that makes it held."""
    damper = core._damper
    if not damper.add(m.name, now, weight):
        return None
    m = core._own(m)
    m.held = HELD_FLAPPING
    core.stats["members_held"] += 1
    core._next_release = min(core._next_release, _release_at(core, m))
    return MemberHeld(m.copy(), HELD_FLAPPING, round(damper.penalty(m.name, now), 3))


def _release_at(core: Membership, m: Member) -> float:
    """When held `m` can be released, as far as we know now: its penalty decayed, and
    alive and unsuspected for `flap_well` (a member not alive is checked again a probe
    interval on; a member gone for good is let go once its penalty decays)."""
    decayed = core._damper.decayed_at(m.name)
    if m.state == State.ALIVE:
        return max(decayed, m.since + core.config.flap_well)
    return max(decayed, core._next_probe)


def release_due(core: Membership, now: float) -> None:
    """Release the held members that are due; schedule the next look."""
    nxt = math.inf
    damper = core._damper
    for name in sorted(damper.held):
        m = core._members.get(name)
        if m is None:
            damper.forget(name)
            continue
        at = _release_at(core, m)
        if at <= now and (m.state == State.ALIVE or not m.state.is_live):
            damper.release(name)
            m = core._own(m)
            m.held = ""
            core._emit(MemberReleased(m.copy()))
        else:
            nxt = min(nxt, max(at, now + core.config.probe_interval))
    core._next_release = nxt
