"""Piggyback queue benchmark: how fast `TransmitLimitedQueue` drains a cluster's worth of updates.

For N = 1,000, 5,000 and 20,000 members, one update each queued (a third of them superseded by
a second one), then drained into 1400-byte packets (3 bytes of framing per update) until every
update has gone out its `retransmit_limit(N)` times, as after a join storm:

  seconds       the whole drain (best of --rounds, on one core)
  packets       packets the drain filled
  us/packet     seconds / packets: the cost of one `get_broadcasts`; it stays about flat as N
                grows when finding the next update that fits is a binary search

The test suite checks what the drain sends (tests/test_broadcast.py); this measures its speed.

    python bench/broadcast.py              # the full run, a few seconds on an idle core
    python bench/broadcast.py --quick      # small sizes, for trying things out

Results: a table on stdout and bench/results/broadcast.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from swimthor.membership import TransmitLimitedQueue  # noqa: E402

PACKET = 1400
OVERHEAD = 3


def filled(n: int, mult: int) -> TransmitLimitedQueue:
    """A queue with one update per member of `n` (40 to 119 bytes), a third superseded."""
    q = TransmitLimitedQueue(mult)
    for i in range(n):
        key = f"member-{i}"
        q.queue(key, key.encode().ljust(40 + (i * 37) % 80, b"."))
    for i in range(0, n, 3):
        key = f"member-{i}"
        q.queue(key, key.encode().ljust(40 + (i * 37) % 80, b"!"))
    return q


def drain(q: TransmitLimitedQueue, n: int) -> int:
    """Packets until the queue is empty."""
    packets = 0
    while len(q):
        q.get_broadcasts(OVERHEAD, PACKET, n)
        packets += 1
    return packets


def run_size(n: int, mult: int, rounds: int) -> dict[str, Any]:
    best = float("inf")
    packets = 0
    for _ in range(rounds):
        q = filled(n, mult)
        started = time.perf_counter()
        packets = drain(q, n)
        best = min(best, time.perf_counter() - started)
    return {
        "n": n,
        "retransmit_limit": TransmitLimitedQueue(mult).retransmit_limit(n),
        "packets": packets,
        "seconds": round(best, 4),
        "us_per_packet": round(best / packets * 1e6, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="1000,5000,20000")
    p.add_argument("--mult", type=int, default=4, help="retransmit multiplier (lan profile)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="sizes 100,1000 and one round")
    p.add_argument("--out", default=str(HERE / "results" / "broadcast.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.rounds = "100,1000", 1
    sizes = [int(x) for x in args.sizes.split(",") if x]
    result: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg(),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "sizes": [run_size(n, args.mult, args.rounds) for n in sizes],
    }
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    print(f"{'N':>8} {'limit':>6} {'packets':>9} {'seconds':>9} {'us/packet':>10}")
    for s in result["sizes"]:
        print(
            f"{s['n']:>8,} {s['retransmit_limit']:>6} {s['packets']:>9,} "
            f"{s['seconds']:>9.3f} {s['us_per_packet']:>10.1f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
