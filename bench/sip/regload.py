"""A REGISTER load that knows exactly which registrations were acknowledged.

sipp counts calls; to say "no acknowledged registration was lost" we must know *which* users
got a 200, then ask the cluster about each of them afterwards. This client sends REGISTERs for
distinct users at a fixed rate over UDP, retransmits each on RFC 3261's timer E (T1 = 0.5 s
doubling to T2 = 4 s) until a final response or 32 s (timer F), and records the final status
per user. `query` then sends a REGISTER without Contact (RFC 3261 §10.2.3: a query) for each
user and reports those whose 200 lists no binding.

Standard library only (the bench must not need the project's event loop to judge it).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

T1 = 0.5
T2 = 4.0
TIMER_F = 32.0
RUN = os.urandom(4).hex()  # in every Call-ID, so a rerun is not "out of order" (§10.3)


@dataclass
class LoadResult:
    sent: int = 0
    retransmissions: int = 0
    acknowledged: list[str] = field(default_factory=list)  # users answered 200
    refused: dict[str, int] = field(default_factory=dict)  # user -> final status (not 200)
    timed_out: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    # Seconds from a request's first send to its final response, one per answered request.
    latencies: list[float] = field(default_factory=list)


def _register(
    user: str,
    domain: str,
    local: tuple[str, int],
    seq: int,
    contact: bool,
    nat_host: str | None = None,
) -> bytes:
    """`nat_host`: the address the phone believes it has, behind a NAT (Via and Contact name
    it, the packets come from `local`): the edge holds its flow and adds a Path."""
    branch = f"z9hG4bK-rl-{user}-{seq}-{os.urandom(3).hex()}"
    host = nat_host or local[0]
    lines = [
        f"REGISTER sip:{domain} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{local[1]};branch={branch};rport",
        f"From: <sip:{user}@{domain}>;tag={user}-rl",
        f"To: <sip:{user}@{domain}>",
        f"Call-ID: {user}-{'q' if not contact else 'r'}-{RUN}@regload",
        f"CSeq: {seq} REGISTER",
        "Max-Forwards: 70",
    ]
    if contact:
        lines += [f"Contact: <sip:{user}@{host}:{local[1]}>", "Expires: 3600"]
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def _call_id(data: bytes) -> str | None:
    for line in data.split(b"\r\n"):
        low = line[:8].lower()
        if low.startswith(b"call-id:") or low.startswith(b"i:"):
            return line.split(b":", 1)[1].strip().decode(errors="replace")
    return None


def _run(
    targets: Sequence[tuple[str, int]],
    messages: Callable[[str, tuple[str, int]], bytes],
    users: Sequence[str],
    rate: float,
    on_final: Callable[[str, int, bytes], None],
    result: LoadResult,
    deadline_s: float,
) -> None:
    """Send one request per user at `rate`/s round-robin over `targets`, retransmit per T1,
    call on_final(user, status, response) once per user."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    local = sock.getsockname()
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    pending: dict[str, tuple[str, bytes, tuple[str, int], float, float, float]] = {}
    # call-id -> (user, data, target, next retransmit, interval, first sent)
    by_call: dict[str, str] = {}
    start = time.monotonic()
    next_user = 0
    try:
        while next_user < len(users) or pending:
            now = time.monotonic()
            if now - start > deadline_s:
                break
            # New requests due by the rate.
            due = min(len(users), int((now - start) * rate) + 1)
            while next_user < due:
                user = users[next_user]
                target = targets[next_user % len(targets)]
                data = messages(user, local)
                cid = _call_id(data) or user
                by_call[cid] = user
                pending[cid] = (user, data, target, now + T1, T1, now)
                with contextlib.suppress(OSError):
                    sock.sendto(data, target)
                result.sent += 1
                next_user += 1
            # Retransmissions and timer F.
            for cid, (user, data, target, at, interval, first) in list(pending.items()):
                if now - first > TIMER_F:
                    del pending[cid]
                    result.timed_out.append(user)
                elif now >= at:
                    interval = min(interval * 2, T2)
                    pending[cid] = (user, data, target, now + interval, interval, first)
                    with contextlib.suppress(OSError):
                        sock.sendto(data, target)
                    result.retransmissions += 1
            for _key, _ in sel.select(timeout=0.0005):
                while True:
                    try:
                        data, _ = sock.recvfrom(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    parts = data.split(b" ", 2)
                    if len(parts) < 2 or not parts[1].isdigit():
                        continue
                    status = int(parts[1])
                    answered = _call_id(data)
                    if status < 200 or answered is None or answered not in pending:
                        continue
                    user, *_, first = pending.pop(answered)
                    result.latencies.append(time.monotonic() - first)
                    on_final(user, status, data)
    finally:
        sel.close()
        sock.close()
        result.elapsed_s = time.monotonic() - start
        for _, (user, *_rest) in pending.items():
            result.timed_out.append(user)


def load(
    targets: Sequence[tuple[str, int]],
    users: Sequence[str],
    domain: str,
    rate: float,
    deadline_s: float = 300.0,
    nat_host: str | None = None,
) -> LoadResult:
    """Register every user once at `rate`/s; which ones were acknowledged. `nat_host`: as
    phones behind NAT that believe they are at that address (`_register`)."""
    result = LoadResult()

    def final(user: str, status: int, _data: bytes) -> None:
        if status == 200:
            result.acknowledged.append(user)
        else:
            result.refused[user] = status

    _run(
        targets, lambda u, local: _register(u, domain, local, 1, True, nat_host), users, rate,
        final, result, deadline_s,
    )  # fmt: skip
    return result


def query(
    targets: Sequence[tuple[str, int]],
    users: Sequence[str],
    domain: str,
    rate: float = 2000.0,
    deadline_s: float = 300.0,
) -> tuple[list[str], LoadResult]:
    """Ask for each user's bindings (a REGISTER without Contact); the users whose answer is
    not a 200 listing at least one Contact."""
    result = LoadResult()
    missing: list[str] = []

    def final(user: str, status: int, data: bytes) -> None:
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        if status != 200 or (b"\r\ncontact:" not in head and b"\r\nm:" not in head):
            missing.append(user)

    _run(
        targets, lambda u, local: _register(u, domain, local, 2, False), users, rate, final,
        result, deadline_s,
    )  # fmt: skip
    missing.extend(result.timed_out)
    return missing, result
