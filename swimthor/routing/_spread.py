"""Owners spread over failure domains: datacenters first, then zones (contract v2).

Plain rendezvous ranking (``_hrw``) picks a key's R owners with no regard for where they are:
with two datacenters of three members each, about a third of the keys have both owners in one
of them, and losing that datacenter loses those keys. The spread rule walks the same ranking
and picks, at each step, the best-ranked remaining member that is

1. in a datacenter no owner is in yet, while there is one;
2. then in a zone no owner is in yet (a zone is a member's ``zone`` tag, within its
   datacenter: a rack, a host), while there is one;
3. then in the datacenter with the fewest owners so far;

so the picks are ordered by ``(datacenter used, owners in the zone, owners in the datacenter,
rank)``. What this keeps of rendezvous hashing, shown in ``tests/test_routing_spread.py``:

* every node with the same view picks the same owners (the rule reads only the ranking and
  each member's datacenter and zone);
* the first owner is the best-ranked member, so owners' shares are still ``w / W``;
* a member that is not among a key's owners can come or go without changing them, so a
  leaver's keys go to members that take its place and nothing else moves;
* with one datacenter and no zones it is the plain ranking, bit for bit.

Which rule a cluster uses is decided by its members, not by configuration: every member that
knows the spread rule says so in its ``placement`` tag, and a set of candidates uses it only when
every one of them does. A cluster that mixes nodes from before the rule and after it keeps the
plain ranking everywhere until the last old node is gone; then it moves, in one epoch, like
any other change of the owner set (``docs/routing.md``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from ._hrw import reference_rank

__all__ = [
    "PLACEMENT_SPREAD",
    "PLACEMENT_TAG",
    "ZONE_TAG",
    "placement_of",
    "reference_spread",
    "spread_order",
    "spread_prefix",
]

# A member's zone (a failure domain below its datacenter: a rack, a host) is its `zone` tag.
ZONE_TAG = "zone"
# The placement rules a member knows, as the highest rule's number: "2" for the spread rule.
PLACEMENT_TAG = "placement"
PLACEMENT_SPREAD = 2


def placement_of(tags: Mapping[str, str]) -> int:
    """The placement rule a member's tags say it knows: 1 (plain ranking) unless it says more."""
    text = tags.get(PLACEMENT_TAG, "")
    return int(text) if text.isdigit() and len(text) <= 3 else 1


def spread_order(domains: Sequence[tuple[str, str]], n: int) -> list[int]:
    """The spread rule over candidates already in rank order, best first: ``domains[i]`` is the
    ``(datacenter, zone)`` of the i-th; returns the positions of the ``n`` owners, in the
    order they are picked (the first owner first)."""
    found = spread_prefix(domains, n, None)
    assert found is not None
    return found


def spread_prefix(
    domains: Sequence[tuple[str, str]], n: int, every: Collection[tuple[str, str]] | None
) -> list[int] | None:
    """`spread_order` over the best few (at least ``n``) candidates of a larger ranked set
    whose domains are ``every`` (None: ``domains`` is the whole set). The answer is the whole
    set's when every pick has the best key any member could have had at that step, for a
    member outside the prefix ranks below all of it and wins only with a strictly better key;
    otherwise None (the caller takes a longer prefix)."""
    dc_count: dict[str, int] = {}
    zone_count: dict[tuple[str, str], int] = {}
    all_dcs = {dc for dc, _ in (domains if every is None else every)}
    dcs_free = len(all_dcs)
    taken = [False] * len(domains)
    out: list[int] = []
    for _ in range(min(n, len(domains))):
        best = -1
        best_key: tuple[int, int, int] = (0, 0, 0)
        for i, dom in enumerate(domains):
            if taken[i]:
                continue
            in_dc = dc_count.get(dom[0], 0)
            k = (1 if in_dc and dcs_free else 0, zone_count.get(dom, 0), in_dc)
            if best < 0 or k < best_key:
                best, best_key = i, k
                if k == (0, 0, 0):
                    break  # nothing can beat an unused datacenter's best
        if every is not None and best_key != (0, 0, 0):
            if dcs_free:
                return None  # a datacenter without an owner has members further down
            bound = min((0, zone_count.get(d, 0), dc_count.get(d[0], 0)) for d in every)
            if best_key != bound:
                return None
        taken[best] = True
        out.append(best)
        dom = domains[best]
        if not dc_count.get(dom[0]):
            dcs_free -= 1
        dc_count[dom[0]] = dc_count.get(dom[0], 0) + 1
        zone_count[dom] = zone_count.get(dom, 0) + 1
    return out


def reference_spread(key: str, members: Iterable[tuple[str, float, str, str]], n: int) -> list[str]:
    """The spread rule, slowly, for tests and documentation: ``members`` as ``(name, weight,
    datacenter, zone)``; the names of the ``n`` owners of ``key``, first owner first."""
    by_name = {name: (dc, zone) for name, _, dc, zone in members}
    weights = [(name, w) for name, w, _, _ in members]
    ranked = reference_rank(key, weights)
    return [ranked[i] for i in spread_order([by_name[r] for r in ranked], n)]
