"""The SIP server's transaction-timer loop: every deadline is honoured, at most one run per
TIMER_TICK (one wake-up per expiring transaction meant a thousand a second under call load)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from swimthor.sip import SipServer
from swimthor.sip._server import TIMER_TICK


class Timers:
    """Stands in for the proxy: deadlines to fire, and when each run happened."""

    def __init__(self, deadlines: list[float]) -> None:
        self.deadlines = sorted(deadlines)
        self.runs: list[float] = []
        self.late: list[float] = []

    def handle(self, *args: object) -> list[object]:
        return []

    def next_timer(self) -> float | None:
        return self.deadlines[0] if self.deadlines else None

    def handle_timer(self, now: float, wall: float = 0.0) -> list[object]:
        self.runs.append(now)
        while self.deadlines and self.deadlines[0] <= now:
            self.late.append(now - self.deadlines.pop(0))
        return []


@asynccontextmanager
async def serving(timers: Timers) -> AsyncIterator[SipServer]:
    """A SIP server whose proxy is `timers`, serving until the block ends."""
    server = SipServer(proxy=timers, bind=("127.0.0.1", 0))  # type: ignore[arg-type]
    server.open()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            yield server
            nursery.cancel_scope.cancel()
    finally:
        server.close()


async def test_deadlines_close_together_share_one_run(autojump_clock: trio.abc.Clock) -> None:
    start = trio.current_time()
    timers = Timers([start + 1.0 + 0.001 * i for i in range(50)])  # 50 in 49 ms
    async with serving(timers) as server:
        await trio.sleep(2.0)  # autojump clock: virtual time passes, the test waits for nothing
    assert timers.deadlines == []  # every one fired
    assert max(timers.late) <= TIMER_TICK + 1e-9  # none later than one tick
    assert len(timers.runs) <= 49 / (TIMER_TICK * 1000) + 2  # not one run per deadline
    gaps = [b - a for a, b in zip(timers.runs, timers.runs[1:], strict=False)]
    assert min(gaps) >= TIMER_TICK - 1e-9
    assert server.stats["timer_runs"] == len(timers.runs)


async def test_an_earlier_deadline_wakes_the_loop(autojump_clock: trio.abc.Clock) -> None:
    """A message that adds a deadline before the one the loop sleeps for wakes it."""
    start = trio.current_time()
    timers = Timers([start + 100.0])
    async with serving(timers) as server:
        await trio.sleep(1.0)  # autojump clock: virtual time passes, the test waits for nothing
        timers.deadlines.insert(0, trio.current_time() + 0.5)
        server._timers_moved()
        await trio.sleep(1.0)  # autojump clock: virtual time passes, the test waits for nothing
        assert timers.deadlines == [start + 100.0]  # the 0.5 s one fired, not this one
        assert len(timers.late) == 1 and timers.late[0] <= TIMER_TICK + 1e-9
