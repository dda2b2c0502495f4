"""Probes in flight (`membership._probes`), without a network: each kind of ping's ack and
timeout, the ping-req relay, nacks, timeouts and round trips, calling the module's functions
on hand-built cores and reading what they would send."""

from __future__ import annotations

import random

import pytest
from corenet import CoreNet

from swimthor.config import MembershipConfig, profile, replace
from swimthor.keyring import unwrap_plain, wrap_plain
from swimthor.membership import (
    Ack,
    Addr,
    Alive,
    Member,
    MemberFailed,
    Membership,
    Message,
    Nack,
    NameConflict,
    Ping,
    PingReq,
    State,
    Summary,
    Suspect,
    decode_packet,
    encode_message,
    encode_packet,
)
from swimthor.membership import _probes as probes

LOCAL = replace(profile("local"), suspect_check=False)


def _core(name: str = "a", config: MembershipConfig = LOCAL) -> Membership:
    return Membership(name=name, addr=("10.0.0.1", 1), config=config, rng=random.Random(1), now=0.0)


def _member(core: Membership, name: str) -> Member:
    """The member `core` knows by `name` (the test has made sure it knows one)."""
    m = core.member(name)
    assert m is not None, name
    return m


def _hear(core: Membership, sender: str, msg: Message, addr: Addr, now: float = 0.0) -> None:
    packet = wrap_plain("", encode_packet(sender, [encode_message(msg)]))
    core.receive_datagram(packet, addr, now)


def _add(core: Membership, *names: str, dc: str = "dc1", health: int = 0) -> dict[str, Member]:
    for name in names:
        addr = ("10.0.0.2", 100 + int(name[1:]))
        _hear(core, name, Alive(name, 1, addr, dc, (), 1.0, {}, health=health), addr)
    core.datagrams_to_send(0.0)
    return {n: _member(core, n) for n in names}


def _sent(core: Membership, now: float = 0.0) -> list[tuple[object, tuple[str, int]]]:
    return [
        (m, addr)
        for data, addr in core.datagrams_to_send(now)
        for m in decode_packet(unwrap_plain("", data)).messages
    ]


def _pings(core: Membership, now: float = 0.0) -> list[tuple[object, tuple[str, int]]]:
    """What `core` sends of pings, acks, nacks and ping-reqs (not the gossip riding along)."""
    return [(m, a) for m, a in _sent(core, now) if isinstance(m, Ping | Ack | Nack | PingReq)]


def test_every_kind_has_its_ack_and_timeout_and_only_direct_probes_time_a_round_trip() -> None:
    kinds = (probes.PROBE, probes.RELAY, probes.CHECK, probes.FINAL, probes.CLAIM)
    assert set(probes.KINDS) == set(kinds)
    assert {k for k in kinds if probes.KINDS[k].measures_rtt} == {probes.PROBE, probes.CHECK}


def test_a_probe_pings_its_target_and_carries_a_suspicion_to_a_suspect() -> None:
    a = _core(config=replace(LOCAL, probe_schedule="random"))
    members = _add(a, "m1")
    probes.probe(a, 1.0)
    (seq,) = a._pending
    p = a._pending[seq]
    assert (p.kind, p.target, p.sent) == (probes.PROBE, "m1", 1.0)
    timeout = probes.probe_timeout(a, members["m1"])
    assert p.deadline == 1.0 + timeout and p.final == 1.0 + 2 * timeout
    assert a._probing == seq and a.stats["pings_sent"] == 1
    assert [type(m) for m, _ in _pings(a, 1.0)] == [Ping]
    assert a._next_probe == 1.0 + LOCAL.probe_interval
    # One probe at a time on the random schedule; a suspect's probe carries the suspicion.
    probes.probe(a, 2.0)
    assert len(a._pending) == 1
    _hear(a, "m9", Suspect("m1", 1, "m9"), ("10.0.0.2", 109), 2.0)
    a._pending.clear()
    a._probing = None
    a.datagrams_to_send(2.0)
    probes.probe(a, 3.0)
    sent = [m for m, _ in _sent(a, 3.0)]
    assert Suspect("m1", 1, "a") in sent and any(isinstance(m, Ping) for m in sent)


def test_a_probe_without_an_ack_asks_relays_then_suspects_the_target() -> None:
    a = _core(config=replace(LOCAL, indirect_checks=2))
    _add(a, "m1", "m2", "m3", "m4")
    p = probes.Pending(kind=probes.PROBE, target="m1", target_addr=("10.0.0.2", 101),
                       sent=0.0, deadline=0.5, final=1.0, incarnation=1)  # fmt: skip
    a._pending[7] = p
    assert not probes.is_due(p, 0.4) and probes.is_due(p, 0.5)
    probes.timed_out(a, 7, 0.5)
    reqs = [(m, addr) for m, addr in _pings(a, 0.5) if isinstance(m, PingReq)]
    assert len(reqs) == 2 and all(m.target == "m1" and m.nack for m, _ in reqs)
    assert {addr for _, addr in reqs} <= {("10.0.0.2", 100 + i) for i in (2, 3, 4)}
    assert p.indirect and p.expected_nacks == 2 and 7 in a._pending
    assert not probes.is_due(p, 0.9) and probes.is_due(p, 1.0)
    # One relay nacks: the other's missing nack counts against our own health.
    probes.on_nack(a, Nack(7, "m2"), ("10.0.0.2", 102), 0.8)
    assert p.nacks == 1 and a.stats["nacks_received"] == 1
    probes.timed_out(a, 7, 1.0)
    assert 7 not in a._pending and a._probing is None
    assert a.stats["probes_failed"] == 1 and a.stats["suspicions"] == 1
    assert a.health_score == 1
    assert _member(a, "m1").state == State.SUSPECT


def _pending(kind: str) -> probes.Pending:
    return probes.Pending(kind, "m1", ("10.0.0.2", 101), sent=1.0, deadline=2.0)


def test_an_ack_ends_a_probe_and_times_the_round_trip_only_when_direct() -> None:
    a = _core()
    _add(a, "m1", dc="dc2")
    a._awareness.apply_delta(2)
    for seq, via, rtt in ((1, ("10.0.0.2", 101), 0.2), (2, ("10.0.0.9", 9), None)):
        a._pending[seq] = _pending(probes.PROBE)
        probes.on_ack(a, Ack(seq, "m1"), via, 1.2)
        assert seq not in a._pending
        assert a._rtt.get("dc2") == (pytest.approx(rtt) if rtt else pytest.approx(0.2))
    assert a.stats["acks_received"] == 2 and a.health_score == 0
    # An ack from someone else, or for no ping of ours, is ignored.
    a._pending[3] = _pending(probes.CHECK)
    probes.on_ack(a, Ack(3, "m2"), ("10.0.0.2", 101), 1.3)
    probes.on_ack(a, Ack(4, "m1"), ("10.0.0.2", 101), 1.3)
    assert 3 in a._pending and a.stats["acks_received"] == 2


def test_pings_are_answered_with_an_ack_and_a_summary_unless_misdirected() -> None:
    a = _core()
    probes.on_ping(a, Ping(5, "a", "x", ("10.0.0.9", 9), "dc1"), ("10.0.0.9", 9), 0.0)
    sent = _sent(a)
    assert sent[0] == (Ack(5, "a"), ("10.0.0.9", 9))
    assert isinstance(sent[1][0], Summary) and sent[1][0].name == "a"
    probes.on_ping(a, Ping(6, "old", "x", ("10.0.0.9", 9), "dc1"), ("10.0.0.9", 9), 0.0)
    assert _sent(a) == [] and a.stats["misdirected"] == 1


def test_a_ping_req_is_relayed_and_answered_with_an_ack_or_a_nack() -> None:
    a = _core()
    _add(a, "m1")
    requester = ("10.0.0.3", 3)
    # About ourselves: an ack straight back.
    probes.on_ping_req(a, PingReq(40, "a", ("10.0.0.1", 1), "r", requester, True), requester, 0)
    assert _pings(a) == [(Ack(40, "a"), requester)]
    for nack in (True, False):
        req = PingReq(41, "m1", ("10.0.0.2", 101), "r", requester, nack)
        probes.on_ping_req(a, req, requester, 0.0)
        ((seq, p),) = a._pending.items()
        assert p.kind == probes.RELAY and p.reply_to == requester and p.reply_seq == 41
        assert p.deadline == pytest.approx(0.8 * probes.probe_timeout(a, _member(a, "m1")))
        ((ping, to),) = _pings(a)
        assert isinstance(ping, Ping) and ping.seq == seq and to == ("10.0.0.2", 101)
        probes.timed_out(a, seq, p.deadline)
        assert _pings(a) == ([(Nack(41, "a"), requester)] if nack else [])
    # The target answers us: its ack goes back under the requester's sequence number.
    probes.on_ping_req(a, PingReq(42, "m1", ("10.0.0.2", 101), "r", requester, True), requester, 0)
    ((seq, _),) = a._pending.items()
    a.datagrams_to_send(0.0)
    probes.on_ack(a, Ack(seq, "m1"), ("10.0.0.2", 101), 0.1)
    assert _pings(a) == [(Ack(42, "m1"), requester)]
    assert "dc1" not in a._rtt  # a relayed ping is not our round trip


def test_timeouts_stretch_with_our_health_the_targets_and_the_remote_round_trip() -> None:
    cfg = replace(LOCAL, probe_timeout=0.5, remote_timeout_rtt_mult=3.0)
    a = _core(config=cfg)
    near = _add(a, "m1")["m1"]
    slow = _add(a, "m2", health=2)["m2"]
    far = _add(a, "m3", dc="dc2")["m3"]
    assert probes.probe_timeout(a, None) == 0.5
    assert probes.probe_timeout(a, near) == 0.5
    assert probes.probe_timeout(a, slow) == 0.5 * 3
    assert probes.probe_timeout(a, far) == 0.5  # nothing measured yet
    probes.measure_rtt(a, "m3", 1.0)
    assert probes.probe_timeout(a, far) == 3.0
    probes.measure_rtt(a, "m3", 2.0)
    assert a._rtt["dc2"] == pytest.approx(1.0 + 0.2 * (2.0 - 1.0))  # smoothed
    probes.measure_rtt(a, "m3", -1.0)
    probes.measure_rtt(a, "nobody", 5.0)
    assert a._rtt == {"dc2": pytest.approx(1.2)}
    a._awareness.apply_delta(1)
    assert probes.probe_timeout(a, near) == 1.0


def test_a_suspect_check_asks_once_per_incarnation_and_confirms_on_silence() -> None:
    a = _core()
    m1 = _add(a, "m1", "m2", "m3")["m1"]
    _hear(a, "m2", Suspect("m1", 1, "m2"), ("10.0.0.2", 102), 0.0)
    a.datagrams_to_send(0.0)
    m1 = _member(a, "m1")
    probes.suspect_check(a, m1, 0.0)
    probes.suspect_check(a, m1, 0.0)  # once per incarnation
    assert a.stats["suspect_checks"] == 1
    ((seq, p),) = a._pending.items()
    assert p.kind == probes.CHECK
    sent = [m for m, _ in _sent(a)]
    assert Suspect("m1", 1, "a") in sent
    probes.timed_out(a, seq, p.deadline)
    assert a.suspicions()["m1"].confirmations == 1  # our own, independent one


def test_a_final_check_holds_the_declaration_and_an_answer_is_noted() -> None:
    a = _core()
    _add(a, "m1", "m2", "m3")
    _hear(a, "m2", Suspect("m1", 1, "m2"), ("10.0.0.2", 102), 0.0)
    a.datagrams_to_send(0.0)
    st = a._suspects["m1"]
    probes.final_check(a, st, _member(a, "m1"), 5.0)
    assert st.hold == 5.0 + max(probes.probe_timeout(a, _member(a, "m1")), LOCAL.probe_interval)
    assert st.final_tries == 1 and a.stats["final_checks"] == 1
    ((seq, p),) = a._pending.items()
    assert p.kind == probes.FINAL and p.deadline == st.hold
    probes.on_ack(a, Ack(seq, "m1"), ("10.0.0.2", 101), 5.1)
    assert st.answered and not a._pending


def test_a_claim_answered_at_the_old_address_is_a_conflict() -> None:
    a = _core()
    old = _add(a, "m1")["m1"]
    newer = Alive("m1", 2, ("10.0.0.7", 7), "dc1", (), 1.0, {})
    probes.verify_claim(a, newer, old, 0.0)
    probes.verify_claim(a, newer, old, 0.0)  # one question at a time
    ((seq, p),) = a._pending.items()
    assert p.kind == probes.CLAIM and p.target_addr == old.addr and a._claims == {"m1": seq}
    ((ping, to),) = _pings(a)
    assert isinstance(ping, Ping) and to == old.addr
    a._events.clear()
    probes.on_ack(a, Ack(seq, "m1"), old.addr, 0.1)
    assert a.stats["conflicts"] == 1 and not a._claims
    (event,) = a._events
    assert isinstance(event, NameConflict) and event.other == ("10.0.0.7", 7)
    assert _member(a, "m1").addr == old.addr  # never merged


def test_a_claim_nobody_answers_at_the_old_address_is_a_restart() -> None:
    a = _core()
    old = _add(a, "m1")["m1"]
    newer = Alive("m1", 2, ("10.0.0.7", 7), "dc1", (), 1.0, {})
    probes.verify_claim(a, newer, old, 0.0)
    ((seq, p),) = a._pending.items()
    probes.timed_out(a, seq, p.deadline)
    moved = _member(a, "m1")
    assert moved.addr == ("10.0.0.7", 7) and moved.incarnation == 2 and not a._claims


def test_random_members_are_distinct_eligible_and_at_most_k() -> None:
    a = _core()
    _add(a, *(f"m{i}" for i in range(1, 60)))
    for k in (1, 3, 10):
        chosen = probes.random_members(a, k, lambda m: m.name != "a" and m.name != "m5")
        names = [m.name for m in chosen]
        assert len(names) == k == len(set(names)) and "a" not in names and "m5" not in names
    few = probes.random_members(a, 5, lambda m: m.name in ("m1", "m2"))
    assert sorted(m.name for m in few) == ["m1", "m2"]
    assert probes.random_members(a, 3, lambda m: False) == []


# ---------------------------------------------------------------- (moved from test_core.py)


_NEXT_PORT = [40000]


def _packet(sender: str, *msgs: Message) -> bytes:
    return wrap_plain("", encode_packet(sender, [encode_message(m) for m in msgs]))


def _messages(data: bytes) -> list[Message]:
    return list(decode_packet(unwrap_plain("", data)).messages)


def _with_members(core: Membership, *names: str, health: int = 0) -> dict[str, tuple[str, int]]:
    addrs = {}
    for name in names:
        _NEXT_PORT[0] += 1
        addr = ("10.0.0.3", _NEXT_PORT[0])
        alive = Alive(name, 1, addr, "dc1", (), 1.0, {}, health=health)
        core.receive_datagram(_packet(name, alive), addr, 0.0)
        addrs[name] = addr
    core.datagrams_to_send(0.0)
    return addrs


def test_slow_member_announces_its_health_and_others_wait_longer() -> None:
    lan = profile("lan")
    net = CoreNet(latency=0.0005)
    cores = net.cluster(6, lan)
    slow = cores[5]
    # Everything sent to the slow member arrives a second late: its own probes fail for
    # want of acks and nacks, so its health score rises and it says so.
    for c in cores[:5]:
        net.link_latency[(c.local.addr, slow.local.addr)] = 1.0
    net.run(6.0)
    assert slow.health_score >= lan.health_announce_score
    assert slow.local.health >= lan.health_announce_score
    for c in cores[:5]:
        seen = c.member("n5")
        assert seen is not None and seen.health == slow.local.health
        assert probes.probe_timeout(c, seen) == pytest.approx(
            lan.probe_timeout * (1 + c.health_score) * (1 + min(seen.health, 3))
        )
    # A suspicion of it now runs (1 + health) times the usual minimum (here 3.5 s), and more
    # if it refuted one recently, up to suspicion_patience_max times.
    a = cores[0]
    a.receive_datagram(
        _packet("n1", Suspect("n5", _member(a, "n5").incarnation, "n1")),
        cores[1].local.addr,
        net.now,
    )
    st = a.suspicions().get("n5")
    assert st is not None
    refuted = min(a._refuted.get("n5", (0, 0.0))[0], 2)
    scale = min(1 + min(slow.local.health, 3) + refuted, lan.suspicion_patience_max)
    assert st.min_timeout == pytest.approx(lan.suspicion_min_floor * scale)
    # It said so because answers to its probes came, late: it hears, slowly.
    assert slow.stats["late_answers"] > 0
    # Healed, it says it is healthy again after the dwell time.
    net.link_latency.clear()
    net.run(lan.health_dwell + 10.0)
    assert slow.local.health == 0
    assert all(_member(c, "n5").health == 0 for c in cores[:5])
    assert not any(isinstance(e, MemberFailed) for ev in net.events.values() for e in ev)


def test_relays_that_said_they_are_slow_are_asked_last() -> None:
    a = _core("a", replace(profile("local"), indirect_checks=2))
    slow = _with_members(a, "s1", "s2", "s3", health=2)
    fine = _with_members(a, "f1", "f2")
    target = _with_members(a, "target")["target"]
    for _ in range(10):
        p = probes.Pending(
            kind=probes.PROBE, target="target", target_addr=target, sent=0.0, deadline=0.1
        )
        probes.start_indirect(a, 99, p, 0.1)
        relays = {addr for _, addr in a.datagrams_to_send(0.1)}
        assert relays == set(fine.values())
    # Too few healthy ones: the slow ones make up the number.
    p = probes.Pending(
        kind=probes.PROBE, target="target", target_addr=target, sent=0.0, deadline=0.1
    )
    a.config = replace(a.config, indirect_checks=3)
    probes.start_indirect(a, 100, p, 0.1)
    relays = {addr for _, addr in a.datagrams_to_send(0.1)}
    assert set(fine.values()) < relays and len(relays & set(slow.values())) == 1


@pytest.mark.parametrize("schedule", ["shared", "random"])
def test_a_probe_in_flight_blocks_the_next_only_on_the_random_schedule(schedule: str) -> None:
    a = _core("a", replace(profile("lan"), probe_schedule=schedule))
    _with_members(a, *(f"m{i}" for i in range(8)))
    a._probing = 12345  # an earlier probe (of a slow member, say) is still in flight
    probes.probe(a, 10.0)
    pinged = [m for d, _ in a.datagrams_to_send(10.0) for m in _messages(d) if isinstance(m, Ping)]
    assert len(pinged) == (1 if schedule == "shared" else 0)
