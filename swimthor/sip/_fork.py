"""The owner's stateful proxy core (RFC 3261 §16.5-16.10): forking a request to every device of
an address-of-record, choosing the best response, cancelling the losers. Sans-IO.

`Forks` holds every server transaction the owner proxies statefully, each with its response
context (`Fork`), and the client transactions of the branches. What goes out is a list of
`Send`; time is a monotonic `now` (the transport's clock), and `next_deadline()` /
`on_timer(now)` drive every timer: the transactions' (§17) and the proxy's own:

- **Target set** (§16.5): the targets come grouped by q, highest first, one per device (the
  proxy dedupes bindings by `+sip.instance`). A group rings in parallel; the next group starts
  when every branch of the current one has failed, or when it has rung `fork_timeout` seconds
  with no final answer (its branches are then cancelled).
- **Responses** (§16.7): 100 Trying is sent to the caller at once, and never forwarded from a
  branch; other provisionals are forwarded; a 2xx is forwarded at once (each one: a forked
  INVITE can create several dialogs) and the pending branches are cancelled; a 6xx ends the
  search (pending branches cancelled, no new ones) and is the answer; the rest are kept and,
  once nothing is pending, the best is sent: 6xx, else the lowest class. A branch that timed
  out counts as 408, one the transport could not reach as 503; a chosen 503 goes up as 500
  (§16.7 step 6, a 503 would make the caller think this node is down).
- **CANCEL** (§16.10): the caller's CANCEL of an INVITE we proxy is answered 200 by the proxy
  and sent on every pending branch that has had a provisional response (§9.1: not before; a
  branch that has had none is given up at once, and cancelled if a provisional comes later).
  The best response is then the branches' 487s (or ours).
- **Timer C** (§16.6 step 11): an INVITE branch that rings longer than timer C after its last
  provisional is cancelled and counts as 408.

ACKs of non-2xx finals are hop by hop: the branches' client transactions send them, the server
transaction absorbs the caller's. 2xx and their ACKs are end to end and go through.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import NamedTuple

from ._actions import Send
from ._message import Request, Response, pop_first_value
from ._transaction import (
    ClientTransaction,
    Deliver,
    Ended,
    Output,
    ResponseBytes,
    ServerTransaction,
    State,
    TimedOut,
    TimerSettings,
    Transmit,
    TransportFailed,
    cancel_for,
)

__all__ = ["ANSWERED_ELSEWHERE", "Branch", "Fork", "Forks", "Target"]

# The Reason of the CANCEL that stops the other devices once one answered (RFC 3326).
ANSWERED_ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'


class Target(NamedTuple):
    """One device to ring: the Request-URI of its branch and where the request goes. (A
    named tuple: one is made per device per call.)"""

    uri: str
    transport: str
    host: str
    port: int
    q: float = 1.0
    instance: str = ""
    # RFC 3327: the binding's Path left to follow (the branch's Route set), and when we are
    # the device's edge ourselves, the connection of its flow.
    route: tuple[str, ...] = ()
    conn: int | None = None
    record_route: str = ""  # ours, with the flow token, when we send onto the device's flow
    # The device's other flows (RFC 5626 §5.3), each tried in turn when this one answers 430.
    alternates: tuple[Target, ...] = ()


# (request as received, target, loop hash) -> (the branch's request, our Via on top; where it
# goes; the branch parameter of that Via), or None when it cannot be sent (too large)
BuildBranch = Callable[[Request, Target, str], "tuple[Request, Send, str] | None"]
# (request as received, status, reason) -> a response we make ourselves (our To tag)
BuildAnswer = Callable[[Request, int, str], bytes]


class Branch:
    """One forwarded copy of the request (§16.6) and what became of it."""

    __slots__ = (
        "cancel_reason",
        "cancel_sent",
        "cancel_wanted",
        "done",
        "fork",
        "provisional",
        "request",
        "send",
        "target",
        "timer_c_at",
        "txn",
    )

    def __init__(
        self, fork: Fork, target: Target, request: Request, send: Send, txn: ClientTransaction
    ) -> None:
        self.fork = fork
        self.target = target
        self.request = request  # as we sent it: what its CANCEL is made from
        self.send = send  # where it went
        self.txn = txn
        self.done = False  # a final answer (real or ours) counts for the response context
        self.provisional = False
        self.cancel_wanted = False  # cancel as soon as a provisional allows it (§9.1)
        self.cancel_sent = False
        self.cancel_reason: str | None = None  # RFC 3326 Reason of our CANCEL, if any
        self.timer_c_at: float | None = None


class Fork:
    """The response context of one request proxied statefully (§16.7)."""

    __slots__ = (
        "answered",
        "branches",
        "cancelled",
        "finals",
        "group_deadline",
        "groups",
        "loop",
        "request",
        "respond_to",
        "scheduled",
        "server",
        "six",
    )

    def __init__(
        self,
        server: ServerTransaction,
        request: Request,
        respond_to: Send,
        groups: list[list[Target]],
        loop: str,
    ) -> None:
        self.server = server
        # The request as received; dropped once answered (`Forks._slim`): a context then
        # only absorbs retransmissions for 32 s, and tens of thousands of them are alive.
        self.request: Request | None = request
        self.loop = loop  # the request's loop hash (§16.6 step 8), for each branch's Via
        self.respond_to = respond_to
        self.groups = groups  # the groups not yet started
        self.branches: list[Branch] = []
        self.finals: list[tuple[int, bytes | None]] = []  # status, bytes (None: ours to make)
        self.answered = False  # a final (or a 2xx) has gone to the caller
        self.cancelled = False
        self.six = False
        self.group_deadline: float | None = None
        self.scheduled: float | None = None

    @property
    def pending(self) -> list[Branch]:
        return [b for b in self.branches if not b.done]

    @property
    def deadline(self) -> float | None:
        times = [b.timer_c_at for b in self.branches if not b.done and b.timer_c_at is not None]
        if self.group_deadline is not None:
            times.append(self.group_deadline)
        return min(times) if times else None


def _best(finals: list[tuple[int, bytes | None]]) -> tuple[int, bytes | None]:
    """§16.7 step 6: a 6xx if there is one, else one of the lowest class, the first of it."""
    six = [f for f in finals if f[0] >= 600]
    if six:
        return six[0]
    return min(finals, key=lambda f: f[0] // 100)


class Forks:
    """Every stateful proxy context of one node, its transactions and its timers."""

    def __init__(
        self,
        build_branch: BuildBranch,
        build_answer: BuildAnswer,
        *,
        timers: TimerSettings | None = None,
        fork_timeout: float = 30.0,
        max_forks: int = 200_000,
    ) -> None:
        self._build_branch = build_branch
        self._build_answer = build_answer
        self.timers = timers or TimerSettings()
        self.fork_timeout = fork_timeout
        self.max_forks = max_forks
        self.servers: dict[tuple[str, ...], Fork] = {}
        self.clients: dict[tuple[str, str], tuple[ClientTransaction, Branch]] = {}
        self._heap: list[tuple[float, int, ClientTransaction | ServerTransaction | Fork]] = []
        self._seq = itertools.count()
        self.stats = {
            "forks": 0,
            "branches": 0,
            "cancels_received": 0,
            "cancels_sent": 0,
            "branch_timeouts": 0,
            "branch_transport_errors": 0,
            "flow_retries": 0,  # branches tried again on another flow of the device (430)
            "fork_full": 0,
            "responses_forwarded": 0,
            "retransmissions_absorbed": 0,
        }

    # ---------------------------------------------------------------- status

    def counts(self) -> dict[str, int]:
        return {
            "server_transactions": len(self.servers),
            "client_transactions": len(self.clients),
            "forks_active": sum(1 for f in self.servers.values() if f.pending),
        }

    @property
    def full(self) -> bool:
        return len(self.servers) >= self.max_forks

    # ---------------------------------------------------------------- timers

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            when, _, obj = heap[0]
            if obj.scheduled == when:
                return when
            heapq.heappop(heap)  # stale: the object moved its deadline or is gone
        return None

    def _schedule(self, obj: ClientTransaction | ServerTransaction | Fork) -> None:
        when = obj.deadline
        if when is not None and obj.scheduled != when:
            obj.scheduled = when
            heap = self._heap
            heapq.heappush(heap, (when, next(self._seq), obj))
            if len(heap) > 2 * (len(self.servers) + len(self.clients)) + 1024:
                # Entries whose object moved its deadline (a branch answered long before
                # timer C) would keep it alive until their time: drop them now and then.
                self._heap = [e for e in heap if e[2].scheduled == e[0]]
                heapq.heapify(self._heap)
        elif when is None:
            obj.scheduled = None

    def on_timer(self, now: float) -> list[Send]:
        out: list[Send] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, obj = heapq.heappop(heap)
            if obj.scheduled != when:
                continue
            obj.scheduled = None
            if isinstance(obj, Fork):
                self._fork_timer(obj, now, out)
                self._schedule(obj)
            elif isinstance(obj, ServerTransaction):
                fork = self.servers.get(obj.key)
                self._server_outputs(obj, fork, obj.on_timer(now), now, out)
            elif isinstance(obj, ClientTransaction):
                found = self.clients.get(obj.key)
                if found is not None and found[0] is obj:
                    self._client_outputs(obj, found[1], obj.on_timer(now), now, out)
        return out

    # ---------------------------------------------------------------- server side

    def start(
        self,
        key: tuple[str, ...],
        request: Request,
        respond_to: Send,
        groups: list[list[Target]],
        now: float,
        loop: str = "0",
    ) -> list[Send]:
        """Proxy `request` (received, already validated and with its Max-Forwards checked) to
        the target groups, statefully. `respond_to` says where responses go (its data unused).
        """
        reliable = respond_to.transport != "udp"
        server = ServerTransaction(key, request, reliable=reliable, now=now, timers=self.timers)
        fork = Fork(server, request, respond_to, [g for g in groups if g], loop)
        self.servers[key] = fork
        self.stats["forks"] += 1
        out: list[Send] = []
        if server.invite:
            # §16.2 / §17.2.1: a 100 at once, so the caller stops retransmitting.
            self._respond(fork, 100, self._build_answer(request, 100, "Trying"), now, out)
        self._next_group(fork, now, out)
        return out

    def server_for(self, key: tuple[str, ...]) -> Fork | None:
        return self.servers.get(key)

    def retransmission(self, fork: Fork, request: Request, now: float) -> list[Send]:
        """A retransmitted request, or the ACK of a non-2xx final we sent (hop by hop)."""
        self.stats["retransmissions_absorbed"] += 1
        out: list[Send] = []
        self._server_outputs(fork.server, fork, fork.server.receive_request(request, now), now, out)
        return out

    def cancel(self, fork: Fork, now: float) -> list[Send]:
        """The caller CANCELled the INVITE of `fork` (§16.10); the 200 for the CANCEL itself
        is the proxy's to send."""
        self.stats["cancels_received"] += 1
        out: list[Send] = []
        if fork.answered or fork.cancelled:
            return out
        fork.cancelled = True
        fork.groups = []
        fork.group_deadline = None
        for branch in fork.pending:
            if branch.provisional:
                # It rings: CANCEL it and wait for its 487 (or for our CANCEL to time out).
                self._send_cancel(branch, now, out)
            else:
                self._give_up(branch, 487, now, out)
        self._settle(fork, now, out)
        self._schedule(fork)
        return out

    def _respond(self, fork: Fork, status: int, data: bytes, now: float, out: list[Send]) -> None:
        self._server_outputs(fork.server, fork, fork.server.respond(status, data, now), now, out)

    def _server_outputs(
        self,
        server: ServerTransaction,
        fork: Fork | None,
        outputs: list[Output],
        now: float,
        out: list[Send],
    ) -> None:
        for o in outputs:
            if isinstance(o, Transmit):
                to = fork.respond_to if fork is not None else None
                if to is not None:
                    out.append(Send(to.transport, to.host, to.port, o.data, to.conn))
            elif isinstance(o, Ended):
                if self.servers.get(server.key) is fork:
                    del self.servers[server.key]
                if fork is not None:
                    fork.group_deadline = None
                    # No Fork <-> Branch cycle left behind: reference counting frees both
                    # once the last branch transaction ends, no garbage collector pass.
                    fork.branches = []
        self._schedule(server)

    # ---------------------------------------------------------------- branches

    def _next_group(self, fork: Fork, now: float, out: list[Send]) -> None:
        """Start the next q group; when none is left (or none could be started), answer."""
        while fork.groups and not (fork.answered or fork.cancelled or fork.six):
            group = fork.groups.pop(0)
            started = 0
            for target in group:
                if self._open_branch(fork, target, now, out):
                    started += 1
            if started and any(not b.done for b in fork.branches):
                fork.group_deadline = now + self.fork_timeout if fork.groups else None
                self._schedule(fork)
                return
        fork.group_deadline = None
        self._settle(fork, now, out)

    def _open_branch(self, fork: Fork, target: Target, now: float, out: list[Send]) -> bool:
        assert fork.request is not None, "no branch is opened once answered"
        built = self._build_branch(fork.request, target, fork.loop)
        if built is None:
            return False
        request, send, branch_param = built
        key = (branch_param, request.method)
        txn = ClientTransaction(
            key,
            request,
            send.data,
            reliable=send.transport != "udp",
            now=now,
            timers=self.timers,
        )
        branch = Branch(fork, target, request, send, txn)
        if txn.invite:
            branch.timer_c_at = now + self.timers.timer_c
        fork.branches.append(branch)
        self.clients[key] = (txn, branch)
        self.stats["branches"] += 1
        self._client_outputs(txn, branch, txn.start(), now, out)
        return True

    def response(
        self, response: Response | ResponseBytes, key: tuple[str, str], now: float
    ) -> list[Send] | None:
        """A response to one of our branches (or to a CANCEL we sent); None when no client
        transaction of ours has that key (the caller then treats it statelessly)."""
        found = self.clients.get(key)
        if found is None:
            return None
        txn, branch = found
        out: list[Send] = []
        self._client_outputs(txn, branch, txn.receive(response, now), now, out)
        return out

    def transport_error(self, key: tuple[str, str], now: float) -> list[Send]:
        found = self.clients.get(key)
        if found is None:
            return []
        txn, branch = found
        out: list[Send] = []
        self._client_outputs(txn, branch, txn.transport_error(), now, out)
        return out

    def _client_outputs(
        self,
        txn: ClientTransaction,
        branch: Branch,
        outputs: list[Output],
        now: float,
        out: list[Send],
    ) -> None:
        fork = branch.fork
        is_cancel = txn.request.method == "CANCEL"
        for o in outputs:
            if isinstance(o, Transmit):
                to = branch.send
                out.append(Send(to.transport, to.host, to.port, o.data, None, txn.key))
            elif isinstance(o, Deliver):
                if not is_cancel:  # a CANCEL's own 200 (or error) ends there (§16.10)
                    self._branch_response(fork, branch, o.response, now, out)
            elif isinstance(o, TimedOut | TransportFailed):
                if isinstance(o, TimedOut):
                    self.stats["branch_timeouts"] += 1
                else:
                    self.stats["branch_transport_errors"] += 1
                status = 408 if isinstance(o, TimedOut) else 503
                if is_cancel:
                    status = 487  # the device never answered our CANCEL: give the branch up
                if not branch.done:
                    branch.done = True
                    fork.finals.append((status, None))
                    self._settle(fork, now, out)
            elif isinstance(o, Ended):
                if self.clients.get(txn.key, (None,))[0] is txn:
                    del self.clients[txn.key]
                # Once answered, a branch whose transactions have all ended is only memory
                # (its server transaction lingers 32 s to absorb retransmissions).
                if (
                    fork.answered
                    and branch.done
                    and branch.txn.key not in self.clients
                    and (branch.txn.key[0], "CANCEL") not in self.clients
                    and branch in fork.branches
                ):
                    fork.branches.remove(branch)
        self._schedule(txn)
        self._schedule(fork)

    def _branch_response(
        self,
        fork: Fork,
        branch: Branch,
        response: Response | ResponseBytes,
        now: float,
        out: list[Send],
    ) -> None:
        status = response.status
        if status < 200:
            if not branch.provisional:
                branch.provisional = True
                if branch.cancel_wanted:
                    self._send_cancel(branch, now, out)
            if branch.timer_c_at is not None and not branch.done:
                branch.timer_c_at = now + self.timers.timer_c  # §16.7 step 2: reset timer C
            if status == 100 or branch.done or fork.answered:
                return  # §16.7 step 5: 100 is hop by hop
            self._forward(fork, response, now, out)
            return
        if status < 300:
            # §16.7 step 5: every 2xx goes up at once, even a late one on a given-up branch.
            branch.done = True
            first = not fork.answered
            fork.answered = True
            fork.groups = []
            fork.group_deadline = None
            self._forward(fork, response, now, out)
            if first and fork.server.invite:
                for other in fork.pending:
                    # RFC 3326: so the other phones do not show a missed call.
                    other.cancel_reason = ANSWERED_ELSEWHERE
                    self._give_up(other, 487, now, out)
            if first:
                self._slim(fork)
            return
        if branch.done:
            return
        branch.done = True
        alternates = branch.target.alternates
        if status == 430 and alternates and not (fork.cancelled or fork.six):
            # RFC 5626 §5.3: that flow is gone; the device may have another (a second edge).
            self.stats["flow_retries"] += 1
            nxt = alternates[0]._replace(alternates=alternates[1:])
            if self._open_branch(fork, nxt, now, out):
                return
        fork.finals.append((status, self._without_our_via(response)))
        if status >= 600:
            fork.six = True
            fork.groups = []
            fork.group_deadline = None
            if fork.server.invite:
                for other in fork.pending:
                    self._give_up(other, 487, now, out)
        self._settle(fork, now, out)

    def _give_up(self, branch: Branch, status: int, now: float, out: list[Send]) -> None:
        """Stop waiting for `branch`: CANCEL it if it has rung (§9.1), else as soon as it does;
        it counts as `status` unless a real final answer already counted."""
        if branch.done:
            return
        branch.done = True
        branch.fork.finals.append((status, None))
        if branch.txn.invite and branch.txn.state in (State.CALLING, State.PROCEEDING):
            if branch.provisional:
                self._send_cancel(branch, now, out)
            else:
                branch.cancel_wanted = True

    def _send_cancel(self, branch: Branch, now: float, out: list[Send]) -> None:
        if branch.cancel_sent or branch.txn.state not in (State.CALLING, State.PROCEEDING):
            return
        branch.cancel_sent = True
        self.stats["cancels_sent"] += 1
        cancel = cancel_for(branch.request, branch.cancel_reason)
        data = cancel.to_bytes()
        key = (branch.txn.key[0], "CANCEL")
        txn = ClientTransaction(
            key, cancel, data, reliable=branch.send.transport != "udp", now=now, timers=self.timers
        )
        self.clients[key] = (txn, branch)
        self._client_outputs(txn, branch, txn.start(), now, out)

    def _fork_timer(self, fork: Fork, now: float, out: list[Send]) -> None:
        for branch in fork.branches:
            if not branch.done and branch.timer_c_at is not None and branch.timer_c_at <= now:
                # §16.8: timer C. Rung: CANCEL it; never rung: as if it answered 408.
                self.stats["branch_timeouts"] += 1
                self._give_up(branch, 408, now, out)
        if fork.group_deadline is not None and fork.group_deadline <= now:
            fork.group_deadline = None
            for branch in fork.pending:
                self._give_up(branch, 408, now, out)
            self._next_group(fork, now, out)
            return
        self._settle(fork, now, out)

    def _settle(self, fork: Fork, now: float, out: list[Send]) -> None:
        """When no branch is pending: the next group, or the best answer to the caller."""
        if fork.pending or fork.answered:
            return
        if fork.groups and not (fork.cancelled or fork.six):
            self._next_group(fork, now, out)
            return
        fork.answered = True
        fork.group_deadline = None
        if not fork.finals:
            fork.finals.append((480, None))  # no branch could even be sent
        status, data = _best(fork.finals)
        if status == 503:
            status, data = 500, None  # §16.7 step 6
        if data is None:
            reason = {
                408: "Request Timeout",
                480: "Temporarily Unavailable",
                487: "Request Terminated",
                500: "Server Internal Error",
            }.get(status, "Failed")
            assert fork.request is not None
            data = self._build_answer(fork.request, status, reason)
        self.stats["responses_forwarded"] += 1
        self._respond(fork, status, data, now, out)
        self._slim(fork)

    def _slim(self, fork: Fork) -> None:
        """Answered: keep only what absorbing retransmissions needs (the server
        transaction's key, state and last bytes) and the branches still being cancelled.
        Fewer live objects is less for the garbage collector to walk at every pass."""
        fork.request = None
        fork.server.request = None
        clients = self.clients
        fork.branches = [
            b for b in fork.branches if b.txn.key in clients or (b.txn.key[0], "CANCEL") in clients
        ]

    def _forward(
        self, fork: Fork, response: Response | ResponseBytes, now: float, out: list[Send]
    ) -> None:
        self.stats["responses_forwarded"] += 1
        self._respond(fork, response.status, self._without_our_via(response), now, out)

    @staticmethod
    def _without_our_via(response: Response | ResponseBytes) -> bytes:
        """§16.7 step 3: the response with our (topmost) Via removed."""
        if isinstance(response, ResponseBytes):
            return response.stripped
        copy = Response(
            response.status, response.reason, list(response.headers), list(response.names), b""
        )
        copy.body = response.body
        pop_first_value(copy, "via")
        return copy.to_bytes()
