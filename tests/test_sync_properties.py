"""Property tests of push-pull (`membership._sync`): whatever order updates arrive in,
duplicated or lost, push-pull repairs every view to the same record."""

from __future__ import annotations

import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from swimthor.config import profile
from swimthor.keyring import wrap_plain
from swimthor.membership import (
    Alive,
    Dead,
    Membership,
    Message,
    State,
    Suspect,
    encode_message,
    encode_packet,
)
from swimthor.membership import _sync as push_pull

NAMES = ["x0", "x1", "x2"]
ADDRS = {n: ("10.9.0.1", 9000 + i) for i, n in enumerate(NAMES)}

update = st.tuples(
    st.sampled_from(["alive", "suspect", "dead", "left"]),
    st.sampled_from(NAMES),
    st.integers(0, 3),
    st.sampled_from(["o1", "o2", "o3"]),
)


def _message(kind: str, name: str, inc: int, origin: str) -> bytes:
    if kind == "alive":
        msg: Message = Alive(name, inc, ADDRS[name], "dc1", ("sip",), 1.0, {})
    elif kind == "suspect":
        msg = Suspect(name, inc, origin)
    elif kind == "dead":
        msg = Dead(name, inc, origin)
    else:
        msg = Dead(name, inc, name)
    return wrap_plain("", encode_packet(origin, [encode_message(msg)]))


def _sync(a: Membership, b: Membership, now: float) -> None:
    push_pull.open_push_pull(a, b.local.addr, join=False, kind="sync", now=now)
    for req in a.streams_to_open(now):
        reply = b.handle_stream(req.payload, a.local.addr, now)
        a.stream_response(req.id, reply, now)


def _view(core: Membership) -> dict[str, tuple[State, int]]:
    return {m.name: (m.state, m.incarnation) for m in core.members() if m.name in NAMES}


def _check_incremental_state(core: Membership) -> None:
    """The live set and view digest kept incrementally equal a recomputation from scratch."""
    live = {m.name for m in core.members() if m.state.is_live}
    assert core.num_live() == len(live)
    acc = 0
    for m in core.members():
        if m.state.is_live:
            h = hashlib.blake2b(digest_size=8)
            h.update(m.name.encode())
            h.update(m.incarnation.to_bytes(8, "big"))
            acc ^= int.from_bytes(h.digest(), "big")
    assert core.view_digest() == acc.to_bytes(8, "big").hex()


@settings(max_examples=100, deadline=None)
@given(
    updates=st.lists(update, min_size=1, max_size=14),
    deliveries=st.lists(st.lists(st.integers(0, 100), max_size=20), min_size=3, max_size=3),
)
def test_any_delivery_order_converges_after_push_pull(
    updates: list[tuple[str, str, int, str]], deliveries: list[list[int]]
) -> None:
    cfg = profile("local")
    cores = [
        Membership(
            name=f"c{i}", addr=("10.0.0.1", 100 + i), config=cfg, rng=random.Random(i), now=0.0
        )
        for i in range(3)
    ]
    # Each core gets its own selection of the updates: some lost, some twice, any order.
    for core, picks in zip(cores, deliveries, strict=True):
        for p in picks:
            kind, name, inc, origin = updates[p % len(updates)]
            core.receive_datagram(_message(kind, name, inc, origin), ("10.9.9.9", 1), 0.0)
    now = 0.0
    for _ in range(3):
        for a in cores:
            for b in cores:
                if a is not b:
                    _sync(a, b, now)
        # Let every pending suspicion run out (no member here can refute).
        now += 1000.0
        for c in cores:
            c.handle_timer(now)
            c.datagrams_to_send(now)
            c.streams_to_open(now)
    for a in cores:
        for b in cores:
            if a is not b:
                _sync(a, b, now)
    for c in cores:
        _check_incremental_state(c)
    views = [_view(c) for c in cores]
    # The live members and their incarnations are the same everywhere...
    live = [{n: v for n, v in view.items() if v[0].is_live} for view in views]
    assert live[0] == live[1] == live[2]
    # ...and so is every record two nodes both keep. A node that never heard of a member
    # does not learn its tombstone (as in memberlist): that is no disagreement about who is up.
    for one in views:
        for other in views:
            for name in one.keys() & other.keys():
                assert one[name] == other[name], name
