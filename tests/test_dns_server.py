"""The trio DNS server on real loopback sockets: UDP, TCP per RFC 7766 (framing, reuse,
pipelining, idle and slow connections, the connection cap), and hostile input that must
neither crash nor stall it; plus a fuzz of the query path."""

from __future__ import annotations

import random
import socket

import dnslib
import pytest
import trio
from dnslib import QTYPE, RCODE, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swimthor.dns import DnsServer, DnsTransportConfig, Node, Zone


def make_zone() -> Zone:
    zone = Zone("example.com", me="n1", owners=lambda aor: ["n1", "n2"])
    zone.update(
        [
            Node("n1", "127.0.0.1", sip_port=5060, dns=True),
            Node("n2", "127.0.0.2", sip_port=5062, dns=True),
        ]
    )
    return zone


def query(name: str = "_sip._udp.example.com", qtype: str = "SRV") -> DNSRecord:
    return DNSRecord.question(name, qtype)


async def udp_ask(port: int, data: bytes, timeout: float = 2.0) -> bytes | None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.sendto(data, ("127.0.0.1", port))
        with trio.move_on_after(timeout):
            reply, _ = await sock.recvfrom(65_535)
            return bytes(reply)
    return None


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


async def read_frame(stream: trio.SocketStream) -> bytes | None:
    buf = b""
    while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
        chunk = await stream.receive_some(65_535)
        if not chunk:
            return None
        buf += chunk
    n = int.from_bytes(buf[:2], "big")
    assert len(buf) == 2 + n  # one answer per read in these tests
    return buf[2:]


class Running:
    def __init__(self, server: DnsServer, port: int) -> None:
        self.server = server
        self.port = port


async def start(nursery: trio.Nursery, config: DnsTransportConfig | None = None) -> Running:
    server = DnsServer(make_zone(), ("127.0.0.1", 0), config)
    bound = await nursery.start(server.serve)
    return Running(server, bound[1])


async def test_udp_answers_and_survives_garbage() -> None:
    async with trio.open_nursery() as nursery:
        s = await start(nursery)
        rng = random.Random(7)
        for _ in range(200):
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                await sock.sendto(junk, ("127.0.0.1", s.port))
        q = query()
        raw = await udp_ask(s.port, bytes(q.pack()))
        assert raw is not None
        r = DNSRecord.parse(raw)
        assert r.header.id == q.header.id and len(r.rr) == 2
        assert s.server.stats["handler_errors"] == 0
        nursery.cancel_scope.cancel()


async def test_tcp_reuse_and_pipelining_answer_in_order() -> None:
    async with trio.open_nursery() as nursery:
        s = await start(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", s.port)
        async with stream:
            qs = [query(), query("n2.node.example.com", "A"), query("nobody.example.com", "A")]
            # All three in one write: pipelined.
            await stream.send_all(b"".join(frame(bytes(q.pack())) for q in qs))
            buf = b""
            answers: list[DNSRecord] = []
            with trio.fail_after(5):
                while len(answers) < 3:
                    buf += await stream.receive_some(65_535)
                    while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                        n = int.from_bytes(buf[:2], "big")
                        answers.append(DNSRecord.parse(buf[2 : 2 + n]))
                        buf = buf[2 + n :]
            assert [a.header.id for a in answers] == [q.header.id for q in qs]
            assert len(answers[0].rr) == 2
            assert str(answers[1].rr[0].rdata) == "127.0.0.2"
            assert answers[2].header.rcode == RCODE.NXDOMAIN
            # The same connection keeps working (one frame split across two writes).
            data = frame(bytes(query("example.com", "SOA").pack()))
            await stream.send_all(data[:5])
            await trio.sleep(0.05)
            await stream.send_all(data[5:])
            with trio.fail_after(5):
                raw = await read_frame(stream)
            assert raw is not None and DNSRecord.parse(raw).rr[0].rtype == QTYPE.SOA
        nursery.cancel_scope.cancel()


async def test_tcp_answer_larger_than_udp_allows_is_whole() -> None:
    async with trio.open_nursery() as nursery:
        server = DnsServer(Zone("example.com", me="x"), ("127.0.0.1", 0))
        server.zone.update(
            Node(f"node{i:03d}", f"10.0.{i // 200}.{i % 200}", sip_port=5060) for i in range(80)
        )
        bound = await nursery.start(server.serve)
        raw = await udp_ask(bound[1], bytes(query().pack()))
        assert raw is not None and DNSRecord.parse(raw).header.tc == 1
        stream = await trio.open_tcp_stream("127.0.0.1", bound[1])
        async with stream:
            await stream.send_all(frame(bytes(query().pack())))
            with trio.fail_after(5):
                buf = b""
                while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
                    buf += await stream.receive_some(65_535)
            r = DNSRecord.parse(buf[2:])
            assert r.header.tc == 0 and len(r.rr) == 80
        nursery.cancel_scope.cancel()


async def closed_within(stream: trio.SocketStream, seconds: float) -> bool:
    with trio.move_on_after(seconds):
        while True:
            try:
                chunk = await stream.receive_some(100)
            except trio.BrokenResourceError:
                return True
            if not chunk:
                return True
    return False


async def test_idle_slow_and_bad_tcp_connections_are_closed_while_others_are_served() -> None:
    cfg = DnsTransportConfig(max_connections=8, tcp_idle=0.5, tcp_message_time=0.5)
    async with trio.open_nursery() as nursery:
        s = await start(nursery, cfg)
        idle = await trio.open_tcp_stream("127.0.0.1", s.port)
        slow = await trio.open_tcp_stream("127.0.0.1", s.port)
        bad = await trio.open_tcp_stream("127.0.0.1", s.port)
        data = frame(bytes(query().pack()))
        await slow.send_all(data[:7])  # a message started and never finished
        await bad.send_all(b"\x00\x05hello")  # shorter than a DNS header
        # Meanwhile UDP and a well-behaved TCP client are answered.
        assert await udp_ask(s.port, bytes(query().pack())) is not None
        good = await trio.open_tcp_stream("127.0.0.1", s.port)
        async with good:
            await good.send_all(data)
            with trio.fail_after(5):
                assert await read_frame(good) is not None
        assert await closed_within(bad, 2)
        assert await closed_within(slow, 3)
        assert await closed_within(idle, 3)
        for stream in (idle, slow, bad):
            await stream.aclose()
        stats = s.server.stats
        assert stats["tcp_bad_frames"] == 1
        assert stats["tcp_closed_slow"] >= 1 and stats["tcp_closed_idle"] >= 1
        nursery.cancel_scope.cancel()


async def test_connections_beyond_the_cap_are_refused() -> None:
    cfg = DnsTransportConfig(max_connections=2, tcp_idle=5)
    async with trio.open_nursery() as nursery:
        s = await start(nursery, cfg)
        held = [await trio.open_tcp_stream("127.0.0.1", s.port) for _ in range(2)]
        await trio.sleep(0.1)
        extra = await trio.open_tcp_stream("127.0.0.1", s.port)
        assert await closed_within(extra, 2)
        assert s.server.stats["tcp_refused"] == 1
        # UDP is not affected by the cap.
        assert await udp_ask(s.port, bytes(query().pack())) is not None
        for stream in (*held, extra):
            await stream.aclose()
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------ fuzz of the query path

ZONE = make_zone()
SEED_QUERIES = [
    bytes(query().pack()),
    bytes(query("example.com", "NAPTR").pack()),
    bytes(query("_sip._tcp.alice.example.com.aor.example.com", "SRV").pack()),
]
_edns = DNSRecord.question("example.com", "ANY")
_edns.add_ar(dnslib.EDNS0(udp_len=4096, opts=[dnslib.EDNSOption(10, b"abcdefgh")]))
SEED_QUERIES.append(bytes(_edns.pack()))


def check_answer(data: bytes, tcp: bool) -> None:
    out = ZONE.respond(data, tcp=tcp)
    assert ZONE.stats["servfail"] == 0  # every answer could be built
    if out is None:
        return
    assert out[:2] == data[:2]  # the query's ID
    assert out[2] & 0x80  # QR
    if not tcp:
        assert len(out) <= 1232
    try:
        DNSRecord.parse(data)
    except dnslib.DNSError:
        return  # dnslib refuses some legal names (non-ASCII labels): it cannot judge ours
    DNSRecord.parse(out)  # an answer to a query dnslib reads is one dnslib reads


@settings(
    # `make fuzz` (HYPOTHESIS_PROFILE=fuzz, see conftest.py): the profile's count instead.
    max_examples=settings().max_examples if settings.get_current_profile_name() == "fuzz" else 1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.binary(min_size=0, max_size=300), st.booleans())
def test_fuzz_random_bytes_never_raise(data: bytes, tcp: bool) -> None:
    check_answer(data, tcp)


@settings(
    # `make fuzz` (HYPOTHESIS_PROFILE=fuzz, see conftest.py): the profile's count instead.
    max_examples=settings().max_examples if settings.get_current_profile_name() == "fuzz" else 1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.sampled_from(SEED_QUERIES),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    st.integers(0, 400),
    st.booleans(),
)
def test_fuzz_mutated_queries_never_raise(
    seed: bytes, flips: list[tuple[int, int]], cut: int, tcp: bool
) -> None:
    data = bytearray(seed)
    for at, value in flips:
        if data:
            data[at % len(data)] = value
    check_answer(bytes(data[: max(cut, 12)]), tcp)


@pytest.mark.parametrize("qtype", ["SRV", "A", "AAAA", "NAPTR", "SOA", "NS", "ANY", "TXT", "MX"])
def test_every_type_at_every_kind_of_name_parses(qtype: str) -> None:
    for name in (
        "example.com",
        "_sip._udp.example.com",
        "n1.node.example.com",
        "node.example.com",
        "_sip._udp.x.example.com.aor.example.com",
        "missing.example.com",
        "elsewhere.org",
    ):
        check_answer(bytes(query(name, qtype).pack()), False)
