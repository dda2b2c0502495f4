"""Flows and flow tokens (RFC 5626 §5.2): how the edge a phone's packets arrive at names the
way back to it, inside a SIP URI that other nodes carry around (Path, Record-Route).

A *flow* is what the edge saw the phone's request come over: for UDP the source address (the
NAT's public side, as the phone itself may not know it), for TCP the connection too. The edge
puts the flow in the user part of the URI it adds (`<sip:TOKEN@edge;lr;ob>`), MACed under the
cluster's branch keys: nobody outside can make a node send to an address of their choosing,
and any node of the cluster can check a token, though only the edge can use it.

    token = base64url(mac[10] || "<transport> <host> <port> <conn>")   (no padding)

The MAC is keyed blake2b with its own personalization, so a branch MAC is never a token MAC.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import NamedTuple

from ._actions import Source
from ._streams import STREAM_TRANSPORTS

__all__ = ["Flow", "decode_token", "flow_of", "make_token"]

_MAC_SIZE = 10
_PERSON = b"sip-flow"
_TRANSPORTS = STREAM_TRANSPORTS | {"udp"}
# A token is short; anything much longer is not one of ours (and is not worth hashing).
MAX_TOKEN_LENGTH = 160


class Flow(NamedTuple):
    """The way back to a phone: the transport, the address its packets came from, and for a
    connection-oriented transport the edge's id of that connection."""

    transport: str
    host: str
    port: int
    conn: int | None = None

    @property
    def stream(self) -> bool:
        return self.transport != "udp"


def flow_of(source: Source) -> Flow:
    """The flow a request arrived over."""
    return Flow(source.transport, source.host, source.port, source.conn)


def _mac(payload: bytes, key: bytes) -> bytes:
    return hashlib.blake2b(payload, key=key[:64], digest_size=_MAC_SIZE, person=_PERSON).digest()


def make_token(flow: Flow, key: bytes) -> str:
    """The flow as a token for the user part of a SIP URI (base64url is unreserved there).
    The same flow and key make the same token: each phone's refreshes reuse it."""
    cache_key = (flow, key)
    token = _made.get(cache_key)
    if token is None:
        token = _make_token(flow, key)
        if len(_made) >= _MADE_MAX:
            _made.clear()
        _made[cache_key] = token
    return token


# Tokens made lately, by (flow, key): a phone's REGISTER refreshes come over the same flow.
_made: dict[tuple[Flow, bytes], str] = {}
_MADE_MAX = 100_000


def _make_token(flow: Flow, key: bytes) -> str:
    conn = "" if flow.conn is None else str(flow.conn)
    payload = f"{flow.transport} {flow.host} {flow.port} {conn}".encode()
    raw = _mac(payload, key) + payload
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_token(token: str, keys: list[bytes]) -> Flow | None:
    """The flow in `token` if one of `keys` made it, else None (forged, damaged, or not a
    token at all)."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) <= _MAC_SIZE or base64.urlsafe_b64encode(raw).rstrip(b"=") != token.encode():
        return None  # too short, or not in the one spelling we write (unused low bits set)
    mac, payload = raw[:_MAC_SIZE], raw[_MAC_SIZE:]
    if not any(hmac.compare_digest(mac, _mac(payload, key)) for key in keys):
        return None
    try:
        transport, host, port_text, conn_text = payload.decode("ascii").split(" ")
        port = int(port_text)
        conn = int(conn_text) if conn_text else None
    except (UnicodeDecodeError, ValueError):
        return None
    if transport not in _TRANSPORTS or not host or not 0 < port < 65_536:
        return None
    return Flow(transport, host, port, conn)
