"""When the next hop cannot be reached, the caller hears so at once (issue 14): on real loopback
sockets, a call to a device whose port has nothing listening (UDP: the kernel's ICMP port
unreachable, read from the socket's error queue; TCP: connection refused) fails its branch now
instead of at timer B, 32 s later, and the caller gets a final answer, or the other device
rings. In-process node (tests/sip_helpers.py); every wait bounded; loopback only."""

from __future__ import annotations

import socket as stdsocket

import pytest
import trio
from sip_helpers import (
    DOMAIN,
    UdpClient,
    build,
    register,
    request_headers,
    sip_node,
    unique,
)

from swimthor.ports import free_ports

LIMIT = 10


def _dead_port(kind: int) -> int:
    """A loopback port with nothing bound to it, that nobody else will bind meanwhile: one
    reserved for this run, outside the ephemeral range (`swimthor.ports`)."""
    del kind  # reserved for TCP and UDP alike
    return free_ports(1)[0]


def _invite(client: UdpClient, user: str) -> bytes:
    headers = request_headers("INVITE", client.addr, user=user)
    headers = [(k, f"<sip:{user}@{DOMAIN}>" if k == "To" else v) for k, v in headers]
    headers.append(("Contact", f"<sip:caller@{client.addr[0]}:{client.addr[1]}>"))
    return build(f"INVITE sip:{user}@{DOMAIN} SIP/2.0", headers)


async def _final(client: UdpClient) -> int:
    """Statuses until the first final one (100 Trying comes first)."""
    while True:
        reply = await client.reply(timeout=5.0)
        if reply.status >= 200:
            return reply.status


async def test_a_call_to_a_udp_contact_with_no_listener_fails_at_once() -> None:
    with trio.fail_after(LIMIT):
        async with sip_node() as node, UdpClient(node) as client:
            user = unique("gone")
            dead = _dead_port(stdsocket.SOCK_DGRAM)
            ok = await client.ask(
                register(client.addr, user=user, contact=f"<sip:{user}@127.0.0.1:{dead}>")
            )
            assert ok.status == 200
            await client.send(_invite(client, user))
            # The branch's 503 (transport error), sent up as 500 (§16.7 step 6): long before
            # timer B.
            assert await _final(client) == 500
            assert node.server.stats["udp_unreachable"] >= 1
            assert node.proxy.forks.stats["branch_transport_errors"] == 1


async def test_a_call_to_a_tcp_contact_that_refuses_fails_at_once() -> None:
    with trio.fail_after(LIMIT):
        async with sip_node() as node, UdpClient(node) as client:
            user = unique("gone")
            dead = _dead_port(stdsocket.SOCK_STREAM)
            contact = f"<sip:{user}@127.0.0.1:{dead};transport=tcp>"
            ok = await client.ask(register(client.addr, user=user, contact=contact))
            assert ok.status == 200
            await client.send(_invite(client, user))
            assert await _final(client) == 500
            assert node.proxy.forks.stats["branch_transport_errors"] == 1


@pytest.mark.parametrize("dead_first", [True, False])
async def test_a_dead_device_does_not_stop_the_live_one_from_answering(dead_first: bool) -> None:
    """Either order of the branches: when the dead contact is rung first, its ICMP error is
    reported by the kernel on the NEXT sendto (the live device's INVITE), which must still go
    out (found with pjsua2 phones: the live device never rang)."""
    with trio.fail_after(LIMIT):
        async with sip_node() as node, UdpClient(node) as client, UdpClient(node) as phone:
            user = unique("two")
            dead = _dead_port(stdsocket.SOCK_DGRAM)
            registrations = [
                (f"<sip:{user}@127.0.0.1:{dead}>", client),
                (f"<sip:{user}@{phone.addr[0]}:{phone.addr[1]}>", phone),
            ]
            if dead_first:  # the most recent binding is rung first
                registrations.reverse()
            for contact, via in registrations:
                reg = register(via.addr, user=user, contact=contact)
                assert (await via.ask(reg)).status == 200
            await client.send(_invite(client, user))
            invite = await phone.reply(timeout=5.0)
            assert invite.method == "INVITE"
            # The dead branch fails at once (the kernel bounced it); the call waits for the
            # live one: the first final answer the caller gets below is that device's 200.
            while node.proxy.forks.stats["branch_transport_errors"] < 1:
                await trio.sleep(0.01)
            lines = ["SIP/2.0 200 OK"]
            raw = invite.raw.decode()
            head = raw.split("\r\n\r\n", 1)[0].split("\r\n")[1:]
            for line in head:
                name = line.split(":", 1)[0].strip().lower()
                if name in ("via", "from", "call-id", "cseq"):
                    lines.append(line)
                elif name == "to":
                    lines.append(line + ";tag=live")
            lines += [f"Contact: <sip:{user}@{phone.addr[0]}:{phone.addr[1]}>", "Content-Length: 0"]
            await phone.send(("\r\n".join(lines) + "\r\n\r\n").encode())
            assert await _final(client) == 200
