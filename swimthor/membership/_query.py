"""Client side of the read-only queries and key operations sent to any member over TCP."""

from __future__ import annotations

from typing import Any

from ..keyring import Keyring, SealError, unwrap_plain, wrap_plain
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


def _seal(data: bytes, keyring: Keyring | None, label: str) -> bytes:
    return keyring.seal(data, label) if keyring is not None else wrap_plain(label, data)


def _read(payload: bytes, keyring: Keyring | None, label: str, max_size: int) -> StreamMessage:
    try:
        plain = (
            keyring.open(payload, label) if keyring is not None else unwrap_plain(label, payload)
        )
    except SealError as e:
        raise QueryError(f"reply could not be opened ({e}): wrong key or label?") from None
    try:
        msg = decode_stream(plain, max_size)
    except DecodeError as e:
        raise QueryError(f"malformed reply: {e}") from None
    if isinstance(msg, StreamError):
        raise QueryError(f"the member refused: {msg.message}")
    return msg


def query_frame(what: str, keyring: Keyring | None, label: str) -> bytes:
    """The sealed request frame for a `members` or `status` query."""
    return _seal(encode_stream(Query(what)), keyring, label)


def read_query_reply(
    payload: bytes, keyring: Keyring | None, label: str, max_size: int = 64 * 1024 * 1024
) -> Any:
    msg = _read(payload, keyring, label, max_size)
    if not isinstance(msg, QueryReply):
        raise QueryError("unexpected reply to a query")
    return msg.data


def key_op_frame(op: str, key: bytes, keyring: Keyring | None, label: str) -> bytes:
    if op not in ("install", "use", "remove"):
        raise ValueError(f"unknown key operation {op!r}")
    return _seal(encode_stream(KeyOp(op, key)), keyring, label)


def read_key_op_reply(payload: bytes, keyring: Keyring | None, label: str) -> None:
    msg = _read(payload, keyring, label, 1024 * 1024)
    if not isinstance(msg, KeyOpReply):
        raise QueryError("unexpected reply to a key operation")
    if not msg.ok:
        raise QueryError(msg.message)
