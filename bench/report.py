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


def targets() -> list[list[str]]:
    rows: list[list[str]] = []

    def cell(group: str, **match: Any) -> dict[str, Any] | None:
        doc = load(group)
        if not doc:
            return None
        cells: list[dict[str, Any]] = doc["cells"]
        for c in cells:
            if all(c.get(k) == v for k, v in match.items()):
                return c
        return None

    c = cell("headline")
    if c:
        ef = c["each_failed_s"]
        rows.append(
            [
                "N=100, 1% loss: each failed p50 ≤ 5 s, p99 ≤ 7 s, no false failure",
                f"p50 {s(ef['p50'])}, p99 {s(ef['p99'])}, false failures {c['false_failures']} "
                f"({c['runs']} seeds)",
            ]
        )
    doc = load("lifeguard")
    if doc:
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
    ours = cell("tradeoff", setting="lan (default)", case="N=100, 1% loss")
    ml = cell("tradeoff", setting="memberlist-lan", case="N=100, 1% loss")
    if ours and ml:
        rows.append(
            [
                "Load per member no higher than memberlist's LAN defaults at the same N",
                f"N=100, 1% loss: {ours['msgs_per_node_s']} vs {ml['msgs_per_node_s']} "
                f"datagrams/member/s (detection p50 {s(ours['each_failed_s']['p50'])} vs "
                f"{s(ml['each_failed_s']['p50'])})",
            ]
        )
    c = cell("dissemination")
    if c:
        rows.append(
            [
                "A declaration reaches all 1000 members in ≤ 1.5 s p99",
                f"p99 {s(c['dissemination_s']['p99'])}",
            ]
        )
    one, three = cell("datacenters", dcs=1), cell("datacenters", dcs=3)
    if one and three:
        rows.append(
            [
                "Three datacenters: all-failed p99 within 1 s of one datacenter's",
                f"{s(three['all_failed_s']['p99'])} vs {s(one['all_failed_s']['p99'])}",
            ]
        )
    c = cell("bootstrap", nodes=2000) or cell("bootstrap")
    if c and c.get("bootstrap_s"):
        rows.append(
            [
                "Bootstrap of 2000 through one seed: all see 2000 alive in ≤ 20 s",
                f"N={c['nodes']}: {s(c['bootstrap_s']['max'])}",
            ]
        )
    doc = load("speed")
    if doc:
        for c in doc["cells"]:
            rows.append(
                [
                    f"Simulator: {c['nodes']} nodes x 60 virtual s "
                    + ("≤ 20 s" if c["nodes"] <= 1000 else "≤ 5 min"),
                    f"{c['wall_s']:.1f} s wall",
                ]
            )
        for c in doc.get("skipped", []):
            rows.append(
                [
                    f"Simulator: {c['nodes']} nodes x 60 virtual s ≤ 5 min",
                    f"not run: {c['skipped']}",
                ]
            )
    return rows


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
    titles = {
        "headline": ("Headline: N = 100, 1% loss, 2 ms ± 1 ms", ["nodes", "loss"]),
        "crash_scale": ("Crash detection by size and loss", ["nodes", "loss"]),
        "lifeguard": (
            "Lifeguard matrix (kinship's grid)",
            ["nodes", "loss", "starved", "lifeguard"],
        ),
        "pauses": ("Pauses (SIGSTOP-like)", ["nodes", "pause_s"]),
        "rapid": ("Rapid's scenarios", ["case", "nodes"]),
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
        rows = [[c["nodes"], c["virtual_s_per_run"], f"{c['wall_s']:.1f} s"] for c in doc["cells"]]
        rows += [[c["nodes"], "-", f"not run: {c['skipped']}"] for c in doc.get("skipped", [])]
        parts += [
            "## Simulator speed (one core)",
            "",
            table(["nodes", "virtual s", "wall"], rows),
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
