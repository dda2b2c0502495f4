"""Suspicion (`membership._suspicion`), without a network: how long a suspicion runs, when we
check for ourselves, how it ends, and when a reported death is only doubted; calling the
module's functions on hand-built cores."""

from __future__ import annotations

import random

import pytest

from swimthor.config import MembershipConfig, profile, replace
from swimthor.keyring import wrap_plain
from swimthor.membership import (
    Alive,
    Dead,
    Member,
    Membership,
    MemberSuspected,
    State,
    Suspect,
    Suspicion,
    encode_message,
    encode_packet,
    expected_confirmations,
    suspicion_timeouts,
)
from swimthor.membership import _suspicion as suspicion

LAN = replace(profile("lan"), suspect_check=False)


def _core(config: MembershipConfig = LAN, seed: int = 1) -> Membership:
    return Membership(
        name="a", addr=("10.0.0.1", 1), config=config, rng=random.Random(seed), now=0.0
    )


def _member(core: Membership, name: str) -> Member:
    """The member `core` knows by `name` (the test has made sure it knows one)."""
    m = core.member(name)
    assert m is not None, name
    return m


def _hear(core: Membership, msg: Alive | Suspect | Dead, now: float = 0.0) -> None:
    sender = msg.name if isinstance(msg, Alive) else msg.origin
    packet = wrap_plain("", encode_packet(sender, [encode_message(msg)]))
    core.receive_datagram(packet, ("10.0.0.9", 9), now)


def _add(core: Membership, n: int, health: int = 0) -> None:
    for i in range(n):
        _hear(core, Alive(f"m{i}", 1, ("10.0.0.2", 100 + i), "dc1", (), 1.0, {}, health=health))
    core.datagrams_to_send(0.0)


def _suspect(core: Membership, name: str = "m0", origin: str = "m1", now: float = 0.0) -> None:
    m = core._members[name]
    m.state = State.SUSPECT  # what _apply_suspect has done by the time it starts one
    suspicion.start(core, m, Suspect(name, m.incarnation, origin), now)


def test_a_suspicion_starts_long_with_k_confirmations_to_shrink_it() -> None:
    cfg = replace(LAN, suspicion_confirmations=None, suspicion_mult=4.0)
    core = _core(cfg)
    _add(core, 9)
    core._events.clear()
    _suspect(core, now=2.0)
    susp = core.suspicions()["m0"]
    n = core.num_live()
    lo, hi = suspicion_timeouts(n, cfg.suspicion_mult, cfg.suspicion_max_timeout_mult,
                                cfg.probe_interval)  # fmt: skip
    lo, hi = max(lo, cfg.suspicion_min_floor), hi * max(1.0, cfg.suspicion_min_floor / lo)
    assert susp.k == expected_confirmations(n, cfg.suspicion_mult) > 0
    assert susp.start == 2.0 and susp.origin == "m1"
    assert susp.min_timeout == pytest.approx(lo) and susp.max_timeout == pytest.approx(hi)
    st = core._suspects["m0"]
    assert (st.since, st.by, st.hold) == (2.0, "m1", None) and st.due == susp.deadline
    (event,) = core._events
    assert isinstance(event, MemberSuspected) and event.by == "m1"


def test_a_fixed_number_of_confirmations_and_the_floor_are_configurable() -> None:
    core = _core(replace(LAN, suspicion_confirmations=5, suspicion_min_floor=4.0))
    _add(core, 4)  # 5 live: at most n - 2 confirmations can come
    _suspect(core)
    susp = core.suspicions()["m0"]
    # n - 2 = 3 leaves out us and the suspect, but the accuser (m1) never confirms its own
    # accusation: two can come, from m2 and m3.
    assert susp.k == 2
    assert susp.min_timeout == 4.0


def test_a_small_cluster_does_not_wait_for_confirmations_that_cannot_come() -> None:
    """Members that said they are slow do not check suspects (Lifeguard): in a small
    cluster they are not counted among those whose confirmations the suspicion waits for."""
    core = _core()
    _add(core, 4)
    core._members["m2"].health = 3  # announced: slow
    _suspect(core, origin="m1")
    assert core.suspicions()["m0"].k == 1  # only m3 can
    big = _core()
    _add(big, 12)
    big._members["m2"].health = 3
    _suspect(big, origin="m1")
    assert big.suspicions()["m0"].k == 3  # plenty of others: the rule is not even asked


def test_slow_and_recently_refuting_members_get_longer() -> None:
    wide = replace(LAN, suspicion_patience_max=10.0)
    base = _core(wide)
    _add(base, 6)
    _suspect(base)
    plain = base.suspicions()["m0"].min_timeout
    slow = _core(wide)
    _add(slow, 6, health=2)
    _suspect(slow)
    assert slow.suspicions()["m0"].min_timeout == pytest.approx(3 * plain)
    refuted = _core(wide)
    _add(refuted, 6)
    refuted._refuted["m0"] = (5, 0.0)
    _suspect(refuted, now=1.0)
    assert refuted.suspicions()["m0"].min_timeout == pytest.approx(3 * plain)  # capped at +2
    refuted._suspects.clear()
    _suspect(refuted, now=LAN.refutation_memory + 1.0)  # the memory has faded
    assert refuted.suspicions()["m0"].min_timeout == pytest.approx(plain)


def test_patience_for_slow_and_refuting_members_is_capped() -> None:
    """Health and refutations together stretch a suspicion at most suspicion_patience_max
    times (a deaf member looks slow to itself: uncapped, 4 to 6 times)."""
    assert LAN.suspicion_patience_max == 2.0
    base = _core()
    _add(base, 6)
    _suspect(base)
    plain = base.suspicions()["m0"].min_timeout
    worst = _core()
    _add(worst, 6, health=7)
    worst._refuted["m0"] = (5, 0.0)
    _suspect(worst, now=1.0)
    assert worst.suspicions()["m0"].min_timeout == pytest.approx(2 * plain)
    assert worst.suspicions()["m0"].max_timeout == pytest.approx(
        2 * base.suspicions()["m0"].max_timeout
    )


def test_only_a_healthy_member_checks_for_itself_and_not_its_own_accusation() -> None:
    cfg = replace(LAN, suspect_check=True, suspect_checkers=1000.0)  # always drawn
    core = _core(cfg)
    _add(core, 4)
    _suspect(core, "m0", origin="m1")
    _suspect(core, "m2", origin="a")
    assert core.stats["suspect_checks"] == 1
    core._awareness.apply_delta(1)
    _suspect(core, "m3", origin="m1")
    assert core.stats["suspect_checks"] == 1


def test_an_unconfirmed_suspicion_gets_a_final_check_then_is_declared() -> None:
    core = _core()
    _add(core, 6)
    _suspect(core)
    st = core._suspects["m0"]
    suspicion.expired(core, "m0", st.due)
    assert _member(core, "m0").state == State.SUSPECT and st.hold is not None
    assert core.stats["final_checks"] == 1
    suspicion.expired(core, "m0", st.due)
    assert core.stats["final_checks"] == 2
    suspicion.expired(core, "m0", st.due)  # two tries: declared
    assert _member(core, "m0").state == State.DEAD and core.stats["failures_declared"] == 1


def test_a_confirmed_suspicion_is_declared_at_once_and_a_stale_one_is_dropped() -> None:
    core = _core(replace(LAN, suspicion_confirmations=1))
    _add(core, 6)
    _suspect(core)
    core._suspects["m0"].suspicion.confirm("m2", 0.1)
    suspicion.expired(core, "m0", 100.0)
    assert _member(core, "m0").state == State.DEAD and core.stats["final_checks"] == 0
    # A suspicion whose member is no longer suspect is forgotten.
    _suspect(core, "m1", origin="m2")
    core._members["m1"].state = State.ALIVE
    suspicion.expired(core, "m1", 100.0)
    assert "m1" not in core.suspicions() and _member(core, "m1").state == State.ALIVE


def test_final_checks_can_be_turned_off() -> None:
    core = _core(replace(LAN, suspect_final_check=False))
    _add(core, 6)
    _suspect(core)
    suspicion.expired(core, "m0", 100.0)
    assert _member(core, "m0").state == State.DEAD and core.stats["final_checks"] == 0


def test_a_death_of_a_member_heard_from_just_now_is_doubted() -> None:
    core = _core()
    _add(core, 6)
    m = core._members["m0"]
    lo, _ = suspicion_timeouts(core.num_live(), LAN.suspicion_mult,
                               LAN.suspicion_max_timeout_mult, LAN.probe_interval)  # fmt: skip
    window = max(lo, LAN.suspicion_min_floor)
    assert suspicion.doubt_death(core, Dead("m0", 1, "m1"), m, window - 0.01)
    assert not suspicion.doubt_death(core, Dead("m0", 1, "m1"), m, window + 0.01)
    # Its own leave, our own declaration, or a death of a suspect: believed.
    assert not suspicion.doubt_death(core, Dead("m0", 1, "m0"), m, 0.0)
    assert not suspicion.doubt_death(core, Dead("m0", 1, "a"), m, 0.0)
    _suspect(core)
    assert not suspicion.doubt_death(core, Dead("m0", 1, "m1"), m, 0.0)


def test_the_due_time_is_the_deadline_or_the_final_checks_hold() -> None:
    s = Suspicion(origin="x", k=0, min_timeout=2.0, max_timeout=8.0, start=1.0)
    st = suspicion.SuspectState(s, 1.0, "x")
    assert st.due == 3.0
    st.hold = 5.5
    assert st.due == 5.5
