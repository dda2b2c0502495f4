"""Dissemination (`membership._gossip`), without a network: the round-robin target lists, the
datacenter mix of a gossip tick's targets, and the piggyback floor; calling the module's
functions and `GossipRotation` directly."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from swimthor.config import MembershipConfig, profile, replace
from swimthor.keyring import unwrap_plain, wrap_plain
from swimthor.membership import (
    Alive,
    Member,
    Membership,
    State,
    decode_packet,
    encode_message,
    encode_packet,
)
from swimthor.membership import _gossip as gossip
from swimthor.membership._gossip import GossipRotation

LOCAL = profile("local")


def _members(*specs: tuple[str, str]) -> dict[str, Member]:
    return {
        name: Member(
            name=name,
            addr=("10.0.0.1", i + 1),
            dc=dc,
            roles=(),
            weight=1.0,
            tags={},
            incarnation=0,
            state=State.ALIVE,
            since=0.0,
        )
        for i, (name, dc) in enumerate(specs)
    }


def _take(
    rot: GossipRotation,
    which: str,
    k: int,
    members: Mapping[str, Member],
    taken: set[str] | None = None,
    rng: random.Random | None = None,
) -> list[str]:
    chosen = {"me"} if taken is None else taken
    out = rot.take(
        which,
        k,
        lambda m: m.name not in chosen,
        chosen,
        members,
        "me",
        "dc1",
        rng or random.Random(1),
        len(members),
    )
    return [m.name for m in out]


def test_a_rotation_reaches_every_member_before_any_twice() -> None:
    members = _members(("me", "dc1"), *((f"m{i}", "dc1") for i in range(7)))
    rot = GossipRotation()
    rng = random.Random(2)
    seen: list[str] = []
    for _ in range(7):
        seen += _take(rot, "all", 1, members, rng=rng)
    assert sorted(seen) == [f"m{i}" for i in range(7)]
    again = _take(rot, "all", 3, members, rng=rng)
    assert len(again) == 3 and "me" not in again


def test_the_remote_list_holds_only_other_datacenters() -> None:
    members = _members(("me", "dc1"), ("a", "dc1"), ("b", "dc2"), ("c", "dc3"))
    rot = GossipRotation()
    names = _take(rot, "remote", 5, members)
    assert sorted(names) == ["b", "c"]  # each once, however many were asked for


def test_an_empty_list_is_not_rebuilt_until_a_member_is_added() -> None:
    members = _members(("me", "dc1"), ("a", "dc1"))
    builds: list[int] = []

    class Counting(dict[str, Member]):
        def items(self) -> Any:  # a rebuild of the remote list reads every member
            builds.append(len(self))
            return super().items()

    table = Counting(members)
    rot = GossipRotation()
    assert _take(rot, "remote", 1, table) == []
    assert _take(rot, "remote", 1, table) == []
    assert builds == [2]  # built once, found empty, not rebuilt
    table.update(_members(("x", "dc1"), ("y", "dc1"), ("far", "dc2")))
    assert _take(rot, "remote", 1, table) == ["far"]
    assert len(builds) == 2


def test_a_round_is_shuffled_as_it_is_taken() -> None:
    """Each pick is uniform among the members not yet taken this round (Fisher-Yates, one
    step a pick): over many rotations every member comes first about equally often."""
    members = _members(("me", "dc1"), *((f"m{i}", "dc1") for i in range(4)))
    first: dict[str, int] = {}
    rng = random.Random(5)
    for _ in range(4000):
        name = _take(GossipRotation(), "all", 1, members, rng=rng)[0]
        first[name] = first.get(name, 0) + 1
    assert set(first) == {f"m{i}" for i in range(4)}
    assert all(800 < c < 1200 for c in first.values()), first


def test_members_taken_already_or_ineligible_are_skipped_and_marked() -> None:
    members = _members(("me", "dc1"), ("a", "dc1"), ("b", "dc1"), ("c", "dc1"))
    rot = GossipRotation()
    taken = {"me", "b"}
    names = _take(rot, "all", 3, members, taken=taken)
    assert sorted(names) == ["a", "c"] and taken == {"me", "a", "b", "c"}


def _core(config: MembershipConfig) -> Membership:
    core = Membership(name="me", addr=("10.0.0.1", 1), config=config, rng=random.Random(4), now=0.0)
    for i, dc in enumerate(("dc1", "dc1", "dc1", "dc2", "dc2")):
        alive = Alive(f"m{i}", 1, ("10.0.0.2", 100 + i), dc, (), 1.0, {})
        packet = wrap_plain("", encode_packet(alive.name, [encode_message(alive)]))
        core.receive_datagram(packet, alive.addr, 0.0)
    return core


def test_every_tick_crosses_datacenters_and_reaches_the_recently_dead() -> None:
    cfg = replace(LOCAL, cross_dc_gossip_nodes=1, gossip_to_dead_time=5.0)
    core = _core(cfg)
    for _ in range(10):
        targets = gossip.gossip_targets(core, 3, 1.0)
        assert len(targets) == 3 == len({m.name for m in targets})
        assert sum(m.dc != "dc1" for m in targets) >= 1
    core._members["m0"].state = State.DEAD
    core._members["m0"].since = 1.0
    dead_seen = {
        m.name
        for _ in range(10)
        for m in gossip.gossip_targets(core, 5, 2.0)
        if not m.state.is_live
    }
    assert dead_seen == {"m0"}
    later = {m.name for _ in range(10) for m in gossip.gossip_targets(core, 5, 10.0)}
    assert "m0" not in later  # past gossip_to_dead_time


def test_a_gossip_tick_sends_the_pending_updates_and_nothing_when_there_are_none() -> None:
    core = _core(replace(LOCAL, gossip_nodes=2))
    core.datagrams_to_send(0.0)
    gossip.gossip(core, 1.0)
    out = core.datagrams_to_send(1.0)
    assert len(out) == 2
    news = [m for data, _ in out for m in decode_packet(unwrap_plain("", data)).messages]
    assert any(isinstance(m, Alive) for m in news)
    for _ in range(50):  # the retransmit limit runs out
        gossip.gossip(core, 1.0)
        core.datagrams_to_send(1.0)
    assert len(core._broadcasts) == 0
    gossip.gossip(core, 2.0)
    assert core.datagrams_to_send(2.0) == []


def test_in_a_small_cluster_an_update_goes_to_more_members_than_the_limit_says() -> None:
    core = _core(replace(LOCAL, retransmit_mult=1))
    core._broadcasts.reset()
    news = encode_message(Alive("x", 1, ("10.0.0.9", 9), "dc1", (), 1.0, {}))
    core._broadcasts.queue("x", news)
    n = core.num_live()  # 6: the queue's own limit would be 1 x ceil(log10(7)) = 1
    carried = [
        news in gossip.take_broadcasts(core, 1400, n, ("10.0.0.2", 100 + i)) for i in range(n - 1)
    ]
    assert carried.count(True) == min(n - 1, 2 * 1) == 2
    assert carried[:2] == [True, True]  # to two distinct members, then retired
