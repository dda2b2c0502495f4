"""What the real-process benchmarks share (bench/membership_processes.py, bench/peers/run.py):
a free loopback port for UDP and TCP, a nearest-rank percentile, and one kill trial's record."""

from __future__ import annotations

import socket
from typing import Any


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (gossip binds both)."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port on 127.0.0.1")


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no samples (JSON null, not NaN)."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def record_trial(
    trials: list[dict[str, Any]], victim: str, seen: dict[str, float], survivors: int
) -> None:
    """Append one kill trial (per-survivor detection times in `seen`) and print its line."""
    each = sorted(seen.values())
    trials.append(
        {
            "victim": victim,
            "first_s": each[0] if each else None,
            "all_s": each[-1] if len(each) == survivors else None,
            "each_s": each,
        }
    )
    n = len(trials)
    print(
        f"trial {n}: kill -9 {victim}: first {each[0]:.3f}s, "
        f"all {len(each)}/{survivors} by {each[-1]:.3f}s"
        if each
        else f"trial {n}: not detected",
        flush=True,
    )
