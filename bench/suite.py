"""The failure-injection benchmark suite on the simulator (`make bench`, `make bench-quick`).

Every scenario group below runs the real membership cores in `swimthor.sim` over seeded
networks and faults, several seeds per cell, on all cores of the machine. Each group writes
`bench/results/sim/<group>.json` (one entry per cell: its parameters, the pooled samples'
p50/p99/max, the same per kind of outage (crash, restart, deaf, mute), the declarations of
members under gray faults, false failures, runs with any false failure, load, wall time, and
for the speed group each run's peak memory); `bench/report.py` turns them into
`bench/results/REPORT.md` and PNG plots.

    python bench/suite.py --quick            # about five minutes, everything reduced
    python bench/suite.py --full             # the whole matrix: hours
    python bench/suite.py --only lifeguard   # one group (see GROUPS)

Memory: a run needs memory in N^2 (see `memory_needed`). A cell whose single run would not
fit in 80% of the memory available is skipped and listed with the reason; runs too big to go
`--jobs` at a time run in waves of as many as fit (`run_cells`).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import swimthor.sim
from swimthor.sim import Fault, Scenario, parse_fault, run

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
    # Per kind of outage (crash, restart, deaf, mute): raw samples, outages, fully detected.
    kind_each: dict[str, list[float]] = field(default_factory=dict)
    kind_all: dict[str, list[float]] = field(default_factory=dict)
    kind_outages: dict[str, int] = field(default_factory=dict)
    kind_detected: dict[str, int] = field(default_factory=dict)
    # Per gray fault kind: each run's `declarations` entry.
    declarations: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    healthy_false_failures: int = 0
    healthy_held: int = 0
    runs_with_healthy_false_failure: int = 0
    peak_rss: list[float] = field(default_factory=list)


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
# short-lived event copies of the warm-up). 760 bytes per record is that measurement. Above
# SHARED_RECORDS_ABOVE members the cores share one view (`Scenario.shared_records`) and copy a
# record only when it changes for them: 90 to 120 bytes per (core, member), measured as 1.41 GB
# peak for 4000 nodes x 10 virtual s; 120 is the safe end. A cell whose run would not fit is
# skipped and listed, not swapped or killed.
BYTES_PER_RECORD = 760
BYTES_PER_SHARED_RECORD = 120
# swimthor.sim does not export it (it lives in swimthor.sim._scenario); 1000 is its value.
SHARED_RECORDS_ABOVE: int = swimthor.sim.SHARED_RECORDS_ABOVE


def bytes_per_record(nodes: int, shared: bool | None = None) -> int:
    if shared is None:
        shared = nodes > SHARED_RECORDS_ABOVE
    return BYTES_PER_SHARED_RECORD if shared else BYTES_PER_RECORD


def memory_needed(nodes: int, shared: bool | None = None) -> float:
    """Bytes of member records one run of `nodes` members needs (`shared`: whether its cores
    share one view; None: as the simulator decides by size)."""
    return float(bytes_per_record(nodes, shared) * nodes * nodes)


def memory_available() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


Job = tuple[int, Scenario, bool, bool]  # cell index, scenario, keep the curve, peak memory


def peak_rss_bytes() -> float:
    """This process's peak resident memory so far (Linux: ru_maxrss is in KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(kib) * (1 if sys.platform == "darwin" else 1024)


def provenance() -> dict[str, Any]:
    """Which code a group ran: the commit checked out, whether the package or the suite
    code differed from it (a run of uncommitted code; results files do not count), and when
    the group finished (UTC)."""

    def git(*argv: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *argv], cwd=HERE, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    head = git("rev-parse", "--short=12", "HEAD")
    changed = git("status", "--porcelain", "--", "../swimthor", ".", ":(exclude)results")
    return {
        "commit": head,
        "dirty": None if changed is None else bool(changed),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _one(args: Job) -> tuple[int, dict[str, Any]]:
    index, scenario, keep_curve, measure_memory = args
    r = run(scenario)
    out = r.to_json()
    out["samples"] = r.samples
    if keep_curve:
        out["informed"] = r.informed_curve()
    if measure_memory:
        # Meaningful only in a worker that ran nothing before (a pool with
        # maxtasksperchild=1): the peak cannot be reset. It includes what the worker shared
        # with the suite's process when forked (tens of MB).
        out["peak_rss_bytes"] = peak_rss_bytes()
    return index, out


def _waves(jobs: list[Job], workers: int, budget: float) -> list[list[Job]]:
    """Jobs in passes that fit in `budget` bytes side by side: every run small enough to go
    `workers` at a time in one pass, the bigger ones first in passes of as many as fit."""
    need = {id(j): memory_needed(j[1].nodes, j[1].shares_records) for j in jobs}
    light = [j for j in jobs if need[id(j)] * workers <= budget]
    waves: list[list[Job]] = []
    total = 0.0
    for j in jobs:
        if need[id(j)] * workers <= budget:
            continue
        if not waves or len(waves[-1]) >= workers or total + need[id(j)] > budget:
            waves.append([])
            total = 0.0
        waves[-1].append(j)
        total += need[id(j)]
    return waves + ([light] if light else [])


def run_cells(
    cells: list[Cell],
    pool: Any,
    curve: bool = False,
    *,
    workers: int = 1,
    budget: float = math.inf,
    measure_memory: bool = False,
) -> list[dict[str, Any]]:
    """Every seed of every cell in one pool pass (a group's big cells run side by side), or
    in several if the runs would not fit in `budget` bytes `workers` at a time; then each
    cell's runs pooled. `measure_memory`: each run records its worker's peak RSS (give a
    pool that starts a fresh worker for each run)."""
    jobs: list[Job] = [
        (k, replace(cell.scenario, seed=cell.scenario.seed + i), curve and i == 0, measure_memory)
        for k, cell in enumerate(cells)
        for i in range(cell.seeds)
    ]
    # Biggest first, so the long runs do not end up alone at the end.
    jobs.sort(key=lambda j: -j[1].nodes * j[1].duration)
    results: list[list[dict[str, Any]]] = [[] for _ in cells]
    for wave in _waves(jobs, max(1, workers), budget):
        for k, res in pool.imap_unordered(_one, wave):
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
        for kind, d in res.get("detection_by_kind", {}).items():
            p.kind_each.setdefault(kind, []).extend(s.get(f"each_failed:{kind}", []))
            p.kind_all.setdefault(kind, []).extend(s.get(f"all_failed:{kind}", []))
            p.kind_outages[kind] = p.kind_outages.get(kind, 0) + d["crashes"]
            p.kind_detected[kind] = p.kind_detected.get(kind, 0) + d["count"]
        for kind, dec in res.get("declarations", {}).items():
            p.declarations.setdefault(kind, []).append(dec)
        hff = res.get("healthy_false_failures", 0)
        p.healthy_false_failures += hff
        p.runs_with_healthy_false_failure += 1 if hff else 0
        p.healthy_held += res.get("healthy_held", 0)
        if res.get("peak_rss_bytes") is not None:
            p.peak_rss.append(res["peak_rss_bytes"])

    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 3) if xs else None

    by_kind = {
        kind: {
            "crashes": p.kind_outages[kind],
            "detected": p.kind_detected[kind],
            "each_failed_s": stats(p.kind_each[kind]),
            "all_failed_s": stats(p.kind_all[kind]),
        }
        for kind in sorted(p.kind_outages)
    }
    declarations = {
        kind: {
            "runs": len(decs),
            "members": int(sum(d["members"] for d in decs)),
            "max": max(d["max"] for d in decs),
            "mean": round(sum(d["mean"] for d in decs) / len(decs), 4),
            "out_share_mean": round(sum(d["out_share_mean"] for d in decs) / len(decs), 4),
            "out_share_min": min(d["out_share_min"] for d in decs),
        }
        for kind, decs in sorted(p.declarations.items())
    }

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
        "detection_by_kind": by_kind,
        "declarations": declarations,
        "healthy_false_failures": p.healthy_false_failures,
        "runs_with_healthy_false_failure": p.runs_with_healthy_false_failure,
        "healthy_held": p.healthy_held,
        "converged_runs": p.converged,
        "wall_s": round(p.wall, 2),
        "peak_rss_bytes": max(p.peak_rss) if p.peak_rss else None,
        "virtual_s_per_run": cell.scenario.duration,
        "each_failed_samples": sorted(round(x, 4) for x in p.each_failed)[:20000],
        "informed_curves": p.informed,
    }


# ---------------------------------------------------------------------- the matrices


def crash_10000() -> Scenario:
    """The 10,000-member crash cell (crash_scale and speed at --full): 1% loss, one crash at
    10 s of 60 s; its cores share one view (about 12 GB at most)."""
    return Scenario(
        nodes=10000,
        loss=0.01,
        jitter=0.5,
        duration=60.0,
        faults=(parse_fault("crash:1@10"),),
        seed=100,
        warmup_max=30.0,
    )


def crash_scale(quick: bool) -> Iterator[Cell]:
    """Crash detection against cluster size and loss (lan profile, 2 ms ± 1 ms); at --full
    also 10,000 members at 1% loss (one seed, 60 s)."""
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
    if not quick:
        yield Cell("crash_scale", {"nodes": 10000, "loss": 0.01}, crash_10000(), 1)


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
    flip-flopping 20 s on / 20 s off; 10 crashes at once. The report shows the declarations
    per observer and the share of the fault out of routing for the first two, the detection
    of the crashes for the third."""
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


# The gray group's cells per size: (fault kind as the report names it, --fault spec, run length).
GRAY_FAULTS: tuple[tuple[str, str, float], ...] = (
    ("deaf", "deaf:1@10+30", 60.0),
    ("mute", "mute:1@10+30", 60.0),
    ("crash", "crash:1@10", 60.0),  # the reference: the same member (same seeds) crashed
    ("flipflop", "flipflop:1@5+60/10", 75.0),  # 5 s deaf, 5 s hearing, for 60 s
    ("partial deaf", "deaf:2@5+40/60%", 60.0),  # two members losing 60% of their input
)


def gray(quick: bool) -> Iterator[Cell]:
    """Gray failures (issue 17): a deaf member, a mute one, the same member crashed instead
    (the reference: a deaf or mute member should be declared as fast), one flip-flopping
    between deaf and hearing every 5 s, and two members partly deaf; lan profile, 1% loss,
    jitter 0.5. Every cell of a size runs the same seeds, so each hits the same member."""
    for n in [20] if quick else [20, 100]:
        for kind, spec, duration in GRAY_FAULTS:
            sc = Scenario(
                nodes=n,
                loss=0.01,
                jitter=0.5,
                duration=duration,
                faults=(parse_fault(spec),),
                seed=12000,
            )
            yield Cell("gray", {"nodes": n, "kind": kind, "fault": spec}, sc, 1 if quick else 10)


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
    """Simulator speed: wall time and peak memory for N nodes x 60 virtual seconds, one
    crash. Each run goes in a fresh worker process (FRESH_WORKERS): a process's peak RSS
    cannot be reset, so a worker that ran something before would report that."""
    for n in [1000] if quick else [1000, 5000]:
        sc = Scenario(
            nodes=n,
            loss=0.01,
            duration=60.0,
            faults=(Fault("crash", at=20.0),),
            seed=9000,
            warmup_max=30.0,
        )
        yield Cell("speed", {"nodes": n}, sc, 1)
    if not quick:
        yield Cell("speed", {"nodes": 10000}, crash_10000(), 1)


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
    "gray": gray,
    "datacenters": datacenters,
    "bootstrap": bootstrap,
    "churn": churn,
    "dissemination": dissemination,
    "speed": speed,
}
CURVES = {"dissemination"}
# Groups whose every run gets a new worker process, to measure its peak memory.
FRESH_WORKERS = {"speed"}


def progress(row: dict[str, Any]) -> str:
    """One cell's line on the console."""
    ef = row["each_failed_s"]
    out = (
        f"runs={row['runs']:3d} each_failed p50={ef['p50']} p99={ef['p99']} "
        f"false_failures={row['false_failures']} healthy={row['healthy_false_failures']} "
        f"msgs/node/s={row['msgs_per_node_s']} wall={row['wall_s']}s"
    )
    for kind, d in row["detection_by_kind"].items():
        if kind != "crash":
            out += f" {kind}: {d['detected']}/{d['crashes']} all p99={d['all_failed_s']['p99']}"
    for kind, d in row["declarations"].items():
        out += f" {kind}: declared max {d['max']} mean {d['mean']} out {d['out_share_mean']}"
    if row["peak_rss_bytes"] is not None:
        out += f" peak {row['peak_rss_bytes'] / 1e9:.2f} GB"
    return out


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
            have = memory_available()
            budget = 0.8 * have
            for cell in GROUPS[name](args.quick):
                if args.max_nodes and cell.scenario.nodes > args.max_nodes:
                    continue
                sc = cell.scenario
                need = memory_needed(sc.nodes, sc.shares_records)
                if need > budget:
                    per = bytes_per_record(sc.nodes, sc.shares_records)
                    why = (
                        f"needs about {need / 1e9:.0f} GB of member records a run "
                        f"({per} B x N^2); {have / 1e9:.0f} GB available"
                    )
                    skipped.append({**cell.label, "skipped": why})
                    print(f"{name:13s} {json.dumps(cell.label):60s} skipped: {why}", flush=True)
                    continue
                if args.seeds:
                    cell = replace(cell, seeds=args.seeds)
                todo.append(cell)
            kw: dict[str, Any] = {"curve": name in CURVES, "workers": args.jobs, "budget": budget}
            if name in FRESH_WORKERS:
                with ctx.Pool(args.jobs, maxtasksperchild=1) as fresh:
                    rows = run_cells(todo, fresh, measure_memory=True, **kw)
            else:
                rows = run_cells(todo, pool, **kw)
            for cell, row in zip(todo, rows, strict=True):
                cells.append(row)
                print(f"{name:13s} {json.dumps(cell.label):60s} {progress(row)}", flush=True)
            doc = {
                "group": name,
                "quick": args.quick,
                "cells": cells,
                "skipped": skipped,
                "elapsed_s": round(time.monotonic() - t0, 1),
                **provenance(),
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
