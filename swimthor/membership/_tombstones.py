"""Forgetting the dead: members failed or left for `tombstone_reap_time` are dropped, with
everything kept about them (their view summaries, lone verdicts, flap penalties), and the
queues that grow with the member table are trimmed to it. A step of the core, every
`reap_interval`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import MembershipConfig

if TYPE_CHECKING:
    from ._core import Membership


def reap_interval(config: MembershipConfig) -> float:
    """Tombstones are forgotten within a tenth of their lifetime (at most a minute) late."""
    return max(config.probe_interval, min(config.tombstone_reap_time / 10, 60.0))


def reap(core: Membership, now: float) -> None:
    horizon = core.config.tombstone_reap_time
    gone = [
        n
        for n, m in core._members.items()
        if n != core.name and not m.state.is_live and now - m.since > horizon
    ]
    for n in gone:
        del core._members[n]
        core._alone.discard(n)
        core._damper.forget(n)
        core._summaries.pop(n, None)
        core._live.forget(n)
    if gone:
        core._names = list(core._members)
    # Summaries of members no longer known are dropped with them.
    for n in [n for n in core._summaries if n not in core._members]:
        del core._summaries[n]
    core._broadcasts.prune(max(64, 8 * len(core._members)))
    core._damper.prune(now)
