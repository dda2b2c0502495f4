"""Load with faults (bench/faults.py, short): phones and resolvers with failover, garbage on
every port of a three-node cluster, one node killed -9 a third of the way in. Valid requests
keep being served, detection stays correct, DNS stops naming the dead node."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = pytest.mark.slow


def _faults() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_faults", BENCH / "faults.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_faults"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_valid_traffic_is_served_through_garbage_and_a_kill() -> None:
    faults = _faults()
    out = faults.run(
        argparse.Namespace(seconds=12.0, phones=10, rate=5.0, junk=1500, seed=3, out=None)
    )
    assert out["victim"] == "n1"
    assert out["detected_after_kill_s"] is not None
    assert out["false_failures"] == []
    assert out["survivors_agree"]
    for what in ("sip", "dns"):
        assert out[what]["sent"] > 400, out[what]
        assert out[what]["served_share"] >= 0.99, (what, out[what])
    assert out["dns"]["named_the_dead"] == 0
    assert out["junk_sent"] > 10_000
    for counters in out["refused"].values():
        assert counters["gossip"]["rejected_seal"] > 0
        assert counters["sip"]["parse_errors"] > 0
