"""`swimthor simulate`: the command-line flags turned into a `Scenario`, and a profiled run.

`swimthor.cli` only declares the flags (as plain strings) and calls `scenario_from_args`;
every value is checked here and a bad one is a ValueError whose message names the flag, so
the CLI prints it as its usual one-line error with exit status 2.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from typing import Any

from ._engine import Simulator
from ._metrics import SimResult
from ._scenario import Fault, FaultSpecError, Scenario, parse_fault, parse_override, parse_seconds

__all__ = ["run_profiled", "scenario_from_args"]


def _time(flag: str, text: str) -> float:
    try:
        return parse_seconds(text)
    except ValueError as e:
        raise ValueError(f"bad {flag} {text!r}: {e}") from None


def _fraction(flag: str, text: str) -> float:
    t = text.strip()
    pct = t.endswith("%")
    try:
        value = float(t[:-1] if pct else t) / (100.0 if pct else 1.0)
    except ValueError:
        raise ValueError(f"bad {flag} {text!r}: expected a fraction like 0.01 or 1%") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"bad {flag} {text!r}: must be between 0 and 1")
    return value


def _count(flag: str, text: str, lo: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"bad {flag} {text!r}: expected a whole number") from None
    if value < lo:
        raise ValueError(f"bad {flag} {text!r}: must be >= {lo}")
    return value


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """Build the scenario from `simulate`'s flags; ValueError naming the flag otherwise."""
    kw: dict[str, Any] = {}
    kw["nodes"] = _count("--nodes", args.nodes, 1)
    kw["dcs"] = _count("--dcs", args.dcs, 1)
    if kw["dcs"] > kw["nodes"]:
        raise ValueError(f"bad --dcs {args.dcs!r}: more datacenters than nodes")
    kw["rtt_intra"] = _time("--rtt-intra", args.rtt_intra)
    kw["rtt_inter"] = _time("--rtt-inter", args.rtt_inter)
    jitter = args.jitter.strip().lower()
    if jitter.endswith("s"):
        kw["jitter_s"] = _time("--jitter", jitter)
    else:
        kw["jitter"] = _fraction("--jitter", jitter)
    kw["loss"] = _fraction("--loss", args.loss)
    kw["dup"] = _fraction("--dup", args.dup)
    kw["reorder"] = _fraction("--reorder", args.reorder)
    if args.burst:
        parts = args.burst.split(",")
        if len(parts) not in (2, 3):
            raise ValueError(f"bad --burst {args.burst!r}: expected ENTER,EXIT[,LOSS]")
        kw["burst_enter"] = _fraction("--burst", parts[0])
        kw["burst_exit"] = _fraction("--burst", parts[1])
        if len(parts) == 3:
            kw["burst_loss"] = _fraction("--burst", parts[2])
    kw["profile"] = args.profile
    kw["duration"] = _time("--duration", args.duration)
    try:
        kw["seed"] = int(args.seed)
    except ValueError:
        raise ValueError(f"bad --seed {args.seed!r}: expected a whole number") from None
    faults: list[Fault] = []
    for spec in args.fault or ():
        try:
            faults.append(parse_fault(spec))
        except FaultSpecError as e:
            raise ValueError(f"bad --fault {spec!r}: {e}") from None
    kw["faults"] = tuple(faults)
    overrides: dict[str, Any] = {}
    for text in args.set or ():
        key, value = parse_override(text)
        overrides[key] = value
    kw["overrides"] = overrides
    kw["lifeguard"] = not args.no_lifeguard
    kw["bootstrap"] = args.bootstrap
    kw["sealed"] = args.sealed
    if args.warmup is not None:
        kw["warmup_max"] = _time("--warmup", args.warmup)
    if args.slow_delay:
        lo, sep, hi = args.slow_delay.partition(",")
        if not sep:
            raise ValueError(f"bad --slow-delay {args.slow_delay!r}: expected LO,HI")
        kw["slow_delay"] = (_time("--slow-delay", lo), _time("--slow-delay", hi))
    try:
        scenario = Scenario(**kw)
    except (TypeError, ValueError) as e:
        raise ValueError(str(e)) from None
    _check_sides(scenario)
    return scenario


def _check_sides(s: Scenario) -> None:
    dcs = set(s.dc_names)
    for f in s.faults:
        for side in f.sides or ():
            for item in side:
                ok = item in dcs or (
                    item.startswith("n") and item[1:].isdigit() and int(item[1:]) < s.nodes
                )
                if not ok:
                    raise ValueError(
                        f"bad --fault partition side {item!r}: no such datacenter or node "
                        f"(datacenters dc1..dc{s.dcs}, nodes n0..n{s.nodes - 1})"
                    )


def run_profiled(scenario: Scenario, top: int) -> tuple[SimResult, str]:
    """Run under cProfile; the result and the `top` functions by own time, as text."""
    sim = Simulator(scenario)
    prof = cProfile.Profile()
    prof.enable()
    try:
        result = sim.run()
    finally:
        prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return result, out.getvalue()
