"""Load with faults: valid and garbage traffic on every port of a three-node cluster while one
node is killed -9; the share of valid SIP and DNS requests served, and whether failure
detection stayed correct.

    python bench/faults.py                      # 30 s, about 40 s in all
    python bench/faults.py --seconds 60 --phones 40 --rate 10

What runs (everything on loopback, bounded in count and time, every process stopped by PID):

- three `swimthor join` agents (local profile, sealed gossip) with SIP and DNS, n1..n3;
- **phones**: `--phones` addresses 127.0.1.x, each sending `--rate` REGISTERs a second to a
  node of its choice, and, when no 200 comes back within 0.5 s, retransmitting to the same
  node and then trying the next one (as an RFC 3263 client fails over to the next SRV
  target); a REGISTER counts as served when a 200 arrives within 4 s in all;
- **resolvers**: `--phones` addresses 127.0.2.x asking SRV `_sip._udp.example.com` of a node
  at `--rate` a second each, with the same failover; an answer counts as correct when it
  names only live members (the victim is allowed until it is declared dead plus one TTL);
- **garbage**, from 127.0.0.66: random datagrams at the SIP, DNS and gossip ports of every
  node (`--junk` a second in all), TCP connections that send random bytes or nothing to each
  of those ports, and random lines on each node's control socket;
- at a third of the way, the node most phones use is killed -9.

Reported (stdout and bench/results/faults.json): the share of valid REGISTERs and DNS
queries served before, around and after the kill; how long detection took; whether any
member other than the victim was ever declared failed (it must not be); each survivor's
counters for what it refused (rate-limited, rejected, parse errors).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from dnslib import DNSRecord

from swimthor.ports import free_ports

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_procs.py, also by path
from _procs import AgentProcess, wait_until

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DOMAIN = "example.com"
HOST = "127.0.0.1"
JUNK_HOST = "127.0.0.66"
TTL = 5.0


@dataclass
class Agent:
    name: str
    gossip: int
    sip: int
    dns: int
    sock: str
    log: Path
    process: AgentProcess | None = None  # its `swimthor join`, once started

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return None if self.process is None else self.process.proc


@contextlib.contextmanager
def cluster(wd: Path, n: int = 3) -> Iterator[list[Agent]]:
    key = wd / "cluster.key"
    key.write_text(subprocess.run(
        [sys.executable, "-m", "swimthor", "keygen"], capture_output=True, text=True, timeout=30,
        check=True,
    ).stdout)  # fmt: skip
    key.chmod(0o600)
    ports = free_ports(3 * n)
    agents = [
        Agent(f"n{i + 1}", ports[i], ports[n + i], ports[2 * n + i], str(wd / f"n{i + 1}.sock"),
              wd / f"n{i + 1}.log")
        for i in range(n)
    ]  # fmt: skip
    try:
        for i, a in enumerate(agents):
            argv = [
                sys.executable, "-m", "swimthor", "join", "--name", a.name,
                "--bind", f"{HOST}:{a.gossip}", "--profile", "local", "--key-file", str(key),
                "--role", "sip", "--sip", f"{HOST}:{a.sip}", "--domain", DOMAIN,
                "--sip-auth", "off",
                "--dns", f"{HOST}:{a.dns}", "--control", a.sock, "--data-dir", str(wd / a.name),
                "--log-format", "json",
            ]  # fmt: skip
            if i:
                argv.append(f"{HOST}:{agents[0].gossip}")
            a.process = AgentProcess(argv, a.log, a.sock)
            a.process.spawn()
        wait_until(
            lambda: all(_alive_count(a) == n for a in agents),
            30,
            "the cluster to converge",
            interval=0.2,
        )
        yield agents
    finally:
        for a in agents:
            if a.process is not None:
                a.process.kill()


def _alive_count(a: Agent) -> int:
    from swimthor.control import ControlError, call

    try:
        return sum(m["state"] == "alive" for m in call(a.sock, "members", timeout=1.0))
    except (ControlError, OSError):
        return 0


def _register(user: str, via: tuple[str, int], cseq: int, branch: str) -> bytes:
    host, port = via
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{branch}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:{user}@{DOMAIN}>;tag={branch}\r\n"
        f"To: <sip:{user}@{DOMAIN}>\r\n"
        f"Call-ID: {user}-reg@{host}\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@{host}:{port}>\r\n"
        f"Expires: 600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def register_with_failover(
    sock: trio.socket.SocketType, user: str, cseq: int, ports: list[int], tries: int
) -> int | None:
    """REGISTER `user` until a 200 comes back: `tries` sends per port, 0.5 s apart, the
    ports in order (as a phone fails over to the next SRV target). The index of the port
    that answered, or None."""
    me = sock.getsockname()
    for i, port in enumerate(ports):
        for attempt in range(tries):
            await sock.sendto(
                _register(user, me, cseq, f"{user}x{cseq}x{i}x{attempt}"), (HOST, port)
            )
            with trio.move_on_after(0.5):
                while True:
                    data, _ = await sock.recvfrom(65_535)
                    if data.startswith(b"SIP/2.0 200") and f"CSeq: {cseq} ".encode() in data:
                        return i
    return None


async def query_with_failover(
    sock: trio.socket.SocketType, query: DNSRecord, ports: list[int], tries: int, rng: random.Random
) -> tuple[int, DNSRecord] | None:
    """Ask until an answer with our ID comes back, as `register_with_failover` does."""
    for i, port in enumerate(ports):
        for _ in range(tries):
            query.header.id = rng.randrange(65_536)
            await sock.sendto(bytes(query.pack()), (HOST, port))
            with trio.move_on_after(0.5):
                while True:
                    data, _ = await sock.recvfrom(65_535)
                    try:
                        reply = DNSRecord.parse(data)
                    except Exception:
                        continue
                    if reply.header.id == query.header.id:
                        return i, reply
    return None


@dataclass
class Tally:
    sent: int = 0
    served: int = 0
    wrong: int = 0  # DNS: an answer naming a member declared dead more than a TTL ago
    by_phase: dict[str, list[int]] = field(default_factory=dict)  # phase -> [sent, served]

    def add(self, phase: str, ok: bool) -> None:
        self.sent += 1
        self.served += ok
        row = self.by_phase.setdefault(phase, [0, 0])
        row[0] += 1
        row[1] += ok


class Run:
    def __init__(self, agents: list[Agent], args: argparse.Namespace) -> None:
        self.agents = agents
        self.args = args
        self.rng = random.Random(args.seed)
        self.t0 = 0.0
        self.kill_at = args.seconds / 3
        self.killed_at: float | None = None
        self.victim: Agent | None = None
        self.declared_at: float | None = None
        self.sip = Tally()
        self.dns = Tally()
        self.junk_sent = 0

    def phase(self) -> str:
        t = trio.current_time() - self.t0
        if t < self.kill_at:
            return "before"
        if self.declared_at is None or t < self.declared_at - self.t0 + TTL:
            return "detecting"
        return "after"

    def live_agents(self) -> list[Agent]:
        return [a for a in self.agents if a is not self.victim or self.killed_at is None]

    async def phone(self, n: int) -> None:
        sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        await sock.bind((f"127.0.1.{n + 1}", 0))
        order = list(range(len(self.agents)))
        self.rng.shuffle(order)
        cseq = 0
        end = self.t0 + self.args.seconds
        period = 1.0 / self.args.rate
        while trio.current_time() < end:
            started = trio.current_time()
            cseq += 1
            phase = self.phase()
            ports = [self.agents[i].sip for i in order[:2]]
            answered = await register_with_failover(sock, f"phone{n}", cseq, ports, tries=2)
            if answered != 0:
                order.append(order.pop(0))  # fail over: the silent node goes last
            self.sip.add(phase, answered is not None)
            await trio.sleep(max(0.0, period - (trio.current_time() - started)))
        sock.close()

    async def resolver(self, n: int) -> None:
        sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        await sock.bind((f"127.0.2.{n + 1}", 0))
        order = list(range(len(self.agents)))
        self.rng.shuffle(order)
        end = self.t0 + self.args.seconds
        period = 1.0 / self.args.rate
        query = DNSRecord.question(f"_sip._udp.{DOMAIN}", "SRV")
        while trio.current_time() < end:
            started = trio.current_time()
            phase = self.phase()
            ports = [self.agents[i].dns for i in order[:2]]
            got = await query_with_failover(sock, query, ports, 2, self.rng)
            ok = got is not None and got[1].header.rcode == 0 and bool(got[1].rr)
            if got is not None:
                self._check_answer(got[1])
            if got is None or got[0] != 0:
                order.append(order.pop(0))
            self.dns.add(phase, ok)
            await trio.sleep(max(0.0, period - (trio.current_time() - started)))
        sock.close()

    def _check_answer(self, reply: DNSRecord) -> None:
        if self.victim is None or self.declared_at is None:
            return
        if trio.current_time() < self.declared_at + TTL:
            return
        if any(str(rr.rdata.target).split(".")[0] == self.victim.name for rr in reply.rr):
            self.dns.wrong += 1

    async def garbage(self) -> None:
        """Random datagrams at every UDP port, junk TCP connections to every TCP port, junk
        control lines: `--junk` datagrams a second in all."""
        sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        await sock.bind((JUNK_HOST, 0))
        end = self.t0 + self.args.seconds
        batch = max(1, self.args.junk // 20)
        tick = 0
        while trio.current_time() < end:
            for _ in range(batch):
                a = self.rng.choice(self.agents)
                port = self.rng.choice((a.sip, a.dns, a.gossip))
                junk = self.rng.randbytes(self.rng.randrange(1, 1400))
                if self.rng.random() < 0.3:  # something that looks like the protocol
                    junk = self.rng.choice(
                        (b"REGISTER sip:x SIP/2.0\r\nVia: x\r\n\r\n", b"\x12\x34\x01\x00\x00\x01",
                         b"\x02" + junk)
                    ) + junk[:50]  # fmt: skip
                with contextlib.suppress(OSError):
                    await sock.sendto(junk, (HOST, port))
                self.junk_sent += 1
            tick += 1
            if tick % 20 == 0:
                for a in self.live_agents():
                    await self._junk_tcp(a)
            await trio.sleep(0.05)
        sock.close()

    async def _junk_tcp(self, a: Agent) -> None:
        for port in (a.sip, a.dns, a.gossip):
            with contextlib.suppress(OSError, trio.BrokenResourceError, trio.TooSlowError):
                with trio.fail_after(1):
                    s = trio.socket.socket()
                    await s.bind((JUNK_HOST, 0))
                    await s.connect((HOST, port))
                    stream = trio.SocketStream(s)
                    await stream.send_all(self.rng.randbytes(self.rng.randrange(0, 3000)))
                    await stream.aclose()
        with contextlib.suppress(OSError, trio.BrokenResourceError, trio.TooSlowError):
            with trio.fail_after(1):
                stream = await trio.open_unix_socket(a.sock)
                await stream.send_all(self.rng.randbytes(200) + b'\n{"cmd": 7}\n')
                await stream.aclose()

    async def killer(self) -> None:
        await trio.sleep_until(self.t0 + self.kill_at)
        # The node the most phones start with is the one to lose.
        self.victim = self.agents[0]
        assert self.victim.proc is not None
        self.victim.proc.send_signal(signal.SIGKILL)
        self.killed_at = trio.current_time()
        survivors = [a for a in self.agents if a is not self.victim]
        while trio.current_time() < self.t0 + self.args.seconds:
            if all(_state_of(a, self.victim.name) == "dead" for a in survivors):
                self.declared_at = trio.current_time()
                return
            await trio.sleep(0.1)

    async def main(self) -> None:
        self.t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            for n in range(self.args.phones):
                nursery.start_soon(self.phone, n)
                nursery.start_soon(self.resolver, n)
            nursery.start_soon(self.garbage)
            nursery.start_soon(self.killer)


def _state_of(a: Agent, name: str) -> str | None:
    from swimthor.control import ControlError, call

    try:
        for m in call(a.sock, "members", timeout=1.0):
            if m["name"] == name:
                return str(m["state"])
    except (ControlError, OSError):
        return None
    return None


def _false_failures(agents: list[Agent], victim: str) -> list[str]:
    """'member failed' lines about anyone but the victim, from every agent's log."""
    out = []
    for a in agents:
        for line in a.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("event") == "member failed" and rec.get("member") != victim:
                    out.append(f"{a.name}: {rec.get('member')}")
    return out


def _counters(a: Agent) -> dict[str, Any]:
    from swimthor.control import ControlError, call

    try:
        st = call(a.sock, "status", timeout=2.0)
    except (ControlError, OSError):
        return {}
    pick = {
        "gossip": {k: st["stats"].get(k) for k in (
            "rejected_seal", "rejected_replay", "rejected_stale", "rejected_decode",
            "stream_rejected")},
        "sip": {k: st["sip"]["transport"].get(k) for k in ("rate_limited", "udp_received")}
        | {k: st["sip"]["proxy"].get(k) for k in ("parse_errors", "dropped", "registers")},
        "dns": {k: st["dns"]["transport"].get(k) for k in ("rate_limited", "udp_received")}
        | {k: st["dns"]["answers"].get(k) for k in ("formerr", "dropped", "noerror")},
    }  # fmt: skip
    return pick


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="swimthor-faults-") as tmp:
        wd = Path(tmp)
        with cluster(wd) as agents:
            r = Run(agents, args)
            trio.run(r.main)
            survivors = [a for a in agents if a is not r.victim]
            victim = r.victim.name if r.victim else ""
            out: dict[str, Any] = {
                "seconds": args.seconds,
                "phones": args.phones,
                "rate_per_phone": args.rate,
                "junk_per_s": args.junk,
                "junk_sent": r.junk_sent,
                "victim": victim,
                "killed_after_s": round((r.killed_at or 0) - r.t0, 2),
                "detected_after_kill_s": (
                    round(r.declared_at - r.killed_at, 2)
                    if r.declared_at is not None and r.killed_at is not None
                    else None
                ),
                "false_failures": _false_failures(agents, victim),
                "survivors_agree": all(_state_of(a, victim) == "dead" for a in survivors),
                "sip": _tally(r.sip),
                "dns": _tally(r.dns) | {"named_the_dead": r.dns.wrong},
                "refused": {a.name: _counters(a) for a in survivors},
            }
    return out


def _tally(t: Tally) -> dict[str, Any]:
    return {
        "sent": t.sent,
        "served": t.served,
        "served_share": round(t.served / t.sent, 5) if t.sent else None,
        "by_phase": {
            p: {"sent": s, "served": ok, "share": round(ok / s, 5) if s else None}
            for p, (s, ok) in t.by_phase.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--phones", type=int, default=20, help="phones, and as many resolvers")
    p.add_argument("--rate", type=float, default=5.0, help="requests/s of each phone/resolver")
    p.add_argument("--junk", type=int, default=2000, help="garbage datagrams/s in all")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    args = p.parse_args(argv)
    if not 1 <= args.phones <= 250:
        p.error("--phones must be within 1..250")
    out = run(args)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    ok = not out["false_failures"] and out["survivors_agree"]
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
