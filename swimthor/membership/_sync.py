"""Push-pull: full-state sync over TCP, which repairs whatever gossip missed.

Gossip carries news; a push-pull carries a member's whole view (every member's state and
incarnation, and the freshest view summaries), and each side merges the other's. A member
opens one (memberlist's pushPull, serf's reconnect):

- to join: with every seed at once, retried with backoff until one answers;
- periodically: with one random live member every push-pull interval, which grows with the
  cluster (memberlist's pushPullScale), and once early after a join;
- to repair: with a member whose summaries keep saying it sees more live members than we do
  (`MembershipConfig.repair_settle`);
- to reconnect: now and then with a member we declared failed, so the two sides of a healed
  partition see each other again.

The merge takes each remote state by the usual incarnation rules, except that a remote "dead"
is only a suspicion here unless we hold a tombstone for it. These are steps of the core,
written as functions of it: `Membership` keeps the state (the join in progress, the sync
timers, the streams it has opened).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._events import Joined, JoinFailed
from ._member import Addr, Member, State
from ._messages import Alive, Dead, MemberState, PushPull, StreamMessage, Summary, Suspect

if TYPE_CHECKING:
    from ._core import Membership

_PUSH_PULL_SUMMARIES = 128


@dataclass(slots=True)
class Join:
    """A join in progress: push-pulls to every seed, again after `backoff` until one answers."""

    seeds: tuple[Addr, ...]
    attempt: int = 0
    outstanding: set[int] = field(default_factory=set)
    retry_at: float | None = None
    backoff: float = 0.0
    done: bool = False


def push_pull_interval(live: int, base: float) -> float:
    """The push-pull interval with `live` members."""
    # memberlist pushPullScale: double the interval for every doubling past 32 members.
    n = max(1, live)
    if n <= 32:
        return base
    return base * (math.ceil(math.log2(n) - math.log2(32)) + 1)


# ---------------------------------------------------------------- opening one


def join_attempt(core: Membership, now: float) -> None:
    join = core._join
    if join is None or join.done:
        return
    join.attempt += 1
    for seed in join.seeds:
        join.outstanding.add(open_push_pull(core, seed, join=True, kind="join", now=now))


def retry_join(core: Membership, now: float) -> None:
    """The next join attempt, when its backoff has run out."""
    join = core._join
    if join is not None and join.retry_at is not None and join.retry_at <= now:
        join.retry_at = None
        join_attempt(core, now)


def sync_when_due(core: Membership, now: float) -> None:
    """The periodic push-pull and the reconnect attempt, each when its timer is due."""
    if now >= core._next_push_pull:
        interval = core._push_pull_interval()
        due = core._last_push_pull + interval
        if now < due:
            # The cluster grew since this was scheduled: the interval is longer now.
            core._next_push_pull = due
        else:
            core._last_push_pull = now
            core._next_push_pull = now + interval
            periodic_push_pull(core, now)
    if now >= core._next_reconnect:
        core._next_reconnect = now + core.config.reconnect_interval
        reconnect(core, now)


def periodic_push_pull(core: Membership, now: float) -> None:
    if core._leaving:
        return
    pool = [m for m in core._members.values() if m.name != core.name and m.state.is_live]
    if not pool:
        return
    target = core._rng.choice(pool)
    open_push_pull(core, target.addr, join=False, kind="sync", now=now)


def reconnect(core: Membership, now: float) -> None:
    """Serf's reconnect: try a full sync with one member we declared failed (not one that
    left), with probability failed / live so the whole cluster makes about one attempt
    per failed member per interval. Nothing else talks to a member on the other side of
    a healed partition once the news of its failure has stopped spreading; the sync
    tells it, it refutes, and both sides see each other again."""
    live = core._live.count
    if core._leaving or len(core._members) == live:
        return
    failed = [
        m
        for m in core._members.values()
        if m.state == State.DEAD and now - m.since < core.config.tombstone_reap_time
    ]
    if not failed or core._rng.random() * max(1, live - 1) > len(failed):
        return
    target = core._rng.choice(failed)
    core.stats["reconnects"] += 1
    open_push_pull(core, target.addr, join=False, kind="reconnect", now=now)


def check_behind(core: Membership, msg: Summary, now: float) -> None:
    """Repair sync: sync with `msg`'s sender when others have seen more live members than
    we do for a while (see MembershipConfig.repair_settle)."""
    settle = core.config.repair_settle
    if settle <= 0 or core._leaving:
        return
    if msg.digest == core._live.digest:
        core._behind_since = None  # someone agrees with us: nothing is missing
        return
    if msg.live <= core._live.count:
        return
    if core._behind_since is None:
        core._behind_since = now
        return
    if now - core._behind_since < settle or now - core._last_repair < core.config.repair_interval:
        return
    m = core._members.get(msg.name)
    if m is None or not m.state.is_live:
        return
    core._last_repair = now
    core._behind_since = None
    core.stats["repair_syncs"] += 1
    open_push_pull(core, m.addr, join=False, kind="repair", now=now)


def open_push_pull(core: Membership, addr: Addr, *, join: bool, kind: str, now: float) -> int:
    """Queue a push-pull to `addr` (a `StreamRequest` for the driver); its stream id."""
    return core._open_stream(addr, kind, push_pull_message(core, join=join, reply=False), now)


def push_pull_message(core: Membership, *, join: bool, reply: bool) -> PushPull:
    # What we concluded alone while isolated is not ours to spread: those members go out
    # as alive, as we knew them before.
    alone = core._alone
    states = tuple(
        MemberState(
            m.name,
            m.addr,
            m.dc,
            m.roles,
            m.weight,
            m.tags,
            m.incarnation,
            State.ALIVE if m.name in alone else m.state,
            m.protocol,
        )
        for m in core._members.values()
    )
    summaries = [core._own_summary()]
    # The freshest ones only: a push-pull stays O(members), not O(members) summaries more.
    fresh = sorted(core._summaries.values(), key=lambda sv: sv[1], reverse=True)
    summaries.extend(sv for sv, _ in fresh[:_PUSH_PULL_SUMMARIES])
    return PushPull(join, states, tuple(summaries), reply=reply)


# ---------------------------------------------------------------- the other side's answer


def serve(core: Membership, msg: PushPull, now: float) -> PushPull | None:
    """Server side: merge a member's push-pull and answer with our own state (None: it is a
    reply, not a request)."""
    if msg.reply:
        return None
    core.stats["push_pulls"] += 1
    merge(core, msg, now)
    return push_pull_message(core, join=msg.join, reply=True)


def answered(
    core: Membership, stream_id: int, what: str, addr: Addr, msg: StreamMessage | None, now: float
) -> None:
    """Client side: the reply to our push-pull `stream_id` (None: the exchange failed)."""
    ok = isinstance(msg, PushPull) and msg.reply
    if ok:
        assert isinstance(msg, PushPull)
        merge(core, msg, now)
    else:
        core.stats["push_pull_failures"] += 1
    join = core._join
    if what == "join" and join is not None and stream_id in join.outstanding:
        join.outstanding.discard(stream_id)
        if ok and not join.done:
            join.done = True
            join.retry_at = None
            # Announce ourselves too, now that we know whom to tell: the seed's gossip
            # alone can miss a member (memberlist's setAlive does the same).
            core._broadcast_self_alive()
            # One early full sync with a random member a few seconds on: members that
            # joined in a crowd fill in the news that gossip's early, small retransmit
            # budget missed, without waiting a whole push-pull interval.
            early = now + core._rng.uniform(2.0, 4.0)
            if early < core._next_push_pull:
                core._next_push_pull = early
                core._last_push_pull = -math.inf  # due at `early`, whatever the size
            core._emit(Joined(addr, len(core._members)))
        elif not join.done and not join.outstanding:
            join.retry_at = now + join.backoff
            core._emit(JoinFailed(join.seeds, join.attempt, join.backoff))
            join.backoff = min(join.backoff * 2, core.config.join_retry_max)


# ---------------------------------------------------------------- merging a view


def merge(core: Membership, msg: PushPull, now: float) -> None:
    # A full-state exchange is not news to gossip on: the other side and its peers have
    # it. Only a joiner's record of itself (the first state of a join) is rebroadcast.
    # Rebroadcasting every member learned this way cost 16 N^2 transmissions to form a
    # cluster (simulator, N = 1000).
    core._live.batching = True  # one digest update (and summary) for the whole merge
    try:
        merge_states(core, msg, now)
    finally:
        core._live.batching = False
    core._update_digest()
    for summary in msg.summaries:
        core._on_summary(summary, now)


def merge_members(core: Membership, members: Iterable[Member], now: float) -> None:
    """Merge `members` as if a peer's push-pull had brought them (`merge_full_state`)."""
    states = tuple(
        MemberState(m.name, m.addr, m.dc, m.roles, m.weight, m.tags, m.incarnation, m.state)
        for m in members
    )
    merge(core, PushPull(join=False, states=states), now)


def merge_states(core: Membership, msg: PushPull, now: float) -> None:
    for i, s in enumerate(msg.states):
        if s.state == State.ALIVE:
            news = msg.join and i == 0 and not msg.reply
            core._apply_alive(alive_of_state(s), now, rebroadcast=news)
        elif s.state == State.LEFT:
            core._apply_dead(Dead(s.name, s.incarnation, s.name), now)
        elif s.state == State.DEAD and is_tombstone(core, s.name):
            core._apply_dead(Dead(s.name, s.incarnation, core.name), now)
        else:
            # memberlist: a remote "dead" is only a suspicion here, to be safe; and a
            # doubted one (as a reported death of a member we hear from): not passed on,
            # checked with the member itself, and if it refutes, that says nothing about it
            # (see `_suspicion.refuted`).
            core._apply_suspect(Suspect(s.name, s.incarnation, core.name), now, doubted=True)


def is_tombstone(core: Membership, name: str) -> bool:
    m = core._members.get(name)
    return m is not None and not m.state.is_live


def alive_of_state(s: MemberState) -> Alive:
    return Alive(s.name, s.incarnation, s.addr, s.dc, s.roles, s.weight, s.tags, s.protocol)
