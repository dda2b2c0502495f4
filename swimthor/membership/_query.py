"""The read-only queries and the key operations any member answers over TCP, both sides.

The client side (`query_frame`, `read_query_reply`, `key_op_frame`, `read_key_op_reply`,
used by `swimthor members/status --via` and `swimthor keys`) is sans-IO like the core: the
caller gives the wall clock (`wall_now`, seconds) that envelopes are stamped with and checked
against, and each request's nonce (`swimthor.keyring.new_nonce`). The member's side
(`serve_query`, `serve_key_op`) is a step of the core, written as a function of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..keyring import Keyring, SealError, open_frame, seal_frame
from ._events import KeyringChanged
from ._messages import (
    DecodeError,
    KeyOp,
    KeyOpReply,
    Query,
    QueryReply,
    StreamError,
    StreamMessage,
    decode_stream,
    encode_stream,
)

if TYPE_CHECKING:
    from ._core import Membership


class QueryError(Exception):
    """A `--via` query or a key operation failed; the message is one line for the operator."""


# What each query is answered with, by what it asks for.
_QUERIES: dict[str, Callable[[Membership, float], Any]] = {
    "members": lambda core, now: core.members_json(),
    "status": lambda core, now: core.status(now),
}

# The key operations, by name: install a key, use it as the primary, remove it.
_KEY_OPS: dict[str, Callable[[Keyring, bytes], None]] = {
    "install": Keyring.install,
    "use": Keyring.use,
    "remove": Keyring.remove,
}


def _read(
    payload: bytes, keyring: Keyring | None, label: str, wall_now: float, max_size: int
) -> StreamMessage:
    try:
        plain = open_frame(keyring, payload, label, wall_now)
    except SealError as e:
        raise QueryError(f"reply could not be opened ({e}): wrong key or label?") from None
    try:
        msg = decode_stream(plain, max_size)
    except DecodeError as e:
        raise QueryError(f"malformed reply: {e}") from None
    if isinstance(msg, StreamError):
        raise QueryError(f"the member refused: {msg.message}")
    return msg


def query_frame(
    what: str, keyring: Keyring | None, label: str, wall_now: float, nonce: bytes
) -> bytes:
    """The sealed request frame for a `members` or `status` query."""
    return seal_frame(keyring, encode_stream(Query(what)), label, wall_now, nonce)


def read_query_reply(
    payload: bytes,
    keyring: Keyring | None,
    label: str,
    wall_now: float,
    max_size: int = 64 * 1024 * 1024,
) -> Any:
    msg = _read(payload, keyring, label, wall_now, max_size)
    if not isinstance(msg, QueryReply):
        raise QueryError("unexpected reply to a query")
    return msg.data


def key_op_frame(
    op: str, key: bytes, keyring: Keyring | None, label: str, wall_now: float, nonce: bytes
) -> bytes:
    if op not in _KEY_OPS:
        raise ValueError(f"unknown key operation {op!r}")
    return seal_frame(keyring, encode_stream(KeyOp(op, key)), label, wall_now, nonce)


def read_key_op_reply(payload: bytes, keyring: Keyring | None, label: str, wall_now: float) -> None:
    msg = _read(payload, keyring, label, wall_now, 1024 * 1024)
    if not isinstance(msg, KeyOpReply):
        raise QueryError("unexpected reply to a key operation")
    if not msg.ok:
        raise QueryError(msg.message)


# ---------------------------------------------------------------- the member's side


def serve_query(core: Membership, msg: Query, now: float) -> StreamMessage:
    core.stats["queries"] += 1
    answer = _QUERIES.get(msg.what)
    if answer is None:
        return StreamError(f"unknown query {msg.what!r}")
    return QueryReply(msg.what, answer(core, now))


def serve_key_op(core: Membership, msg: KeyOp, now: float) -> StreamMessage:
    ring = core.keyring
    if ring is None:
        return KeyOpReply(False, "this node runs without a keyring (--insecure)")
    op = _KEY_OPS.get(msg.op)
    try:
        if op is not None:
            op(ring, msg.key)
    except ValueError as e:
        return KeyOpReply(False, str(e))
    core._emit(KeyringChanged(msg.op, Keyring.key_id(msg.key)))
    return KeyOpReply(True, "")
