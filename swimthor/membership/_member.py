"""Member records and the incarnation rules that decide which news about a member wins."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

Addr = tuple[str, int]


class State(enum.IntEnum):
    """A member's state. The numbers are on the wire (push-pull) and never change."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def is_live(self) -> bool:
        return self in (State.ALIVE, State.SUSPECT)


@dataclass(slots=True)
class Member:
    """One member as this node sees it. `since` is core time (the clock passed to the core)."""

    name: str
    addr: Addr
    dc: str
    roles: tuple[str, ...]
    weight: float
    tags: dict[str, str]
    incarnation: int
    state: State
    since: float
    protocol: int = 1
    # The Lifeguard health score the member last announced about itself (0: healthy).
    health: int = 0
    # Lifeguard suspicion bookkeeping lives in the core; this is only the public record.
    last_heard: float = field(default=0.0)
    # Why this node holds the member out of routing and DNS ("flapping"), or "" (see
    # `_damping`); membership tracks a held member as any other.
    held: str = ""

    def copy(self) -> Member:
        return Member(
            name=self.name,
            addr=self.addr,
            dc=self.dc,
            roles=self.roles,
            weight=self.weight,
            tags=dict(self.tags),
            incarnation=self.incarnation,
            state=self.state,
            since=self.since,
            protocol=self.protocol,
            health=self.health,
            last_heard=self.last_heard,
            held=self.held,
        )


class SharedMember(Member):
    """A member record several views hold at once: the simulator gives every simulated core
    of a large cluster one `SharedView` after warm-up instead of a copy each (10,000 views of
    10,000 members would not fit). Read-only: a core that changes anything about the member
    first takes a copy of its own (`Membership._own`), so a change is never seen by the
    other views; an assignment that forgot to raises instead of leaking."""

    __slots__ = ()

    @classmethod
    def of(cls, m: Member) -> SharedMember:
        shared = cls.__new__(cls)
        for f in _FIELDS:
            object.__setattr__(shared, f, getattr(m, f))
        return shared

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"shared record of {self.name}: take a copy before changing {name}")


_FIELDS = tuple(Member.__dataclass_fields__)
