"""Scale of the binding store: memory per binding copy, and expiry of a store's worth at once.

    python -m bench.sip.scale memory [--aors 1000000] [--out bench/results/sip_scale.json]
    python -m bench.sip.scale expiry [--aors 1000000] [--out ...]
    python -m bench.sip.scale cluster [--aors 1000000] [--rate 200] [--out ...]

`memory`: REGISTERs as phones send them (each from its own address, a 36-character Call-ID,
a handful of User-Agents), parsed and applied by the real registrar (`register()`) into one
`BindingStore`; the resident memory (RSS, /proc/self/statm) it grew by, per binding held. A
three-node cluster with R = 2 holds 2/3 of the AORs on each node, so one store of N is the
worst case of a cluster of 1.5 N AORs. `--heap` also counts the Python heap (tracemalloc;
slower).

`expiry`: N bindings that all expire in the same second, then the replicator's expiry step
(`expire_due`) run in a Trio loop beside a task that ticks every millisecond: the longest
the loop went without running the ticker is how long expiry stalled SIP.

`cluster`: three real `swimthor join` agents (lan profile, R = 2, loopback) are given `--aors`
registrations (bench/sip/regload.py, which knows which were acknowledged); their resident
memory per binding copy is read from /proc. Then, under a REGISTER load of `--rate` new
users a second through the three (latency of each, first send to final answer), a fourth node
joins: how long until it says "synced", holds its share (half of 2/4 of the copies, within
5%) and the others have dropped theirs (copies back to 2 per AOR); then one node is killed -9
and restarted with an empty store: how long until it is synced and has its share back. At the
end every user of the load and a sample of 20,000 of the bulk are asked for through the
cluster: none may be missing. Every process is killed by PID at the end.

Each command prints one JSON object and, with `--out`, merges it into that file under its
name. Nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bench._procs import AgentProcess, wait_until
from swimthor.control import call
from swimthor.ports import free_ports
from swimthor.sip import (
    BindingStore,
    RegistrarPolicy,
    Request,
    aor_of,
    expire_due,
    parse_message,
    register,
)

DOMAIN = "example.com"
AGENTS = ["Yealink SIP-T46S 66.86.0.15", "PolycomVVX-VVX_450-UA/6.4.3", "Zoiper rv2.10.19.2"]
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def phone_register(i: int, expires: int = 3600) -> tuple[bytes, str]:
    """Phone `i`'s REGISTER as it arrives, and the transport address it came from."""
    host = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    port = 5060 + i % 1000
    user = f"u{i:07d}"
    lines = [
        f"REGISTER sip:{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{DOMAIN}>;tag={uuid.uuid4().hex[:8]}",
        f"To: <sip:{user}@{DOMAIN}>",
        f"Call-ID: {uuid.uuid4()}",
        "CSeq: 1 REGISTER",
        f"User-Agent: {AGENTS[i % len(AGENTS)]}",
        f"Contact: <sip:{user}@{host}:{port};transport=udp>",
        f"Expires: {expires}",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode(), f"udp:{host}:{port}"


def fill(store: BindingStore, aors: int, now: float, expires: int = 3600) -> float:
    """Apply `aors` phones' REGISTERs to `store` (the i-th at `now` + i / 10,000 s); the
    seconds it took."""
    policy = RegistrarPolicy(default_expires=3600, min_expires=1, max_expires=7200)
    start = time.perf_counter()
    for i in range(aors):
        data, source = phone_register(i, expires)
        at = now + i * 1e-4  # each REGISTER its own moment: its own stamp, as on a node
        request = parse_message(data)
        assert isinstance(request, Request)
        aor = aor_of(request.to_addr.uri)
        assert aor is not None
        outcome = register(
            request, store, aor=aor, now=at, policy=policy, origin="n1", source=source
        )
        assert outcome.status == 200, outcome
    return time.perf_counter() - start


def memory(aors: int, heap: bool) -> dict[str, Any]:
    now = time.time()
    gc.collect()
    if heap:
        tracemalloc.start()
    before = rss()
    store = BindingStore(max_bindings=aors + 1)
    elapsed = fill(store, aors, now)
    gc.collect()
    grown = rss() - before
    out: dict[str, Any] = {
        "aors": aors,
        "bindings": len(store),
        "rss_grown_mb": round(grown / 2**20, 1),
        "rss_bytes_per_binding": round(grown / len(store)),
        "registers_per_s": round(aors / elapsed),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if heap:
        current, _peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["heap_bytes_per_binding"] = round(current / len(store))
    return out


def expiry(aors: int) -> dict[str, Any]:
    now = time.time()
    store = BindingStore(max_bindings=aors + 1)
    fill(store, aors, now, expires=60)  # due from now + 60 on
    held = len(store)
    gaps: list[float] = []

    async def main() -> float:
        async def ticker() -> None:
            last = trio.current_time()
            while True:
                await trio.sleep(0.001)
                t = trio.current_time()
                gaps.append(t - last)
                last = t

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.sleep(0.05)
            start = trio.current_time()
            await expire_due(store, now + 61 + aors * 1e-4)  # every binding is due
            took = trio.current_time() - start
            await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        return took

    took = trio.run(main)
    return {
        "aors": aors,
        "expired": held - len(store),
        "left": len(store),
        "expiry_s": round(took, 2),
        "longest_loop_stall_ms": round(max(gaps) * 1000, 1),
        "ticks": len(gaps),
    }


# ---------------------------------------------------------------- a real cluster


class Agent:
    """One `swimthor join` SIP agent on loopback (lan profile, no key: loopback only)."""

    def __init__(self, workdir: Path, name: str, seed: int | None) -> None:
        self.name = name
        self.port, self.sip_port = free_ports(2)
        self.sock = str(workdir / f"{name}.sock")
        argv = [
            sys.executable, "-m", "swimthor", "join",
            "--name", name,
            "--bind", f"127.0.0.1:{self.port}",
            "--profile", "lan",
            "--insecure",
            "--control", self.sock,
            "--data-dir", str(workdir / name),
            "--log-format", "json",
            "--role", "sip",
            "--sip", f"127.0.0.1:{self.sip_port}",
            "--domain", DOMAIN,
            "--sip-auth", "off",
        ]  # fmt: skip
        if seed is not None:
            argv.append(f"127.0.0.1:{seed}")
        self.agent = AgentProcess(argv, workdir / f"{name}.log", self.sock)

    def sip(self) -> dict[str, Any]:
        return dict(call(self.sock, "status", timeout=10.0)["sip"])

    def bindings(self) -> int:
        return int(self.sip()["bindings"])

    def rss(self) -> int:
        for line in Path(f"/proc/{self.agent.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


def _background(
    targets: list[tuple[str, int]], prefix: str, rate: float, seconds: float
) -> tuple[threading.Thread, list[Any]]:
    """A REGISTER load of new users at `rate`/s for `seconds`, in a thread; its result."""
    from . import regload

    out: list[Any] = []
    users = [f"{prefix}{i}" for i in range(int(rate * seconds))]

    def run() -> None:
        out.append(regload.load(targets, users, DOMAIN, rate=rate))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _latency(result: Any) -> dict[str, Any]:
    lat = sorted(result.latencies)

    def pick(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else None

    return {
        "sent": result.sent,
        "acknowledged": len(result.acknowledged),
        "refused": len(result.refused),
        "timed_out": len(result.timed_out),
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "max_ms": pick(1.0),
    }


def _until(cond: Callable[[], bool], timeout: float, what: str) -> float | None:
    """Seconds until `cond` holds, polled every 0.5 s; None if it did not within `timeout`."""
    try:
        return round(wait_until(cond, timeout, what, interval=0.5), 1)
    except AssertionError:
        return None


def _watch(conds: dict[str, Callable[[], bool]], timeout: float) -> dict[str, float | None]:
    """Seconds from now until each of `conds` first held, all polled together every 0.5 s
    until every one has (None for those that had not within `timeout`)."""
    start = time.monotonic()
    first: dict[str, float | None] = dict.fromkeys(conds)
    while any(v is None for v in first.values()) and time.monotonic() - start < timeout:
        for name, cond in conds.items():
            if first[name] is None:
                try:
                    held = cond()
                except (OSError, ValueError, KeyError, AssertionError):
                    held = False  # the agent is not answering yet
                if held:
                    first[name] = round(time.monotonic() - start, 1)
        time.sleep(0.5)
    return first


def cluster(aors: int, rate: float, window: float, fill_rate: float) -> dict[str, Any]:
    from . import regload

    workdir = Path(tempfile.mkdtemp(prefix="swimthor-scale-"))
    nodes: list[Agent] = []
    out: dict[str, Any] = {"aors": aors, "load_rate": rate}
    try:
        first = Agent(workdir, "s0", None)
        first.agent.start()
        nodes.append(first)
        nodes += [Agent(workdir, f"s{i}", first.port) for i in (1, 2)]
        for node in nodes[1:]:
            node.agent.start()
        wait_until(
            lambda: all(
                sum(m["state"] == "alive" for m in call(n.sock, "members")) == 3 for n in nodes
            ),
            60,
            "three agents to converge",
        )
        base = {n.name: n.rss() for n in nodes}
        targets = [("127.0.0.1", n.sip_port) for n in nodes]
        users = [f"u{i}" for i in range(aors)]
        # Offered no faster than the cluster takes them: a client that sends faster than
        # that sees most of them time out while the nodes still apply them late.
        filled = regload.load(targets, users, DOMAIN, rate=fill_rate, deadline_s=3600)
        acked = len(filled.acknowledged)
        out["fill"] = {
            "acknowledged": acked,
            "refused": len(filled.refused),
            "timed_out": len(filled.timed_out),
            "seconds": round(filled.elapsed_s, 1),
            "registers_per_s": round(acked / max(filled.elapsed_s, 1e-9)),
        }
        _until(lambda: sum(n.bindings() for n in nodes) == 2 * acked, 120, "two copies each")
        copies = {n.name: n.bindings() for n in nodes}
        grown = {n.name: n.rss() - base[n.name] for n in nodes}
        out["rss_bytes_per_binding_copy"] = {n: round(grown[n] / max(copies[n], 1)) for n in copies}
        out["copies"] = copies

        # A fourth node joins under load.
        thread, bg = _background(targets, "j", rate, window)
        fourth = Agent(workdir, "s3", first.port)
        started = time.monotonic()
        fourth.agent.start()
        nodes.append(fourth)
        join: dict[str, Any] = _watch(
            {
                "synced_s": lambda: fourth.sip()["sync"] == "synced",
                "share_s": lambda: fourth.bindings() >= 0.95 * sum(copies.values()) / 4,
                # The three others are down to their share (2/4 of the copies, within 5%,
                # of the AORs registered by now): they dropped what moved to s3.
                "others_dropped_s": lambda: (
                    max(n.bindings() for n in nodes[:3])
                    <= 1.05 * 2 * (aors + rate * min(window, time.monotonic() - started)) / 4
                ),
            },
            300,
        )
        join["from_start_s"] = round(time.monotonic() - started, 1)
        thread.join(window + 120)
        join["load"] = _latency(bg[0]) if bg else None
        out["join"] = join
        registered = list(filled.acknowledged) + (list(bg[0].acknowledged) if bg else [])

        # One node killed -9 and restarted with an empty store, under load.
        victim = nodes[1]
        targets = [("127.0.0.1", n.sip_port) for n in nodes if n is not victim]
        thread, bg2 = _background(targets, "k", rate, window)
        victim.agent.kill()
        started = time.monotonic()
        victim.agent.start()
        restart: dict[str, Any] = _watch(
            {
                "synced_s": lambda: victim.sip()["sync"] == "synced",
                "share_s": lambda: victim.bindings() >= 0.95 * sum(copies.values()) / 4,
            },
            300,
        )
        restart["from_start_s"] = round(time.monotonic() - started, 1)
        thread.join(window + 120)
        restart["load"] = _latency(bg2[0]) if bg2 else None
        out["restart"] = restart
        if bg2:
            registered += list(bg2[0].acknowledged)

        # Nothing acknowledged is missing: every user of the loads, a sample of the bulk.
        loads = [u for u in registered if not u.startswith("u")]
        sample = random.Random(1).sample(filled.acknowledged, min(20_000, acked))
        targets = [("127.0.0.1", n.sip_port) for n in nodes]
        missing, _ = regload.query(targets, loads + sample, DOMAIN, rate=5000)
        out["asked"] = len(loads) + len(sample)
        out["missing"] = len(missing)
        out["copies_end"] = {n.name: n.bindings() for n in nodes}
        return out
    finally:
        for node in nodes:
            node.agent.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["memory", "expiry", "cluster"])
    parser.add_argument("--aors", type=int, default=1_000_000)
    parser.add_argument("--heap", action="store_true", help="also count the Python heap")
    parser.add_argument("--rate", type=float, default=200.0, help="cluster: REGISTER/s load")
    parser.add_argument(
        "--window", type=float, default=60.0, help="cluster: seconds of load per phase"
    )
    parser.add_argument(
        "--fill-rate", type=float, default=2_500.0, help="cluster: REGISTER/s of the fill"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.aors < 1:
        parser.error("--aors must be at least 1")
    if args.what == "memory":
        result = memory(args.aors, args.heap)
    elif args.what == "expiry":
        result = expiry(args.aors)
    else:
        result = cluster(args.aors, args.rate, args.window, args.fill_rate)
    result["python"] = sys.version.split()[0]
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps(result))
    if args.out is not None:
        results = json.loads(args.out.read_text()) if args.out.exists() else {}
        results[args.what] = result
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
