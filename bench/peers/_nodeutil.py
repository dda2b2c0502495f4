"""What the peer node scripts share: JSON lines on stdout, CPU from /proc, the UDP counters.

Every line a node script prints is one JSON object with an ``event`` and a wall-clock
``timestamp`` (Unix seconds, float), so bench/peers/run.py reads them the way
bench/membership_processes.py reads swimthor's own JSON log lines:

    {"event": "member joined" | "member alive" | "member suspect" | "member failed"
              | "member left", "member": NAME, "timestamp": T}
    {"event": "stats", "timestamp": T, "alive": [NAME, ...], "datagrams_out": INT | null,
     "bytes_out": INT | null, "cpu_s": FLOAT, ...peer counters}

``datagrams_out`` and ``bytes_out`` come from bench/peers/udpcount.c when run.py preloads it
(UDP payload bytes, as swimthor counts its own); they are null when it is not loaded.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

STATS_INTERVAL = 1.0


def emit(event: str, **fields: Any) -> None:
    line = {"event": event, **fields}
    line.setdefault("timestamp", time.time())
    sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class UdpCounters:
    """The preloaded udpcount.so's counters, or None when it is not loaded."""

    def __init__(self) -> None:
        self._lib: Any = None
        path = os.environ.get("UDPCOUNT_LIB")
        if path and path in os.environ.get("LD_PRELOAD", ""):
            try:
                lib = ctypes.CDLL(path)  # the preloaded copy: dlopen returns the same handle
                lib.udpcount_datagrams.restype = ctypes.c_uint64
                lib.udpcount_bytes.restype = ctypes.c_uint64
                self._lib = lib
            except (OSError, AttributeError):
                self._lib = None

    def read(self) -> tuple[int | None, int | None]:
        if self._lib is None:
            return None, None
        return int(self._lib.udpcount_datagrams()), int(self._lib.udpcount_bytes())


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if host != "127.0.0.1":
        raise SystemExit(f"only 127.0.0.1 is allowed here, not {addr!r}")
    return host, int(port)
