"""Turn bench/results/ into bench/results/REPORT.md and PNG plots.

Reads the simulator groups (`bench/results/sim/*.json`, from bench/suite.py), the real-process
runs (`bench/results/membership_processes_*.json`) and the peers' runs
(`bench/results/peer_*.json`). Plots need matplotlib (the `bench` extra); without it the report
is written without them.

    python bench/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SIM = RESULTS / "sim"


def load(name: str) -> dict[str, Any] | None:
    path = SIM / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def s(x: Any, unit: str = "s") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.2f} {unit}".strip()
    return f"{x} {unit}".strip()


def table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def cell_rows(doc: dict[str, Any], keys: list[str]) -> list[list[Any]]:
    rows = []
    for c in doc["cells"]:
        ef, af, fs = c["each_failed_s"], c["all_failed_s"], c["first_suspect_s"]
        rows.append(
            [c.get(k) for k in keys]
            + [
                f"{c['detected']}/{c['crashes']}",
                s(fs["p50"]),
                s(ef["p50"]),
                s(ef["p99"]),
                s(ef["max"]),
                s(af["p99"]),
                c["false_failures"],
                f"{c['runs_with_false_failure']}/{c['runs']}",
                s(c["msgs_per_node_s"], ""),
                s(c["bytes_per_node_s"], ""),
            ]
        )
    return rows


NOT_RUN = "not run"


def share(x: Any) -> str:
    return "-" if x is None else f"{x:.0%}"


def gb(x: Any) -> str:
    return "-" if x is None else f"{x / 1e9:.2f} GB"


def one_declaration(c: dict[str, Any], kind: str | None = None) -> dict[str, Any] | None:
    """The cell's pooled declarations of members under gray faults: of `kind`, or of its only
    kind (None when it has none, or several and no kind is given)."""
    decs: dict[str, Any] = c.get("declarations") or {}
    if kind is not None:
        return decs.get(kind)
    return next(iter(decs.values())) if len(decs) == 1 else None


def declaration_cells(dec: dict[str, Any] | None) -> list[str]:
    """per observer max, mean; out of routing mean, least."""
    if dec is None:
        return ["-"] * 4
    return [
        f"{dec['max']:g}",
        f"{dec['mean']:.2f}",
        share(dec["out_share_mean"]),
        share(dec["out_share_min"]),
    ]


DECLARATION_HEADERS = [
    "declarations per observer max",
    "mean",
    "out of routing mean",
    "least",
]


# A gray cell's kind (its label) and what the simulator measures it by: the detection of an
# outage that cuts the member off (deaf, mute, crash), or its declarations (the others).
GRAY_CUT_OFF = ("deaf", "mute", "crash")
GRAY_DECLARED = {"flipflop": "flipflop", "partial deaf": "deaf"}


def gray_kind(c: dict[str, Any]) -> str:
    """The cell's kind: deaf, mute, crash, flipflop, partial deaf (older files: the spec's)."""
    return str(c.get("kind") or str(c.get("fault", "?")).split(":")[0])


def gray_cut(c: dict[str, Any]) -> dict[str, Any] | None:
    kind = gray_kind(c)
    if kind not in GRAY_CUT_OFF:
        return None
    got: dict[str, Any] | None = (c.get("detection_by_kind") or {}).get(kind)
    return got


def gray_rows(doc: dict[str, Any]) -> list[list[Any]]:
    rows = []
    cells: list[dict[str, Any]] = doc["cells"]
    for c in cells:
        kind = gray_kind(c)
        cut = gray_cut(c)
        ref = next((x for x in cells if x["nodes"] == c["nodes"] and gray_kind(x) == "crash"), None)
        ref_af = (gray_cut(ref) or {}).get("all_failed_s") if ref else None
        dec = one_declaration(c, GRAY_DECLARED[kind]) if kind in GRAY_DECLARED else None
        af = cut["all_failed_s"] if cut else {"p50": None, "p99": None, "max": None}
        rows.append(
            [
                c["nodes"],
                f"`{c.get('fault', kind)}`",
                f"{cut['detected']}/{cut['crashes']}" if cut else "-",
                s(af["p50"]),
                s(af["p99"]),
                s(af["max"]),
                f"{s(ref_af['p50'])} / {s(ref_af['p99'])}" if ref_af else NOT_RUN,
                *declaration_cells(dec),
                c.get("healthy_false_failures", "-"),
                c.get("healthy_held", "-"),
                c["false_failures"],
                c["runs"],
            ]
        )
    return rows


GRAY_HEADERS = [
    "nodes",
    "fault",
    "declared by all healthy",
    "all failed p50",
    "p99",
    "max",
    "crash at same N: all failed p50 / p99",
    *DECLARATION_HEADERS,
    "healthy declared",
    "healthy held",
    "false failures",
    "runs",
]


def rapid_rows(doc: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for c in doc["cells"]:
        ef, af = c["each_failed_s"], c["all_failed_s"]
        rows.append(
            [
                c.get("case"),
                c.get("nodes"),
                f"{c['detected']}/{c['crashes']}",
                s(ef["p50"]),
                s(af["p50"]),
                s(af["p99"]),
                *declaration_cells(one_declaration(c)),
                c.get("healthy_false_failures", "-"),
                c.get("healthy_held", "-"),
                c["false_failures"],
                f"{c['runs_with_false_failure']}/{c['runs']}",
                s(c["msgs_per_node_s"], ""),
            ]
        )
    return rows


RAPID_HEADERS = [
    "case",
    "nodes",
    "detected",
    "each failed p50",
    "all failed p50",
    "p99",
    *DECLARATION_HEADERS,
    "healthy declared",
    "healthy held",
    "false failures",
    "runs with a false failure",
    "msgs/node/s",
]


DETECTION_HEADERS = [
    "detected",
    "first suspect p50",
    "each failed p50",
    "p99",
    "max",
    "all failed p99",
    "false failures",
    "runs with a false failure",
    "msgs/node/s",
    "bytes/node/s",
]


def plots(figs: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made: list[str] = []
    figs.mkdir(parents=True, exist_ok=True)
    doc = load("crash_scale")
    if doc:
        fig, ax = plt.subplots(figsize=(6, 4))
        for c in doc["cells"]:
            xs = c["each_failed_samples"]
            if not xs or c["loss"] not in (0.01,):
                continue
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.step(xs, ys, where="post", label=f"N = {c['nodes']}")
        ax.set_xlabel("crash to failed, each (crash, member) pair [s]")
        ax.set_ylabel("CDF")
        ax.set_title("Detection time by cluster size (1% loss, lan profile)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(figs / "detection_cdf.png", dpi=110)
        plt.close(fig)
        made.append("detection_cdf.png")
    doc = load("lifeguard")
    if doc:
        fig, ax = plt.subplots(figsize=(6, 4))
        for lg in (True, False):
            for share in sorted({c["starved"] for c in doc["cells"]}):
                pts = sorted(
                    (c["loss"], c["runs_with_false_failure"] / max(1, c["runs"]))
                    for c in doc["cells"]
                    if c["lifeguard"] == lg and c["starved"] == share
                )
                if pts:
                    ax.plot(
                        [p[0] * 100 for p in pts],
                        [p[1] * 100 for p in pts],
                        marker="o",
                        linestyle="-" if lg else "--",
                        label=f"{'Lifeguard' if lg else 'SWIM'}, {share:.0%} starved",
                    )
        ax.set_xlabel("packet loss [%]")
        ax.set_ylabel("runs with a false failure [%]")
        ax.set_title("False failures against loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(figs / "false_failures.png", dpi=110)
        plt.close(fig)
        made.append("false_failures.png")
    doc = load("dissemination")
    if doc:
        fig, ax = plt.subplots(figsize=(6, 4))
        for c in doc["cells"]:
            for curve in c.get("informed_curves", [])[:5]:
                if curve:
                    ax.plot([p[0] for p in curve], [p[1] for p in curve])
        ax.set_xlabel("time since the first declaration [s]")
        ax.set_ylabel("fraction of members informed")
        ax.set_title("Spread of a failure declaration, N = 1000")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(figs / "informed.png", dpi=110)
        plt.close(fig)
        made.append("informed.png")
    return made


def met(ok: bool, missing: bool = False) -> str:
    """The verdict; none while part of the data is missing."""
    if missing:
        return "partly not run"
    return "met" if ok else "NOT met"


def cell(group: str, **match: Any) -> dict[str, Any] | None:
    doc = load(group)
    if not doc:
        return None
    cells: list[dict[str, Any]] = doc["cells"]
    for c in cells:
        if all(c.get(k) == v for k, v in match.items()):
            return c
    return None


GRAY_TARGET = (
    "Deaf and mute members: declared by all healthy members in ≤ the crash p99 + 1 s (lan)"
)
RAPID_TARGET = (
    "Rapid scenarios: each faulty member removed once (≤ 2 declarations per observer), "
    "0 healthy declared, 10 crashes detected in ≤ 6 s p50"
)
LIFEGUARD_TARGET = "Lifeguard grid: ≤ 1% of runs with a false failure"
TEN_THOUSAND_TARGET = (
    "10,000 members \N{MULTIPLICATION SIGN} 60 s simulated in ≤ 5 minutes and ≤ 16 GB"
)


def gray_target() -> str:
    doc = load("gray")
    if not doc:
        return NOT_RUN
    parts: list[str] = []
    ok, missing = True, False
    for n in sorted({c["nodes"] for c in doc["cells"]}):
        by = {gray_kind(c): c for c in doc["cells"] if c["nodes"] == n}
        ref = gray_cut(by["crash"]) if "crash" in by else None
        if not ref or ref["all_failed_s"]["p99"] is None:
            parts.append(f"N={n}: crash reference {NOT_RUN}")
            missing = True
            continue
        limit = ref["all_failed_s"]["p99"] + 1.0
        got = []
        for kind in ("deaf", "mute"):
            d = gray_cut(by[kind]) if kind in by else None
            if not d:
                got.append(f"{kind} {NOT_RUN}")
                missing = True
                continue
            p99 = d["all_failed_s"]["p99"]
            ok = ok and d["detected"] == d["crashes"] and p99 is not None and p99 <= limit
            got.append(f"{kind} {s(p99)} ({d['detected']}/{d['crashes']} declared by all)")
        parts.append(
            f"N={n}: " + ", ".join(got) + f" vs crash {s(ref['all_failed_s']['p99'])} + 1 s"
        )
    return "; ".join(parts) + f" — {met(ok, missing)}"


def rapid_target() -> str:
    doc = load("rapid")
    if not doc:
        return NOT_RUN
    cells: list[dict[str, Any]] = doc["cells"]
    parts: list[str] = []
    ok, missing = True, False
    for c in cells:
        if c.get("declarations"):
            worst = max(d["max"] for d in c["declarations"].values())
            ok = ok and worst <= 2
            parts.append(f"{c['case']}: most declarations per observer {worst:g}")
        elif c["crashes"] == 0:
            parts.append(f"{c['case']}: declarations {NOT_RUN}")
            missing = True
    healthy = [c.get("healthy_false_failures") for c in cells]
    if any(h is None for h in healthy):
        parts.append(f"healthy declared {NOT_RUN}")
        missing = True
    else:
        ok = ok and sum(h or 0 for h in healthy) == 0
        parts.append(f"healthy declared {sum(h or 0 for h in healthy)}")
    crash = next((c for c in cells if c["crashes"]), None)
    if crash is None or crash["each_failed_s"]["p50"] is None:
        parts.append(f"10 crashes {NOT_RUN}")
        missing = True
    else:
        p50 = crash["each_failed_s"]["p50"]
        ok = ok and p50 <= 6.0 and crash["detected"] == crash["crashes"]
        parts.append(f"10 crashes: p50 {s(p50)} ({crash['detected']}/{crash['crashes']})")
    return (
        f"N={cells[0]['nodes']}: " + "; ".join(parts) + f" — {met(ok, missing)}"
        if cells
        else NOT_RUN
    )


def lifeguard_target() -> str:
    doc = load("lifeguard")
    if not doc:
        return NOT_RUN
    on = [c for c in doc["cells"] if c["lifeguard"]]
    runs = sum(c["runs"] for c in on)
    bad = sum(c["runs_with_false_failure"] for c in on)
    if not runs:
        return NOT_RUN
    ok = bad <= 0.01 * runs
    return f"{bad}/{runs} runs ({bad / runs:.1%}), Lifeguard on, every cell — {met(ok)}"


def ten_thousand_target() -> str:
    doc = load("speed")
    if not doc:
        return NOT_RUN
    for c in doc.get("skipped", []):
        if c["nodes"] == 10000:
            return f"{NOT_RUN}: {c['skipped']}"
    c = next((x for x in doc["cells"] if x["nodes"] == 10000), None)
    if c is None:
        return NOT_RUN
    peak = c.get("peak_rss_bytes")
    if peak is None:
        return f"{c['wall_s']:.1f} s wall; peak memory {NOT_RUN}"
    ok = c["wall_s"] <= 300.0 and peak <= 16e9
    return f"{c['wall_s']:.1f} s wall, {gb(peak)} peak RSS — {met(ok)}"


def targets() -> list[list[str]]:
    rows: list[list[str]] = []
    c = cell("headline")
    rows.append(
        [
            "N=100, 1% loss: each failed p50 ≤ 5 s, p99 ≤ 7 s, no false failure",
            f"p50 {s(c['each_failed_s']['p50'])}, p99 {s(c['each_failed_s']['p99'])}, "
            f"false failures {c['false_failures']} ({c['runs']} seeds)"
            if c
            else NOT_RUN,
        ]
    )
    doc = load("lifeguard")
    if not doc:
        rows.append(
            [
                "Lifeguard matrix, starved cells: false failure in ≤ 1% of runs; N=50 p50 ≤ 5 s",
                NOT_RUN,
            ]
        )
    else:
        starved = [x for x in doc["cells"] if x["lifeguard"] and x["starved"] > 0]
        runs = sum(x["runs"] for x in starved)
        bad = sum(x["runs_with_false_failure"] for x in starved)
        n50 = [x for x in doc["cells"] if x["lifeguard"] and x["nodes"] == 50]
        p50s = [x["each_failed_s"]["p50"] for x in n50 if x["each_failed_s"]["p50"] is not None]
        rows.append(
            [
                "Lifeguard matrix, starved cells: false failure in ≤ 1% of runs; N=50 p50 ≤ 5 s",
                f"{bad}/{runs} runs with a false failure; N=50 p50 "
                f"{min(p50s):.2f} to {max(p50s):.2f} s"
                if p50s
                else f"{bad}/{runs} runs",
            ]
        )
    rows.append([LIFEGUARD_TARGET, lifeguard_target()])
    ours = cell("tradeoff", setting="lan (default)", case="N=100, 1% loss")
    ml = cell("tradeoff", setting="memberlist-lan", case="N=100, 1% loss")
    rows.append(
        [
            "Load per member no higher than memberlist's LAN defaults at the same N",
            f"N=100, 1% loss: {ours['msgs_per_node_s']} vs {ml['msgs_per_node_s']} "
            f"datagrams/member/s (detection p50 {s(ours['each_failed_s']['p50'])} vs "
            f"{s(ml['each_failed_s']['p50'])})"
            if ours and ml
            else NOT_RUN,
        ]
    )
    c = cell("dissemination")
    rows.append(
        [
            "A declaration reaches all 1000 members in ≤ 1.5 s p99",
            f"p99 {s(c['dissemination_s']['p99'])}" if c else NOT_RUN,
        ]
    )
    one, three = cell("datacenters", dcs=1), cell("datacenters", dcs=3)
    rows.append(
        [
            "Three datacenters: all-failed p99 within 1 s of one datacenter's",
            f"{s(three['all_failed_s']['p99'])} vs {s(one['all_failed_s']['p99'])}"
            if one and three
            else NOT_RUN,
        ]
    )
    c = cell("bootstrap", nodes=2000) or cell("bootstrap")
    rows.append(
        [
            "Bootstrap of 2000 through one seed: all see 2000 alive in ≤ 20 s",
            f"N={c['nodes']}: {s(c['bootstrap_s']['max'])}"
            if c and c.get("bootstrap_s")
            else NOT_RUN,
        ]
    )
    rows.append([GRAY_TARGET, gray_target()])
    rows.append([RAPID_TARGET, rapid_target()])
    rows.append([TEN_THOUSAND_TARGET, ten_thousand_target()])
    doc = load("speed")
    if doc:
        for c in doc["cells"]:
            if c["nodes"] == 10000:
                continue  # its own row above, with the memory
            rows.append(
                [
                    f"Simulator: {c['nodes']} nodes x 60 virtual s "
                    + ("≤ 20 s" if c["nodes"] <= 1000 else "≤ 5 min"),
                    f"{c['wall_s']:.1f} s wall",
                ]
            )
        for c in doc.get("skipped", []):
            if c["nodes"] == 10000:
                continue
            rows.append(
                [
                    f"Simulator: {c['nodes']} nodes x 60 virtual s ≤ 5 min",
                    f"not run: {c['skipped']}",
                ]
            )
    return rows


def runs_section() -> list[str]:
    """Which code each simulator group ran (the suite records it; older files did not), so
    a report that mixes groups from several heads says so."""
    rows = []
    for path in sorted(SIM.glob("*.json")):
        doc = json.loads(path.read_text())
        commit = doc.get("commit")
        code = (
            "not recorded"
            if commit is None
            else commit + (" (uncommitted changes)" if doc.get("dirty") else "")
        )
        mode = "quick" if doc.get("quick") else "full"
        elapsed = doc.get("elapsed_s")
        rows.append(
            [
                path.stem,
                code,
                doc.get("finished_utc", "-"),
                mode,
                "-" if elapsed is None else f"{elapsed:.0f} s",
            ]
        )
    if not rows:
        return []
    return [
        "## The runs behind this report",
        "",
        "Each simulator group's file records the commit it ran and when it finished (files "
        "written before the suite recorded it say `not recorded`; `git log` on the file says "
        "when it was committed). Wall times depend on what else the machine ran.",
        "",
        table(["group", "code", "finished (UTC)", "mode", "wall"], rows),
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    figs = RESULTS / "plots"
    made = plots(figs)
    parts = ["# swimthor benchmark report", ""]
    parts += [
        "Made by `bench/report.py` from the JSON under `bench/results/`. Simulator runs drive "
        "the real membership cores (`swimthor/sim`) with the `lan` profile unless a table says "
        "otherwise; `each failed` pools every (crash, live member) pair over all seeds.",
        "",
        "## Targets",
        "",
        table(["target", "measured"], targets()),
        "",
    ]
    parts += runs_section()
    titles = {
        "headline": ("Headline: N = 100, 1% loss, 2 ms ± 1 ms", ["nodes", "loss"]),
        "crash_scale": ("Crash detection by size and loss", ["nodes", "loss"]),
        "lifeguard": (
            "Lifeguard matrix (kinship's grid)",
            ["nodes", "loss", "starved", "lifeguard"],
        ),
        "pauses": ("Pauses (SIGSTOP-like)", ["nodes", "pause_s"]),
        "datacenters": ("Datacenters", ["nodes", "dcs"]),
        "churn": ("Continuous churn", ["nodes", "restarts"]),
        "dissemination": ("Dissemination at N = 1000", ["nodes"]),
        "tradeoff": (
            "Trade-off: detection against false failures against load (`--only tradeoff`)",
            ["setting", "case"],
        ),
    }
    for group, (title, keys) in titles.items():
        doc = load(group)
        if not doc:
            continue
        parts += [f"## {title}", "", table(keys + DETECTION_HEADERS, cell_rows(doc, keys)), ""]
    doc = load("rapid")
    if doc:
        parts += [
            "## Rapid's scenarios",
            "",
            "Declarations per observer: how often each healthy member declared each member "
            "under the fault failed over the run (1: removed once); out of routing: the share "
            "of the fault's time it was declared failed or held for flapping, mean over "
            "(member, observer) pairs and the least of them. `-`: not measured (a file from "
            "before these columns) or no such fault in the case.",
            "",
            table(RAPID_HEADERS, rapid_rows(doc)),
            "",
        ]
    parts += ["## Gray failures", ""]
    doc = load("gray")
    if doc:
        parts += [
            "One member deaf (hears nothing) or mute (says nothing) from 10 s to 40 s, the same "
            "member crashed at 10 s as the reference (same seeds), one flip-flopping 5 s deaf "
            "/ 5 s hearing from 5 s to 65 s, two members losing 60% of their input from 5 s to "
            "45 s; lan profile, 1% loss. `declared by all healthy`: outages every healthy "
            "member declared, of all; `all failed`: from the fault until the last of them; "
            "declarations and out of routing as in Rapid's table; `healthy declared` / "
            "`healthy held`: a member with no fault declared failed / held by one with none.",
            "",
            table(GRAY_HEADERS, gray_rows(doc)),
            "",
        ]
    else:
        parts += [f"{NOT_RUN} (`python bench/suite.py --full --only gray`)", ""]
    doc = load("bootstrap")
    if doc:
        rows = [
            [c["nodes"], s(c["bootstrap_s"]["max"] if c["bootstrap_s"] else None), c["runs"]]
            for c in doc["cells"]
        ]
        parts += [
            "## Bootstrap through one seed",
            "",
            table(["nodes", "all see all alive (max)", "runs"], rows),
            "",
        ]
    doc = load("speed")
    if doc:
        rows = [
            [
                c["nodes"],
                c["virtual_s_per_run"],
                f"{c['wall_s']:.1f} s",
                gb(c.get("peak_rss_bytes")),
            ]
            for c in doc["cells"]
        ]
        rows += [[c["nodes"], "-", f"not run: {c['skipped']}", "-"] for c in doc.get("skipped", [])]
        parts += [
            "## Simulator speed (one core)",
            "",
            "Each run in a fresh worker process, its peak resident memory from getrusage "
            "(the worker's whole life: the warm-up, the run and its result).",
            "",
            table(["nodes", "virtual s", "wall", "peak RSS"], rows),
            "",
        ]
    procs = sorted(RESULTS.glob("membership_processes_*.json"))
    peers = sorted(RESULTS.glob("peer_*.json"))
    # bench/membership_processes.py --fault kill|stop|term (files without "fault" are kill).
    by_fault: dict[str, list[dict[str, Any]]] = {"kill": [], "stop": [], "term": []}
    for path in procs:
        d = json.loads(path.read_text())
        by_fault.setdefault(d.get("fault", "kill"), []).append(d)
    if by_fault["kill"] or peers:
        rows = []
        for d in by_fault["kill"] + [json.loads(path.read_text()) for path in peers]:
            who = f"{d.get('peer', 'swimthor')} {d.get('profile') or d.get('preset')}"
            a = d["all_failed_s"]
            rows.append(
                [
                    who,
                    d["nodes"],
                    d.get("busy", 0),
                    s(a["p50"]),
                    s(a["max"]),
                    d["false_failures"],
                    d.get("datagrams_per_node_s"),
                    d.get("bytes_per_node_s"),
                    d.get("cpu_percent_per_agent"),
                ]
            )
        parts += [
            "## Real processes on loopback (kill -9), swimthor and peers",
            "",
            table(
                [
                    "system",
                    "nodes",
                    "CPU burners",
                    "all failed p50",
                    "max",
                    "false failures",
                    "datagrams/node/s",
                    "bytes/node/s",
                    "CPU %/agent",
                ],
                rows,
            ),
            "",
        ]

    def fine(x: Any) -> str:  # sub-100 ms times in milliseconds, not as "0.00 s"
        return f"{x * 1000:.0f} ms" if isinstance(x, float) and x < 0.1 else s(x)

    if by_fault["stop"]:
        rows = []
        for d in by_fault["stop"]:
            a, sus, rj = d["all_failed_s"], d["all_suspected_s"], d["rejoin_s"]
            rows.append(
                [
                    f"swimthor {d['profile']}",
                    d["nodes"],
                    s(d["pause_s"]),
                    s(sus["p50"]),
                    s(a["p50"]),
                    s(a["max"]),
                    f"{d['detected']}/{d['trials']}",
                    fine(rj["p50"]),
                    fine(rj["max"]),
                    f"{d['rejoined']}/{d['trials']}",
                    f"{d['false_failures']} ({d.get('false_failures_by_paused', 0)})",
                ]
            )
        parts += [
            "## Real processes on loopback: SIGSTOP, then SIGCONT",
            "",
            "The paused agent is suspected and declared failed by every other agent; after "
            "SIGCONT it refutes on its own (nothing is restarted). `back alive` is from SIGCONT "
            "until every agent that had lost it logs it alive again; false failures in brackets "
            "are the ones the resumed agent declared itself.",
            "",
            table(
                [
                    "system",
                    "nodes",
                    "pause",
                    "suspected by all p50",
                    "failed by all p50",
                    "max",
                    "detected",
                    "back alive p50",
                    "max",
                    "came back",
                    "false failures (by paused)",
                ],
                rows,
            ),
            "",
        ]
    if by_fault["term"]:
        rows = []
        for d in by_fault["term"]:
            a, rj, ex = d["all_left_s"], d["rejoin_s"], d["exit_s"]
            codes = sorted(set(d["exit_codes"]), key=str)
            rows.append(
                [
                    f"swimthor {d['profile']}",
                    d["nodes"],
                    fine(a["p50"]),
                    fine(a["max"]),
                    f"{d['detected']}/{d['trials']}",
                    d["failed_instead_of_left"],
                    ", ".join(str(c) for c in codes),
                    s(ex["max"]),
                    s(rj["p50"]),
                    s(rj["max"]),
                    d["false_failures"],
                ]
            )
        parts += [
            "## Real processes on loopback: SIGTERM (graceful leave), then restart",
            "",
            table(
                [
                    "system",
                    "nodes",
                    "left on all p50",
                    "max",
                    "seen left",
                    "failed instead of left",
                    "exit codes",
                    "exit time max",
                    "back alive after restart p50",
                    "max",
                    "false failures",
                ],
                rows,
            ),
            "",
        ]
    netns = sorted(RESULTS.glob("netns_*.json"))
    if netns:
        rows = []
        for path in netns:
            d = json.loads(path.read_text())
            fault = {
                "loss": f"{d.get('loss_percent')}% loss into one host",
                "partition": "one host isolated",
                "oneway": "one host deaf (ingress dropped)",
            }.get(d["scenario"], d["scenario"])
            a, sus, heal = d["all_failed_s"], d["all_suspected_s"], d["heal_s"]
            rows.append(
                [
                    f"{fault}, {s(d['duration_s'])}",
                    d["hosts"],
                    d["profile"],
                    s(sus["p50"]),
                    s(a["p50"]),
                    s(a["max"]),
                    f"{d['detected']}/{d['trials']}",
                    d["false_failures"],
                    f"{d['healed']}/{d['trials']}",
                    fine(heal["p50"]),
                    fine(heal["max"]),
                    d.get("suspicions_logged"),
                    d.get("dropped_packets"),
                    d.get("datagrams_per_node_s"),
                ]
            )
        parts += [
            "## Real processes in network namespaces (nftables faults)",
            "",
            "One agent per namespace on a bridge (bench/netns_processes.py); the fault is an "
            "nftables rule in one host's namespace for the time shown, then removed. `heal` is "
            "from removing it until every agent, the cut-off one too, sees all members alive.",
            "",
            table(
                [
                    "fault",
                    "hosts",
                    "profile",
                    "suspected by all p50",
                    "failed by all p50",
                    "max",
                    "declared failed",
                    "false failures",
                    "healed",
                    "heal p50",
                    "max",
                    "suspicions logged",
                    "packets dropped",
                    "datagrams/node/s",
                ],
                rows,
            ),
            "",
        ]
    if made:
        parts += ["## Plots", ""] + [f"![{m}](plots/{m})" for m in made] + [""]
    out = RESULTS / "REPORT.md"
    out.write_text("\n".join(parts))
    print(f"wrote {out}" + (f" and {len(made)} plots" if made else " (no matplotlib: no plots)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
