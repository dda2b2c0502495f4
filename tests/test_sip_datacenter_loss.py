"""A whole datacenter lost loses no registration and no subscriber: owners are spread over
datacenters (docs/routing.md, "The spread rule").

Six real `swimthor join` agents on loopback, three with `--dc dc1` and three with `--dc dc2`;
30 subscribers added through dc1, 30 users registered by sipp (Debian sip-tester) through dc1;
then every dc1 process is killed -9 at once, and the survivors still list every subscriber and
answer every user's bindings. With the plain ranking, about a third of the AORs had both owners
in dc1 (21 of 30 survived in the run that found it). Every process is killed by PID at the end;
loopback only.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sip_agents import DOMAIN, Node, _free_port, cluster_of, wait_until
from sipp_helpers import SCENARIOS, Sipp

from bench.sip import regload
from swimthor import control

USERS = [f"dcuser{i}" for i in range(30)]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) missing"),
]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Node]]:
    with cluster_of(tmp_path, 6, extra_of=lambda i: ["--dc", "dc1" if i < 3 else "dc2"]) as nodes:
        yield nodes


def test_a_datacenter_lost_loses_no_registration_and_no_subscriber(
    cluster: dict[str, Node], sipp: Sipp
) -> None:
    dc1 = [cluster[f"n{i}"] for i in range(3)]
    dc2 = [cluster[f"n{i}"] for i in range(3, 6)]
    for i in range(30):
        reply = control.call(
            dc1[i % 3].sock, "subscriber.set", {"aor": f"sip:sub{i}@{DOMAIN}", "password": f"pw{i}"}
        )
        assert len(reply["on"]) == 2, reply
    stats = sipp.run(
        f"127.0.0.1:{dc1[0].sip_port}",
        "-sf", str(SCENARIOS / "register.xml"),
        "-inf", str(sipp.users("users.csv", USERS)),
        "-key", "domain", DOMAIN,
        "-i", "127.0.0.1", "-p", str(_free_port()),
        "-m", str(len(USERS)), "-r", "50",
    )  # fmt: skip
    assert stats["ok"] == len(USERS) and stats["failed"] == 0, stats

    # Every AOR has one owner in each datacenter: each side holds one copy of every binding.
    def copies(nodes: list[Node]) -> int:
        return sum(int(n.status()["sip"]["bindings"]) for n in nodes)

    assert copies(dc1) == copies(dc2) == len(USERS)
    names1 = {n.name for n in dc1}
    for i in range(0, 30, 5):  # the `route` command agrees, for subscribers' AORs too
        owners = dc2[0].owners(f"sip:sub{i}@{DOMAIN}")
        assert len(owners) == 2 and len(set(owners) & names1) == 1, owners

    for node in dc1:
        node.kill()
    wait_until(
        lambda: all(n.members()[v.name]["state"] in ("dead", "left") for n in dc2 for v in dc1),
        30,
        "dc2 to declare every dc1 node failed",
    )

    listed = control.call(dc2[0].sock, "subscriber.list")
    assert listed["subscribers"] == sorted(f"sip:sub{i}@{DOMAIN}" for i in range(30)), listed
    assert listed["unanswered"] == []
    missing, _ = regload.query([("127.0.0.1", n.sip_port) for n in dc2], USERS, DOMAIN)
    assert missing == []
