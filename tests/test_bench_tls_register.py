"""bench/sip/tls_register.py at a tiny scale: one step of 200 REGISTER/s for 2 s over two
persistent TLS connections to a real one-node cluster (no Kamailio), and the figures it writes
checked for sense: every request answered 200, the counts adding up, nothing left running.

Real processes: one `swimthor join` on 127.0.0.1, killed by PID when the bench ends. No
wall-clock thresholds: latencies and CPU figures are only checked to be figures.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

# The benchmarks are run as `python -m bench.sip.tls_register` from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.sip import tls_register


def test_register_message_and_response_parsing() -> None:
    msg = tls_register.register_message(0, 7, 3, ("127.0.0.1", 40000)).decode()
    assert msg.startswith("REGISTER sip:example.com SIP/2.0\r\n")
    assert "Via: SIP/2.0/TLS 127.0.0.1:40000;" in msg
    assert "Contact: <sip:t0-7@127.0.0.1:40000;transport=tls>" in msg
    assert "\r\nExpires: 600\r\n" in msg and msg.endswith("Content-Length: 0\r\n\r\n")
    head = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 127.0.0.1:40000\r\n"
        b"i: 7.0.x@tls-bench\r\ncseq: 3 REGISTER\r\nl: 0"
    )
    assert tls_register.parse_response(head) == (200, b"7.0.x@tls-bench", 3)
    assert tls_register.parse_response(b"REGISTER sip:x SIP/2.0\r\nCSeq: 1 REGISTER") is None


def _children() -> list[int]:
    me = str(os.getpid())
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            out.append(int(entry.name))
    return out


@pytest.mark.slow
def test_tiny_tls_register_ladder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sip_tls.json"
    argv = ["--rates", "200", "--seconds", "2", "--connections", "2", "--no-kamailio"]
    assert tls_register.main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "highest passing rate: 200" in printed and "PASS" in printed
    r = json.loads(out.read_text())

    assert "kamailio" not in r and "errors" not in r
    assert r["settings"]["connections"] == 2 and r["settings"]["swimthor_nodes"] == 1
    sw = r["swimthor"]
    assert sw["best_rate"] == 200 and len(sw["steps"]) == 1
    step = sw["steps"][0]
    assert step["requests"] == 400 and step["sent"] == 400
    assert step["ok"] == 400 and step["passed"]
    assert step["other"] == step["late"] == step["missing"] == step["stray"] == 0
    assert step["ok"] + step["other"] + step["late"] + step["missing"] == step["requests"]
    assert step["connections_lost"] == 0 and step["reconnected_before"] == 0
    assert 0 < step["latency_p50_ms"] <= step["latency_p99_ms"] <= step["latency_max_ms"]
    assert step["server_cpu_percent"] > 0 and step["client_cpu_percent"] > 0
    assert r["summary"]["swimthor_tls_register_per_s"] == 200
    assert r["summary"]["target_met"] is None  # 200/s neither reaches 5,000/s nor fails
    assert _children() == []  # the node was killed and reaped
