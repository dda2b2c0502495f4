"""The DNS benchmark's pure parts: reading dnsperf's report and writing Knot's zone file from
swimthor's own answers (no processes)."""

from __future__ import annotations

import sys
from pathlib import Path

from dnslib import DNSRecord

from swimthor.dns import Node, Zone

# The benchmarks are run as `python -m bench.dns.bench` from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.dns.bench import duplicates, parse_dnsperf, zone_file

DNSPERF = """\
DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 8053 -d q.txt -l 10 -c 4 -q 200
[Status] Sending queries (to 127.0.0.1:8053)
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         1114240
  Queries completed:    1114200 (100.00%)
  Queries lost:         40 (0.00%)

  Response codes:       NOERROR 1114200 (100.00%)
  Average packet size:  request 39, response 218
  Run time (s):         10.000146
  Queries per second:   111418.371929

  Average Latency (s):  0.001713 (min 0.000021, max 0.012345)
  Latency StdDev (s):   0.000480
"""


def test_parse_dnsperf_reads_every_figure() -> None:
    r = parse_dnsperf(DNSPERF)
    assert r["sent"] == 1114240 and r["completed"] == 1114200 and r["lost"] == 40
    assert r["qps"] == 111418.371929
    assert r["latency_avg_s"] == 0.001713 and r["latency_max_s"] == 0.012345
    assert (r["request_bytes"], r["response_bytes"]) == (39, 218)
    assert r["rcodes"] == {"NOERROR": 1114200}
    assert abs(r["lost_fraction"] - 40 / 1114240) < 1e-12
    assert parse_dnsperf("garbage") == {}


def answers() -> dict[str, DNSRecord]:
    zone = Zone("example.com", me="n1")
    zone.update(Node(f"n{i}", "127.0.0.1", sip_port=5060 + i, dns=True) for i in (1, 2, 3))
    out = {}
    for name, qtype in [
        ("example.com", "SOA"),
        ("example.com", "NS"),
        ("example.com", "NAPTR"),
        ("example.com", "A"),
        ("_sip._udp.example.com", "SRV"),
        ("n1.node.example.com", "A"),
    ]:
        raw = zone.respond(bytes(DNSRecord.question(name, qtype).pack()))
        assert raw is not None
        out[f"{name} {qtype}"] = DNSRecord.parse(raw)
    return out


def test_zone_file_holds_each_answer_record_once_soa_first() -> None:
    captured = answers()
    text = zone_file(captured)
    lines = [line for line in text.splitlines() if line and not line.startswith("$")]
    assert "SOA" in lines[0]
    assert sum("SRV" in line for line in lines) == 3
    assert sum(" NS " in line or "\tNS\t" in line for line in lines) == 3
    assert len(lines) == len(set(lines))
    assert duplicates(captured) == []  # the apex A set has one record per address
