"""bench/suite.py and bench/report.py: the matrices pool their runs correctly, cells that
cannot fit in memory are skipped and said so, and the report renders what the suite wrote.

Runs are tiny simulator runs in this process (a serial stand-in for the worker pool); nothing
here measures time.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


suite = _load("suite")
report = _load("report")


class SerialPool:
    """The part of multiprocessing.Pool the suite uses, in this process."""

    def imap_unordered(self, fn: Any, jobs: list[Any]) -> Any:
        return (fn(j) for j in reversed(jobs))  # any order must do


def _tiny(cell: Any, seeds: int) -> Any:
    sc = replace(cell.scenario, nodes=8, duration=20.0)
    return replace(cell, scenario=sc, seeds=seeds)


def test_cells_pool_every_seed_of_their_own_runs() -> None:
    cells = [_tiny(c, 2) for c in suite.headline(True)] + [
        _tiny(c, 1) for c in suite.crash_scale(True)
    ][:2]
    rows = suite.run_cells(cells, SerialPool())
    assert [r["runs"] for r in rows] == [c.seeds for c in cells]
    for cell, row in zip(cells, rows, strict=True):
        assert row["crashes"] == cell.seeds  # one crash a run
        assert row["detected"] <= row["crashes"]
        # every (crash, survivor) pair of every seed, pooled
        assert len(row["each_failed_samples"]) == row["detected"] * 7
        assert row["each_failed_s"]["p50"] is not None
        for key, value in cell.label.items():
            assert row[key] == value


def test_seeds_differ_within_a_cell() -> None:
    (cell,) = [_tiny(c, 3) for c in suite.headline(True)]
    row = suite.run_cells([cell], SerialPool())[0]
    assert len(set(row["each_failed_samples"])) > 7  # not three copies of one run


def test_cells_too_big_for_memory_are_skipped_and_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suite, "RESULTS", tmp_path)
    monkeypatch.setattr(suite, "memory_available", lambda: 4e9)
    monkeypatch.setattr(suite, "GROUPS", {"speed": suite.speed})

    class Ctx:
        def Pool(self, jobs: int, maxtasksperchild: int | None = None) -> Any:  # its names
            class P(SerialPool):
                def __enter__(self) -> Any:
                    return self

                def __exit__(self, *a: object) -> None:
                    return None

            return P()

    monkeypatch.setattr(suite.multiprocessing, "get_context", lambda _kind: Ctx())
    # 1000 nodes need ~0.8 GB and 5000 (shared records) ~3 GB: they run (shrunk to keep the
    # test short); 10000 (~12 GB) does not fit in 4 GB and is listed with the reason.
    real_run_cells = suite.run_cells
    monkeypatch.setattr(
        suite,
        "run_cells",
        lambda cells, pool, curve=False, **kw: real_run_cells(
            [_tiny(c, 1) for c in cells], pool, curve, **kw
        ),
    )
    assert suite.main(["--full", "--only", "speed", "--no-report", "--jobs", "1"]) == 0
    doc = json.loads((tmp_path / "speed.json").read_text())
    assert [c["nodes"] for c in doc["cells"]] == [1000, 5000]
    assert [c["nodes"] for c in doc["skipped"]] == [10000]
    assert all("GB" in c["skipped"] and "120 B" in c["skipped"] for c in doc["skipped"])
    # the speed group records each run's peak memory (a fresh worker each, in the suite)
    assert all(c["peak_rss_bytes"] > 1e6 for c in doc["cells"])
    # and which code it ran: this checkout's commit
    head = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"],
        cwd=BENCH,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert doc["commit"] == head and isinstance(doc["dirty"], bool)
    assert doc["finished_utc"].endswith("Z")


def test_report_says_which_code_each_group_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = tmp_path / "sim"
    sim.mkdir()
    _write(
        sim, "pauses", [], commit="0123456789ab", dirty=False, finished_utc="2026-12-03T22:00:00Z"
    )
    _write(sim, "churn", [], commit="ba9876543210", dirty=True, finished_utc="2026-12-03T23:00:00Z")
    _write(sim, "bootstrap", [])  # a file from before the suite recorded it
    text = _render(tmp_path, monkeypatch)
    rows = {ln.split(" | ")[0].lstrip("| "): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "0123456789ab" in rows["pauses"] and "uncommitted" not in rows["pauses"]
    assert "ba9876543210 (uncommitted changes)" in rows["churn"]
    assert "not recorded" in rows["bootstrap"]


def test_memory_per_record_drops_where_the_cores_share_one_view() -> None:
    assert suite.SHARED_RECORDS_ABOVE == 1000
    assert suite.memory_needed(1000) == 760 * 1000**2
    assert suite.memory_needed(1000, shared=True) == 120 * 1000**2
    assert suite.memory_needed(4000) == 120 * 4000**2  # measured 1.41 GB peak for 10 s
    assert 9e9 < suite.memory_needed(10000) <= 16e9


def _job(nodes: int) -> Any:
    return (0, suite.Scenario(nodes=nodes), False, False)


def test_runs_too_big_to_go_side_by_side_run_in_waves() -> None:
    big, mid, small = _job(10000), _job(5000), _job(1000)
    # 16 GB, two workers: 12 GB runs alone, then 3 GB and 0.8 GB ones side by side
    waves = suite._waves([big, mid, small, small], 2, 16e9)
    assert [[j[1].nodes for j in w] for w in waves] == [[10000], [5000, 1000, 1000]]
    # 5 GB: two 3 GB runs do not fit together
    waves = suite._waves([mid, mid, small], 2, 5e9)
    assert [[j[1].nodes for j in w] for w in waves] == [[5000], [5000], [1000]]
    assert suite._waves([small, small], 2, float("inf")) == [[small, small]]
    assert suite._waves([], 2, 1e9) == []


def test_the_10000_member_crash_cell_is_in_speed_and_crash_scale_at_full() -> None:
    for group in (suite.speed, suite.crash_scale):
        (cell,) = [c for c in group(False) if c.scenario.nodes == 10000]
        sc = cell.scenario
        assert cell.seeds == 1 and sc.duration == 60.0 and sc.loss == 0.01
        assert [(f.kind, f.at, f.count) for f in sc.faults] == [("crash", 10.0, 1)]
        assert sc.shares_records
        assert not [c for c in group(True) if c.scenario.nodes >= 5000]
    assert {"speed"} == suite.FRESH_WORKERS


def test_gray_group_is_issue_17s_cells() -> None:
    full = list(suite.gray(False))
    expected = [
        ("deaf", "deaf:1@10+30", 60.0),
        ("mute", "mute:1@10+30", 60.0),
        ("crash", "crash:1@10", 60.0),
        ("flipflop", "flipflop:1@5+60/10", 75.0),
        ("partial deaf", "deaf:2@5+40/60%", 60.0),
    ]
    assert [(c.label["nodes"], c.label["kind"], c.label["fault"]) for c in full] == [
        (n, kind, spec) for n in (20, 100) for kind, spec, _ in expected
    ]
    for c in full:
        sc = c.scenario
        assert c.group == "gray" and c.seeds == 10
        assert sc.profile == "lan" and sc.loss == 0.01 and sc.jitter == 0.5
        assert sc.duration == dict((k, d) for k, _, d in expected)[c.label["kind"]]
        assert sc.nodes == c.label["nodes"]
        assert sc.faults == (suite.parse_fault(c.label["fault"]),)
    # the same seeds in every cell of a size: the crash hits the member the deaf one was
    assert len({c.scenario.seed for c in full}) == 1
    by = {c.label["kind"]: c.scenario.faults[0] for c in full if c.label["nodes"] == 20}
    assert (by["deaf"].at, by["deaf"].duration, by["deaf"].loss) == (10.0, 30.0, 1.0)
    assert (by["mute"].kind, by["mute"].loss) == ("mute", 1.0)
    assert (by["flipflop"].at, by["flipflop"].duration, by["flipflop"].period) == (5.0, 60.0, 10.0)
    partial = by["partial deaf"]
    assert (partial.kind, partial.count, partial.loss) == ("deaf", 2, 0.6)
    quick = list(suite.gray(True))
    assert [c.label["nodes"] for c in quick] == [20] * 5
    assert all(c.seeds == 1 for c in quick)
    assert "gray" in suite.GROUPS and "rapid" in suite.GROUPS


def _fake_run(
    *,
    kinds: dict[str, tuple[list[float], list[float], int, int]] | None = None,
    declarations: dict[str, dict[str, float]] | None = None,
    healthy: int = 0,
    held: int = 0,
    peak: float | None = None,
) -> dict[str, Any]:
    """One run as `_one` returns it: kinds maps a kind to (each_failed, all_failed samples,
    outages, detected)."""
    samples: dict[str, list[float]] = {
        "first_suspect": [],
        "each_failed": [],
        "all_failed": [],
        "dissemination": [],
    }
    by_kind = {}
    for kind, (each, all_, outages, detected) in (kinds or {}).items():
        samples[f"each_failed:{kind}"] = each
        samples[f"all_failed:{kind}"] = all_
        by_kind[kind] = {"count": detected, "crashes": outages}
    out: dict[str, Any] = {
        "samples": samples,
        "bootstrap_s": None,
        "detection": {"crashes": 0, "count": 0},
        "false_failures": healthy,
        "false_suspicions": 0,
        "load": {"msgs_per_node_s": 2.0, "bytes_per_node_s": 80.0, "max_msgs_per_node_s": 3.0},
        "converged": True,
        "wall_s": 0.5,
        "detection_by_kind": by_kind,
        "declarations": declarations or {},
        "healthy_false_failures": healthy,
        "healthy_held": held,
    }
    if peak is not None:
        out["peak_rss_bytes"] = peak
    return out


def _dec(mx: float, mean: float, share_mean: float, share_min: float) -> dict[str, float]:
    return {
        "members": 1,
        "max": mx,
        "mean": mean,
        "out_share_mean": share_mean,
        "out_share_min": share_min,
    }


def _gray_cell(label: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    (cell,) = [c for c in suite.gray(True) if c.label["kind"] == label["kind"]]
    row: dict[str, Any] = suite.pool_cell(replace(cell, label=label), runs)
    return row


def test_pool_cell_pools_kinds_declarations_and_healthy_counts() -> None:
    (cell,) = [c for c in suite.gray(True) if c.label["kind"] == "deaf"]
    runs = [
        _fake_run(
            kinds={"deaf": ([4.0, 5.0], [5.0], 1, 1), "crash": ([6.0], [6.0], 1, 1)},
            declarations={"flipflop": _dec(2, 1.0, 0.5, 0.4), "lossy": _dec(1, 0.5, 0.2, 0.1)},
            healthy=2,
            held=1,
            peak=2e9,
        ),
        _fake_run(
            kinds={"deaf": ([3.0, 7.0], [], 1, 0)},
            declarations={"flipflop": _dec(1, 0.5, 0.7, 0.2)},
            held=3,
            peak=3e9,
        ),
        _fake_run(kinds={"deaf": ([4.5, 4.6], [4.6], 1, 1)}),
    ]
    row = suite.pool_cell(cell, runs)
    deaf = row["detection_by_kind"]["deaf"]
    assert (deaf["crashes"], deaf["detected"]) == (3, 2)
    assert deaf["each_failed_s"] == {"p50": 4.5, "p99": 7.0, "max": 7.0}
    assert deaf["all_failed_s"] == {"p50": 4.6, "p99": 5.0, "max": 5.0}
    crash = row["detection_by_kind"]["crash"]
    assert (crash["crashes"], crash["detected"], crash["all_failed_s"]["p50"]) == (1, 1, 6.0)
    ff = row["declarations"]["flipflop"]
    assert ff == {
        "runs": 2,
        "members": 2,
        "max": 2,  # max of the runs' max
        "mean": 0.75,  # mean of the runs' means
        "out_share_mean": 0.6,
        "out_share_min": 0.2,  # the least of the runs' least
    }
    assert row["declarations"]["lossy"]["runs"] == 1
    assert row["healthy_false_failures"] == 2
    assert row["runs_with_healthy_false_failure"] == 1
    assert row["healthy_held"] == 4
    assert row["peak_rss_bytes"] == 3e9
    assert row["kind"] == "deaf" and row["runs"] == 3
    # nothing of the kind: empty, not missing
    plain = suite.pool_cell(cell, [_fake_run()])
    assert plain["detection_by_kind"] == {} and plain["declarations"] == {}
    assert plain["peak_rss_bytes"] is None and plain["runs_with_healthy_false_failure"] == 0


def test_gray_cells_pool_what_the_simulator_measures() -> None:
    cells = [replace(c, scenario=replace(c.scenario, nodes=8)) for c in suite.gray(True)]
    rows = {r["kind"]: r for r in suite.run_cells(cells, SerialPool())}
    for kind in ("deaf", "mute", "crash"):
        d = rows[kind]["detection_by_kind"][kind]
        assert d["crashes"] == 1 and d["each_failed_s"]["p50"] is not None
    assert set(rows["flipflop"]["declarations"]) == {"flipflop"}
    assert set(rows["partial deaf"]["declarations"]) == {"deaf"}
    assert rows["partial deaf"]["declarations"]["deaf"]["members"] == 2


def _write(sim: Path, group: str, cells: list[dict[str, Any]], **extra: Any) -> None:
    doc = {"group": group, "quick": False, "cells": cells, "skipped": [], "elapsed_s": 1.0}
    (sim / f"{group}.json").write_text(json.dumps({**doc, **extra}))


def _render(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "SIM", tmp_path / "sim")
    monkeypatch.setattr(report, "plots", lambda figs: [])
    assert report.main([]) == 0
    return (tmp_path / "REPORT.md").read_text()


def _target(text: str, name: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"| {name} |")]
    return line


def test_report_renders_gray_rapid_and_the_new_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = tmp_path / "sim"
    sim.mkdir()
    gray = []
    for n, base in ((20, 5.0), (100, 5.5)):
        gray += [
            _gray_cell(
                {"nodes": n, "kind": "deaf", "fault": "deaf:1@10+30"},
                [_fake_run(kinds={"deaf": ([base - 0.2], [base], 1, 1)})] * 2,
            ),
            _gray_cell(
                {"nodes": n, "kind": "mute", "fault": "mute:1@10+30"},
                [_fake_run(kinds={"mute": ([base], [base + 0.3], 1, 1)})] * 2,
            ),
            _gray_cell(
                {"nodes": n, "kind": "crash", "fault": "crash:1@10"},
                [_fake_run(kinds={"crash": ([base - 0.5], [base - 0.1], 1, 1)})] * 2,
            ),
            _gray_cell(
                {"nodes": n, "kind": "flipflop", "fault": "flipflop:1@5+60/10"},
                [_fake_run(declarations={"flipflop": _dec(1, 0.9, 0.81, 0.73)}, held=1)] * 2,
            ),
            _gray_cell(
                {"nodes": n, "kind": "partial deaf", "fault": "deaf:2@5+40/60%"},
                [_fake_run(declarations={"deaf": _dec(0, 0.0, 0.0, 0.0)})] * 2,
            ),
        ]
    _write(sim, "gray", gray)
    rapid = [
        {
            **suite.pool_cell(
                suite.Cell("rapid", {}, suite.Scenario(), 1),
                [_fake_run(declarations={kind: _dec(mx, 1.0, 0.9, 0.8)})],
            ),
            "case": case,
            "nodes": 1000,
        }
        for case, kind, mx in (("1% at 80% loss", "lossy", 1), ("10 flip-flopping", "flipflop", 2))
    ]
    crashes = suite.pool_cell(suite.Cell("rapid", {}, suite.Scenario(), 1), [_fake_run()])
    crashes.update(
        case="10 crashes at once",
        nodes=1000,
        crashes=10,
        detected=10,
        each_failed_s={"p50": 5.9, "p99": 6.5, "max": 6.7},
        all_failed_s={"p50": 6.1, "p99": 6.7, "max": 6.7},
    )
    _write(sim, "rapid", [*rapid, crashes])
    speed = {**crashes, "nodes": 10000, "wall_s": 250.0, "peak_rss_bytes": 11.5e9}
    _write(sim, "speed", [speed])
    lg = {**crashes, "lifeguard": True, "nodes": 50, "loss": 0.01, "starved": 0.1}
    lg.update(runs=200, runs_with_false_failure=1)
    _write(sim, "lifeguard", [lg])
    text = _render(tmp_path, monkeypatch)

    assert "## Gray failures" in text and "## Rapid's scenarios" in text
    gray_target = _target(text, report.GRAY_TARGET)
    assert "N=20: deaf 5.00 s (2/2 declared by all), mute 5.30 s" in gray_target
    assert "vs crash 4.90 s + 1 s" in gray_target and gray_target.endswith("— met |")
    rapid_target = _target(text, report.RAPID_TARGET)
    assert "1% at 80% loss: most declarations per observer 1" in rapid_target
    assert "10 flip-flopping: most declarations per observer 2" in rapid_target
    assert "healthy declared 0" in rapid_target and "p50 5.90 s (10/10)" in rapid_target
    assert rapid_target.endswith("— met |")
    assert "1/200 runs (0.5%)" in _target(text, report.LIFEGUARD_TARGET)
    big = _target(text, report.TEN_THOUSAND_TARGET)
    assert "250.0 s wall, 11.50 GB peak RSS — met" in big

    section = text.split("## Gray failures")[1].split("\n## ")[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| 20 ") or ln.startswith("| 100 ")]
    assert len(rows) == 10
    deaf = rows[0].split(" | ")
    assert deaf[1:7] == ["`deaf:1@10+30`", "2/2", "5.00 s", "5.00 s", "5.00 s", "4.90 s / 4.90 s"]
    flip = rows[3].split(" | ")
    assert flip[2] == "-" and flip[7:11] == ["1", "0.90", "81%", "73%"]
    assert flip[12] == "2"  # healthy held, summed over the two runs
    rapid_section = text.split("## Rapid's scenarios")[1].split("\n## ")[0]
    (lossy,) = [ln for ln in rapid_section.splitlines() if ln.startswith("| 1% at 80% loss")]
    assert "| 1 | 1.00 | 90% | 80% | 0 |" in lossy
    (crash_row,) = [ln for ln in rapid_section.splitlines() if ln.startswith("| 10 crashes")]
    assert "| 10/10 | 5.90 s | 6.10 s |" in crash_row
    assert "11.50 GB" in text.split("## Simulator speed")[1]


def test_report_says_not_run_where_data_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sim").mkdir()
    text = _render(tmp_path, monkeypatch)
    for name in (
        report.GRAY_TARGET,
        report.RAPID_TARGET,
        report.LIFEGUARD_TARGET,
        report.TEN_THOUSAND_TARGET,
    ):
        assert _target(text, name).endswith("| not run |")
    assert "## Gray failures\n\nnot run" in text
    # a rapid file from before the new columns: the parts it lacks are not run, no verdict
    crashes = suite.pool_cell(suite.Cell("rapid", {}, suite.Scenario(), 1), [_fake_run()])
    old = {k: v for k, v in crashes.items() if k not in ("declarations", "healthy_false_failures")}
    _write(tmp_path / "sim", "rapid", [{**old, "case": "1% at 80% loss", "nodes": 1000}])
    _write(
        tmp_path / "sim",
        "speed",
        [],
        skipped=[{"nodes": 10000, "skipped": "needs about 12 GB of member records a run"}],
    )
    text = _render(tmp_path, monkeypatch)
    rapid_target = _target(text, report.RAPID_TARGET)
    assert "declarations not run" in rapid_target and "healthy declared not run" in rapid_target
    assert rapid_target.endswith("partly not run |")
    big = _target(text, report.TEN_THOUSAND_TARGET)
    assert big.endswith("| not run: needs about 12 GB of member records a run |")
