"""Membership events: frozen records handed out by `Membership.next_event()`."""

from __future__ import annotations

from dataclasses import dataclass

from ._member import Addr, Member


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """Base of every member event. `member` is a snapshot taken when the event happened."""

    member: Member


@dataclass(frozen=True, slots=True)
class MemberJoined(MemberEvent):
    """A member this node did not know is alive."""


@dataclass(frozen=True, slots=True)
class MemberUpdated(MemberEvent):
    """A live member changed its address, roles, weight or tags."""


@dataclass(frozen=True, slots=True)
class MemberSuspected(MemberEvent):
    """A member is suspected of having failed. `by` names who suspected it first."""

    by: str = ""


@dataclass(frozen=True, slots=True)
class MemberFailed(MemberEvent):
    """A member was declared dead. `by` is who declared it; `suspected_for` how long it was
    suspect here before that; `confirmations` how many others independently suspected it."""

    by: str = ""
    suspected_for: float = 0.0
    confirmations: int = 0


@dataclass(frozen=True, slots=True)
class MemberLeft(MemberEvent):
    """A member left the cluster gracefully."""


@dataclass(frozen=True, slots=True)
class MemberRecovered(MemberEvent):
    """A member that was suspect, dead or left is alive again (refuted or restarted)."""

    previous: str = ""


@dataclass(frozen=True, slots=True)
class MemberHeld(MemberEvent):
    """A member declared failed again and again (its flap `penalty` reached the limit) is
    held out of routing and DNS for `reason` ("flapping"); membership still tracks it."""

    reason: str = ""
    penalty: float = 0.0


@dataclass(frozen=True, slots=True)
class MemberReleased(MemberEvent):
    """A held member has been well long enough (and its penalty has decayed): it is back in
    routing and DNS if it is live."""


@dataclass(frozen=True, slots=True)
class NameConflict(MemberEvent):
    """Two live nodes claim one name: `member` is the one we keep, `other` the claimant's
    address. Nothing is merged; an operator has to rename one of them."""

    other: Addr = ("", 0)


@dataclass(frozen=True, slots=True)
class JoinFailed:
    """No seed answered this join attempt; the core retries after `retry_in` seconds."""

    seeds: tuple[Addr, ...]
    attempt: int
    retry_in: float


@dataclass(frozen=True, slots=True)
class Joined:
    """This node joined: a seed answered the push-pull. `members` is how many it knows now."""

    via: Addr
    members: int


@dataclass(frozen=True, slots=True)
class KeyringChanged:
    """A key operation changed the keyring (the agent persists it)."""

    op: str
    key_id: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """Gossip packets or stream frames this node refused for one reason (a wrong key or
    label, a replay, a stale stamp, a malformed packet, a forged death ...): `count` of them
    since the last such event for that reason, the last from `addr`. At most one event per
    reason every `REJECTED_EVERY` seconds, so a flood of garbage is a line every few seconds
    in the log, not a line per packet."""

    reason: str
    count: int
    addr: Addr | None
    detail: str


@dataclass(frozen=True, slots=True)
class Isolation:
    """We hear nobody (`isolated`: our last `probes` probes went wholly unanswered and
    nothing reached us meanwhile), or we hear again. While isolated our conclusions about
    others stay with us."""

    isolated: bool
    probes: int


Event = MemberEvent | JoinFailed | Joined | KeyringChanged | Rejected | Isolation
