"""REGISTER over TLS with connection reuse (issue 15): one swimthor node and Kamailio 5.6
(tls module) under the same ladder of offered rates, in one run.

    python -m bench.sip.tls_register                          # the full ladder, both servers
    python -m bench.sip.tls_register --rates 1000,2000 --seconds 3 --no-kamailio

The target: ">= 5,000 REGISTER/s over TLS with connection reuse on one node process".

The client (standard library: ssl with memory BIOs over non-blocking sockets, one selector)
opens C persistent TLS connections (--connections, default 20) to ONE TLS port, and keeps
them for the whole ladder. User k of a step (t<p>-<k>, k = 0 .. rate x seconds - 1) always
registers on connection k mod C, with one Call-ID for the whole ladder and CSeq = the step's
number, so every step refreshes the bindings of the one before (Contact
<sip:USER@127.0.0.1:LOCALPORT;transport=tls>, Expires 600, Via SIP/2.0/TLS, Content-Length 0).
Requests are due at a fixed rate (request k at t0 + k / rate) and pipelined: a connection
carries at most --window requests without a final answer; what is due beyond that waits in
its queue. TLS is reliable, so nothing is retransmitted: a request with no final answer
within --answer-timeout (5 s) of the moment it was due is missing, a final after that is
late. Latency is measured from when a request was due (queueing at a full window included),
so a server that falls behind cannot hide it by slowing the client down.

A step passes when at least 99.5% of its requests got a 200 within the timeout, at least 97%
of the rate was offered (the server did not hold the client back with full windows) and the
p99 latency is at most 500 ms (T1: a phone on UDP would have retransmitted); the ladder
stops at the first step that fails. Each server gets a fresh start: a one-node `swimthor join`
(R = 1 by itself; --nodes 3 for three nodes, R = 2, the load on node1) with
`--sip-tls --sip-tls-cert --sip-tls-key`, `--sip-auth off` (as in the other SIP benches) and
`--sip-rate-limit 0` (the client is thousands of phones behind one address); then Kamailio
with bench/sip/kamailio_tls.cfg and bench/sip/tls.cfg, one worker (children = tcp_children =
1, as bench/sip/kamailio.cfg is run), the same certificate. Installs the Debian packages
kamailio and kamailio-tls-modules when they are missing and we are root.

Figures go to stdout and to bench/results/sip_tls.json (--json).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import io
import json
import multiprocessing
import os
import re
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench._procs import WaitTimeout, wait_until

from .bench import (
    DOMAIN,
    KAMAILIO_SHM_MB,
    RESULTS,
    Node,
    apt_install,
    checkout_id,
    converge,
    ensure_kamailio,
    launch,
    stop,
)
from .sipp_runner import KAMAILIO, _stop, free_udp_port, sip_options_probe

HERE = Path(__file__).resolve().parent
KAMAILIO_TLS_CFG = HERE / "kamailio_tls.cfg"  # its tls profiles: HERE / "tls.cfg"
TESTS = HERE.parent.parent / "tests"  # tls_certs.make_pki: the throwaway CA and certificate

RATES = "500,1000,1500,2000,3000,4000,5000,6000,7000,8000"  # stops at the first failure
SECONDS = 10.0
CONNECTIONS = 20
WINDOW = 32
ANSWER_TIMEOUT = 5.0
SLOW_MS = 100.0  # answers slower than this (from due) are listed by connection and time
PASS_FRACTION = 0.995
# A step also fails when the server held the client back (its windows full) so that less
# than this share of the rate was offered at all, or when the slowest 1% of answers took
# longer than T1 (500 ms: over UDP the phone would have retransmitted by then).
OFFERED_FRACTION = 0.97
P99_LIMIT_MS = 500.0
EXPIRES = 600
TARGET = 5000
KAMAILIO_WORKERS = 1
RUN = os.urandom(3).hex()  # in every Call-ID, so a rerun is a new registration


# ---------------------------------------------------------------------------------------
# the load client


def register_message(proc: int, k: int, cseq: int, local: tuple[str, int]) -> bytes:
    """User k's REGISTER for process `proc`, from the connection at `local`."""
    host, port = local
    user = f"t{proc}-{k}"
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS {host}:{port};branch=z9hG4bK-{RUN}-{proc}-{k}-{cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@{DOMAIN}>;tag={user}\r\n"
        f"To: <sip:{user}@{DOMAIN}>\r\n"
        f"Call-ID: {k}.{proc}.{RUN}@tls-bench\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@{host}:{port};transport=tls>\r\n"
        f"Expires: {EXPIRES}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def parse_response(head: bytes) -> tuple[int, bytes, int] | None:
    """(status, Call-ID, CSeq number) of a response's header block (without the blank line),
    None if it is not a response or lacks either header."""
    if not head.startswith(b"SIP/2.0 ") or not head[8:11].isdigit():
        return None
    low = head.lower()
    cid = _header(head, low, (b"\r\ncall-id:", b"\r\ni:"))
    cseq = _header(head, low, (b"\r\ncseq:",))
    if cid is None or cseq is None:
        return None
    number = cseq.split(None, 1)[0] if cseq else b""
    if not number.isdigit():
        return None
    return int(head[8:11]), cid, int(number)


def _header(head: bytes, low: bytes, names: Sequence[bytes]) -> bytes | None:
    for name in names:
        at = low.find(name)
        if at >= 0:
            end = head.find(b"\r\n", at + 2)
            return head[at + len(name) : end if end >= 0 else len(head)].strip()
    return None


def _content_length(low_head: bytes) -> int:
    for name in (b"\r\ncontent-length:", b"\r\nl:"):
        at = low_head.find(name)
        if at >= 0:
            end = low_head.find(b"\r\n", at + 2)
            value = low_head[at + len(name) : end if end >= 0 else len(low_head)].strip()
            return int(value) if value.isdigit() else 0
    return 0


class TlsConn:
    """One persistent TLS connection: an SSLObject over memory BIOs and a non-blocking
    socket, so that writes never block and many requests go out in one TLS record."""

    def __init__(self, target: tuple[str, int], ctx: ssl.SSLContext, timeout: float) -> None:
        self.sock = socket.create_connection(target, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local: tuple[str, int] = self.sock.getsockname()[:2]
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=target[0])
        self.out = bytearray()  # encrypted, not yet taken by the socket
        self.buf = bytearray()  # decrypted, not yet parsed
        self.alive = True
        self.queue: deque[int] = deque()  # requests due, waiting for room in the window
        self.outstanding = 0
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the TLS handshake") from None
                self.incoming.write(data)
        self.sock.sendall(self.outgoing.read())
        self.sock.setblocking(False)

    def write(self, data: bytes) -> None:
        self.tls.write(data)
        self.out += self.outgoing.read()

    def flush(self) -> None:
        """Hand the socket what it takes of the encrypted bytes."""
        while self.out and self.alive:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.alive = False
                return
            del self.out[:n]

    def receive(self) -> list[bytes]:
        """Read what the socket has; the complete messages' header blocks."""
        try:
            data = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            self.alive = False
            return []
        if not data:
            self.alive = False
            return []
        self.incoming.write(data)
        while True:
            try:
                chunk = self.tls.read(262144)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLError):
                self.alive = False
                break
            if not chunk:
                self.alive = False
                break
            self.buf += chunk
        pending = self.outgoing.read()  # e.g. a key update
        if pending:
            self.out += pending
        heads = []
        buf = self.buf
        start = 0
        while True:
            end = buf.find(b"\r\n\r\n", start)
            if end < 0:
                break
            head = bytes(buf[start:end])
            body = _content_length(head.lower())
            if end + 4 + body > len(buf):
                break
            heads.append(head)
            start = end + 4 + body
        if start:
            del buf[:start]
        return heads

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        self.alive = False


@dataclass
class StepCounts:
    """What one client process saw in one step (merged over processes by `merge`)."""

    requests: int = 0
    sent: int = 0
    sent_in_step: int = 0  # sent before the step's seconds were up
    ok: int = 0  # 200 within the timeout
    other: dict[str, int] = field(default_factory=dict)  # other finals by status
    late: int = 0  # a final after the timeout
    stray: int = 0  # answers to nothing of this step (an earlier step's late ones)
    provisional: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # from due to the 200
    service_ms: list[float] = field(default_factory=list)  # from sent to the 200
    # (connection, due in s after t0, latency ms) of the first 2,000 finals slower than SLOW_MS
    slow: list[tuple[Any, float, float]] = field(default_factory=list)
    connections_lost: int = 0  # closed during the step
    reconnected: int = 0  # connections lost in an earlier step, opened again before this one
    client_cpu_s: float = 0.0
    wall_s: float = 0.0

    @property
    def missing(self) -> int:
        return self.requests - self.ok - sum(self.other.values()) - self.late


class Client:
    """C persistent TLS connections to one target, for one process's share of the load."""

    def __init__(
        self,
        target: tuple[str, int],
        cafile: str,
        connections: int,
        window: int,
        proc: int = 0,
        timeout: float = 10.0,
    ) -> None:
        self.target = target
        self.ctx = ssl.create_default_context(cafile=cafile)
        self.window = window
        self.proc = proc
        self.timeout = timeout
        self.conns: list[TlsConn] = []
        try:
            for _ in range(connections):
                self.conns.append(TlsConn(target, self.ctx, timeout))
        except BaseException:
            self.close()
            raise

    def reconnect(self) -> int:
        """Replace connections that died; how many."""
        n = 0
        for i, c in enumerate(self.conns):
            if not c.alive:
                c.close()
                self.conns[i] = TlsConn(self.target, self.ctx, self.timeout)
                n += 1
        return n

    def close(self) -> None:
        for c in self.conns:
            c.close()

    def step(
        self, rate: float, seconds: float, cseq: int, t0: float, answer_timeout: float
    ) -> StepCounts:
        """Offer `rate`/s for `seconds` from monotonic time t0; wait for the answers up to
        `answer_timeout` after the last request was due."""
        cpu0 = time.process_time()
        conns = self.conns
        nconn = len(conns)
        n = round(rate * seconds)
        r = StepCounts(requests=n)
        due_of = [t0 + k / rate for k in range(n)]
        sent_at = [0.0] * n
        done = bytearray(n)
        resolved = 0
        for c in conns:
            c.queue.clear()
            c.outstanding = 0
        sel = selectors.DefaultSelector()
        for i, c in enumerate(conns):
            if c.alive:
                sel.register(c.sock, selectors.EVENT_READ, i)
        writing: set[int] = set()
        step_end = t0 + seconds
        deadline = t0 + (n - 1) / rate + answer_timeout if n else t0
        window = self.window
        proc = self.proc
        next_k = 0
        suffix = f".{proc}.{RUN}@tls-bench".encode()
        while time.monotonic() < t0:
            time.sleep(min(0.05, max(0.0, t0 - time.monotonic())))
        try:
            while True:
                now = time.monotonic()
                if next_k < n:
                    due = min(n, int((now - t0) * rate) + 1)
                    while next_k < due:
                        conns[next_k % nconn].queue.append(next_k)
                        next_k += 1
                for i, c in enumerate(conns):
                    if not c.queue or not c.alive or c.outstanding >= window:
                        continue
                    batch = []
                    while c.queue and c.outstanding < window:
                        k = c.queue.popleft()
                        batch.append(register_message(proc, k, cseq, c.local))
                        sent_at[k] = now
                        c.outstanding += 1
                        r.sent += 1
                        if now <= step_end:
                            r.sent_in_step += 1
                    c.write(b"".join(batch))
                    c.flush()
                    if c.out and i not in writing and c.alive:
                        sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
                        writing.add(i)
                if resolved >= n or now > deadline:
                    break
                if next_k < n:
                    # at least 1 ms (epoll's resolution): no spinning on the 2 shared cores;
                    # what falls due meanwhile goes out together
                    wait = min(max(t0 + next_k / rate - now, 0.001), 0.002)
                else:
                    wait = min(0.05, max(0.0, deadline - now))
                for key, events in sel.select(wait):
                    i = key.data
                    c = conns[i]
                    if events & selectors.EVENT_WRITE:
                        c.flush()
                        if not c.out and i in writing:
                            sel.modify(c.sock, selectors.EVENT_READ, i)
                            writing.discard(i)
                    if not events & selectors.EVENT_READ:
                        continue
                    heads = c.receive()
                    got = time.monotonic()
                    for head in heads:
                        parsed = parse_response(head)
                        if parsed is None:
                            r.stray += 1
                            continue
                        status, cid, number = parsed
                        if status < 200:
                            r.provisional += 1
                            continue
                        k_text, _, rest = cid.partition(b".")
                        if number != cseq or not k_text.isdigit() or b"." + rest != suffix:
                            r.stray += 1
                            continue
                        k = int(k_text)
                        if k >= n or done[k]:
                            r.stray += 1
                            continue
                        done[k] = 1
                        resolved += 1
                        conns[k % nconn].outstanding -= 1
                        latency = got - due_of[k]
                        if latency * 1000.0 > SLOW_MS and len(r.slow) < 2000:
                            r.slow.append((k % nconn, due_of[k] - t0, 1000.0 * latency))
                        if latency > answer_timeout:
                            r.late += 1
                        elif status == 200:
                            r.ok += 1
                            r.latencies_ms.append(1000.0 * latency)
                            r.service_ms.append(1000.0 * (got - sent_at[k]))
                        else:
                            key_s = str(status)
                            r.other[key_s] = r.other.get(key_s, 0) + 1
                    if c.out and i not in writing and c.alive:
                        sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
                        writing.add(i)
                    if not c.alive:
                        with contextlib.suppress(KeyError, ValueError, OSError):
                            sel.unregister(c.sock)
                        writing.discard(i)
                        r.connections_lost += 1
        finally:
            sel.close()
        r.wall_s = time.monotonic() - t0
        r.client_cpu_s = time.process_time() - cpu0
        return r


def merge(parts: Sequence[StepCounts]) -> StepCounts:
    out = StepCounts()
    for p_i, p in enumerate(parts):
        out.requests += p.requests
        out.sent += p.sent
        out.sent_in_step += p.sent_in_step
        out.ok += p.ok
        for k, v in p.other.items():
            out.other[k] = out.other.get(k, 0) + v
        out.late += p.late
        out.stray += p.stray
        out.provisional += p.provisional
        out.latencies_ms += p.latencies_ms
        out.service_ms += p.service_ms
        out.slow += [(f"{p_i}:{c}", t, ms) for c, t, ms in p.slow]
        out.connections_lost += p.connections_lost
        out.reconnected += p.reconnected
        out.client_cpu_s += p.client_cpu_s
        out.wall_s = max(out.wall_s, p.wall_s)
    return out


def _worker(
    pipe: Connection,
    target: tuple[str, int],
    cafile: str,
    connections: int,
    window: int,
    proc: int,
) -> None:
    """A client process: opens its connections, then runs steps as the parent asks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends us
    try:
        client = Client(target, cafile, connections, window, proc)
    except Exception as e:
        pipe.send(("error", f"{type(e).__name__}: {e}"))
        return
    pipe.send(("ready", None))
    try:
        while True:
            msg = pipe.recv()
            if msg[0] == "step":
                _, rate, seconds, cseq, t0, answer_timeout = msg
                reconnected = client.reconnect()
                counts = client.step(rate, seconds, cseq, t0, answer_timeout)
                counts.reconnected = reconnected
                pipe.send(("done", counts))
            else:
                break
    except (EOFError, OSError):
        pass
    finally:
        client.close()


class Load:
    """The load client: in this process (processes = 1) or in `processes` worker processes
    (fork), each with its share of the connections, the rate and the users."""

    def __init__(
        self,
        target: tuple[str, int],
        cafile: str,
        connections: int,
        window: int,
        processes: int = 1,
    ) -> None:
        self.processes = max(1, min(processes, connections))
        shares = [
            connections // self.processes + (1 if i < connections % self.processes else 0)
            for i in range(self.processes)
        ]
        self.local: Client | None = None
        self.workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        if self.processes == 1:
            self.local = Client(target, cafile, connections, window)
            return
        ctx = multiprocessing.get_context("fork")
        try:
            for p, share in enumerate(shares):
                mine, theirs = ctx.Pipe()
                w = ctx.Process(
                    target=_worker, args=(theirs, target, cafile, share, window, p), daemon=True
                )
                w.start()
                theirs.close()
                self.workers.append((w, mine))
            for _, pipe in self.workers:
                if not pipe.poll(30):
                    raise RuntimeError("a client process did not open its connections in 30 s")
                kind, detail = pipe.recv()
                if kind != "ready":
                    raise RuntimeError(f"a client process failed: {detail}")
        except BaseException:
            self.close()
            raise

    def step(self, rate: float, seconds: float, cseq: int, answer_timeout: float) -> StepCounts:
        t0 = time.monotonic() + 0.2  # CLOCK_MONOTONIC: the same clock in every process
        if self.local is not None:
            reconnected = self.local.reconnect()
            counts = self.local.step(rate, seconds, cseq, t0, answer_timeout)
            counts.reconnected = reconnected
            return counts
        share = rate / self.processes
        for _, pipe in self.workers:
            pipe.send(("step", share, seconds, cseq, t0, answer_timeout))
        parts = []
        for _, pipe in self.workers:
            if not pipe.poll(seconds + answer_timeout + 30):
                raise RuntimeError("a client process did not finish its step")
            kind, counts = pipe.recv()
            if kind != "done":
                raise RuntimeError(f"a client process failed: {counts}")
            parts.append(counts)
        return merge(parts)

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
        for w, pipe in self.workers:
            with contextlib.suppress(OSError, BrokenPipeError):
                pipe.send(("stop",))
            w.join(3)
            if w.is_alive() and w.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)
                w.join(3)
            pipe.close()
        self.workers = []


# ---------------------------------------------------------------------------------------
# judging a step


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def slow_summary(slow: Sequence[tuple[Any, float, float]]) -> dict[str, Any]:
    """Where the answers slower than SLOW_MS were: on how many connections, when (seconds
    after the step began, by when the request was due), and the worst per connection."""
    if not slow:
        return {"answers": 0}
    worst: dict[str, float] = {}
    for conn, _, ms in slow:
        worst[str(conn)] = max(worst.get(str(conn), 0.0), round(ms, 1))
    return {
        "answers": len(slow),  # (at most 2,000 a client process are listed)
        "over_ms": SLOW_MS,
        "connections": len(worst),
        "due_from_s": round(min(t for _, t, _ in slow), 3),
        "due_to_s": round(max(t for _, t, _ in slow), 3),
        "worst_ms_by_connection": dict(sorted(worst.items(), key=lambda kv: -kv[1])[:20]),
    }


def step_row(rate: int, seconds: float, c: StepCounts, cpu: dict[str, float]) -> dict[str, Any]:
    """One step's figures and verdict."""
    need = PASS_FRACTION * c.requests
    offered = c.sent_in_step / seconds if seconds else 0.0
    p99 = percentile(c.latencies_ms, 0.99)
    reasons = []
    if not (c.requests > 0 and c.ok >= need):
        reasons.append(
            f"200 to {c.ok}/{c.requests} = {c.ok / max(1, c.requests):.4f} < {PASS_FRACTION}"
            f" (other {sum(c.other.values())}, late {c.late}, missing {c.missing})"
        )
    if offered < OFFERED_FRACTION * rate:
        reasons.append(f"offered {offered:.0f}/s < {OFFERED_FRACTION:.0%} of {rate}/s")
    if p99 is not None and p99 > P99_LIMIT_MS:
        reasons.append(f"p99 {p99:.0f} ms > {P99_LIMIT_MS:.0f} ms")
    passed = not reasons
    why = "ok" if passed else "; ".join(reasons)
    return {
        "rate": rate,
        "seconds": seconds,
        "requests": c.requests,
        "sent": c.sent,
        "ok": c.ok,
        "other": sum(c.other.values()),
        "other_by_status": c.other,
        "late": c.late,
        "missing": c.missing,
        "stray": c.stray,
        "provisional": c.provisional,
        "slow": slow_summary(c.slow),
        "connections_lost": c.connections_lost,
        "reconnected_before": c.reconnected,
        "ok_fraction": round(c.ok / max(1, c.requests), 5),
        "offered_per_s": round(c.sent_in_step / seconds, 1) if seconds else None,
        "answered_per_s": round(c.ok / max(1e-9, c.wall_s), 1),
        "latency_p50_ms": _ms(percentile(c.latencies_ms, 0.50)),
        "latency_p99_ms": _ms(percentile(c.latencies_ms, 0.99)),
        "latency_max_ms": _ms(max(c.latencies_ms) if c.latencies_ms else None),
        "service_p99_ms": _ms(percentile(c.service_ms, 0.99)),
        "client_cpu_percent": round(100.0 * c.client_cpu_s / max(1e-9, c.wall_s), 1),
        **{k: round(v, 2) for k, v in cpu.items()},
        "wall_s": round(c.wall_s, 2),
        "passed": passed,
        "why": why,
    }


def print_header() -> None:
    print(
        f"  {'rate/s':>7} {'requests':>8} {'200':>7} {'other':>5} {'late':>5} {'missing':>7}"
        f" {'offered/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'client%':>7}"
        f" {'server%':>7} {'others%':>7}  result"
    )


def print_row(row: dict[str, Any]) -> None:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    verdict = "PASS" if row["passed"] else "FAIL: " + row["why"]

    print(
        f"  {row['rate']:>7} {row['requests']:>8} {row['ok']:>7} {row['other']:>5}"
        f" {row['late']:>5} {row['missing']:>7} {row['offered_per_s']:>9.0f}"
        f" {f(row['latency_p50_ms']):>7} {f(row['latency_p99_ms']):>7}"
        f" {f(row['latency_max_ms']):>7} {row['client_cpu_percent']:>7.1f}"
        f" {f(row.get('server_cpu_percent')):>7} {f(row.get('others_cpu_percent')):>7}  {verdict}"
    )


# ---------------------------------------------------------------------------------------
# the servers


def sched_seconds(pids: Sequence[int]) -> tuple[float, float]:
    """Seconds these processes (all their threads) ran, and waited runnable for a CPU
    (/proc/PID/task/*/schedstat); those gone count 0. The wait shows a shared machine."""
    run = wait = 0
    for pid in pids:
        for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
            try:
                fields = Path(f).read_text().split()
            except OSError:
                continue
            run += int(fields[0])
            wait += int(fields[1])
    return run / 1e9, wait / 1e9


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat, all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / tick, total / tick


def group_pids(pgid: int) -> list[int]:
    """The processes of a process group (Kamailio's: it leads its own session)."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            out.append(int(stat.split("/")[2]))
    return out


@dataclass
class Server:
    name: str
    target: tuple[str, int]
    pids: list[int]
    description: str
    log: Path | None = None


def probe_register(target: tuple[str, int], cafile: str, timeout: float = 5.0) -> int | None:
    """One REGISTER on a fresh TLS connection; its final status, or None."""
    try:
        client = Client(target, cafile, 1, 1, proc=9, timeout=timeout)
    except (OSError, ssl.SSLError, ConnectionError):
        return None
    try:
        c = client.step(1.0, 1.0, 1, time.monotonic(), timeout)
    finally:
        client.close()
    if c.ok:
        return 200
    return int(next(iter(c.other))) if c.other else None


@dataclass
class TlsNode(Node):
    tls: int = 0


@contextlib.contextmanager
def swimthor_tls(tmp: Path, cert: Path, key: Path, cafile: str, n: int = 1) -> Iterator[Server]:
    """n `swimthor join --role sip` on loopback, each with a TLS port; node1's is the
    target. Killed by PID on exit."""
    tmp.mkdir(parents=True, exist_ok=True)
    nodes: list[TlsNode] = []
    taken: list[int] = []
    for i in range(n):
        ports = []
        for _ in range(3):
            ports.append(free_udp_port(exclude=taken))
            taken.append(ports[-1])
        nodes.append(
            TlsNode(
                f"node{i + 1}", ports[0], ports[1], str(tmp / f"node{i + 1}.sock"), tls=ports[2]
            )
        )
    try:
        launch(
            nodes,
            tmp,
            lambda node: (
                "--sip-tls", f"127.0.0.1:{node.tls}",
                "--sip-tls-cert", str(cert), "--sip-tls-key", str(key),
                "--sip-rate-limit", "0",  # the client is many phones behind one address
            ),
        )  # fmt: skip
        converge(nodes, tmp)
        target = ("127.0.0.1", nodes[0].tls)
        _wait_tls(target, cafile, lambda: tmp / "node1.log")
        yield Server(
            "swimthor",
            target,
            [nodes[0].proc.pid] if nodes[0].proc else [],
            f"swimthor join, {n} node(s)"
            + (", R = 2, the load on node1" if n > 1 else "")
            + ", --sip-auth off, --sip-rate-limit 0, one process",
            tmp / "node1.log",
        )
    finally:
        stop(nodes)


def _wait_tls(target: tuple[str, int], cafile: str, log: Any, timeout: float = 15.0) -> None:
    """Until a REGISTER over TLS at `target` gets its 200 (bench/_procs.py's wait);
    RuntimeError with the server log's tail if none does in `timeout` seconds."""
    try:
        wait_until(
            lambda: probe_register(target, cafile, timeout=2.0) == 200,
            timeout,
            f"a 200 to a REGISTER over TLS at {target}",
            interval=0.3,
        )
    except WaitTimeout as e:
        text = ""
        with contextlib.suppress(OSError):
            text = log().read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{e}: {text}") from None


def kamailio_tls_module() -> Path | None:
    for p in glob.glob("/usr/lib/*/kamailio/modules/tls.so") + glob.glob(
        "/usr/lib/kamailio/modules/tls.so"
    ):
        return Path(p)
    return None


def ensure_kamailio_tls() -> bool:
    """Kamailio and its tls module (Debian kamailio-tls-modules), installed with apt-get
    when missing and we are root (its service never enabled). True if both are there."""
    if not ensure_kamailio():
        return False
    if kamailio_tls_module() is not None:
        return True
    if os.geteuid() != 0:
        print("kamailio-tls-modules is not installed and we are not root: Kamailio is skipped")
        return False
    print("installing kamailio-tls-modules for the reference run (apt-get)")
    apt_install("kamailio-tls-modules")
    return kamailio_tls_module() is not None


def _kamailio_version() -> str:
    """The version `kamailio -v` names (first line: "version: kamailio 5.6.3 (x86_64/linux)")."""
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        line = subprocess.run(
            [KAMAILIO, "-v"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[0]
        return "Kamailio " + line.split()[2]
    return "Kamailio"


@contextlib.contextmanager
def kamailio_tls(
    pki_dir: Path, cafile: str, workers: int = KAMAILIO_WORKERS, start_timeout: float = 15.0
) -> Iterator[Server]:
    """Kamailio in the foreground with kamailio_tls.cfg: TLS and UDP on one free port, the
    certificate of `pki_dir` copied into its run directory (its working directory, where
    tls.cfg's ./server.pem and ./server.key point); its process group is killed on exit."""
    port = free_udp_port()
    rundir = Path(tempfile.mkdtemp(prefix="kamailio-tls-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        for name in ("server.pem", "server.key"):
            (rundir / name).write_bytes((pki_dir / name).read_bytes())
        log = rundir / "kamailio.log"
        cmd = [
            KAMAILIO,
            "-f", str(KAMAILIO_TLS_CFG),
            "-DD", "-E",
            "-m", str(KAMAILIO_SHM_MB), "-M", "16",
            "-Y", str(rundir), "-w", str(rundir),
            "-P", str(rundir / "kamailio.pid"),
            "-A", "SIP_ADDR=127.0.0.1",
            "-A", f"SIP_PORT={port}",
            "-A", f"WORKERS={workers}",
            "-A", "LOG_LEVEL=1",
        ]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=rundir, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + start_timeout
        while sip_options_probe("127.0.0.1", port, timeout=0.2) != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"kamailio exited with {proc.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"kamailio not answering on 127.0.0.1:{port}")
        target = ("127.0.0.1", port)
        _wait_tls(target, cafile, lambda: log)
        yield Server(
            "kamailio",
            target,
            group_pids(proc.pid),
            f"{_kamailio_version()} tls module, {workers} worker (children = tcp_children ="
            f" {workers}, as kamailio.cfg is run), usrloc in memory",
            log,
        )
    finally:
        if proc is not None:
            _stop(proc, grace=5.0, group=True)
        shutil.rmtree(rundir, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# the ladder


def ladder(
    server: Server,
    cafile: str,
    rates: Sequence[int],
    seconds: float,
    connections: int,
    window: int,
    processes: int,
    answer_timeout: float,
    settle_s: float = 1.0,
) -> dict[str, Any]:
    """Step the offered rate over the same persistent connections until a step fails."""
    print(
        f"{server.name}: REGISTER over TLS on {server.target[0]}:{server.target[1]}"
        f" ({server.description});"
        f" {connections} connections, window {window}, {processes} client process(es),"
        f" {seconds:g} s a step"
    )
    print_header()
    steps: list[dict[str, Any]] = []
    best: int | None = None
    log_from = _size(server.log)
    load = Load(server.target, cafile, connections, window, processes)
    try:
        clients = [os.getpid()] + [w.pid for w, _ in load.workers if w.pid is not None]
        for i, rate in enumerate(rates):
            s0, c0, m0, t0 = (
                sched_seconds(server.pids),
                sched_seconds(clients),
                machine_busy(),
                time.monotonic(),
            )
            counts = load.step(rate, seconds, i + 1, answer_timeout)
            s1, c1, m1, t1 = (
                sched_seconds(server.pids),
                sched_seconds(clients),
                machine_busy(),
                time.monotonic(),
            )
            wall = max(1e-9, t1 - t0)
            server_cpu = 100.0 * (s1[0] - s0[0]) / wall
            client_cpu = 100.0 * (c1[0] - c0[0]) / wall
            busy = 100.0 * (m1[0] - m0[0]) / wall  # in cores x 100, like the two above
            # over the step, in % of one core: CPU used, and time spent runnable but waiting
            cpu = {
                "server_cpu_percent": server_cpu,
                "server_waiting_for_cpu_percent": 100.0 * (s1[1] - s0[1]) / wall,
                "client_waiting_for_cpu_percent": 100.0 * (c1[1] - c0[1]) / wall,
                "machine_busy_percent": busy,
                "others_cpu_percent": max(0.0, busy - server_cpu - client_cpu),
                "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0]),
            }
            row = step_row(rate, seconds, counts, cpu)
            print_row(row)
            steps.append(row)
            if not row["passed"]:
                break
            best = rate
            time.sleep(settle_s)
    finally:
        load.close()
    print(f"  highest passing rate: {best if best is not None else 'none'}")
    complaints = log_complaints(server.log, log_from)
    if complaints:
        print(f"  {len(complaints)} warning/error lines in {server.name}'s log during the ladder:")
        for line in complaints[:5]:
            print(f"    {line[:300]}")
    return {
        "best_rate": best,
        "description": server.description,
        "log_complaints": len(complaints),
        "log_complaints_first": [line[:500] for line in complaints[:10]],
        "steps": steps,
    }


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


_COMPLAINT = re.compile(r'"level": ?"(warning|error|critical)"|\b(WARNING|ERROR|CRITICAL|BUG):')


def log_complaints(path: Path | None, offset: int) -> list[str]:
    """The warning and error lines a server logged from `offset` on (swimthor's JSON log at
    --log-level warning, Kamailio's stderr at debug=1)."""
    if path is None:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if _COMPLAINT.search(line)]


def _rates(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress as it happens, also into a file
    ap = argparse.ArgumentParser(
        prog="python -m bench.sip.tls_register",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--rates", default=RATES, help=f"offered REGISTER/s (default {RATES})")
    ap.add_argument("--seconds", type=float, default=SECONDS, help="seconds a step")
    ap.add_argument("--connections", type=int, default=CONNECTIONS, help="TLS connections")
    ap.add_argument(
        "--window", type=int, default=WINDOW, help="unanswered requests a connection carries"
    )
    ap.add_argument(
        "--processes", type=int, default=1, choices=(1, 2), help="client processes (2 cores!)"
    )
    ap.add_argument("--answer-timeout", type=float, default=ANSWER_TIMEOUT)
    ap.add_argument("--nodes", type=int, default=1, help="swimthor nodes (the load on node1)")
    ap.add_argument("--no-kamailio", action="store_true", help="skip the reference")
    ap.add_argument("--json", default=str(RESULTS / "sip_tls.json"))
    args = ap.parse_args(argv)
    rates = _rates(args.rates)
    if not rates or min(rates) <= 0 or args.seconds <= 0 or args.connections < 1:
        ap.error("--rates, --seconds and --connections must be positive")

    def terminated(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds the context managers: everything killed

    signal.signal(signal.SIGTERM, terminated)
    sys.path.insert(0, str(TESTS))
    from tls_certs import make_pki

    out: dict[str, Any] = {
        "command": "python -m bench.sip.tls_register "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": checkout_id(),
        "cpus": os.cpu_count(),
        "settings": {
            "rates": rates,
            "seconds_per_step": args.seconds,
            "connections": args.connections,
            "window_per_connection": args.window,
            "client_processes": args.processes,
            "answer_timeout_s": args.answer_timeout,
            "pass_fraction": PASS_FRACTION,
            "offered_fraction": OFFERED_FRACTION,
            "p99_limit_ms": P99_LIMIT_MS,
            "expires": EXPIRES,
            "swimthor_nodes": args.nodes,
            "kamailio_workers": KAMAILIO_WORKERS,
        },
    }
    t0 = time.monotonic()
    common = (rates, args.seconds, args.connections, args.window, args.processes)
    with tempfile.TemporaryDirectory(prefix="swimthor-tls-bench-") as tmp:
        wd = Path(tmp)
        pki = make_pki(wd / "pki", ("127.0.0.1",))
        cafile = str(pki.ca)
        kam = not args.no_kamailio and ensure_kamailio_tls()
        plan = [("swimthor", True), ("kamailio", kam)]
        for name, wanted in plan:
            if not wanted:
                continue
            started = time.monotonic()
            try:
                if name == "swimthor":
                    with swimthor_tls(wd / "cluster", pki.cert, pki.key, cafile, args.nodes) as s:
                        out["swimthor"] = ladder(s, cafile, *common, args.answer_timeout)
                else:
                    with kamailio_tls(wd / "pki", cafile) as k:
                        out["kamailio"] = ladder(k, cafile, *common, args.answer_timeout)
            except Exception as e:  # one server failing must not lose the other's figures
                print(f"{name} FAILED: {type(e).__name__}: {e}")
                out.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"
            out.setdefault("wall_by_case_s", {})[name] = round(time.monotonic() - started, 1)
    best = out.get("swimthor", {}).get("best_rate")
    out["wall_s"] = round(time.monotonic() - t0, 1)
    out["summary"] = {
        "swimthor_tls_register_per_s": best,
        "kamailio_tls_register_per_s": out.get("kamailio", {}).get("best_rate"),
        "target_per_s": TARGET,
        # None when the ladder neither reached the target nor failed below it
        "target_met": None
        if "swimthor" not in out
        else True
        if (best or 0) >= TARGET
        else False
        if _failed_below(out["swimthor"], TARGET)
        else None,
    }
    print(json.dumps(out["summary"], indent=2))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path} ({out['wall_s']:.0f} s)")
    return 1 if out.get("errors") else 0


def _failed_below(ladder_out: dict[str, Any], target: int) -> bool:
    return any(not s["passed"] and s["rate"] <= target for s in ladder_out["steps"])


if __name__ == "__main__":
    sys.exit(main())
