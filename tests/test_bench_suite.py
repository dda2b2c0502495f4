"""bench/suite.py and bench/report.py: the matrices pool their runs correctly, cells that
cannot fit in memory are skipped and said so, and the report renders what the suite wrote.

Runs are tiny simulator runs in this process (a serial stand-in for the worker pool); nothing
here measures time.
"""

from __future__ import annotations

import importlib.util
import json
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
        def Pool(self, jobs: int) -> Any:  # multiprocessing's name
            class P(SerialPool):
                def __enter__(self) -> Any:
                    return self

                def __exit__(self, *a: object) -> None:
                    return None

            return P()

    monkeypatch.setattr(suite.multiprocessing, "get_context", lambda _kind: Ctx())
    # 1000 nodes need ~0.3 GB and run (shrunk to keep the test short); 5000 (~7 GB) and
    # 10000 (~28 GB) do not fit in 4 GB and are listed with the reason.
    real_run_cells = suite.run_cells
    monkeypatch.setattr(
        suite,
        "run_cells",
        lambda cells, pool, curve=False: real_run_cells([_tiny(c, 1) for c in cells], pool, curve),
    )
    assert suite.main(["--full", "--only", "speed", "--no-report", "--jobs", "1"]) == 0
    doc = json.loads((tmp_path / "speed.json").read_text())
    assert [c["nodes"] for c in doc["cells"]] == [1000]
    assert [c["nodes"] for c in doc["skipped"]] == [5000, 10000]
    assert all("GB" in c["skipped"] for c in doc["skipped"])
    assert suite.memory_needed(10000) > 20e9
