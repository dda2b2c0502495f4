"""The binding store: the merge rule by version (order-free and idempotent, checked with
hypothesis), tombstones that keep removed contacts from coming back, expiry by whole seconds
with refreshed bindings and in budgeted steps, what a binding shares, lookup order, the wire
form and every shape it refuses, drop and the size bound."""

from __future__ import annotations

import itertools
import json
import random
import zlib
from dataclasses import replace
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swimthor.sip import (
    DIGEST_BUCKETS,
    MAX_FIELD_LENGTH,
    MAX_PATH,
    Binding,
    BindingStore,
    SubscriberJournal,
    aor_bucket,
    subscriber_record,
)

AOR = "sip:alice@example.com"
NOW = 1000.0


def binding(
    key: str = "k1",
    *,
    aor: str = AOR,
    expires_at: float = NOW + 600,
    q: float = 1.0,
    call_id: str = "c1",
    cseq: int = 1,
    stamp: float = NOW,
    origin: str = "n1",
    removed: bool = False,
) -> Binding:
    return Binding(
        aor,
        f"sip:{key}@10.0.0.2",
        key,
        expires_at,
        q,
        call_id,
        cseq,
        "udp:10.0.0.2:5060",
        stamp,
        origin,
        removed,
    )


def snapshot(store: BindingStore) -> dict[tuple[str, str], Binding]:
    return {(b.aor, b.key): b for aor in store.aors() for b in store.all(aor)}


# ------------------------------------------------------------------------ put and versions


def test_put_keeps_the_higher_version() -> None:
    store = BindingStore()
    first = binding(stamp=NOW)
    assert store.put(first)
    assert store.all(AOR) == [first]
    assert not store.put(first)  # the same version again
    assert store.stats["stale"] == 1
    assert not store.put(binding(stamp=NOW - 1, expires_at=NOW + 9999))
    assert store.all(AOR) == [first]
    newer = binding(stamp=NOW + 1, q=0.5)
    assert store.put(newer)
    assert store.all(AOR) == [newer]
    assert len(store) == 1
    assert store.stats["stored"] == 2


def test_the_version_orders_by_stamp_then_origin_then_cseq() -> None:
    versions = [
        binding(stamp=NOW, origin="a", cseq=9),
        binding(stamp=NOW, origin="b", cseq=1),
        binding(stamp=NOW, origin="b", cseq=2),
        binding(stamp=NOW + 0.001, origin="a", cseq=0),
    ]
    assert [b.version for b in versions] == sorted(b.version for b in versions)
    for earlier, later in itertools.pairwise(versions):
        store = BindingStore()
        assert store.put(later)
        assert not store.put(earlier)
        store = BindingStore()
        assert store.put(earlier)
        assert store.put(later)
        assert store.all(AOR) == [later]


def test_bindings_are_per_aor_and_key() -> None:
    store = BindingStore()
    assert store.put(binding("k1"))
    assert store.put(binding("k2"))
    assert store.put(binding("k1", aor="sip:bob@example.com"))
    assert len(store) == 3
    assert sorted(store.aors()) == [AOR, "sip:bob@example.com"]
    assert sorted(b.key for b in store.all(AOR)) == ["k1", "k2"]
    assert store.all("sip:nobody@example.com") == []
    assert store.lookup("sip:nobody@example.com", NOW) == []


def test_aors_is_a_snapshot_that_survives_changes() -> None:
    store = BindingStore()
    for i in range(5):
        store.put(binding(aor=f"sip:u{i}@example.com"))
    for aor in store.aors():
        store.drop(aor)
    assert list(store.aors()) == []
    assert len(store) == 0


# ------------------------------------------------------------------------ merge


def test_merge_stores_what_is_newer_and_not_expired() -> None:
    store = BindingStore()
    held = binding("k1", stamp=NOW)
    store.put(held)
    newer = binding("k1", stamp=NOW + 5, q=0.2)
    older = binding("k2", stamp=NOW - 5)
    expired = binding("k3", expires_at=NOW)  # expires exactly now: gone
    stale = binding("k1", stamp=NOW - 1)
    assert store.merge([newer, older, expired, stale], NOW) == [newer, older]
    assert snapshot(store) == {(AOR, "k1"): newer, (AOR, "k2"): older}
    assert store.stats["merged"] == 2
    assert store.merge([newer, older], NOW) == []  # idempotent
    assert store.stats["merged"] == 2


def test_an_expired_tombstone_is_not_merged() -> None:
    store = BindingStore()
    assert store.merge([binding(removed=True, expires_at=NOW - 1)], NOW) == []
    assert len(store) == 0


# The content of a version is a function of the version: one write, one content.
_version = st.tuples(
    st.sampled_from([f"sip:u{i}@example.com" for i in range(2)]),
    st.sampled_from(["k1", "k2", "k3"]),
    st.integers(0, 4).map(lambda s: NOW + s),
    st.sampled_from(["n1", "n2"]),
    st.integers(0, 3),
)


def _written(v: tuple[str, str, float, str, int]) -> Binding:
    aor, key, stamp, origin, cseq = v
    seed = zlib.crc32(repr(v).encode()) & 0xFFFF
    return binding(
        key,
        aor=aor,
        stamp=stamp,
        origin=origin,
        cseq=cseq,
        expires_at=stamp + 60 + seed % 600,
        q=(seed % 11) / 10,
        call_id=f"c{seed % 3}",
        removed=seed % 4 == 0,
    )


@settings(max_examples=150)
@given(st.lists(_version, min_size=1, max_size=25), st.randoms(use_true_random=False))
def test_merging_the_same_versions_in_any_order_gives_the_same_store(
    versions: list[tuple[str, str, float, str, int]], rnd: random.Random
) -> None:
    writes = [_written(v) for v in versions]
    # What every replica should end up with: the highest version per (aor, key).
    model: dict[tuple[str, str], Binding] = {}
    for b in writes:
        held = model.get((b.aor, b.key))
        if held is None or b.version > held.version:
            model[(b.aor, b.key)] = b

    stores = []
    for _ in range(3):
        order = writes + rnd.sample(writes, k=len(writes) // 2)  # some arrive twice
        rnd.shuffle(order)
        store = BindingStore()
        # In batches, as replication and repair deliver them.
        cut = rnd.randint(0, len(order))
        store.merge(order[:cut], NOW)
        store.merge(order[cut:], NOW)
        stores.append(store)
    for store in stores:
        assert snapshot(store) == model
        assert len(store) == len(model)
        assert store.merge(writes, NOW) == []  # merging again changes nothing
        assert snapshot(store) == model


# ------------------------------------------------------------------------ tombstones


def test_a_tombstone_keeps_an_older_copy_from_coming_back() -> None:
    store = BindingStore()
    alive = binding(stamp=NOW, expires_at=NOW + 600)
    store.put(alive)
    tomb = BindingStore.tombstone(alive, stamp=NOW + 10, origin="n2", call_id="c1", cseq=2)
    assert (tomb.removed, tomb.stamp, tomb.origin, tomb.cseq) == (True, NOW + 10, "n2", 2)
    assert (tomb.contact, tomb.key, tomb.expires_at) == (alive.contact, alive.key, alive.expires_at)
    assert store.put(tomb)
    assert store.lookup(AOR, NOW + 10) == []
    # A late copy of the binding (a slow replica, a repair) does not resurrect it.
    assert store.merge([alive], NOW + 20) == []
    assert store.lookup(AOR, NOW + 20) == []
    assert store.all(AOR) == [tomb]
    # A newer registration does.
    again = binding(stamp=NOW + 30, cseq=3)
    assert store.merge([again], NOW + 30) == [again]
    assert store.lookup(AOR, NOW + 30) == [again]


def test_a_tombstone_outlives_what_it_removed() -> None:
    store = BindingStore()
    alive = binding(stamp=NOW, expires_at=NOW + 600)
    tomb = BindingStore.tombstone(alive, stamp=NOW + 10, origin="n1", call_id="c1", cseq=2)
    store.put(tomb)
    assert store.expire(NOW + 599) == 0
    assert store.merge([alive], NOW + 599) == []
    # When it goes, the binding it removed has expired too and is refused as such.
    assert store.expire(NOW + 600) == 1
    assert store.merge([alive], NOW + 600) == []
    assert len(store) == 0


# ------------------------------------------------------------------------ expiry


def test_expire_removes_exactly_what_is_due() -> None:
    store = BindingStore()
    for i, at in enumerate((NOW + 10, NOW + 20, NOW + 20, NOW + 30)):
        store.put(binding(f"k{i}", expires_at=at))
    store.put(binding("t", expires_at=NOW + 15, removed=True))
    assert store.next_expiry() == NOW + 10
    assert store.expire(NOW + 9.999) == 0
    assert store.expire(NOW + 10) == 1
    assert store.expire(NOW + 20) == 3  # the tombstone and both at +20
    assert sorted(b.key for b in store.all(AOR)) == ["k3"]
    assert len(store) == 1
    assert store.next_expiry() == NOW + 30
    assert store.expire(NOW + 100) == 1
    assert len(store) == 0
    assert list(store.aors()) == []  # an address-of-record with nothing left goes too
    assert store.next_expiry() is None
    assert store.stats["expired"] == 5


def test_a_refreshed_binding_outlives_its_first_expiry() -> None:
    store = BindingStore()
    store.put(binding(expires_at=NOW + 60, stamp=NOW))
    store.put(binding(expires_at=NOW + 600, stamp=NOW + 30, cseq=2))
    assert store.expire(NOW + 60) == 0  # the old heap entry finds a refreshed binding
    assert [b.cseq for b in store.lookup(AOR, NOW + 60)] == [2]
    assert store.expire(NOW + 600) == 1
    assert len(store) == 0


def test_a_shortened_binding_goes_at_its_new_time() -> None:
    store = BindingStore()
    store.put(binding(expires_at=NOW + 600, stamp=NOW))
    store.put(binding(expires_at=NOW + 60, stamp=NOW + 30, cseq=2))
    assert store.expire(NOW + 60) == 1
    assert len(store) == 0
    assert store.expire(NOW + 600) == 0  # the stale entry finds nothing
    assert len(store) == 0


def test_expiry_after_drop_and_readd_counts_right() -> None:
    store = BindingStore()
    store.put(binding("k1", expires_at=NOW + 10))
    store.put(binding("k2", expires_at=NOW + 10))
    assert store.drop(AOR) == 2
    assert len(store) == 0
    assert store.expire(NOW + 10) == 0  # heap entries of dropped bindings are skipped
    store.put(binding("k1", expires_at=NOW + 50, stamp=NOW + 1))
    assert store.expire(NOW + 20) == 0
    assert len(store) == 1
    assert store.expire(NOW + 50) == 1
    assert len(store) == 0


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(st.sampled_from(["k1", "k2", "k3", "k4"]), st.integers(1, 50), st.booleans()),
        min_size=1,
        max_size=30,
    ),
    st.integers(0, 60),
)
def test_expire_agrees_with_the_expiry_times_held(
    writes: list[tuple[str, int, bool]], at: int
) -> None:
    store = BindingStore()
    for stamp, (key, ttl, removed) in enumerate(writes):
        store.put(binding(key, stamp=NOW + stamp, expires_at=NOW + ttl, removed=removed))
    held = snapshot(store)
    gone = store.expire(NOW + at)
    kept = {k: b for k, b in held.items() if b.expires_at > NOW + at}
    assert snapshot(store) == kept
    assert gone == len(held) - len(kept)
    assert len(store) == len(kept)


@settings(max_examples=80)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["sip:a@x", "sip:b@x", "sip:c@x"]),
            st.sampled_from(["k1", "k2", "k3"]),
            st.floats(0.0, 30.0),
        ),
        min_size=1,
        max_size=40,
    ),
    st.lists(st.floats(0.0, 35.0), min_size=1, max_size=6),
    st.integers(1, 5),
)
def test_expiry_in_budgeted_steps_removes_exactly_what_is_due(
    writes: list[tuple[str, str, float]], times: list[float], limit: int
) -> None:
    # Several AORs (one record or several), refreshes to earlier and later times, fractions
    # of a second, and expiry in steps of `limit` entries at increasing times: each time,
    # once `expire_some` says nothing due is left, what is held is exactly what expires later.
    store = BindingStore()
    for stamp, (aor, key, ttl) in enumerate(writes):
        store.put(binding(key, aor=aor, stamp=NOW + stamp, expires_at=NOW + ttl))
    held = snapshot(store)
    for at in sorted(times):
        while True:
            _gone, more = store.expire_some(NOW + at, limit)
            if not more:
                break
        kept = {k: b for k, b in held.items() if b.expires_at > NOW + at}
        assert snapshot(store) == kept
        assert len(store) == len(kept)
        assert store.aor_count() == len({aor for aor, _ in kept})
        due = [b.expires_at for b in kept.values()]
        assert store.next_expiry() == (min(due) if due else None)


def test_expire_with_a_limit_leaves_the_rest_for_the_next_step() -> None:
    store = BindingStore()
    for i in range(10):
        store.put(binding(aor=f"sip:u{i}@example.com", expires_at=NOW + 5))
    assert store.expire_some(NOW + 5, 4) == (4, True)
    assert store.expire(NOW + 5, 4) == 4
    assert store.expire_some(NOW + 5, 4) == (2, False)
    assert len(store) == 0 and store.aor_count() == 0


def test_a_record_due_later_in_the_current_second_stays() -> None:
    store = BindingStore()
    store.put(binding("k1", expires_at=NOW + 10.25))
    store.put(binding("k2", expires_at=NOW + 10.75))
    assert store.expire_some(NOW + 10.5) == (1, False)
    assert [b.key for b in store.all(AOR)] == ["k2"]
    assert store.next_expiry() == NOW + 10.75
    assert store.expire(NOW + 10.75) == 1
    assert len(store) == 0


def test_budgeted_steps_end_when_what_is_left_is_due_later_in_the_second() -> None:
    # Two AORs due later in the current second, one due now, a budget of one: the steps at
    # one `now` end (each AOR looked at once), and a later `now` in the second takes the two.
    store = BindingStore()
    for i, at in enumerate((NOW + 10.6, NOW + 10.7, NOW + 10.1)):
        store.put(binding(aor=f"sip:u{i}@example.com", expires_at=at))
    steps = []
    while True:
        steps.append(store.expire_some(NOW + 10.5, 1))
        if not steps[-1][1]:
            break
    assert sum(gone for gone, _ in steps) == 1 and len(steps) <= 3
    assert store.next_expiry() == NOW + 10.6
    assert store.expire(NOW + 10.7, 1) + store.expire(NOW + 10.7, 1) == 2
    assert len(store) == 0 and store.next_expiry() is None


async def test_expire_due_lets_other_tasks_run_between_steps() -> None:
    import trio

    from swimthor.sip import EXPIRE_BUDGET, expire_due

    store = BindingStore(max_bindings=10 * EXPIRE_BUDGET)
    for i in range(5 * EXPIRE_BUDGET):
        store.put(binding(aor=f"sip:u{i}@example.com", expires_at=NOW + 5))
    ran: list[int] = []

    async def other() -> None:
        while True:
            ran.append(len(store))
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.sleep(0)
        assert await expire_due(store, NOW + 5) == 5 * EXPIRE_BUDGET
        nursery.cancel_scope.cancel()
    assert len(store) == 0
    # The other task ran while expiry was part way: between budgets, not only before and after.
    assert any(0 < n < 5 * EXPIRE_BUDGET for n in ran)


def test_a_binding_shares_what_repeats() -> None:
    ua = "".join(["Yealink SIP-T46S ", "66.86.0.15"])  # built at run time: not a constant
    made = [
        Binding(
            f"sip:u{i}@example.com",
            f"sip:u{i}@10.0.0.{i}:5060",
            "".join([f"sip:u{i}@10.0.0.{i}", ":5060"]),
            NOW + 60,
            float("1.0"),
            f"cid{i}",
            1,
            f"udp:10.0.0.{i}:5060",
            NOW,
            "".join(["n", "1"]),
            user_agent="".join([ua]),
        )
        for i in range(2)
    ]
    a, b = made
    assert a.key is a.contact  # an equal key is the contact itself
    assert a.user_agent is b.user_agent and a.origin is b.origin and a.q is b.q
    # A binding whose key differs from its contact keeps both.
    c = binding("other")
    assert c.key == "other" and c.contact == "sip:other@10.0.0.2"


def test_an_aor_keeps_one_string_whatever_copies_arrive() -> None:
    store = BindingStore()
    store.put(binding("k1"))
    again = binding("k2", aor="".join(["sip:alice@", "example.com"]))
    assert again.aor is not AOR
    store.put(again)
    assert all(b.aor is AOR for b in store.all(AOR))
    # Down to one record, it is kept without a dict; lookups are unchanged.
    assert store.expire(NOW + 600) == 2
    store.put(binding("k1", expires_at=NOW + 900, stamp=NOW + 1))
    store.put(binding("k2", expires_at=NOW + 700, stamp=NOW + 1))
    assert store.expire(NOW + 700) == 1
    assert [b.key for b in store.lookup(AOR, NOW + 700)] == ["k1"]
    assert store.drop(AOR) == 1 and len(store) == 0


# ------------------------------------------------------------------------ lookup


def test_lookup_orders_by_q_then_most_recent() -> None:
    store = BindingStore()
    store.put(binding("old-high", q=0.9, stamp=NOW - 50))
    store.put(binding("new-high", q=0.9, stamp=NOW - 10))
    store.put(binding("top", q=1.0, stamp=NOW - 100))
    store.put(binding("low", q=0.1, stamp=NOW))
    store.put(binding("zero", q=0.0, stamp=NOW))
    store.put(binding("gone", q=1.0, stamp=NOW, removed=True))
    store.put(binding("expired", q=1.0, expires_at=NOW))
    assert [b.key for b in store.lookup(AOR, NOW)] == [
        "top",
        "new-high",
        "old-high",
        "low",
        "zero",
    ]
    assert [b.key for b in store.lookup(AOR, NOW - 1)] == [
        "expired",
        "top",
        "new-high",
        "old-high",
        "low",
        "zero",
    ]


def test_live() -> None:
    assert binding(expires_at=NOW + 1).live(NOW)
    assert not binding(expires_at=NOW).live(NOW)
    assert not binding(expires_at=NOW + 1, removed=True).live(NOW)


# ------------------------------------------------------------------------ drop and bounds


def test_drop_forgets_an_aor_tombstones_included() -> None:
    store = BindingStore()
    store.put(binding("k1"))
    store.put(binding("k2", removed=True))
    store.put(binding("k1", aor="sip:bob@example.com"))
    assert store.drop(AOR) == 2
    assert store.drop(AOR) == 0
    assert store.drop("sip:nobody@example.com") == 0
    assert len(store) == 1
    assert list(store.aors()) == ["sip:bob@example.com"]
    # What was dropped can come back at any version (no tombstone is left).
    assert store.put(binding("k1", stamp=NOW - 100))


def test_max_bindings_bounds_new_keys_only() -> None:
    store = BindingStore(max_bindings=2)
    assert store.put(binding("k1"))
    assert store.put(binding("k2"))
    assert not store.put(binding("k3"))
    assert not store.put(binding("k1", aor="sip:bob@example.com"))
    assert store.stats["full"] == 2
    assert len(store) == 2
    assert list(store.aors()) == [AOR]  # no empty address-of-record left behind
    # Replacing a held key is not a new one.
    assert store.put(binding("k1", stamp=NOW + 1))
    assert store.put(binding("k2", stamp=NOW + 1, removed=True))
    assert len(store) == 2
    # Room again after expiry.
    store.expire(NOW + 600)
    assert store.put(binding("k3", expires_at=NOW + 900))
    assert store.merge([binding("k4", expires_at=NOW + 900)], NOW + 600) != []
    assert not store.put(binding("k5", expires_at=NOW + 900))


# ------------------------------------------------------------------------ wire form


_text = st.text(max_size=40)
_number = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
_binding = st.builds(
    Binding,
    aor=_text,
    contact=_text,
    key=_text,
    expires_at=_number,
    q=st.floats(0.0, 1.0),
    call_id=_text,
    cseq=st.integers(0, 2**32 - 1),
    source=_text,
    stamp=_number,
    origin=_text,
    removed=st.booleans(),
    instance=st.just("") | _text,
    reg_id=st.just(0) | st.integers(0, 2**31 - 1),
    user_agent=st.just("") | _text,
    path=st.just(()) | st.lists(_text.filter(bool), min_size=1, max_size=3).map(tuple),
)


@given(_binding)
def test_wire_round_trip(b: Binding) -> None:
    wire = b.to_wire()
    assert isinstance(wire, list)
    # The 11-field form (what nodes before instance, reg-id and User-Agent read) whenever
    # those are empty; the 14-field form when only they are set; 15 with a Path.
    if b.path:
        assert len(wire) == 15
    else:
        assert len(wire) == (14 if (b.instance or b.reg_id or b.user_agent) else 11)
    assert Binding.from_wire(wire) == b
    assert Binding.from_wire(list(wire)).version == b.version
    # A later version's fields after the 15th are ignored.
    paddings: dict[int, list[object]] = {11: ["", 0, "", []], 14: [[]], 15: []}
    padding = paddings[len(wire)]
    longer = [*b.to_wire(), *padding, "future", [1, 2], None]
    assert Binding.from_wire(longer) == b


def test_the_two_wire_forms() -> None:
    plain = binding()
    assert len(plain.to_wire()) == 11
    device = replace(plain, instance='"<urn:uuid:1>"', reg_id=2, user_agent="Phone/1.0")
    wire = device.to_wire()
    assert wire[:11] == plain.to_wire()
    assert wire[11:] == ['"<urn:uuid:1>"', 2, "Phone/1.0"]
    assert Binding.from_wire(wire) == device
    # Any one of the three makes the longer form; written empty it reads as the short one.
    for changed in ({"instance": "i"}, {"reg_id": 1}, {"user_agent": "u"}):
        assert len(replace(plain, **changed).to_wire()) == 14
    assert Binding.from_wire([*plain.to_wire(), "", 0, ""]) == plain
    # Through CBOR, as replication sends it.
    assert Binding.from_wire(cbor2.loads(cbor2.dumps(wire))) == device
    assert Binding.from_wire(cbor2.loads(cbor2.dumps([*wire, [], {"x": 1}]))) == device
    # The 15th field is the Path: written only when there is one.
    routed = replace(device, path=("<sip:tok@10.0.0.1:5060;lr;ob>",))
    assert routed.to_wire() == [*wire, ["<sip:tok@10.0.0.1:5060;lr;ob>"]]
    assert Binding.from_wire(cbor2.loads(cbor2.dumps(routed.to_wire()))) == routed
    assert len(replace(plain, path=("<sip:e;lr>",)).to_wire()) == 15


def test_from_wire_takes_integral_numbers_as_floats() -> None:
    wire = binding().to_wire()
    wire[3], wire[4], wire[8] = 1600, 1, 1000
    b = Binding.from_wire(wire)
    assert (b.expires_at, b.q, b.stamp) == (1600.0, 1.0, 1000.0)
    assert all(isinstance(x, float) for x in (b.expires_at, b.q, b.stamp))


GOOD = binding().to_wire()
TEXT_FIELDS = (0, 1, 2, 5, 7, 9)
NUMBER_FIELDS = (3, 4, 8)


def _with(index: int, value: object) -> list[object]:
    wire = list(GOOD)
    wire[index] = value
    return wire


FIELD_NAMES = (
    "aor",
    "contact",
    "key",
    "expires_at",
    "q",
    "call_id",
    "cseq",
    "source",
    "stamp",
    "origin",
    "removed",
)


def _bad(index: int, *values: object) -> list[tuple[str, list[object]]]:
    return [(f"{FIELD_NAMES[index]}={v!r:.20}", _with(index, v)) for v in values]


GOOD_14 = [*GOOD, '"<urn:uuid:1>"', 1, "Phone/1.0"]


def _with_14(index: int, *values: object) -> list[tuple[str, list[object]]]:
    names = ("instance", "reg_id", "user_agent")
    out: list[tuple[str, list[object]]] = []
    for v in values:
        wire = list(GOOD_14)
        wire[index] = v
        out.append((f"{names[index - 11]}={v!r:.20}", wire))
    return out


BAD_WIRE: list[tuple[str, object]] = [
    ("None", None),
    ("str", "binding"),
    ("int", 42),
    ("dict", {"aor": AOR}),
    ("tuple", tuple(GOOD)),
    ("10 fields", GOOD[:10]),
    ("12 fields", [*GOOD, False]),
    ("13 fields", GOOD_14[:13]),
    ("65 fields", [*GOOD_14, *([0] * 51)]),
    ("empty", []),
    *_with_14(11, None, 1, b"bytes", ["x"], "x" * 2049),
    *_with_14(12, None, "1", 1.0, True, False, -1, 2**31, 10**400),
    *_with_14(13, None, 1, b"bytes", ["x"], "x" * 2049),
    *[
        (f"{n} (14 fields)", [*w, *GOOD_14[11:]])
        for n, w in [b for i in TEXT_FIELDS for b in _bad(i, None, 1, "x" * 2049)]
    ],
    *[bad for i in TEXT_FIELDS for bad in _bad(i, None, 1, b"bytes", ["x"], "x" * 2049)],
    *[
        bad
        for i in NUMBER_FIELDS
        for bad in _bad(
            i,
            None,
            "1000",
            True,
            False,
            [1.0],
            float("nan"),
            float("inf"),
            float("-inf"),
            10**400,  # float() of it raises OverflowError, not ValueError
        )
    ],
    *_bad(6, None, "1", 1.0, True, -1, 2**32, 10**400),
    *_bad(10, None, 0, 1, "true", ""),
    *_bad(4, 1.0001, -0.0001, 2),
]


@pytest.mark.parametrize("item", [item for _, item in BAD_WIRE], ids=[n for n, _ in BAD_WIRE])
def test_from_wire_refuses_every_other_shape(item: object) -> None:
    with pytest.raises(ValueError):
        Binding.from_wire(item)


def test_from_wire_limits_of_the_longer_form() -> None:
    def at(index: int, value: object) -> Binding:
        wire = list(GOOD_14)
        wire[index] = value
        return Binding.from_wire(wire)

    assert at(11, "x" * MAX_FIELD_LENGTH).instance == "x" * MAX_FIELD_LENGTH
    assert at(12, 2**31 - 1).reg_id == 2**31 - 1
    assert at(12, 0).reg_id == 0
    assert at(13, "u" * MAX_FIELD_LENGTH).user_agent == "u" * MAX_FIELD_LENGTH
    assert Binding.from_wire([*GOOD_14, [], *([None] * 49)]).user_agent == "Phone/1.0"
    hop = "<sip:t@10.0.0.1;lr>"
    assert Binding.from_wire([*GOOD_14, [hop] * MAX_PATH]).path == (hop,) * MAX_PATH
    for bad in ([hop] * (MAX_PATH + 1), [""], [1], hop, None, ["x" * (MAX_FIELD_LENGTH + 1)]):
        with pytest.raises(ValueError):
            Binding.from_wire([*GOOD_14, bad])


def test_subscriber_journal_round_trips(tmp_path: Path) -> None:
    journal = SubscriberJournal(tmp_path / "subscribers.jsonl")
    alice = subscriber_record(AOR, "digest;x", stamp=100.0, origin="n1")
    gone = subscriber_record("sip:bob@example.com", "", stamp=101.0, origin="n2", removed=True)
    journal.append(alice)
    journal.append(gone)
    journal.close()
    # Subscriber records keep the 11-field lines older versions wrote and read.
    lines = (tmp_path / "subscribers.jsonl").read_text().splitlines()
    assert [len(json.loads(line)) for line in lines] == [11, 11]
    assert sorted(SubscriberJournal(journal.path).load(), key=lambda r: r.aor) == [alice, gone]
    # A line a later version wrote, with more fields, still loads; a torn one is skipped.
    later = [*replace(alice, stamp=102.0).to_wire(), "", 0, "", [], "future"]
    with open(journal.path, "a") as f:
        f.write(json.dumps(later) + "\n" + '["sip:carol@exa')
    reread = SubscriberJournal(journal.path)
    assert {r.aor: r.stamp for r in reread.load()} == {AOR: 102.0, "sip:bob@example.com": 101.0}
    assert reread.bad_lines == 1
    reread.rewrite(reread.load())
    assert len(SubscriberJournal(journal.path).load()) == 2


def test_from_wire_limits() -> None:
    assert Binding.from_wire(_with(1, "x" * MAX_FIELD_LENGTH)).contact == "x" * MAX_FIELD_LENGTH
    assert Binding.from_wire(_with(6, 2**32 - 1)).cseq == 2**32 - 1
    assert Binding.from_wire(_with(6, 0)).cseq == 0
    assert Binding.from_wire(_with(4, 0)).q == 0.0
    assert Binding.from_wire(_with(3, -5.5)).expires_at == -5.5


# ------------------------------------------------------------------------ digests


def test_aor_bucket_is_stable_and_in_range() -> None:
    buckets = {aor_bucket(f"sip:user{i}@example.com") for i in range(500)}
    assert buckets <= set(range(DIGEST_BUCKETS))
    assert len(buckets) > DIGEST_BUCKETS // 2  # spread out
    assert aor_bucket(AOR) == aor_bucket(AOR)


def test_digest_follows_the_version() -> None:
    b = binding()
    assert b.digest() == binding().digest()
    assert 0 <= b.digest() < 2**64
    for other in (
        binding(stamp=NOW + 1),
        binding(origin="n2"),
        binding(removed=True),
        binding("k2"),
        binding(aor="sip:bob@example.com"),
    ):
        assert other.digest() != b.digest()


def test_subscriber_records_are_counted_apart_and_forgotten_with_their_aor() -> None:
    store = BindingStore()
    store.put(subscriber_record("sip:a@example.com", "digest;x", stamp=100.0, origin="n1"))
    gone = subscriber_record("sip:b@example.com", "", stamp=100.0, origin="n1", removed=True)
    store.put(gone)
    assert store.subscriber_records == 2 and len(store) == 2
    assert [r.aor for r in store.subscribers(200.0)] == ["sip:a@example.com"]  # not the tombstone
    store.drop("sip:a@example.com")
    assert store.subscriber_records == 1 and store.subscribers(200.0) == []
    store.expire(gone.expires_at + 1)
    assert store.subscriber_records == 0 and len(store) == 0 and store.aor_count() == 0
