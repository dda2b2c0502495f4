"""Keepalives a phone sends its edge (RFC 5626 §4.4): STUN binding requests on the SIP UDP port,
answered with the address the node saw (RFC 5389; checked against RFC 5769's test vectors), and
CRLF pings on TCP, answered with a CRLF pong. Bad STUN is dropped and the node serves on."""

from __future__ import annotations

import socket as stdsocket
import struct
import zlib

import trio
from sip_helpers import assert_serving, register, sip_node

from swimthor.sip import is_stun, stun_binding_response

LIMIT = 10
# RFC 5769 §2.2/2.3: the transaction id of the sample responses.
TXN = bytes.fromhex("b7e7a701bc34d686fa87dfae")


def binding_request(txn: bytes = TXN, attrs: bytes = b"") -> bytes:
    return struct.pack("!HHI12s", 0x0001, len(attrs), 0x2112A442, txn) + attrs


def attributes(message: bytes) -> dict[int, bytes]:
    out, at = {}, 20
    while at < len(message):
        kind, length = struct.unpack_from("!HH", message, at)
        out[kind] = message[at + 4 : at + 4 + length]
        at += 4 + length + (-length % 4)
    return out


def test_the_xor_mapped_address_is_rfc_5769s_for_ipv4_and_ipv6() -> None:
    v4 = stun_binding_response(binding_request(), "192.0.2.1", 32853)
    assert v4 is not None
    kind, length, cookie, txn = struct.unpack_from("!HHI12s", v4)
    assert (kind, cookie, txn) == (0x0101, 0x2112A442, TXN) and length == len(v4) - 20
    assert attributes(v4)[0x0020] == bytes.fromhex("0001a147e112a643")  # RFC 5769 §2.2
    v6 = stun_binding_response(binding_request(), "2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert v6 is not None
    assert attributes(v6)[0x0020] == bytes.fromhex(  # RFC 5769 §2.3
        "0002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    )


def test_the_fingerprint_is_the_last_attribute_and_checks_out() -> None:
    reply = stun_binding_response(binding_request(), "192.0.2.1", 32853, "swimthor")
    assert reply is not None
    assert reply[-8:-4] == struct.pack("!HH", 0x8028, 4)
    (crc,) = struct.unpack("!I", reply[-4:])
    assert crc == (zlib.crc32(reply[:-8]) ^ 0x5354554E) & 0xFFFFFFFF
    assert attributes(reply)[0x8022] == b"swimthor"


def test_what_is_not_a_binding_request_gets_nothing() -> None:
    good = binding_request()
    assert is_stun(good)
    for data in (
        b"OPTIONS sip:x SIP/2.0\r\n\r\n",
        b"\r\n\r\n",
        good[:19],
        good[:4] + b"\0\0\0\0" + good[8:],  # no magic cookie
        struct.pack("!HHI12s", 0x0011, 0, 0x2112A442, TXN),  # an indication
        struct.pack("!HHI12s", 0x0101, 0, 0x2112A442, TXN),  # a response
        binding_request(attrs=struct.pack("!HH", 0x8022, 40) + b"short"),  # overruns
        good + b"x",  # the length says otherwise
    ):
        assert stun_binding_response(data, "192.0.2.1", 5060) is None, data


async def test_a_stun_binding_on_the_sip_port_tells_the_phone_where_it_is_seen() -> None:
    with trio.fail_after(LIMIT):
        async with sip_node() as node:
            sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
            with sock:
                await sock.bind(("127.0.0.1", 0))
                here = sock.getsockname()
                await sock.sendto(binding_request(), node.addr)
                reply, _ = await sock.recvfrom(2048)
                port, ip = struct.unpack("!H4s", attributes(reply)[0x0020][2:8])
                assert port ^ 0x2112 == here[1]
                mapped = bytes(
                    a ^ b for a, b in zip(ip, struct.pack("!I", 0x2112A442), strict=True)
                )
                assert stdsocket.inet_ntoa(mapped) == here[0]
                # Garbage that looks like STUN is dropped; the node serves on.
                await sock.sendto(binding_request()[:4] + b"\xff" * 40, node.addr)
                await sock.sendto(struct.pack("!HHI12s", 0x0011, 0, 0x2112A442, TXN), node.addr)
            await assert_serving(node)
            assert node.server.stats["stun_bindings"] == 1
            assert node.server.stats["stun_dropped"] == 1


async def test_a_crlf_ping_on_tcp_gets_a_pong_and_the_connection_serves_on() -> None:
    with trio.fail_after(LIMIT):
        async with sip_node() as node:
            stream = await trio.open_tcp_stream(*node.addr)
            async with stream:
                await stream.send_all(b"\r\n\r\n")
                assert await stream.receive_some(16) == b"\r\n"
                await stream.send_all(b"\r\n\r\n\r\n\r\n")  # two at once: one pong
                assert await stream.receive_some(16) == b"\r\n"
                here = stream.socket.getsockname()
                # A REGISTER, then a ping behind it: the 200 and one more pong, in either
                # order (the answer is written by a task of its own).
                await stream.send_all(register(here, transport="TCP") + b"\r\n\r\n")
                got = b""
                while not (
                    b"SIP/2.0 200 OK" in got
                    and got.count(b"\r\n\r\n") >= 1
                    and (got.startswith(b"\r\n") or got.endswith(b"\r\n\r\n\r\n"))
                ):
                    got += await stream.receive_some(4096)
                assert got.lstrip(b"\r\n").startswith(b"SIP/2.0 200 OK")
            assert node.server.stats["tcp_pongs"] == 3
