"""STUN binding on the SIP UDP port (RFC 5626 §4.4.2, RFC 5389): the keepalive a phone behind
NAT sends to its edge, which answers with the address it saw the request come from (so the
phone also learns when its NAT mapping changed).

Only the Binding request is served; anything else that looks like STUN is dropped, and nothing
that is not STUN is taken for it: a SIP message starts with a letter, a STUN message with two
zero bits, and a binding request also carries the magic cookie.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib

__all__ = ["is_stun", "stun_binding_response"]

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
FINGERPRINT = 0x8028
SOFTWARE = 0x8022
_FINGERPRINT_XOR = 0x5354554E
_HEADER = struct.Struct("!HHI12s")


def is_stun(data: bytes) -> bool:
    """Whether a datagram is a STUN message (RFC 5389 §6, and §7.3's checks)."""
    if len(data) < 20 or data[0] >= 0x40:  # the two most significant bits are zero
        return False
    length: int
    cookie: int
    _kind, length, cookie = struct.unpack_from("!HHI", data)
    return cookie == MAGIC_COOKIE and length % 4 == 0 and length == len(data) - 20


def stun_binding_response(data: bytes, host: str, port: int, software: str = "") -> bytes | None:
    """The success response to a Binding request from host:port, or None when `data` is not
    a well-formed Binding request (dropped: RFC 5389 §7.3 says to ignore what cannot be
    parsed)."""
    if not is_stun(data):
        return None
    kind, _length, _cookie, txn = _HEADER.unpack_from(data)
    if kind != BINDING_REQUEST or not _attributes_ok(data):
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    xport = port ^ (MAGIC_COOKIE >> 16)
    if ip.version == 4:
        xaddr = (int(ip) ^ MAGIC_COOKIE).to_bytes(4, "big")
        family = 0x01
    else:
        mask = int.from_bytes(struct.pack("!I", MAGIC_COOKIE) + txn, "big")
        xaddr = (int(ip) ^ mask).to_bytes(16, "big")
        family = 0x02
    attrs = _attribute(XOR_MAPPED_ADDRESS, struct.pack("!BBH", 0, family, xport) + xaddr)
    if software:
        attrs += _attribute(SOFTWARE, software.encode()[:128])
    # FINGERPRINT last (RFC 5389 §15.5): its length counts in the header it covers.
    length = len(attrs) + 8
    head = _HEADER.pack(BINDING_SUCCESS, length, MAGIC_COOKIE, txn)
    crc = (zlib.crc32(head + attrs) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
    return head + attrs + _attribute(FINGERPRINT, struct.pack("!I", crc))


def _attribute(kind: int, value: bytes) -> bytes:
    pad = -len(value) % 4
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * pad


def _attributes_ok(data: bytes) -> bool:
    """Every attribute fits the message (type, length, value padded to 4)."""
    at = 20
    while at < len(data):
        if at + 4 > len(data):
            return False
        _kind, length = struct.unpack_from("!HH", data, at)
        at += 4 + length + (-length % 4)
        if at > len(data):
            return False
    return True
