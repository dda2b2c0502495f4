"""The failure-injection benchmark suite on the simulator (`make bench`, `make bench-quick`).

Every scenario group below runs the real membership cores in `swimthor.sim` over seeded
networks and faults, several seeds per cell, on all cores of the machine. Each group writes
`bench/results/sim/<group>.json` (one entry per cell: its parameters, the pooled samples'
p50/p99/max, false failures, runs with any false failure, load, wall time); `bench/report.py`
turns them into `bench/results/REPORT.md` and PNG plots.

    python bench/suite.py --quick            # about five minutes, everything reduced
    python bench/suite.py --full             # the whole matrix: hours
    python bench/suite.py --only lifeguard   # one group (see GROUPS)
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from swimthor.sim import Fault, Scenario, run

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "sim"


@dataclass(frozen=True)
class Cell:
    """One point of a matrix: a scenario run over `seeds` seeds, results pooled."""

    group: str
    label: dict[str, Any]
    scenario: Scenario
    seeds: int


@dataclass
class Pooled:
    runs: int = 0
    first_suspect: list[float] = field(default_factory=list)
    each_failed: list[float] = field(default_factory=list)
    all_failed: list[float] = field(default_factory=list)
    dissemination: list[float] = field(default_factory=list)
    bootstrap: list[float] = field(default_factory=list)
    crashes: int = 0
    detected: int = 0
    false_failures: int = 0
    runs_with_false_failure: int = 0
    false_suspicions: int = 0
    msgs: list[float] = field(default_factory=list)
    bytes: list[float] = field(default_factory=list)
    max_msgs: list[float] = field(default_factory=list)
    converged: int = 0
    wall: float = 0.0
    informed: list[list[float]] = field(default_factory=list)


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[max(0, math.ceil(q * len(s)) - 1)], 4)


def stats(xs: list[float]) -> dict[str, float | None]:
    return {"p50": pct(xs, 0.5), "p99": pct(xs, 0.99), "max": round(max(xs), 4) if xs else None}


# Each simulated core keeps a record of every member, so a run needs memory in N^2: measured
# 1.14 GB at 2000 nodes after warm-up, but 19 GB resident for a 5000-node run (killed by the
# kernel's OOM killer on this 24 GB machine: allocator fragmentation from the millions of
# short-lived event copies of the warm-up). 760 bytes per record is that measurement. A cell
# that would not fit (with two workers) is skipped and listed, not swapped or killed.
BYTES_PER_RECORD = 760


def memory_needed(nodes: int) -> float:
    return BYTES_PER_RECORD * nodes * nodes


def memory_available() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def _one(args: tuple[int, Scenario, bool]) -> tuple[int, dict[str, Any]]:
    index, scenario, keep_curve = args
    r = run(scenario)
    out = r.to_json()
    out["samples"] = r.samples
    if keep_curve:
        out["informed"] = r.informed_curve()
    return index, out


def run_cells(cells: list[Cell], pool: Any, curve: bool = False) -> list[dict[str, Any]]:
    """Every seed of every cell in one pool pass (a group's big cells run side by side),
    then each cell's runs pooled."""
    jobs = [
        (k, replace(cell.scenario, seed=cell.scenario.seed + i), curve and i == 0)
        for k, cell in enumerate(cells)
        for i in range(cell.seeds)
    ]
    # Biggest first, so the long runs do not end up alone at the end.
    jobs.sort(key=lambda j: -j[1].nodes * j[1].duration)
    results: list[list[dict[str, Any]]] = [[] for _ in cells]
    for k, res in pool.imap_unordered(_one, jobs):
        results[k].append(res)
    return [pool_cell(cell, res) for cell, res in zip(cells, results, strict=True)]


def pool_cell(cell: Cell, results: list[dict[str, Any]]) -> dict[str, Any]:
    p = Pooled()
    for res in results:
        p.runs += 1
        s = res["samples"]
        p.first_suspect += s["first_suspect"]
        p.each_failed += s["each_failed"]
        p.all_failed += s["all_failed"]
        p.dissemination += s["dissemination"]
        if res.get("bootstrap_s") is not None:
            p.bootstrap.append(res["bootstrap_s"])
        p.crashes += res["detection"]["crashes"]
        p.detected += res["detection"]["count"]
        p.false_failures += res["false_failures"]
        p.runs_with_false_failure += 1 if res["false_failures"] else 0
        p.false_suspicions += res["false_suspicions"]
        load = res["load"]
        if load["msgs_per_node_s"] is not None:
            p.msgs.append(load["msgs_per_node_s"])
            p.bytes.append(load["bytes_per_node_s"])
            p.max_msgs.append(load["max_msgs_per_node_s"] or 0.0)
        p.converged += 1 if res["converged"] else 0
        p.wall += res["wall_s"]
        if "informed" in res:
            p.informed.append(res["informed"])

    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 3) if xs else None

    return {
        **cell.label,
        "runs": p.runs,
        "crashes": p.crashes,
        "detected": p.detected,
        "first_suspect_s": stats(p.first_suspect),
        "each_failed_s": stats(p.each_failed),
        "all_failed_s": stats(p.all_failed),
        "dissemination_s": stats(p.dissemination),
        "bootstrap_s": stats(p.bootstrap) if p.bootstrap else None,
        "false_failures": p.false_failures,
        "runs_with_false_failure": p.runs_with_false_failure,
        "false_suspicions": p.false_suspicions,
        "msgs_per_node_s": mean(p.msgs),
        "bytes_per_node_s": mean(p.bytes),
        "max_msgs_per_node_s": max(p.max_msgs) if p.max_msgs else None,
        "converged_runs": p.converged,
        "wall_s": round(p.wall, 2),
        "virtual_s_per_run": cell.scenario.duration,
        "each_failed_samples": sorted(round(x, 4) for x in p.each_failed)[:20000],
        "informed_curves": p.informed,
    }


# ---------------------------------------------------------------------- the matrices


def crash_scale(quick: bool) -> Iterator[Cell]:
    """Crash detection against cluster size and loss (lan profile, 2 ms ± 1 ms)."""
    sizes = [10, 100] if quick else [10, 100, 1000, 5000]
    losses = [0.0, 0.01] if quick else [0.0, 0.01, 0.05, 0.10]
    for n in sizes:
        for loss in losses:
            seeds = 1 if quick else {10: 30, 100: 30, 1000: 4, 5000: 1}[n]
            sc = Scenario(
                nodes=n,
                loss=loss,
                jitter=0.5,
                duration=40.0 if n < 5000 else 30.0,
                faults=(Fault("crash", at=10.0),),
                seed=100,
            )
            yield Cell("crash_scale", {"nodes": n, "loss": loss}, sc, seeds)


def headline(quick: bool) -> Iterator[Cell]:
    """The published setup: N = 100, 1% loss, 2 ms ± 1 ms, lan profile, 30 seeds."""
    sc = Scenario(
        nodes=100,
        loss=0.01,
        jitter=0.5,
        duration=40.0,
        faults=(Fault("crash", at=10.0),),
        seed=1000,
    )
    yield Cell("headline", {"nodes": 100, "loss": 0.01}, sc, 2 if quick else 30)


def lifeguard(quick: bool) -> Iterator[Cell]:
    """kinship's Lifeguard grid: N in {50, 200}, loss {1,3,5}%, starved share {0,1,5,10}%
    (inbound handled U(0.5, 2.5) s late all run), one healthy member crashed at 60 s of
    120 s, Lifeguard on and off."""
    sizes = [50] if quick else [50, 200]
    losses = [0.01, 0.05] if quick else [0.01, 0.03, 0.05]
    shares = [0.0, 0.10] if quick else [0.0, 0.01, 0.05, 0.10]
    for n in sizes:
        for loss in losses:
            for share in shares:
                for lg in (True, False):
                    faults: list[Fault] = [Fault("crash", at=60.0)]
                    starved = max(1, round(share * n)) if share else 0
                    if starved:
                        faults.insert(0, Fault("slow", at=0.0, count=starved, duration=120.0))
                    sc = Scenario(
                        nodes=n,
                        loss=loss,
                        jitter=0.5,
                        duration=120.0,
                        faults=tuple(faults),
                        lifeguard=lg,
                        seed=2000,
                    )
                    seeds = 1 if quick else (20 if n == 50 else 4)
                    label = {"nodes": n, "loss": loss, "starved": share, "lifeguard": lg}
                    yield Cell("lifeguard", label, sc, seeds)


def pauses(quick: bool) -> Iterator[Cell]:
    """SIGSTOP-like pauses of one member: shorter and longer than the suspicion timeout."""
    for d in [3.0, 20.0] if quick else [1.0, 3.0, 8.0, 20.0]:
        sc = Scenario(
            nodes=50,
            loss=0.01,
            duration=60.0,
            faults=(Fault("pause", at=10.0, duration=d),),
            seed=3000,
        )
        yield Cell("pauses", {"nodes": 50, "pause_s": d}, sc, 1 if quick else 10)


def rapid(quick: bool) -> Iterator[Cell]:
    """The Rapid paper's scenarios: 1% of members with 80% loss on their links; 10 members
    flip-flopping 20 s on / 20 s off; 10 crashes at once."""
    n = 50 if quick else 1000
    seeds = 1 if quick else 3
    yield Cell(
        "rapid",
        {"case": "1% at 80% loss", "nodes": n},
        Scenario(
            nodes=n,
            duration=60.0,
            seed=4000,
            faults=(Fault("lossy", at=0.0, count=max(1, n // 100), duration=60.0, loss=0.8),),
        ),
        seeds,
    )
    yield Cell(
        "rapid",
        {"case": "10 flip-flopping 20 s", "nodes": n},
        Scenario(
            nodes=n,
            duration=80.0,
            seed=4100,
            faults=(Fault("flipflop", at=0.0, count=10, duration=80.0, period=40.0),),
        ),
        seeds,
    )
    yield Cell(
        "rapid",
        {"case": "10 crashes at once", "nodes": n},
        Scenario(nodes=n, duration=40.0, seed=4200, faults=(Fault("crash", at=10.0, count=10),)),
        seeds,
    )


def datacenters(quick: bool) -> Iterator[Cell]:
    """Three datacenters (1 ms inside, 40 ms between), a crash in one, against one dc."""
    n = 99
    seeds = 1 if quick else 20
    for dcs in (1, 3):
        sc = Scenario(
            nodes=n,
            dcs=dcs,
            rtt_intra=0.001,
            rtt_inter=0.040,
            loss=0.01,
            duration=40.0,
            faults=(Fault("crash", at=10.0),),
            seed=5000,
        )
        yield Cell("datacenters", {"nodes": n, "dcs": dcs}, sc, seeds)


def bootstrap(quick: bool) -> Iterator[Cell]:
    """N members join through one seed within a second; until every one sees N alive."""
    for n in [100] if quick else [1000, 2000]:
        # 25 s: the target is 20 s; the O(N^2) formation traffic makes longer runs costly.
        sc = Scenario(nodes=n, bootstrap=True, duration=25.0, seed=6000)
        yield Cell("bootstrap", {"nodes": n}, sc, 1 if quick else (2 if n <= 1000 else 1))


def churn(quick: bool) -> Iterator[Cell]:
    """Continuous churn: a member restarts every 2 s (down 4 s), some at new addresses."""
    n = 50 if quick else 200
    faults = tuple(
        Fault("restart", at=5.0 + 2.0 * i, duration=4.0, new_addr=i % 2 == 1) for i in range(20)
    )
    sc = Scenario(nodes=n, loss=0.01, duration=60.0, faults=faults, seed=7000)
    yield Cell("churn", {"nodes": n, "restarts": len(faults)}, sc, 1 if quick else 5)


def dissemination(quick: bool) -> Iterator[Cell]:
    """How fast a failure declaration reaches every member of a 1000-member cluster."""
    sc = Scenario(nodes=1000, loss=0.01, duration=30.0, faults=(Fault("crash", at=5.0),), seed=8000)
    yield Cell("dissemination", {"nodes": 1000}, sc, 1 if quick else 5)


def speed(quick: bool) -> Iterator[Cell]:
    """Simulator speed: wall time for N nodes x 60 virtual seconds, one crash."""
    for n in [1000] if quick else [1000, 5000, 10000]:
        sc = Scenario(
            nodes=n,
            loss=0.01,
            duration=60.0,
            faults=(Fault("crash", at=20.0),),
            seed=9000,
            warmup_max=30.0,
        )
        yield Cell("speed", {"nodes": n}, sc, 1)


def tradeoff(quick: bool) -> Iterator[Cell]:
    """How the defaults were chosen: detection time against false failures against load, on
    the hardest Lifeguard cell (N = 50, 3% loss, 10% starved, a crash at 60 s of 120 s) and on
    the headline setup, for the `lan` profile, variations of its settings, and memberlist's
    LAN profile with its own rules."""
    variants: list[tuple[str, str, dict[str, Any]]] = [
        ("lan (default)", "lan", {}),
        ("lan, suspicion floor 2.5 s", "lan", {"suspicion_min_floor": 2.5}),
        ("lan, suspicion floor 5 s", "lan", {"suspicion_min_floor": 5.0}),
        ("lan, probe every 0.5 s", "lan", {"probe_interval": 0.5}),
        ("lan, no final check", "lan", {"suspect_final_check": False}),
        ("lan, random probe order", "lan", {"probe_schedule": "random"}),
        ("memberlist-lan", "memberlist-lan", {}),
    ]
    for label, prof, overrides in variants:
        starved = Scenario(
            nodes=50,
            loss=0.03,
            jitter=0.5,
            duration=120.0,
            profile=prof,
            overrides=overrides,
            faults=(Fault("slow", at=0.0, count=5, duration=120.0), Fault("crash", at=60.0)),
            seed=10000,
        )
        yield Cell(
            "tradeoff",
            {"setting": label, "case": "N=50, 3% loss, 10% starved"},
            starved,
            2 if quick else 12,
        )
        plain = Scenario(
            nodes=100,
            loss=0.01,
            jitter=0.5,
            duration=40.0,
            profile=prof,
            overrides=overrides,
            faults=(Fault("crash", at=10.0),),
            seed=11000,
        )
        yield Cell(
            "tradeoff", {"setting": label, "case": "N=100, 1% loss"}, plain, 1 if quick else 6
        )


GROUPS: dict[str, Callable[[bool], Iterator[Cell]]] = {
    "tradeoff": tradeoff,
    "headline": headline,
    "crash_scale": crash_scale,
    "lifeguard": lifeguard,
    "pauses": pauses,
    "rapid": rapid,
    "datacenters": datacenters,
    "bootstrap": bootstrap,
    "churn": churn,
    "dissemination": dissemination,
    "speed": speed,
}
CURVES = {"dissemination"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    ap.add_argument("--only", action="append", choices=sorted(GROUPS), default=None)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per cell, overriding the mode's")
    ap.add_argument("--max-nodes", type=int, default=None, help="skip cells larger than this")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    names = args.only or list(GROUPS)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(args.jobs) as pool:
        for name in names:
            t0 = time.monotonic()
            cells = []
            skipped = []
            todo: list[Cell] = []
            for cell in GROUPS[name](args.quick):
                if args.max_nodes and cell.scenario.nodes > args.max_nodes:
                    continue
                need, have = memory_needed(cell.scenario.nodes), memory_available()
                if need * min(args.jobs, cell.seeds) > 0.8 * have:
                    why = (
                        f"needs about {need / 1e9:.0f} GB of member records a run "
                        f"({BYTES_PER_RECORD} B x N^2); {have / 1e9:.0f} GB available"
                    )
                    skipped.append({**cell.label, "skipped": why})
                    print(f"{name:13s} {json.dumps(cell.label):60s} skipped: {why}", flush=True)
                    continue
                if args.seeds:
                    cell = replace(cell, seeds=args.seeds)
                todo.append(cell)
            for cell, row in zip(todo, run_cells(todo, pool, curve=name in CURVES), strict=True):
                cells.append(row)
                ef = row["each_failed_s"]
                print(
                    f"{name:13s} {json.dumps(cell.label):60s} runs={row['runs']:3d} "
                    f"each_failed p50={ef['p50']} p99={ef['p99']} "
                    f"false_failures={row['false_failures']} "
                    f"msgs/node/s={row['msgs_per_node_s']} wall={row['wall_s']}s",
                    flush=True,
                )
            doc = {
                "group": name,
                "quick": args.quick,
                "cells": cells,
                "skipped": skipped,
                "elapsed_s": round(time.monotonic() - t0, 1),
            }
            (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"suite done in {time.monotonic() - started:.0f} s", flush=True)
    if not args.no_report:
        from report import main as report_main  # bench/report.py

        code: int = report_main([])
        return code
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
