"""Failure detection with real `swimthor join` processes on loopback.

Starts N agents (one seed, the rest join through it), waits until every agent sees N alive,
measures steady-state load (datagrams and bytes per node per second, CPU per agent), then runs
`--trials` rounds of one fault on one agent (never the seed), each timed from the agents' own
JSON log lines (so nothing polls them while they work):

  --fault kill   `kill -9`; time until every survivor logs it failed; restart it, time until
                 every survivor logs it alive again.
  --fault stop   SIGSTOP for `--pause` seconds (longer than the profile's detection time);
                 time until every other agent logs it suspected and failed; then SIGCONT and
                 time until it is alive everywhere again (it refutes on its own; nothing is
                 restarted). Failures the resumed agent declares count as false failures.
  --fault term   SIGTERM (graceful leave); time until every survivor logs it left (a "failed"
                 instead is counted), its exit code and time to exit; restart it, time until it
                 is alive everywhere again.

Every phase is bounded in time; at the end of a trial the control sockets confirm that every
agent sees all N alive, then `--settle` seconds more are watched for late false failures.
`--busy K` keeps K CPU burners running during the trials, to show that a loaded machine does
not produce false failures.

    python bench/membership_processes.py --nodes 5 --profile local --trials 10
    python bench/membership_processes.py --nodes 20 --profile lan --fault stop --trials 3

Results: bench/results/membership_processes_<profile>_<N>_busy<K>.json for kill and
..._busy<K>_<fault>.json for stop and term.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from _harness import (  # bench/_harness.py (sys.path[0] here)
    BACK,
    FAILED,
    LEFT,
    SUSPECTED,
    Ev,
    Node,
    all_back,
    all_see,
    first_times,
    free_port,
    record_trial,
    seconds_until_all_alive,
    steady_state,
    summary,
    wait_until,
    watch,
)

HERE = Path(__file__).resolve().parent
# A CPU burner for --busy, bounded in time like every load here.
BURNER = "import time\nend = time.time() + 600\nwhile time.time() < end: pass"
FAULTS = ("kill", "stop", "term")
# Default SIGSTOP length: longer than the profile's time to declare a silent member failed.
DEFAULT_PAUSE = {"lan": 8.0, "local": 3.0, "memberlist-lan": 15.0, "wan": 60.0}
DEFAULT_SETTLE = {"lan": 5.0, "local": 2.0, "memberlist-lan": 8.0, "wan": 30.0}
LABELS = {"kill": "kill -9", "stop": "SIGSTOP", "term": "SIGTERM"}


def result_path(profile: str, nodes: int, busy: int, fault: str) -> Path:
    """Kill keeps the name it always had, so older results stay valid."""
    suffix = "" if fault == "kill" else f"_{fault}"
    return HERE / "results" / f"membership_processes_{profile}_{nodes}_busy{busy}{suffix}.json"


def false_failures(evs: list[Ev], victim: str, back_at: float | None) -> list[Ev]:
    """Failures no fault explains: of any member but the victim, and of the victim after it
    was made live again (`back_at`)."""
    return [
        e
        for e in evs
        if e.event == FAILED
        and (e.member != victim or (back_at is not None and e.t > back_at + 0.001))
    ]


def run_trial(
    args: argparse.Namespace, nodes: list[Node], victim: Node, trials: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[Ev]]:
    survivors = [n for n in nodes if n is not victim]
    observers = [s.name for s in survivors]
    fault = args.fault
    target = (LEFT,) if fault == "term" else (FAILED,)
    evs: list[Ev] = []
    assert victim.proc is not None

    def detected(evs: list[Ev]) -> bool:
        return len(first_times(evs, target, victim.name, observers, fault_at)) == len(observers)

    exit_at: list[float] = []

    def term_done(evs: list[Ev]) -> bool:
        if not exit_at and victim.proc is not None and victim.proc.poll() is not None:
            exit_at.append(time.time())
        return bool(exit_at) and detected(evs)

    # Above 0: the victim has refuted a suspicion at some time. One refuted in the last
    # minute gets longer suspicions (refutation memory), so its detection can be slower.
    incarnation = {m["name"]: m["incarnation"] for m in survivors[0].members()}[victim.name]
    fault_at = time.time()
    if fault == "kill":
        victim.proc.kill()
        victim.proc.wait()
        watch(survivors, detected, args.detect_timeout, into=evs)
    elif fault == "stop":
        victim.send(signal.SIGSTOP)
        watch(survivors, lambda _: False, args.pause, into=evs)  # the whole pause
    else:
        victim.send(signal.SIGTERM)
        watch(survivors, term_done, args.detect_timeout, into=evs)
        if victim.proc.poll() is None:  # bounded: the agent has not exited in time
            victim.stop(signal.SIGKILL)
    seen = first_times(evs, target, victim.name, observers, fault_at)
    trial = record_trial(trials, victim.name, seen, len(survivors), LABELS[fault])
    trial["fault"] = fault
    trial["victim_incarnation"] = incarnation
    if fault == "stop":
        sus = sorted(first_times(evs, (SUSPECTED,), victim.name, observers, fault_at).values())
        trial["suspected_first_s"] = sus[0] if sus else None
        trial["suspected_all_s"] = sus[-1] if len(sus) == len(observers) else None
        trial["pause_s"] = args.pause
    if fault == "term":
        trial["exit_code"] = victim.proc.returncode
        trial["exit_s"] = round(exit_at[0] - fault_at, 3) if exit_at else None
        trial["failed_instead_of_left"] = sum(
            1 for e in evs if e.event == FAILED and e.member == victim.name
        )

    # Back: SIGCONT, or a restart under the same name.
    back_at = time.time()
    if fault == "stop":
        victim.send(signal.SIGCONT)
    else:
        victim.start()
    watch(
        nodes,
        lambda evs: all_back(evs, victim.name, observers, fault_at),
        args.rejoin_timeout,
        into=evs,
    )
    back = first_times(evs, BACK, victim.name, observers, back_at)
    # Seconds from SIGCONT/restart until the last observer that had lost it logs it alive
    # again (0 if none had lost it; None if one never logged it back in time).
    lost = {e.observer for e in evs if e.member == victim.name and e.event not in BACK}
    lost &= set(observers)
    if not lost:
        trial["rejoin_s"] = 0.0
    elif lost <= back.keys():
        trial["rejoin_s"] = max(back[o] for o in lost)
    else:
        trial["rejoin_s"] = None
    trial["confirmed_s"] = seconds_until_all_alive(nodes, back_at, args.rejoin_timeout, 0.2)
    watch(nodes, lambda _: False, args.settle, into=evs)
    wrong = false_failures(evs, victim.name, back_at)
    trial["false_failures"] = len(wrong)
    if fault == "stop":
        trial["false_failures_by_paused"] = sum(1 for e in wrong if e.observer == victim.name)
        trial["suspicions_by_paused"] = sum(
            1 for e in evs if e.observer == victim.name and e.event == SUSPECTED
        )
    if wrong:
        trial["false_failure_detail"] = [
            {"observer": e.observer, "member": e.member, "t_s": round(e.t - fault_at, 3)}
            for e in wrong[:20]
        ]
    extra = f"back everywhere {seconds(trial['rejoin_s'])}, confirmed {trial['confirmed_s']}s"
    if fault == "stop":
        extra += f", suspected by all {seconds(trial['suspected_all_s'])}"
    if fault == "term":
        extra += (
            f", exit {trial['exit_code']} in {trial['exit_s']}s, "
            f"failed-not-left {trial['failed_instead_of_left']}"
        )
    print(f"         {extra}, false failures {len(wrong)}", flush=True)
    return trial, evs


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="swimthor-bench-"))
    nodes: list[Node] = []
    burners: list[subprocess.Popen[bytes]] = []
    try:
        seed_port = free_port()
        nodes.append(Node("n0", seed_port, workdir, args.profile, None))
        for i in range(1, args.nodes):
            nodes.append(
                Node(f"n{i}", free_port(), workdir, args.profile, f"127.0.0.1:{seed_port}")
            )
        for node in nodes:
            node.start()
        converge_s = wait_until(
            lambda: all_see(nodes, "", "", args.nodes),
            30 + 1.5 * args.nodes,
            "convergence",
            interval=0.1 if args.nodes <= 20 else 0.5,
        )

        # Steady state: datagrams, bytes and CPU per node per second.
        time.sleep(2.0)
        load = steady_state(nodes, args.steady)
        steady = [e for n in nodes for e in n.new_events()]
        steady_false = sum(1 for e in steady if e.event == FAILED)

        for _ in range(args.busy):
            burners.append(subprocess.Popen([sys.executable, "-c", BURNER]))
        trials: list[dict[str, Any]] = []
        for t in range(args.trials):
            victim = nodes[1 + t % (len(nodes) - 1)]
            run_trial(args, nodes, victim, trials)
        return summarize(args, trials, converge_s, steady_false, load)
    finally:
        for b in burners:
            b.kill()
            b.wait()
        for n in nodes:
            n.stop(signal.SIGKILL)
        if args.keep_logs:
            print(f"agent logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def summarize(
    args: argparse.Namespace,
    trials: list[dict[str, Any]],
    converge_s: float,
    steady_false: int,
    load: dict[str, float],
) -> dict[str, Any]:
    alls = [t["all_s"] for t in trials if t["all_s"] is not None]
    each_all = [x for t in trials for x in t["each_s"]]
    detect = summary(alls)
    each = {"p50": summary(each_all)["p50"], "max": max(each_all, default=None)}
    out: dict[str, Any] = {
        "nodes": args.nodes,
        "profile": args.profile,
        "fault": args.fault,
        "trials": len(trials),
        "busy": args.busy,
        "converge_s": round(converge_s, 3),
        "detected": len(alls),
    }
    if args.fault == "term":
        out["all_left_s"] = detect
        out["each_left_s"] = each
        out["failed_instead_of_left"] = sum(t["failed_instead_of_left"] for t in trials)
        out["exit_codes"] = [t["exit_code"] for t in trials]
        out["exit_s"] = summary([t["exit_s"] for t in trials])
    else:
        out["all_failed_s"] = detect
        out["each_failed_s"] = each
    if args.fault == "stop":
        out["pause_s"] = args.pause
        out["all_suspected_s"] = summary([t["suspected_all_s"] for t in trials])
        out["false_failures_by_paused"] = sum(t["false_failures_by_paused"] for t in trials)
        out["suspicions_by_paused"] = sum(t["suspicions_by_paused"] for t in trials)
    out["false_failures"] = steady_false + sum(t["false_failures"] for t in trials)
    out["rejoin_s"] = summary([t["rejoin_s"] for t in trials])
    out["rejoined"] = sum(1 for t in trials if t["confirmed_s"] is not None)
    out["confirmed_s"] = summary([t["confirmed_s"] for t in trials])
    out.update(load)
    out["detail"] = trials
    return out


def seconds(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}s"


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--profile", default="local")
    p.add_argument("--fault", choices=FAULTS, default="kill")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument(
        "--pause",
        type=float,
        default=None,
        help="SIGSTOP seconds for --fault stop (default: 8 for lan, 3 for local)",
    )
    p.add_argument("--steady", type=float, default=10.0, help="seconds of steady-state sampling")
    p.add_argument("--busy", type=int, default=0, help="CPU burners during the trials")
    p.add_argument("--detect-timeout", type=float, default=60.0)
    p.add_argument("--rejoin-timeout", type=float, default=60.0)
    p.add_argument(
        "--settle",
        type=float,
        default=None,
        help="seconds watched for late false failures after each trial (lan 5, local 2)",
    )
    p.add_argument("--out", default=None, help="JSON result file")
    p.add_argument("--keep-logs", action="store_true", help="keep the agents' logs (a temp dir)")
    args = p.parse_args(argv)
    if args.nodes < 3 or args.trials < 1:
        p.error("need --nodes >= 3 and --trials >= 1")
    if args.pause is None:
        args.pause = DEFAULT_PAUSE.get(args.profile, 8.0)
    if args.settle is None:
        args.settle = DEFAULT_SETTLE.get(args.profile, 5.0)
    previous = signal.signal(signal.SIGTERM, _raise_exit)  # so that run() cleans up
    try:
        result = run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(headline(result))
    out = args.out or str(result_path(args.profile, args.nodes, args.busy, args.fault))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def headline(r: dict[str, Any]) -> str:
    head = f"\n{r['nodes']} agents, profile {r['profile']}, busy={r['busy']}: "
    rj = r["rejoin_s"]
    tail = (
        f"back alive everywhere p50 {seconds(rj['p50'])} max {seconds(rj['max'])} "
        f"({r['rejoined']}/{r['trials']}), false failures {r['false_failures']}; steady state "
        f"{r['datagrams_per_node_s']} datagrams/s and {r['bytes_per_node_s']} B/s per node, "
        f"CPU {r['cpu_percent_per_agent']}% per agent"
    )
    if r["fault"] == "term":
        a = r["all_left_s"]
        mid = (
            f"SIGTERM -> left on every survivor p50 {seconds(a['p50'])} max {seconds(a['max'])} "
            f"({r['detected']}/{r['trials']}), failed instead of left "
            f"{r['failed_instead_of_left']}, exit codes {r['exit_codes']}; "
        )
    else:
        a = r["all_failed_s"]
        what = "kill -9" if r["fault"] == "kill" else f"SIGSTOP {r['pause_s']}s"
        mid = (
            f"{what} -> dead on every survivor p50 {seconds(a['p50'])} max {seconds(a['max'])} "
            f"({r['detected']}/{r['trials']} detected); "
        )
        if r["fault"] == "stop":
            sus = r["all_suspected_s"]
            mid += f"suspected by all p50 {seconds(sus['p50'])}; "
    return head + mid + tail


if __name__ == "__main__":
    raise SystemExit(main())
