"""What a run measured, computed after the fact from the cores' events and the fault log.

Times are seconds after the scenario's time 0 (the end of warm-up). Definitions:

- detection, per crash of member X at t (a `restart` counts as a crash until it comes back):
  `first_suspect_s` the first MemberSuspected(X) anywhere after t, minus t; `each_failed_s`
  one sample per (crash, observer) pair: the observer's first MemberFailed(X) minus t;
  `all_failed_s` the last of those, when every observer has it; `count` the crashes every
  observer detected before the run ended (or X came back). Observers are the members running
  (not crashed, left, leaving or paused) at the end whose core was started before t.
- false_failures / false_suspicions: MemberFailed / MemberSuspected events (one per observer)
  about members that were not crashed, gone or paused at that moment nor in the 30 s before
  it (a declaration that arrives after a restarted or resumed member is back is a late true
  detection of its outage). Slow, lossy, flip-flopping or partitioned members count as
  healthy: declaring them failed is a false failure. `*_by_fault` breaks them down by
  the victim's latest fault (or "none"); `*_by_observer_fault` by the observer's.
- detection_by_kind: the same measures per kind of outage: crash and restart as above, and
  the one-way faults that cut a member off completely (deaf: it hears nothing; mute: it says
  nothing), which the others should declare like a crash; their observers are the healthy
  members (running at the end, no fault of their own in the run).
- declarations: per kind of gray fault (pause, slow, lossy, partial deaf or mute, flipflop),
  how often each healthy observer declared each member under it failed over the run:
  `members`, `max` and `mean` of those per (member, observer) counts; and `out_share_mean`,
  `out_share_min`: the share of the fault's time the member was out of the observer's
  routing (declared failed, or held for flapping).
- healthy_false_failures: MemberFailed events in which neither the member declared nor the
  member declaring it had any fault in the run; healthy_held likewise for MemberHeld.
- dissemination_s: per fully detected crash, from the first MemberFailed(X) anywhere until
  the last observer has it.
- load: datagrams and bytes sent per node per second of its running time in the scenario
  window; `max_msgs_per_node_s` the busiest node.
- converged: all running, non-paused members have the same view digest (live members and
  their incarnations) at the end; `views_match_truth` whether that view is exactly the set of
  members not crashed or gone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._scenario import ONE_WAY_KINDS, Scenario

__all__ = ["Crash", "Observation", "SimResult", "compute_result", "summary"]

_JOINED = 1
_SUSPECTED = 2
_FAILED = 3
_RECOVERED = 5
_HELD = 6
_RELEASED = 7
_RUNNING = 0


@dataclass(frozen=True, slots=True)
class Crash:
    idx: int
    name: str
    at: float  # relative to time 0
    until: float  # when it came back (restart) or the end of the run
    kind: str


@dataclass(slots=True)
class Observation:
    """Raw material handed over by the engine."""

    scenario: Scenario
    origin: float
    end: float
    names: list[str]
    events: list[tuple[float, int, int, str, int]]
    crashes: list[Crash]
    fault_log: dict[int, list[tuple[float, float | None, str]]]
    down_log: dict[int, list[tuple[float, float | None, str]]]
    load: list[tuple[int, int, int]]
    final_state: list[int]
    started: list[float]
    digests: list[str | None]
    view_live: bool | None


def summary(samples: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 (nearest rank) and max in seconds, rounded to the microsecond; None if empty."""
    if not samples:
        return {"p50": None, "p99": None, "max": None}
    xs = sorted(samples)
    n = len(xs)

    def rank(q: float) -> float:
        return round(xs[max(0, math.ceil(q * n) - 1)], 6)

    return {"p50": rank(0.5), "p99": rank(0.99), "max": round(xs[-1], 6)}


@dataclass(slots=True)
class SimResult:
    """The outcome of one run. `to_json()` is the `simulate --format json` contract."""

    nodes: int
    seed: int
    virtual_s: float
    wall_s: float
    detection: dict[str, Any]
    false_failures: int
    false_suspicions: int
    dissemination_s: dict[str, float | None]
    load: dict[str, float | None]
    converged: bool
    trace_digest: str | None = None
    wall_warmup_s: float = 0.0
    warmup_s: float = 0.0
    warmup_converged: bool = True
    bootstrap_s: float | None = None
    false_failures_by_fault: dict[str, int] = field(default_factory=dict)
    false_suspicions_by_fault: dict[str, int] = field(default_factory=dict)
    false_failures_by_observer_fault: dict[str, int] = field(default_factory=dict)
    detection_by_kind: dict[str, dict[str, Any]] = field(default_factory=dict)
    declarations: dict[str, dict[str, float]] = field(default_factory=dict)
    healthy_false_failures: int = 0
    healthy_held: int = 0
    views_match_truth: bool | None = None
    faults: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    # Member events after time 0: (t, observer index, code, member name, incarnation).
    events: list[tuple[float, int, int, str, int]] = field(default_factory=list, repr=False)
    names: list[str] = field(default_factory=list, repr=False)
    # The raw samples behind the summaries, for pooling over seeds (bench/suite.py).
    samples: dict[str, list[float]] = field(default_factory=dict, repr=False)
    # Per fully detected crash: seconds after the first declaration at which each observer
    # learned of it, sorted.
    informed: list[list[float]] = field(default_factory=list, repr=False)

    def informed_curve(self) -> list[tuple[float, float]]:
        """(seconds since the first declaration, fraction of observers informed) for the
        first fully detected crash; empty if none."""
        if not self.informed:
            return []
        times = self.informed[0]
        n = len(times)
        return [(round(t, 4), round((i + 1) / n, 4)) for i, t in enumerate(times)]

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "seed": self.seed,
            "virtual_s": self.virtual_s,
            "wall_s": round(self.wall_s, 3),
            "wall_warmup_s": round(self.wall_warmup_s, 3),
            "detection": self.detection,
            "false_failures": self.false_failures,
            "false_suspicions": self.false_suspicions,
            "dissemination_s": self.dissemination_s,
            "load": self.load,
            "converged": self.converged,
            "views_match_truth": self.views_match_truth,
            "false_failures_by_fault": self.false_failures_by_fault,
            "false_suspicions_by_fault": self.false_suspicions_by_fault,
            "false_failures_by_observer_fault": self.false_failures_by_observer_fault,
            "detection_by_kind": self.detection_by_kind,
            "declarations": self.declarations,
            "healthy_false_failures": self.healthy_false_failures,
            "healthy_held": self.healthy_held,
            "warmup_s": round(self.warmup_s, 6),
            "warmup_converged": self.warmup_converged,
            "bootstrap_s": None if self.bootstrap_s is None else round(self.bootstrap_s, 6),
            "faults": self.faults,
            "network": self.stats,
            "trace_digest": self.trace_digest,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=False)

    def to_text(self) -> str:
        d = self.detection

        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x * 1000:.0f}ms" if x < 10 else f"{x:.1f}s"

        def dist(s: dict[str, Any]) -> str:
            return f"p50 {ms(s['p50'])}  p99 {ms(s['p99'])}  max {ms(s['max'])}"

        lines = [
            f"{self.nodes} nodes, seed {self.seed}: {self.virtual_s:g}s virtual in "
            f"{self.wall_s:.2f}s wall (warm-up {self.warmup_s:.1f}s"
            + ("" if self.warmup_converged else ", NOT converged")
            + ")",
        ]
        if self.bootstrap_s is not None or self.warmup_s == 0.0:
            lines.append(f"bootstrap:         {ms(self.bootstrap_s)} until all see all alive")
        if d["crashes"]:
            lines += [
                f"crashes detected:  {d['count']} of {d['crashes']}",
                f"first suspicion:   {dist(d['first_suspect_s'])}",
                f"failed, each:      {dist(d['each_failed_s'])}",
                f"failed, all:       {dist(d['all_failed_s'])}",
                f"dissemination:     {dist(self.dissemination_s)}",
            ]
        ff = ", ".join(f"{k} {v}" for k, v in sorted(self.false_failures_by_fault.items()))
        fs = ", ".join(f"{k} {v}" for k, v in sorted(self.false_suspicions_by_fault.items()))
        for kind, dk in self.detection_by_kind.items():
            if kind in ONE_WAY_KINDS:
                lines.append(
                    f"{kind} declared:     {dk['count']} of {dk['crashes']}, all by "
                    + dist(dk["all_failed_s"])
                )
        for kind, dec in self.declarations.items():
            lines.append(
                f"declared, {kind}: max {dec['max']:g} mean {dec['mean']:.2f} per observer "
                f"({dec['members']:g} members), out of routing {dec['out_share_mean']:.0%} "
                f"of the fault (least {dec['out_share_min']:.0%})"
            )
        lines.append(f"false failures:    {self.false_failures}" + (f" ({ff})" if ff else ""))
        lines.append(f"false suspicions:  {self.false_suspicions}" + (f" ({fs})" if fs else ""))
        lines.append(
            f"healthy declared:  {self.healthy_false_failures} (by healthy members), "
            f"held: {self.healthy_held}"
        )
        ld = self.load
        if ld["msgs_per_node_s"] is not None:
            lines.append(
                f"load per node:     {ld['msgs_per_node_s']:.1f} msgs/s, "
                f"{(ld['bytes_per_node_s'] or 0) / 1000:.1f} kB/s "
                f"(busiest {ld['max_msgs_per_node_s']:.1f} msgs/s)"
            )
        lines.append(
            "converged:         "
            + ("yes" if self.converged else "NO")
            + ("" if self.views_match_truth in (None, True) else " (views differ from truth)")
        )
        if self.trace_digest:
            lines.append(f"trace:             {self.trace_digest[:16]}")
        return "\n".join(lines)


# A declaration about a member that was down or paused (SIGSTOP-like) at any time in the
# STALE_GRACE seconds before it is a late but true detection of that outage, not a false
# failure: the cluster could not yet know that the member was back (the longest suspicion, six
# times its minimum and scaled for a slow member, is under this).
_STALE_GRACE = 30.0


def _unresponsive_within(obs: Observation, i: int, a: float, b: float) -> bool:
    """Was member i crashed, gone, paused, or cut off one way (deaf or mute to all) at any
    moment of [a, b]?"""
    cut = [(c.at, c.until, c.kind) for c in obs.crashes if c.idx == i and c.kind in ONE_WAY_KINDS]
    pauses = [f for f in obs.fault_log.get(i, ()) if f[2] == "pause"]
    return any(
        start <= b and (end is None or end >= a)
        for start, end, _kind in [*obs.down_log.get(i, ()), *pauses, *cut]
    )


# Gray faults: the member stays up; `declarations` counts how often it is declared anyway.
_GRAY_KINDS = ("pause", "slow", "lossy", "deaf", "mute", "flipflop")


def _latest_fault(log: list[tuple[float, float | None, str]] | None, t: float) -> str:
    kind = "none"
    if log:
        best = -math.inf
        for start, _end, k in log:
            if best <= start <= t:
                best, kind = start, k
    return kind


def compute_result(
    obs: Observation,
    *,
    wall_s: float,
    wall_warmup_s: float,
    warmup_s: float,
    warmup_converged: bool,
    bootstrap_s: float | None,
    trace_digest: str | None,
    faults: list[dict[str, Any]],
    stats: dict[str, int],
) -> SimResult:
    s = obs.scenario
    duration = s.duration
    name_idx = {name: i for i, name in enumerate(obs.names)}
    by_member: dict[str, list[tuple[float, int, int]]] = {}
    false_failures = 0
    false_suspicions = 0
    ff_by: dict[str, int] = {}
    fs_by: dict[str, int] = {}
    ff_obs: dict[str, int] = {}
    routing: dict[str, list[tuple[float, int, int]]] = {}
    for t, who, code, name, _inc in obs.events:
        routing.setdefault(name, []).append((t, who, code))
        if code != _FAILED and code != _SUSPECTED:
            continue
        by_member.setdefault(name, []).append((t, who, code))
        victim = name_idx.get(name)
        if victim is None:
            continue
        if _unresponsive_within(obs, victim, t - _STALE_GRACE, t):
            continue
        kind = _latest_fault(obs.fault_log.get(victim), t)
        if code == _FAILED:
            false_failures += 1
            ff_by[kind] = ff_by.get(kind, 0) + 1
            okind = _latest_fault(obs.fault_log.get(who), t)
            ff_obs[okind] = ff_obs.get(okind, 0) + 1
        else:
            false_suspicions += 1
            fs_by[kind] = fs_by.get(kind, 0) + 1

    def leaving(i: int) -> bool:
        return any(end is None for _s, end, _w in obs.down_log.get(i, ()))

    running = [i for i, st in enumerate(obs.final_state) if st == _RUNNING and not leaving(i)]
    faulted = {i for i, log in obs.fault_log.items() if log} | {
        i for i, log in obs.down_log.items() if log
    }
    healthy = [i for i in running if i not in faulted]
    crashes = [c for c in obs.crashes if c.kind not in ONE_WAY_KINDS]
    main = _detect(obs, crashes, by_member, running, per_observer_start=True)
    first_suspect, each_failed, all_failed, dissemination, informed, detected = main
    detection_by_kind: dict[str, dict[str, Any]] = {}
    kind_samples: dict[str, list[float]] = {}
    for kind in sorted({c.kind for c in obs.crashes}):
        outages = [c for c in obs.crashes if c.kind == kind]
        if kind in ONE_WAY_KINDS:
            got = _detect(obs, outages, by_member, healthy, per_observer_start=False)
        else:
            got = _detect(obs, outages, by_member, running, per_observer_start=True)
        kind_samples[f"each_failed:{kind}"] = got[1]
        kind_samples[f"all_failed:{kind}"] = got[2]
        detection_by_kind[kind] = {
            "count": got[5],
            "crashes": len(outages),
            "first_suspect_s": summary(got[0]),
            "all_failed_s": summary(got[2]),
            "each_failed_s": summary(got[1]),
        }
    declarations = _declarations(obs, by_member, routing, healthy)

    def healthy_pairs(kind: int) -> int:
        return sum(
            1
            for _t, who, code, name, _inc in obs.events
            if code == kind
            and who not in faulted
            and name_idx.get(name) is not None
            and name_idx[name] not in faulted
        )

    healthy_ff = healthy_pairs(_FAILED)

    # Load over each node's running time in the window.
    total_msgs = total_bytes = 0
    total_alive = 0.0
    max_rate: float | None = None
    for i, (msgs, nbytes, _streams) in enumerate(obs.load):
        down_s = 0.0
        for start, end, _why in obs.down_log.get(i, ()):
            a = max(0.0, start)
            b = duration if end is None else min(duration, end)
            if b > a:
                down_s += b - a
        alive = max(0.0, duration - down_s)
        total_msgs += msgs
        total_bytes += nbytes
        total_alive += alive
        if alive >= min(1.0, duration) and alive > 0:
            rate = msgs / alive
            max_rate = rate if max_rate is None else max(max_rate, rate)
    load: dict[str, float | None] = {
        "msgs_per_node_s": round(total_msgs / total_alive, 3) if total_alive > 0 else None,
        "bytes_per_node_s": round(total_bytes / total_alive, 1) if total_alive > 0 else None,
        "max_msgs_per_node_s": None if max_rate is None else round(max_rate, 3),
    }
    digests = {obs.digests[i] for i in running}
    converged = len(digests) <= 1
    detection: dict[str, Any] = {
        "count": detected,
        "crashes": len(crashes),
        "first_suspect_s": summary(first_suspect),
        "all_failed_s": summary(all_failed),
        "each_failed_s": summary(each_failed),
    }
    return SimResult(
        nodes=s.nodes,
        seed=s.seed,
        virtual_s=duration,
        wall_s=wall_s,
        wall_warmup_s=wall_warmup_s,
        detection=detection,
        false_failures=false_failures,
        false_suspicions=false_suspicions,
        dissemination_s=summary(dissemination),
        load=load,
        converged=converged,
        trace_digest=trace_digest,
        warmup_s=warmup_s,
        warmup_converged=warmup_converged,
        bootstrap_s=bootstrap_s,
        false_failures_by_fault=dict(sorted(ff_by.items())),
        false_suspicions_by_fault=dict(sorted(fs_by.items())),
        false_failures_by_observer_fault=dict(sorted(ff_obs.items())),
        detection_by_kind=detection_by_kind,
        declarations=declarations,
        healthy_false_failures=healthy_ff,
        healthy_held=healthy_pairs(_HELD),
        views_match_truth=obs.view_live,
        faults=faults,
        stats=stats,
        events=obs.events,
        names=obs.names,
        samples={
            "first_suspect": first_suspect,
            "each_failed": each_failed,
            "all_failed": all_failed,
            "dissemination": dissemination,
            **kind_samples,  # each_failed:KIND, all_failed:KIND per kind of outage
        },
        informed=informed,
    )


_Detected = tuple[list[float], list[float], list[float], list[float], list[list[float]], int]


def _detect(
    obs: Observation,
    outages: Sequence[Crash],
    by_member: dict[str, list[tuple[float, int, int]]],
    candidates: Sequence[int],
    *,
    per_observer_start: bool,
) -> _Detected:
    """For each outage: first suspicion, each observer's declaration, the last of them and
    the dissemination time; and how many every observer declared. The observers are the
    `candidates` other than the member (started before the outage, if `per_observer_start`)."""
    first_suspect: list[float] = []
    each_failed: list[float] = []
    all_failed: list[float] = []
    dissemination: list[float] = []
    informed: list[list[float]] = []
    detected = 0
    for c in outages:
        observers = [
            i
            for i in candidates
            if i != c.idx and (not per_observer_start or obs.started[i] - obs.origin <= c.at)
        ]
        suspected_at: float | None = None
        failed: dict[int, float] = {}
        first_failed: float | None = None
        for t, who, code in by_member.get(c.name, ()):
            if not c.at <= t < c.until:
                continue
            if code == _SUSPECTED:
                if suspected_at is None or t < suspected_at:
                    suspected_at = t
            else:
                if who not in failed:
                    failed[who] = t
                if first_failed is None or t < first_failed:
                    first_failed = t
        if suspected_at is not None:
            first_suspect.append(suspected_at - c.at)
        times = [failed[i] - c.at for i in observers if i in failed]
        each_failed.extend(times)
        if observers and len(times) == len(observers):
            detected += 1
            last = max(times)
            all_failed.append(last)
            if first_failed is not None:
                dissemination.append(last + c.at - first_failed)
                informed.append(sorted(t + c.at - first_failed for t in times))
    return first_suspect, each_failed, all_failed, dissemination, informed, detected


def _declarations(
    obs: Observation,
    by_member: dict[str, list[tuple[float, int, int]]],
    routing: dict[str, list[tuple[float, int, int]]],
    healthy: Sequence[int],
) -> dict[str, dict[str, float]]:
    """Per gray fault kind: how often each healthy observer declared each member under it,
    and the share of the fault's time the member was out of its routing."""
    cut_off = {(c.idx, c.kind) for c in obs.crashes if c.kind in ONE_WAY_KINDS}
    hit: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for i, log in obs.fault_log.items():
        for start, end, kind in log:
            if kind in _GRAY_KINDS and (i, kind) not in cut_off:
                window = (start, obs.scenario.duration if end is None else end)
                hit.setdefault(kind, {}).setdefault(i, []).append(window)
    out: dict[str, dict[str, float]] = {}
    for kind, members in sorted(hit.items()):
        counts: list[int] = []
        shares: list[float] = []
        for i, windows in sorted(members.items()):
            per: dict[int, int] = dict.fromkeys(healthy, 0)
            per.pop(i, None)
            for _t, who, code in by_member.get(obs.names[i], ()):
                if code == _FAILED and who in per:
                    per[who] += 1
            counts.extend(per.values())
            for who in per:
                shares.append(_out_share(routing.get(obs.names[i], ()), who, windows))
        out[kind] = {
            "members": len(members),
            "max": max(counts, default=0),
            "mean": round(sum(counts) / len(counts), 4) if counts else 0.0,
            "out_share_mean": round(sum(shares) / len(shares), 4) if shares else 0.0,
            "out_share_min": round(min(shares), 4) if shares else 0.0,
        }
    return out


def _out_share(
    events: Sequence[tuple[float, int, int]], who: int, windows: Sequence[tuple[float, float]]
) -> float:
    """The share of `windows` during which observer `who` had the member out of routing:
    declared failed, or held (a held member is out until released, whatever its state)."""
    dead = held = False
    changes: list[tuple[float, bool]] = []
    for t, observer, code in events:
        if observer != who:
            continue
        if code == _FAILED:
            dead = True
        elif code in (_RECOVERED, _JOINED):
            dead = False
        elif code == _HELD:
            held = True
        elif code == _RELEASED:
            held = False
        else:
            continue
        changes.append((t, dead or held))
    total = out = 0.0
    for a, b in windows:
        total += max(0.0, b - a)
        state, at = False, a
        for t, now_out in changes:
            if t <= a:
                state = now_out
                continue
            if t >= b:
                break
            if state:
                out += t - at
            state, at = now_out, t
        if state:
            out += b - at
    return out / total if total > 0 else 0.0
