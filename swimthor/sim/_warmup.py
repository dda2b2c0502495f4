"""The warm-up: every member starts knowing every other, as after a full-state sync (the
cores' own push-pull merge, without the O(N^2) packets of a real formation, which the
`bootstrap` scenario measures). Above `SHARED_RECORDS_ABOVE` members (or when the scenario
asks), one view shared by every core (`membership.SharedView`) instead of a copy each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..membership import Member, SharedView, State

if TYPE_CHECKING:
    from ._engine import Simulator


def know_everyone(sim: Simulator) -> None:
    now = sim.now
    everyone = [
        Member(nd.name, nd.addr, nd.dc, (), 1.0, {}, 0, State.ALIVE, 0.0) for nd in sim.nodes
    ]
    if not sim.scenario.shares_records:
        for node in sim.nodes:
            if node.core is not None:
                node.core.merge_full_state(everyone, now)
                sim._flush(node)
        return
    # The cores end up as the merge leaves them, without its MemberJoined events: the counts
    # those would have moved are set here.
    view = SharedView.of(everyone, now)
    for node in sim.nodes:
        if node.core is not None:
            node.core.adopt_view(view, now)
            node.live_count = len(everyone)
            sim._flush(node)
    sim._n_full = len(sim.nodes)
    sim._full_at = now
