"""The piggyback queue benchmark runs end to end on small sizes and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "broadcast.py"


def test_broadcast_bench_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_broadcast", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_broadcast"] = module
    spec.loader.exec_module(module)
    out = tmp_path / "broadcast.json"
    assert module.main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [s["n"] for s in result["sizes"]] == [100, 1000]
    for size in result["sizes"]:
        # Every update goes out its limit times, 40 to 119 bytes each, in 1400-byte packets.
        assert size["packets"] >= size["n"] * size["retransmit_limit"] * 43 // 1400
        assert size["seconds"] > 0 and size["us_per_packet"] > 0
    assert "us/packet" in capsys.readouterr().out
