"""One view of a whole cluster, held by many cores at once: the simulator's warm-up at scale.

The simulator starts every simulated member knowing every other (`Membership.merge_full_state`,
what a push-pull from a peer would bring). With N members that is N views of N records: at
10,000 members, 10^8 records, about 76 GB. But right after warm-up every view is the same, and
most records stay the same in most views for the whole run: only the members a core hears
from, or hears news about, change in its view.

`SharedView` holds that one view once: its records as `SharedMember` (read-only), the live
set's ring and digest terms. `adopt` gives it to a new core: the core's table refers to the
shared records (a dict of pointers), and a core copies a record the first time it changes
anything about that member (`Membership._own`). The state a core is left in is the state
`merge_full_state` leaves: the same records in the same order, the same live set, digest,
probe order and view summary; only the N MemberJoined events of the merge are not emitted
(the simulator, which asked for the view, knows everyone joined). A test runs scenarios both
ways and compares everything after warm-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from . import _probes
from ._live_set import digest_part, ring_entry
from ._member import Member, SharedMember, State

if TYPE_CHECKING:
    from ._core import Membership

__all__ = ["SharedView", "adopt"]


@dataclass(frozen=True, slots=True)
class SharedView:
    """Every member alive at incarnation 0, as a merge of `members` at `now` records them."""

    now: float
    order: tuple[str, ...]
    records: dict[str, SharedMember]
    ring: tuple[tuple[bytes, str], ...]
    parts: dict[str, int]
    acc: int
    index: dict[str, int]  # name -> its place in `order`

    @classmethod
    def of(cls, members: Sequence[Member], now: float) -> SharedView:
        records: dict[str, SharedMember] = {}
        for m in members:
            if m.state != State.ALIVE or m.name in records:
                raise ValueError("a shared view is of distinct members, all alive")
            # What `_apply_alive` records for a member it did not know, from a push-pull.
            fresh = replace(m, tags=dict(m.tags), since=now, health=0, last_heard=now, held="")
            records[m.name] = SharedMember.of(fresh)
        parts = {name: digest_part(name, r.incarnation) for name, r in records.items()}
        acc = 0
        for part in parts.values():
            acc ^= part
        ring = tuple(sorted(ring_entry(name) for name in records))
        order = tuple(records)
        index = {name: i for i, name in enumerate(order)}
        return cls(now, order, records, ring, parts, acc, index)


def adopt(core: Membership, view: SharedView, now: float) -> None:
    """Give a new core (it knows only itself, at incarnation 0, under a name in the view) the
    shared view: see the module's docstring."""
    me = core._members[core.name]
    if len(core._members) != 1 or now != view.now or core.name not in view.records:
        raise ValueError("a shared view is for a new core of the view, at the view's time")
    if me.incarnation != view.records[core.name].incarnation:
        raise ValueError("our own record differs from the view's")
    table: dict[str, Member] = {core.name: me}
    table.update(view.records)
    table[core.name] = me  # ours stays ours, first, as in a merge
    core._members = table
    i = view.index[core.name]
    core._names = [core.name, *view.order[:i], *view.order[i + 1 :]]
    core._live.load(view.ring, view.parts, view.acc)
    if core.config.probe_schedule != "shared":  # the shared one probes along the ring
        for name in core._names[1:]:
            _probes.add_to_probe_order(core, name)
    core._update_digest()
