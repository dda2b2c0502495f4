"""The edge's keepalive pings at scale (issue 15): N phones behind NAT on UDP, each pinged by
its edge with an OPTIONS every interval, and what that costs each node.

    python -m bench.sip.keepalive                                 # 100,000 contacts, 30 s
    python -m bench.sip.keepalive --contacts 200 --interval 1 --windows 3
    python -m bench.sip.keepalive --ref HEAD --py-spy 10 --json bench/results/sip_keepalive.json

Target: "100,000 NAT'd UDP contacts pinged every 30 s by their edges at <= 10% of a core per
node".

How:

1. Clusters of `--nodes` real `swimthor join` processes on 127.0.0.1 (`--role sip`,
   `--sip-auth off` and the LAN profile like the other SIP benches, R = 2), killed by PID
   on exit: first one with `--sip-keepalive 0`, then a fresh one with `--sip-keepalive
   INTERVAL`.
2. **N phones from one socket.** Linux delivers a datagram sent to any 127.a.b.c to a socket
   bound to 0.0.0.0:PORT, and IP_PKTINFO tells which address it was sent to and (as sendmsg
   ancillary data) picks the source address of what we send. So one UDP socket stands for
   N phones at 127.16.0.1:PORT, 127.16.0.2:PORT, ...: each REGISTER goes out from its phone's
   address, to node `i % nodes` (its edge), with a Contact on a private address
   (`<sip:kaI@10.x.y.z:5060>`) the packet did not come from: the edge takes it for a phone
   behind NAT (nathelper's test, `_needs_flow`), adds its Path and watches the flow. The
   private addresses only ever appear inside the Contact header: nothing is sent to them
   (the edge sends its pings to the flow, the 127.a.b.c source). REGISTERs go out at
   `--rate`/s, retransmitted on RFC 3261's timer E until a final response or timer F.
3. The same socket answers every OPTIONS with a 200 (Via, From, To with a tag, Call-ID,
   CSeq copied) from the address it was sent to, and records the kernel's receive time
   (SO_TIMESTAMP) of every ping, per contact, and which node sent it (by its SIP port).
4. Windows of `--windows` intervals each, over which each node's CPU (utime + stime from
   /proc/PID/stat) is taken, while the phones answer:
   - **idle** (keepalives off, no contacts): gossip's own cost;
   - **bindings** (keepalives off, the N contacts registered as NAT'd, Paths and all): what
     holding and replicating the bindings costs, without a single ping (`--no-baseline`
     skips it);
   - **keepalive** (the second cluster, the same N contacts, once every 200 is in).
5. Then per node: contacts it is the edge for, pings/s, CPU % of one core in the three
   windows; and for the contacts: how many were pinged once per interval (successive pings
   `interval` +- `--tolerance` apart, none before the window's start or after its end more
   than that away: none missing, none doubled), how many by more than one node or by a node
   that is not their edge (must be 0), and how many were removed (the nodes'
   `sip.keepalive.lost`, must be 0). `--py-spy SECONDS` samples the busiest node after the
   keepalive window (not during it: py-spy's own cost would be in the figure).

The target is judged on each node's whole CPU in the keepalive window; the rise over the
bindings window is the pings' own cost.

Traffic goes to 127.0.0.0/8 only; datagrams from anywhere else are dropped unread. Exit
status 1 when a check on behaviour fails (a registration not acknowledged, a contact not
pinged in the window, pinged by two nodes or by the wrong one, removed); the CPU target is a
figure with its verdict, not an exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import heapq
import itertools
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bench import DOMAIN, Node, _env, _runs_from, checkout_id, converge, launch, stop, worktree
from .sipp_runner import free_udp_port

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux; not in Python 3.11's socket module
SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
PKTINFO = struct.Struct("@I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
TIMEVAL = struct.Struct("@ll")
ANC_SIZE = socket.CMSG_SPACE(PKTINFO.size) + socket.CMSG_SPACE(TIMEVAL.size)
CLK_TCK = os.sysconf("SC_CLK_TCK")
T1, T2, TIMER_F = 0.5, 4.0, 32.0  # RFC 3261 timers E and F for our REGISTERs
MAX_CONTACTS = 1_000_000  # the Pinger's own bound (max_flows)
MAX_NODES = 9
TARGET_CPU_PERCENT = 10.0
RUN = os.urandom(4).hex()  # in every Call-ID: a rerun against a kept cluster is not stale


def phone_host(i: int) -> str:
    """Phone i's public (NAT) address: 127.16.0.1, ... (last octet 1-254, 127.0.0.x avoided)."""
    block, last = divmod(i, 254)
    return f"127.{16 + block // 256}.{block % 256}.{last + 1}"


def private_host(i: int) -> str:
    """What phone i believes its address is (RFC 1918): only ever written in its Contact."""
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def contact_uri(i: int) -> str:
    return f"sip:ka{i}@{private_host(i)}:5060"


def register_message(i: int, port: int, expires: int, attempt: int = 1) -> bytes:
    """Phone i's REGISTER; a later `attempt` is a new transaction (branch, CSeq) of the same
    registration (Call-ID)."""
    host = phone_host(i)
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-kb-{RUN}-{i}-{attempt};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:ka{i}@{DOMAIN}>;tag=kb{i}\r\n"
        f"To: <sip:ka{i}@{DOMAIN}>\r\n"
        f"Call-ID: ka{i}-{RUN}@keepalive.bench\r\n"
        f"CSeq: {attempt} REGISTER\r\n"
        f"Contact: <{contact_uri(i)}>\r\n"
        f"Expires: {expires}\r\n"
        "User-Agent: swimthor-keepalive-bench\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


_COPIED = {b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq"}
_TO = {b"to", b"t"}


def options_answer(data: bytes) -> bytes | None:
    """A 200 to an OPTIONS: its Via, From, To (with our tag), Call-ID and CSeq."""
    head = data.split(b"\r\n\r\n", 1)[0]
    kept = []
    for line in head.split(b"\r\n")[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in _COPIED:
            kept.append(line)
        elif name in _TO:
            kept.append(line if b"tag=" in line else line + b";tag=kb")
    if len(kept) < 5:
        return None
    return b"SIP/2.0 200 OK\r\n" + b"\r\n".join(kept) + b"\r\nContent-Length: 0\r\n\r\n"


@dataclass
class Registration:
    sent: int = 0
    retransmissions: int = 0
    acknowledged: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    timed_out: int = 0
    second_pass: int = 0  # contacts not answered the first time, registered again once
    seconds: float = 0.0


class Phones:
    """N phones behind NAT on one UDP socket (see the module's docstring): their REGISTERs,
    and answers to and records of the pings that reach them."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
            for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):
                    self.sock.setsockopt(socket.SOL_SOCKET, option, 16 << 20)
                    break
            # 0.0.0.0: the only way one socket receives what is sent to every 127.a.b.c (only
            # datagrams from 127.0.0.0/8 are looked at).
            self.sock.bind(("0.0.0.0", 0))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            self.sock.setblocking(False)
            self._poll = select.poll()
            self._poll.register(self.sock, select.POLLIN)
        except BaseException:
            self.sock.close()
            raise
        self.port: int = self.sock.getsockname()[1]
        self.hosts = [phone_host(i) for i in range(n)]
        self._packed = [socket.inet_aton(h) for h in self.hosts]
        self.index = {h: i for i, h in enumerate(self.hosts)}
        self.node_at: dict[int, int] = {}  # a node's SIP port -> its index
        self.edge: list[int] = []  # contact -> the node it registers through
        self.state = bytearray(n)  # 0: waiting, 1: 200, 2: refused
        self.registration = Registration()
        self.pings: list[list[float]] = [[] for _ in range(n)]  # kernel receive times
        self.pinged_by = [0] * n  # a bit per node that pinged the contact
        self.ping_times_by_node: list[list[float]] = []
        self.wrong_uri = 0  # a ping for one contact that arrived at another's address
        self.stray: Counter[str] = Counter()
        self.answer_errors = 0

    def close(self) -> None:
        self.sock.close()

    def set_nodes(self, ports: Sequence[int]) -> None:
        self.node_at = {p: j for j, p in enumerate(ports)}
        self.edge = [i % len(ports) for i in range(self.n)]
        self.ping_times_by_node = [[] for _ in ports]

    # ------------------------------------------------------------ receiving

    def pump(self, until: float) -> None:
        """Answer and record what arrives until time.monotonic() reaches `until`."""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            if self._poll.poll(min(left, 0.05) * 1000 + 0.5):
                self._drain()

    def _drain(self) -> None:
        for _ in range(5000):
            try:
                got = self.sock.recvmsg(2048, ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            self._handle(*got)

    def _handle(
        self, data: bytes, anc: list[tuple[int, int, bytes]], _flags: int, addr: Any
    ) -> None:
        host, port = addr[0], addr[1]
        if not host.startswith("127."):
            self.stray["from outside 127.0.0.0/8"] += 1
            return
        dst = None
        stamp = None
        for level, kind, value in anc:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= PKTINFO.size:
                dst = socket.inet_ntoa(PKTINFO.unpack_from(value)[2])
            elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMP and len(value) >= 16:
                seconds, micros = TIMEVAL.unpack_from(value)
                stamp = seconds + micros / 1e6
        i = self.index.get(dst) if dst is not None else None
        node = self.node_at.get(port) if host == "127.0.0.1" else None
        if i is None or node is None:
            self.stray["not from a node to a phone"] += 1
            return
        if data.startswith(b"SIP/2.0 "):
            self._response(i, data)
        elif data.startswith(b"OPTIONS "):
            self._ping(i, node, data, addr, time.time() if stamp is None else stamp)
        else:
            self.stray[f"request {data.split(b' ', 1)[0][:16].decode(errors='replace')}"] += 1

    def _response(self, i: int, data: bytes) -> None:
        code = data[8:11]
        if self.state[i] or not code.isdigit() or f"ka{i}-{RUN}@".encode() not in data:
            return  # a retransmission's answer, a provisional one, or not ours
        status = int(code)
        if status < 200:
            return
        if status == 200:
            self.state[i] = 1
            self.registration.acknowledged += 1
        else:
            self.state[i] = 2
            self.registration.refused[status] += 1

    def _ping(self, i: int, node: int, data: bytes, addr: Any, stamp: float) -> None:
        if not data.startswith(f"OPTIONS {contact_uri(i)} ".encode()):
            self.wrong_uri += 1
        self.pings[i].append(stamp)
        self.pinged_by[i] |= 1 << node
        self.ping_times_by_node[node].append(stamp)
        answer = options_answer(data)
        if answer is None:
            self.answer_errors += 1
            return
        try:
            self.sock.sendmsg(
                [answer],
                [(socket.IPPROTO_IP, IP_PKTINFO, PKTINFO.pack(0, self._packed[i], bytes(4)))],
                0,
                addr,
            )
        except OSError:
            self.answer_errors += 1

    # ------------------------------------------------------------ registering

    def register(
        self,
        targets: Sequence[tuple[str, int]],
        rate: float,
        expires: int,
        deadline_s: float,
        which: Sequence[int] | None = None,
        attempt: int = 1,
    ) -> Registration:
        """Each contact of `which` (default all) once through its edge at `rate`/s,
        retransmitted per T1 until a final answer or timer F; returns when all are answered
        (or after `deadline_s`). `timed_out` is set to those still unanswered."""
        reg = self.registration
        todo = list(range(self.n)) if which is None else list(which)
        retry: list[tuple[float, float, float, int]] = []  # (when, interval, first sent, i)
        start = time.monotonic()
        nxt = 0
        while nxt < len(todo) or retry:
            now = time.monotonic()
            if now - start > deadline_s:
                break
            due = min(len(todo), int((now - start) * rate) + 1)
            while nxt < due:
                i = todo[nxt]
                self._send_register(i, targets, expires, attempt)
                reg.sent += 1
                heapq.heappush(retry, (now + T1, T1, now, i))
                nxt += 1
            while retry and (retry[0][0] <= now or self.state[retry[0][3]]):
                _, interval, first, i = heapq.heappop(retry)
                if self.state[i] or now - first > TIMER_F:
                    continue  # answered, or timer F: given up
                self._send_register(i, targets, expires, attempt)
                reg.retransmissions += 1
                interval = min(2 * interval, T2)
                heapq.heappush(retry, (now + interval, interval, first, i))
            wake = retry[0][0] if retry else now + 0.05
            if nxt < len(todo):
                wake = min(wake, start + (nxt + 1) / rate)
            self.pump(min(max(wake, now + 0.0005), now + 0.05))
        reg.timed_out = sum(1 for i in range(self.n) if not self.state[i])
        reg.seconds += time.monotonic() - start
        return reg

    def _send_register(
        self, i: int, targets: Sequence[tuple[str, int]], expires: int, attempt: int
    ) -> None:
        data = register_message(i, self.port, expires, attempt)
        anc = [(socket.IPPROTO_IP, IP_PKTINFO, PKTINFO.pack(0, self._packed[i], bytes(4)))]
        with contextlib.suppress(OSError):
            self.sock.sendmsg([data], anc, 0, targets[self.edge[i]])


# ---------------------------------------------------------------- the cluster


def statuses(nodes: Sequence[Node], phones: Phones, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every node's `swimthor status`, asked all at once while the phones go on answering
    pings (a ping not answered before the next counts as missed)."""
    argv = [sys.executable, "-m", "swimthor", "status", "--format", "json", "--control"]
    env, cwd = _env(nodes[0].code if nodes else None)
    procs = [
        subprocess.Popen(
            [*argv, node.control],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for node in nodes
    ]
    try:
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            phones.pump(time.monotonic() + 0.02)
        out = []
        for p in procs:
            if p.poll() is None or p.returncode != 0 or p.stdout is None:
                raise RuntimeError("swimthor status failed or did not answer")
            out.append(dict(json.loads(p.stdout.read())))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


@contextlib.contextmanager
def keepalive_cluster(
    tmp: Path, n: int, interval: float, exclude: Sequence[int] = (), code: Path | None = None
) -> Iterator[list[Node]]:
    """n `swimthor join` processes with --role sip and --sip-keepalive on loopback (from the
    checkout `code`, or this one), each in a session of its own (Ctrl-C reaches only us);
    SIGKILLed by PID on exit."""
    tmp.mkdir(parents=True, exist_ok=True)
    taken = list(exclude)
    nodes = []
    for i in range(n):
        gossip = free_udp_port(exclude=taken)
        taken.append(gossip)
        sip = free_udp_port(exclude=taken)
        taken.append(sip)
        nodes.append(Node(f"node{i + 1}", gossip, sip, str(tmp / f"node{i + 1}.sock"), code=code))
    try:
        launch(
            nodes,
            tmp,
            lambda node: ("--sip-keepalive", f"{interval:g}"),
            code=code,
            new_session=True,
        )
        converge(nodes, tmp)
        yield nodes
    finally:
        stop(nodes)


# ---------------------------------------------------------------- measuring


def window(
    nodes: list[Node], phones: Phones, seconds: float
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Each node's status, then CPU over `seconds` (answering pings all along), then status
    again: (the window's times and CPU figures, statuses before, statuses after)."""
    before = statuses(nodes, phones)
    pids = [node.proc.pid for node in nodes if node.proc is not None]
    ticks0 = [cpu_ticks(pid) for pid in pids]
    busy0 = machine_busy()
    own0 = os.times()
    t0, m0 = time.time(), time.monotonic()
    phones.pump(m0 + seconds)
    t1, m1 = time.time(), time.monotonic()
    ticks1 = [cpu_ticks(pid) for pid in pids]
    busy1 = machine_busy()
    own1 = os.times()
    after = statuses(nodes, phones)
    wall = m1 - m0
    cpu = [round(100.0 * (b - a) / CLK_TCK / wall, 2) for a, b in zip(ticks0, ticks1, strict=True)]
    own = (own1.user + own1.system) - (own0.user + own0.system)
    jiffies = busy1[1] - busy0[1]
    figures = {
        "start": t0,
        "end": t1,
        "seconds": round(wall, 3),
        "cpu_percent": cpu,
        "bench_process_cpu_percent": round(100.0 * own / wall, 2),
        "machine_busy_percent_of_all_cores": (
            round(100.0 * (busy1[0] - busy0[0]) / jiffies, 1) if jiffies else None
        ),
    }
    return figures, before, after


def judge_pings(
    phones: Phones, start: float, end: float, interval: float, tolerance: float
) -> dict[str, Any]:
    """What the pings in [start, end) say about each registered contact."""
    lo, hi = interval * (1 - tolerance), interval * (1 + tolerance)
    once = not_pinged = more_than_one = wrong_node = doubled = 0
    per_contact: Counter[int] = Counter()
    gap_min, gap_max = float("inf"), 0.0
    for i in range(phones.n):
        if phones.state[i] != 1:
            continue
        mask = phones.pinged_by[i]
        if mask & (mask - 1):
            more_than_one += 1
        if mask & ~(1 << phones.edge[i]):
            wrong_node += 1
        inside = sorted(t for t in phones.pings[i] if start <= t < end)
        per_contact[len(inside)] += 1
        if not inside:
            not_pinged += 1
            continue
        gaps = [b - a for a, b in itertools.pairwise(inside)]
        if gaps:
            gap_min, gap_max = min(gap_min, *gaps), max(gap_max, *gaps)
        if any(g < interval / 2 for g in gaps):
            doubled += 1
        if (
            mask == 1 << phones.edge[i]
            and all(lo <= g <= hi for g in gaps)
            and inside[0] - start <= hi
            and end - inside[-1] <= hi
        ):
            once += 1
    return {
        "pinged_once_per_interval": once,
        "not_pinged_in_window": not_pinged,
        "pinged_by_more_than_one_node": more_than_one,
        "pinged_by_a_node_not_their_edge": wrong_node,
        "pinged_twice_within_half_an_interval": doubled,
        "pings_per_contact_in_window": {str(k): v for k, v in sorted(per_contact.items())},
        "gap_between_pings_s": {
            "min": round(gap_min, 3) if gap_max else None,
            "max": round(gap_max, 3) if gap_max else None,
        },
        "tolerance": tolerance,
    }


def _sip(status: dict[str, Any]) -> dict[str, Any]:
    return dict(status.get("sip", {}))


def _keepalive(sip: dict[str, Any]) -> dict[str, int]:
    """pings, answers, lost, watched: from `sip.keepalive` (and `sip.flows.udp`, in the
    status that counts keepalives by transport)."""
    k = dict(sip.get("keepalive", {}))
    if "udp_pings" in k:
        return {
            "pings": k.get("udp_pings", 0),
            "answers": k.get("udp_answers", 0),
            "lost": k.get("udp_lost", 0),
            "watched": dict(sip.get("flows", {})).get("udp", 0),
        }
    return k


def node_rows(
    cluster: list[Node],
    phones: Phones,
    win: dict[str, Any],
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Per node, over a window: contacts it is the edge for, pings, CPU, and its counters."""
    rows = []
    acked = [0] * len(cluster)
    for i in range(phones.n):
        if phones.state[i] == 1:
            acked[phones.edge[i]] += 1
    for j, node in enumerate(cluster):
        s0, s1 = _sip(before[j]), _sip(after[j])
        k0, k1 = _keepalive(s0), _keepalive(s1)
        sent = k1.get("pings", 0) - k0.get("pings", 0)
        answered = k1.get("answers", 0) - k0.get("answers", 0)
        got = sum(1 for t in phones.ping_times_by_node[j] if win["start"] <= t < win["end"])
        transport = dict(s1.get("transport", {}))
        rows.append(
            {
                "node": node.name,
                "edge_for": acked[j],
                "watched": k1.get("watched", 0),
                "pings_per_s": round(got / win["seconds"], 1),
                # The node's own counters, from its status just before the window to just
                # after it (a little longer than the window).
                "node_pings": sent,
                "node_answers": answered,
                "answered_percent": round(100.0 * answered / sent, 2) if sent else None,
                "lost": k1.get("lost", 0),
                "bindings": s1.get("bindings"),
                "paths_added": dict(s1.get("proxy", {})).get("paths_added"),
                "cpu_percent": win["cpu_percent"][j],
                "status_after": {
                    "keepalive": s1.get("keepalive"),
                    "flows": s1.get("flows"),
                    "transport": {
                        k: transport.get(k)
                        for k in ("udp_received", "udp_stale_dropped", "rate_limited")
                    },
                    "answers_by_code": s1.get("answers_by_code"),
                    "latency": s1.get("latency"),
                    "replication": s1.get("replication"),
                },
            }
        )
    return rows


def register_phase(
    phones: Phones, cluster: list[Node], rate: float, expires: int, say: Any
) -> Registration:
    say(f"  registering {phones.n:,} contacts at {rate:g}/s, round robin over the nodes")
    targets = [("127.0.0.1", node.sip) for node in cluster]
    reg = phones.register(targets, rate, expires, deadline_s=phones.n / rate * 2 + 60)
    again = [i for i in range(phones.n) if not phones.state[i]]
    if again:
        # A phone whose REGISTER timed out registers again (a new transaction): once.
        reg.second_pass = len(again)
        phones.register(targets, rate, expires, len(again) / rate + 40, again, attempt=2)
    say(
        f"    {reg.acknowledged:,} acknowledged in {reg.seconds:.1f} s (sent {reg.sent:,}, "
        f"retransmissions {reg.retransmissions:,}, refused {dict(reg.refused)}, "
        f"second pass {reg.second_pass:,}, still unanswered {reg.timed_out:,})"
    )
    phones.pump(time.monotonic() + 2.0)  # the last replications settle
    return reg


def _registration(reg: Registration) -> dict[str, Any]:
    return {
        "sent": reg.sent,
        "retransmissions": reg.retransmissions,
        "acknowledged": reg.acknowledged,
        "refused": {str(k): v for k, v in reg.refused.items()},
        "second_pass": reg.second_pass,
        "unanswered": reg.timed_out,
        "seconds": round(reg.seconds, 1),
    }


def _cluster_up(cluster: list[Node], phones: Phones, since: float, say: Any) -> None:
    phones.set_nodes([node.sip for node in cluster])
    say(
        f"  cluster up in {time.monotonic() - since:.1f} s: "
        + ", ".join(f"{x.name} pid {x.proc.pid if x.proc else 0} sip {x.sip}" for x in cluster)
        + f"; phones at 127.16.0.1.. port {phones.port}"
    )


def _cpu_line(cluster: list[Node], win: dict[str, Any]) -> str:
    cpu = win["cpu_percent"]
    return (
        ", ".join(f"{x.name} {c:.2f}" for x, c in zip(cluster, cpu, strict=True))
        + f" (the bench's own process {win['bench_process_cpu_percent']:.1f}%; machine"
        f" {win['machine_busy_percent_of_all_cores']}% busy)"
    )


def run(
    contacts: int = 100_000,
    nodes: int = 3,
    interval: float = 30.0,
    windows: int = 2,
    rate: float = 800.0,
    tolerance: float = 0.1,
    profile_s: float = 0.0,
    baseline: bool = True,
    ref: str | None = None,
    out: Any = None,
) -> dict[str, Any]:
    """The whole measurement; prints as it goes and returns the figures (see the module's
    docstring)."""

    def say(text: str) -> None:
        print(text, file=out or sys.stdout, flush=True)

    started = time.monotonic()
    span = interval * windows
    expires = int(min(7200, max(600, 6 * span + 2 * contacts / rate + 300)))
    result: dict[str, Any] = {
        "what": "issue 15: NAT'd UDP contacts pinged by their edges (OPTIONS), CPU per node",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": checkout_id(),
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": list(os.getloadavg())},
        "config": {
            "contacts": contacts,
            "nodes": nodes,
            "interval_s": interval,
            "windows": windows,
            "window_s": span,
            "register_rate": rate,
            "expires": expires,
            "replicas": 2,
            "keepalive_misses": 3,
            "tolerance": tolerance,
        },
        "target": f"{contacts:,} contacts pinged every {interval:g} s at <= "
        f"{TARGET_CPU_PERCENT:g}% of a core per node",
    }
    say(
        f"keepalive bench: {nodes} nodes, {contacts:,} NAT'd UDP contacts, interval {interval:g}"
        f" s, windows of {span:g} s ({windows} intervals); load average {os.getloadavg()[0]:.2f}"
    )
    with contextlib.ExitStack() as stack:
        tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="swimthor-keepalive-"))
        code: Path | None = None
        if ref is not None:
            # Both clusters run one commit, whatever happens to this checkout meanwhile.
            code, sha = stack.enter_context(worktree(ref))
            _runs_from(code)
            result["commit"] = f"{sha[:7]} ({ref}, from a git worktree)"
            say(f"nodes run {ref} = {sha[:10]} from a git worktree")
        # Phase 1: keepalives off. An idle window (gossip's own cost), then, with the same
        # contacts registered as NAT'd (the edges add their Paths: only the pings are
        # missing), a window of what holding and replicating the bindings costs.
        say("phase 1: --sip-keepalive 0")
        phones = Phones(contacts)
        try:
            with keepalive_cluster(
                Path(tmpdir) / "off", nodes, 0, exclude=[phones.port], code=code
            ) as cluster:
                _cluster_up(cluster, phones, started, say)
                idle, _, _ = window(cluster, phones, span)
                result["idle_window"] = idle
                say(
                    f"  idle window {idle['seconds']:.1f} s, CPU % of a core: "
                    + _cpu_line(cluster, idle)
                )
                if baseline:
                    reg0 = register_phase(phones, cluster, rate, expires, say)
                    held, before, after = window(cluster, phones, span)
                    rows0 = node_rows(cluster, phones, held, before, after)
                    result["bindings_window"] = held | {
                        "registration": _registration(reg0),
                        "nodes": rows0,
                        "pings_received": sum(len(t) for t in phones.ping_times_by_node),
                    }
                    say(
                        f"  bindings window {held['seconds']:.1f} s ({reg0.acknowledged:,} "
                        "contacts, no pings), CPU % of a core: " + _cpu_line(cluster, held)
                    )
        finally:
            phones.close()

        # Phase 2: a fresh cluster with keepalives on, the same contacts.
        say(f"phase 2: --sip-keepalive {interval:g}")
        phases = time.monotonic()
        phones = Phones(contacts)
        try:
            with keepalive_cluster(
                Path(tmpdir) / "on", nodes, interval, exclude=[phones.port], code=code
            ) as cluster:
                _cluster_up(cluster, phones, phases, say)
                reg = register_phase(phones, cluster, rate, expires, say)
                busy, before, after = window(cluster, phones, span)
                judged = judge_pings(phones, busy["start"], busy["end"], interval, tolerance)
                rows = node_rows(cluster, phones, busy, before, after)
                report(result, cluster, phones, reg, busy, judged, rows, say)
                if profile_s > 0:
                    busiest = max(range(nodes), key=lambda j: rows[j]["cpu_percent"])
                    node = cluster[busiest]
                    say(f"py-spy on {node.name} (the busiest), {profile_s:g} s after the window:")
                    profile = py_spy(node, phones, profile_s, Path(tmpdir))
                    result["profile"] = {"node": node.name} | profile
                    for line in profile.get("lines", []):
                        say("  " + line)
        finally:
            phones.close()
        if ref is None and checkout_id() != result["commit"]:
            # The nodes ran this checkout as it was when each started: say it moved.
            result["commit_at_end"] = checkout_id()
            say(
                f"this checkout moved during the run: {result['commit']} -> "
                f"{result['commit_at_end']} (--ref pins one commit)"
            )
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def report(
    result: dict[str, Any],
    cluster: list[Node],
    phones: Phones,
    reg: Registration,
    busy: dict[str, Any],
    judged: dict[str, Any],
    rows: list[dict[str, Any]],
    say: Any,
) -> None:
    """The keepalive window's figures, checks and verdict: into `result`, and printed."""
    contacts, interval, tolerance = phones.n, result["config"]["interval_s"], judged["tolerance"]
    idle = result["idle_window"]["cpu_percent"]
    held = result.get("bindings_window", {}).get("cpu_percent")
    for j, r in enumerate(rows):
        r["idle_cpu_percent"] = idle[j]
        r["bindings_cpu_percent"] = held[j] if held else None
        r["above_idle"] = round(r["cpu_percent"] - idle[j], 2)
        r["above_bindings"] = round(r["cpu_percent"] - held[j], 2) if held else None
    removed = sum(r["lost"] or 0 for r in rows)
    worst = max(r["cpu_percent"] for r in rows)
    pings_own = max(r["above_bindings"] for r in rows) if held else None
    met = worst <= TARGET_CPU_PERCENT
    checks = {
        "every contact acknowledged": reg.acknowledged == contacts,
        "every contact pinged in the window": judged["not_pinged_in_window"] == 0,
        "none pinged by more than one node": judged["pinged_by_more_than_one_node"] == 0,
        "none pinged by another node than its edge": (
            judged["pinged_by_a_node_not_their_edge"] == 0
        ),
        "none pinged twice within half an interval": (
            judged["pinged_twice_within_half_an_interval"] == 0
        ),
        "none removed": removed == 0,
        "each node watches every contact registered through it": all(
            r["watched"] >= r["edge_for"] for r in rows
        ),
    }
    result |= {
        "registration": _registration(reg),
        "keepalive_window": busy,
        "nodes": rows,
        "totals": judged
        | {
            "contacts_registered": reg.acknowledged,
            "removed": removed,
            "watched_without_a_200": sum(r["watched"] for r in rows) - reg.acknowledged,
            "wrong_request_uri": phones.wrong_uri,
            "answer_errors": phones.answer_errors,
            "stray_datagrams": dict(phones.stray),
        },
        "checks": checks,
        "passed": all(checks.values()),
        "verdict": {
            "judged_on": "each node's whole CPU in the keepalive window",
            "highest_node_cpu_percent": worst,
            "largest_rise_over_bindings_window": pings_own,
            "largest_rise_over_idle_window": max(r["above_idle"] for r in rows),
            "target_cpu_percent": TARGET_CPU_PERCENT,
            "met": met,
        },
    }
    say(f"  keepalive window {busy['seconds']:.1f} s:")
    say(
        f"    {'node':6} {'edge for':>9} {'pings/s':>8} {'answered':>9} {'CPU %':>6}"
        f" {'idle':>6} {'no pings':>8} {'pings cost':>10}"
    )
    for r in rows:
        nopings = "-" if r["bindings_cpu_percent"] is None else f"{r['bindings_cpu_percent']:.2f}"
        cost = "-" if r["above_bindings"] is None else f"{r['above_bindings']:.2f}"
        say(
            f"    {r['node']:6} {r['edge_for']:>9,} {r['pings_per_s']:>8.1f} "
            f"{r['answered_percent'] or 0:>8.1f}% {r['cpu_percent']:>6.2f} "
            f"{r['idle_cpu_percent']:>6.2f} {nopings:>8} {cost:>10}"
        )
    say(
        f"    (CPU % of one core: keepalive window, idle window, bindings window without pings,"
        f" and the difference); the bench's own process (the {contacts:,} phones) "
        f"{busy['bench_process_cpu_percent']:.1f}%, machine "
        f"{busy['machine_busy_percent_of_all_cores']}% busy"
    )
    say(
        "  contacts: pinged once per interval by their edge "
        f"{judged['pinged_once_per_interval']:,}/{reg.acknowledged:,} (successive pings "
        f"{interval:g} s +- {tolerance:.0%}); not pinged {judged['not_pinged_in_window']:,}; "
        f"by more than one node {judged['pinged_by_more_than_one_node']:,}; by a node not "
        f"their edge {judged['pinged_by_a_node_not_their_edge']:,}; removed {removed:,}"
    )
    say(
        f"    pings per contact in the window {judged['pings_per_contact_in_window']}; "
        f"gaps between pings {judged['gap_between_pings_s']['min']}.."
        f"{judged['gap_between_pings_s']['max']} s; watched by the edges "
        f"{sum(r['watched'] for r in rows):,}; bindings held "
        f"{sum(r['bindings'] or 0 for r in rows):,} (R = 2)"
    )
    if phones.stray or phones.wrong_uri or phones.answer_errors:
        say(
            f"    stray datagrams {dict(phones.stray)}, wrong Request-URI "
            f"{phones.wrong_uri}, answers not sent {phones.answer_errors}"
        )
    failed = [name for name, ok in checks.items() if not ok]
    say("checks: " + ("all passed" if not failed else "FAILED: " + "; ".join(failed)))
    own = "" if pings_own is None else f"; the pings' own cost at most {pings_own:.2f} points"
    say(
        f"target <= {TARGET_CPU_PERCENT:g}% of a core per node: "
        + ("met" if met else "NOT met")
        + f" (the busiest node {worst:.2f}% in the keepalive window{own})"
    )


def _frame(text: str) -> str:
    """`function (path/file.py:LINE)` as `function (file.py)`: a function, whatever line."""
    name, _, where = text.partition(" (")
    return f"{name} ({where.rstrip(')').rpartition('/')[2].rpartition(':')[0] or where})"


def py_spy(node: Node, phones: Phones, seconds: float, tmp: Path) -> dict[str, Any]:
    """Sample a node with py-spy while the phones go on answering; the
    functions it was in most (self) and under most (inclusive), in percent of the samples."""
    exe = Path(sys.executable).parent / "py-spy"
    if node.proc is None or not exe.exists():
        return {"error": "py-spy not found beside the interpreter"}
    raw = tmp / f"{node.name}.pyspy.txt"
    proc = subprocess.Popen(
        [str(exe), "record", "--pid", str(node.proc.pid), "--duration", f"{seconds:g}",
         "--rate", "100", "--format", "raw", "--output", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        phones.pump(time.monotonic() + seconds)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            phones.pump(time.monotonic() + 0.2)  # py-spy writes its file
        _, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        err = b"py-spy did not finish"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not raw.exists():
        return {"error": err.decode(errors="replace")[-500:]}
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            under[frame] += n
    if not total:
        return {"samples": 0}
    top_own = [(f, round(100.0 * n / total, 1)) for f, n in own.most_common(15)]
    top_under = [(f, round(100.0 * n / total, 1)) for f, n in under.most_common(25)]
    lines = [f"{total} samples; self:"] + [f"  {p:5.1f}% {f}" for f, p in top_own]
    lines += ["inclusive:"] + [f"  {p:5.1f}% {f}" for f, p in top_under]
    return {"samples": total, "self": top_own, "inclusive": top_under, "lines": lines}


def _terminated(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: nodes killed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--contacts", type=int, default=100_000, help="phones (default 100,000)")
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    p.add_argument(
        "--interval", type=float, default=30.0, help="--sip-keepalive, seconds (default 30)"
    )
    p.add_argument(
        "--windows", type=int, default=2, help="intervals per measuring window (default 2)"
    )
    p.add_argument("--rate", type=float, default=800.0, help="REGISTERs/s (default 800)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.1,
        help="how far from the interval successive pings may be (fraction, default 0.1)",
    )
    p.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the window with the contacts registered and keepalives off",
    )
    p.add_argument(
        "--ref",
        help="run the nodes from a git worktree of this commit (default: this checkout as it "
        "is, each node as it is when it starts)",
    )
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument(
        "--py-spy",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the window, sample the busiest node with py-spy this long (default 0: no)",
    )
    args = p.parse_args(argv)
    if not 1 <= args.contacts <= MAX_CONTACTS:
        p.error(f"--contacts is 1 to {MAX_CONTACTS:,}")
    if not 1 <= args.nodes <= MAX_NODES:
        p.error(f"--nodes is 1 to {MAX_NODES}")
    if not 1 <= args.interval <= 3600:
        p.error("--interval is 1 to 3600 seconds")
    if not 1 <= args.windows <= 10:
        p.error("--windows is 1 to 10")
    if not 1 <= args.rate <= 20_000:
        p.error("--rate is 1 to 20,000")
    if not 0 <= args.py_spy <= 120:
        p.error("--py-spy is 0 to 120 seconds")
    if not 0 < args.tolerance < 0.5:
        p.error("--tolerance is above 0 and below 0.5")
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        result = run(
            args.contacts,
            args.nodes,
            args.interval,
            args.windows,
            args.rate,
            args.tolerance,
            args.py_spy,
            not args.no_baseline,
            args.ref,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    result["command"] = "python -m bench.sip.keepalive " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0 if result.get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
