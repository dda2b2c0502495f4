"""The SIP benchmark: swimthor and Kamailio measured by the same sipp ladders in one run.

    python -m bench.sip.bench                 # everything, about 20 minutes
    python -m bench.sip.bench --quick         # 3 s steps, fewer rates (about 4 minutes)
    python -m bench.sip.bench --what register,calls,kill --no-kamailio
    python -m bench.sip.bench --what forked,stateful,callkill --baseline 528fcdd

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

And for the owner's transaction-stateful forking proxy (issue 14):

5. **forked: forked calls through two hops.** bob registers two devices (register_device.xml,
   distinct +sip.instance, equal q) through his second owner; the UAC calls him through the
   node that owns nothing of his. Device A (uas.xml) answers at once (180, 200), device B
   (uas_cancelled.xml) rings (180) and must be CANCELled (200 to the CANCEL, 487, ACK). A
   step passes as a call step does, and only if retransmissions of all three sipps (UAC, A,
   B) stay within 0.5% of the calls, A completed the calls and B was cancelled once per call
   (its CANCEL count from sipp's -trace_counts). The same ladder runs against Kamailio with
   tm (bench/sip/kamailio_tm.cfg, one worker, one hop).
6. **stateful: calls to one device, this checkout against an earlier release.** The two-hop
   call ladder of 2. against a cluster run from a `git worktree` of `--baseline` (default
   528fcdd, the last stateless proxy), then against this checkout; the ratio of the highest
   passing rates (target >= 0.8).
7. **callkill: calls lost when a node is killed under call load.** Three nodes, R = 2: the
   entry is the node that owns nothing of bob's, so the node killed (-9, a third of the way
   into 200 calls/s for 20 s) is bob's second owner; his first owner, which the entry sends
   every INVITE to, stays up. Failed and unfinished calls are counted (target 0).
8. **natkill: the same two, with phones behind NAT (issue 15).** The users' REGISTERs name
   127.0.0.2 in Via and Contact while coming from 127.0.0.1 (regload's nat_host,
   register_nat.xml), so the node they reach is their edge: it holds the flow and adds a
   Path, and calls come back through it. The node killed is never an edge: node3 for the
   registrations, bob's second owner for the calls (target 0 lost in both).

Figures go to stdout, bench/results/sip.json and bench/results/SIP.md. A case not run this
time keeps its figures from the previous sip.json, under "earlier" (and in a section of
SIP.md of its own).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench._procs import AgentProcess, ProcessExited, WaitTimeout, wait_until

from . import regload
from .sipp_runner import (
    KAMAILIO_TM_CFG,
    SCENARIOS,
    Step,
    StepRateResult,
    StepUas,
    counted,
    finish_sipp,
    free_udp_port,
    kamailio,
    register_args,
    register_callee,
    register_device_args,
    run_sipp,
    start_sipp,
    step_rate,
    uac_args,
    uas,
    users,
    write_users_csv,
)

REPO = Path(__file__).resolve().parent.parent.parent
RESULTS = REPO / "bench" / "results"
DOMAIN = "example.com"
KAMAILIO_SHM_MB = 1024
LIMIT = 0.005  # a step passes with at most this fraction of calls retransmitted or failed
BASELINE = "528fcdd"  # the last commit before the owner's stateful proxy (issue 14)
# What a phone behind NAT believes its address is, in bench NAT cases (loopback: nothing
# is ever sent anywhere else; a call that went there instead of the flow reaches nobody).
NAT_HOST = "127.0.0.2"
# bob's two devices in the forked ladder: distinct instances, equal q
DEVICE_A = "urn:uuid:00000000-0000-4000-8000-00000000000a"
DEVICE_B = "urn:uuid:00000000-0000-4000-8000-00000000000b"
FORK_SCENARIOS = ("register_device.xml", "uas.xml", "uas_cancelled.xml", "uac.xml")


def _env(code: Path | None) -> tuple[dict[str, str] | None, str | None]:
    """Environment and working directory to run `python -m swimthor` from `code` (a checkout
    of another commit; None: this one). The venv's packages are the same; swimthor itself is
    found first on PYTHONPATH (the editable install's finder comes after the path)."""
    if code is None:
        return None, None
    return {**os.environ, "PYTHONPATH": str(code)}, str(code)


def _swimthor(
    *args: str, timeout: float = 15, code: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env, cwd = _env(code)
    return subprocess.run(
        [sys.executable, "-m", "swimthor", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd,
    )  # fmt: skip


@dataclass
class Node:
    name: str
    gossip: int
    sip: int
    control: str
    agent: AgentProcess | None = None  # its `swimthor join`, once launched
    code: Path | None = None  # the checkout this node runs (None: this one)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return None if self.agent is None else self.agent.proc

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.sip}"

    def status(self) -> dict[str, Any]:
        r = _swimthor("status", "--control", self.control, "--format", "json", code=self.code)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        return dict(json.loads(r.stdout))

    def owners(self, aor: str) -> list[str]:
        r = _swimthor("route", aor, "--control", self.control, "--format", "json", code=self.code)
        return [o["name"] for o in json.loads(r.stdout)["owners"]]

    def kill(self) -> None:
        """SIGKILL by PID, reaped."""
        if self.agent is not None:
            self.agent.kill()


def join_argv(
    node: Node, tmp: Path, seed: Node | None, *extra: str, profile: str = "lan"
) -> list[str]:
    """`swimthor join` for a bench node on loopback: role sip, auth off (like for like with
    Kamailio, which has none), JSON logs at warning, joining through `seed`; then `extra`."""
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
        "--sip-auth", "off",
        *extra,
    ]  # fmt: skip
    if seed is not None:
        argv.append(f"127.0.0.1:{seed.gossip}")
    return argv


_N = TypeVar("_N", bound=Node)


def launch(
    nodes: Sequence[_N],
    tmp: Path,
    extra: Callable[[_N], Sequence[str]] = lambda node: (),
    *,
    profile: str = "lan",
    code: Path | None = None,
    new_session: bool = False,
) -> None:
    """Start `nodes` (`join_argv`, then `extra(node)`), the first as the seed of the others,
    each logging to tmp/NAME.log; `new_session`: Ctrl-C reaches only the bench."""
    env, cwd = _env(code)
    for i, node in enumerate(nodes):
        argv = join_argv(node, tmp, nodes[0] if i else None, *extra(node), profile=profile)
        node.agent = AgentProcess(
            argv, tmp / f"{node.name}.log", node.control, env=env, cwd=cwd, new_session=new_session
        )
        node.agent.spawn()


def converge(nodes: Sequence[Node], tmp: Path, timeout: float = 30.0) -> None:
    """Wait until every node sees all of them alive; ProcessExited (with the log's tail) when
    one exits, WaitTimeout after `timeout` seconds."""
    n = len(nodes)

    def converged() -> bool:
        for x in nodes:
            if x.proc is not None and x.proc.poll() is not None:
                tail = (tmp / f"{x.name}.log").read_text(errors="replace")[-2000:]
                raise ProcessExited(f"{x.name} exited with {x.proc.returncode}: {tail}")
        return all(x.status()["counts"]["alive"] == n for x in nodes)

    wait_until(
        converged,
        timeout,
        f"the cluster of {n} to converge",
        interval=0.3,
        transient=(RuntimeError, KeyError, json.JSONDecodeError, subprocess.TimeoutExpired),
    )


def stop(nodes: Sequence[Node]) -> None:
    """SIGKILL every node still running, by PID, and reap it."""
    for node in nodes:
        node.kill()


@contextlib.contextmanager
def cluster(
    tmp: Path, n: int = 3, profile: str = "lan", code: Path | None = None
) -> Iterator[list[Node]]:
    """n `swimthor join` processes with --role sip on loopback (from the checkout `code`, or
    this one); killed by PID on exit."""
    tmp.mkdir(parents=True, exist_ok=True)
    nodes = [
        Node(f"node{i + 1}", free_udp_port(), 0, str(tmp / f"node{i + 1}.sock"), code=code)
        for i in range(n)
    ]
    for node in nodes:
        node.sip = free_udp_port(exclude=[x.gossip for x in nodes] + [x.sip for x in nodes])
    try:
        launch(nodes, tmp, profile=profile, code=code)
        converge(nodes, tmp)
        yield nodes
    finally:
        stop(nodes)


def register_ladder(
    target: str,
    wd: Path,
    rates: Sequence[int],
    duration: float,
    step_timeout: float | None = None,
) -> Any:
    """Every step registers users u0, u1, ... again from the same local port, so each step
    refreshes the bindings of the last (as phones do) instead of adding a contact per user
    per step (which filled Kamailio's usrloc, and would reach max_contacts here)."""
    csvf = write_users_csv(wd / f"users-{time.monotonic_ns()}.csv", users(200_000, "u"))
    port = free_udp_port()
    return step_rate(
        lambda rate: register_args(target, csvf, DOMAIN, port),
        rates,
        duration,
        step_timeout=step_timeout,
    )


def call_ladder(
    entry: str,
    register_at: str,
    wd: Path,
    rates: Sequence[int],
    duration: float,
    step_timeout: float | None = None,
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
            step_timeout=step_timeout,
        )


def kill_under_load(
    nodes: list[Node], rate: int, seconds: float, nat: bool = False
) -> dict[str, Any]:
    """Register rate*seconds users through node1 and node2; kill node3 a third of the way in;
    then query every acknowledged user through the survivors. `nat`: the users are phones
    behind NAT (regload's nat_host), so node1 and node2 are their edges and hold their
    flows, and node3, killed, is never an edge."""
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
    result = regload.load(survivors, names, DOMAIN, rate, nat_host=NAT_HOST if nat else None)
    # Wait until both survivors see the victim dead and have moved its keys: the handoff
    # runs right after the routing epoch moves; give it detection time plus a margin. (Past
    # 60 s the query goes ahead anyway: what it finds missing is the result.)
    with contextlib.suppress(WaitTimeout):
        wait_until(
            lambda: all(n.status()["counts"].get("alive") == 2 for n in nodes[:2]),
            60,
            "both survivors to see the victim gone",
            interval=0.5,
            transient=(RuntimeError,),
        )
    time.sleep(3)
    missing, q = regload.query(survivors, result.acknowledged, DOMAIN)
    views = [n.status()["sip"] for n in nodes[:2]]
    holders = {n.name: v["bindings"] for n, v in zip(nodes[:2], views, strict=True)}
    paths = {
        n.name: v["proxy"].get("paths_added", 0) for n, v in zip(nodes[:2], views, strict=True)
    }
    return {
        "nat": nat,
        # Paths the edges added (one per REGISTER of a phone behind NAT, retransmissions
        # included): every registration went through an edge that survived.
        "paths_added": paths,
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


def two_hop_calls(
    nodes: list[Node],
    wd: Path,
    rates: Sequence[int],
    duration: float,
    step_timeout: float | None = None,
) -> dict[str, Any]:
    """The call ladder through two hops: bob registered through his second owner, called
    through the node that owns nothing of his."""
    bob = f"sip:bob@{DOMAIN}"
    owners = nodes[0].owners(bob)
    entry = next(n for n in nodes if n.name not in owners)
    second = next(n for n in nodes if n.name == owners[1])
    print(f"  uac -> {entry.name} -> {owners[0]} -> uas")
    calls = call_ladder(entry.target, second.target, wd, rates, duration, step_timeout)
    return {"best_rate": calls.best_rate, "path": [entry.name, owners[0]], "steps": calls.rows()}


def _need_scenarios(names: Sequence[str]) -> None:
    missing = [n for n in names if not (SCENARIOS / n).exists()]
    if missing:
        raise RuntimeError(f"sipp scenarios missing from {SCENARIOS}: {', '.join(missing)}")


def register_devices(
    register_at: str, wd: Path, user: str, devices: Sequence[tuple[int, str]]
) -> None:
    """Register `user`'s devices (port, +sip.instance), each from its own port, q = 1."""
    csvf = write_users_csv(wd / f"{user}-devices-{time.monotonic_ns()}.csv", [user])
    for port, instance in devices:
        r = run_sipp(
            [*register_device_args(register_at, csvf, DOMAIN, port, "1.0", instance), "-m", "1"],
            10,
        )
        if r.successful != 1:
            raise RuntimeError(f"{user}'s device {instance} could not register: {r.errors[-500:]}")


class ForkedDevices:
    """The two devices of a forked call ladder, fresh for every step: A (uas.xml) answers at
    once, B (uas_cancelled.xml) rings until it is CANCELled. `finish` adds both sides'
    counters to the step and fails it unless A completed the calls, B was cancelled once per
    call, and the retransmissions of UAC, A and B together stay within `limit_fraction` of the
    calls."""

    def __init__(
        self, wd: Path, port_a: int, port_b: int, max_s: float, limit_fraction: float
    ) -> None:
        for d in ("a", "b"):
            (wd / d).mkdir(parents=True, exist_ok=True)
        self.a = StepUas(wd / "a", port_a, max_s, limit_fraction, label="a")
        self.b = StepUas(
            wd / "b", port_b, max_s, limit_fraction, "uas_cancelled.xml", "b", counts=True
        )
        self.limit_fraction = limit_fraction

    def __enter__(self) -> ForkedDevices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.a.stop()
        self.b.stop()

    def start(self, rate: int) -> None:
        self.a.start(rate)
        self.b.start(rate)

    def finish(self, step: Step) -> None:
        self.a.finish(step)
        self.b.finish(step)
        judge_forked(step, self.b.counts_of_last, self.limit_fraction)


def judge_forked(step: Step, b_counts: dict[str, int], limit_fraction: float) -> None:
    """Add B's message counts and the retransmissions of all three sipps to a forked step
    (whose extra already holds A's and B's counters), and fail it on too many retransmissions
    or on a CANCEL count that is not one per call."""
    x = step.extra
    calls = step.calls
    retrans = (
        step.result.retransmissions + x.get("a_retransmissions", 0) + x.get("b_retransmissions", 0)
    )
    cancels = counted(b_counts, "CANCEL", "Recv")
    x.update(
        b_invites=counted(b_counts, "INVITE", "Recv"),
        b_cancels=cancels,
        b_cancels_again=counted(b_counts, "CANCEL", "Retrans"),
        b_acks=counted(b_counts, "ACK", "Recv"),
        retransmissions_all=retrans,
        retransmitted_percent=round(100.0 * retrans / max(1, calls), 3),
    )
    step.note = (
        f"A: ok {x.get('a_successful')} failed {x.get('a_failed')}"
        f" retrans {x.get('a_retransmissions')};  B: rang {x['b_invites']} cancelled {cancels}"
        f" (+{x['b_cancels_again']} again) ok {x.get('b_successful')} failed"
        f" {x.get('b_failed')} retrans {x.get('b_retransmissions')};  retransmitted (uac+A+B)"
        f" {retrans}/{calls} = {x['retransmitted_percent']}%"
    )
    if not step.passed:
        return
    if not b_counts:
        step.passed, step.why = False, "B's message counts (-trace_counts) missing"
    elif retrans > limit_fraction * calls:
        step.passed = False
        step.why = f"retransmissions (uac+A+B) {retrans}/{calls} > {limit_fraction}"
    elif abs(cancels - calls) > limit_fraction * calls:
        step.passed, step.why = False, f"B was cancelled {cancels} times in {calls} calls"


def forked_ladder(
    entry: str,
    register_at: str,
    wd: Path,
    rates: Sequence[int],
    duration: float,
    step_timeout: float | None = None,
) -> StepRateResult:
    """Calls to bob, who has two devices: registered through `register_at`, called through
    `entry`; see ForkedDevices for what a step must do to pass."""
    _need_scenarios(FORK_SCENARIOS)
    wd = wd / f"forked-{time.monotonic_ns()}"
    wd.mkdir(parents=True)
    port_a = free_udp_port()
    port_b = free_udp_port(exclude=[port_a])
    register_devices(register_at, wd, "bob", [(port_a, DEVICE_A), (port_b, DEVICE_B)])
    csvf = write_users_csv(wd / "callers.csv", users(100_000, "caller"))
    with ForkedDevices(wd, port_a, port_b, 3 * duration + 20, LIMIT) as devices:
        return step_rate(
            lambda rate: uac_args(entry, csvf, DOMAIN, "bob"),
            rates,
            duration,
            LIMIT,
            settle_s=0.5,
            before_step=devices.start,
            after_step=devices.finish,
            step_timeout=step_timeout,
        )


def forked_summary(ladder: StepRateResult) -> dict[str, Any]:
    """best_rate, the steps, and at the best step: retransmitted % and B's CANCELs per call."""
    out: dict[str, Any] = {"best_rate": ladder.best_rate, "steps": ladder.rows()}
    best = next((s for s in ladder.steps if s.rate == ladder.best_rate and s.passed), None)
    if best is not None:
        out["at_best"] = {
            "calls": best.calls,
            "successful": best.result.successful,
            "retransmitted_percent": best.extra.get("retransmitted_percent"),
            "b_cancels": best.extra.get("b_cancels"),
        }
    return out


def forked_swimthor(
    nodes: list[Node],
    wd: Path,
    rates: Sequence[int],
    duration: float,
    step_timeout: float | None = None,
) -> dict[str, Any]:
    """The forked ladder on a three-node cluster: bob's devices registered through his
    second owner, calls through the node that owns nothing of his."""
    bob = f"sip:bob@{DOMAIN}"
    owners = nodes[0].owners(bob)
    entry = next(n for n in nodes if n.name not in owners)
    second = next(n for n in nodes if n.name == owners[1])
    print(f"  uac -> {entry.name} -> {owners[0]} (forks) -> A answers, B rings and is cancelled")
    ladder = forked_ladder(entry.target, second.target, wd, rates, duration, step_timeout)
    out = forked_summary(ladder)
    out["path"] = [entry.name, owners[0]]
    out["owner_transactions"] = _transactions(nodes, owners[0])
    return out


def _transactions(nodes: list[Node], name: str) -> dict[str, Any] | None:
    """The stateful proxy counters of node `name` (None on a release without them)."""
    node = next(n for n in nodes if n.name == name)
    with contextlib.suppress(RuntimeError, KeyError, json.JSONDecodeError, OSError):
        return dict(node.status()["sip"]["transactions"])
    return None


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def checkout_id() -> str:
    """This checkout's commit, and whether swimthor/ differs from it (what a run measured)."""
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "swimthor")
    except (subprocess.SubprocessError, OSError):
        return "unknown"
    return head + (" + uncommitted changes in swimthor/" if dirty else "")


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[tuple[Path, str]]:
    """A detached `git worktree` of `ref` in a temporary directory; removed on exit."""
    sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    tmp = Path(tempfile.mkdtemp(prefix="swimthor-baseline-"))
    tree = tmp / "tree"
    try:
        git("worktree", "add", "--detach", str(tree), sha)
        yield tree, sha
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            git("worktree", "prune")


def _runs_from(code: Path) -> str:
    """Where `python -m swimthor` run for `code` imports swimthor from (checked, not trusted)."""
    env, cwd = _env(code)
    r = subprocess.run(
        [sys.executable, "-c", "import swimthor; print(swimthor.__file__)"],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=30,
    )  # fmt: skip
    where = r.stdout.strip()
    if not where.startswith(str(code)):
        raise RuntimeError(f"the baseline would import swimthor from {where!r}, not {code}")
    return where


def stateful_vs_baseline(
    ref: str,
    wd: Path,
    rates: Sequence[int],
    duration: float,
    step_timeout: float | None = None,
) -> dict[str, Any]:
    """The two-hop one-device call ladder on a cluster of `ref` (a worktree), then on this
    checkout, each on a fresh cluster; the ratio of their highest passing rates."""
    out: dict[str, Any] = {"baseline_ref": ref}
    with worktree(ref) as (tree, sha):
        out["baseline_commit"] = sha
        _runs_from(tree)
        print(f"  baseline {ref} ({sha[:10]}), from a worktree at {tree}")
        with cluster(wd / f"baseline-{sha[:10]}", code=tree) as nodes:
            out["baseline"] = two_hop_calls(nodes, wd, rates, duration, step_timeout)
    out["head_commit"] = checkout_id()
    print(f"  this checkout ({out['head_commit']})")
    with cluster(wd / "head") as nodes:
        out["head"] = two_hop_calls(nodes, wd, rates, duration, step_timeout)
    base, head = out["baseline"]["best_rate"], out["head"]["best_rate"]
    out["ratio"] = round(head / base, 3) if base and head is not None else None
    out["target_ratio"] = 0.8
    if out["ratio"] is not None:
        out["target_met"] = out["ratio"] >= 0.8
    elif base and rates and rates[0] <= 0.8 * base:
        out["target_met"] = False  # this checkout failed a step below 0.8 x the baseline's
    else:
        out["target_met"] = None
    print(
        f"  this checkout {head}/s vs baseline {base}/s: ratio {out['ratio']}"
        f" (target >= 0.8: {out['target_met']})"
    )
    return out


def calls_under_kill(
    nodes: list[Node], wd: Path, rate: int, seconds: float, nat: bool = False
) -> dict[str, Any]:
    """`rate` calls/s for `seconds` to bob (one device) through the node that owns nothing of
    his; his second owner is killed -9 a third of the way in. With three nodes and R = 2 the
    entry is the only non-owner, so the victim is the second owner and the first owner (that
    the entry forwards to) stays up. Counts the calls that failed or never ended. `nat`: bob
    is behind NAT (register_nat.xml) and registered through the entry, his edge: every call
    goes entry -> first owner -> back to the entry (his Path) -> onto his flow."""
    bob = f"sip:bob@{DOMAIN}"
    owners = nodes[0].owners(bob)
    entry = next(n for n in nodes if n.name not in owners)
    first = next(n for n in nodes if n.name == owners[0])
    victim = next(n for n in nodes if n.name == owners[1])
    print(
        f"  entry {entry.name} (owns nothing of bob's), bob's first owner {first.name} (stays up),"
        f" killed: {victim.name}, bob's second owner (with 3 nodes and R = 2 every node but the"
        f" entry owns bob)"
    )
    wd = wd / f"callkill-{time.monotonic_ns()}"
    wd.mkdir(parents=True)
    uas_port = free_udp_port()
    scenario = "register_nat.xml" if nat else "register.xml"
    r = register_callee(entry.target, wd, "bob", DOMAIN, uas_port, scenario=scenario)
    if r.successful != 1:
        raise RuntimeError(f"bob could not register: {r.errors[-500:]}")
    csvf = write_users_csv(wd / "callers.csv", users(100_000, "caller"))
    wanted = int(rate * seconds)
    killed_at: list[float] = []  # time.time(), as sipp's error log stamps its lines

    def killer() -> None:
        time.sleep(seconds / 3)
        victim.kill()
        killed_at.append(time.time())

    with uas(wd, uas_port, max_s=seconds + 60) as (proc, stf, err):
        start = time.time()
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        args = [*uac_args(entry.target, csvf, DOMAIN, "bob"), "-r", str(rate), "-m", str(wanted)]
        args += ["-l", str(max(1000, rate * 10))]
        uac_proc, uac_stf, uac_err = start_sipp(args, wd, "uac", timeout=seconds + 40)
        uac = finish_sipp(uac_proc, uac_stf, uac_err, seconds + 45)
        thread.join(seconds)
        time.sleep(0.5)  # the last BYE's 200 at the UAS
    u = finish_sipp(proc, stf, err, 5)
    kill_t = killed_at[0] if killed_at else None
    failures = sipp_failures(uac_err, kill_t)
    survivors = [n for n in nodes if n is not victim]
    views: dict[str, Any] = {}
    for n in survivors:
        with contextlib.suppress(RuntimeError, KeyError, json.JSONDecodeError, OSError):
            st = n.status()
            views[n.name] = {
                "alive": st["counts"].get("alive"),
                "answers_by_code": st["sip"].get("answers_by_code"),
                "proxy": st["sip"].get("proxy"),
                "transactions": st["sip"].get("transactions"),
            }
    lost = max(0, uac.created - uac.successful)
    out = {
        "rate": rate,
        "seconds": seconds,
        "calls": wanted,
        "entry": entry.name,
        "first_owner": first.name,
        "killed": victim.name,
        "killed_is": "bob's second owner" + (", not his edge" if nat else ""),
        "nat": nat,
        "edge": entry.name if nat else None,
        "killed_after_s": round(kill_t - start, 2) if kill_t else None,
        "created": uac.created,
        "successful": uac.successful,
        "failed": uac.failed,
        "open": uac.current,
        "retransmissions": uac.retransmissions,
        "timed_out": uac.timed_out,
        "uas_successful": u.successful,
        "uas_failed": u.failed,
        "uas_retransmissions": u.retransmissions,
        "lost": lost,
        # why the calls failed, from sipp's error log: the responses it did not expect (by
        # status) and when they came, in seconds after the kill
        "failures": failures,
        "uac_errors": uac.errors.strip().splitlines()[:20] if lost else [],
        "survivors": views,
    }
    return out


_UNEXPECTED = re.compile(
    r"(\d+\.\d+): Aborting call on unexpected message for Call-Id '[^']*': while expecting"
    r" '[^']*' \(index \d+\), received 'SIP/2\.0 (\d{3})"
)
_SIPP_EVENT = re.compile(r"(\d{9,}\.\d+): (.*)")


def sipp_failures(err: Path, since: float | None) -> dict[str, Any]:
    """What sipp's error log (-trace_err) says went wrong: unexpected responses by status,
    with the first and last time each came (seconds after `since`, else epoch), and how many
    other events (timeouts ...) it logged, with the first of them."""
    try:
        text = err.read_text(errors="replace")
    except OSError:
        return {}
    base = since or 0.0
    by_status: dict[str, dict[str, Any]] = {}
    for m in _UNEXPECTED.finditer(text):
        t, status = round(float(m.group(1)) - base, 3), m.group(2)
        entry = by_status.setdefault(status, {"count": 0, "first_s": t, "last_s": t})
        entry["count"] += 1
        entry["first_s"] = min(entry["first_s"], t)
        entry["last_s"] = max(entry["last_s"], t)
    others = [
        m.group(2)[:200]
        for m in _SIPP_EVENT.finditer(text)
        if "Aborting call on unexpected message" not in m.group(2)
    ]
    return {
        "unexpected_responses": by_status,
        "other_events": len(others),
        "first_other": others[:3],
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
    done = apt_install("kamailio")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["systemctl", "disable", "--now", "kamailio"], capture_output=True, timeout=30
        )
    return done


def apt_install(package: str) -> bool:
    """`apt-get install` one Debian package (once more after `apt-get update` if the package
    lists were stale); whether it worked. Root only: the caller checks."""
    import os

    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return done.returncode == 0


# The rates of each ladder, in full and with --quick (3 s steps, coarser). A ladder stops at
# its first failing step, so a passing step costs its seconds plus about 2 s of setup and
# only the steps up to the edge are run; the lists start low because the edge moves a lot
# with what else the two shared cores are doing.
RATES = {
    "register": (
        "1000,2000,3000,4000,5000,6000,7000,8000,9000,10000,12000,14000,16000,20000,24000,"
        "28000,32000",
        "1000,2000,4000,8000,12000,16000,24000,32000",
    ),
    "call": (
        "250,500,750,1000,1250,1500,1750,2000,2500,3000,4000,5000,6000",
        "500,1000,1500,2000,3000,4000,5000,6000",
    ),
    "forked": (
        "100,250,500,750,1000,1250,1500,1750,2000,2500,3000,3500,4000",
        "250,500,1000,1500,2000,3000",
    ),
    "stateful": (
        "250,500,750,1000,1250,1500,1750,2000,2500,3000,3500,4000,4500,5000,5500,6000",
        "500,1000,1500,2000,3000,4000,5000",
    ),
}
CASES = ("register", "calls", "kill", "forked", "stateful", "callkill", "natkill")
# what each case writes into sip.json
CASE_KEYS = {
    "register": ("swimthor_register", "kamailio_register"),
    "calls": ("swimthor_calls", "kamailio_calls"),
    "kill": ("kill",),
    "forked": ("swimthor_forked", "kamailio_forked"),
    "stateful": ("stateful",),
    "callkill": ("callkill",),
    "natkill": ("natkill", "natcallkill"),
}


def main(argv: Sequence[str] | None = None) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress as it happens, also into a file
    ap = argparse.ArgumentParser(prog="python -m bench.sip.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--what", default=",".join(CASES), help=f"any of {','.join(CASES)}")
    ap.add_argument("--quick", action="store_true", help="3 s steps, fewer rates")
    ap.add_argument("--no-kamailio", action="store_true", help="skip the reference")
    ap.add_argument("--register-rates", help=f"default {RATES['register'][0]}")
    ap.add_argument("--call-rates", help=f"default {RATES['call'][0]}")
    ap.add_argument("--forked-rates", help=f"default {RATES['forked'][0]}")
    ap.add_argument("--stateful-rates", help=f"default {RATES['stateful'][0]}")
    ap.add_argument(
        "--baseline",
        default=BASELINE,
        help=f"the release 'stateful' compares with (a commit-ish; default {BASELINE})",
    )
    ap.add_argument("--kill-rate", type=int, default=1000, help="REGISTER/s during the kill")
    ap.add_argument("--kill-seconds", type=float, help="default 30 (--quick 15)")
    ap.add_argument("--callkill-rate", type=int, default=200, help="calls/s during the kill")
    ap.add_argument("--callkill-seconds", type=float, help="default 20 (--quick 12)")
    ap.add_argument("--json", default=str(RESULTS / "sip.json"))
    ap.add_argument("--md", default=str(RESULTS / "SIP.md"))
    args = ap.parse_args(argv)
    what = set(args.what.split(","))
    if what - set(CASES):
        ap.error(f"--what: unknown {','.join(sorted(what - set(CASES)))}")
    duration = 3.0 if args.quick else 5.0
    # a step that overloads sipp is killed this long after it started (5 s more for sipp to
    # write its statistics); the default, 2 x duration + 5 s, is for the full run
    st = duration + 3 if args.quick else None
    kill_s = args.kill_seconds or (15.0 if args.quick else 30.0)
    callkill_s = args.callkill_seconds or (12.0 if args.quick else 20.0)

    def rates(name: str) -> list[int]:
        given = getattr(args, f"{name}_rates")
        return _rates(given or RATES[name][1 if args.quick else 0])

    out: dict[str, Any] = {
        "command": "python -m bench.sip.bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": checkout_id(),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "duration_per_step_s": duration,
        "limit_fraction": LIMIT,
        "cases": [c for c in CASES if c in what],
    }
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="swimthor-sip-bench-") as tmp:
        wd = Path(tmp)
        kam = not args.no_kamailio and bool(what & {"register", "calls", "forked"})
        if kam and not ensure_kamailio():
            kam = False

        def c1() -> None:
            with cluster(wd / "c1") as nodes:
                if "register" in what:
                    print(f"swimthor REGISTER/s on {nodes[0].name} (3 nodes, R = 2)")
                    reg = register_ladder(nodes[0].target, wd, rates("register"), duration, st)
                    out["swimthor_register"] = {"best_rate": reg.best_rate, "steps": reg.rows()}
                if "calls" in what:
                    print("swimthor calls/s, one device, two hops")
                    out["swimthor_calls"] = two_hop_calls(nodes, wd, rates("call"), duration, st)

        def kill() -> None:
            with cluster(wd / "c2") as nodes:
                print(
                    f"registrations lost: {args.kill_rate} REGISTER/s for {kill_s:g} s"
                    f" through node1+node2, node3 killed -9 at a third"
                )
                out["kill"] = kill_under_load(nodes, args.kill_rate, kill_s)
                print(f"  {json.dumps(out['kill'])}")

        def forked() -> None:
            with cluster(wd / "c3") as nodes:
                print("swimthor forked calls/s (bob has two devices), two hops")
                out["swimthor_forked"] = forked_swimthor(nodes, wd, rates("forked"), duration, st)
            if kam:  # right after swimthor's, so that both see the machine as alike as can be
                with kamailio(workers=1, shm_mb=KAMAILIO_SHM_MB, cfg=KAMAILIO_TM_CFG) as k:
                    print(f"Kamailio tm forked calls/s (1 worker, one hop) on {k.target}")
                    ladder = forked_ladder(k.target, k.target, wd, rates("forked"), duration, st)
                    out["kamailio_forked"] = forked_summary(ladder)

        def stateful() -> None:
            print(f"calls/s to one device: {args.baseline} (stateless) vs this checkout")
            out["stateful"] = stateful_vs_baseline(
                args.baseline, wd, rates("stateful"), duration, st
            )

        def callkill() -> None:
            with cluster(wd / "c4") as nodes:
                print(
                    f"calls lost: {args.callkill_rate} calls/s for {callkill_s:g} s,"
                    " a node killed -9 at a third"
                )
                ck = calls_under_kill(nodes, wd, args.callkill_rate, callkill_s)
                print(f"  {json.dumps({k: v for k, v in ck.items() if k != 'survivors'})}")
                out["callkill"] = ck

        def natkill() -> None:
            # Phones behind NAT: each edge holds its phones' flows; the node killed is not
            # an edge (issue 15: 0 registrations and 0 calls lost).
            with cluster(wd / "c5") as nodes:
                print(
                    f"registrations lost, phones behind NAT: {args.kill_rate} REGISTER/s for"
                    f" {kill_s:g} s through node1+node2 (their edges), node3 killed -9"
                )
                out["natkill"] = kill_under_load(nodes, args.kill_rate, kill_s, nat=True)
                print(f"  {json.dumps(out['natkill'])}")
            with cluster(wd / "c6") as nodes:
                print(
                    f"calls lost, bob behind NAT: {args.callkill_rate} calls/s for"
                    f" {callkill_s:g} s, a node that is not his edge killed -9 at a third"
                )
                ck = calls_under_kill(nodes, wd, args.callkill_rate, callkill_s, nat=True)
                print(f"  {json.dumps({k: v for k, v in ck.items() if k != 'survivors'})}")
                out["natcallkill"] = ck

        def kamailio_register() -> None:
            # A fresh Kamailio for each ladder, with room for every user of the ladder in its
            # shared memory (at 256 MB its usrloc filled up after about 60,000 contacts).
            with kamailio(workers=1, shm_mb=KAMAILIO_SHM_MB) as k:
                print(f"Kamailio REGISTER/s (1 worker) on {k.target}")
                reg = register_ladder(k.target, wd, rates("register"), duration, st)
                out["kamailio_register"] = {"best_rate": reg.best_rate, "steps": reg.rows()}

        def kamailio_calls() -> None:
            with kamailio(workers=1, shm_mb=KAMAILIO_SHM_MB) as k:
                print(f"Kamailio calls/s (1 worker, one hop) on {k.target}")
                calls = call_ladder(k.target, k.target, wd, rates("call"), duration, st)
                out["kamailio_calls"] = {"best_rate": calls.best_rate, "steps": calls.rows()}

        plan = [
            ("register+calls", bool(what & {"register", "calls"}), c1),
            ("kill", "kill" in what, kill),
            ("forked", "forked" in what, forked),
            ("stateful", "stateful" in what, stateful),
            ("callkill", "callkill" in what, callkill),
            ("natkill", "natkill" in what, natkill),
            ("kamailio_register", kam and "register" in what, kamailio_register),
            ("kamailio_calls", kam and "calls" in what, kamailio_calls),
        ]
        for name, wanted, run in plan:
            if not wanted:
                continue
            started = time.monotonic()
            try:
                run()
            except Exception as e:  # one case failing must not lose the others' figures
                print(f"{name} FAILED: {type(e).__name__}: {e}")
                out.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"
            out.setdefault("wall_by_case_s", {})[name] = round(time.monotonic() - started, 1)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    out["summary"] = summarize(out)
    _carry_over(out, Path(args.json), what)
    print(json.dumps(out["summary"], indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    Path(args.md).write_text(markdown(out))
    print(f"wrote {args.json} and {args.md} ({out['wall_s']:.0f} s)")
    return 1 if out.get("errors") else 0


def summarize(out: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of what this run measured, and the issues' targets."""
    s: dict[str, Any] = {
        "swimthor_register_per_s": _best_of(out, "swimthor_register"),
        "kamailio_register_per_s": _best_of(out, "kamailio_register"),
        "swimthor_calls_per_s": _best_of(out, "swimthor_calls"),
        "kamailio_calls_per_s": _best_of(out, "kamailio_calls"),
        "registrations_lost": out.get("kill", {}).get("lost"),
    }
    if "swimthor_forked" in out or "kamailio_forked" in out:
        f = out.get("swimthor_forked", {})
        at = f.get("at_best") or {}
        best = f.get("best_rate")
        s |= {
            "swimthor_forked_calls_per_s": best,
            "swimthor_forked_retransmitted_percent": at.get("retransmitted_percent"),
            "swimthor_forked_b_cancels_per_call": (
                round(at["b_cancels"] / at["calls"], 4) if at.get("calls") else None
            ),
            "kamailio_forked_calls_per_s": _best_of(out, "kamailio_forked"),
            "target_forked_1500_per_s": None
            if "swimthor_forked" not in out
            else (best or 0) >= 1500,
        }
    if "stateful" in out:
        st = out["stateful"]
        s |= {
            "stateful_head_calls_per_s": st["head"]["best_rate"],
            "stateful_baseline_calls_per_s": st["baseline"]["best_rate"],
            "stateful_baseline": st["baseline_ref"],
            "stateful_ratio": st["ratio"],
            "target_ratio_0_8": st.get("target_met"),
        }
    if "callkill" in out:
        s |= {"calls_lost_on_kill": out["callkill"]["lost"]}
    if "natkill" in out:
        s |= {"nat_registrations_lost": out["natkill"]["lost"]}
    if "natcallkill" in out:
        s |= {"nat_calls_lost_on_kill": out["natcallkill"]["lost"]}
    return s


def _carry_over(out: dict[str, Any], path: Path, what: set[str]) -> None:
    """The figures of cases not run this time, from the previous file (marked as such)."""
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    earlier = dict(prev.get("earlier", {}))
    for case, keys in CASE_KEYS.items():
        if case in what:
            continue
        for key in keys:
            if key in prev:
                earlier[key] = {
                    **prev[key],
                    "from_run": {k: prev.get(k) for k in ("date", "commit", "command")},
                }
    for case in what:
        for key in CASE_KEYS.get(case, ()):
            earlier.pop(key, None)
    if earlier:
        out["earlier"] = earlier


def _step_table(steps: list[dict[str, Any]], forked: bool = False) -> list[str]:
    head = "| rate/s | calls | ok | failed | retrans | open | achieved/s | rt p99 ms ≤ |"
    sep = "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    if forked:
        head += " A ok | B cancelled | retrans uac+A+B % |"
        sep += " ---: | ---: | ---: |"
    head += " result |"
    sep += " --- |"
    rows = [head, sep]
    for r in steps:
        row = (
            f"| {r['rate']:,} | {r['calls']:,} | {r['successful']:,} | {r['failed']:,} |"
            f" {r['retransmissions']:,} | {r['open']:,} | {r['achieved_rate']:,.0f} |"
            f" {r['rt_p99_ms_le']} |"
        )
        if forked:
            row += (
                f" {r.get('a_successful', '-')} | {r.get('b_cancels', '-')} |"
                f" {r.get('retransmitted_percent', '-')} |"
            )
        row += f" {'pass' if r['passed'] else 'FAIL: ' + str(r['why'])} |"
        rows.append(row)
    return rows


def markdown(out: dict[str, Any]) -> str:
    """bench/results/SIP.md: the headline table, then each ladder step by step."""
    s = out["summary"]

    def rate(v: Any) -> str:
        return "not measured" if v is None else f"{v:,}/s"

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else "**met**" if ok else "**not met**"

    md = [
        "# SIP: registrations and calls (sipp), swimthor beside Kamailio",
        "",
        f"`{out['command']}` on {out['date']}, commit {out['commit']}: {out['cpus']} CPUs shared"
        " by sipp, the three `swimthor join` processes (or Kamailio, one worker) and nothing"
        f" else of the bench; {out['duration_per_step_s']:g} s per step; a step passes when at"
        f" most {100 * out['limit_fraction']:g}% of its calls are retransmitted, fail or stay"
        f" open. {out['wall_s']:.0f} s in all."
        + (" **Quick run** (3 s steps, fewer rates)." if out["quick"] else ""),
        "",
        "| measurement | swimthor | Kamailio 5.6, 1 worker, same run | target |",
        "| --- | --- | --- | --- |",
    ]
    if "swimthor_register" in out:
        md.append(
            f"| REGISTER/s on one node of three, R = 2 | {rate(s['swimthor_register_per_s'])} |"
            f" {rate(s['kamailio_register_per_s'])} | |"
        )
    if "swimthor_calls" in out:
        md.append(
            "| call setups/s, one device: UAC → entry → owner → UAS |"
            f" {rate(s['swimthor_calls_per_s'])} (two hops) | {rate(s['kamailio_calls_per_s'])}"
            " (stateless, one hop) | |"
        )
    if "swimthor_forked" in out or "kamailio_forked" in out:
        md.append(
            "| forked call setups/s: bob's two devices, A answers, B rings and is CANCELled |"
            f" {rate(s.get('swimthor_forked_calls_per_s'))} (two hops; at it"
            f" {s.get('swimthor_forked_retransmitted_percent')}% retransmitted, B cancelled"
            f" {s.get('swimthor_forked_b_cancels_per_call')} times a call) |"
            f" {rate(s.get('kamailio_forked_calls_per_s'))} (tm, one hop) |"
            f" ≥ 1,500/s with ≤ 0.5%: {verdict(s.get('target_forked_1500_per_s'))} |"
        )
    if "stateful" in out:
        st = out["stateful"]
        md.append(
            f"| call setups/s, one device, this checkout vs {st['baseline_ref']}"
            f" ({st['baseline_commit'][:10]}, stateless), same run |"
            f" {rate(s['stateful_head_calls_per_s'])} vs"
            f" {rate(s['stateful_baseline_calls_per_s'])}:"
            f" ratio {s['stateful_ratio']} | | ≥ 0.8: {verdict(s['target_ratio_0_8'])} |"
        )
    if "kill" in out:
        k = out["kill"]
        md.append(
            f"| registrations lost: {k['rate']:,} REGISTER/s for {k['seconds']:g} s through two"
            f" nodes, the third killed -9 at {k['killed_after_s']} s | {k['lost']} of"
            f" {k['acknowledged']:,} acknowledged | | 0: {verdict(k['lost'] == 0)} |"
        )
    if "natkill" in out:
        k = out["natkill"]
        md.append(
            f"| registrations lost, phones behind NAT: {k['rate']:,} REGISTER/s for"
            f" {k['seconds']:g} s through two nodes (their edges:"
            f" {sum(k['paths_added'].values()):,} Paths added), the third killed -9 at"
            f" {k['killed_after_s']} s | {k['lost']} of {k['acknowledged']:,} acknowledged"
            f" | | 0: {verdict(k['lost'] == 0)} |"
        )
    for key in ("callkill", "natcallkill"):
        if key not in out:
            continue
        c = out[key]
        why = ", ".join(
            f"{v['count']} answered {code} from {v['first_s']:+.2f} s to {v['last_s']:+.2f} s"
            " after the kill"
            for code, v in (c.get("failures") or {}).get("unexpected_responses", {}).items()
        )
        md.append(
            f"| calls lost{', bob behind NAT' if c.get('nat') else ''}: {c['rate']:,} calls/s"
            f" for {c['seconds']:g} s through {c['entry']},"
            f" {c['killed']} ({c['killed_is']}; {c['first_owner']}, the first, stays up) killed"
            f" -9 at {c['killed_after_s']} s | {c['lost']} of {c['created']:,} ({c['failed']}"
            f" failed, {c['open']} unfinished; {c['retransmissions']} retransmissions"
            + (f"; {why}" if why else "")
            + f") | | 0: {verdict(c['lost'] == 0)} |"
        )
    md.append("")
    if out.get("wall_by_case_s"):
        md += [
            "Seconds per case: "
            + ", ".join(f"{k} {v:g}" for k, v in out["wall_by_case_s"].items()),
            "",
        ]
    for name, error in out.get("errors", {}).items():
        md += [f"**{name} failed**: {error}", ""]
    titles = [
        ("swimthor_register", "swimthor REGISTER/s", False),
        ("kamailio_register", "Kamailio REGISTER/s", False),
        ("swimthor_calls", "swimthor calls, one device, two hops", False),
        ("kamailio_calls", "Kamailio calls, one device (kamailio.cfg, stateless)", False),
        ("swimthor_forked", "swimthor forked calls, two hops", True),
        ("kamailio_forked", "Kamailio forked calls (kamailio_tm.cfg, tm)", True),
    ]
    ladders = [(title, out[key], forked) for key, title, forked in titles if key in out]
    if "stateful" in out:
        st = out["stateful"]
        one = "calls, one device, two hops"
        ladders += [
            (f"{one}: {st['baseline_ref']} (baseline)", st["baseline"], False),
            (f"{one}: this checkout, {st['head_commit']}", st["head"], False),
        ]
    for title, ladder, forked in ladders:
        if ladder.get("steps"):
            path = ladder.get("path")
            md += [f"## {title}" + (f" ({' → '.join(path)})" if path else ""), ""]
            md += [*_step_table(ladder["steps"], forked), ""]
    if out.get("earlier"):
        md += ["## Not measured in this run (from the previous sip.json)", ""]
        for key, value in out["earlier"].items():
            when = value.get("from_run") or {}
            if "ratio" in value:
                what = f"ratio {value['ratio']}"
            elif "lost" in value:
                what = f"{value['lost']} lost"
            else:
                what = f"{value.get('best_rate')}/s"
            md.append(
                f"- `{key}`: {what} ({when.get('date') or 'date unknown'},"
                f" commit {when.get('commit') or 'unknown'})"
            )
        md.append("")
    return "\n".join(md)


def _best_of(out: dict[str, Any], key: str) -> int | None:
    entry = out.get(key)
    return entry.get("best_rate") if isinstance(entry, dict) else None


def _rates(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


if __name__ == "__main__":
    sys.exit(main())
