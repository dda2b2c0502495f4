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
