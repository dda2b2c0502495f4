"""Prometheus metrics: a live agent's /metrics scraped over HTTP and parsed with
prometheus_client's own parser; what it serves besides (404, 405, 400)."""

from __future__ import annotations

from pathlib import Path

import trio
from dnslib import DNSRecord
from prometheus_client.parser import text_string_to_metric_families

from swimthor.agent import Agent
from swimthor.config import AgentConfig, DnsConfig, SipConfig


async def http(addr: tuple[str, int], request: bytes) -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream(*addr)
    async with stream:
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some(65_536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_are_scraped_and_parse(tmp_path: Path) -> None:
    cfg = AgentConfig(
        name="solo",
        bind=("127.0.0.1", 0),
        insecure=True,
        profile="local",
        roles=["sip"],
        control=str(tmp_path / "solo.sock"),
        data_dir=str(tmp_path / "solo"),
        sip=SipConfig(bind=("127.0.0.1", 0), domains=["example.com"], auth=False),
        dns=DnsConfig(bind=("127.0.0.1", 0), zone="example.com"),
        metrics=("127.0.0.1", 0),
    )
    agent = Agent(cfg, keyring=None, handle_signals=False)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            assert agent.metrics is not None and agent.metrics.bound is not None
            addr = agent.metrics.bound
            # Some traffic to count: garbage at the gossip port.
            sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
            await sock.bind(("127.0.0.1", 0))
            assert agent.bound_addr is not None
            for _ in range(3):
                await sock.sendto(b"\x07junk", agent.bound_addr)
            # A DNS query and a SIP OPTIONS, to be counted by type and method.
            assert agent.dns is not None and agent.dns.advertised is not None
            await sock.sendto(
                bytes(DNSRecord.question("_sip._udp.example.com", "SRV").pack()),
                ("127.0.0.1", agent.dns.advertised[1]),
            )
            assert agent.sip is not None
            options = (
                b"OPTIONS sip:example.com SIP/2.0\r\n"
                b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK1\r\n"
                b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:example.com>\r\nCall-ID: m1\r\n"
                b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
            await sock.sendto(options, ("127.0.0.1", agent.sip.advertised[1]))
            sock.close()
            await trio.sleep(0.2)

            status, headers, body = await http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == 200
            assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
            got = samples(body.decode())
            assert got[("swimthor_members", (("dc", "dc1"), ("state", "alive")))] == 1.0
            assert got[("swimthor_health_score", ())] == 0.0
            assert got[("swimthor_gossip_rejected_total", (("reason", "unsealed"),))] == 3.0
            assert ("swimthor_gossip_packets_in_total", ()) in got
            assert got[("swimthor_sip_bindings", ())] == 0.0
            assert ("swimthor_sip_proxy_requests_total", ()) in got
            assert ("swimthor_dns_answers_total", (("outcome", "queries"),)) in got
            assert ("swimthor_routing_epoch", ()) in got
            assert got[("swimthor_view_agreement", (("view", "agree"),))] == 1.0
            assert got[("swimthor_dns_queries_total", (("qtype", "SRV"),))] == 1.0
            assert got[("swimthor_dns_responses_total", (("rcode", "NOERROR"),))] == 1.0
            assert got[("swimthor_sip_requests_total", (("method", "OPTIONS"),))] == 1.0
            assert got[("swimthor_sip_answers_total", (("code", "200"),))] == 1.0
            # The histogram: one datagram handled, well under a second.
            assert got[("swimthor_sip_handling_seconds_count", ())] == 1.0
            assert got[("swimthor_sip_handling_seconds_bucket", (("le", "1.0"),))] == 1.0
            assert got[("swimthor_sip_handling_seconds_bucket", (("le", "+Inf"),))] == 1.0
            assert 0 < got[("swimthor_sip_handling_seconds_sum", ())] < 1.0
            assert got[("swimthor_sip_register_seconds_count", ())] == 0.0

            assert (await http(addr, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
            assert (await http(addr, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
            assert (await http(addr, b"\x00\xff garbage\r\n\r\n"))[0] == 400
            head = await http(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n")
            assert head[0] == 200 and head[2] == b"" and int(head[1]["Content-Length"]) > 0
            assert agent.metrics.stats["scrapes"] == 2
            nursery.cancel_scope.cancel()


def test_metrics_flag_and_toml(tmp_path: Path) -> None:
    from swimthor.cli import build_agent_config, build_parser
    from swimthor.config import apply_toml, load_toml

    cfg = build_agent_config(build_parser().parse_args(["join", "--metrics", "127.0.0.1"]))
    assert cfg.metrics == ("127.0.0.1", 9464)
    path = tmp_path / "c.toml"
    path.write_text('metrics = "0.0.0.0:9100"\n')
    toml_cfg = AgentConfig()
    apply_toml(toml_cfg, load_toml(path))
    assert toml_cfg.metrics == ("0.0.0.0", 9100)
