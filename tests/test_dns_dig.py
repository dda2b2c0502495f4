"""The DNS front-end against a real client: `dig` (Debian bind9-dnsutils) asking a live
three-node cluster of real agent processes, before and after one is killed -9; and the TLS and
WebSocket records a member's tags give."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sip_agents import DOMAIN, Node, cluster_of, wait_until
from tls_certs import make_pki

from swimthor.directory import SIPS_TAG, WSS_TAG
from swimthor.ports import free_ports

pytestmark = pytest.mark.skipif(
    shutil.which("dig") is None, reason="dig is not installed (apt-get install bind9-dnsutils)"
)


def dig(node: Node, name: str, qtype: str, *extra: str) -> list[str]:
    assert node.dns_port is not None
    r = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(node.dns_port), name, qtype, "+short", "+tries=1",
         "+time=2", *extra],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return [line for line in r.stdout.splitlines() if line and not line.startswith(";")]


def dig_full(node: Node, name: str, qtype: str, *extra: str) -> str:
    assert node.dns_port is not None
    r = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(node.dns_port), name, qtype, "+tries=1", "+time=2",
         *extra],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def srv_targets(node: Node, proto: str = "udp", *extra: str) -> dict[str, int]:
    """{member name: port} of the SRV answer for _sip._<proto>.<zone>."""
    out = {}
    for line in dig(node, f"_sip._{proto}.{DOMAIN}", "SRV", *extra):
        _prio, _weight, port, target = line.split()
        out[target.split(".")[0]] = int(port)
    return out


def test_srv_naptr_a_and_per_user_answers_follow_the_live_members(tmp_path: Path) -> None:
    with cluster_of(tmp_path, 3, dns=True) as nodes:
        want = {name: n.sip_port for name, n in nodes.items()}
        # SRV over UDP and TCP, from every node: exactly the live sip members.
        for node in nodes.values():
            assert srv_targets(node) == want
            assert srv_targets(node, "tcp", "+tcp") == want

        # RFC 3263 end to end: NAPTR -> SRV -> A, as a phone would.
        n0 = nodes["n0"]
        naptr = dig(n0, DOMAIN, "NAPTR")
        assert sorted(naptr) == [
            f'10 10 "s" "SIP+D2U" "" _sip._udp.{DOMAIN}.',
            f'10 20 "s" "SIP+D2T" "" _sip._tcp.{DOMAIN}.',
        ]
        for line in naptr:
            replacement = line.split()[-1]
            for srv in dig(n0, replacement, "SRV"):
                _p, _w, port, target = srv.split()
                assert dig(n0, target, "A") == ["127.0.0.1"]
                assert int(port) in want.values()

        # The full answer: authoritative, no recursion, addresses in the additional section.
        full = dig_full(n0, f"_sip._udp.{DOMAIN}", "SRV")
        assert "flags: qr aa rd;" in full and "status: NOERROR" in full
        assert full.count("IN\tA\t127.0.0.1") == 3

        # SOA and NS: every node with a DNS front-end is a name server.
        ns = sorted(dig(n0, DOMAIN, "NS"))
        assert ns == sorted(f"{name}.node.{DOMAIN}." for name in nodes)
        assert "status: NXDOMAIN" in dig_full(n0, f"nobody.{DOMAIN}", "A")
        assert "status: REFUSED" in dig_full(n0, "example.org", "A")

        # The per-user name lists the AOR's owners in the order routing ranks them.
        for user in ("alice", "bob"):
            owners = n0.owners(f"sip:{user}@{DOMAIN}")
            answer = dig(nodes["n1"], f"_sip._udp.{user}.{DOMAIN}.aor.{DOMAIN}", "SRV")
            assert [line.split()[3].split(".")[0] for line in answer] == owners
            assert [int(line.split()[0]) for line in answer] == [10, 20]

        # A member killed -9 leaves every survivor's answers once it is declared failed
        # (the answers change at that event; the TTL bounds how long caches keep it). The wait
        # is bounded (detection on the local profile takes a few seconds); what is checked is
        # the state reached, not how long it took.
        victim = nodes["n2"]
        victim.kill()
        survivors = [nodes["n0"], nodes["n1"]]
        alive = {name: n.sip_port for name, n in nodes.items() if n is not victim}
        wait_until(
            lambda: all(srv_targets(n) == alive for n in survivors),
            30,
            "the killed member to leave the SRV answers",
        )
        for n in survivors:
            state = n.members()["n2"]["state"]
            assert state in ("dead", "suspect"), state
            assert "status: NXDOMAIN" in dig_full(n, f"n2.node.{DOMAIN}", "A") or state == (
                "suspect"
            )
        assert sorted(dig(nodes["n0"], DOMAIN, "NS")) == sorted(
            f"{name}.node.{DOMAIN}." for name in alive
        )


def test_dig_over_tcp_with_pipelined_keepalive_and_case_echo(tmp_path: Path) -> None:
    with cluster_of(tmp_path, 1, dns=True) as nodes:
        n0 = nodes["n0"]
        # +keepopen sends both queries on one TCP connection (RFC 7766 reuse).
        assert n0.dns_port is not None
        r = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(n0.dns_port), "+tcp", "+keepopen", "+short",
             f"_sip._udp.{DOMAIN}", "SRV", f"n0.node.{DOMAIN}", "A"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        lines = r.stdout.split()
        assert r.returncode == 0 and "127.0.0.1" in lines and f"n0.node.{DOMAIN}." in lines
        mixed = dig_full(n0, "_SIP._Udp.Example.COM", "SRV")
        assert "_SIP._Udp.Example.COM.\t\tIN\tSRV" in mixed
        assert "status: NOERROR" in mixed and "ANSWER: 1" in mixed


def test_dig_follows_naptr_to_tls_and_secure_websocket_srv_from_member_tags(
    tmp_path: Path,
) -> None:
    # The member announces TLS and secure WebSocket (the agent's own tags, given here as
    # --tag: DNS reads them, nothing listens there) but no plain WebSocket.
    extra = ["--tag", f"{SIPS_TAG}=127.0.0.1:15061", "--tag", f"{WSS_TAG}=127.0.0.1:15443"]
    with cluster_of(tmp_path, 1, dns=True, extra=extra) as nodes:
        n0 = nodes["n0"]
        target = f"n0.node.{DOMAIN}."
        naptr = dig(n0, DOMAIN, "NAPTR")
        assert sorted(naptr) == [
            f'10 10 "s" "SIP+D2U" "" _sip._udp.{DOMAIN}.',
            f'10 20 "s" "SIP+D2T" "" _sip._tcp.{DOMAIN}.',
            f'10 30 "s" "SIPS+D2T" "" _sips._tcp.{DOMAIN}.',
            f'10 50 "s" "SIPS+D2W" "" _sips._ws.{DOMAIN}.',
        ]
        assert dig(n0, f"_sips._tcp.{DOMAIN}", "SRV") == [f"10 100 15061 {target}"]
        assert dig(n0, f"_sips._ws.{DOMAIN}", "SRV", "+tcp") == [f"10 100 15443 {target}"]
        assert dig(n0, target, "A") == ["127.0.0.1"]
        # No member offers plain WebSocket: the name exists without records.
        nodata = dig_full(n0, f"_sip._ws.{DOMAIN}", "SRV")
        assert "status: NOERROR" in nodata and "ANSWER: 0" in nodata
        # Per user: the AOR's owner, at its TLS port.
        assert dig(n0, f"_sips._tcp.alice.{DOMAIN}.aor.{DOMAIN}", "SRV") == [f"10 0 15061 {target}"]


def test_an_agent_with_tls_and_websocket_announces_them_and_dig_finds_them(
    tmp_path: Path,
) -> None:
    """The same records, from the agent's own --sip-tls and --sip-ws (the tags it publishes
    itself), at the ports it really serves them on: a TLS client registers there."""
    import socket
    import ssl

    pki = make_pki(tmp_path / "pki")
    tls_port, ws_port = free_ports(2)
    extra = [
        "--sip-tls", f"127.0.0.1:{tls_port}", "--sip-ws", f"127.0.0.1:{ws_port}",
        "--sip-tls-cert", str(pki.cert), "--sip-tls-key", str(pki.key),
    ]  # fmt: skip
    with cluster_of(tmp_path, 1, dns=True, extra=extra) as nodes:
        n0 = nodes["n0"]
        target = f"n0.node.{DOMAIN}."
        naptr = dig(n0, DOMAIN, "NAPTR")
        assert f'10 30 "s" "SIPS+D2T" "" _sips._tcp.{DOMAIN}.' in naptr
        assert f'10 40 "s" "SIP+D2W" "" _sip._ws.{DOMAIN}.' in naptr
        assert dig(n0, f"_sips._tcp.{DOMAIN}", "SRV") == [f"10 100 {tls_port} {target}"]
        assert dig(n0, f"_sip._ws.{DOMAIN}", "SRV") == [f"10 100 {ws_port} {target}"]
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        raw = socket.create_connection(("127.0.0.1", tls_port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            local = tls.getsockname()
            tls.sendall(
                (
                    f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
                    f"Via: SIP/2.0/TLS 127.0.0.1:{local[1]};branch=z9hG4bK-dig-tls\r\n"
                    "Max-Forwards: 70\r\n"
                    f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:alice@{DOMAIN}>\r\n"
                    "Call-ID: dig-tls@x\r\nCSeq: 1 REGISTER\r\n"
                    f"Contact: <sip:alice@127.0.0.1:{local[1]};transport=tls>\r\n"
                    "Expires: 60\r\nContent-Length: 0\r\n\r\n"
                ).encode()
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = tls.recv(65536)
                assert chunk, "closed before the answer"
                answer += chunk
        assert answer.startswith(b"SIP/2.0 200 "), answer[:200]
