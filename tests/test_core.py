"""The SWIM core stepped by hand: no sockets, no trio, virtual time only.

Rules: every test builds its cores through `CoreNet` (or two cores joined directly), drives
time explicitly and asserts on states, events and counters, never on wall-clock time.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from corenet import CoreNet, keyring

from swimthor.config import MembershipConfig, profile, replace
from swimthor.keyring import Keyring, unwrap_plain, wrap_plain
from swimthor.membership import (
    Ack,
    Addr,
    Alive,
    JoinFailed,
    Member,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    Membership,
    MemberSuspected,
    MemberUpdated,
    Nack,
    NameConflict,
    Ping,
    PingReq,
    State,
    StreamRequest,
    Summary,
    Suspect,
    decode_packet,
    encode_message,
    encode_packet,
    expected_confirmations,
    remaining_suspicion_time,
    suspicion_timeouts,
)

LOCAL = profile("local")


def known(core: Membership, name: str) -> Member:
    """The member `core` knows by that name (the test fails if it knows none)."""
    m = core.member(name)
    assert m is not None, f"{core.name} knows no {name}"
    return m


def _msgs(data: bytes, label: str = "") -> list[object]:
    return list(decode_packet(unwrap_plain(label, data)).messages)


def _core(name: str, port: int, config: MembershipConfig = LOCAL, **kw: Any) -> Membership:
    return Membership(
        name=name,
        addr=("10.0.0.1", port),
        config=config,
        rng=random.Random(port),
        now=0.0,
        **kw,
    )


def _plain(sender: str, *msgs: object) -> bytes:
    return wrap_plain("", encode_packet(sender, [encode_message(m) for m in msgs]))  # type: ignore[arg-type]


# ---------------------------------------------------------------- ping / ack / ping-req


def test_ping_is_acked_and_misdirected_ping_is_ignored() -> None:
    b = _core("b", 2)
    b.receive_datagram(_plain("a", Ping(7, "b", "a", ("10.0.0.1", 1), "dc1")), ("10.0.0.1", 1), 0.0)
    out = b.datagrams_to_send(0.0)
    assert len(out) == 1 and out[0][1] == ("10.0.0.1", 1)
    assert Ack(7, "b") in _msgs(out[0][0])
    # A ping meant for another name (the member that used to live here) gets no answer.
    b.receive_datagram(
        _plain("a", Ping(8, "zz", "a", ("10.0.0.1", 1), "dc1")), ("10.0.0.1", 1), 0.1
    )
    assert b.datagrams_to_send(0.1) == []
    assert b.stats["misdirected"] == 1


def test_probe_acked_directly_raises_no_suspicion() -> None:
    net = CoreNet()
    a, b = net.cluster(2)
    net.run(5.0)
    assert a.stats["acks_received"] > 0 and b.stats["acks_received"] > 0
    assert a.stats["ping_reqs_sent"] == 0
    assert net.state(a, "n1") == State.ALIVE
    assert a.stats["suspicions"] == 0


def test_ping_req_relays_around_a_cut_link() -> None:
    net = CoreNet()
    a, b, _c = net.cluster(3)
    net.cut_link(a, b)
    net.run(10.0)
    # a cannot reach b directly, but c relays every probe: nobody is suspected for long.
    assert a.stats["ping_reqs_sent"] > 0
    assert net.state(a, "n1") == State.ALIVE
    assert net.state(b, "n0") == State.ALIVE
    assert not any(isinstance(e, MemberFailed) for ev in net.events.values() for e in ev)


def test_relay_answers_with_nack_when_target_is_silent() -> None:
    relay = _core("r", 3)
    requester = ("10.0.0.1", 1)
    relay.receive_datagram(
        _plain("a", PingReq(41, "t", ("10.0.0.1", 9), "a", requester, True)), requester, 0.0
    )
    sent = relay.datagrams_to_send(0.0)
    assert [addr for _, addr in sent] == [("10.0.0.1", 9)]
    ping = next(m for m in _msgs(sent[0][0]) if isinstance(m, Ping))
    assert ping.target == "t"
    t = relay.get_timer()
    assert t is not None
    relay.handle_timer(LOCAL.probe_timeout)
    out = relay.datagrams_to_send(LOCAL.probe_timeout)
    assert any(Nack(41, "r") in _msgs(d) for d, addr in out if addr == requester)


def test_relay_forwards_ack_under_requesters_sequence() -> None:
    relay = _core("r", 3)
    requester = ("10.0.0.1", 1)
    relay.receive_datagram(
        _plain("a", PingReq(41, "t", ("10.0.0.1", 9), "a", requester, True)), requester, 0.0
    )
    ping = next(m for d, _ in relay.datagrams_to_send(0.0) for m in _msgs(d) if isinstance(m, Ping))
    relay.receive_datagram(_plain("t", Ack(ping.seq, "t")), ("10.0.0.1", 9), 0.01)
    out = relay.datagrams_to_send(0.01)
    assert any(Ack(41, "t") in _msgs(d) for d, addr in out if addr == requester)


# ---------------------------------------------------------------- suspicion, refutation, failure


def test_crash_is_suspected_then_declared_dead_everywhere() -> None:
    net = CoreNet()
    cores = net.cluster(5)
    victim = cores[3]
    net.crash(victim)
    survivors = [c for c in cores if c is not victim]
    took = net.run_until(lambda: all(net.state(c, "n3") == State.DEAD for c in survivors), 10)
    assert took < 5.0
    for c in survivors:
        kinds = [type(e) for e in net.events[c.name] if getattr(e, "member", None)]
        assert MemberFailed in kinds
    failed = [e for e in net.events["n0"] if isinstance(e, MemberFailed)]
    assert failed[0].member.name == "n3"


def test_suspect_refutes_and_stays_alive() -> None:
    net = CoreNet()
    cores = net.cluster(4)
    a, b = cores[0], cores[1]
    before = b.local.incarnation
    # a alone accuses b; b hears it (gossip or the buddy probe) and refutes.
    for c in cores:
        c.receive_datagram(_plain("n0", Suspect("n1", before, "n0")), a.local.addr, net.now)
    net.run(3.0)
    assert b.local.incarnation > before
    assert b.stats["refutations"] >= 1
    assert all(net.state(c, "n1") == State.ALIVE for c in cores)
    assert any(isinstance(e, MemberRecovered) for e in net.events["n2"])
    assert not any(isinstance(e, MemberFailed) for ev in net.events.values() for e in ev)


def test_buddy_probe_of_suspect_carries_the_suspicion() -> None:
    net = CoreNet()
    a, b, c = net.cluster(3)
    net.run(0.5)
    net.sent.clear()
    a.receive_datagram(_plain("n2", Suspect("n1", 0, "n2")), c.local.addr, net.now)
    net.run(2.0)
    to_b = [d for src, dst, d in net.sent if src == a.local.addr and dst == b.local.addr]
    assert any(isinstance(m, Suspect) and m.name == "n1" for d in to_b for m in _msgs(d))


def test_suspicion_timeout_shrinks_with_confirmations() -> None:
    cfg = replace(LOCAL, suspect_check=False, suspicion_mult=4.0)
    n = 10
    core = _core("me", 1, cfg)
    for i in range(n - 1):
        alive = Alive(f"m{i}", 1, ("10.0.0.1", 100 + i), "dc1", (), 1.0, {})
        core.receive_datagram(_plain(f"m{i}", alive), ("10.0.0.1", 100 + i), 0.0)
    core.datagrams_to_send(0.0)
    lo, hi = suspicion_timeouts(
        n, cfg.suspicion_mult, cfg.suspicion_max_timeout_mult, cfg.probe_interval
    )
    k = expected_confirmations(n, cfg.suspicion_mult)
    assert k == 2
    core.receive_datagram(_plain("m1", Suspect("m0", 1, "m1")), ("10.0.0.1", 101), 0.0)
    susp = core.suspicions()["m0"]
    assert susp.deadline == pytest.approx(remaining_suspicion_time(0, k, 0.0, lo, hi), abs=1e-3)
    assert susp.deadline == pytest.approx(hi)
    core.receive_datagram(_plain("m2", Suspect("m0", 1, "m2")), ("10.0.0.1", 102), 0.1)
    assert susp.deadline == pytest.approx(remaining_suspicion_time(1, k, 0.0, lo, hi), abs=1e-3)
    assert lo < susp.deadline < hi
    # the same confirmer again counts once
    core.receive_datagram(_plain("m2", Suspect("m0", 1, "m2")), ("10.0.0.1", 102), 0.2)
    assert susp.confirmations == 1
    core.receive_datagram(_plain("m3", Suspect("m0", 1, "m3")), ("10.0.0.1", 103), 0.3)
    assert susp.deadline == pytest.approx(lo)
    # it fires at the deadline, not before
    core.handle_timer(lo - 0.01)
    assert known(core, "m0").state == State.SUSPECT
    core.handle_timer(lo)
    assert known(core, "m0").state == State.DEAD


def test_suspect_check_sends_an_independent_confirmation() -> None:
    net = CoreNet()
    cores = net.cluster(5)
    net.crash(cores[4])
    net.run(3.0)
    confirmations = sum(c.stats["confirmations"] for c in cores[:4])
    checks = sum(c.stats["suspect_checks"] for c in cores[:4])
    assert checks >= 2
    assert confirmations >= 2


def test_health_score_rises_when_we_are_the_slow_one_and_falls_after() -> None:
    net = CoreNet()
    cores = net.cluster(4)
    a = cores[0]
    # a's outbound traffic is lost: its probes fail and no relay's nack reaches... its own
    # requests never leave, so it expects nacks that never come.
    for c in cores[1:]:
        net.cut.add((a.local.addr, c.local.addr))
    net.run(2.0)
    assert a.health_score >= 2
    net.heal()
    net.run(20.0)
    assert a.health_score == 0


# ---------------------------------------------------------------- dissemination


def test_updates_spread_and_stop_after_retransmit_limit() -> None:
    net = CoreNet()
    cores = net.cluster(6)
    net.run(5.0)
    assert all(len(c._broadcasts) == 0 for c in cores)
    cores[2].update_metadata(net.now, tags={"zone": "b"})
    net.run(2.0)
    assert all(known(c, "n2").tags == {"zone": "b"} for c in cores)
    assert any(isinstance(e, MemberUpdated) and e.member.name == "n2" for e in net.events["n0"])
    net.run(5.0)
    assert all(len(c._broadcasts) == 0 for c in cores)


def test_metadata_bounds_are_enforced() -> None:
    core = _core("a", 1)
    with pytest.raises(ValueError):
        core.update_metadata(0.0, tags={f"k{i}": "v" for i in range(100)})
    with pytest.raises(ValueError):
        core.update_metadata(0.0, weight=-1)
    with pytest.raises(ValueError):
        core.update_metadata(0.0, tags={"k": "x" * 1000})


def test_packets_respect_the_size_limit() -> None:
    cfg = replace(LOCAL, max_packet_size=600)
    net = CoreNet()
    cores = [net.add(f"n{i}", cfg, tags={"t": "x" * 100}) for i in range(12)]
    for c in cores[1:]:
        c.join([cores[0].local.addr], net.now)
    net.run(5.0)
    assert all(len(d) <= 600 for _, _, d in net.sent)
    assert all(c.num_live() == 12 for c in cores)


# ---------------------------------------------------------------- leave, restart, conflicts


def test_leave_is_left_not_dead() -> None:
    net = CoreNet()
    cores = net.cluster(4)
    cores[1].leave(net.now)
    net.run_until(lambda: cores[1].leave_complete(net.now), 2.0)
    net.crash(cores[1])
    net.run(10.0)
    for c in (cores[0], cores[2], cores[3]):
        assert net.state(c, "n1") == State.LEFT
        assert any(isinstance(e, MemberLeft) for e in net.events[c.name])
        assert not any(isinstance(e, MemberFailed) for e in net.events[c.name])


def test_restart_at_same_address_takes_its_place_back() -> None:
    net = CoreNet()
    cores = net.cluster(4)
    addr = cores[2].local.addr
    net.crash(cores[2])
    net.run_until(lambda: net.state(cores[0], "n2") == State.DEAD, 10)
    old_inc = known(cores[0], "n2").incarnation
    back = net.add("n2", addr=addr)
    back.join([cores[0].local.addr], net.now)
    net.run_until(
        lambda: all(net.state(c, "n2") == State.ALIVE for c in (cores[0], cores[1], cores[3])), 5
    )
    assert back.local.incarnation > old_inc
    assert any(isinstance(e, MemberRecovered) for e in net.events["n0"])


def test_restart_at_new_address_before_detection() -> None:
    net = CoreNet()
    cores = net.cluster(4)
    net.crash(cores[2])
    new = net.add("n2")  # new address, while the others still think n2 is alive
    new.join([cores[0].local.addr], net.now)
    net.run_until(
        lambda: all(
            known(c, "n2").addr == new.local.addr and net.state(c, "n2") == State.ALIVE
            for c in (cores[0], cores[1], cores[3])
        ),
        10,
    )
    assert new.conflict is None


def test_restart_at_new_address_after_death() -> None:
    net = CoreNet()
    cores = net.cluster(4)
    net.crash(cores[2])
    net.run_until(lambda: net.state(cores[0], "n2") == State.DEAD, 10)
    new = net.add("n2")
    new.join([cores[0].local.addr], net.now)
    net.run_until(
        lambda: all(
            known(c, "n2").addr == new.local.addr and net.state(c, "n2") == State.ALIVE
            for c in (cores[0], cores[1], cores[3])
        ),
        5,
    )


def test_two_live_nodes_with_one_name_are_reported_not_merged() -> None:
    net = CoreNet()
    cores = net.cluster(3)
    original = cores[1].local.addr
    impostor = net.add("n1")
    impostor.join([cores[0].local.addr], net.now)
    net.run(5.0)
    assert impostor.conflict is not None
    assert impostor.conflict.other == original
    assert any(isinstance(e, NameConflict) for e in net.events["n1"])
    # Nobody switched to the impostor's address.
    assert known(cores[0], "n1").addr == original
    assert known(cores[2], "n1").addr == original
    assert net.state(cores[0], "n1") == State.ALIVE


def test_join_retries_with_backoff_until_a_seed_answers() -> None:
    net = CoreNet()
    a = net.add("a")
    b = net.add("b")
    dead_seed = ("10.0.0.1", 1)
    b.join([dead_seed, a.local.addr], net.now)
    net.crash(a)
    net.run(3.0)
    fails = [e for e in net.events["b"] if isinstance(e, JoinFailed)]
    assert len(fails) >= 2
    assert fails[1].retry_in > fails[0].retry_in
    net.down.discard(a.local.addr)
    net.run(10.0)
    assert any(type(e).__name__ == "Joined" for e in net.events["b"])
    assert net.state(a, "b") == State.ALIVE


# ---------------------------------------------------------------- security


def test_wrong_key_or_label_cannot_join_or_change_a_view() -> None:
    net = CoreNet()
    ring = keyring(1)
    cores = [net.add(f"n{i}", keyring=Keyring(ring.keys)) for i in range(3)]
    for c in cores[1:]:
        c.join([cores[0].local.addr], net.now)
    net.run(3.0)
    assert all(c.num_live() == 3 for c in cores)
    stranger = net.add("x", keyring=keyring(2))
    stranger.join([cores[0].local.addr], net.now)
    labelled = net.add("y", keyring=Keyring(ring.keys), label="other")
    labelled.join([cores[0].local.addr], net.now)
    plain = net.add("z")
    plain.join([cores[0].local.addr], net.now)
    # They also send forged gossip straight at a member.
    for intruder in (stranger, labelled, plain):
        intruder._send(cores[0].local.addr, encode_message(Suspect("n1", 0, intruder.name)))
        net._flush(intruder)
    net.run(5.0)
    for c in cores:
        assert {m.name for m in c.members()} == {"n0", "n1", "n2"}
        assert net.state(c, "n1") == State.ALIVE
    assert cores[0].stats["rejected_seal"] > 0
    assert stranger.num_live() == 1 and labelled.num_live() == 1 and plain.num_live() == 1


def test_garbage_is_dropped_and_counted() -> None:
    core = _core("a", 1)
    for junk in (b"", b"\x00", b"\x01" * 50, wrap_plain("", b"\xff\xff"), b"\x00\x00" + b"x" * 10):
        core.receive_datagram(junk, ("10.0.0.1", 5), 0.0)
    assert core.stats["rejected_seal"] + core.stats["rejected_decode"] == 5
    assert core.datagrams_to_send(0.0) == []


def test_events_report_joins() -> None:
    net = CoreNet()
    net.cluster(3)
    joined = {e.member.name for e in net.events["n0"] if isinstance(e, MemberJoined)}
    assert joined == {"n1", "n2"}
    assert not any(isinstance(e, MemberSuspected) for e in net.events["n0"])


def test_timer_moves_past_now_after_handling_even_when_leaving() -> None:
    # Regression: after leave, get_timer() kept returning the leave deadline, so a driver
    # that fires due timers spun on it forever.
    net = CoreNet()
    cores = net.cluster(3)
    cores[0].leave(net.now)
    for step in range(200):
        now = net.now + step * 0.05
        for c in cores:
            c.handle_timer(now)
            t = c.get_timer()
            assert t is not None and t > now


def test_remote_datacenter_timeouts_follow_the_measured_round_trip() -> None:
    # Two datacenters 0.8 s apart (round trip) on the lan profile, whose 0.5 s probe timeout
    # is shorter than that: once the round trip is measured, probes across stop falling back
    # to ping-req, and nobody is accused for being far away.
    lan = profile("lan")
    net = CoreNet(latency=0.0005)
    dc1 = [net.add(f"a{i}", lan, dc="dc1") for i in range(3)]
    dc2 = [net.add(f"b{i}", lan, dc="dc2") for i in range(3)]
    for x in dc1:
        for y in dc2:
            net.link_latency[(x.local.addr, y.local.addr)] = 0.4
            net.link_latency[(y.local.addr, x.local.addr)] = 0.4
    for c in dc1[1:] + dc2:
        c.join([dc1[0].local.addr], net.now)
    net.run(30.0)
    assert all(c.num_live() == 6 for c in dc1 + dc2)
    assert dc1[0].status(net.now)["rtt_ms"]["dc2"] == pytest.approx(800, rel=0.05)
    before = sum(c.stats["ping_reqs_sent"] for c in dc1 + dc2)
    net.run(30.0)
    assert sum(c.stats["ping_reqs_sent"] for c in dc1 + dc2) == before
    assert not any(isinstance(e, MemberFailed) for ev in net.events.values() for e in ev)


def test_gossip_crosses_datacenters_every_tick() -> None:
    net = CoreNet()
    cores = [net.add(f"n{i}", dc="dc1" if i < 8 else "dc2") for i in range(10)]
    for c in cores[1:]:
        c.join([cores[0].local.addr], net.now)
    net.run(3.0)
    net.sent.clear()
    cores[1].update_metadata(net.now, tags={"x": "1"})
    net.run(cores[1].config.gossip_interval * 1.01)
    remote = {c.local.addr for c in cores[8:]}
    assert any(src == cores[1].local.addr and dst in remote for src, dst, _ in net.sent)


@pytest.mark.parametrize("n", [5, 8])
def test_simultaneous_joins_reach_every_member_without_push_pull(n: int) -> None:
    # Regression: with too few retransmissions and independent random gossip targets, one
    # member in about 30 runs never heard of another until the next push-pull (15-30 s).
    for seed in range(40):
        net = CoreNet(seed=seed, latency=0.0003)
        cores = [net.add(f"n{i}") for i in range(n)]
        for c in cores[1:]:
            c.join([cores[0].local.addr], net.now)
        net.run(2.0)
        assert all(c.num_live() == n for c in cores), seed
        assert all(c.stats["push_pulls"] == 0 or c is cores[0] for c in cores)


def test_crash_reaches_every_survivor_by_gossip() -> None:
    for seed in range(40):
        net = CoreNet(seed=seed, latency=0.0003)
        cores = net.cluster(5)
        net.crash(cores[4])
        net.run_until(
            lambda cs=cores, nt=net: all(nt.state(c, "n4") == State.DEAD for c in cs[:4]), 5.0
        )


def test_shared_schedule_probes_every_member_once_a_round() -> None:
    cfg = replace(profile("lan"), probe_schedule="shared")
    net = CoreNet(latency=0.0005)
    cores = net.cluster(9, cfg)
    net.run(5.0)
    names = {c.local.addr: c.name for c in cores}
    for _ in range(5):
        start = math.floor(net.now) + 1.0
        net.run(start - net.now)
        net.sent.clear()
        net.run(1.0)
        probed: dict[str, int] = {}
        for _src, dst, data in net.sent:
            for m in _msgs(data):
                if isinstance(m, Ping):
                    probed[names[dst]] = probed.get(names[dst], 0) + 1
        # One round: every member probed exactly once, by the member `offset` before it.
        assert probed == {c.name: 1 for c in cores}


def test_suspicion_floor_and_confirmations_are_configurable() -> None:
    cfg = replace(LOCAL, suspect_check=False, suspicion_min_floor=2.0,
                  suspicion_confirmations=1)  # fmt: skip
    core = _core("me", 1, cfg)
    for i in range(4):
        alive = Alive(f"m{i}", 1, ("10.0.0.1", 100 + i), "dc1", (), 1.0, {})
        core.receive_datagram(_plain(f"m{i}", alive), ("10.0.0.1", 100 + i), 0.0)
    core.receive_datagram(_plain("m1", Suspect("m0", 1, "m1")), ("10.0.0.1", 101), 0.0)
    susp = core.suspicions()["m0"]
    assert susp.k == 1
    assert susp.deadline > 2.0
    core.receive_datagram(_plain("m2", Suspect("m0", 1, "m2")), ("10.0.0.1", 102), 0.1)
    assert susp.deadline == pytest.approx(2.0)


def test_a_member_that_refuted_gets_more_time_next_time() -> None:
    cfg = replace(profile("lan"), suspect_check=False)
    core = _core("me", 1, cfg)
    for i in range(6):
        alive = Alive(f"m{i}", 1, ("10.0.0.1", 100 + i), "dc1", (), 1.0, {})
        core.receive_datagram(_plain(f"m{i}", alive), ("10.0.0.1", 100 + i), 0.0)
    core.receive_datagram(_plain("m1", Suspect("m0", 1, "m1")), ("10.0.0.1", 101), 1.0)
    first = core.suspicions()["m0"].min_timeout
    refute = Alive("m0", 2, ("10.0.0.1", 100), "dc1", (), 1.0, {})
    core.receive_datagram(_plain("m0", refute), ("10.0.0.1", 100), 2.0)
    core.receive_datagram(_plain("m1", Suspect("m0", 2, "m1")), ("10.0.0.1", 101), 3.0)
    assert core.suspicions()["m0"].min_timeout == pytest.approx(2 * first)
    # Long after, the memory has faded.
    refute = Alive("m0", 3, ("10.0.0.1", 100), "dc1", (), 1.0, {})
    core.receive_datagram(_plain("m0", refute), ("10.0.0.1", 100), 4.0)
    later = 4.0 + cfg.refutation_memory + 1
    core.receive_datagram(_plain("m1", Suspect("m0", 3, "m1")), ("10.0.0.1", 101), later)
    assert core.suspicions()["m0"].min_timeout == pytest.approx(first)


def test_suspect_checks_are_sampled_in_a_large_cluster() -> None:
    cfg = profile("lan")
    checks = 0
    for seed in range(20):
        core = Membership(name="me", addr=("10.0.0.1", 1), config=cfg,
                          rng=random.Random(seed), now=0.0)  # fmt: skip
        for i in range(199):
            alive = Alive(f"m{i}", 1, ("10.0.0.2", 100 + i), "dc1", (), 1.0, {})
            core.receive_datagram(_plain(f"m{i}", alive), ("10.0.0.2", 100 + i), 0.0)
        core.receive_datagram(_plain("m1", Suspect("m0", 1, "m1")), ("10.0.0.2", 101), 0.0)
        checks += core.stats["suspect_checks"]
    # Each member checks with probability 8/200: about 0.8 of 20, far from all 20.
    assert checks <= 5


def test_push_pull_interval_follows_the_cluster_size_it_has_grown_to() -> None:
    # Regression: the first sync was scheduled with the interval of a one-member cluster and
    # kept, so 1000 members joined at once all made an O(N) push-pull within 60 s.
    cfg = replace(profile("lan"), reconnect_interval=0.0)  # only the periodic syncs here
    core = _core("me", 1, cfg)
    others = [
        Member(f"m{i}", ("10.0.0.2", 100 + i), "dc1", (), 1.0, {}, 0, State.ALIVE, 0.0)
        for i in range(99)
    ]
    core.merge_full_state(others, 0.0)
    assert core.num_live() == 100
    syncs = []
    for t in range(1, 121):
        core.handle_timer(float(t))
        syncs += [(t, r) for r in core.streams_to_open(float(t))]
        core.datagrams_to_send(float(t))
    # 30 s x (ceil(log2(100) - log2(32)) + 1) = 90 s between syncs at 100 members.
    assert syncs and all(t >= 60 for t, _ in syncs)
    assert len(syncs) == 1


def _summary_packet(sender: str, digest: bytes, live: int, seq: int) -> bytes:
    return wrap_plain(
        "", encode_packet(sender, [encode_message(Summary(sender, seq, digest, 0, live))])
    )


def test_repair_sync_when_others_keep_seeing_more_live_members() -> None:
    cfg = replace(LOCAL, repair_settle=2.0, repair_interval=5.0, push_pull_interval=3600.0)
    a = _core("a", 1, cfg)
    for i, name in enumerate(("b", "c")):
        alive = Alive(name, 1, ("10.0.0.2", 100 + i), "dc1", (), 1.0, {})
        a.receive_datagram(_plain(name, alive), alive.addr, 0.0)
    a.datagrams_to_send(0.0)
    other = b"\x01" * 8
    b_addr = ("10.0.0.2", 100)

    def hear(sender: str, digest: bytes, live: int, seq: int, now: float) -> list[StreamRequest]:
        a.receive_datagram(_summary_packet(sender, digest, live, seq), ("10.0.0.2", 9), now)
        return a.streams_to_open(now)

    # Someone sees one more live member than we do: wait, gossip may still bring it.
    assert hear("b", other, 4, 1, 1.0) == []
    assert hear("c", other, 4, 1, 2.0) == []
    # Still behind after the settle time: sync with the member we just heard from.
    reqs = hear("b", other, 4, 2, 3.1)
    assert [r.addr for r in reqs] == [b_addr]
    assert a.stats["repair_syncs"] == 1
    # At most one repair per repair_interval.
    assert hear("b", other, 4, 3, 5.5) == []
    assert hear("b", other, 4, 4, 7.0) == []
    # A member that agrees with us ends the episode; fewer live members never start one.
    assert hear("c", bytes.fromhex(a.view_digest()), 3, 2, 8.0) == []
    assert hear("b", other, 2, 5, 9.0) == []
    assert hear("b", other, 2, 6, 20.0) == []
    assert a.stats["repair_syncs"] == 1
    # Off when repair_settle is 0.
    off = _core("off", 2, replace(cfg, repair_settle=0.0))
    off.receive_datagram(_plain("b", Alive("b", 1, b_addr, "dc1", (), 1.0, {})), b_addr, 0.0)
    for t in range(20):
        off.receive_datagram(_summary_packet("b", other, 5, t + 1), b_addr, float(t))
        assert off.streams_to_open(float(t)) == []


def test_repair_sync_fills_in_a_member_that_gossip_missed() -> None:
    # n5 joins through n0 while n4 hears none of the gossip about it: without repair n4 would
    # wait for the next periodic push-pull (an hour here).
    def run(cfg: MembershipConfig) -> tuple[Membership, float]:
        net = CoreNet(seed=3, latency=0.0005)
        cores = net.cluster(5, cfg)
        net.run(5.0)  # past the joiners' own early syncs
        late = net.add("n5", cfg)
        deaf = cores[4]
        real = deaf.receive_datagram

        def deaf_to_n5(data: bytes, addr: Addr, now: float) -> None:
            if any(isinstance(m, Alive) and m.name == "n5" for m in _msgs(data)):
                return  # gossip about n5 never reaches n4
            real(data, addr, now)

        deaf.receive_datagram = deaf_to_n5  # type: ignore[method-assign]
        real_stream = deaf.handle_stream

        def no_sync_from_n5(payload: bytes, addr: Addr, now: float) -> bytes | None:
            return None if addr == late.local.addr else real_stream(payload, addr, now)

        deaf.handle_stream = no_sync_from_n5  # type: ignore[method-assign]
        late.join([cores[0].local.addr], net.now)
        start = net.now
        net.run_until(lambda: all(net.state(c, "n5") == State.ALIVE for c in cores[:4]), 2.0)
        try:
            net.run_until(lambda: net.state(deaf, "n5") == State.ALIVE, timeout=10.0)
        except AssertionError:
            return deaf, math.inf
        return deaf, net.now - start

    cfg = replace(LOCAL, push_pull_interval=3600.0)
    deaf, took = run(cfg)
    assert took <= cfg.repair_settle + 3.0
    assert deaf.stats["repair_syncs"] >= 1
    deaf, took = run(replace(cfg, repair_settle=0.0))
    assert took == math.inf and deaf.stats["repair_syncs"] == 0


# ---------------------------------------------------------------- lone accusations, slow members


_NEXT_PORT = [200]


def _with_members(core: Membership, *names: str, health: int = 0) -> dict[str, tuple[str, int]]:
    addrs = {}
    for name in names:
        _NEXT_PORT[0] += 1
        addr = ("10.0.0.3", _NEXT_PORT[0])
        core.receive_datagram(
            _plain(name, Alive(name, 1, addr, "dc1", (), 1.0, {}, health=health)), addr, 0.0
        )
        addrs[name] = addr
    core.datagrams_to_send(0.0)
    return addrs


def _step_to(core: Membership, t: float) -> list[tuple[bytes, tuple[str, int]]]:
    """Fire every timer up to t; return what was sent on the way."""
    sent = []
    while (due := core.get_timer()) is not None and due <= t:
        core.handle_timer(due)
        sent += core.datagrams_to_send(due)
    return sent


def test_lone_unconfirmed_suspicion_asks_the_suspect_before_declaring() -> None:
    cfg = replace(LOCAL, suspect_check=False, push_pull_interval=3600.0)
    a = _core("a", 1, cfg)
    addrs = _with_members(a, "b", "c", "d", "e", "f")
    a._next_probe = math.inf  # no probes of its own: only c's word against b
    b = addrs["b"]
    a.receive_datagram(_plain("c", Suspect("b", 1, "c")), addrs["c"], 0.1)
    assert known(a, "b").state == State.SUSPECT
    deadline = a.suspicions()["b"].deadline
    sent = [m for d, addr in _step_to(a, deadline) if addr == b for m in _msgs(d)]
    # Unconfirmed at its deadline: not declared, asked directly, with the suspicion.
    assert known(a, "b").state == State.SUSPECT
    assert Suspect("b", 1, "a") in sent
    ping = next(m for m in sent if isinstance(m, Ping))
    assert a.stats["final_checks"] == 1
    # It answers each time (its refutation is lost): asked again, never declared.
    t = deadline
    while t < deadline + 10.0:
        a.receive_datagram(_plain("b", Ack(ping.seq, "b")), b, t + 0.01)
        due = a.get_timer()
        assert due is not None
        t = due
        a.handle_timer(t)
        sent = [m for d, addr in a.datagrams_to_send(t) if addr == b for m in _msgs(d)]
        ping = next((m for m in sent if isinstance(m, Ping)), ping)
    assert known(a, "b").state == State.SUSPECT
    assert a.stats["final_checks"] > 5
    # Its refutation ends it.
    a.receive_datagram(_plain("b", Alive("b", 2, b, "dc1", (), 1.0, {})), b, t + 0.1)
    assert known(a, "b").state == State.ALIVE
    assert not a.suspicions()


def test_lone_suspicion_of_a_silent_member_is_declared_after_two_checks() -> None:
    cfg = replace(LOCAL, suspect_check=False, push_pull_interval=3600.0)
    a = _core("a", 1, cfg)
    addrs = _with_members(a, "b", "c", "d", "e", "f")
    a._next_probe = math.inf
    a.receive_datagram(_plain("c", Suspect("b", 1, "c")), addrs["c"], 0.1)
    deadline = a.suspicions()["b"].deadline
    hold = max(LOCAL.probe_timeout, LOCAL.probe_interval)
    _step_to(a, deadline + 2 * hold - 0.01)
    assert known(a, "b").state == State.SUSPECT
    _step_to(a, deadline + 2 * hold + 0.01)
    assert known(a, "b").state == State.DEAD
    assert a.stats["final_checks"] == 2
    # Off: declared at the deadline.
    off = _core("off", 2, replace(cfg, suspect_final_check=False))
    addrs = _with_members(off, "b", "c", "d", "e", "f")
    off._next_probe = math.inf
    off.receive_datagram(_plain("c", Suspect("b", 1, "c")), addrs["c"], 0.1)
    _step_to(off, off.suspicions()["b"].deadline)
    assert known(off, "b").state == State.DEAD


def test_an_accused_member_answers_the_accuser_directly() -> None:
    b = _core("b", 2)
    accuser = ("10.0.0.9", 5)
    b.receive_datagram(_plain("x", Suspect("b", 0, "x")), accuser, 1.0)
    out = [m for d, addr in b.datagrams_to_send(1.0) if addr == accuser for m in _msgs(d)]
    assert any(isinstance(m, Alive) and m.name == "b" and m.incarnation == 1 for m in out)
    # An old accusation (we refuted already) is answered with what we are now.
    b.receive_datagram(_plain("y", Suspect("b", 0, "y")), ("10.0.0.9", 6), 2.0)
    out = [m for d, addr in b.datagrams_to_send(2.0) if addr == ("10.0.0.9", 6) for m in _msgs(d)]
    assert any(isinstance(m, Alive) and m.incarnation == 1 for m in out)


def test_accusations_from_a_member_that_said_it_is_slow_do_not_cost_us_health() -> None:
    a = _core("a", 1)
    _with_members(a, "slow", health=3)
    _with_members(a, "fine")
    a.receive_datagram(_plain("slow", Suspect("a", 0, "slow")), ("10.0.0.3", 200), 1.0)
    assert a.local.incarnation == 1  # refuted
    assert a.health_score == 0
    a.receive_datagram(_plain("fine", Suspect("a", 1, "fine")), ("10.0.0.3", 200), 1.1)
    assert a.local.incarnation == 2
    assert a.health_score == 1
