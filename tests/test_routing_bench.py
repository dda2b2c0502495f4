"""The routing benchmark runs end to end on small samples and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "routing.py"


def test_routing_bench_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_routing", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_routing"] = module
    spec.loader.exec_module(module)
    out = tmp_path / "routing.json"
    assert module.main(["--quick", "--sizes", "10,50", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [s["n"] for s in result["sizes"]] == [10, 50]
    for size in result["sizes"]:
        assert size["lookups_per_s"]["swimthor"] > 0
        assert size["cached_lookups_per_s"]["swimthor"] > 0
        for name in ("swimthor", "ring", "two-level"):
            for kind in ("leave", "join"):
                for m in size["moves"][name][kind]:
                    assert all(v == 0 for k, v in m.items() if k != "moved"), (name, kind, m)
    assert "swimthor" in capsys.readouterr().out
