"""SIP transactions (RFC 3261 §17, with RFC 6026's Accepted server state) as sans-IO machines.

Four machines, each a plain object that takes messages and `now` and hands back what to do:

- `ClientTransaction`, INVITE (§17.1.1: Calling, Proceeding, Completed, Terminated; timers A,
  B and D; a 2xx ends it, and its retransmissions are forwarded statelessly) and non-INVITE
  (§17.1.2: Trying, Proceeding, Completed, Terminated; timers E, F, K);
- `ServerTransaction`, INVITE (§17.2.1: Proceeding, Accepted, Completed, Confirmed, Terminated;
  timers G, H, I and RFC 6026's L) and non-INVITE (§17.2.2: Trying, Proceeding, Completed,
  Terminated; timer J).

Each returns a list of outputs: `Transmit` (bytes for the transport, to the transaction's peer),
`Deliver` (a response for the transaction user), `TimedOut` (timer B or F: the TU treats it as a
408, §8.1.3.1), `TransportFailed` (the TU treats it as a 503) and `Ended` (the machine reached
Terminated; whoever holds it forgets it). `deadline` is the time the machine next wants
`on_timer(now)`, or None. Over a reliable transport the retransmission timers are not set and
the wait timers D, I, J and K are zero (§17.1.1.2, §17.2.2).

`now` is a monotonic clock (trio's in production, hand-stepped in tests): these timers are
durations, never wall-clock instants.

Keys (§17.1.3, §17.2.3): a client transaction is found by the branch of a response's top Via
and its CSeq method; a server transaction by the branch, the sent-by and the method of the
request's top Via (ACK counts as INVITE), or, for a pre-RFC 3261 client whose branch lacks the
magic cookie, by Request-URI, From tag, Call-ID, CSeq number, top Via and method.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._message import Request, Response

__all__ = [
    "MAGIC_COOKIE",
    "ClientTransaction",
    "Deliver",
    "Ended",
    "Output",
    "ResponseBytes",
    "ServerTransaction",
    "State",
    "TimedOut",
    "TimerSettings",
    "Transmit",
    "TransportFailed",
    "ack_for",
    "cancel_for",
    "client_key",
    "server_key",
]

MAGIC_COOKIE = "z9hG4bK"


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """RFC 3261 §17.1.1.1 and Table 4: T1 an estimate of the round-trip time, T2 the longest
    retransmission interval of a non-INVITE request or an INVITE response, T4 the longest a
    message stays in the network. Timer C (§16.6 step 11) is how long a proxy lets an INVITE
    branch ring after its last provisional response: more than three minutes."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_c: float = 181.0

    @property
    def timeout(self) -> float:
        """64*T1: timers B, F, H, J, L and M."""
        return 64 * self.t1


class State(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class ResponseBytes:
    """A provisional or 2xx response read without a full parse (the proxy's fast path): its
    status and its bytes with our Via already removed, ready to forward."""

    status: int
    stripped: bytes


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send these bytes to the transaction's peer."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """A response for the transaction user (the proxy core)."""

    response: Response | ResponseBytes


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Timer B or F (client: no final answer; the TU takes it as 408), or timer H (server:
    the ACK for our final answer never came)."""


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The transport could not deliver the request (the TU takes it as 503, §8.1.3.1)."""


@dataclass(frozen=True, slots=True)
class Ended:
    """The machine is in Terminated: forget it."""


Output = Transmit | Deliver | TimedOut | TransportFailed | Ended

_ENDED: list[Output] = [Ended()]


def _earliest(a: float | None, b: float | None, c: float | None) -> float | None:
    """The earliest of the timers that are set (a timer at 0 counts as not set)."""
    best = a or None
    if b and (best is None or b < best):
        best = b
    if c and (best is None or c < best):
        best = c
    return best


def client_key(branch: str, method: str) -> tuple[str, str]:
    """§17.1.3: the branch we put in our Via and the CSeq method (an ACK has none of its own)."""
    return (branch, "INVITE" if method == "ACK" else method)


def server_key(request: Request) -> tuple[str, ...]:
    """§17.2.3: the transaction a request belongs to (ACK to its INVITE's; CANCEL its own)."""
    top = request.vias[0]
    method = "INVITE" if request.method == "ACK" else request.method
    branch = top.branch
    if branch and branch.startswith(MAGIC_COOKIE):
        return (branch, f"{top.host}:{top.port}".lower(), method)
    # RFC 2543 clients: the fields that identify a transaction there (§17.2.3, second part).
    # The To tag is left out: the ACK carries the one our answer added, the INVITE none.
    return (
        "2543",
        request.uri_text,
        request.from_tag or "",
        request.call_id,
        str(request.cseq[0]),
        top.text,
        method,
    )


def _derived(
    request: Request, method: str, keep: tuple[str, ...], to: str | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """The headers of a request we make from one we sent (its ACK or CANCEL): the top Via
    only, the `keep` headers as they were, CSeq with the same number and `method`, and To
    replaced by `to` when given."""
    headers: list[tuple[str, str]] = []
    names: list[str] = []
    top_done = False
    for (key, value), name in zip(request.headers, request.names, strict=True):
        if key == "via":
            if top_done:
                continue
            top_done = True
            value = value.split(",", 1)[0].strip() if '"' not in value else value
        elif key == "cseq":
            value = f"{request.cseq[0]} {method}"
        elif key == "to" and to is not None:
            value = to
        elif key not in keep:
            continue
        headers.append((key, value))
        names.append(name)
    return headers, names


def ack_for(request: Request, response: Response) -> bytes:
    """The ACK a client transaction sends for a non-2xx final response (§17.1.1.3): the
    request's Request-URI, top Via, From, Call-ID, CSeq number and Route, the response's To."""
    to = response.get("to") or request.get("to") or ""
    headers, names = _derived(request, "ACK", ("from", "call-id", "route"), to)
    headers.append(("max-forwards", "70"))
    names.append("Max-Forwards")
    return Request("ACK", request.uri_text, headers, names, b"").to_bytes()


def cancel_for(request: Request, reason: str | None = None) -> Request:
    """The CANCEL of a request we sent (§9.1): the same Request-URI, top Via (so the same
    branch), From, To, Call-ID, CSeq number and Route; method CANCEL; no body. `reason`, a
    Reason header value (RFC 3326), says why."""
    headers, names = _derived(request, "CANCEL", ("from", "to", "call-id", "route", "max-forwards"))
    if reason:
        headers.append(("reason", reason))
        names.append("Reason")
    return Request("CANCEL", request.uri_text, headers, names, b"")


class ClientTransaction:
    """One request we sent and its responses (§17.1). `start()` gives the first transmission."""

    __slots__ = (
        "_interval",
        "_retransmit_at",
        "_timeout_at",
        "_wait_until",
        "data",
        "invite",
        "key",
        "last_status",
        "reliable",
        "request",
        "scheduled",
        "state",
        "timers",
    )

    def __init__(
        self,
        key: tuple[str, str],
        request: Request,
        data: bytes,
        *,
        reliable: bool,
        now: float,
        timers: TimerSettings | None = None,
    ) -> None:
        self.key = key
        self.request = request
        self.data = data
        self.reliable = reliable
        self.timers = timers or TimerSettings()
        self.invite = request.method == "INVITE"
        self.state = State.CALLING if self.invite else State.TRYING
        t1 = self.timers.t1
        self._interval = t1
        # Timer A (INVITE) or E (non-INVITE): retransmissions, only over unreliable transports.
        self._retransmit_at: float | None = None if reliable else now + t1
        # Timer B or F: no final answer within 64*T1.
        self._timeout_at: float | None = now + self.timers.timeout
        # Timer D, K or M: how long to linger in Completed or Accepted.
        self._wait_until: float | None = None
        self.last_status: int | None = None
        self.scheduled: float | None = None  # the deadline a timer queue holds for us

    @property
    def deadline(self) -> float | None:
        return _earliest(self._retransmit_at, self._timeout_at, self._wait_until)

    def start(self) -> list[Output]:
        return [Transmit(self.data)]

    def receive(self, response: Response | ResponseBytes, now: float) -> list[Output]:
        status = response.status
        state = self.state
        if state is State.TERMINATED:
            return []
        if self.invite:
            return self._receive_invite(response, status, now)
        if state in (State.TRYING, State.PROCEEDING):
            self.last_status = status
            if status < 200:
                self.state = State.PROCEEDING
                return [Deliver(response)]
            # Timer K: absorb retransmitted finals for T4 (zero when reliable).
            self._retransmit_at = None
            self._timeout_at = None
            self.state = State.COMPLETED
            if self.reliable:
                self.state = State.TERMINATED
                return [Deliver(response), Ended()]
            self._wait_until = now + self.timers.t4
            return [Deliver(response)]
        return []  # Completed: a retransmitted final, absorbed

    def _receive_invite(
        self, response: Response | ResponseBytes, status: int, now: float
    ) -> list[Output]:
        state = self.state
        if status < 200:
            if state in (State.CALLING, State.PROCEEDING):
                self.state = State.PROCEEDING
                self._retransmit_at = None  # §17.1.1.2: no retransmission once a 1xx came
                self._timeout_at = None
                self.last_status = status
                return [Deliver(response)]
            return []
        if status < 300:
            if state in (State.CALLING, State.PROCEEDING):
                # §17.1.1.2: a 2xx ends the transaction. (RFC 6026 would linger in Accepted
                # for timer M; a proxy gains nothing from it: the retransmitted 2xx carry our
                # MACed branch and are forwarded statelessly, and a transaction less per call
                # held 32 s is what keeps a node's memory flat at thousands of calls a second.)
                self.state = State.TERMINATED
                self._retransmit_at = self._timeout_at = self._wait_until = None
                self.last_status = status
                return [Deliver(response), Ended()]
            return []
        assert isinstance(response, Response), "a non-2xx final is always parsed"
        ack = ack_for(self.request, response)
        if state in (State.CALLING, State.PROCEEDING):
            self.state = State.COMPLETED
            self._retransmit_at = None
            self._timeout_at = None
            self.last_status = status
            self.data = ack  # what a retransmitted final gets: the ACK again
            if self.reliable:
                self.state = State.TERMINATED
                return [Transmit(ack), Deliver(response), Ended()]
            self._wait_until = now + 32.0  # timer D: at least 32 s over UDP
            return [Transmit(ack), Deliver(response)]
        if state is State.COMPLETED:
            return [Transmit(ack)]  # §17.1.1.2: ACK every retransmission, tell nobody
        return []

    def on_timer(self, now: float) -> list[Output]:
        if self.state is State.TERMINATED:
            return []
        out: list[Output] = []
        if self._timeout_at is not None and now >= self._timeout_at:
            self.state = State.TERMINATED
            self._retransmit_at = self._timeout_at = self._wait_until = None
            return [TimedOut(), Ended()]
        if self._wait_until is not None and now >= self._wait_until:
            self.state = State.TERMINATED
            self._retransmit_at = self._timeout_at = self._wait_until = None
            return list(_ENDED)
        if self._retransmit_at is not None and now >= self._retransmit_at:
            if self.invite:
                self._interval *= 2  # timer A doubles each time
            elif self.state is State.PROCEEDING:
                self._interval = self.timers.t2  # §17.1.2.2: T2 once a provisional came
            else:
                self._interval = min(2 * self._interval, self.timers.t2)
            self._retransmit_at = now + self._interval
            out.append(Transmit(self.data))
        return out

    def transport_error(self) -> list[Output]:
        if self.state is State.TERMINATED:
            return []
        if self.state in (State.CALLING, State.TRYING, State.PROCEEDING):
            self.state = State.TERMINATED
            self._retransmit_at = self._timeout_at = self._wait_until = None
            return [TransportFailed(), Ended()]
        return []  # the ACK of a final we already had: nothing depends on it


class ServerTransaction:
    """One request we received and the responses we send for it (§17.2). Created with the
    request; `respond(status, data, now)` sends what the TU answers; `receive_request` takes
    retransmissions and the ACK."""

    __slots__ = (
        "_interval",
        "_retransmit_at",
        "_timeout_at",
        "_wait_until",
        "invite",
        "key",
        "last",
        "last_status",
        "reliable",
        "request",
        "scheduled",
        "state",
        "timers",
    )

    def __init__(
        self,
        key: tuple[str, ...],
        request: Request,
        *,
        reliable: bool,
        now: float,
        timers: TimerSettings | None = None,
    ) -> None:
        self.key = key
        self.request: Request | None = request  # the owner may drop it once answered
        self.reliable = reliable
        self.timers = timers or TimerSettings()
        self.invite = request.method == "INVITE"
        self.state = State.PROCEEDING if self.invite else State.TRYING
        self.last: bytes | None = None
        self.last_status: int | None = None
        self._interval = self.timers.t1
        self._retransmit_at: float | None = None  # timer G
        self._timeout_at: float | None = None  # timer H
        self._wait_until: float | None = None  # timers I, J, L
        self.scheduled: float | None = None  # the deadline a timer queue holds for us

    @property
    def deadline(self) -> float | None:
        return _earliest(self._retransmit_at, self._timeout_at, self._wait_until)

    @property
    def final_sent(self) -> bool:
        return self.last_status is not None and self.last_status >= 200

    def receive_request(self, request: Request, now: float) -> list[Output]:
        """A retransmission of the request (or, for an INVITE, the ACK of a non-2xx final)."""
        state = self.state
        if request.method == "ACK":
            if self.invite and state is State.COMPLETED:
                self._retransmit_at = None
                self._timeout_at = None
                if self.reliable:
                    self.state = State.TERMINATED
                    return list(_ENDED)
                self.state = State.CONFIRMED
                self._wait_until = now + self.timers.t4  # timer I
            return []  # Confirmed or Accepted: absorbed
        if state in (State.PROCEEDING, State.COMPLETED) and self.last is not None:
            return [Transmit(self.last)]
        return []  # Trying (nothing sent yet), Accepted, Confirmed: absorbed

    def respond(self, status: int, data: bytes, now: float) -> list[Output]:
        """Send a response the TU made. Once a final is out, only further 2xx of an INVITE
        (RFC 6026 Accepted: a forking proxy forwards each) pass."""
        state = self.state
        if state is State.TERMINATED:
            return []
        if self.invite:
            if state is State.ACCEPTED:
                return [Transmit(data)] if 200 <= status < 300 else []
            if state is not State.PROCEEDING:
                return []
            self.last = data
            self.last_status = status
            if status < 200:
                return [Transmit(data)]
            if status < 300:
                self.state = State.ACCEPTED
                self._wait_until = now + self.timers.timeout  # timer L
                # Accepted absorbs a retransmitted INVITE without answering it: the 2xx is
                # not kept for the 32 s (tens of thousands of them under call load).
                self.last = None
                return [Transmit(data)]
            self.state = State.COMPLETED
            if not self.reliable:
                self._retransmit_at = now + self.timers.t1  # timer G
            self._timeout_at = now + self.timers.timeout  # timer H
            return [Transmit(data)]
        if state not in (State.TRYING, State.PROCEEDING):
            return []
        self.last = data
        self.last_status = status
        if status < 200:
            self.state = State.PROCEEDING
            return [Transmit(data)]
        if self.reliable:
            self.state = State.TERMINATED
            return [Transmit(data), Ended()]
        self.state = State.COMPLETED
        self._wait_until = now + self.timers.timeout  # timer J
        return [Transmit(data)]

    def on_timer(self, now: float) -> list[Output]:
        if self.state is State.TERMINATED:
            return []
        if self._timeout_at is not None and now >= self._timeout_at:
            self.state = State.TERMINATED  # timer H: the ACK never came
            self._retransmit_at = self._timeout_at = self._wait_until = None
            return [TimedOut(), Ended()]
        if self._wait_until is not None and now >= self._wait_until:
            self.state = State.TERMINATED
            self._retransmit_at = self._timeout_at = self._wait_until = None
            return list(_ENDED)
        if self._retransmit_at is not None and now >= self._retransmit_at:
            self._interval = min(2 * self._interval, self.timers.t2)  # timer G
            self._retransmit_at = now + self._interval
            return [Transmit(self.last)] if self.last is not None else []
        return []
