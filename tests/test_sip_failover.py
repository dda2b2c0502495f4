"""No acknowledged registration is lost when a node dies under load, and a node that comes
back gets its addresses-of-record back.

Three real agents (local profile); a client that records which users got a 200
(bench/sip/regload.py, standard library only) registers users through two of them while the
third is killed -9; afterwards every acknowledged user is asked for (a REGISTER without
Contact) through the survivors. Every process is killed by PID at the end; loopback only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sip_agents import DOMAIN, Node, cluster_of, wait_until

from bench.sip import regload

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Node]]:
    with cluster_of(tmp_path, 3) as nodes:
        yield nodes


def test_a_node_killed_under_load_loses_no_acknowledged_registration(
    cluster: dict[str, Node],
) -> None:
    import threading

    survivors = [cluster["n0"], cluster["n1"]]
    victim = cluster["n2"]
    users = [f"fo{i}" for i in range(3000)]
    timer = threading.Timer(1.5, victim.kill)
    timer.start()
    try:
        result = regload.load(
            [("127.0.0.1", n.sip_port) for n in survivors], users, DOMAIN, rate=600
        )
    finally:
        timer.cancel()
    # Every REGISTER was acknowledged: when the dead replica did not answer, the next member
    # in rank stood in for it, so no phone was told 503.
    assert len(result.acknowledged) == len(users), (result.refused, result.timed_out[:5])
    wait_until(lambda: all(n.members()["n2"]["state"] == "dead" for n in survivors), 20, "n2 dead")
    missing, _ = regload.query(
        [("127.0.0.1", n.sip_port) for n in survivors], result.acknowledged, DOMAIN
    )
    assert missing == []
    # With two live nodes and R = 2, each holds every binding once handoff has run.
    wait_until(
        lambda: all(n.status()["sip"]["bindings"] == len(users) for n in survivors),
        20,
        "both survivors to hold every binding",
    )

    # n2 comes back: it owns its share again and gets it from the others, who drop what
    # they no longer own.
    victim.start()
    wait_until(lambda: all(n.members()["n2"]["state"] == "alive" for n in survivors), 20, "n2 back")

    def balanced() -> bool:
        counts = [n.status()["sip"]["bindings"] for n in cluster.values()]
        return bool(sum(counts) == 2 * len(users) and min(counts) > 0)

    wait_until(balanced, 30, "every AOR on exactly its two owners again")
    missing, _ = regload.query([("127.0.0.1", victim.sip_port)], result.acknowledged, DOMAIN)
    assert missing == []
