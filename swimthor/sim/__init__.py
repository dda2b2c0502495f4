"""A deterministic discrete-event simulator that drives the real membership cores.

No trio, no sockets: N `Membership` cores exchange packets encoded as in production over a
seeded virtual network (latency per datacenter pair with jitter, uniform and bursty loss,
duplication, reordering, partitions) while faults are injected (crash, leave, restart, pause,
slow, lossy, flip-flop). One seed gives one trace, bit for bit.

    from swimthor.sim import Scenario, parse_fault, run
    result = run(Scenario(nodes=100, loss=0.01, faults=(parse_fault("crash:1@5"),)))
    result.to_json()["detection"]
"""

from ._cli import run_profiled, scenario_from_args
from ._engine import Simulator, run
from ._faults import fault_targets
from ._metrics import SimResult, summary
from ._nodes import (
    EV_FAILED,
    EV_HELD,
    EV_JOINED,
    EV_LEFT,
    EV_RECOVERED,
    EV_RELEASED,
    EV_SUSPECTED,
)
from ._scenario import (
    FAULT_KINDS,
    ONE_WAY_KINDS,
    SHARED_RECORDS_ABOVE,
    Fault,
    FaultSpecError,
    Scenario,
    membership_config,
    parse_fault,
    parse_override,
    parse_seconds,
)

__all__ = [
    "EV_FAILED",
    "EV_HELD",
    "EV_JOINED",
    "EV_LEFT",
    "EV_RECOVERED",
    "EV_RELEASED",
    "EV_SUSPECTED",
    "FAULT_KINDS",
    "ONE_WAY_KINDS",
    "SHARED_RECORDS_ABOVE",
    "Fault",
    "FaultSpecError",
    "Scenario",
    "SimResult",
    "Simulator",
    "fault_targets",
    "membership_config",
    "parse_fault",
    "parse_override",
    "parse_seconds",
    "run",
    "run_profiled",
    "scenario_from_args",
    "summary",
]
