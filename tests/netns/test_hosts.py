"""The whole system on real hosts: one `swimthor join` per network namespace, datacenters,
cut links (both ways, one way, flapping), crashes and restarts on a new address, SIP calls
and DNS answers across hosts.

Needs root, `ip` and `nft` (CI has them; `make test` installs iproute2 and nftables) and skips
with the reason otherwise. Each test builds its own namespaces (`stb-t<pid><n>-*`) and removes
them, with every process in them, whether it passes or fails; every wait is bounded. Times are
only bounded generously, never asserted small: these machines are shared.
"""

from __future__ import annotations

import csv
import itertools
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hosts import DNS_PORT, DOMAIN, SIP_PORT, Hosts, unavailable, wait_until
from sipp_helpers import wait_bound

pytestmark = [pytest.mark.slow, pytest.mark.netns]

_REASON = unavailable()
_counter = itertools.count()
SCENARIOS = Path(__file__).resolve().parent.parent.parent / "swimthor" / "sip" / "scenarios"

# Generous bounds (the local profile declares a crash in about a second).
DETECT = 20.0
HEAL = 30.0


MakeHosts = Callable[[list[str]], Hosts]


@pytest.fixture
def hosts_of(tmp_path: Path) -> Iterator[MakeHosts]:
    if _REASON:
        pytest.skip(_REASON)
    made: list[Hosts] = []

    def make(dcs: list[str]) -> Hosts:
        h = Hosts(tmp_path, dcs, tag=f"t{os.getpid():x}{next(_counter)}")
        h.__enter__()
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            h.__exit__(None, None, None)


def test_join_crash_and_restart_on_a_new_address_takes_its_place_back(hosts_of: MakeHosts) -> None:
    c = hosts_of(["dc1", "dc1", "dc2", "dc2"])
    c.start_all()
    everyone = [h.name for h in c.hosts]
    assert all(set(c.states(i)) == set(everyone) for i in range(4))
    aor = f"sip:carol@{DOMAIN}"
    before = c.owners(0, aor)

    c.kill(3)
    wait_until(lambda: all(c.sees(i, {"h3": "dead"}) for i in range(3)), DETECT, "h3 declared dead")
    assert "h3" not in c.owners(0, aor)

    old = c.hosts[3].addr
    c.restart(3, new_address=True)
    assert c.hosts[3].addr != old
    c.wait_converged(HEAL)
    for i in range(4):
        assert c.members(i)["h3"]["addr"] == f"{c.hosts[3].addr}:7946"
    # Routing is a function of the live set: h3 owns exactly what it owned before.
    assert c.owners(0, aor) == before
    assert c.owners(3, aor) == before


def test_a_datacenter_cut_off_carries_on_and_heals_without_a_lasting_split(
    hosts_of: MakeHosts,
) -> None:
    c = hosts_of(["dc1", "dc1", "dc2", "dc2"])
    c.start_all()
    left, right = [0, 1], [2, 3]
    c.cut_between(left, right)
    # Each side declares the other failed and carries on by itself.
    wait_until(
        lambda: all(c.sees(i, {"h2": "dead", "h3": "dead", "h0": "alive", "h1": "alive"})
                    for i in left)
        and all(c.sees(i, {"h0": "dead", "h1": "dead", "h2": "alive", "h3": "alive"})
                for i in right),
        DETECT,
        "each datacenter to declare the other failed",
    )  # fmt: skip
    # Each side still answers DNS with its own live SIP members only.
    targets = {line.split()[3].split(".")[0] for line in c.dig(0, 0, f"_sip._udp.{DOMAIN}", "SRV")}
    assert targets == {"h0", "h1"}
    c.heal()
    c.wait_converged(HEAL)
    # And it stays whole: once every host has had 20 more probes answered (every member
    # probed several times over, many suspicion timeouts), nobody has lost anyone again.
    acks = [c.status(i)["stats"]["acks_received"] for i in range(4)]
    wait_until(
        lambda: all(c.status(i)["stats"]["acks_received"] >= acks[i] + 20 for i in range(4)),
        HEAL,
        "every host to have 20 more probes answered",
    )
    c.wait_converged(5)


def test_a_one_way_cut_and_a_flapping_link_fail_nobody_for_good(hosts_of: MakeHosts) -> None:
    c = hosts_of(["dc1", "dc1", "dc1", "dc1"])
    c.start_all()
    # h1 cannot send to h2 (h2 can send to h1) for 6 s.
    c.cut(1, 2, oneway=True)
    time.sleep(6)  # the fault held for 6 s is the scenario, not a wait for something
    assert c.net.dropped(1) > 0 and c.net.dropped(2) == 0  # one way only
    c.heal()
    c.wait_converged(HEAL)
    # The link between h0 and h3 flaps: down 1 s, up 1 s, five times.
    for _ in range(5):
        c.cut(0, 3)
        time.sleep(1.0)  # down 1 s: the scenario's flap, not a wait for something
        c.heal()
        time.sleep(1.0)  # up 1 s: the scenario's flap, not a wait for something
    c.wait_converged(HEAL)
    # Any failure declared on the way was refuted: every member is alive everywhere, each
    # with the same incarnation in every view.
    views = [c.members(i) for i in range(4)]
    for name in ("h0", "h1", "h2", "h3"):
        assert len({v[name]["incarnation"] for v in views}) == 1, name


def test_a_paused_host_is_declared_and_takes_its_place_back_when_it_resumes(
    hosts_of: MakeHosts,
) -> None:
    c = hosts_of(["dc1", "dc1", "dc1"])
    c.start_all()
    c.pause(2)  # SIGSTOP: a host that hangs (a VM migration, a stuck disk), not a crash
    wait_until(lambda: all(c.sees(i, {"h2": "dead"}) for i in (0, 1)), DETECT, "h2 declared dead")
    c.resume(2)
    c.wait_converged(HEAL)
    # It refuted with a higher incarnation, the same process still running.
    assert all(c.members(i)["h2"]["incarnation"] > 0 for i in range(3))
    assert c.hosts[2].proc is not None and c.hosts[2].proc.poll() is None


def test_packet_loss_on_one_host_fails_nobody(hosts_of: MakeHosts) -> None:
    c = hosts_of(["dc1", "dc1", "dc1"])
    c.start_all()
    c.loss(2, 20)  # a fifth of what h2 receives is dropped (nftables numgen random)
    time.sleep(8)  # the loss held for 8 s is the scenario, not a wait for something
    dropped = c.net.dropped(2)
    c.heal()
    assert dropped > 0
    c.wait_converged(HEAL)
    for i in range(3):
        failed = [
            e for e in c.events(i) if e.get("event") == "member failed" and e.get("member") != "h2"
        ]
        assert failed == [], failed


def _last_stats(path: Path) -> dict[str, int]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    head, last = rows[0], rows[-1]
    names = {"ok": "SuccessfulCall(C)", "failed": "FailedCall(C)"}
    return {k: int(last[head.index(v)]) for k, v in names.items()}


def _sipp(c: Hosts, i: int, tmp: Path, *args: str, timeout: float = 60) -> dict[str, int]:
    stat = tmp / f"stat-{time.monotonic_ns()}.csv"
    r = c.run(
        i,
        ["sipp", *args, "-nostdin", "-trace_stat", "-stf", str(stat), "-fd", "1"],
        timeout=timeout,
    )
    assert stat.exists(), r.stderr
    return _last_stats(stat)


@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) missing")
@pytest.mark.skipif(shutil.which("dig") is None, reason="dig (Debian bind9-dnsutils) missing")
def test_sip_calls_and_dns_across_hosts_before_and_after_a_host_dies(
    hosts_of: MakeHosts, tmp_path: Path
) -> None:
    c = hosts_of(["dc1", "dc1", "dc2", "dc2"])
    c.start_all()
    everyone = {"h0", "h1", "h2", "h3"}

    # DNS on every host lists every SIP member; each puts its own datacenter first.
    for i in range(4):
        lines = c.dig(i, i, f"_sip._udp.{DOMAIN}", "SRV")
        assert {line.split()[3].split(".")[0] for line in lines} == everyone
        local = {ln.split()[3].split(".")[0] for ln in lines if ln.split()[0] == "10"}
        assert local == {h.name for h in c.hosts if h.dc == c.hosts[i].dc}
        assert c.dig(i, i, f"h{(i + 1) % 4}.node.{DOMAIN}", "A") == [c.hosts[(i + 1) % 4].addr]

    # bob (a sipp UAS in h3's namespace) registers through h1; alice calls from h0's
    # namespace through h0: UAC -> h0 -> bob's first owner -> UAS, on real addresses.
    bob = tmp_path / "bob.csv"
    bob.write_text("SEQUENTIAL\nbob\n")
    callers = tmp_path / "callers.csv"
    callers.write_text("SEQUENTIAL\n" + "".join(f"caller{n}\n" for n in range(20)))
    uas_addr = c.hosts[3].addr
    reg = _sipp(
        c, 3, tmp_path, f"{c.hosts[1].addr}:{SIP_PORT}",
        "-sf", str(SCENARIOS / "register.xml"), "-inf", str(bob), "-key", "domain", DOMAIN,
        "-i", uas_addr, "-p", "5080", "-m", "1",
    )  # fmt: skip
    assert reg["ok"] == 1, reg
    uas = c.background(3, ["sipp", "-sf", str(SCENARIOS / "uas.xml"), "-i", uas_addr, "-p",
                           "5080", "-nostdin"], cwd=tmp_path)  # fmt: skip
    wait_bound(uas, 5080, "bob's sipp UAS", own_namespace=True)  # h3's namespace: it answers

    def call_through(entry: int, n: int) -> dict[str, int]:
        return _sipp(
            c, entry, tmp_path, f"{c.hosts[entry].addr}:{SIP_PORT}",
            "-sf", str(SCENARIOS / "uac.xml"), "-inf", str(callers), "-key", "domain", DOMAIN,
            "-s", "bob", "-i", c.hosts[entry].addr, "-p", "5090", "-m", str(n), "-r", "5",
            "-recv_timeout", "5000",
        )  # fmt: skip

    first = call_through(0, 5)
    assert first["ok"] == 5 and first["failed"] == 0, first

    # The per-user DNS name agrees with routing: bob's owners, first owner first.
    owners = c.owners(0, f"sip:bob@{DOMAIN}")
    srv = c.dig(0, 0, f"_sip._udp.bob.{DOMAIN}.aor.{DOMAIN}", "SRV")
    assert [line.split()[3].split(".")[0] for line in srv] == owners

    # Kill bob's first owner (never the UAS host: bob's phone must live); once it is
    # declared dead, calls through every survivor still reach bob, and DNS forgets it.
    victim = next(int(name[1:]) for name in owners if name != "h3")
    c.kill(victim)
    survivors = [i for i in range(4) if i != victim]
    wait_until(
        lambda: all(c.sees(i, {f"h{victim}": "dead"}) for i in survivors),
        DETECT,
        "the killed owner to be declared dead",
    )
    for i in survivors:
        lines = c.dig(i, i, f"_sip._udp.{DOMAIN}", "SRV")
        assert {line.split()[3].split(".")[0] for line in lines} == everyone - {f"h{victim}"}
    for entry in (i for i in survivors if i != 3):
        stats = call_through(entry, 3)
        assert stats["ok"] == 3 and stats["failed"] == 0, (entry, stats)
    assert DNS_PORT == 8053
