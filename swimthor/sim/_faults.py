"""Which members a scenario's faults hit: the seeded choice of targets, and partition sides
named by datacenter or member. A pure function of the scenario and the simulator's fault
generator, so the same seed hits the same members.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from ._scenario import Fault, FaultSpecError

__all__ = ["fault_targets"]

# A partition's two sides (None: everybody not on the first).
Sides = tuple[frozenset[int], frozenset[int] | None]


def fault_targets(
    faults: Sequence[Fault],
    dcs: Sequence[str],
    dc_names: Sequence[str],
    by_name: Mapping[str, int],
    rng: random.Random,
) -> list[tuple[Fault, list[int], Sides | None]]:
    """Each fault with the member indexes it hits, in the order given, and for a partition its
    sides. `dcs[i]` is member i's datacenter. Members are picked in one shuffled order of all
    but member 0, each hit once before any is hit twice (then at random among all, member 0
    last); explicit `nodes` are taken as given. FaultSpecError on an index out of range or a
    side that names no datacenter or member."""
    n = len(dcs)
    used: set[int] = set()
    order = list(range(1, n))
    rng.shuffle(order)
    cursor = 0

    def pick(k: int) -> list[int]:
        nonlocal cursor
        out: list[int] = []
        while len(out) < k:
            if cursor < len(order):
                i = order[cursor]
                cursor += 1
                if i not in used and i not in out:
                    out.append(i)
                continue
            # Everyone was hit once: pick again among all (node 0 last).
            rest = [i for i in range(1, n) if i not in out] or [i for i in range(n) if i not in out]
            if not rest:
                break
            out.append(rng.choice(rest))
        used.update(out)
        return out

    def side_nodes(side: tuple[str, ...]) -> set[int]:
        out: set[int] = set()
        for item in side:
            if item in dc_names:
                out.update(i for i, dc in enumerate(dcs) if dc == item)
            elif item in by_name:
                out.add(by_name[item])
            else:
                raise FaultSpecError(f"partition side {item!r} names no datacenter or node")
        return out

    planned: list[tuple[Fault, list[int], Sides | None]] = []
    for f in faults:
        if f.kind == "partition" and f.sides is not None:
            a = side_nodes(f.sides[0])
            b = side_nodes(f.sides[1])
            planned.append((f, sorted(a | b), (frozenset(a), frozenset(b))))
            continue
        if f.nodes:
            bad = [i for i in f.nodes if not 0 <= i < n]
            if bad:
                raise FaultSpecError(f"node index {bad[0]} out of range")
            targets = list(f.nodes)
            used.update(targets)
        else:
            targets = pick(min(f.count, n))
        if f.kind == "partition":
            planned.append((f, targets, (frozenset(targets), None)))
        else:
            planned.append((f, targets, None))
    return planned
