"""Which members own a key: weighted rendezvous hashing and the routing table.

``RoutingTable`` follows membership events and answers ``owners(key, n, role, dc)``; the ranking
itself is a wire-level contract (``_hrw``, ``docs/routing.md``) that every node computes alike,
and so is the rule that spreads a key's owners over datacenters and zones (``_spread``).
"""

from ._hrw import (
    KEY_PERSON,
    SEED_PERSON,
    compare_draws,
    draw,
    fmix64,
    key_hash,
    member_seed,
    reference_rank,
    score,
)
from ._rendezvous import Rendezvous
from ._spread import (
    PLACEMENT_SPREAD,
    PLACEMENT_TAG,
    ZONE_TAG,
    placement_of,
    reference_spread,
    spread_order,
)
from ._table import (
    DEFAULT_ROLES,
    EpochUnavailable,
    MemberRecord,
    RoutingTable,
)

__all__ = [
    "DEFAULT_ROLES",
    "KEY_PERSON",
    "PLACEMENT_SPREAD",
    "PLACEMENT_TAG",
    "SEED_PERSON",
    "ZONE_TAG",
    "EpochUnavailable",
    "MemberRecord",
    "Rendezvous",
    "RoutingTable",
    "compare_draws",
    "draw",
    "fmix64",
    "key_hash",
    "member_seed",
    "placement_of",
    "reference_rank",
    "reference_spread",
    "score",
    "spread_order",
]
