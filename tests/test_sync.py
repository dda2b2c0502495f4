"""Push-pull (`membership._sync`), without a network: the interval, the message, the merge
rules, the join's retries, reconnect and repair, calling the module's functions on
hand-built cores and handing streams from one core to another directly."""

from __future__ import annotations

import math
import random

from swimthor.config import MembershipConfig, profile, replace
from swimthor.keyring import unwrap_plain, wrap_plain
from swimthor.membership import (
    Alive,
    Dead,
    Event,
    Joined,
    JoinFailed,
    Member,
    Membership,
    MemberState,
    PushPull,
    State,
    Summary,
    decode_stream,
    encode_message,
    encode_packet,
)
from swimthor.membership import _sync as push_pull

LOCAL = profile("local")


def _core(name: str, port: int, config: MembershipConfig = LOCAL) -> Membership:
    return Membership(
        name=name, addr=("10.0.0.1", port), config=config, rng=random.Random(port), now=0.0
    )


def _member(core: Membership, name: str) -> Member:
    """The member `core` knows by `name` (the test has made sure it knows one)."""
    m = core.member(name)
    assert m is not None, name
    return m


def _hear_alive(core: Membership, name: str, port: int, now: float = 0.0) -> None:
    alive = Alive(name, 1, ("10.0.0.2", port), "dc1", (), 1.0, {})
    packet = wrap_plain("", encode_packet(name, [encode_message(alive)]))
    core.receive_datagram(packet, alive.addr, now)


def _hear(core: Membership, msg: Summary | Dead, now: float) -> None:
    sender = msg.origin if isinstance(msg, Dead) else msg.name
    packet = wrap_plain("", encode_packet(sender, [encode_message(msg)]))
    core.receive_datagram(packet, ("10.0.0.8", 1), now)


def _events(core: Membership) -> list[Event]:
    out = []
    while (e := core.next_event()) is not None:
        out.append(e)
    return out


def _state(name: str, state: State, inc: int = 1, port: int = 9) -> MemberState:
    return MemberState(name, ("10.0.0.3", port), "dc1", (), 1.0, {}, inc, state)


def test_the_interval_doubles_for_every_doubling_past_32_members() -> None:
    assert push_pull.push_pull_interval(0, 30.0) == 30.0
    assert push_pull.push_pull_interval(32, 30.0) == 30.0
    assert push_pull.push_pull_interval(33, 30.0) == 60.0
    assert push_pull.push_pull_interval(64, 30.0) == 60.0
    assert push_pull.push_pull_interval(65, 30.0) == 90.0
    assert push_pull.push_pull_interval(1000, 30.0) == 30.0 * (math.ceil(math.log2(1000 / 32)) + 1)


def test_a_push_pull_carries_every_member_and_the_freshest_summaries() -> None:
    core = _core("a", 1)
    for i in range(3):
        _hear_alive(core, f"m{i}", 100 + i)
    for i in range(200):
        _hear(core, Summary(f"s{i}", 1, b"\x00" * 8, 0, 1), float(i))
    msg = push_pull.push_pull_message(core, join=True, reply=False)
    assert msg.join and not msg.reply
    assert [s.name for s in msg.states] == ["a", "m0", "m1", "m2"]
    assert msg.states[0].state == State.ALIVE and msg.states[1].incarnation == 1
    assert msg.summaries[0].name == "a"  # our own first
    assert [s.name for s in msg.summaries[1:]] == [f"s{i}" for i in range(199, 199 - 128, -1)]


def test_merge_takes_remote_states_by_the_incarnation_rules() -> None:
    core = _core("a", 1)
    _hear_alive(core, "known", 100)
    _hear_alive(core, "tomb", 101)
    # "tomb" leaves: a tombstone.
    push_pull.merge(core, PushPull(False, (_state("tomb", State.LEFT),)), 1.0)
    assert _member(core, "tomb").state == State.LEFT
    assert push_pull.is_tombstone(core, "tomb") and not push_pull.is_tombstone(core, "known")
    _events(core)
    states = (
        _state("new", State.ALIVE, port=7),
        _state("known", State.DEAD, inc=1),  # a remote "dead": only a suspicion here
        _state("gone", State.LEFT),  # unknown and left: nothing to learn
        _state("tomb", State.DEAD, inc=2),  # a newer death of one we hold a tombstone for
    )
    push_pull.merge(core, PushPull(False, states, reply=True), 2.0)
    assert _member(core, "new").state == State.ALIVE
    assert _member(core, "known").state == State.SUSPECT
    assert core.member("gone") is None
    tomb = _member(core, "tomb")
    assert tomb.state == State.DEAD and tomb.incarnation == 2
    assert push_pull.alive_of_state(states[0]) == Alive(
        "new", 1, ("10.0.0.3", 7), "dc1", (), 1.0, {}, 1
    )


def test_only_a_joiners_own_record_is_news_to_gossip_on() -> None:
    def queued_after(msg: PushPull) -> int:
        core = _core("a", 1)
        core.datagrams_to_send(0.0)
        push_pull.merge(core, msg, 1.0)
        return len(core._broadcasts)

    states = (_state("joiner", State.ALIVE), _state("other", State.ALIVE, port=10))
    # A view summary is queued either way (the digest changed); the joiner's alive only when
    # it is the first state of a join request.
    assert queued_after(PushPull(True, states)) == queued_after(PushPull(False, states)) + 1
    assert queued_after(PushPull(True, states, reply=True)) == queued_after(PushPull(False, states))


def test_a_join_through_a_seed_and_its_early_sync() -> None:
    a, seed = _core("a", 1), _core("seed", 2)
    a.join([seed.local.addr, a.local.addr], 0.0)  # our own address is skipped
    (req,) = a.streams_to_open(0.0)
    assert req.addr == seed.local.addr
    reply = seed.handle_stream(req.payload, a.local.addr, 0.0)
    assert seed.stats["push_pulls"] == 1 and seed.member("a") is not None
    a.stream_response(req.id, reply, 0.0)
    assert a.member("seed") is not None
    assert [e for e in _events(a) if isinstance(e, Joined)] == [Joined(seed.local.addr, 2)]
    # One early sync a few seconds on, not a whole interval.
    assert 2.0 <= a._next_push_pull <= 4.0 and a._last_push_pull == -math.inf


def test_a_join_that_nobody_answers_is_retried_with_backoff() -> None:
    cfg = replace(LOCAL, join_retry_initial=1.0, join_retry_max=3.0)
    a = _core("a", 1, cfg)
    a.join([("10.0.0.9", 1), ("10.0.0.9", 2)], 0.0)
    seen = []
    now = 0.0
    for _ in range(4):
        reqs = a.streams_to_open(now)
        assert len(reqs) == 2
        a.stream_response(reqs[0].id, None, now)
        assert a._join is not None and a._join.retry_at is None  # one still outstanding
        a.stream_response(reqs[1].id, b"garbage", now)
        seen += [e for e in _events(a) if isinstance(e, JoinFailed)]
        assert a._join.retry_at == now + seen[-1].retry_in
        push_pull.retry_join(a, a._join.retry_at - 0.01)  # not yet
        assert a.streams_to_open(now) == []
        now = a._join.retry_at
        push_pull.retry_join(a, now)
    assert [(e.attempt, e.retry_in) for e in seen] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 3.0)]
    assert a.stats["push_pull_failures"] == 8
    assert a.stats["stream_rejected"] == 4  # the garbage replies


def test_an_answer_to_a_stream_we_never_opened_is_ignored() -> None:
    a = _core("a", 1)
    a.stream_response(12345, b"anything", 0.0)
    assert a.stats["push_pull_failures"] == 0 and a.stats["stream_rejected"] == 0


def test_reconnect_tries_a_declared_failure_not_a_departure() -> None:
    a = _core("a", 1)
    _hear_alive(a, "b", 100)
    _hear_alive(a, "c", 101)
    push_pull.reconnect(a, 1.0)
    assert a.streams_to_open(1.0) == []  # nobody failed
    _hear(a, Dead("c", 1, "c"), 1.0)
    assert _member(a, "c").state == State.LEFT
    push_pull.reconnect(a, 1.0)
    assert a.streams_to_open(1.0) == []  # left, not failed
    _hear(a, Dead("b", 1, "x"), 100.0)  # long after we last heard from b: believed
    assert _member(a, "b").state == State.DEAD
    # One live member (us) and one failed: the draw (failed / live) always passes.
    push_pull.reconnect(a, 100.0)
    (req,) = a.streams_to_open(100.0)
    assert req.addr == ("10.0.0.2", 100)
    assert a.stats["reconnects"] == 1
    msg = decode_stream(unwrap_plain("", req.payload), LOCAL.max_stream_size)
    assert isinstance(msg, PushPull) and not msg.join and not msg.reply
    # Once the tombstone is old, or while we leave, nobody is tried.
    push_pull.reconnect(a, 100.0 + LOCAL.tombstone_reap_time)
    assert a.streams_to_open(0.0) == []
    a.leave(101.0)
    push_pull.reconnect(a, 101.0)
    assert a.streams_to_open(101.0) == [] and a.stats["reconnects"] == 1


def test_repair_waits_for_the_settle_time_then_syncs_with_the_sender() -> None:
    cfg = replace(LOCAL, repair_settle=2.0, repair_interval=5.0)
    a = _core("a", 1, cfg)
    _hear_alive(a, "b", 100)
    a.streams_to_open(0.0)

    def ahead(seq: int) -> Summary:
        return Summary("b", seq, b"\x01" * 8, 0, 5)  # 5 live members: more than our 2

    push_pull.check_behind(a, ahead(1), 1.0)
    assert a.streams_to_open(1.0) == []
    push_pull.check_behind(a, ahead(2), 2.5)
    assert a.streams_to_open(2.5) == []
    push_pull.check_behind(a, ahead(3), 3.0)
    assert [r.addr for r in a.streams_to_open(3.0)] == [("10.0.0.2", 100)]
    assert a.stats["repair_syncs"] == 1
    # A new episode; a member that agrees with us ends it, so the next one starts afresh.
    push_pull.check_behind(a, ahead(4), 4.0)
    agrees = Summary("c", 1, bytes.fromhex(a.view_digest()), 0, 2)
    push_pull.check_behind(a, agrees, 4.5)
    push_pull.check_behind(a, ahead(5), 8.5)
    assert a.streams_to_open(8.5) == []  # settle counts from 8.5, not from 4.0
    push_pull.check_behind(a, ahead(6), 10.6)
    assert [r.addr for r in a.streams_to_open(10.6)] == [("10.0.0.2", 100)]
    # Fewer live members than ours never start one; nor does a repair_settle of 0.
    push_pull.check_behind(a, Summary("b", 7, b"\x02" * 8, 0, 1), 20.0)
    push_pull.check_behind(a, Summary("b", 8, b"\x02" * 8, 0, 1), 30.0)
    assert a.streams_to_open(30.0) == []
    off = _core("off", 2, replace(cfg, repair_settle=0.0))
    _hear_alive(off, "b", 100)
    for t in range(10):
        push_pull.check_behind(off, ahead(t), float(t))
    assert off.streams_to_open(10.0) == [] and off.stats["repair_syncs"] == 0
