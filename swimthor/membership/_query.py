"""Client side of the read-only queries and key operations sent to any member over TCP.

Sans-IO like the core: the caller gives the wall clock (`wall_now`, seconds) that envelopes
are stamped with and checked against, and each request's nonce (`swimthor.keyring.new_nonce`).
"""

from __future__ import annotations

from typing import Any

from ..keyring import Keyring, SealError, open_frame, seal_frame
from ._core import QueryError
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
    if op not in ("install", "use", "remove"):
        raise ValueError(f"unknown key operation {op!r}")
    return seal_frame(keyring, encode_stream(KeyOp(op, key)), label, wall_now, nonce)


def read_key_op_reply(payload: bytes, keyring: Keyring | None, label: str, wall_now: float) -> None:
    msg = _read(payload, keyring, label, wall_now, 1024 * 1024)
    if not isinstance(msg, KeyOpReply):
        raise QueryError("unexpected reply to a key operation")
    if not msg.ok:
        raise QueryError(msg.message)
