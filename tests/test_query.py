"""Queries and key operations (`membership._query`), without a network: the member's side
(`serve_query`, `serve_key_op`) called directly, and the client's frames handed to a core's
`handle_stream` and back."""

from __future__ import annotations

import random

import pytest

from swimthor.config import profile
from swimthor.keyring import Keyring, wrap_plain
from swimthor.membership import (
    Event,
    KeyOp,
    KeyOpReply,
    KeyringChanged,
    Membership,
    PushPull,
    Query,
    QueryError,
    QueryReply,
    StreamError,
    encode_stream,
    key_op_frame,
    query_frame,
    read_key_op_reply,
    read_query_reply,
)
from swimthor.membership import _query as queries

K1, K2, K3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def _core(keyring: Keyring | None = None) -> Membership:
    return Membership(name="a", addr=("10.0.0.1", 1), config=profile("local"),
                      rng=random.Random(1), now=0.0, keyring=keyring,
                      nonce_source=random.Random(2).randbytes)  # fmt: skip


def _events(core: Membership) -> list[Event]:
    out = []
    while (e := core.next_event()) is not None:
        out.append(e)
    return out


def test_members_and_status_are_answered_and_other_questions_refused() -> None:
    core = _core()
    members = queries.serve_query(core, Query("members"), 1.0)
    assert members == QueryReply("members", core.members_json())
    status = queries.serve_query(core, Query("status"), 1.0)
    assert isinstance(status, QueryReply) and status.what == "status"
    assert status.data["name"] == "a"
    assert queries.serve_query(core, Query("secrets"), 1.0) == StreamError(
        "unknown query 'secrets'"
    )
    assert core.stats["queries"] == 3


def test_key_operations_rotate_the_keyring_and_say_so() -> None:
    ring = Keyring([K1])
    core = _core(ring)
    _events(core)
    assert queries.serve_key_op(core, KeyOp("install", K2), 0.0) == KeyOpReply(True, "")
    assert queries.serve_key_op(core, KeyOp("use", K2), 0.0) == KeyOpReply(True, "")
    assert queries.serve_key_op(core, KeyOp("remove", K1), 0.0) == KeyOpReply(True, "")
    assert ring.keys == (K2,)
    assert _events(core) == [
        KeyringChanged("install", Keyring.key_id(K2)),
        KeyringChanged("use", Keyring.key_id(K2)),
        KeyringChanged("remove", Keyring.key_id(K1)),
    ]
    # Refused by the keyring: said in the reply, nothing changes, no event.
    reply = queries.serve_key_op(core, KeyOp("remove", K2), 0.0)
    assert isinstance(reply, KeyOpReply) and not reply.ok and "primary" in reply.message
    reply = queries.serve_key_op(core, KeyOp("use", K3), 0.0)
    assert isinstance(reply, KeyOpReply) and not reply.ok and "not installed" in reply.message
    assert ring.keys == (K2,) and _events(core) == []


def test_a_node_without_a_keyring_refuses_key_operations() -> None:
    core = _core()
    reply = queries.serve_key_op(core, KeyOp("install", K2), 0.0)
    assert reply == KeyOpReply(False, "this node runs without a keyring (--insecure)")


def test_the_clients_frames_round_trip_through_a_core() -> None:
    ring = Keyring([K1])
    core = _core(ring)
    frame = query_frame("members", Keyring([K1]), "", 10.0, b"\x07" * 12)
    reply = core.handle_stream(frame, ("10.0.0.9", 9), 10.0)
    assert reply is not None
    assert read_query_reply(reply, Keyring([K1]), "", 10.0) == core.members_json()
    frame = key_op_frame("install", K2, Keyring([K1]), "", 10.0, b"\x08" * 12)
    reply = core.handle_stream(frame, ("10.0.0.9", 9), 10.0)
    assert reply is not None
    read_key_op_reply(reply, Keyring([K1]), "", 10.0)
    assert K2 in ring.keys
    with pytest.raises(ValueError):
        key_op_frame("steal", K2, ring, "", 10.0, b"\x09" * 12)


def test_a_reply_sent_as_a_request_is_refused() -> None:
    core = _core()
    for msg in (PushPull(False, (), reply=True), QueryReply("members", []), StreamError("x")):
        reply = core.handle_stream(wrap_plain("", encode_stream(msg)), ("10.0.0.9", 9), 0.0)
        assert reply is not None
        with pytest.raises(QueryError, match="unexpected message"):
            read_query_reply(reply, None, "", 0.0)
    assert core.stats["stream_rejected"] == 3 and core.stats["push_pulls"] == 0
