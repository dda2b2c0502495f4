"""The Python peer of the DNS benchmark: dnslib's own threaded `DNSServer` (UDP) serving a static
copy of what a swimthor node answered.

    python -m bench.dns.dnslib_server --port PORT --answers answers.json

`answers.json` holds, per question, swimthor's answer on the wire (hex), as bench/dns/bench.py
captured it: {"<name> <TYPE>": "<hex>", ...}. For each query the resolver builds a reply the
usual dnslib way (`request.reply()`, then the answer, authority and additional records of the
stored answer, parsed once at start-up), so the answers are the same records, packed by dnslib
per query. Names of the zone that are not stored answer NXDOMAIN with the SOA; others REFUSED.
`dnslib.server.DNSServer` is a `socketserver.ThreadingMixIn` UDP server: one thread per query.

Runs until killed (the benchmark sends SIGTERM, then SIGKILL). Logging is off (dnslib's default
logger prints every query).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dnslib import QTYPE, RCODE, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class StaticResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, answers: dict[str, str], zone: str) -> None:
        self.zone = DNSLabel(zone)
        self.records: dict[tuple[str, int], DNSRecord] = {}
        self.soa = None
        for key, wire in answers.items():
            name, qtype = key.rsplit(" ", 1)
            record = DNSRecord.parse(bytes.fromhex(wire))
            self.records[(str(DNSLabel(name)).lower(), getattr(QTYPE, qtype))] = record
            if qtype == "SOA" and record.rr:
                self.soa = record.rr[0]

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        reply.header.ra = 0
        qname = request.q.qname
        stored = self.records.get((str(qname).lower(), request.q.qtype))
        if stored is not None:
            for rr in stored.rr:
                reply.add_answer(rr)
            for rr in stored.auth:
                reply.add_auth(rr)
            for rr in stored.ar:
                if rr.rtype != QTYPE.OPT:
                    reply.add_ar(rr)
        elif qname.matchSuffix(self.zone):
            reply.header.rcode = RCODE.NXDOMAIN
            if self.soa is not None:
                reply.add_auth(self.soa)
        else:
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
        return reply


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dns.dnslib_server", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--answers", required=True, help="JSON: {'<name> <TYPE>': '<hex>'}")
    ap.add_argument("--zone", default="example.com")
    args = ap.parse_args(argv)
    resolver = StaticResolver(json.loads(Path(args.answers).read_text()), args.zone)
    quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    server = DNSServer(resolver, address=args.address, port=args.port, logger=quiet)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"dnslib DNSServer on {args.address}:{args.port}", flush=True)
    server.start()  # serve_forever
    return 0


if __name__ == "__main__":
    sys.exit(main())
