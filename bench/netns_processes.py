"""Loss and partitions between real `swimthor join` processes, each in its own network namespace.

Needs root, `ip` (iproute2) and `nft` (nftables); without them it says so and exits 0 having
done nothing. It creates K host namespaces (`stb-<tag>-h<i>`, address 10.200.0.<10+i>/24 on
`eth0`) joined by veth pairs to one bridge in a hub namespace (`stb-<tag>-hub`): the
10.200.0.0/24 subnet exists only inside those namespaces, and nothing is sent anywhere else.
One agent runs in each host namespace (`ip netns exec NS swimthor join ...`, lan profile by
default), h0 is the seed. Faults are nftables rules in the victim's own namespace (table
`inet stb`), one victim a trial, never the seed:

  loss       X% of the packets arriving at the victim dropped (`numgen random mod 100 < X`)
             for `--duration` seconds: no member has failed, so every failure is false.
  partition  everything to and from the victim dropped for `--duration` seconds, then healed:
             time until every other agent logs it failed, and after healing, time until every
             agent (the victim too) sees all K alive.
  oneway     everything arriving at the victim dropped (it still sends) for `--duration`
             seconds, then healed: the victim hears no answer; the others can hear it.

Times come from the agents' JSON log lines (`member suspected` / `failed` / `recovered`), the
end of a heal from the control sockets (every agent sees K alive). Every phase is bounded in
time. Namespaces, links, nft tables (they live in the namespaces) and the agents (by PID) are
removed in a `finally`; `--cleanup` removes whatever an interrupted run left (every namespace
named `stb-*` and the processes in it) and exits.

    python bench/netns_processes.py --scenario partition --hosts 5 --trials 3
    python bench/netns_processes.py --cleanup

Results: bench/results/netns_<scenario>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_harness.py, also by path
from _harness import (
    BACK,
    FAILED,
    SUSPECTED,
    Ev,
    Node,
    all_see,
    first_times,
    record_trial,
    seconds_until_all_alive,
    steady_state,
    summary,
    wait_until,
    watch,
)

HERE = Path(__file__).resolve().parent
PREFIX = "stb-"  # every namespace made here starts with this; --cleanup removes them
SUBNET = "10.200.0"  # only ever inside the namespaces made here
PORT = 7946
SCENARIOS = ("loss", "partition", "oneway")
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
TABLE = "stb"
CMD_TIMEOUT = 20.0


def which(cmd: str) -> str | None:
    return shutil.which(cmd, path=SBIN_PATH)


def unavailable() -> str | None:
    """Why this cannot run here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces and nftables need root"
    missing = [c for c in ("ip", "nft") if which(c) is None]
    if missing:
        return f"missing {' and '.join(missing)} (apt-get install iproute2 nftables)"
    return None


def sh(*argv: str, check: bool = True, input: str | None = None) -> str:
    """Run one ip/nft command, bounded in time; its stdout."""
    exe = which(argv[0]) or argv[0]
    out = subprocess.run(
        [exe, *argv[1:]],
        input=input,
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT,
        check=False,
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip() or out.returncode}")
    return out.stdout


def namespaces(prefix: str = PREFIX) -> list[str]:
    """Network namespaces whose name starts with `prefix`."""
    out = sh("ip", "netns", "list", check=False)
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def remove_namespaces(names: Sequence[str]) -> list[str]:
    """Kill the processes inside each namespace (by PID), delete it; what is still there."""
    for ns in names:
        for pid in sh("ip", "netns", "pids", ns, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    for ns in names:
        for _ in range(10):  # bounded: a namespace whose process is still exiting is busy
            sh("ip", "netns", "del", ns, check=False)
            if ns not in namespaces(ns):
                break
            time.sleep(0.1)
    return [ns for ns in names if ns in namespaces(ns)]


def cleanup(prefix: str = PREFIX) -> list[str]:
    """Remove every namespace named `prefix*` (and so its links, bridge and nft tables) and the
    processes in it; returns the names that could not be removed."""
    return remove_namespaces(namespaces(prefix))


class Netns:
    """K host namespaces on one bridge in a hub namespace, each with an empty nft table whose
    input and output chains the faults fill. Use as a context manager: it always tears down."""

    def __init__(self, hosts: int, tag: str | None = None):
        if not 2 <= hosts <= 200:
            raise ValueError("between 2 and 200 hosts")
        tag = tag or f"{os.getpid():x}"
        self.prefix = f"{PREFIX}{tag}-"
        self.hub = self.prefix + "hub"
        self.names = [f"{self.prefix}h{i}" for i in range(hosts)]
        self.addrs = [f"{SUBNET}.{10 + i}" for i in range(hosts)]

    def __enter__(self) -> Netns:
        if namespaces(self.prefix):  # not ours to remove here (--cleanup does that)
            raise RuntimeError(f"namespaces {self.prefix}* exist already (run --cleanup)")
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def create(self) -> None:
        sh("ip", "netns", "add", self.hub)
        sh("ip", "-n", self.hub, "link", "set", "lo", "up")
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(zip(self.names, self.addrs, strict=True)):
            sh("ip", "netns", "add", ns)
            # Both ends are made inside the namespaces: nothing appears in the caller's.
            # Both ends are made inside the namespaces: nothing appears in the caller's.
            peer = ["peer", "name", "eth0", "netns", ns]
            sh("ip", "-n", self.hub, "link", "add", f"v{i}", "type", "veth", *peer)
            sh("ip", "-n", self.hub, "link", "set", f"v{i}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            self.nft(
                i,
                f"add table inet {TABLE}\n"
                f"add chain inet {TABLE} input {{ type filter hook input priority 0; }}\n"
                f"add chain inet {TABLE} output {{ type filter hook output priority 0; }}\n",
            )

    def destroy(self) -> list[str]:
        """Remove this topology's namespaces (their processes first); what could not go."""
        return remove_namespaces([*self.names, self.hub])

    def exec_prefix(self, i: int) -> list[str]:
        return [which("ip") or "ip", "netns", "exec", self.names[i]]

    def nft(self, i: int, script: str) -> None:
        sh(*self.exec_prefix(i), which("nft") or "nft", "-f", "-", input=script)

    # Faults: rules in host i's own table; `heal` empties it.
    def drop_ingress(self, i: int, percent: int = 100) -> None:
        if not 0 < percent <= 100:
            raise ValueError("loss percent in 1..100")
        match = "" if percent == 100 else f"numgen random mod 100 < {percent} "
        self.nft(i, f'add rule inet {TABLE} input iifname "eth0" {match}counter drop\n')

    def drop_egress(self, i: int) -> None:
        self.nft(i, f'add rule inet {TABLE} output oifname "eth0" counter drop\n')

    def isolate(self, i: int) -> None:
        self.drop_ingress(i)
        self.drop_egress(i)

    def heal(self, i: int) -> None:
        self.nft(i, f"flush chain inet {TABLE} input\nflush chain inet {TABLE} output\n")

    def dropped(self, i: int) -> int:
        """Packets the rules in host i's table have dropped so far."""
        out = sh(*self.exec_prefix(i), which("nft") or "nft", "-j", "list", "table", "inet", TABLE)
        total = 0
        for item in json.loads(out).get("nftables", []):
            for e in item.get("rule", {}).get("expr", []):
                if "counter" in e:
                    total += int(e["counter"].get("packets", 0))
        return total

    def rules(self, i: int) -> int:
        out = sh(*self.exec_prefix(i), which("nft") or "nft", "-j", "list", "table", "inet", TABLE)
        return sum(1 for item in json.loads(out).get("nftables", []) if "rule" in item)

    def reachable(self, src: int, dst: int, attempts: int = 5) -> bool:
        """Whether host src reaches host dst: ping if installed, else a TCP connect to a closed
        port (a refusal means the packets got through). True at the first success."""
        ping = which("ping")
        addr = self.addrs[dst]
        if ping:
            argv = [*self.exec_prefix(src), ping, "-n", "-c1", "-W1", addr]
        else:
            code = (
                "import socket, sys\n"
                "s = socket.socket()\n"
                "s.settimeout(1.0)\n"
                "try:\n"
                f"    s.connect(({addr!r}, 9))\n"
                "except ConnectionRefusedError:\n"
                "    sys.exit(0)\n"
                "except OSError:\n"
                "    sys.exit(1)\n"
            )
            argv = [*self.exec_prefix(src), sys.executable, "-c", code]
        for _ in range(attempts):
            r = subprocess.run(argv, capture_output=True, timeout=CMD_TIMEOUT, check=False)
            if r.returncode == 0:
                return True
        return False


# ------------------------------------------------------------------------- the benchmark


def run_trial(
    args: argparse.Namespace,
    net: Netns,
    nodes: list[Node],
    v: int,
    trials: list[dict[str, Any]],
) -> dict[str, Any]:
    victim = nodes[v]
    others = [n.name for n in nodes if n is not victim]
    evs: list[Ev] = []
    stats_before = victim.status()["stats"]
    # Above 0: the victim has refuted a suspicion at some time. One refuted in the last
    # minute gets longer suspicions (refutation memory; --gap 65 lets that lapse).
    incarnation = {m["name"]: m["incarnation"] for m in nodes[0].members()}[victim.name]
    t0 = time.time()
    if args.scenario == "loss":
        net.drop_ingress(v, args.loss)
    elif args.scenario == "partition":
        net.isolate(v)
    else:
        net.drop_ingress(v)
    watch(nodes, lambda _: False, args.duration, into=evs)
    dropped = net.dropped(v)
    t_heal = time.time()
    net.heal(v)

    seen = first_times(evs, (FAILED,), victim.name, others, t0)
    label = {"loss": f"{args.loss}% ingress loss on", "partition": "isolate", "oneway": "deafen"}
    trial: dict[str, Any] = record_trial(
        trials, victim.name, seen, len(others), label[args.scenario]
    )
    sus = sorted(first_times(evs, (SUSPECTED,), victim.name, others, t0).values())
    trial["suspected_first_s"] = sus[0] if sus else None
    trial["suspected_all_s"] = sus[-1] if len(sus) == len(others) else None
    trial["dropped_packets"] = dropped
    trial["victim_incarnation"] = incarnation
    # What the victim itself concluded about the others while cut off.
    by_victim = {
        e.member: e.t - t0
        for e in reversed(evs)
        if e.observer == victim.name and e.event == FAILED and e.t < t_heal
    }
    trial["victim_declared_failed"] = len(by_victim)
    trial["victim_declared_all_s"] = (
        max(by_victim.values()) if set(by_victim) >= set(others) else None
    )

    # Heal: every agent (the victim too) sees all alive again.
    trial["heal_s"] = seconds_until_all_alive(nodes, t_heal, args.heal_timeout, 0.1)
    watch(nodes, lambda _: False, args.settle, into=evs)
    back = [e.t - t_heal for e in evs if e.event in BACK and e.t >= t_heal]
    trial["last_recovered_log_s"] = round(max(back), 3) if back else None
    stats_after = victim.status()["stats"]
    trial["victim_refutations"] = stats_after.get("refutations", 0) - stats_before.get(
        "refutations", 0
    )
    trial["suspicions_logged"] = sum(1 for e in evs if e.event == SUSPECTED)
    # False failures: any failure in the loss scenario (nobody is cut off); otherwise one that
    # the cut-off does not explain: among the others, of anyone but the victim, and of anyone
    # after the heal was confirmed.
    healed_at = t_heal + (trial["heal_s"] if trial["heal_s"] is not None else 1e9)
    wrong = [
        e
        for e in evs
        if e.event == FAILED
        and (
            args.scenario == "loss"
            or e.t > healed_at
            or (e.observer != victim.name and e.member != victim.name)
        )
    ]
    trial["false_failures"] = len(wrong)
    if wrong:
        trial["false_failure_detail"] = [
            {"observer": e.observer, "member": e.member, "t_s": round(e.t - t0, 3)}
            for e in wrong[:20]
        ]
    print(
        f"         dropped {dropped} packets; heal {trial['heal_s']}s; victim declared "
        f"{len(by_victim)}/{len(others)} failed; false failures {len(wrong)}; "
        f"suspicions logged {trial['suspicions_logged']}",
        flush=True,
    )
    return trial


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="swimthor-netns-"))
    nodes: list[Node] = []
    net = Netns(args.hosts)
    try:
        with net:
            seed = f"{net.addrs[0]}:{PORT}"
            for i in range(args.hosts):
                nodes.append(
                    Node(
                        f"h{i}",
                        PORT,
                        workdir,
                        args.profile,
                        None if i == 0 else seed,
                        host=net.addrs[i],
                        prefix=net.exec_prefix(i),
                    )
                )
            for n in nodes:
                n.start()
            converge_s = wait_until(
                lambda: all_see(nodes, "", "", args.hosts),
                30 + 1.5 * args.hosts,
                "convergence",
                interval=0.1,
            )
            time.sleep(2.0)
            load = steady_state(nodes, args.steady)
            steady = [e for n in nodes for e in n.new_events()]
            trials: list[dict[str, Any]] = []
            aborted = None
            for t in range(args.trials):
                if t and args.gap:
                    # Quiet time between trials, watched for false failures like the rest.
                    steady += watch(nodes, lambda _: False, args.gap)
                trial = run_trial(args, net, nodes, 1 + t % (args.hosts - 1), trials)
                if trial["heal_s"] is None:
                    aborted = f"trial {t + 1} did not heal within {args.heal_timeout}s"
                    print(f"stopping: {aborted}", flush=True)
                    break
            for n in nodes:
                n.stop(signal.SIGKILL)
            left = net.destroy()
    finally:
        for n in nodes:
            n.stop(signal.SIGKILL)
        if args.keep_logs:
            print(f"agent logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return summarize(args, trials, converge_s, steady, load, aborted, left)


def summarize(
    args: argparse.Namespace,
    trials: list[dict[str, Any]],
    converge_s: float,
    steady: list[Ev],
    load: dict[str, float],
    aborted: str | None,
    left: list[str],
) -> dict[str, Any]:
    alls = [t["all_s"] for t in trials if t["all_s"] is not None]
    each = [x for t in trials for x in t["each_s"]]
    out: dict[str, Any] = {
        "scenario": args.scenario,
        "hosts": args.hosts,
        "nodes": args.hosts,
        "profile": args.profile,
        "trials": len(trials),
        "duration_s": args.duration,
        "gap_s": args.gap,
        "converge_s": round(converge_s, 3),
    }
    if args.scenario == "loss":
        out["loss_percent"] = args.loss
    out["detected"] = len(alls)
    out["all_failed_s"] = summary(alls)
    out["each_failed_s"] = {"p50": summary(each)["p50"], "max": max(each, default=None)}
    out["all_suspected_s"] = summary([t["suspected_all_s"] for t in trials])
    out["victim_declared_all_failed_s"] = summary([t["victim_declared_all_s"] for t in trials])
    out["false_failures"] = sum(1 for e in steady if e.event == FAILED) + sum(
        t["false_failures"] for t in trials
    )
    out["healed"] = sum(1 for t in trials if t["heal_s"] is not None)
    out["heal_s"] = summary([t["heal_s"] for t in trials])
    out["suspicions_logged"] = sum(t["suspicions_logged"] for t in trials)
    out["victim_refutations"] = sum(t["victim_refutations"] for t in trials)
    out["dropped_packets"] = sum(t["dropped_packets"] for t in trials)
    out.update(load)
    out["aborted"] = aborted
    out["namespaces_left"] = left
    out["detail"] = trials
    return out


def seconds(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}s"


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so that the finally blocks tear everything down


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenario", choices=SCENARIOS, default="partition")
    p.add_argument("--hosts", type=int, default=5)
    p.add_argument("--profile", default="lan")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--loss", type=int, default=30, help="percent dropped, scenario loss")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds the fault lasts (loss 30, partition and oneway 12)",
    )
    p.add_argument("--steady", type=float, default=5.0, help="seconds of steady-state sampling")
    p.add_argument("--heal-timeout", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=5.0, help="seconds watched after each heal")
    p.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="quiet seconds between trials (65 lets Lifeguard's 60 s refutation memory lapse)",
    )
    p.add_argument("--out", default=None, help="JSON result file")
    p.add_argument("--keep-logs", action="store_true", help="keep the agents' logs (a temp dir)")
    p.add_argument(
        "--cleanup", action="store_true", help=f"remove leftover {PREFIX}* namespaces and exit"
    )
    args = p.parse_args(argv)
    why = unavailable()
    if why:
        print(f"netns_processes: skipped: {why}", file=sys.stderr)
        return 0
    if args.cleanup:
        found = namespaces()
        left = cleanup()
        print(f"removed {len(found) - len(left)} namespace(s) {' '.join(found)}".rstrip())
        if left:
            print(f"could not remove: {' '.join(left)}", file=sys.stderr)
        return 1 if left else 0
    if args.hosts < 3 or args.trials < 1:
        p.error("need --hosts >= 3 and --trials >= 1")
    if args.duration is None:
        args.duration = 30.0 if args.scenario == "loss" else 12.0
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        result = run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    a, h = result["all_failed_s"], result["heal_s"]
    what = {
        "loss": f"{args.loss}% ingress loss at one host for {args.duration}s",
        "partition": f"one host isolated for {args.duration}s",
        "oneway": f"one host deaf (ingress dropped) for {args.duration}s",
    }[args.scenario]
    print(
        f"\n{args.hosts} hosts in namespaces, profile {args.profile}, {what}: failed on every "
        f"other p50 {seconds(a['p50'])} max {seconds(a['max'])} "
        f"({result['detected']}/{result['trials']}), false failures {result['false_failures']}, "
        f"healed {result['healed']}/{result['trials']} (p50 {seconds(h['p50'])}, max "
        f"{seconds(h['max'])}); steady state {result['datagrams_per_node_s']} datagrams/s, "
        f"{result['bytes_per_node_s']} B/s per node, CPU {result['cpu_percent_per_agent']}%"
    )
    if result["namespaces_left"]:
        print(f"namespaces left behind: {result['namespaces_left']}", file=sys.stderr)
    out = args.out or str(HERE / "results" / f"netns_{args.scenario}.json")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
