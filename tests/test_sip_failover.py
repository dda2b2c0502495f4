"""No acknowledged registration is lost when a node dies under load, and a node that comes
back gets its addresses-of-record back.

Three real agents (local profile); a client that records which users got a 200
(bench/sip/regload.py, standard library only) registers users through two of them while the
third is killed -9; afterwards every acknowledged user is asked for (a REGISTER without
Contact) through the survivors. Every process is killed by PID at the end; loopback only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sip_agents import DOMAIN, Node, cluster_of, wait_until

from bench.sip import regload

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Node]]:
    with cluster_of(tmp_path, 3) as nodes:
        yield nodes


def _register_under(
    cluster: dict[str, Node], users: list[str], faults: list[tuple[float, Callable[[], object]]]
) -> regload.LoadResult:
    """Register `users` at 600/s through n0 and n1 while each fault runs `at` seconds in
    (each in a timer thread, joined before returning); then check that every REGISTER was
    acknowledged, that n2, killed, is dead to both, that both survivors hold every binding
    (R = 2 over two live nodes) and that the survivors answer for every acknowledged user."""
    survivors = [cluster["n0"], cluster["n1"]]
    timers = [threading.Timer(at, fault) for at, fault in faults]
    for timer in timers:
        timer.start()
    try:
        result = regload.load(
            [("127.0.0.1", n.sip_port) for n in survivors], users, DOMAIN, rate=600
        )
    finally:
        for timer in timers:
            timer.cancel()
            timer.join()
    assert len(result.acknowledged) == len(users), (result.refused, result.timed_out[:5])
    wait_until(lambda: all(n.members()["n2"]["state"] == "dead" for n in survivors), 20, "n2 dead")
    wait_until(
        lambda: all(n.status()["sip"]["bindings"] == len(users) for n in survivors),
        20,
        "both survivors to hold every binding",
    )
    missing, _ = regload.query(
        [("127.0.0.1", n.sip_port) for n in survivors], result.acknowledged, DOMAIN
    )
    assert missing == []
    return result


def test_a_node_killed_under_load_loses_no_acknowledged_registration(
    cluster: dict[str, Node],
) -> None:
    # Every REGISTER is acknowledged: when the dead replica did not answer, the next member
    # in rank stood in for it, so no phone was told 503.
    victim = cluster["n2"]
    users = [f"fo{i}" for i in range(3000)]
    result = _register_under(cluster, users, [(1.5, victim.kill)])

    # n2 comes back: it owns its share again and gets it from the others, who drop what
    # they no longer own.
    survivors = [cluster["n0"], cluster["n1"]]
    victim.start()
    wait_until(lambda: all(n.members()["n2"]["state"] == "alive" for n in survivors), 20, "n2 back")

    def balanced() -> bool:
        counts = [n.status()["sip"]["bindings"] for n in cluster.values()]
        return bool(sum(counts) == 2 * len(users) and min(counts) > 0)

    # Its readiness says so: "syncing: N of 2" until its digests agree with both others'.
    wait_until(lambda: victim.status()["sip"]["sync"] == "synced", 30, "n2 synced")
    wait_until(balanced, 30, "every AOR on exactly its two owners again")
    missing, _ = regload.query([("127.0.0.1", victim.sip_port)], result.acknowledged, DOMAIN)
    assert missing == []


def test_a_survivor_stalled_while_a_node_dies_turns_no_phone_away(
    cluster: dict[str, Node],
) -> None:
    """n2 is killed and, a second later, n1 stops for a second (SIGSTOP, as a GC pause or a
    starved host does): for a while neither of n0's co-owners answers. A REGISTER keeps
    asking the owner that did not confirm, and a stand-in, until one holds the copy; a slow
    owner is not a dead one, so the phone is answered 200 late rather than 503. n1 may be
    declared dead during its stall (the local profile's suspicion is shorter than a second):
    what n0 acknowledged alone meanwhile reaches n1, back, by handoff (run again until it
    lands), not at the next repair round."""
    resumed: list[threading.Timer] = []
    _register_under(
        cluster,
        [f"st{i}" for i in range(3000)],
        [(1.5, cluster["n2"].kill), (2.5, lambda: resumed.append(cluster["n1"].pause(1.0)))],
    )
    for timer in resumed:
        timer.join()
