"""Scale of the binding store: memory per binding copy, and expiry of a store's worth at once.

    python -m bench.sip.scale memory [--aors 1000000] [--out bench/results/sip_scale.json]
    python -m bench.sip.scale expiry [--aors 1000000] [--out ...]

`memory`: REGISTERs as phones send them (each from its own address, a 36-character Call-ID,
a handful of User-Agents), parsed and applied by the real registrar (`register()`) into one
`BindingStore`; the resident memory (RSS, /proc/self/statm) it grew by, per binding held. A
three-node cluster with R = 2 holds 2/3 of the AORs on each node, so one store of N is the
worst case of a cluster of 1.5 N AORs. `--heap` also counts the Python heap (tracemalloc;
slower).

`expiry`: N bindings that all expire in the same second, then the replicator's expiry step
(`expire_due`) run in a Trio loop beside a task that ticks every millisecond: the longest
the loop went without running the ticker is how long expiry stalled SIP.

Each command prints one JSON object and, with `--out`, merges it into that file under its
name. Nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import trio

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["memory", "expiry"])
    parser.add_argument("--aors", type=int, default=1_000_000)
    parser.add_argument("--heap", action="store_true", help="also count the Python heap")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.aors < 1:
        parser.error("--aors must be at least 1")
    result = memory(args.aors, args.heap) if args.what == "memory" else expiry(args.aors)
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
