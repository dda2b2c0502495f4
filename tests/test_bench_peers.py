"""bench/peers: the UDP counter shim, and one short kill -9 run against each peer.

The peers (kinship, swim-protocol) come only with the ``bench`` extra; their tests skip
without them, and the shim's without a C compiler. Every process is started by run.py, which
kills it by PID at the end; nothing is sent anywhere but 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

PEERS_DIR = Path(__file__).resolve().parent.parent / "bench" / "peers"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_peers_{name}", PEERS_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pct_and_rate() -> None:
    run = _load("run")
    assert run.pct([], 0.5) is None
    assert run.pct([3.0, 1.0, 2.0], 0.5) == 2.0
    assert run.pct([3.0, 1.0, 2.0], 0.99) == 3.0

    class FakeNode:
        stats = [
            {"timestamp": 10.0, "datagrams_out": 100},
            {"timestamp": 11.0, "datagrams_out": 110},
            {"timestamp": 12.0, "datagrams_out": 120},
            {"timestamp": 13.0, "datagrams_out": 200},
        ]

    assert run.rate(FakeNode(), "datagrams_out", 10.0, 12.0) == 10.0
    assert run.rate(FakeNode(), "datagrams_out", 12.5, 12.6) is None
    assert run.mean_or_none([1.0, None], 2) is None
    assert run.mean_or_none([1.0, 2.0], 2) == 1.5


def test_udpcount_counts_udp_datagrams_and_payload_bytes(tmp_path: Path) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    run = _load("run")
    lib = run.build_udpcount(tmp_path)
    assert lib is not None
    code = (
        "import socket\n"
        "from _nodeutil import UdpCounters\n"
        "c = UdpCounters()\n"
        "r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "r.bind(('127.0.0.1', 0))\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for n in (10, 20, 30):\n"
        "    s.sendto(b'x' * n, r.getsockname())\n"
        "s.connect(r.getsockname())\n"
        "s.send(b'y' * 5)\n"
        "a, b = socket.socketpair()\n"  # not UDP: not counted
        "a.send(b'z' * 100)\n"
        "print(*c.read())\n"
    )
    env = dict(os.environ, LD_PRELOAD=str(lib), UDPCOUNT_LIB=str(lib), PYTHONPATH=str(PEERS_DIR))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "65"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("peer", "module"), [("kinship", "kinship"), ("swim-protocol", "swimprotocol")]
)
def test_one_kill_is_detected_by_every_survivor(peer: str, module: str, tmp_path: Path) -> None:
    pytest.importorskip(module)
    run = _load("run")
    out = tmp_path / "result.json"
    argv = ["--peer", peer, "--nodes", "3", "--preset", "local", "--trials", "1"]
    argv += ["--steady", "3", "--detect-timeout", "20", "--restart-timeout", "20"]
    assert run.main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["nodes"] == 3 and result["preset"] == "local" and result["trials"] == 1
    assert result["detected"] == 1
    assert 0 < result["all_failed_s"]["max"] < 10
    assert result["false_failures"] == 0
    assert result["cpu_percent_per_agent"] >= 0
    if shutil.which("cc") or shutil.which("gcc"):
        assert result["datagrams_per_node_s"] > 0
        assert result["bytes_per_node_s"] > 0
