"""What a member tells an operator about its view: the `status` and `members` replies.

`status_reply` is `Membership.status()`: this member (state, incarnation, health), how many
members it knows in each state and datacenter, whether the others' view summaries agree with
its view digest (convergence), every member with the health and load its last summary
reported, the round trips to other datacenters, and the core's counters. `member_json` is one
member as `members --format json` shows it. Both are plain JSON values; `StatusReply` and the
TypedDicts nested in it give the status reply's fixed shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from ._member import Addr, Member, State
from ._messages import PROTOCOL_VERSION, Summary
from ._stats import MembershipStats

if TYPE_CHECKING:
    from ._core import Membership

# How long a summary heard from a member counts as current for `status`.
_SUMMARY_FRESH_PERIODS = 3


class Convergence(TypedDict):
    """Whether the live members' last summaries carry our view digest: the same view."""

    agree: int
    disagree: int
    unknown: int
    members_agreeing: list[str]
    members_disagreeing: list[str]
    members_unknown: list[str]


class ClusterRow(TypedDict):
    """One member as this node knows it, with what its last summary said."""

    name: str
    dc: str
    state: str
    roles: list[str]
    health: int
    view: str  # "same", "differs" or "unknown"
    held: NotRequired[str]  # why we hold it out of routing and DNS ("flapping")
    load: NotRequired[dict[str, int]]  # ours, or from its summary when we heard one
    heard_s_ago: NotRequired[float]  # when its summary came (others only)


class StatusReply(TypedDict):
    """`Membership.status()`: the `status --format json` object (the agent adds its own
    sections to it)."""

    name: str
    addr: str
    dc: str
    state: str
    incarnation: int
    health: int
    members: int
    counts: dict[str, int]  # members by state label
    by_dc: dict[str, dict[str, int]]  # datacenter -> members by state label
    view_digest: str
    converged: Convergence
    cluster: list[ClusterRow]
    rtt_ms: dict[str, float]  # datacenter -> smoothed round trip
    protocol: int
    sealed: bool
    stats: MembershipStats


def fmt_addr(addr: Addr) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def member_json(m: Member, wall_offset: float = 0.0) -> dict[str, Any]:
    """A member as the `members --format json` object that scripts rely on."""
    return {
        "name": m.name,
        "addr": fmt_addr(m.addr),
        "dc": m.dc,
        "roles": list(m.roles),
        "weight": m.weight,
        "state": m.state.label,
        "incarnation": m.incarnation,
        "tags": dict(m.tags),
        "since": m.since + wall_offset,
        "held": m.held,
    }


def members_json(members: Iterable[Member], wall_offset: float = 0.0) -> list[dict[str, Any]]:
    """Every member as `members --format json` shows them."""
    return [member_json(m, wall_offset) for m in members]


def state_counts(
    members: Iterable[Member],
) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Members by state label, in all and per datacenter."""
    counts = {s.label: 0 for s in State}
    by_dc: dict[str, dict[str, int]] = {}
    for m in members:
        counts[m.state.label] += 1
        dc_counts = by_dc.setdefault(m.dc, {s.label: 0 for s in State})
        dc_counts[m.state.label] += 1
    return counts, by_dc


def convergence(
    members: Iterable[Member],
    own: str,
    summaries: Mapping[str, tuple[Summary, float]],
    digest: bytes,
    now: float,
    fresh: float,
) -> tuple[list[str], list[str], list[str]]:
    """The live members whose last summary (heard within `fresh` seconds) carries `digest`,
    those whose summary carries another, and those not heard from lately; `own` agrees."""
    agree: list[str] = []
    disagree: list[str] = []
    unknown: list[str] = []
    for m in members:
        if not m.state.is_live:
            continue
        if m.name == own:
            agree.append(m.name)
            continue
        heard = summaries.get(m.name)
        if heard is None or now - heard[1] > fresh:
            unknown.append(m.name)
        elif heard[0].digest == digest:
            agree.append(m.name)
        else:
            disagree.append(m.name)
    return agree, disagree, unknown


def cluster_table(
    members: Mapping[str, Member],
    summaries: Mapping[str, tuple[Summary, float]],
    now: float,
    agree: set[str],
    disagree: set[str],
    *,
    own: str,
    own_health: int,
    own_load: Iterable[tuple[str, int]],
) -> list[ClusterRow]:
    """Every member as this node knows it, with what its last summary said: health,
    whether its view matches ours, and its load report."""
    rows = []
    for name in sorted(members):
        m = members[name]
        heard = summaries.get(name)
        row: ClusterRow = {
            "name": name,
            "dc": m.dc,
            "state": m.state.label,
            "roles": list(m.roles),
            "health": m.health,
            "view": "same" if name in agree else "differs" if name in disagree else "unknown",
        }
        if m.held:
            row["held"] = m.held
        if name == own:
            row["health"] = own_health
            row["load"] = dict(own_load)
        elif heard is not None:
            row["health"] = heard[0].health
            row["load"] = dict(heard[0].load)
            row["heard_s_ago"] = round(now - heard[1], 1)
        rows.append(row)
    return rows


def status_reply(core: Membership, now: float) -> StatusReply:
    """`core.status(now)`: see the module docstring."""
    members = core._members
    counts, by_dc = state_counts(members.values())
    fresh = _SUMMARY_FRESH_PERIODS * max(core._push_pull_interval(), 1.0)
    digest = core._live.digest
    agree, disagree, unknown = convergence(
        members.values(), core.name, core._summaries, digest, now, fresh
    )
    me = members[core.name]
    health = core._awareness.score
    return {
        "name": core.name,
        "addr": fmt_addr(me.addr),
        "dc": core.dc,
        "state": me.state.label,
        "incarnation": me.incarnation,
        "health": health,
        "members": len(members),
        "counts": counts,
        "by_dc": by_dc,
        "view_digest": digest.hex(),
        "converged": {
            "agree": len(agree),
            "disagree": len(disagree),
            "unknown": len(unknown),
            "members_agreeing": sorted(agree),
            "members_disagreeing": sorted(disagree),
            "members_unknown": sorted(unknown),
        },
        "cluster": cluster_table(
            members,
            core._summaries,
            now,
            set(agree),
            set(disagree),
            own=core.name,
            own_health=health,
            own_load=core.local_load,
        ),
        "rtt_ms": {dc: round(rtt * 1000, 3) for dc, rtt in sorted(core._rtt.items())},
        "protocol": PROTOCOL_VERSION,
        "sealed": core.keyring is not None,
        "stats": core.stats.copy(),
    }
