"""Failure detection with real processes on loopback, for the peers swimthor compares against.

The same measurement as bench/membership_processes.py, for kinship (Rust-core SWIM with
Lifeguard) and swim-protocol (pure-Python SWIM), installed from PyPI as the ``bench`` extra.
Starts N node processes (bench/peers/<peer>_node.py; one seed, the rest join through it),
waits until every node sees N alive, measures steady-state load (datagrams and bytes sent per
node per second, CPU per node process), then runs ``--trials`` rounds of: ``kill -9`` one node,
time until every survivor has printed it as failed (from the nodes' own timestamped JSON
lines, so nothing polls them while they work), restart it and wait until it is alive
everywhere again.

Neither peer counts the datagrams or bytes it sends in a way we can read (kinship's ``stats()``
has packets received, not sent; swim-protocol keeps no counters), so each node process is
started with bench/peers/udpcount.c preloaded (built here with ``cc``), which counts the UDP
datagrams and payload bytes the process sends, as swimthor's own counters do. Without a C
compiler the two figures are null.

    python bench/peers/run.py --peer kinship --nodes 5 --preset local --trials 5
    python bench/peers/run.py --peer swim-protocol --nodes 5 --preset default --trials 5

Presets are described in the node scripts: for kinship, ``local`` and ``lan`` are its own
presets (``default`` is ``lan``) and ``matched-local`` is its local preset with swimthor's
``local`` timings; for swim-protocol, which has none, ``default`` is its defaults and ``local``
and ``lan`` are swimthor's profiles mapped onto its knobs.

Rules: only 127.0.0.1; every wait is bounded in time and every loop in count; every process
started here is killed by its PID at the end, also on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/_harness.py, shared with bench/membership_processes.py (this file is also loaded by path).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _harness import free_port, pct, record_trial
from _procs import ProcessExited, WaitTimeout, stop_process
from _procs import wait_until as _wait_until

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
PEERS = {
    "kinship": ("kinship", HERE / "kinship_node.py"),
    "swim-protocol": ("swimprotocol", HERE / "swimprotocol_node.py"),
}
PRESETS = {
    "kinship": ("default", "local", "lan", "matched-local", "matched-lan"),
    "swim-protocol": ("default", "local", "lan", "matched-local", "matched-lan"),
}
MAX_STATS_KEPT = 2000


def build_udpcount(workdir: Path) -> Path | None:
    """Builds udpcount.so into workdir; None (and a note on stderr) if there is no compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("no C compiler: datagrams and bytes per node are not measured", file=sys.stderr)
        return None
    out = workdir / "udpcount.so"
    try:
        subprocess.run(
            [cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(HERE / "udpcount.c"), "-ldl"],
            check=True,
            timeout=60,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as e:
        print(f"udpcount.c did not build ({e}): datagrams and bytes not measured", file=sys.stderr)
        return None
    return out


class Node:
    def __init__(
        self,
        peer: str,
        index: int,
        port: int,
        workdir: Path,
        preset: str,
        n: int,
        seed: str | None,
        udpcount: Path | None,
    ):
        self.name = f"n{index}"
        self.addr = f"127.0.0.1:{port}"
        # What the peer calls this node: kinship takes a name, swim-protocol names by address.
        self.ident = self.name if peer == "kinship" else self.addr
        self.out_path = workdir / f"{self.name}.jsonl"
        self.err_path = workdir / f"{self.name}.err"
        script = PEERS[peer][1]
        self.args = [
            sys.executable,
            str(script),
            "--name",
            self.name,
            "--bind",
            self.addr,
            "--preset",
            preset,
            "--nodes",
            str(n),
            "--max-seconds",
            "3600",
        ]
        if seed:
            self.args += ["--seed", seed]
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(HERE)
        if udpcount is not None:
            self.env["LD_PRELOAD"] = str(udpcount)
            self.env["UDPCOUNT_LIB"] = str(udpcount)
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0
        self.stats: list[dict[str, Any]] = []
        self.started: dict[str, Any] | None = None

    def start(self) -> None:
        with open(self.out_path, "ab") as out, open(self.err_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=self.env
            )

    def poll(self) -> list[dict[str, Any]]:
        """New membership lines since the last call; stats lines are kept on the node."""
        with open(self.out_path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        events = []
        for raw in data[:end].splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            kind = line.get("event")
            if kind == "stats":
                self.stats.append(line)
                del self.stats[:-MAX_STATS_KEPT]
            elif kind == "started":
                self.started = line
            else:
                events.append(line)
        return events

    def alive_since(self, t: float) -> set[str] | None:
        """The alive set of this node's latest stats line, if that line is newer than t."""
        if not self.stats or self.stats[-1]["timestamp"] <= t:
            return None
        return set(self.stats[-1]["alive"])

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """`sig` by PID, SIGKILL after 5 s; reaped."""
        if self.proc is not None:
            stop_process(self.proc, sig, grace=5.0)


def wait_until(nodes: list[Node], cond: Any, timeout: float, what: str) -> list[dict[str, Any]]:
    """Polls the nodes until cond() holds (bench/_procs.py's wait); returns the membership
    lines read meanwhile. ProcessExited at once if a node's process ends; WaitTimeout."""
    lines: list[dict[str, Any]] = []

    def check() -> bool:
        for n in nodes:
            lines.extend(dict(line, _node=n.name) for line in n.poll())
        dead = [n.name for n in nodes if not n.running()]
        if dead:
            raise ProcessExited(f"node process exited while waiting for {what}: {dead}")
        return bool(cond())

    _wait_until(check, timeout, what, transient=())
    return lines


def rate(node: Node, key: str, t0: float, t1: float) -> float | None:
    """Per-second rate of a counter over the node's stats lines between t0 and t1."""
    window = [s for s in node.stats if t0 <= s["timestamp"] <= t1 and s.get(key) is not None]
    if len(window) < 2 or window[-1]["timestamp"] <= window[0]["timestamp"]:
        return None
    a, b = window[0], window[-1]
    return float(b[key] - a[key]) / float(b["timestamp"] - a["timestamp"])


def mean_or_none(values: list[float | None], digits: int) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return round(statistics.mean(v for v in values if v is not None), digits)


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"swimthor-peer-{args.peer}-"))
    nodes: list[Node] = []
    try:
        udpcount = None if args.no_udpcount else build_udpcount(workdir)
        ports = [free_port() for _ in range(args.nodes)]
        seed_addr = f"127.0.0.1:{ports[0]}"
        for i, port in enumerate(ports):
            if i == 0:
                # kinship's first node starts alone; swim-protocol's worker needs a peer to ping.
                seed = f"127.0.0.1:{ports[1]}" if args.peer == "swim-protocol" else None
            else:
                seed = seed_addr
            nodes.append(Node(args.peer, i, port, workdir, args.preset, args.nodes, seed, udpcount))
        idents = {n.ident for n in nodes}
        t_launch = time.time()
        for node in nodes:
            node.start()
        t0 = time.monotonic()
        wait_until(
            nodes,
            lambda: all(n.alive_since(t_launch) == idents for n in nodes),
            args.converge_timeout,
            "convergence",
        )
        converge_s = time.monotonic() - t0
        settings = nodes[0].started["settings"] if nodes[0].started else None

        # Steady state: datagrams, bytes and CPU per node per second, idle cluster.
        wait_until_quiet(nodes, 2.0)
        w0 = time.time()
        cpu_before = [n.cpu_seconds() for n in nodes]
        c0 = time.monotonic()
        steady_lines = wait_until_quiet(nodes, args.steady)
        span = time.monotonic() - c0
        cpu_after = [n.cpu_seconds() for n in nodes]
        w1 = time.time()
        cpu = [(a - b) / span * 100 for a, b in zip(cpu_after, cpu_before, strict=True)]
        pkts = [rate(n, "datagrams_out", w0 - 0.01, w1 + 0.01) for n in nodes]
        byts = [rate(n, "bytes_out", w0 - 0.01, w1 + 0.01) for n in nodes]
        pkts_in = [rate(n, "packets_in", w0 - 0.01, w1 + 0.01) for n in nodes]
        steady_failures = sum(1 for line in steady_lines if line.get("event") == "member failed")

        trials: list[dict[str, Any]] = []
        false_failures = steady_failures
        aborted = None
        for t in range(args.trials):
            victim = nodes[1 + t % (len(nodes) - 1)]
            survivors = [n for n in nodes if n is not victim]
            assert victim.proc is not None
            kill_at = time.time()
            victim.proc.kill()
            victim.proc.wait()
            seen: dict[str, float] = {}
            deadline = time.monotonic() + args.detect_timeout
            while len(seen) < len(survivors) and time.monotonic() < deadline:
                for s in survivors:
                    for line in s.poll():
                        if line.get("event") != "member failed":
                            continue
                        who = line.get("member")
                        if who == victim.ident and s.name not in seen:
                            seen[s.name] = float(line["timestamp"]) - kill_at
                        elif who != victim.ident:
                            false_failures += 1
                time.sleep(0.01)
            victim.poll()  # the dead node's last lines, before its restart appends new ones
            record_trial(trials, victim.name, seen, len(survivors))
            restart_at = time.time()
            victim.start()
            try:
                lines = wait_until(
                    nodes,
                    lambda v=victim, r=restart_at: all(
                        (a := n.alive_since(r)) is not None and v.ident in a for n in nodes
                    ),
                    args.restart_timeout,
                    f"{victim.name} alive everywhere after its restart",
                )
            except WaitTimeout as e:
                aborted = str(e)
                print(aborted, flush=True)
                break
            for line in lines:
                if line.get("event") != "member failed" or line["_node"] == victim.name:
                    continue
                # A survivor's late verdict on the killed run is no false failure; a failure of
                # anyone else, or of the restarted node, is.
                if line.get("member") != victim.ident or line["timestamp"] > restart_at:
                    false_failures += 1
        alls = [t["all_s"] for t in trials if t["all_s"] is not None]
        each_all = [x for t in trials for x in t["each_s"]]
        result: dict[str, Any] = {
            "peer": args.peer,
            "peer_version": nodes[0].started.get("version") if nodes[0].started else None,
            "nodes": args.nodes,
            "preset": args.preset,
            "settings": settings,
            "trials": len(trials),
            "busy": 0,
            "converge_s": round(converge_s, 3),
            "detected": len(alls),
            "all_failed_s": {
                "p50": pct(alls, 0.5),
                "p99": pct(alls, 0.99),
                "max": max(alls) if alls else None,
            },
            "each_failed_s": {"p50": pct(each_all, 0.5), "max": max(each_all, default=None)},
            "false_failures": false_failures,
            "datagrams_per_node_s": mean_or_none(pkts, 2),
            "bytes_per_node_s": mean_or_none(byts, 1),
            "cpu_percent_per_agent": round(statistics.mean(cpu), 2),
            "counters": (
                "UDP datagrams and payload bytes sent, counted in each node process by "
                "bench/peers/udpcount.c (LD_PRELOAD)"
                if udpcount is not None
                else None
            ),
            "detail": trials,
        }
        if args.peer == "kinship":
            # kinship's own count of datagrams received; in a closed cluster on loopback its
            # mean over the nodes matches the datagrams sent.
            result["datagrams_in_per_node_s"] = mean_or_none(pkts_in, 2)
        if aborted:
            result["aborted"] = aborted
        return result
    finally:
        for n in nodes:
            n.stop(signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"node output kept in {workdir}", file=sys.stderr)


def wait_until_quiet(nodes: list[Node], seconds: float) -> list[dict[str, Any]]:
    """Sleeps for the steady window, reading the nodes' lines; returns the membership lines."""
    lines: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for n in nodes:
            lines += [dict(line, _node=n.name) for line in n.poll()]
        time.sleep(min(0.25, max(0.0, end - time.monotonic())))
    time.sleep(0.05)
    for n in nodes:
        lines += [dict(line, _node=n.name) for line in n.poll()]
    return lines


def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--peer", choices=sorted(PEERS), required=True)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--preset", default="default")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--steady", type=float, default=10.0, help="seconds of steady-state sampling")
    p.add_argument("--converge-timeout", type=float, default=60.0)
    p.add_argument("--detect-timeout", type=float, default=60.0)
    p.add_argument("--restart-timeout", type=float, default=60.0)
    p.add_argument("--no-udpcount", action="store_true", help="do not preload udpcount.so")
    p.add_argument("--keep", action="store_true", help="keep the nodes' output files")
    p.add_argument("--out", default=None, help="JSON result file")
    args = p.parse_args(argv)
    if args.nodes < 3 or args.trials < 1:
        p.error("need --nodes >= 3 and --trials >= 1")
    if args.steady < 3:
        p.error("need --steady >= 3: the nodes print their counters once a second")
    if args.preset not in PRESETS[args.peer]:
        p.error(f"--preset for {args.peer}: one of {', '.join(PRESETS[args.peer])}")
    try:
        __import__(PEERS[args.peer][0])
    except ImportError:
        p.error(f"{args.peer} is not installed (pip install -e '.[bench]')")
    result = run(args)
    a = result["all_failed_s"]
    print(
        f"\n{result['nodes']} {result['peer']} nodes, preset {result['preset']}: "
        f"kill -9 -> dead on every survivor p50 {fmt(a['p50'], '.3f')}s "
        f"max {fmt(a['max'], '.3f')}s "
        f"({result['detected']}/{result['trials']} detected), "
        f"false failures {result['false_failures']}; steady state "
        f"{fmt(result['datagrams_per_node_s'], '')} datagrams/s and "
        f"{fmt(result['bytes_per_node_s'], '')} B/s per "
        f"node, CPU {result['cpu_percent_per_agent']}% per agent"
    )
    out = args.out or str(
        RESULTS / f"peer_{result['peer']}_{result['preset']}_{result['nodes']}.json"
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
