"""The SIP server's clocks: the transaction-timer loop honours every deadline, at most one run
per TIMER_TICK (one wake-up per expiring transaction meant a thousand a second under call
load); the rate limiter runs on trio's clock, not the wall clock (swimthor.clocks)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from swimthor.clocks import Clocks
from swimthor.ratelimit import RateLimit, SourceLimiter
from swimthor.sip import TIMER_TICK, SipServer


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


# ---------------------------------------------------------------- the two clocks


class Counting(Timers):
    """Stands in for the proxy: counts what it is given to handle."""

    def __init__(self) -> None:
        super().__init__([])
        self.handled = 0

    def handle(self, *args: object) -> list[object]:
        self.handled += 1
        return []


async def test_the_rate_limit_runs_on_trios_clock_not_the_wall_clock(
    mock_clock: trio.testing.MockClock,
) -> None:
    """swimthor.clocks: the limiter's buckets refill with trio's clock, so a wall clock that
    stands still (or steps back, NTP) neither freezes nor refills them."""
    proxy = Counting()
    server = SipServer(
        proxy=proxy,  # type: ignore[arg-type]
        bind=("127.0.0.1", 0),
        limiter=SourceLimiter(RateLimit(rate=1.0, burst=1.0)),
        clocks=Clocks(wall=lambda: 1_000_000_000.0),  # the wall clock stands still
    )
    port = server.open()[1]
    client = trio.socket.socket(type=socket.SOCK_DGRAM)
    await client.bind(("127.0.0.1", 0))

    async def sent(n: int) -> None:
        """Send one datagram, and come back once the server has read `n` in all."""
        await client.sendto(b"OPTIONS sip:x SIP/2.0\r\n\r\n", ("127.0.0.1", port))
        for _ in range(100_000):  # no clock runs here (MockClock, rate 0): count the turns
            if server.stats["udp_received"] >= n:
                return
            await trio.sleep(0)
        raise AssertionError(f"the server read {server.stats['udp_received']} of {n}")

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            await sent(1)
            await sent(2)  # the bucket (burst 1) is empty: limited
            assert (proxy.handled, server.stats["rate_limited"]) == (1, 1)
            mock_clock.jump(1.0)  # one second of trio's clock: one more allowed
            await sent(3)
            assert (proxy.handled, server.stats["rate_limited"]) == (2, 1)
            nursery.cancel_scope.cancel()
    finally:
        client.close()
        server.close()
