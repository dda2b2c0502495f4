"""bench/sip/bench.py: the forked call ladder of issue 14, for one short low-rate step against
a three-node cluster (sipp UAC through the node that owns nothing of bob's; bob's device A
answers, device B rings and must be CANCELled), and its step judged as the bench judges it.

Real processes: three `swimthor join`, four sipp; all on 127.0.0.1, each killed by PID when
its step or the cluster ends. The ladder is skipped without sipp (Debian sip-tester).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

# The benchmarks are run as `python -m bench.sip.bench` from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.sip import bench
from bench.sip.sipp_runner import SCENARIOS, SippResult, Step


def _step(calls: int, retrans: int = 0, **extra: int) -> Step:
    result = SippResult(args=[], returncode=0, timed_out=False, wall_s=1.0)
    result.created = result.successful = calls
    result.retransmissions = retrans
    return Step(calls, calls, result, True, "ok", dict(extra))


def test_judge_forked_counts_every_retransmission_and_one_cancel_per_call() -> None:
    counts = {"0_INVITE_Recv": 100, "3_CANCEL_Recv": 100, "3_CANCEL_Retrans": 1, "6_ACK_Recv": 100}
    ok = _step(100, a_retransmissions=0, b_retransmissions=0)
    bench.judge_forked(ok, counts, 0.005)
    assert ok.passed and ok.extra["b_cancels"] == 100 and ok.extra["b_cancels_again"] == 1
    # one retransmission by the UAC and one by A: 2% of 100 calls
    retrans = _step(100, retrans=1, a_retransmissions=1, b_retransmissions=0)
    bench.judge_forked(retrans, counts, 0.005)
    assert not retrans.passed and retrans.extra["retransmitted_percent"] == 2.0
    # B cancelled in 98 calls of 100
    short = _step(100, a_retransmissions=0, b_retransmissions=0)
    bench.judge_forked(short, counts | {"3_CANCEL_Recv": 98}, 0.005)
    assert not short.passed and "cancelled 98 times" in short.why
    missing = _step(100, a_retransmissions=0, b_retransmissions=0)
    bench.judge_forked(missing, {}, 0.005)
    assert not missing.passed


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) missing")
@pytest.mark.skipif(
    not all((SCENARIOS / s).exists() for s in bench.FORK_SCENARIOS),
    reason="the forking sipp scenarios are not there",
)
def test_forked_ladder_one_low_rate_step(tmp_path: Path) -> None:
    with bench.cluster(tmp_path / "cluster") as nodes:
        forked = bench.forked_swimthor(nodes, tmp_path, [20], 3.0)
    (step,) = forked["steps"]
    assert step["calls"] == 60
    assert 0 < step["successful"] == step["created"] == 60, step
    assert step["failed"] == step["open"] == 0
    assert step["a_successful"] == 60  # device A answered every call
    # device B rang in every call and was CANCELled once in each, then 487 and its ACK
    assert step["b_invites"] == step["b_cancels"] == step["b_acks"] == 60
    assert step["b_successful"] == 60
    assert step["retransmitted_percent"] <= 0.5
    assert step["passed"], step["why"]
    assert forked["best_rate"] == 20
    assert forked["at_best"]["b_cancels"] == 60
    owner = forked["owner_transactions"]
    assert owner["forks"] == 60 and owner["branches"] == 120 and owner["cancels_sent"] == 60
