"""What a simulated run is: the cluster, the network, the faults, the seed.

`Scenario` and `Fault` are plain frozen records; `parse_fault` reads the `--fault` mini
language of `swimthor simulate`, `parse_seconds` its times (``1.5``, ``1.5s``, ``300ms``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import MembershipConfig, profile

__all__ = [
    "FAULT_KINDS",
    "ONE_WAY_KINDS",
    "Fault",
    "FaultSpecError",
    "Scenario",
    "membership_config",
    "parse_fault",
    "parse_override",
    "parse_seconds",
]

FAULT_KINDS = (
    "crash",
    "pause",
    "slow",
    "lossy",
    "deaf",
    "mute",
    "flipflop",
    "partition",
    "restart",
    "leave",
)
# Kinds that need a duration (`@T+D`); the others take none.
_NEEDS_DURATION = ("pause", "slow", "lossy", "deaf", "mute", "flipflop", "partition", "restart")
# One-way faults of a member: what it loses of its inbound (deaf) or outbound (mute) traffic.
ONE_WAY_KINDS = ("deaf", "mute")


# Above this many members the simulator shares one view between the cores after warm-up
# (`Scenario.shared_records`): the suite's cells up to 1000 members keep their traces.
SHARED_RECORDS_ABOVE = 1000


class FaultSpecError(ValueError):
    """A `--fault` spec (or a Fault built by hand) is malformed; the message says why."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault injected into a run. Times are seconds after the scenario's time 0.

    kind      crash | pause | slow | lossy | deaf | mute | flipflop | partition | restart | leave
    at        when it starts
    count     how many members it hits, picked by the seed (never node 0 while others are
              left, never one member twice across faults while others are left)
    duration  how long it lasts (pause, slow, lossy, flipflop, partition; restart: downtime)
    loss      lossy: the extra loss on the member's links, both directions; deaf: the share
              of its inbound datagrams lost (1: it hears nothing, TCP toward it and from it
              fails too); mute: likewise for what it sends
    period    flipflop: one full cycle (dropping ingress for the first half of each)
    sides     partition: two groups, each a tuple of datacenter names ("dc2") or node names
              ("n7"); an empty second side means "everybody else"
    oneway    partition: only traffic from sides[0] to sides[1] is cut
    new_addr  restart: the member comes back at a new address
    nodes     explicit targets by node index (overrides count and the seeded pick)
    """

    kind: str
    at: float
    count: int = 1
    duration: float | None = None
    loss: float = 0.0
    period: float = 0.0
    sides: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    oneway: bool = False
    new_addr: bool = False
    nodes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise FaultSpecError(f"unknown fault kind {self.kind!r}")
        if not math.isfinite(self.at) or self.at < 0:
            raise FaultSpecError("start time must be >= 0")
        if self.count < 1:
            raise FaultSpecError("count must be >= 1")
        if self.kind in _NEEDS_DURATION:
            if self.duration is None:
                raise FaultSpecError(f"{self.kind} needs a duration (@T+D)")
            if not math.isfinite(self.duration) or self.duration <= 0:
                raise FaultSpecError("duration must be > 0")
        elif self.duration is not None:
            raise FaultSpecError(f"{self.kind} takes no duration")
        if self.kind in ONE_WAY_KINDS and self.loss == 0.0:
            object.__setattr__(self, "loss", 1.0)  # deaf or mute: all of it, unless told
        if self.kind in ("lossy", *ONE_WAY_KINDS) and not 0.0 < self.loss <= 1.0:
            raise FaultSpecError(f"{self.kind} needs a loss fraction in (0, 1]")
        if self.kind == "flipflop" and not (math.isfinite(self.period) and self.period > 0):
            raise FaultSpecError("flipflop needs a period > 0")

    @property
    def end(self) -> float | None:
        return None if self.duration is None else self.at + self.duration


@dataclass(frozen=True, slots=True)
class Scenario:
    """A whole run. Latencies are round trips in seconds (one way is half, plus jitter).

    jitter       one-way jitter as a fraction of the one-way latency (uniform +-), unless
                 `jitter_s` gives it in seconds
    loss         uniform loss per datagram (the "good" state loss when bursts are on)
    burst_*      Gilbert-Elliott bursty loss on each node's uplink: per datagram, enter the
                 bad state with `burst_enter`, leave it with `burst_exit`; `burst_loss` is
                 the loss while bad. Off while `burst_enter` is 0.
    dup          probability that a datagram is delivered twice
    reorder      probability that a datagram gets an extra delay of up to one round trip
    config       the MembershipConfig (default: the named `profile`), then `overrides`
    lifeguard    False: plain SWIM (no health multiplier, fixed suspicion timeout, no checks)
    warmup_max   the cluster is formed before time 0; warm-up ends once every member sees
                 every other alive, plus `warmup_settle`, or after `warmup_max` seconds
    bootstrap    no warm-up: all members join node 0 within the first second of the run and
                 the result reports how long until every member sees all of them alive
    slow_delay   (lo, hi) seconds a slow node handles each inbound packet late
    trace        keep a sha256 over every delivery and event (`trace_digest`)
    sealed       every member seals its packets and streams with one cluster keyring (as a
                 cluster without `--insecure` does), its nonces from the seed
    shared_records  the warm-up gives every core one shared view of the cluster (a record
                 copied by a core only when it changes for it) instead of a copy each: the
                 same run, in a fraction of the memory (`membership.SharedView`). None: for
                 clusters above SHARED_RECORDS_ABOVE members
    """

    nodes: int = 10
    dcs: int = 1
    rtt_intra: float = 0.002
    rtt_inter: float = 0.040
    jitter: float = 0.1
    jitter_s: float | None = None
    loss: float = 0.0
    burst_enter: float = 0.0
    burst_exit: float = 0.25
    burst_loss: float = 0.5
    dup: float = 0.0
    reorder: float = 0.0
    profile: str = "lan"
    config: MembershipConfig | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    lifeguard: bool = True
    duration: float = 60.0
    seed: int = 1
    faults: tuple[Fault, ...] = ()
    warmup_max: float = 60.0
    warmup_settle: float = 2.0
    bootstrap: bool = False
    slow_delay: tuple[float, float] = (0.5, 2.5)
    trace: bool = True
    sealed: bool = False
    shared_records: bool | None = None

    @property
    def shares_records(self) -> bool:
        if self.shared_records is None:
            return self.nodes > SHARED_RECORDS_ABOVE
        return self.shared_records

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("nodes must be >= 1")
        if not 1 <= self.dcs <= self.nodes:
            raise ValueError("dcs must be between 1 and the number of nodes")
        for name in ("rtt_intra", "rtt_inter", "jitter", "duration", "warmup_max"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a number >= 0")
        for name in ("loss", "burst_enter", "burst_exit", "burst_loss", "dup", "reorder"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a fraction from 0 to 1")
        lo, hi = self.slow_delay
        if not 0 <= lo <= hi:
            raise ValueError("slow_delay must be (lo, hi) with 0 <= lo <= hi")
        membership_config(self)  # fail early on a bad profile or override

    @property
    def dc_names(self) -> list[str]:
        return [f"dc{i + 1}" for i in range(self.dcs)]


def membership_config(s: Scenario) -> MembershipConfig:
    """The cores' config: profile (or `config`), then `overrides`, then Lifeguard off."""
    cfg = s.config if s.config is not None else profile(s.profile)
    if s.overrides:
        cfg = dataclasses.replace(cfg, **dict(s.overrides))
    if not s.lifeguard:
        cfg = dataclasses.replace(
            cfg,
            awareness_max_multiplier=1,
            suspicion_max_timeout_mult=1.0,
            suspect_check=False,
            suspect_final_check=False,
        )
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` for a MembershipConfig field, the value parsed by the field's type."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise ValueError(f"bad --set {text!r}: expected key=value")
    defaults = MembershipConfig()
    names = [f.name for f in dataclasses.fields(MembershipConfig)]
    if key not in names:
        raise ValueError(f"bad --set {text!r}: unknown setting (known: {', '.join(names)})")
    default = getattr(defaults, key)
    value: Any
    if isinstance(default, bool):
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            value = True
        elif low in ("0", "false", "no", "off"):
            value = False
        else:
            raise ValueError(f"bad --set {text!r}: expected true or false")
    elif isinstance(default, int):
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"bad --set {text!r}: expected a whole number") from None
    else:
        try:
            value = parse_seconds(raw) if raw.endswith("s") else float(raw)
        except ValueError:
            raise ValueError(f"bad --set {text!r}: expected a number") from None
        if not math.isfinite(value):
            raise ValueError(f"bad --set {text!r}: expected a finite number")
    return key, value


def parse_seconds(text: str) -> float:
    """``2``, ``2.5s``, ``300ms``, ``1m`` to seconds; ValueError if it is not one of those."""
    t = text.strip().lower()
    scale = 1.0
    if t.endswith("ms"):
        t, scale = t[:-2], 0.001
    elif t.endswith("us"):
        t, scale = t[:-2], 1e-6
    elif t.endswith("s"):
        t = t[:-1]
    elif t.endswith("m"):
        t, scale = t[:-1], 60.0
    try:
        value = float(t) * scale
    except ValueError:
        raise ValueError(f"bad time {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"bad time {text!r}")
    return value


def _fraction(text: str) -> float:
    t = text.strip()
    pct = t.endswith("%")
    try:
        value = float(t[:-1] if pct else t) / (100.0 if pct else 1.0)
    except ValueError:
        raise FaultSpecError(f"bad fraction {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise FaultSpecError(f"fraction {text!r} must be in (0, 1]")
    return value


def _side(text: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise FaultSpecError("empty partition side")
    for s in items:
        if not (s[:2] in ("dc",) or s[:1] == "n") or not s.isprintable():
            raise FaultSpecError(f"bad partition side {s!r}: expected dcN or nK names")
    return items


def parse_fault(spec: str) -> Fault:
    """Read one `--fault` spec; FaultSpecError (a ValueError) with the reason otherwise.

    crash:K@T  pause:K@T+D  slow:K@T+D  lossy:K@T+D/P  deaf:K@T+D[/P]  mute:K@T+D[/P]
    flipflop:K@T+D/PERIOD
    partition:dc1|dc2@T+D  partition:dc1>dc2@T+D (one way)  partition:K@T+D (K members cut
    off from the rest)  restart:K@T+D[/newaddr]  leave:K@T
    """
    kind, sep, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if not sep:
        raise FaultSpecError("expected KIND:TARGET@TIME")
    if kind not in FAULT_KINDS:
        raise FaultSpecError(f"unknown kind {kind!r} (choose from {', '.join(FAULT_KINDS)})")
    target, sep, when = rest.partition("@")
    if not sep or not target.strip() or not when.strip():
        raise FaultSpecError("expected KIND:TARGET@TIME")
    when, slash, param = when.partition("/")
    start_text, plus, dur_text = when.partition("+")
    try:
        at = parse_seconds(start_text)
        duration = parse_seconds(dur_text) if plus else None
    except ValueError as e:
        raise FaultSpecError(str(e)) from None
    if plus and not dur_text.strip():
        raise FaultSpecError("empty duration after '+'")
    kw: dict[str, Any] = {}
    if kind == "lossy":
        if not slash:
            raise FaultSpecError("lossy needs /P, the loss fraction")
        kw["loss"] = _fraction(param)
    elif kind in ONE_WAY_KINDS:
        kw["loss"] = _fraction(param) if slash else 1.0
    elif kind == "flipflop":
        if not slash:
            raise FaultSpecError("flipflop needs /PERIOD")
        try:
            kw["period"] = parse_seconds(param)
        except ValueError as e:
            raise FaultSpecError(str(e)) from None
    elif kind == "restart" and slash:
        if param.strip().lower() not in ("newaddr", "new"):
            raise FaultSpecError(f"restart takes /newaddr, not /{param}")
        kw["new_addr"] = True
    elif slash:
        raise FaultSpecError(f"{kind} takes no /parameter")
    target = target.strip()
    count = 1
    if kind == "partition" and not target.isdigit():
        oneway = ">" in target
        a, sep2, b = target.partition(">" if oneway else "|")
        if not sep2:
            raise FaultSpecError("partition needs SIDE|SIDE or SIDE>SIDE (or a count)")
        kw["sides"] = (_side(a), _side(b))
        kw["oneway"] = oneway
    else:
        if not target.isdigit():
            raise FaultSpecError(f"bad count {target!r}: expected a whole number")
        count = int(target)
    return Fault(kind=kind, at=at, count=count, duration=duration, **kw)
