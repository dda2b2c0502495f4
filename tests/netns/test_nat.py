"""A real phone behind a real NAT (issue 15): pjsua2 in a network namespace of its own, behind a
router namespace that masquerades it onto the hosts' bridge with nftables. The phone's Via and
Contact name its private address (192.168.77.2), which no host can route to; the masquerade
lets in only answers from the address and port the phone sent to. So a call reaches the phone
only if it goes through the node it registered at (its edge), over the flow it registered on.

Three `swimthor join` hosts (tests/netns/hosts.py). The phone registers through h0; the caller
(pjsua2 too, in h2's namespace) calls through h1. Needs root, `ip`, `nft` and pjsua2; skips
with the reason otherwise. Every namespace and process made here is removed, pass or fail.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hosts import DOMAIN, SIP_PORT, Hosts, netns, unavailable, wait_until
from test_sip_fork_pjsua import INSTANCE_A, INSTANCE_B, Phone
from tls_certs import make_pki

pytestmark = [pytest.mark.slow, pytest.mark.netns]

_REASON = unavailable() or (
    None if importlib.util.find_spec("pjsua2") else "pjsua2 not installed (the test extras)"
)
_counter = itertools.count()
BOB = f"sip:bob@{DOMAIN}"
DETECT = 20.0  # generous: the local profile declares a crash in about a second
SIPS_PORT = 5061


class Nat:
    """A router namespace on the hosts' bridge, masquerading a phone namespace behind it.
    NAT number `n` has the public address .60+n on the bridge and the LAN 192.168.77+n."""

    def __init__(self, net: Any, n: int = 0) -> None:
        """`net`: the hosts' `bench/netns_processes.Netns` (loaded by path, so untyped here)."""
        self.hub = net.hub
        prefix = net.prefix
        self.n = n
        self.router = f"{prefix}nat{n}"
        self.phone = f"{prefix}phone{n}"
        self.public = f"{netns.SUBNET}.{60 + n}"
        self.lan = f"192.168.{77 + n}"
        self.address = f"{self.lan}.2"  # the phone's

    def __enter__(self) -> Nat:
        try:
            self._create()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _create(self) -> None:
        sh = netns.sh
        r, p = self.router, self.phone
        sh("ip", "netns", "add", r)
        sh("ip", "netns", "add", p)
        vnat = f"vnat{self.n}"
        sh("ip", "-n", self.hub, "link", "add", vnat, "type", "veth", "peer", "name", "eth0",
           "netns", r)  # fmt: skip
        sh("ip", "-n", self.hub, "link", "set", vnat, "master", "br0", "up")
        sh("ip", "-n", r, "addr", "add", f"{self.public}/24", "dev", "eth0")
        sh("ip", "-n", r, "link", "set", "eth0", "up")
        sh("ip", "-n", r, "link", "set", "lo", "up")
        sh("ip", "-n", r, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", p)
        sh("ip", "-n", r, "addr", "add", f"{self.lan}.1/24", "dev", "lan0")
        sh("ip", "-n", r, "link", "set", "lan0", "up")
        sh("ip", "-n", p, "addr", "add", f"{self.address}/24", "dev", "eth0")
        sh("ip", "-n", p, "link", "set", "eth0", "up")
        sh("ip", "-n", p, "link", "set", "lo", "up")
        sh("ip", "-n", p, "route", "add", "default", "via", f"{self.lan}.1")
        sh("ip", "netns", "exec", r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        script = (
            "add table ip stbnat\n"
            "add chain ip stbnat post { type nat hook postrouting priority 100; }\n"
            'add rule ip stbnat post oifname "eth0" counter masquerade\n'
        )
        sh("ip", "netns", "exec", r, netns.which("nft") or "nft", "-f", "-", input=script)

    def __exit__(self, *exc: object) -> None:
        left = netns.remove_namespaces([self.phone, self.router])
        assert left == [], f"namespaces left behind: {left}"

    def masqueraded(self) -> int:
        """Packets the router's masquerade rule has rewritten."""
        out = netns.sh("ip", "netns", "exec", self.router, netns.which("nft") or "nft",
                       "list", "chain", "ip", "stbnat", "post")  # fmt: skip
        for word, nxt in itertools.pairwise(out.split()):
            if word == "packets":
                return int(nxt)
        return 0


def _cluster(tmp_path: Path, extra: list[str]) -> Iterator[tuple[Hosts, Nat]]:
    if _REASON:
        pytest.skip(_REASON)
    tag = f"n{os.getpid():x}{next(_counter)}"
    hosts = Hosts(tmp_path, ["dc1", "dc1", "dc1"], tag=tag, extra=extra)
    # Every node offers SIP over TLS too, with a certificate for the hosts' addresses.
    pki = make_pki(tmp_path / "pki", tuple(h.addr for h in hosts.hosts))
    hosts.extra += ["--sip-tls", f"0.0.0.0:{SIPS_PORT}", "--sip-tls-cert", str(pki.cert),
                    "--sip-tls-key", str(pki.key)]  # fmt: skip
    with hosts:
        hosts.start_all()
        with Nat(hosts.net) as nat:
            yield hosts, nat


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Hosts, Nat]]:
    yield from _cluster(tmp_path, [])


@pytest.fixture
def pinging(tmp_path: Path) -> Iterator[tuple[Hosts, Nat]]:
    """The same, with the edges pinging NAT'd phones every second."""
    yield from _cluster(tmp_path, ["--sip-keepalive", "1"])


@pytest.mark.parametrize(
    ("transport", "hangs_up"),
    [
        ("udp", "caller"),
        ("udp", "phone"),
        ("tcp", "caller"),
        ("tcp", "phone"),
        ("tls", "caller"),
        ("tls", "phone"),
    ],
)
def test_a_phone_behind_nat_registers_through_one_node_and_is_called_through_another(
    cluster: tuple[Hosts, Nat], tmp_path: Path, transport: str, hangs_up: str
) -> None:
    """Registered through h0 over `transport`, called through h1, answered; then a BYE from
    the caller, or from the phone behind its NAT, ends it on both sides. Over TCP and TLS the
    phone is reachable only on the connection it opened to h0 (its listener is behind the
    NAT too); over TLS it checks h0's certificate."""
    hosts, nat = cluster
    edge, entry = hosts.hosts[0], hosts.hosts[1]
    phone_ns = ["ip", "netns", "exec", nat.phone]
    phone_hangup = ["--hangup-after", "300"] if hangs_up == "phone" else []
    port = SIPS_PORT if transport == "tls" else SIP_PORT
    if transport == "tls":
        phone_hangup += ["--ca", str(tmp_path / "pki" / "ca.pem")]
    bob = Phone(
        "bob",
        ["device", "--bind", nat.address, "--registrar", f"{edge.addr}:{port}",
         "--user", "bob", "--domain", DOMAIN, "--answer-after", "300", "--lifetime", "60",
         "--transport", transport, *phone_hangup],
        tmp_path,
        prefix=phone_ns,
    )  # fmt: skip
    alice: Phone | None = None
    try:
        registered = bob.wait_for("registered", 30)
        assert registered["code"] == 200, registered
        assert nat.address in (registered.get("contact") or ""), registered  # its private one
        assert nat.masqueraded() > 0  # its packets did go through the NAT
        alice = Phone(
            "alice",
            ["call", BOB, "--bind", hosts.hosts[2].addr, "--port", "5070",
             "--proxy", f"{entry.addr}:{SIP_PORT}", "--user", "alice", "--domain", DOMAIN,
             "--hangup-after", "500" if hangs_up == "caller" else "20000",
             "--lifetime", "60"],
            tmp_path,
            prefix=hosts.prefix(2),
        )  # fmt: skip
        incoming = bob.wait_for("incoming", 30)
        call_id = incoming["call_id"]
        bob.wait_for("confirmed", 10)  # the ACK reached it, through the NAT
        result = alice.wait_for("result", 40)
        assert result["code"] == 200 and result["confirmed"], result
        if hangs_up == "caller":
            bob.wait_received("BYE", 10, call_id)  # alice's BYE, through the NAT
        else:
            alice.wait_received("BYE", 10)  # bob's, out through its edge
        over = bob.wait_for("disconnected", 10, call_id=call_id)
        assert over["confirmed"] and over["code"] == 200, over
    finally:
        bob.kill()
        if alice is not None:
            alice.kill()


def test_two_devices_behind_two_nats_registered_through_two_nodes_both_ring(
    cluster: tuple[Hosts, Nat], tmp_path: Path
) -> None:
    """Bob's desk phone behind one NAT registers through h0, his soft phone behind another
    through h2 (distinct +sip.instance); alice calls through h1. Both ring, each over its own
    flow through its own edge; the desk phone answers, the soft phone gets the CANCEL."""
    hosts, first = cluster
    with Nat(hosts.net, 1) as second:
        desk = Phone(
            "desk",
            ["device", "--bind", first.address, "--registrar", f"{hosts.hosts[0].addr}:{SIP_PORT}",
             "--user", "bob", "--domain", DOMAIN, "--instance", INSTANCE_A,
             "--answer-after", "1000", "--lifetime", "60"],
            tmp_path,
            prefix=["ip", "netns", "exec", first.phone],
        )  # fmt: skip
        soft = Phone(
            "soft",
            ["device", "--bind", second.address, "--registrar", f"{hosts.hosts[2].addr}:{SIP_PORT}",
             "--user", "bob", "--domain", DOMAIN, "--instance", INSTANCE_B,
             "--ring-forever", "--lifetime", "60"],
            tmp_path,
            prefix=["ip", "netns", "exec", second.phone],
        )  # fmt: skip
        alice: Phone | None = None
        try:
            for device in (desk, soft):
                event = device.wait_for("registered", 30)
                assert event["code"] == 200, event
            assert first.masqueraded() > 0 and second.masqueraded() > 0
            alice = Phone(
                "alice",
                ["call", BOB, "--bind", hosts.hosts[2].addr, "--port", "5070",
                 "--proxy", f"{hosts.hosts[1].addr}:{SIP_PORT}", "--user", "alice",
                 "--domain", DOMAIN, "--hangup-after", "500", "--lifetime", "60"],
                tmp_path,
                prefix=hosts.prefix(2),
            )  # fmt: skip
            rang_desk = desk.wait_for("incoming", 30)
            soft.wait_for("incoming", 30)  # both ring
            result = alice.wait_for("result", 40)
            assert result["code"] == 200 and result["confirmed"], result
            assert result["answers_2xx"] == 1, result
            cancelled = soft.wait_for("cancelled", 20)
            assert cancelled["code"] == 487, cancelled
            desk.wait_received("BYE", 10, rang_desk["call_id"])
        finally:
            for phone in (desk, soft, *([alice] if alice else [])):
                phone.kill()


def test_the_edge_dies_the_call_is_refused_at_once_and_after_re_registering_it_reaches_the_phone(
    cluster: tuple[Hosts, Nat], tmp_path: Path
) -> None:
    """The phone's edge (h0) is killed -9: its flow died with it. A call to the phone gets a
    final answer at once (430 Flow Failed: the owner sees the Path's first hop is a member
    that failed), not after timer B. The phone re-registers through another node (as RFC 5626
    failover would: here a fresh pjsua2 process, through h2) and is called again through h1."""
    hosts, nat = cluster
    phone_ns = ["ip", "netns", "exec", nat.phone]

    def phone(name: str, via: int) -> Phone:
        return Phone(
            name,
            ["device", "--bind", nat.address, "--registrar", f"{hosts.hosts[via].addr}:{SIP_PORT}",
             "--user", "bob", "--domain", DOMAIN, "--answer-after", "200", "--lifetime", "90"],
            tmp_path,
            prefix=phone_ns,
        )  # fmt: skip

    def call(name: str) -> Phone:
        return Phone(
            name,
            ["call", BOB, "--bind", hosts.hosts[2].addr, "--port", "5070",
             "--proxy", f"{hosts.hosts[1].addr}:{SIP_PORT}", "--user", "alice", "--domain", DOMAIN,
             "--hangup-after", "300", "--lifetime", "60"],
            tmp_path,
            prefix=hosts.prefix(2),
        )  # fmt: skip

    first = phone("bob-via-h0", 0)
    phones = [first]
    try:
        assert first.wait_for("registered", 30)["code"] == 200
        hosts.kill(0)
        wait_until(
            lambda: hosts.sees(1, {"h0": "dead"}) and hosts.sees(2, {"h0": "dead"}),
            DETECT,
            "h1 and h2 to declare h0 dead",
        )
        refused = call("alice-1")
        phones.append(refused)
        result = refused.wait_for("result", 20)
        assert result["code"] == 430, result  # Flow Failed, and at once: no timer B (32 s)
        refused.kill()
        again = phone("bob-via-h2", 2)
        phones.append(again)
        assert again.wait_for("registered", 30)["code"] == 200
        answered = call("alice-2")
        phones.append(answered)
        result = answered.wait_for("result", 40)
        assert result["code"] == 200 and result["confirmed"], result
        again.wait_for("confirmed", 10)
    finally:
        for p in phones:
            p.kill()


def test_only_the_edge_pings_the_phone_and_a_phone_that_vanishes_is_unbound(
    pinging: tuple[Hosts, Nat], tmp_path: Path
) -> None:
    """With --sip-keepalive 1: the phone's edge (h0) pings it with OPTIONS and pjsua2 answers;
    no other node pings it. Then the phone is killed: after three unanswered pings its binding
    is gone from both owners (and so from `swimthor location`)."""
    hosts, nat = pinging
    bob = Phone(
        "bob",
        ["device", "--bind", nat.address, "--registrar", f"{hosts.hosts[0].addr}:{SIP_PORT}",
         "--user", "bob", "--domain", DOMAIN, "--answer-after", "200", "--lifetime", "90"],
        tmp_path,
        prefix=["ip", "netns", "exec", nat.phone],
    )  # fmt: skip
    try:
        assert bob.wait_for("registered", 30)["code"] == 200

        def keepalive(i: int) -> dict[str, int]:
            return dict(hosts.status(i)["sip"]["keepalive"])

        wait_until(lambda: keepalive(0)["udp_answers"] >= 3, 20, "h0 to have 3 pings answered")
        assert [keepalive(i)["udp_pings"] for i in (1, 2)] == [0, 0]  # one pinger: the edge
        assert [hosts.status(i)["sip"]["flows"]["udp"] for i in (0, 1, 2)] == [1, 0, 0]
        assert bob.received("OPTIONS")

        def bindings() -> list[dict[str, object]]:
            """bob's live bindings as his owners hold them (`swimthor location`, asked of h1)."""
            from swimthor.control import call

            reply = call(hosts.hosts[1].sock, "location", {"aor": BOB}, timeout=5.0)
            assert isinstance(reply, dict) and not reply["unanswered"], reply
            return list(reply["bindings"])

        (held,) = bindings()
        assert held["edge"] == f"{hosts.hosts[0].addr}:{SIP_PORT}"
        on = held["on"]
        assert isinstance(on, list) and sorted(on) == sorted(hosts.owners(1, BOB))
        bob.kill()  # gone without a word: no un-REGISTER
        wait_until(lambda: keepalive(0)["udp_lost"] == 1, 20, "h0 to give the phone up")
        wait_until(lambda: bindings() == [], 20, "both owners to drop the binding")
    finally:
        bob.kill()
