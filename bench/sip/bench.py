"""The SIP benchmark: swimthor and Kamailio measured by the same sipp ladders in one run.

    python -m bench.sip.bench                 # everything, about 10 minutes
    python -m bench.sip.bench --quick         # short steps, fewer rates (about 3 minutes)
    python -m bench.sip.bench --what register,calls,kill --no-kamailio

What it measures (issue 5):

1. **REGISTER/s** on one node process of a three-node cluster with R = 2: sipp sends every
   REGISTER to node1, stepping the rate until more than 0.5% of transactions are
   retransmitted or fail. Two thirds of the AORs are owned by node1 (applied there and
   replicated to the other owner before the 200), one third are forwarded in one hop to their
   first owner.
2. **Call setups/s through two hops**: bob registers through his second owner; a sipp UAC
   calls him through the node that owns nothing of his, so each INVITE goes
   UAC -> entry node -> bob's first owner -> UAS, with ACK and BYE loose-routed back through
   the entry node. The UAS copies Record-Route.
3. **Registrations lost** when one of three nodes is killed (-9) during sustained REGISTER
   load: a client that knows which users got a 200 (bench/sip/regload.py) registers users
   through the two surviving nodes; the third is killed a third of the way in; after
   detection and handoff, every acknowledged user is queried through the survivors. Target 0.
4. The reference: Kamailio 5.6 (bench/sip/kamailio.cfg, in-memory usrloc, one worker) under
   the same REGISTER and call ladders (calls in one hop, Kamailio being a single proxy).

Figures go to stdout, bench/results/sip.json and bench/results/SIP.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import regload
from .sipp_runner import (
    StepUas,
    free_udp_port,
    kamailio,
    register_args,
    register_callee,
    step_rate,
    uac_args,
    users,
    write_users_csv,
)

REPO = Path(__file__).resolve().parent.parent.parent
RESULTS = REPO / "bench" / "results"
DOMAIN = "example.com"
KAMAILIO_SHM_MB = 1024


def _swimthor(*args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swimthor", *args], capture_output=True, text=True, timeout=timeout
    )


@dataclass
class Node:
    name: str
    gossip: int
    sip: int
    control: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.sip}"

    def status(self) -> dict[str, Any]:
        r = _swimthor("status", "--control", self.control, "--format", "json")
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        return dict(json.loads(r.stdout))

    def owners(self, aor: str) -> list[str]:
        r = _swimthor("route", aor, "--control", self.control, "--format", "json")
        return [o["name"] for o in json.loads(r.stdout)["owners"]]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@contextlib.contextmanager
def cluster(tmp: Path, n: int = 3, profile: str = "lan") -> Iterator[list[Node]]:
    """n `swimthor join` processes with --role sip on loopback; killed by PID on exit."""
    nodes = [
        Node(f"node{i + 1}", free_udp_port(), 0, str(tmp / f"node{i + 1}.sock")) for i in range(n)
    ]
    for node in nodes:
        node.sip = free_udp_port(exclude=[x.gossip for x in nodes] + [x.sip for x in nodes])
    try:
        for i, node in enumerate(nodes):
            argv = [
                sys.executable, "-m", "swimthor", "join",
                "--name", node.name,
                "--bind", f"127.0.0.1:{node.gossip}",
                "--profile", profile,
                "--insecure",
                "--control", node.control,
                "--data-dir", str(tmp / node.name),
                "--log-format", "json", "--log-level", "warning",
                "--role", "sip", "--sip", node.target, "--domain", DOMAIN,
                "--sip-auth", "off",  # like for like with Kamailio (no auth there)
            ]  # fmt: skip
            if i:
                argv.append(f"127.0.0.1:{nodes[0].gossip}")
            with open(tmp / f"{node.name}.log", "ab") as log:
                node.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            try:
                if all(x.status()["counts"]["alive"] == n for x in nodes):
                    break
            except (RuntimeError, KeyError, json.JSONDecodeError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not converge in 30 s")
            time.sleep(0.3)
        yield nodes
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()


def register_ladder(target: str, wd: Path, rates: Sequence[int], duration: float) -> Any:
    """Every step registers users u0, u1, ... again from the same local port, so each step
    refreshes the bindings of the last (as phones do) instead of adding a contact per user
    per step (which filled Kamailio's usrloc, and would reach max_contacts here)."""
    csvf = write_users_csv(wd / f"users-{time.monotonic_ns()}.csv", users(200_000, "u"))
    port = free_udp_port()
    return step_rate(lambda rate: register_args(target, csvf, DOMAIN, port), rates, duration)


def call_ladder(
    entry: str, register_at: str, wd: Path, rates: Sequence[int], duration: float
) -> Any:
    uas_port = free_udp_port()
    r = register_callee(register_at, wd, "bob", DOMAIN, uas_port)
    if r.successful != 1:
        raise RuntimeError(f"bob could not register: {r.errors[-500:]}")
    csvf = write_users_csv(wd / f"callers-{time.monotonic_ns()}.csv", users(100_000, "caller"))
    with StepUas(wd, uas_port, 3 * duration + 20, 0.005) as step_uas:
        return step_rate(
            lambda rate: uac_args(entry, csvf, DOMAIN, "bob"),
            rates,
            duration,
            settle_s=0.5,
            before_step=step_uas.start,
            after_step=step_uas.finish,
        )


def kill_under_load(nodes: list[Node], rate: int, seconds: float) -> dict[str, Any]:
    """Register rate*seconds users through node1 and node2; kill node3 a third of the way in;
    then query every acknowledged user through the survivors."""
    import threading

    victim = nodes[2]
    survivors = [("127.0.0.1", n.sip) for n in nodes[:2]]
    names = [f"k{i}" for i in range(int(rate * seconds))]
    killed_at: list[float] = []

    def killer() -> None:
        time.sleep(seconds / 3)
        victim.kill()
        killed_at.append(time.monotonic())

    start = time.monotonic()
    threading.Thread(target=killer, daemon=True).start()
    result = regload.load(survivors, names, DOMAIN, rate)
    # Wait until both survivors see the victim dead and have moved its keys: the handoff
    # runs right after the routing epoch moves; give it detection time plus a margin.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            views = [n.status() for n in nodes[:2]]
            if all(v["counts"].get("alive") == 2 for v in views):
                break
        except RuntimeError:
            pass
        time.sleep(0.5)
    time.sleep(3)
    missing, q = regload.query(survivors, result.acknowledged, DOMAIN)
    holders = {n.name: n.status()["sip"]["bindings"] for n in nodes[:2]}
    return {
        "rate": rate,
        "seconds": seconds,
        "users": len(names),
        "acknowledged": len(result.acknowledged),
        "refused": len(result.refused),
        "refused_statuses": sorted(set(result.refused.values())),
        "timed_out": len(result.timed_out),
        "retransmissions": result.retransmissions,
        "killed_after_s": round(killed_at[0] - start, 2) if killed_at else None,
        "lost": len(missing),
        "lost_examples": missing[:10],
        "query_retransmissions": q.retransmissions,
        "bindings_per_survivor": holders,
    }


def ensure_kamailio() -> bool:
    """Kamailio is only for this benchmark: install it (Debian `kamailio`) when missing and we
    are root; never enable or start its service. True if it is there now."""
    import os
    import shutil

    if shutil.which("kamailio") or Path("/usr/sbin/kamailio").exists():
        return True
    if os.geteuid() != 0:
        print("kamailio is not installed and we are not root: the reference runs are skipped")
        return False
    print("installing kamailio for the reference runs (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "kamailio"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "kamailio"],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["systemctl", "disable", "--now", "kamailio"], capture_output=True, timeout=30
        )
    return done.returncode == 0


def _best(ladder: Any) -> int | None:
    return ladder.best_rate if ladder is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress as it happens, also into a file
    ap = argparse.ArgumentParser(prog="python -m bench.sip.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--what", default="register,calls,kill")
    ap.add_argument("--quick", action="store_true", help="3 s steps, fewer rates")
    ap.add_argument("--no-kamailio", action="store_true", help="skip the reference")
    ap.add_argument("--register-rates", default="1000,2000,3000,4000,5000,6000,7000,8000,"
                    "9000,10000,12000,14000,16000,20000,24000,28000,32000")  # fmt: skip
    ap.add_argument("--call-rates", default="250,500,750,1000,1250,1500,1750,2000,2500,3000,"
                    "4000,5000,6000")  # fmt: skip
    ap.add_argument("--kill-rate", type=int, default=1000, help="REGISTER/s during the kill")
    ap.add_argument("--kill-seconds", type=float, default=30.0)
    ap.add_argument("--json", default=str(RESULTS / "sip.json"))
    args = ap.parse_args(argv)
    what = set(args.what.split(","))
    duration = 3.0 if args.quick else 5.0
    out: dict[str, Any] = {"duration_per_step_s": duration, "limit_fraction": 0.005}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="swimthor-sip-bench-") as tmp:
        wd = Path(tmp)
        if what & {"register", "calls"}:
            (wd / "c1").mkdir()
            with cluster(wd / "c1") as nodes:
                if "register" in what:
                    print(f"swimthor REGISTER/s on {nodes[0].name} (3 nodes, R = 2)")
                    reg = register_ladder(
                        nodes[0].target, wd, _rates(args.register_rates), duration
                    )
                    out["swimthor_register"] = {"best_rate": reg.best_rate, "steps": reg.rows()}
                if "calls" in what:
                    bob = f"sip:bob@{DOMAIN}"
                    owners = nodes[0].owners(bob)
                    entry = next(n for n in nodes if n.name not in owners)
                    second = next(n for n in nodes if n.name == owners[1])
                    print(f"swimthor calls/s: uac -> {entry.name} -> {owners[0]} -> uas")
                    calls = call_ladder(
                        entry.target, second.target, wd, _rates(args.call_rates), duration
                    )
                    out["swimthor_calls"] = {
                        "best_rate": calls.best_rate,
                        "path": [entry.name, owners[0]],
                        "steps": calls.rows(),
                    }
        if "kill" in what:
            (wd / "c2").mkdir()
            with cluster(wd / "c2") as nodes:
                print(
                    f"registrations lost: {args.kill_rate} REGISTER/s for {args.kill_seconds} s"
                    f" through node1+node2, node3 killed -9 at a third"
                )
                kill = kill_under_load(nodes, args.kill_rate, args.kill_seconds)
                print(f"  {json.dumps(kill)}")
                out["kill"] = kill
        if not args.no_kamailio and what & {"register", "calls"} and not ensure_kamailio():
            args.no_kamailio = True
        if not args.no_kamailio and "register" in what:
            # A fresh Kamailio for each ladder, with room for every user of the ladder in its
            # shared memory (at 256 MB its usrloc filled up after about 60,000 contacts).
            with kamailio(workers=1, shm_mb=KAMAILIO_SHM_MB) as k:
                print(f"Kamailio REGISTER/s (1 worker) on {k.target}")
                reg = register_ladder(k.target, wd, _rates(args.register_rates), duration)
                out["kamailio_register"] = {"best_rate": reg.best_rate, "steps": reg.rows()}
        if not args.no_kamailio and "calls" in what:
            with kamailio(workers=1, shm_mb=KAMAILIO_SHM_MB) as k:
                print(f"Kamailio calls/s (1 worker, one hop) on {k.target}")
                calls = call_ladder(k.target, k.target, wd, _rates(args.call_rates), duration)
                out["kamailio_calls"] = {"best_rate": calls.best_rate, "steps": calls.rows()}
    out["wall_s"] = round(time.monotonic() - t0, 1)
    summary = {
        "swimthor_register_per_s": _best_of(out, "swimthor_register"),
        "kamailio_register_per_s": _best_of(out, "kamailio_register"),
        "swimthor_calls_per_s": _best_of(out, "swimthor_calls"),
        "kamailio_calls_per_s": _best_of(out, "kamailio_calls"),
        "registrations_lost": out.get("kill", {}).get("lost"),
    }
    out["summary"] = summary
    print(json.dumps(summary, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


def _best_of(out: dict[str, Any], key: str) -> int | None:
    entry = out.get(key)
    return entry.get("best_rate") if isinstance(entry, dict) else None


def _rates(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


if __name__ == "__main__":
    sys.exit(main())
