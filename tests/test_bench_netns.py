"""bench/netns_processes.py's namespace helper, and the fault modes of the real-process bench.

The namespace tests need root, `ip` and `nft` (scripts/install-debs.sh installs them) and skip
with the reason otherwise. Every namespace they make is named `stb-t<pid>-*`, lives on the
namespace-local 10.200.0.0/24, and is removed (with the processes in it, by PID) before the
test ends; each test asserts that nothing is left. Nothing here depends on how fast the machine
is: reachability is retried, and timings are only checked to be there, not to be small, or
against another time measured in the same run (a deaf or mute host is declared within the
same run's crash time plus one probe interval). Which of swimthor and HashiCorp serf is faster
is the benchmark's to say, not these tests'; with serf installed they only check that its
column is there.
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
from typing import Any

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


def test_serf_log_lines_become_membership_events(netns: ModuleType) -> None:
    import serf_agent as sa  # bench/peers, on sys.path once netns_processes is loaded

    h = _harness()
    assert (sa.FAILED, sa.SUSPECTED, sa.JOINED, sa.LEFT) == (
        h.FAILED,
        h.SUSPECTED,
        h.JOINED,
        h.LEFT,
    )
    t = 12.5
    stamp = "    2026/12/03 19:05:13 "
    cases = {
        "[INFO] serf: EventMemberFailed: h2 10.200.0.12": (sa.FAILED, "h2"),
        "[INFO] serf: EventMemberJoin: h3 10.200.0.13": (sa.JOINED, "h3"),
        "[INFO] serf: EventMemberLeave: h4 10.200.0.14": (sa.LEFT, "h4"),
        "[INFO] memberlist: Suspect h2 has failed, no acks received": (sa.SUSPECTED, "h2"),
        "[WARN] memberlist: Refuting a suspect message (from: h2)": (sa.REFUTED, "h0"),
        "[WARN] memberlist: Refuting a dead message (from: h1)": (sa.REFUTED, "h0"),
    }
    for line, (event, member) in cases.items():
        assert sa.parse_line("h0", stamp + line, t) == sa.SerfEvent("h0", event, member, t)
    for line in (
        # The agent that timed the suspicion out says so, then logs EventMemberFailed: one
        # declaration, not two.
        "[INFO] memberlist: Marking h2 as failed, suspect timeout reached (2 peer confirmations)",
        "[INFO] agent: Received event: member-failed",
        "[INFO] serf: EventMemberUpdate: h2",
        "[DEBUG] memberlist: Failed ping: h2 (timeout reached)",
    ):
        assert sa.parse_line("h0", stamp + line, t) is None


def _trial(
    netns: ModuleType, scenario: str, swim: dict[str, float], serf: dict[str, float]
) -> dict[str, Any]:
    """A trial record as run_trial makes it: victim h1, healthy h0 and h2, fault at t=100,
    healed at t=112; each system's healthy agents declare h1 at the seconds given."""
    ev, failed, t0, t_heal = netns.Ev, netns.FAILED, 100.0, 112.0
    others = ["h0", "h2"]
    trial: dict[str, Any] = {
        "victim": "h1",
        "fault": scenario,
        "dropped_packets": 7,
        "kill_spread_s": None,
    }
    for label, seen in (("swimthor", swim), ("serf", serf)):
        evs = [ev(o, failed, "h1", t0 + x) for o, x in seen.items()]
        evs.append(ev("h1", failed, "h0", t0 + 3.0))  # the victim's own: not a false failure
        if label == "serf":
            evs.append(ev("h0", failed, "h2", t0 + 4.0))  # a healthy one by a healthy one
        trial[label] = netns.analyse(scenario, evs, "h1", others, t0, t_heal, 1.5)
    return trial


def test_both_columns_their_ratio_and_the_targets(
    netns: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: Any
) -> None:
    trials = [
        _trial(netns, "deaf", {"h0": 4.0, "h2": 4.2}, {"h0": 5.9, "h2": 6.0}),
        _trial(netns, "deaf", {"h0": 4.4, "h2": 4.5}, {"h0": 6.0}),  # serf: not by all
        _trial(netns, "deaf", {"h0": 4.1, "h2": 6.5}, {"h0": 5.0, "h2": 6.1}),
    ]
    assert trials[0]["swimthor"]["all_s"] == pytest.approx(4.2)
    assert trials[0]["swimthor"]["false_failures"] == 0
    assert trials[0]["serf"]["false_failures"] == 1
    assert trials[0]["serf"]["false_failure_detail"][0]["member"] == "h2"
    assert trials[1]["serf"]["all_s"] is None and trials[1]["serf"]["declared_by"] == 1

    def fake_run(args: Any) -> dict[str, Any]:
        assert args.scenario == "deaf" and args.serf_exe == "/usr/bin/serf"
        load = {
            "wire_datagrams_per_node_s": 2.0,
            "wire_bytes_per_node_s": 150.0,
            "cpu_percent_per_agent": 0.5,
        }
        result: dict[str, Any] = netns.summarize(
            args,
            ["swimthor", "serf"],
            trials,
            None,
            {"swimthor": 1.0, "serf": 0.3},
            {"swimthor": [], "serf": [netns.Ev("h0", netns.FAILED, "h1", 1.0)]},
            {"datagrams_per_node_s": 2.0},
            {"swimthor": load, "serf": load},
            None,
            [],
            (0.5, 0.5, 0.5),
        )
        return result

    monkeypatch.setattr(netns, "unavailable", lambda: None)
    monkeypatch.setattr(netns, "serf_binary", lambda: "/usr/bin/serf")
    monkeypatch.setattr(netns, "serf_version", lambda exe: "Serf v0.8.2-dev")
    monkeypatch.setattr(netns, "run", fake_run)
    out = tmp_path / "r.json"
    assert netns.main(["--scenario", "oneway", "--out", str(out)]) == 0  # oneway: deaf
    result = json.loads(out.read_text())
    sw, sf = result["systems"]["swimthor"], result["systems"]["serf"]
    assert sw["all_failed_s"] == {"median": pytest.approx(4.5), "max": pytest.approx(6.5)}
    assert sf["all_failed_s"] == {"median": pytest.approx(6.05), "max": pytest.approx(6.1)}
    assert (sw["detected"], sf["detected"]) == (3, 2)
    assert (sw["declared_by"], sf["declared_by"], sf["healthy_agents"]) == (6, 5, 6)
    assert (sw["false_failures"], sf["false_failures"]) == (0, 3 + 1)  # trials + steady
    assert result["comparison"]["all_failed_median_ratio"] == pytest.approx(4.5 / 6.05, 1e-3)
    # The old keys are swimthor's.
    assert result["detected"] == 3 and result["false_failures"] == 0
    assert result["all_failed_s"]["max"] == pytest.approx(6.5)
    # Judged on the trials where serf declared it by all: the third is later than serf's.
    (v,) = result["verdicts"]
    assert v["target"] == netns.DEAF_TARGET
    assert (v["trials_serf_declared"], v["trials_met"], v["met"]) == (2, 1, False)
    printed = capsys.readouterr().out
    assert "swimthor/serf" in printed and "target: a deaf host" in printed
    assert "NOT MET" in printed
    # A stored result prints the same, without root or a run.
    monkeypatch.setattr(netns, "unavailable", lambda: "not here")
    assert netns.main(["--show", str(out)]) == 0
    assert capsys.readouterr().out.strip() in printed


def test_the_crash_target(netns: ModuleType) -> None:
    def systems(swim: float | None, serf: float | None) -> dict[str, Any]:
        return {
            "swimthor": {"all_failed_s": {"median": swim}},
            "serf": {"all_failed_s": {"median": serf}},
        }

    (met,) = netns.verdicts("crash", [], systems(3.5, 6.0))
    assert met["target"] == netns.CRASH_TARGET
    assert met["bound_s"] == pytest.approx(3.6) and met["met"] is True
    assert netns.verdicts("crash", [], systems(3.7, 6.0))[0]["met"] is False
    assert netns.verdicts("crash", [], systems(3.7, None))[0]["met"] is None
    assert netns.verdicts("mute", [], systems(3.7, 6.0)) == []  # no target for mute
    assert netns.verdicts("crash", [], {"swimthor": {}}) == []  # swimthor alone


def test_without_serf_swimthor_runs_alone_and_says_why(
    netns: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    seen: list[Any] = []

    def fake_run(args: Any) -> dict[str, Any]:
        seen.append(args)
        raise SystemExit(0)  # only the arguments matter here

    monkeypatch.setattr(netns, "unavailable", lambda: None)
    monkeypatch.setattr(netns, "run", fake_run)
    monkeypatch.setattr(netns, "serf_binary", lambda: None)
    with pytest.raises(SystemExit):
        netns.main(["--scenario", "mute"])
    assert seen[-1].serf_exe is None and "apt-get install serf" in seen[-1].serf_skipped
    err = capsys.readouterr().err
    assert "serf skipped" in err and "swimthor runs alone" in err
    monkeypatch.setattr(netns, "serf_binary", lambda: "/usr/bin/serf")
    with pytest.raises(SystemExit):
        netns.main(["--scenario", "crash", "--no-serf"])
    assert seen[-1].serf_exe is None and seen[-1].serf_skipped == "--no-serf"
    assert seen[-1].duration == 30.0  # crash: the longest wait for the declarations
    assert capsys.readouterr().err == ""


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
    argv += ["--no-serf"]  # swimthor's partition behaviour; serf beside it: the tests below
    assert netns.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["scenario"] == "partition" and result["trials"] == 1
    assert result["detected"] == 1 and result["all_failed_s"]["max"] > 0
    assert result["healed"] == 1
    assert result["namespaces_left"] == []
    assert result["dropped_packets"] > 0
    assert result["serf"] is None and result["serf_skipped"] == "--no-serf"
    assert list(result["systems"]) == ["swimthor"] and result["comparison"] is None
    assert netns.namespaces(netns.PREFIX + f"{os.getpid():x}-") == []


PROBE_INTERVAL_S = 1.0  # the lan profile's


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.parametrize("scenario", ["deaf", "mute"])
def test_a_deaf_or_mute_host_is_declared_as_fast_as_a_crash_beside_serf(
    netns: ModuleType, tag: str, tmp_path: Path, scenario: str
) -> None:
    """One crash first, then one deaf (or mute) host, on the same 3 hosts in one run, serf
    beside swimthor when installed: every healthy swimthor agent declares the gray-failed host
    within that run's crash time plus one probe interval, and none declares a healthy one."""
    out = tmp_path / f"{scenario}.json"
    argv = ["--scenario", scenario, "--hosts", "3", "--trials", "1", "--baseline-crash"]
    argv += ["--duration", "10", "--steady", "1", "--settle", "1", "--heal-timeout", "20"]
    argv += ["--tag", tag, "--out", str(out)]
    assert netns.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["scenario"] == scenario and result["trials"] == 1
    assert result["namespaces_left"] == []
    assert netns.namespaces(f"{netns.PREFIX}{tag}-") == []

    crash = result["crash_baseline"]["swimthor"]
    assert crash["declared_by"] == crash["healthy_agents"] == 2
    assert crash["all_s"] is not None
    gray = result["detail"][0]["swimthor"]
    assert gray["declared_by"] == gray["healthy_agents"] == 2, gray
    assert gray["all_s"] <= crash["all_s"] + PROBE_INTERVAL_S, (gray, crash)
    assert result["detail"][0]["dropped_packets"] > 0
    # No healthy member declared by a healthy agent: in the crash, the gray failure, around
    # and between them.
    assert crash["false_failures"] == 0, crash
    assert gray["false_failures"] == 0, gray
    assert result["systems"]["swimthor"]["false_failures"] == 0

    if netns.serf_unavailable() is None:
        assert result["serf"] and result["serf_skipped"] is None
        serf = result["systems"]["serf"]
        for key in ("all_failed_s", "heal_s"):
            for stat in ("median", "max"):
                assert serf[key][stat] is None or isinstance(serf[key][stat], float)
        assert set(result["comparison"]) >= {"all_failed_median_ratio", "all_failed_max_ratio"}
        assert "serf" in result["detail"][0] and "serf" in result["crash_baseline"]
        if scenario == "deaf":
            assert [v["target"] for v in result["verdicts"]] == [netns.DEAF_TARGET]
    else:
        assert result["serf"] is None and "serf" in result["serf_skipped"]


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
