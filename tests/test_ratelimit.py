"""The per-source flood guard: the token buckets themselves, and one flooding address that
cannot starve the others on a live SIP and a live DNS server (two loopback sources,
127.0.0.2 floods while 127.0.0.3 is served)."""

from __future__ import annotations

import trio
from dnslib import DNSRecord
from sip_helpers import UdpClient, register, sip_node

from swimthor.dns import DnsServer, Zone
from swimthor.dns import Node as DnsNode
from swimthor.ratelimit import RateLimit, SourceLimiter


def test_a_source_gets_its_burst_then_its_rate() -> None:
    lim = SourceLimiter(RateLimit(rate=10, burst=5))
    assert [lim.allow("10.0.0.1", 100.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert lim.allow("10.0.0.2", 100.0)  # another source has its own bucket
    assert not lim.allow("10.0.0.1", 100.05)  # half a token
    assert lim.allow("10.0.0.1", 100.2)  # 1.5 tokens
    assert lim.dropped == 3
    total, top = lim.report()
    assert total == 3 and top == [("10.0.0.1", 3)]
    assert lim.report() == (0, [])
    # A long pause refills to the burst, not beyond.
    assert sum(lim.allow("10.0.0.1", 1000.0) for _ in range(10)) == 5


def test_off_means_off() -> None:
    lim = SourceLimiter(RateLimit())
    assert not lim.enabled
    assert all(lim.allow("10.0.0.1", 0.0) for _ in range(10_000))


def test_exempt_networks_and_trusted_members_are_never_limited() -> None:
    members = {"10.1.0.5"}
    lim = SourceLimiter(
        RateLimit(rate=1, burst=1, exempt=("192.0.2.0/24", "2001:db8::/32")),
        trusted=members.__contains__,
    )
    for src in ("192.0.2.77", "2001:db8::1", "10.1.0.5"):
        assert all(lim.allow(src, 5.0) for _ in range(100)), src
    assert sum(lim.allow("198.51.100.1", 5.0) for _ in range(100)) == 1
    assert lim.dropped == 99


def test_the_table_is_bounded_and_new_sources_share_a_bucket_when_full() -> None:
    lim = SourceLimiter(RateLimit(rate=1, burst=2), max_sources=100)
    for i in range(100):
        lim.allow(f"10.0.{i // 250}.{i % 250}", 0.0)
    # Full: a spoofing flood of new addresses shares one bucket (2 tokens between them).
    allowed = sum(lim.allow(f"172.16.{i // 250}.{i % 250}", 0.0) for i in range(1000))
    assert allowed == 2
    assert len(list(lim.sources())) <= 101
    # Once the first sources have been quiet long enough to refill, they are forgotten and
    # new sources get buckets of their own again.
    assert lim.allow("203.0.113.9", 10.0)
    assert "203.0.113.9" in set(lim.sources())


def test_bad_settings_are_named() -> None:
    for bad, message in [
        (RateLimit(rate=-1, burst=1), "must be >= 0"),
        (RateLimit(rate=5, burst=0), "rate_burst must be >= 1"),
        (RateLimit(rate=5, burst=5, exempt=("not-a-net",)), "bad network"),
    ]:
        try:
            bad.check("sip")
        except ValueError as e:
            assert message in str(e)
        else:
            raise AssertionError(f"{bad} passed")


async def test_a_sip_flood_from_one_address_does_not_starve_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Under trio's virtual clock (the limiter's clock): no time passes while the flood is
    handled, so the flooder gets its burst exactly, however busy the machine is."""
    limiter = SourceLimiter(RateLimit(rate=20, burst=20))
    with trio.fail_after(20):
        async with (
            sip_node(limiter=limiter) as node,
            UdpClient(node, "127.0.0.2") as flooder,
            UdpClient(node, "127.0.0.3") as phone,
        ):
            for i in range(2000):
                await flooder.send(register(flooder.addr, user=f"flood{i}"))
            answered_flood = 0
            while await flooder.recv(0.3) is not None:
                answered_flood += 1
            assert answered_flood == 20  # its burst; no refill while no time passes
            # Meanwhile the phone at the other address registers at its own pace.
            for i in range(10):
                await phone.send(register(phone.addr, user=f"alice{i}"))
                reply = await phone.recv(2.0)
                assert reply is not None and reply.startswith(b"SIP/2.0 200"), reply
            assert node.server.stats["rate_limited"] >= 1900


async def test_a_dns_flood_from_one_address_does_not_starve_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    zone = Zone("example.com", me="n1")
    zone.update([DnsNode("n1", "127.0.0.1", sip_port=5060, dns=True)])
    server = DnsServer(zone, ("127.0.0.1", 0), limiter=SourceLimiter(RateLimit(rate=50, burst=50)))
    query = bytes(DNSRecord.question("_sip._udp.example.com", "SRV").pack())
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.serve)
            flooder = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
            resolver = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
            await flooder.bind(("127.0.0.2", 0))
            await resolver.bind(("127.0.0.3", 0))
            for _ in range(3000):
                await flooder.sendto(query, bound)
            answers = 0
            with trio.move_on_after(0.5):
                while True:
                    await flooder.recvfrom(4096)
                    answers += 1
            assert answers == 50  # its burst; no refill while no time passes
            for _ in range(20):
                await resolver.sendto(query, bound)
                with trio.fail_after(2):
                    data, _ = await resolver.recvfrom(4096)
                assert DNSRecord.parse(data).header.rcode == 0
            assert server.stats["rate_limited"] >= 2900
            flooder.close()
            resolver.close()
            nursery.cancel_scope.cancel()


def test_the_front_ends_build_their_limits_from_the_config_and_trust_members() -> None:
    from swimthor.config import DnsConfig, SipConfig
    from swimthor.directory import MemberDirectory
    from swimthor.dns import DnsService
    from swimthor.membership import Member, State
    from swimthor.routing import RoutingTable
    from swimthor.sip import SipService

    members = [
        Member(
            f"n{i}", (f"10.0.0.{i}", 7946), "dc1", ("sip",), 1.0,
            {"sip": f"10.0.0.{i}:5060", "dns": f"10.0.0.{i}:8053"}, 1, State.ALIVE, 0.0,
        )
        for i in (1, 2)
    ]  # fmt: skip
    routing = RoutingTable(roles=None)
    routing.sync(members)
    directory = MemberDirectory()
    sip = SipService(
        SipConfig(bind=("127.0.0.1", 0), domains=["example.com"], rate_limit=5, rate_burst=5),
        name="n1",
        advertise_host="127.0.0.1",
        routing=routing,
        keyring=lambda: None,
        label="",
        directory=directory,
    )
    dns = DnsService(
        DnsConfig(bind=("127.0.0.1", 0), zone="example.com", rate_exempt=["192.0.2.0/24"]),
        name="n1",
        dc="dc1",
        advertise_host="127.0.0.1",
        routing=routing,
        replicas=2,
        directory=directory,
    )
    directory.sync(members)
    for limiter, burst in ((sip.server.limiter, 5), (dns.server.limiter, 2000)):
        assert limiter.enabled
        # A member (10.0.0.2) is never limited; a stranger gets its burst.
        assert all(limiter.allow("10.0.0.2", 0.0) for _ in range(3000))
        assert sum(limiter.allow("198.51.100.7", 0.0) for _ in range(3000)) == burst
    assert all(dns.server.limiter.allow("192.0.2.9", 0.0) for _ in range(3000))
    sip.server.close()
    dns.server.close()
