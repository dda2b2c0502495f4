"""Routing benchmark: swimthor's rendezvous routing beside kinship's and a hash ring.

For N = 10, 100, 1000 and 10,000 members (equal weights, one role), in one run:

  lookups/s   top-2 owners of distinct random keys, one call at a time on one core:
              swimthor `RoutingTable.owners(key, 2)` (cache misses: the headline),
              the same over a working set of 1,000 keys (cache hits), kinship 0.4's
              `kinship.rendezvous.owners(key, names, 2)` (pure Python, BLAKE2b per member),
              and a ring with 100 virtual nodes per member (ringpop's choice; bisect).
  balance     max/mean keys per member over 1,000,000 keys (owner only), beside the sampling
              floor: the same statistic for an ideal uniform assignment (numpy multinomial).
  moved       keys whose owner changes when one member leaves or one joins, over the ideal
              (K/N for a leave, K/(N+1) for a join), averaged over a few leavers and joiners,
              each a full recomputation; plus "excess": moved keys the leaver did not own,
              moved keys not sent to their former second owner, or moved to anyone but the
              joiner (0 for minimal disruption).

swimthor's balance and moved figures come from a vectorized batch version of the contract,
cross-checked key by key against `RoutingTable.owners` first. kinship computes one BLAKE2b per
member per key in Python, so its balance and moved figures use a smaller key sample (shown)
and stop at N = 100. A two-level prototype (sqrt(N) groups chosen by member name, the key
ranks the groups, then the members of the best group) shows where a sublinear variant would
overtake the flat ranking and what it costs in balance; it is not part of swimthor.

    python bench/routing.py                # the full run, ~4 minutes on an idle core
    python bench/routing.py --quick        # small samples, for trying things out

Results: a table on stdout and bench/results/routing.json.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import hashlib
import importlib
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from swimthor.membership import Member, MemberJoined, State  # noqa: E402
from swimthor.routing import Rendezvous, RoutingTable, key_hash, member_seed  # noqa: E402

# kinship is a bench extra: typed the same whether it is installed or not.
kinship_rendezvous: Any
try:
    kinship_rendezvous = importlib.import_module("kinship.rendezvous")
except ImportError:  # pragma: no cover
    kinship_rendezvous = None

U64 = np.uint64
_S33, _C1, _C2, _LOW11 = U64(33), U64(0xFF51AFD7ED558CCD), U64(0xC4CEB9FE1A85EC53), U64(0x7FF)


# ---- the three (and a half) routings -------------------------------------------------------


def names_for(n: int) -> list[str]:
    return [f"node-{i:05d}" for i in range(n)]


def table_for(names: Sequence[str]) -> RoutingTable:
    table = RoutingTable()
    for i, name in enumerate(names):
        m = Member(
            name, ("10.0.0.1", 5060 + i % 50000), "dc1", ("sip",), 1.0, {}, 1, State.ALIVE, 0.0
        )
        table.handle_event(MemberJoined(m))
    return table


class Ring:
    """Consistent hashing with `vnodes` points per member; owners are the first distinct
    members clockwise from the key's hash (the same key hash as swimthor's)."""

    def __init__(
        self, names: Sequence[str], vnodes: int = 100, weights: Sequence[float] | None = None
    ) -> None:
        self.names = list(names)
        points = []
        mean_w = statistics.mean(weights) if weights else 1.0
        for i, name in enumerate(names):
            count = vnodes if weights is None else round(vnodes * weights[i] / mean_w)
            for r in range(count):
                digest = hashlib.blake2b(
                    f"{name}#{r}".encode(), digest_size=8, person=b"bench-ring-v1"
                ).digest()
                points.append((int.from_bytes(digest, "big"), i))
        points.sort()
        self.hashes = [p[0] for p in points]
        self.owner = [p[1] for p in points]
        self.np_hashes = np.array(self.hashes, dtype=np.uint64)
        self.np_owner = np.array(self.owner, dtype=np.int64)

    def owners_of_hash(self, h: int, n: int) -> list[int]:
        hashes, owner = self.hashes, self.owner
        size = len(hashes)
        i = bisect.bisect_right(hashes, h)
        out: list[int] = []
        for step in range(size):
            m = owner[(i + step) % size]
            if m not in out:
                out.append(m)
                if len(out) == n:
                    break
        return out

    def owners(self, key: str, n: int) -> list[str]:
        return [self.names[i] for i in self.owners_of_hash(key_hash(key), n)]

    def batch_owner(self, hashes: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.np_hashes, hashes, side="right") % len(self.np_hashes)
        return self.np_owner[idx]

    def without(self, member: int) -> Ring:
        other = Ring.__new__(Ring)
        keep = [j for j, m in enumerate(self.owner) if m != member]
        other.names = self.names
        other.hashes = [self.hashes[j] for j in keep]
        other.owner = [self.owner[j] for j in keep]
        other.np_hashes = self.np_hashes[keep]
        other.np_owner = self.np_owner[keep]
        return other


class TwoLevel:
    """Bench-only prototype of a sublinear ("skeleton") rendezvous: members fall into `groups`
    fixed groups by their seed; a key ranks the non-empty groups by an unweighted rendezvous
    over group ids, then the members of a group by swimthor's contract. The ranking is the
    members of the best group, then those of the next, and so on, so a leave moves only the
    leaver's keys to their second owner and a join moves keys only to the joiner. The price is
    balance: every non-empty group gets the same share, however many members it has."""

    def __init__(self, names: Sequence[str], groups: int) -> None:
        self.names = list(names)
        by_group: dict[int, list[int]] = {}
        for i, name in enumerate(names):
            by_group.setdefault(member_seed(name) % groups, []).append(i)
        # Groups and the members of each in name order (the contract's tie order).
        gnames = sorted(f"group-{g}" for g in by_group)
        self.members = [sorted(by_group[int(g[6:])], key=lambda i: names[i]) for g in gnames]
        self.group_seeds = np.array([member_seed(g) for g in gnames], dtype=np.uint64)
        self.member_seeds = [
            np.array([member_seed(names[i]) for i in ms], dtype=np.uint64) for ms in self.members
        ]
        self.group_rz = Rendezvous(gnames, [1.0] * len(gnames))
        self.member_rz = [
            Rendezvous([names[i] for i in ms], [1.0] * len(ms)) for ms in self.members
        ]

    def owners_of_hash(self, h: int, n: int) -> list[int]:
        g = self.group_rz.top(h, 1)[0]
        out = [self.members[g][p] for p in self.member_rz[g].top(h, n)]
        if len(out) < n:  # a small group: go on in the next groups
            for g in self.group_rz.top(h, len(self.members))[1:]:
                out.extend(self.members[g][p] for p in self.member_rz[g].top(h, n - len(out)))
                if len(out) == n:
                    break
        return out

    def owners(self, key: str, n: int) -> list[str]:
        return [self.names[i] for i in self.owners_of_hash(key_hash(key), n)]

    def batch_owner(self, hashes: np.ndarray) -> np.ndarray:
        group_of_key, _ = batch_top(hashes, self.group_seeds, second=False)
        out = np.empty(len(hashes), dtype=np.int64)
        for j, ms in enumerate(self.members):
            sel = np.flatnonzero(group_of_key == j)
            if len(sel):
                top, _ = batch_top(hashes[sel], self.member_seeds[j], second=False)
                out[sel] = np.array(ms)[top]
        return out


# ---- batch scoring for balance and movement ------------------------------------------------


def batch_top(
    hashes: np.ndarray, seeds: np.ndarray, second: bool = True, pairs: int = 1 << 21
) -> tuple[np.ndarray, np.ndarray | None]:
    """Best (and second) position per key for members of equal weight whose `seeds` are in
    name order: the contract's x | 0x7ff, argmax (ties: lowest position, i.e. name)."""
    k, n = len(hashes), len(seeds)
    best = np.empty(k, dtype=np.int64)
    nxt = np.empty(k, dtype=np.int64) if second else None
    rows = max(1, pairs // max(n, 1))
    for a in range(0, k, rows):
        x = hashes[a : a + rows, None] ^ seeds[None, :]
        x ^= x >> _S33
        x *= _C1
        x ^= x >> _S33
        x *= _C2
        x ^= x >> _S33
        x |= _LOW11
        i = x.argmax(axis=1)
        best[a : a + rows] = i
        if nxt is not None:
            x[np.arange(len(i)), i] = 0
            nxt[a : a + rows] = x.argmax(axis=1)
    return best, nxt


def floor_of(keys: int, n: int, draws: int = 20, seed: int = 7) -> tuple[float, float]:
    """Mean and standard deviation of max/mean keys per member for an ideal assignment."""
    rng = np.random.default_rng(seed)
    vals = [rng.multinomial(keys, [1.0 / n] * n).max() / (keys / n) for _ in range(draws)]
    return float(np.mean(vals)), float(np.std(vals))


def movement(
    before: np.ndarray,
    after: np.ndarray,
    *,
    leaver: int | None = None,
    joiner: int | None = None,
    second: np.ndarray | None = None,
) -> dict[str, int]:
    moved = before != after
    out = {"moved": int(moved.sum())}
    if leaver is not None:
        out["foreign"] = int((moved & (before != leaver)).sum())
        if second is not None:
            out["not_to_second"] = int((moved & (after != second)).sum())
    if joiner is not None:
        out["not_to_joiner"] = int((moved & (after != joiner)).sum())
    return out


# ---- timing --------------------------------------------------------------------------------


def rate(call: Callable[[str], object], keys: Sequence[str], seconds: float) -> tuple[float, int]:
    """Calls per second of `call` over `keys` (cycled) for about `seconds`, and how many."""
    done, step, size = 0, 1, len(keys)
    t0 = time.perf_counter()
    while True:
        start = done % size
        chunk = keys[start : start + step]
        for key in chunk:
            call(key)
        done += len(chunk)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return done / elapsed, done
        if elapsed < seconds / 20:
            step = min(step * 2, 4096)


def measure_lookups(
    impls: dict[str, Callable[[str], object]], keys: Sequence[str], seconds: float, rounds: int
) -> dict[str, float]:
    """Median rate per implementation; rounds interleaved so that load changes hit all. Each
    gets its own slice of the keys, far longer than the table's cache, so no key repeats
    within a cache's reach."""
    rates: dict[str, list[float]] = {name: [] for name in impls}
    region = len(keys) // len(impls)
    slices = {name: keys[i * region : (i + 1) * region] for i, name in enumerate(impls)}
    offsets = dict.fromkeys(impls, 0)
    for _ in range(rounds):
        for name, call in impls.items():
            ks = slices[name]
            off = offsets[name]
            rotated = [*ks[off:], *ks[:off]] if off else ks
            per_s, done = rate(call, rotated, seconds)
            rates[name].append(per_s)
            offsets[name] = (off + done) % len(ks)
    return {name: statistics.median(rs) for name, rs in rates.items()}


# ---- one cluster size ----------------------------------------------------------------------


def run_size(
    n: int, args: argparse.Namespace, keys: Sequence[str], hashes: np.ndarray, rng: random.Random
) -> dict[str, Any]:
    names = names_for(n)
    res: dict[str, Any] = {"n": n}
    t0 = time.perf_counter()
    table = table_for(names)
    table.owners("warm-up")
    res["table_build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ring = Ring(names, args.vnodes)
    res["ring_build_s"] = time.perf_counter() - t0
    groups = max(1, round(math.sqrt(n)))
    two = TwoLevel(names, groups)

    # Cross-check the batch scorer against the table before trusting it.
    seeds = np.array([member_seed(x) for x in names], dtype=np.uint64)  # names are in order
    sample = list(range(0, len(keys), max(1, len(keys) // 2000)))[:2000]
    best, nxt = batch_top(hashes[sample], seeds)
    assert nxt is not None
    for j, ki in enumerate(sample):
        got = [r.name for r in table.owners(keys[ki], 2)]
        assert got == [names[best[j]], names[nxt[j]]][: len(got)], keys[ki]
    two_check = two.batch_owner(hashes[sample[:200]])
    for j, ki in enumerate(sample[:200]):
        assert two.owners(keys[ki], 1) == [names[two_check[j]]], keys[ki]
    table.cache_clear()

    # Lookups per second.
    impls: dict[str, Callable[[str], object]] = {
        "swimthor": lambda k: table.owners(k, 2),
        "ring": lambda k: ring.owners(k, 2),
        "two-level": lambda k: two.owners(k, 2),
    }
    if kinship_rendezvous is not None:
        impls["kinship"] = lambda k: kinship_rendezvous.owners(k, names, 2)
    hits0 = table.stats["cache_hits"]
    lookups = measure_lookups(impls, keys, args.seconds, args.rounds)
    assert table.stats["cache_hits"] == hits0, "uncached figures must be cache misses"
    working = keys[:1000]
    for k in working:
        table.owners(k, 2)
    cached, _ = rate(lambda k: table.owners(k, 2), working, args.seconds)
    res["lookups_per_s"] = lookups
    res["cached_lookups_per_s"] = {"swimthor": cached}

    # Balance over K keys, owner only.
    kb = args.balance_keys
    floor, floor_sd = floor_of(kb, n)
    best, nxt = batch_top(hashes[:kb], seeds)
    assert nxt is not None
    ring_best = ring.batch_owner(hashes[:kb])
    two_best = two.batch_owner(hashes[:kb])
    bal = {}
    for name, owner in (("swimthor", best), ("ring", ring_best), ("two-level", two_best)):
        counts = np.bincount(owner, minlength=n)
        bal[name] = float(counts.max() / (kb / n))
    res["balance"] = bal
    res["balance_keys"] = kb
    res["floor"] = {"mean": floor, "sd": floor_sd}

    # Movement: a few leavers and joiners, each a full recomputation over K_move keys.
    km = min(kb, max(20_000, int(args.move_pairs / (n * (2 * args.moves + 1)))))
    res["move_keys"] = km
    hm = hashes[:km]
    b0, s0 = best[:km], nxt[:km]
    leavers = rng.sample(range(n), min(args.moves, n))
    mv: dict[str, dict[str, list[dict[str, int]]]] = {
        x: {"leave": [], "join": []} for x in ("swimthor", "ring", "two-level")
    }
    rb0, tb0 = ring_best[:km], two_best[:km]
    for r in leavers:
        keep = np.array([i for i in range(n) if i != r])
        after = keep[batch_top(hm, seeds[keep], second=False)[0]]
        mv["swimthor"]["leave"].append(movement(b0, after, leaver=r, second=s0))
        mv["ring"]["leave"].append(movement(rb0, ring.without(r).batch_owner(hm), leaver=r))
        others = [names[i] for i in keep]
        t_after = keep[TwoLevel(others, groups).batch_owner(hm)]
        mv["two-level"]["leave"].append(movement(tb0, t_after, leaver=r))
    for j in range(args.moves):
        new = f"node-new-{j}"
        joined = [*names, new]  # sorts after every node-0xxxx, so its position is n
        jseeds = np.append(seeds, U64(member_seed(new)))
        after = batch_top(hm, jseeds, second=False)[0]
        mv["swimthor"]["join"].append(movement(b0, after, joiner=n))
        mv["ring"]["join"].append(
            movement(rb0, Ring(joined, args.vnodes).batch_owner(hm), joiner=n)
        )
        mv["two-level"]["join"].append(
            movement(tb0, TwoLevel(joined, groups).batch_owner(hm), joiner=n)
        )
    res["moves"] = mv

    # kinship's balance and movement on a sample it can afford (one BLAKE2b per member-key).
    if kinship_rendezvous is not None and n <= args.kinship_max_n:
        kk = min(kb, int(args.kinship_pairs / n))
        kfloor, kfloor_sd = floor_of(kk, n)
        kown = np.array([int(kinship_rendezvous.owner(k, names)[5:]) for k in keys[:kk]])
        counts = np.bincount(kown, minlength=n)
        kmoves: dict[str, list[dict[str, int]]] = {"leave": [], "join": []}
        r = leavers[0]
        others = [x for i, x in enumerate(names) if i != r]
        after = np.array([int(kinship_rendezvous.owner(k, others)[5:]) for k in keys[:kk]])
        kmoves["leave"].append(movement(kown, after, leaver=r))
        joined = [*names, "node-new-0"]
        after = np.array(
            [
                n if (o := kinship_rendezvous.owner(k, joined)) == "node-new-0" else int(o[5:])
                for k in keys[:kk]
            ]
        )
        kmoves["join"].append(movement(kown, after, joiner=n))
        res["kinship"] = {
            "keys": kk,
            "balance": float(counts.max() / (kk / n)),
            "floor": {"mean": kfloor, "sd": kfloor_sd},
            "moves": kmoves,
        }
    return res


def weighted(args: argparse.Namespace, keys: Sequence[str], hashes: np.ndarray) -> dict[str, Any]:
    """Shares with weights 1, 2 and 4 (cycled over 100 members): the largest observed share
    over its expected share, swimthor through `RoutingTable.owners` itself (the path with
    weight classes), the ring with virtual nodes in proportion to weight."""
    n, k = 100, args.weighted_keys
    names = names_for(n)
    ws = [(1.0, 2.0, 4.0)[i % 3] for i in range(n)]
    table = RoutingTable(cache_size=0)
    for i, name in enumerate(names):
        m = Member(name, ("10.0.0.1", 5060 + i), "dc1", ("sip",), ws[i], {}, 1, State.ALIVE, 0.0)
        table.handle_event(MemberJoined(m))
    t0 = time.perf_counter()
    own = np.array([int(table.owners(key, 1)[0].name[5:]) for key in keys[:k]])
    per_s = k / (time.perf_counter() - t0)
    p = np.array(ws) / sum(ws)
    rng = np.random.default_rng(11)
    floor = [float((rng.multinomial(k, p) / (k * p)).max()) for _ in range(20)]
    ring = Ring(names, args.vnodes, ws).batch_owner(hashes[:k])
    out = {"n": n, "keys": k, "weights": [1.0, 2.0, 4.0], "floor": statistics.mean(floor)}
    for name, owner in (("swimthor", own), ("ring", ring)):
        share = np.bincount(owner, minlength=n) / k
        out[name] = float((share / p).max())
        out[name + "_min"] = float((share / p).min())
    out["swimthor_lookups_per_s"] = per_s
    return out


def scaling(args: argparse.Namespace, keys: Sequence[str]) -> dict[str, Any]:
    """Flat swimthor lookups beyond 10,000 members and the two-level prototype beside it."""
    out: dict[str, Any] = {}
    for n in args.scale_sizes:
        names = names_for(n)
        table = table_for(names)
        table.owners("warm-up")
        two = TwoLevel(names, max(1, round(math.sqrt(n))))
        r = measure_lookups(
            {
                "swimthor": functools.partial(table.owners, n=2),
                "two-level": functools.partial(two.owners, n=2),
            },
            keys,
            args.seconds,
            args.rounds,
        )
        out[str(n)] = r
    return out


def ratio(moves: list[dict[str, int]], ideal: float) -> str:
    """Mean moved over ideal, with its sampling error: a leave moves the leaver's keys, a
    Poisson count of mean `ideal`, so the mean of L such ratios is uncertain by
    1 / sqrt(L * ideal) even when nothing moves needlessly."""
    if not moves:
        return "-"
    mean = statistics.mean(m["moved"] for m in moves) / ideal
    return f"{mean:.3f}±{1 / math.sqrt(len(moves) * ideal):.3f}"


def excess(moves: list[dict[str, int]]) -> int:
    return sum(v for m in moves for k, v in m.items() if k != "moved")


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def print_table(result: dict[str, Any]) -> None:
    head = [
        "N",
        "routing",
        "top-2 lookups/s",
        "cached",
        "balance (floor)",
        "leave/ideal",
        "join/ideal",
        "excess",
        "keys",
    ]
    rows = [head]
    for res in result["sizes"]:
        n = res["n"]
        kb, km = res["balance_keys"], res["move_keys"]
        floor = f"{res['floor']['mean']:.3f}"
        for name in ("swimthor", "kinship", "ring", "two-level"):
            lk = res["lookups_per_s"].get(name)
            if lk is None:
                continue
            cached = res["cached_lookups_per_s"].get(name)
            if name == "kinship":
                kin = res.get("kinship")
                if kin is None:
                    rows.append([str(n), name, fmt_rate(lk), "-", "-", "-", "-", "-", "-"])
                    continue
                kk = kin["keys"]
                rows.append(
                    [
                        str(n),
                        name,
                        fmt_rate(lk),
                        "-",
                        f"{kin['balance']:.3f} ({kin['floor']['mean']:.3f})",
                        ratio(kin["moves"]["leave"], kk / n),
                        ratio(kin["moves"]["join"], kk / (n + 1)),
                        str(excess(kin["moves"]["leave"]) + excess(kin["moves"]["join"])),
                        f"{kk:,}",
                    ]
                )
                continue
            mv = res["moves"][name]
            rows.append(
                [
                    str(n),
                    name,
                    fmt_rate(lk),
                    fmt_rate(cached),
                    f"{res['balance'][name]:.3f} ({floor})",
                    ratio(mv["leave"], km / n),
                    ratio(mv["join"], km / (n + 1)),
                    str(excess(mv["leave"]) + excess(mv["join"])),
                    f"{kb:,}/{km:,}",
                ]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print(
            "  ".join(
                c.rjust(w) if i >= 2 else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    if result.get("scaling"):
        print("\nbeyond 10,000 members (top-2 lookups/s, uncached):")
        for n, r in result["scaling"].items():
            print(
                f"  N={int(n):>7,}  swimthor {fmt_rate(r['swimthor']):>8}"
                f"  two-level {fmt_rate(r['two-level']):>8}"
            )
    w = result.get("weighted")
    if w:
        print(
            f"\nweights 1/2/4 over {w['n']} members, {w['keys']:,} keys: largest share over "
            f"expected: swimthor {w['swimthor']:.3f}, ring {w['ring']:.3f}, floor {w['floor']:.3f}"
            f" (smallest: swimthor {w['swimthor_min']:.3f}, ring {w['ring_min']:.3f})"
        )
    cross = result.get("crossover")
    if cross:
        print(
            f"\nflat swimthor: {cross['us_fixed']:.2f} us + {cross['ns_per_member']:.2f} ns per "
            f"member; below 20,000/s from N ~ {cross['n_below_20k']:,.0f}"
        )


def crossover(result: dict[str, Any]) -> dict[str, float]:
    """Fit lookup time = a + b * N over all flat measurements (N >= 100)."""
    pts = [(res["n"], 1e6 / res["lookups_per_s"]["swimthor"]) for res in result["sizes"]]
    pts += [(int(n), 1e6 / r["swimthor"]) for n, r in result.get("scaling", {}).items()]
    pts = [p for p in pts if p[0] >= 100]
    if len(pts) < 2:
        return {}
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    b, a = np.polyfit(xs, ys, 1)
    return {
        "us_fixed": float(a),
        "ns_per_member": float(b * 1000),
        "n_below_20k": float((50.0 - a) / b) if b > 0 else float("inf"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="10,100,1000,10000")
    p.add_argument(
        "--scale-sizes",
        default="30000,100000",
        help="flat lookups only, beyond the main sizes (empty: none)",
    )
    p.add_argument("--balance-keys", type=int, default=1_000_000)
    p.add_argument(
        "--move-pairs",
        type=float,
        default=2e10,
        help="member-key evaluations per size for the moved figures",
    )
    p.add_argument("--moves", type=int, default=3, help="leavers and joiners per size")
    p.add_argument("--kinship-pairs", type=float, default=2e6)
    p.add_argument("--weighted-keys", type=int, default=300_000)
    p.add_argument("--kinship-max-n", type=int, default=100)
    p.add_argument("--vnodes", type=int, default=100)
    p.add_argument("--seconds", type=float, default=0.4, help="per lookup measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--key-pool", type=int, default=600_000, help="distinct keys for lookups")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(HERE / "results" / "routing.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.balance_keys, args.move_pairs, args.kinship_pairs = 100_000, 3e8, 2e5
        args.seconds, args.rounds, args.moves = 0.15, 1, 2
        args.weighted_keys, args.key_pool = 30_000, 150_000
        args.scale_sizes = ""
    sizes = [int(x) for x in args.sizes.split(",") if x]
    args.scale_sizes = [int(x) for x in str(args.scale_sizes).split(",") if x]
    rng = random.Random(args.seed)
    started = time.time()
    load = os.getloadavg()
    nkeys = max(args.balance_keys, args.key_pool)
    keys = [f"sip:{rng.getrandbits(64):016x}@bench.example" for _ in range(nkeys)]
    hashes = np.fromiter((key_hash(k) for k in keys), dtype=np.uint64, count=nkeys)
    result: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_start": load,
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "sizes": [],
    }
    for n in sizes:
        print(f"N={n:,} ...", file=sys.stderr, flush=True)
        result["sizes"].append(run_size(n, args, keys, hashes, rng))
    print("weighted ...", file=sys.stderr, flush=True)
    result["weighted"] = weighted(args, keys, hashes)
    if args.scale_sizes:
        print("scaling ...", file=sys.stderr, flush=True)
        result["scaling"] = scaling(args, keys)
    result["crossover"] = crossover(result)
    result["seconds"] = time.time() - started
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    print_table(result)
    print(f"\n{result['seconds']:.0f} s; load average at start {load[0]:.2f}", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
