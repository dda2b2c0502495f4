"""bench/netns_processes.py's namespace helper, and the fault modes of the real-process bench.

The namespace tests need root, `ip` and `nft` (scripts/install-debs.sh installs them) and skip
with the reason otherwise. Every namespace they make is named `stb-t<pid>-*`, lives on the
namespace-local 10.200.0.0/24, and is removed (with the processes in it, by PID) before the
test ends; each test asserts that nothing is left. Nothing here depends on how fast the machine
is: reachability is retried, and timings are only checked to be there, not to be small.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the bench scripts import bench/_harness.py
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def netns() -> ModuleType:
    return _load("netns_processes")


@pytest.fixture
def tag(netns: ModuleType) -> Iterator[str]:
    """A namespace tag of this test process; whatever it names is gone after the test."""
    why = netns.unavailable()
    if why:
        pytest.skip(why)
    tag = f"t{os.getpid():x}"
    prefix = f"{netns.PREFIX}{tag}-"
    netns.cleanup(prefix)
    yield tag
    left = netns.cleanup(prefix)
    assert left == []


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=20)
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()}


# ------------------------------------------------------------------ helpers, no root needed


def test_unavailable_names_what_is_missing(
    netns: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netns, "which", lambda cmd: None if cmd == "nft" else f"/usr/sbin/{cmd}")
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    assert "nft" in netns.unavailable()
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert "root" in netns.unavailable()


def test_topology_names_and_addresses_stay_inside_the_prefix(netns: ModuleType) -> None:
    net = netns.Netns(3, tag="x1")
    assert net.hub == "stb-x1-hub"
    assert net.names == ["stb-x1-h0", "stb-x1-h1", "stb-x1-h2"]
    assert net.addrs == ["10.200.0.10", "10.200.0.11", "10.200.0.12"]
    assert net.exec_prefix(1)[-3:] == ["netns", "exec", "stb-x1-h1"]
    with pytest.raises(ValueError):
        netns.Netns(1)
    with pytest.raises(ValueError):
        net.drop_ingress(1, 0)


def _harness() -> ModuleType:
    _load("membership_processes")  # puts bench/ on sys.path
    return importlib.import_module("_harness")


def test_event_helpers() -> None:
    h = _harness()
    ev = h.Ev
    evs = [
        ev("a", h.SUSPECTED, "v", 10.5),
        ev("a", h.FAILED, "v", 14.0),
        ev("b", h.FAILED, "v", 14.2),
        ev("b", h.FAILED, "x", 14.3),
        ev("a", h.RECOVERED, "v", 20.1),
    ]
    assert h.first_times(evs, (h.FAILED,), "v", ["a", "b"], 10.0) == pytest.approx(
        {"a": 4.0, "b": 4.2}
    )
    assert h.first_times(evs, (h.FAILED,), "v", ["a"], 15.0) == {}
    assert not h.all_back(evs, "v", ["a", "b"], 10.0)  # b's last word on v is "failed"
    assert h.all_back(evs, "v", ["a"], 10.0)
    assert h.all_back(evs, "v", ["c"], 10.0)  # c never lost it
    assert h.summary([3.0, None, 1.0, 2.0]) == {"p50": 2.0, "p99": 3.0, "max": 3.0}
    assert h.summary([None]) == {"p50": None, "p99": None, "max": None}
    trials: list[dict[str, object]] = []
    t = h.record_trial(trials, "v", {"a": 2.0, "b": 1.0}, 3, "SIGSTOP")
    assert t["first_s"] == 1.0 and t["all_s"] is None and trials == [t]


def test_membership_processes_names_and_false_failures() -> None:
    mp = _load("membership_processes")
    # kill keeps the name older results have; other faults add theirs.
    assert mp.result_path("lan", 5, 0, "kill").name == "membership_processes_lan_5_busy0.json"
    assert mp.result_path("lan", 5, 0, "stop").name == "membership_processes_lan_5_busy0_stop.json"
    h = _harness()
    evs = [
        h.Ev("a", h.FAILED, "v", 5.0),  # the victim, while it was down: expected
        h.Ev("a", h.FAILED, "w", 6.0),  # another member: false
        h.Ev("b", h.FAILED, "v", 12.0),  # the victim after it was back: false
    ]
    assert [e.t for e in mp.false_failures(evs, "v", 10.0)] == [6.0, 12.0]


# ------------------------------------------------------------- namespaces (root, ip, nft)


def test_namespaces_ping_drop_heal_and_teardown(netns: ModuleType, tag: str) -> None:
    links_before = _root_links()
    net = netns.Netns(2, tag=tag)
    with net:
        assert sorted(netns.namespaces(net.prefix)) == sorted([net.hub, *net.names])
        assert net.reachable(0, 1) and net.reachable(1, 0)
        assert net.rules(1) == 0
        net.drop_ingress(1)
        assert net.rules(1) == 1
        assert not net.reachable(0, 1, attempts=1)
        assert net.dropped(1) >= 1
        net.heal(1)
        assert net.rules(1) == 0
        assert net.reachable(0, 1)
        net.isolate(0)
        assert net.rules(0) == 2
        assert not net.reachable(1, 0, attempts=1)
        net.heal(0)
        assert net.reachable(1, 0)
    assert netns.namespaces(net.prefix) == []
    assert _root_links() == links_before  # no link was ever made in the caller's namespace


def test_cleanup_removes_leftovers_and_their_processes(netns: ModuleType, tag: str) -> None:
    net = netns.Netns(2, tag=tag)
    net.create()  # as an interrupted run would leave it: no teardown
    proc = subprocess.Popen([*net.exec_prefix(1), "sleep", "120"])
    try:
        assert set(netns.namespaces(net.prefix)) == {net.hub, *net.names}
        assert netns.cleanup(net.prefix) == []
        assert netns.namespaces(net.prefix) == []
        assert proc.wait(timeout=20) != 0  # killed by cleanup
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_partition_run_detects_heals_and_cleans_up(
    netns: ModuleType, tag: str, tmp_path: Path
) -> None:
    out = tmp_path / "netns.json"
    argv = ["--scenario", "partition", "--hosts", "3", "--trials", "1", "--duration", "10"]
    argv += ["--steady", "1", "--settle", "1", "--heal-timeout", "60", "--out", str(out)]
    assert netns.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["scenario"] == "partition" and result["trials"] == 1
    assert result["detected"] == 1 and result["all_failed_s"]["max"] > 0
    assert result["healed"] == 1
    assert result["namespaces_left"] == []
    assert result["dropped_packets"] > 0
    assert netns.namespaces(netns.PREFIX + f"{os.getpid():x}-") == []


# ------------------------------------------------------- the real-process fault modes


@pytest.mark.slow
def test_sigstop_is_detected_and_the_agent_comes_back_on_its_own(tmp_path: Path) -> None:
    mp = _load("membership_processes")
    out = tmp_path / "stop.json"
    argv = ["--nodes", "3", "--profile", "lan", "--fault", "stop", "--trials", "1"]
    argv += ["--pause", "12", "--steady", "1", "--settle", "1", "--out", str(out)]
    assert mp.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["fault"] == "stop" and result["pause_s"] == 12
    assert result["detected"] == 1
    assert result["rejoined"] == 1 and result["rejoin_s"]["max"] is not None
    assert result["detail"][0]["suspected_first_s"] is not None


@pytest.mark.slow
def test_sigterm_leaves_exits_zero_and_restarts(tmp_path: Path) -> None:
    mp = _load("membership_processes")
    out = tmp_path / "term.json"
    argv = ["--nodes", "3", "--profile", "lan", "--fault", "term", "--trials", "1"]
    argv += ["--steady", "1", "--settle", "1", "--out", str(out)]
    assert mp.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["fault"] == "term" and result["detected"] == 1
    assert result["exit_codes"] == [0]
    assert result["failed_instead_of_left"] == 0
    assert result["rejoined"] == 1
    assert "all_failed_s" not in result  # a leave is not a failure
