"""Flood protection: one address floods a node's SIP and DNS ports as fast as it can while
phones and resolvers at other addresses go on; with the per-source limit on, and off.

    python bench/flood.py                 # 2 x 15 s, about 40 s
    python bench/flood.py --seconds 30

One `swimthor join` node (sealed, local profile, SIP and DNS on loopback). Two flooder
processes send from 127.0.0.77, one REGISTERs at the SIP port and one SRV queries at the DNS
port, each in a tight loop (valid requests, so without a limit every one of them costs the
node a full answer). 20 phones at 127.0.1.x register 5 times a second each, 20 resolvers at
127.0.2.x ask 5 times a second each, with a 0.5 s timeout and two retransmissions. Reported
for each run (stdout and bench/results/flood.json): the share of the phones' and
resolvers' requests answered, the flood rate offered, how many flood packets the node
dropped unread, and the node's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio
from dnslib import DNSRecord

from swimthor.ports import free_ports

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import AgentProcess
from faults import (
    DOMAIN,
    HOST,
    Agent,
    _counters,
    query_with_failover,
    register_with_failover,
)

RESULTS = Path(__file__).resolve().parent / "results"
FLOOD_HOST = "127.0.0.77"

_FLOODER = r"""
import socket, sys, time
kind, port, seconds, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.77", 0))
s.setblocking(False)
if kind == "sip":
    # Every REGISTER a new transaction for a new user: none is a cheap retransmission.
    me = s.getsockname()
    msgs = [("REGISTER sip:example.com SIP/2.0\r\n"
             f"Via: SIP/2.0/UDP {me[0]}:{me[1]};branch=z9hG4bKf{i}\r\n"
             f"Max-Forwards: 70\r\nFrom: <sip:f{i}@example.com>;tag={i}\r\n"
             f"To: <sip:f{i}@example.com>\r\nCall-ID: flood{i}\r\nCSeq: 1 REGISTER\r\n"
             f"Contact: <sip:f{i}@127.0.0.77:9>\r\nContent-Length: 0\r\n\r\n").encode()
            for i in range(20000)]
else:
    msgs = [bytes.fromhex("123401000001000000000000045f736970045f756470"
                          "076578616d706c6503636f6d0000210001")]
sent = 0
start = time.monotonic()
end = start + seconds
while time.monotonic() < end:
    ahead = sent / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
    for _ in range(100):
        try:
            s.sendto(msgs[sent % len(msgs)], ("127.0.0.1", port))
            sent += 1
        except BlockingIOError:
            time.sleep(0.0005)
        except OSError:
            pass
    try:
        while True:
            s.recv(65535)
    except (BlockingIOError, OSError):
        pass
print(sent)
"""


async def _clients(agent: Agent, phones: int, rate: float, seconds: float) -> dict[str, Any]:
    tally = {"sip": [0, 0], "dns": [0, 0]}
    end = trio.current_time() + seconds
    period = 1.0 / rate

    async def phone(n: int) -> None:
        sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        await sock.bind((f"127.0.1.{n + 1}", 0))
        cseq = 0
        while trio.current_time() < end:
            started = trio.current_time()
            cseq += 1
            ok = await register_with_failover(sock, f"p{n}", cseq, [agent.sip], tries=3)
            tally["sip"][0] += 1
            tally["sip"][1] += ok is not None
            await trio.sleep(max(0.0, period - (trio.current_time() - started)))
        sock.close()

    async def resolver(n: int) -> None:
        sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        await sock.bind((f"127.0.2.{n + 1}", 0))
        q = DNSRecord.question(f"_sip._udp.{DOMAIN}", "SRV")
        rng = random.Random(n)
        while trio.current_time() < end:
            started = trio.current_time()
            got = await query_with_failover(sock, q, [agent.dns], 3, rng)
            tally["dns"][0] += 1
            tally["dns"][1] += got is not None
            await trio.sleep(max(0.0, period - (trio.current_time() - started)))
        sock.close()

    async with trio.open_nursery() as nursery:
        for n in range(phones):
            nursery.start_soon(phone, n)
            nursery.start_soon(resolver, n)
    return {
        k: {"sent": s, "answered": a, "share": round(a / s, 5) if s else None}
        for k, (s, a) in tally.items()
    }


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(limit: bool, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="swimthor-flood-") as tmp:
        wd = Path(tmp)
        gossip, sip, dns = free_ports(3)
        agent = Agent("n1", gossip, sip, dns, str(wd / "n1.sock"), wd / "n1.log")
        argv = [
            sys.executable, "-m", "swimthor", "join", "--name", "n1",
            "--bind", f"{HOST}:{gossip}", "--profile", "local", "--insecure",
            "--role", "sip", "--sip", f"{HOST}:{sip}", "--domain", DOMAIN, "--sip-auth", "off",
            "--dns", f"{HOST}:{dns}", "--control", agent.sock, "--data-dir", str(wd / "n1"),
            "--log-format", "json",
        ]  # fmt: skip
        if not limit:
            argv += ["--sip-rate-limit", "0", "--dns-rate-limit", "0"]
        agent.process = AgentProcess(argv, agent.log, agent.sock)
        flooders: list[subprocess.Popen[str]] = []
        try:
            agent.process.start()  # returns once its control socket answers: all bound
            cpu0 = _cpu(agent.process.pid)
            for kind, port in (("sip", sip), ("dns", dns)):
                flooders.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-c",
                            _FLOODER,
                            kind,
                            str(port),
                            str(args.seconds),
                            str(args.flood_rate),
                        ],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            served = trio.run(_clients, agent, args.phones, args.rate, args.seconds)
            sent = [int(f.communicate(timeout=args.seconds + 30)[0] or 0) for f in flooders]
            cpu = (_cpu(agent.process.pid) - cpu0) / args.seconds
            counters = _counters(agent)
        finally:
            for f in flooders:
                if f.poll() is None:
                    f.kill()
                    f.wait()
            agent.process.kill()
    return {
        "limit": "on (SIP 100/s, DNS 1000/s per source)" if limit else "off",
        "clients": served,
        "flood_sent_per_s": {
            "sip": round(sent[0] / args.seconds),
            "dns": round(sent[1] / args.seconds),
        },
        "dropped_by_limit": {
            "sip": counters.get("sip", {}).get("rate_limited"),
            "dns": counters.get("dns", {}).get("rate_limited"),
        },
        "node_cpu": round(cpu, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--phones", type=int, default=20)
    p.add_argument("--rate", type=float, default=5.0)
    p.add_argument(
        "--flood-rate", type=float, default=20_000, help="datagrams/s of each flooder (SIP, DNS)"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "flood.json")
    args = p.parse_args(argv)
    out = {"seconds": args.seconds, "runs": [one_run(True, args), one_run(False, args)]}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
