"""The `status` and `members` replies (`membership._status`), without a network: the pieces
as pure functions of members and summaries, and a hand-built core's whole reply."""

from __future__ import annotations

import json
import random

from swimthor.config import profile
from swimthor.keyring import wrap_plain
from swimthor.membership import (
    STAT_NAMES,
    Alive,
    ClusterRow,
    Member,
    Membership,
    State,
    StatusReply,
    Summary,
    cluster_table,
    convergence,
    encode_message,
    encode_packet,
    fmt_addr,
    member_json,
    members_json,
    state_counts,
)


def _member(
    name: str,
    state: State = State.ALIVE,
    dc: str = "dc1",
    *,
    health: int = 0,
    tags: dict[str, str] | None = None,
) -> Member:
    return Member(name=name, addr=("10.0.0.1", 7946), dc=dc, roles=("sip",), weight=1.0,
                  tags=dict(tags or {}), incarnation=1, state=state, since=5.0,
                  health=health)  # fmt: skip


def _summary(
    name: str, digest: bytes, health: int = 0, load: tuple[tuple[str, int], ...] = ()
) -> Summary:
    return Summary(name, 1, digest, health, 3, load)


def test_addresses_are_written_host_port_with_brackets_for_ipv6() -> None:
    assert fmt_addr(("10.0.0.1", 7946)) == "10.0.0.1:7946"
    assert fmt_addr(("::1", 7946)) == "[::1]:7946"
    assert fmt_addr(("node.example", 1)) == "node.example:1"


def test_member_json_is_the_object_scripts_rely_on() -> None:
    m = _member("a", tags={"zone": "b"})
    assert member_json(m, 1000.0) == {
        "name": "a",
        "addr": "10.0.0.1:7946",
        "dc": "dc1",
        "roles": ["sip"],
        "weight": 1.0,
        "state": "alive",
        "incarnation": 1,
        "tags": {"zone": "b"},
        "since": 1005.0,  # core time moved to the wall clock
        "held": "",  # not held out of routing (see test_damping)
    }
    doc = member_json(m)
    doc["tags"]["zone"] = "c"
    doc["roles"].append("dns")
    assert m.tags == {"zone": "b"} and m.roles == ("sip",)  # copies, not the core's own
    assert members_json([m, _member("b")]) == [member_json(m), member_json(_member("b"))]


def test_state_counts_cover_every_state_in_all_and_per_datacenter() -> None:
    members = [
        _member("a"),
        _member("b", State.SUSPECT),
        _member("c", State.DEAD, dc="dc2"),
        _member("d", State.LEFT, dc="dc2"),
    ]
    counts, by_dc = state_counts(members)
    assert counts == {"alive": 1, "suspect": 1, "dead": 1, "left": 1}
    assert by_dc == {
        "dc1": {"alive": 1, "suspect": 1, "dead": 0, "left": 0},
        "dc2": {"alive": 0, "suspect": 0, "dead": 1, "left": 1},
    }
    assert state_counts([]) == ({"alive": 0, "suspect": 0, "dead": 0, "left": 0}, {})


def test_convergence_sorts_the_live_members_by_their_last_summary() -> None:
    ours, theirs = b"\x01" * 8, b"\x02" * 8
    members = [
        _member("me"),
        _member("same"),
        _member("other", State.SUSPECT),
        _member("stale"),
        _member("silent"),
        _member("gone", State.DEAD),
    ]
    summaries = {
        "same": (_summary("same", ours), 9.0),
        "other": (_summary("other", theirs), 9.0),
        "stale": (_summary("stale", ours), 0.0),
        "gone": (_summary("gone", ours), 9.0),
    }
    agree, disagree, unknown = convergence(members, "me", summaries, ours, 10.0, 5.0)
    assert agree == ["me", "same"]
    assert disagree == ["other"]
    assert unknown == ["stale", "silent"]  # too old, never heard; the dead are not counted


def test_cluster_table_shows_what_each_members_summary_said() -> None:
    members = {m.name: m for m in (_member("me"), _member("b", health=1), _member("c"))}
    summaries = {"b": (_summary("b", b"", health=2, load=(("sip_requests", 7),)), 8.04)}
    rows = cluster_table(
        members, summaries, 10.0, {"me", "b"}, set(),
        own="me", own_health=3, own_load=(("dns_queries", 1),),
    )  # fmt: skip
    expected: list[ClusterRow] = [
        {"name": "b", "dc": "dc1", "state": "alive", "roles": ["sip"], "health": 2,
         "view": "same", "load": {"sip_requests": 7}, "heard_s_ago": 2.0},
        {"name": "c", "dc": "dc1", "state": "alive", "roles": ["sip"], "health": 0,
         "view": "unknown"},
        {"name": "me", "dc": "dc1", "state": "alive", "roles": ["sip"], "health": 3,
         "view": "same", "load": {"dns_queries": 1}},
    ]  # fmt: skip
    assert rows == expected
    rows = cluster_table(members, {}, 0.0, set(), {"c"}, own="me", own_health=0, own_load=())
    assert [r["view"] for r in rows] == ["unknown", "differs", "unknown"]
    assert rows[0]["health"] == 1  # what we know of it, without a summary


def test_a_cores_status_reply_has_the_fixed_shape() -> None:
    core = Membership(name="a", addr=("10.0.0.1", 1), config=profile("local"),
                      rng=random.Random(1), now=0.0, dc="dc1", wall_offset=100.0)  # fmt: skip
    core.local_load = (("sip_requests", 4),)
    for i, dc in enumerate(("dc1", "dc2")):
        alive = Alive(f"m{i}", 1, ("10.0.0.2", 100 + i), dc, (), 1.0, {})
        packet = wrap_plain("", encode_packet(alive.name, [encode_message(alive)]))
        core.receive_datagram(packet, alive.addr, 0.0)
    status: StatusReply = core.status(1.0)
    assert set(status) == set(StatusReply.__required_keys__)
    assert status["name"] == "a" and status["addr"] == "10.0.0.1:1" and status["dc"] == "dc1"
    assert status["state"] == "alive" and status["incarnation"] == 0 and status["health"] == 0
    assert status["members"] == 3
    assert status["counts"] == {"alive": 3, "suspect": 0, "dead": 0, "left": 0}
    assert set(status["by_dc"]) == {"dc1", "dc2"}
    assert status["view_digest"] == core.view_digest()
    assert status["converged"]["agree"] == 1 and status["converged"]["unknown"] == 2
    assert status["converged"]["members_unknown"] == ["m0", "m1"]
    assert [r["name"] for r in status["cluster"]] == ["a", "m0", "m1"]
    assert status["cluster"][0].get("load") == {"sip_requests": 4}
    assert status["rtt_ms"] == {}
    assert status["protocol"] == 1 and status["sealed"] is False
    assert tuple(status["stats"]) == STAT_NAMES
    json.dumps(status, allow_nan=False)
    assert core.members_json() == [member_json(m, 100.0) for m in core.members()]
