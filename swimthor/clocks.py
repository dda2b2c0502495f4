"""The two clocks of the SIP and DNS front-ends, named once.

- The wall clock (`Clocks.wall`: `time.time`, unless a test gives another): seconds since the
  epoch, for what other hosts or a later process read. Binding expiry and version stamps, a
  digest nonce's age, the Date header, the subscriber journal, the kernel's receive stamps
  (SO_TIMESTAMP) and replication's sealed frames.
- Trio's clock (`Clocks.trio`: `trio.current_time`): everything timed inside this process.
  SIP transaction timers (RFC 3261 §17), flow keepalives, idle, slow-message and handshake
  deadlines, and the rate limiters' buckets (a step of the wall clock must neither refill nor
  freeze them). `MockClock` drives it in tests.

The membership core is given trio's clock and a wall offset by its runtime
(`membership/runtime.py`), so it follows the same two.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

__all__ = ["HOST_CLOCKS", "Clocks"]


@dataclass(frozen=True, slots=True)
class Clocks:
    """The wall clock a front-end reads (injectable), and trio's."""

    wall: Callable[[], float] = time.time

    @staticmethod
    def trio() -> float:
        return trio.current_time()


# The host's: what the front-ends use unless a test gives them others.
HOST_CLOCKS = Clocks()
