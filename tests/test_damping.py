"""Flap damping (`membership._damping`): a member declared or suspected again and again is
held out of routing and DNS while membership keeps tracking it, and let back in once it has
stayed well; nobody healthy is ever held."""

from __future__ import annotations

import math
import random

import pytest

from swimthor.cli import format_members_text
from swimthor.config import profile
from swimthor.directory import MemberDirectory
from swimthor.keyring import wrap_plain
from swimthor.membership import (
    HELD_FLAPPING,
    Alive,
    Dead,
    FlapDamper,
    Member,
    MemberFailed,
    MemberHeld,
    MemberRecovered,
    MemberReleased,
    Membership,
    State,
    Suspect,
    encode_message,
    encode_packet,
    members_json,
)
from swimthor.sim import (
    EV_FAILED,
    EV_HELD,
    EV_RELEASED,
    Scenario,
    SimResult,
    parse_fault,
    run,
)

LAN = profile("lan")


# ---------------------------------------------------------------- the penalty


def test_the_penalty_adds_up_halves_and_holds_at_the_limit() -> None:
    d = FlapDamper(half_life=30.0, suppress=1.25, reuse=0.5)
    assert not d.add("x", 0.0)  # one declaration: 1.0
    assert d.penalty("x", 30.0) == pytest.approx(0.5)
    assert d.penalty("x", 60.0) == pytest.approx(0.25)
    assert not d.is_held("x")
    assert d.add("x", 10.0, 0.5)  # 1 * 2^(-1/3) + 0.5 = 1.29: held
    assert d.is_held("x") and d.held == frozenset({"x"})
    assert not d.add("x", 11.0)  # already held: no second event
    # It decays below reuse when its last value has halved enough times.
    value = d.penalty("x", 11.0)
    assert d.decayed_at("x") == pytest.approx(11.0 + 30.0 * math.log2(value / 0.5))
    d.release("x")
    assert not d.is_held("x")
    d.prune(10_000.0)
    assert d.penalty("x", 10_000.0) == 0.0


def test_damping_off_and_bad_limits() -> None:
    off = FlapDamper(half_life=0.0, suppress=1.25, reuse=0.5)
    assert not any(off.add("x", float(t)) for t in range(10))
    assert off.penalty("x", 5.0) == 0.0
    with pytest.raises(ValueError):
        FlapDamper(half_life=30.0, suppress=0.5, reuse=1.0)


# ---------------------------------------------------------------- the directory and status


def _m(state: State = State.ALIVE, held: str = "") -> Member:
    return Member("x", ("10.0.0.9", 7946), "dc1", ("sip",), 1.0, {}, 1, state, 0.0, held=held)


def test_a_held_member_is_out_of_the_directory_until_released() -> None:
    d = MemberDirectory()
    d.apply(MemberRecovered(_m(), previous="dead"))
    assert d.get("x") is not None
    d.apply(MemberFailed(_m(State.DEAD)))
    d.apply(MemberHeld(_m(State.DEAD, HELD_FLAPPING), HELD_FLAPPING, 1.3))
    # It refutes, and stays out: membership tracks it, routing and DNS do not use it.
    d.apply(MemberRecovered(_m(held=HELD_FLAPPING), previous="dead"))
    assert d.get("x") is None and d.live() == []
    # Held while alive (a refuted suspicion was the flap too many): taken out at once.
    d2 = MemberDirectory()
    d2.apply(MemberRecovered(_m(), previous="suspect"))
    d2.apply(MemberHeld(_m(held=HELD_FLAPPING), HELD_FLAPPING, 1.3))
    assert d2.get("x") is None
    d.apply(MemberReleased(_m()))
    assert d.get("x") is not None


def test_status_and_members_say_held() -> None:
    rows = members_json([_m(held=HELD_FLAPPING), _m()])
    assert [r["held"] for r in rows] == ["flapping", ""]
    text = format_members_text(rows[:1], now=0.0)
    assert "alive (held: flapping)" in text


# ---------------------------------------------------------------- in the core


def _core() -> Membership:
    core = Membership(name="a", addr=("10.0.0.1", 1), config=LAN, rng=random.Random(1), now=0.0)
    core.merge_full_state(
        [
            Member(f"m{i}", ("10.0.0.2", 100 + i), "dc1", (), 1.0, {}, 1, State.ALIVE, 0.0)
            for i in range(6)
        ],
        0.0,
    )
    return core


def test_a_held_members_suspicion_runs_at_least_flap_well() -> None:
    core = _core()
    core._members["m0"].held = HELD_FLAPPING
    suspect = wrap_plain("", encode_packet("m1", [encode_message(Suspect("m0", 1, "m1"))]))
    core.receive_datagram(suspect, ("10.0.0.2", 101), 1.0)
    assert core.suspicions()["m0"].min_timeout >= LAN.flap_well


def _state(core: Membership, name: str) -> State:
    m = core.member(name)
    assert m is not None
    return m.state


def test_a_doubted_death_refuted_is_no_flap_and_no_reason_for_patience() -> None:
    """After a partition heals, the other side's declarations arrive as deaths of members we
    just heard from: doubted, taken as suspicions, refuted. They say nothing about the
    accused: no refutation memory, no penalty."""
    core = _core()
    core._members["m0"].last_heard = 5.0
    core._apply_dead(Dead("m0", 1, "m3"), 5.0)
    assert _state(core, "m0") == State.SUSPECT and core.stats["deaths_doubted"] == 1
    core._apply_alive(Alive("m0", 2, ("10.0.0.2", 100), "dc1", (), 1.0, {}, refutes=1), 5.5)
    assert _state(core, "m0") == State.ALIVE
    assert "m0" not in core._refuted
    assert core._damper.penalty("m0", 5.5) == 0.0


# ---------------------------------------------------------------- the simulator


def _flap(nodes: int, seed: int, duration: float = 75.0) -> SimResult:
    """One member hears nothing 5 s of every 10, from 5 s to 65 s."""
    return run(
        Scenario(
            nodes=nodes,
            loss=0.01,
            duration=duration,
            seed=seed,
            faults=(parse_fault("flipflop:1@5+60/10"),),
        )
    )


@pytest.mark.parametrize(("nodes", "seed"), [(20, 1), (20, 2), (100, 1)])
def test_a_flapping_member_is_declared_at_most_twice_and_held_out_while_it_flaps(
    nodes: int, seed: int
) -> None:
    r = _flap(nodes, seed)
    victim = r.faults[0]["nodes"][0]
    healthy = [i for i, n in enumerate(r.names) if n != victim]
    for who in healthy:
        mine = [(t, code) for t, w, code, name, _ in r.events if w == who and name == victim]
        declared = [t for t, code in mine if code == EV_FAILED]
        held = [t for t, code in mine if code == EV_HELD]
        released = [t for t, code in mine if code == EV_RELEASED]
        assert len(declared) <= 2, (who, declared)
        # Held by the third cycle, and not let go while it flaps (until 65 s).
        assert held and held[0] <= 25.0, (who, held)
        assert not [t for t in released if t < 65.0], (who, released)
    assert r.declarations["flipflop"]["max"] <= 2
    assert r.declarations["flipflop"]["out_share_min"] >= 0.6
    assert r.healthy_false_failures == 0 and r.healthy_held == 0


def test_a_member_that_stops_flapping_is_let_back_in() -> None:
    r = _flap(20, 3, duration=200.0)
    victim = r.faults[0]["nodes"][0]
    released = {w for t, w, code, name, _ in r.events if code == EV_RELEASED and name == victim}
    assert released == set(range(20)) - {r.names.index(victim)}
    assert r.converged and r.views_match_truth


def test_no_healthy_member_is_held_under_loss_crashes_and_a_partition() -> None:
    for spec, loss in (("crash:2@10", 0.05), ("partition:dc1|dc2@10+10", 0.01)):
        r = run(
            Scenario(nodes=40, dcs=2, loss=loss, duration=60.0, seed=5, faults=(parse_fault(spec),))
        )
        assert r.healthy_held == 0, spec
        held = [e for e in r.events if e[2] == EV_HELD]
        assert held == [], (spec, held[:5])


def test_memberlist_profile_does_not_damp() -> None:
    assert profile("memberlist-lan").flap_half_life == 0.0
