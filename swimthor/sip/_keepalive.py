"""The edge's OPTIONS pings to the phones behind NAT on UDP it holds flows for (nathelper's "SIP
pings"), sans-IO: what to ping when, what came back, and which flows stopped answering.

Only the edge pings a contact: it is the one node that saw the phone's REGISTER arrive (and the
only one whose packets the phone's NAT lets through), so a cluster of any size sends each phone
one ping an interval, not one per replica (Kamailio #310, OpenSIPS #1372). A flow that missed
`misses` pings in a row is given up: the edge asks the owners to remove the binding.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field

from ._flow import Flow

__all__ = ["PING_PREFIX", "Pinger", "Watched"]

PING_PREFIX = "z9hG4bK-ka-"  # the branch of our pings: answers to them end here
# The pings due within one such slot go out together (see `next_deadline`).
BATCH = 0.25
# How long a REGISTER the edge forwarded may take to be answered (timer F, 64*T1) before its
# flow is no longer expected to be watched.
EXPECT_TIME = 32.0

# What a REGISTER asks of the pinger once its owners accept it: watch a flow, or (a removal,
# Expires 0) forget the flow at that address.
Plan = list["Watched | tuple[str, int]"]


@dataclass(slots=True)
class Watched:
    """One phone's flow and what its REGISTER bound (for the removal, if it goes quiet)."""

    flow: Flow
    aor: str
    contact: str
    call_id: str
    cseq: int
    until: float  # monotonic: the registration's end; no pings after it
    device: str = ""  # the Contact's +sip.instance and reg-id, as written (its binding's key)
    misses: int = 0
    waiting: str | None = None  # the branch of the ping not answered yet
    due: float = 0.0
    sent: int = field(default=0)
    # The ping's bytes around its branch (twice in it), made at the first ping.
    template: tuple[bytes, bytes, bytes] | None = None


class Pinger:
    def __init__(self, interval: float = 30.0, misses: int = 3, max_flows: int = 1_000_000) -> None:
        self.interval = interval
        self.misses = misses
        self.max_flows = max_flows
        self.flows: dict[tuple[str, int], Watched] = {}
        self._by_branch: dict[str, tuple[str, int]] = {}
        self._heap: list[tuple[float, int, tuple[str, int]]] = []
        self._seq = itertools.count()
        self._serial = itertools.count(1)
        self.stats = {"pings": 0, "answers": 0, "lost": 0, "watched": 0}
        # REGISTERs the edge forwarded to their owners, by the branch of our Via: what to
        # watch once a 2xx comes back through us (a REGISTER refused, or not authenticated,
        # must not make its source a flow whose silence removes the binding it named).
        self.expected: dict[str, tuple[float, Plan]] = {}

    def expect(self, branch: str, plan: Plan, now: float) -> None:
        """Carry out `plan` if the REGISTER sent with `branch` is accepted (`settled`)."""
        expected = self.expected
        if len(expected) >= self.max_flows:
            for old in [b for b, (until, _p) in expected.items() if until < now]:
                del expected[old]
            if len(expected) >= self.max_flows:
                del expected[next(iter(expected))]  # the oldest
        expected[branch] = (now + EXPECT_TIME, plan)

    def settled(self, branch: str, status: int, now: float) -> None:
        """A final answer to a REGISTER we forwarded went back through us."""
        if status < 200:
            return
        found = self.expected.pop(branch, None)
        if found is not None and status < 300 and found[0] >= now:
            self.apply(found[1], now)

    def apply(self, plan: Plan, now: float) -> None:
        for item in plan:
            if isinstance(item, Watched):
                self.watch(item, now)
            else:
                self.forget(*item)

    def watch(self, w: Watched, now: float) -> None:
        """Ping this flow from `now + interval` on, until its registration ends."""
        key = (w.flow.host, w.flow.port)
        old = self.flows.get(key)
        if old is not None and old.waiting is not None:
            self._by_branch.pop(old.waiting, None)
        elif old is None and len(self.flows) >= self.max_flows:
            return
        w.due = now + self.interval
        self.flows[key] = w
        self.stats["watched"] = len(self.flows)
        heapq.heappush(self._heap, (w.due, next(self._seq), key))

    def forget(self, host: str, port: int) -> None:
        w = self.flows.pop((host, port), None)
        if w is not None and w.waiting is not None:
            self._by_branch.pop(w.waiting, None)
        self.stats["watched"] = len(self.flows)

    def next_deadline(self) -> float | None:
        """When `due` has pings to send: the next ping's time, rounded up to BATCH. The
        pings of thousands of phones go out in a few bursts a second, not one wake-up each,
        and so do their answers (a burst is read in one go); a 30 s keepalive a quarter of a
        second late changes nothing."""
        heap = self._heap
        while heap:
            when, _, key = heap[0]
            w = self.flows.get(key)
            if w is not None and w.due == when:
                return math.ceil(when / BATCH) * BATCH
            heapq.heappop(heap)  # stale: forgotten, or re-registered (a new due time)
        return None

    def answered(self, branch: str) -> bool:
        """A response to one of our pings (any status: the phone is there)."""
        key = self._by_branch.pop(branch, None)
        if key is None:
            return False
        w = self.flows.get(key)
        if w is not None and w.waiting == branch:
            w.waiting = None
            w.misses = 0
            self.stats["answers"] += 1
        return True

    def due(self, now: float) -> tuple[list[tuple[Watched, str]], list[Watched]]:
        """The pings to send now (each flow and the branch to put in it), and the flows given
        up (missed `misses` pings in a row, or registration over): forgotten here."""
        pings: list[tuple[Watched, str]] = []
        lost: list[Watched] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            w = self.flows.get(key)
            if w is None or w.due != when:
                continue
            if w.waiting is not None:
                self._by_branch.pop(w.waiting, None)
                w.waiting = None
                w.misses += 1
            if w.until <= now:
                self.forget(*key)  # expired: the owners drop it themselves
                continue
            if w.misses >= self.misses:
                self.forget(*key)
                self.stats["lost"] += 1
                lost.append(w)
                continue
            branch = f"{PING_PREFIX}{next(self._serial):x}"
            w.waiting = branch
            w.sent += 1
            self._by_branch[branch] = key
            self.stats["pings"] += 1
            pings.append((w, branch))
            w.due = now + self.interval
            heapq.heappush(heap, (w.due, next(self._seq), key))
        return pings, lost
