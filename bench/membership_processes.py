"""Failure detection with real `swimthor join` processes on loopback.

Starts N agents (one seed, the rest join through it), waits until every agent sees N alive,
measures steady-state load (datagrams and bytes per node per second, CPU per agent), then runs
`--trials` rounds of: `kill -9` one agent, time until every survivor logs it as failed (from
the agents' own JSON log lines, so nothing polls them while they work), restart it and wait
until it is alive everywhere again. `--busy K` keeps K CPU burners running during the trials,
to show that a loaded machine does not produce false failures.

    python bench/membership_processes.py --nodes 5 --profile local --trials 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _harness import free_port, pct, record_trial  # bench/_harness.py (sys.path[0] here)

from swimthor.control import ControlError, call

HERE = Path(__file__).resolve().parent
# A CPU burner for --busy, bounded in time like every load here.
BURNER = "import time\nend = time.time() + 600\nwhile time.time() < end: pass"


class Node:
    def __init__(self, name: str, port: int, workdir: Path, profile: str, seed: str | None):
        self.name = name
        self.port = port
        self.sock = str(workdir / f"{name}.sock")
        self.log_path = workdir / f"{name}.log"
        self.args = [
            sys.executable,
            "-m",
            "swimthor",
            "join",
            "--name",
            name,
            "--bind",
            f"127.0.0.1:{port}",
            "--profile",
            profile,
            "--insecure",
            "--control",
            self.sock,
            "--data-dir",
            str(workdir / name),
            "--log-format",
            "json",
        ]
        if seed:
            self.args.append(seed)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=log)
        log.close()

    def members(self) -> list[dict[str, Any]]:
        return list(call(self.sock, "members", timeout=2.0))

    def status(self) -> dict[str, Any]:
        return dict(call(self.sock, "status", timeout=2.0))

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def new_log_lines(self) -> list[dict[str, Any]]:
        out = []
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.log_offset += end
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def event_time(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


def wait_for(cond: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(ControlError, OSError):
            if cond():
                return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def all_see(nodes: list[Node], name: str, state: str, n_alive: int | None = None) -> bool:
    for node in nodes:
        ms = {m["name"]: m for m in node.members()}
        if name and ms.get(name, {}).get("state") != state:
            return False
        if n_alive is not None and sum(m["state"] == "alive" for m in ms.values()) != n_alive:
            return False
    return True


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
        t0 = time.monotonic()
        wait_for(lambda: all_see(nodes, "", "", args.nodes), 60, "convergence")
        converge_s = time.monotonic() - t0

        # Steady state: datagrams, bytes and CPU per node per second.
        time.sleep(2.0)
        before = [(n.status()["stats"], n.cpu_seconds()) for n in nodes]
        t_start = time.monotonic()
        time.sleep(args.steady)
        span = time.monotonic() - t_start
        after = [(n.status()["stats"], n.cpu_seconds()) for n in nodes]
        pkts = [
            (a[0]["packets_out"] - b[0]["packets_out"]) / span
            for a, b in zip(after, before, strict=False)
        ]
        byts = [
            (a[0]["bytes_out"] - b[0]["bytes_out"]) / span
            for a, b in zip(after, before, strict=False)
        ]
        cpu = [(a[1] - b[1]) / span * 100 for a, b in zip(after, before, strict=False)]
        for n in nodes:
            n.new_log_lines()

        for _ in range(args.busy):
            burners.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        "import time\nend=time.time()+600\nwhile time.time()<end: pass",
                    ]
                )
            )
        trials: list[dict[str, Any]] = []
        false_failures = 0
        for t in range(args.trials):
            victim = nodes[1 + t % (len(nodes) - 1)]
            survivors = [n for n in nodes if n is not victim]
            assert victim.proc is not None
            kill_at = time.time()
            victim.proc.kill()
            victim.proc.wait()
            seen: dict[str, float] = {}
            deadline = time.monotonic() + 60
            while len(seen) < len(survivors) and time.monotonic() < deadline:
                for s in survivors:
                    for line in s.new_log_lines():
                        if line.get("event") != "member failed":
                            continue
                        who = line.get("member") or line.get("name")
                        if who == victim.name and s.name not in seen:
                            seen[s.name] = event_time(line) - kill_at
                        elif who != victim.name:
                            false_failures += 1
                time.sleep(0.01)
            record_trial(trials, victim.name, seen, len(survivors))
            victim.start()
            wait_for(lambda v=victim: all_see(nodes, v.name, "alive"), 30, "restart")
            for s in survivors:
                for line in s.new_log_lines():
                    if line.get("event") == "member failed":
                        false_failures += 1
        alls = [t["all_s"] for t in trials if t["all_s"] is not None]
        each_all = [x for t in trials for x in t["each_s"]]
        return {
            "nodes": args.nodes,
            "profile": args.profile,
            "trials": len(trials),
            "busy": args.busy,
            "converge_s": round(converge_s, 3),
            "detected": len(alls),
            "all_failed_s": {
                "p50": pct(alls, 0.5),
                "p99": pct(alls, 0.99),
                "max": max(alls) if alls else None,
            },
            "each_failed_s": {"p50": pct(each_all, 0.5), "max": max(each_all, default=None)},
            "false_failures": false_failures,
            "datagrams_per_node_s": round(statistics.mean(pkts), 2),
            "bytes_per_node_s": round(statistics.mean(byts), 1),
            "cpu_percent_per_agent": round(statistics.mean(cpu), 2),
            "detail": trials,
        }
    finally:
        for b in burners:
            b.kill()
            b.wait()
        for n in nodes:
            n.stop(signal.SIGKILL)


def seconds(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}s"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--profile", default="local")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--steady", type=float, default=10.0, help="seconds of steady-state sampling")
    p.add_argument("--busy", type=int, default=0, help="CPU burners during the trials")
    p.add_argument("--out", default=None, help="JSON result file")
    args = p.parse_args(argv)
    if args.nodes < 3 or args.trials < 1:
        p.error("need --nodes >= 3 and --trials >= 1")
    result = run(args)
    a = result["all_failed_s"]
    print(
        f"\n{result['nodes']} agents, profile {result['profile']}, busy={result['busy']}: "
        f"kill -9 -> dead on every survivor p50 {seconds(a['p50'])} max {seconds(a['max'])} "
        f"({result['detected']}/{result['trials']} detected), "
        f"false failures {result['false_failures']}; steady state "
        f"{result['datagrams_per_node_s']} datagrams/s and {result['bytes_per_node_s']} B/s per "
        f"node, CPU {result['cpu_percent_per_agent']}% per agent"
    )
    out = args.out or str(
        HERE / "results" / f"membership_processes_{result['profile']}_{result['nodes']}.json"
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
