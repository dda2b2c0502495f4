"""What the SWIM core counts, and how it reports what it refuses.

`MembershipStats` is the core's counters: packets and bytes, pings, acks, ping-reqs and nacks,
suspicions, confirmations, refutations and declared failures, push-pulls, and every packet
refused (bad seal, replay, stale, malformed, implausible incarnation). They are published by
name (`status()["stats"]`, the metrics), so the names and their order are fixed here, once.

At run time the counters are a plain dict with exactly these keys: an increment on the hot
path (`stats["packets_in"] += 1`) stays one dict lookup, and the TypedDict lets mypy refuse a
name that is not one of them.

`Rejections` rate-limits the reports of refused packets: each reason becomes a `Rejected`
event at most every `REJECTED_EVERY` seconds, with the count since the last report.
"""

from __future__ import annotations

from typing import Literal, TypedDict, cast

from ._events import Rejected
from ._member import Addr


class MembershipStats(TypedDict):
    """The core's counters, in the order they are published."""

    packets_in: int
    packets_out: int
    bytes_in: int
    bytes_out: int
    messages_in: int
    rejected_seal: int
    rejected_replay: int
    rejected_stale: int
    rejected_decode: int
    deaths_doubted: int
    rejected_incarnation: int
    unknown_messages: int
    misdirected: int
    pings_sent: int
    acks_received: int
    ping_reqs_sent: int
    nacks_received: int
    probes_failed: int
    suspicions: int
    confirmations: int
    refutations: int
    failures_declared: int
    push_pulls: int
    push_pull_failures: int
    queries: int
    conflicts: int
    suspect_checks: int
    stream_rejected: int
    repair_syncs: int
    final_checks: int
    reconnects: int
    isolations: int  # times we heard again after hearing nobody (see `isolated`)
    declared_alone: int  # failures we declared while isolated (kept to ourselves)
    alives_not_refuting: int  # newer alives of suspects that answered no suspicion
    silent_probes: int  # failed probes none of whose relays answered: no suspicion raised
    late_answers: int  # acks and nacks to our probes that came after they timed out
    members_held: int  # members we held out for flapping (see `_damping`)


# The counter names, in declaration (and publication) order.
STAT_NAMES: tuple[str, ...] = tuple(MembershipStats.__annotations__)


def new_stats() -> MembershipStats:
    """Every counter at zero."""
    return cast(MembershipStats, dict.fromkeys(STAT_NAMES, 0))


SealCounter = Literal["rejected_seal", "rejected_replay", "rejected_stale"]

# A refused envelope's counter, by `SealError.kind` (every other kind: rejected_seal), and
# the reason it is reported under (the kind itself, but "unsealed" for a plaintext packet).
_SEAL_COUNTERS: dict[str, SealCounter] = {"replay": "rejected_replay", "stale": "rejected_stale"}
_SEAL_REASONS = {"seal": "unsealed"}


def seal_refusal(kind: str) -> tuple[SealCounter, str]:
    """The counter and the reported reason of an envelope refused with `SealError.kind`."""
    return _SEAL_COUNTERS.get(kind, "rejected_seal"), _SEAL_REASONS.get(kind, kind)


# Refused packets are reported (a Rejected event) at most this often per reason.
REJECTED_EVERY = 10.0


class Rejections:
    """Refused packets not yet reported, by reason, and when each reason was last reported."""

    __slots__ = ("_said", "_unreported")

    def __init__(self) -> None:
        # reason -> (count, last address, last detail)
        self._unreported: dict[str, tuple[int, Addr | None, str]] = {}
        self._said: dict[str, float] = {}

    def note(self, reason: str, addr: Addr | None, detail: str, now: float) -> Rejected | None:
        """Count a refused packet; the `Rejected` event to report, at most every
        REJECTED_EVERY seconds per reason (with the count since the last report)."""
        count = self._unreported.get(reason, (0, None, ""))[0] + 1
        self._unreported[reason] = (count, addr, detail)
        said = self._said.get(reason)
        if said is None or now - said >= REJECTED_EVERY:
            self._said[reason] = now
            del self._unreported[reason]
            return Rejected(reason, count, addr, detail[:200])
        return None
