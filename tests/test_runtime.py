"""The trio runtime around real membership cores, on real loopback sockets.

Rules for these tests (after trio-websocket's):
- every test is wrapped in an absolute `trio.fail_after`, so a hang fails instead of stalling;
- sockets are real (127.0.0.1, port 0); nodes use the `local` profile, so convergence takes
  milliseconds and a failure or leave is seen within about a second;
- hostile peers are plain stdlib/trio sockets doing what an attacker would: garbage datagrams,
  garbage frames, a huge length, one byte and then silence, too many connections.
"""

from __future__ import annotations

import errno
import random
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest
import trio
from memnet import MemoryNetwork

import swimthor.membership.runtime as runtime_module
from bench._procs import trio_wait_until as wait_for
from swimthor.config import PROFILES, MembershipConfig, replace
from swimthor.keyring import Keyring
from swimthor.membership import Event, MemberJoined, Membership, QueryError, State
from swimthor.membership.runtime import MembershipRuntime, query
from swimthor.sockets import BindError, FrameError, bind_sockets, encode_frame, read_frame

LOCAL = PROFILES["local"]
LOOPBACK = ("127.0.0.1", 0)


class Node:
    def __init__(self, core: Membership, runtime: MembershipRuntime) -> None:
        self.core = core
        self.runtime = runtime

    @property
    def addr(self) -> tuple[str, int]:
        assert self.runtime.bound_addr is not None
        return self.runtime.bound_addr

    def alive(self) -> set[str]:
        return {m.name for m in self.core.members() if m.state == State.ALIVE}

    def state_of(self, name: str) -> State | None:
        m = self.core.member(name)
        return m.state if m is not None else None


@asynccontextmanager
async def cluster(
    n: int,
    *,
    config: MembershipConfig = LOCAL,
    keyrings: list[Keyring | None] | None = None,
    join: bool = True,
    prefix: str = "n",
    net: MemoryNetwork | None = None,
) -> AsyncIterator[list[Node]]:
    """n nodes on loopback (or on the in-memory `net`, for tests under `autojump_clock`),
    each joined through the first; cancelled on exit."""
    async with trio.open_nursery() as nursery:
        nodes: list[Node] = []
        for i in range(n):
            sockets = bind_sockets(LOOPBACK) if net is None else None
            transport = net.transport() if net is not None else None
            addr = sockets.addr if sockets is not None else transport.addr  # type: ignore[union-attr]
            core = Membership(
                name=f"{prefix}{i}",
                addr=addr,
                config=config,
                rng=random.Random(i),
                now=trio.current_time(),
                keyring=keyrings[i] if keyrings else None,
            )
            runtime = MembershipRuntime(
                core, LOOPBACK, config, sockets=sockets, transport=transport
            )
            await nursery.start(runtime.serve)
            nodes.append(Node(core, runtime))
        if join:
            for node in nodes[1:]:
                node.core.join([nodes[0].addr], trio.current_time())
                node.runtime.wake()
        yield nodes
        nursery.cancel_scope.cancel()


async def keeps_gossiping(node: Node, packets: int = 5) -> None:
    """Come back once the node has opened `packets` more gossip packets: it is still serving
    (what a sleep followed by a check would only hope)."""
    start = opened_by(node.core)
    await wait_for(lambda: opened_by(node.core) >= start + packets)


def _assert_no_core_errors(nodes: list[Node]) -> None:
    for node in nodes:
        assert node.runtime.stats["core_errors"] == 0


# ---------------------------------------------------------------- binding


async def test_bind_port_zero_gives_one_port_for_udp_and_tcp() -> None:
    s = bind_sockets(LOOPBACK)
    try:
        assert s.addr[1] != 0
        assert s.udp.getsockname()[1] == s.tcp.getsockname()[1] == s.addr[1]
    finally:
        s.close()


async def test_bind_in_use_is_a_clear_oserror() -> None:
    s = bind_sockets(LOOPBACK)
    try:
        with pytest.raises(BindError) as info:
            bind_sockets(s.addr)
        assert isinstance(info.value, OSError)
        assert str(info.value) == f"address 127.0.0.1:{s.addr[1]} in use"
        assert info.value.errno == errno.EADDRINUSE
    finally:
        s.close()


async def test_serve_reports_bind_error_before_started() -> None:
    s = bind_sockets(LOOPBACK)
    try:
        core = Membership(
            name="x", addr=s.addr, config=LOCAL, rng=random.Random(1), now=trio.current_time()
        )
        runtime = MembershipRuntime(core, s.addr, LOCAL)
        with trio.fail_after(5), pytest.raises(BindError, match="in use"):
            await runtime.serve()
    finally:
        s.close()


# ---------------------------------------------------------------- the protocol over sockets


async def test_three_nodes_converge(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(10):
        async with cluster(3, net=MemoryNetwork()) as nodes:
            await wait_for(lambda: all(node.alive() == {"n0", "n1", "n2"} for node in nodes))
            # keep running for a few probe rounds: still converged, nothing suspected
            await trio.sleep(0.6)
            assert all(node.alive() == {"n0", "n1", "n2"} for node in nodes)
            assert all(node.runtime.stats["datagrams_sent"] > 0 for node in nodes)
            _assert_no_core_errors(nodes)


async def test_sealed_cluster_converges_and_a_stranger_stays_out(
    autojump_clock: trio.abc.Clock,
) -> None:
    key = Keyring.generate()
    rings: list[Keyring | None] = [Keyring([key]), Keyring([key]), Keyring([Keyring.generate()])]
    with trio.fail_after(10):
        async with cluster(3, keyrings=rings, net=MemoryNetwork()) as nodes:
            await wait_for(lambda: nodes[0].alive() == nodes[1].alive() == {"n0", "n1"})
            await trio.sleep(0.8)  # the stranger keeps trying (join retries) meanwhile
            assert nodes[0].alive() == nodes[1].alive() == {"n0", "n1"}
            assert nodes[0].core.member("n2") is None
            assert nodes[2].alive() == {"n2"}
            assert nodes[0].core.stats["rejected_seal"] > 0
            _assert_no_core_errors(nodes)


def opened_by(core: Membership) -> int:
    """Packets a core took in and opened."""
    stats = core.stats
    refused = (
        stats["rejected_seal"]
        + stats["rejected_stale"]
        + stats["rejected_replay"]
        + stats["rejected_decode"]
    )
    return stats["packets_in"] - refused


async def test_a_cut_off_member_is_declared_failed_and_rejoins_once_healed(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Failure detection through the real runtimes, on trio's clock alone: a member cut off
    from the network is suspected and declared failed by the others; healed, it refutes
    and is alive everywhere again."""
    net = MemoryNetwork()
    with trio.fail_after(120):
        async with cluster(4, net=net) as nodes:
            names = {"n0", "n1", "n2", "n3"}
            await wait_for(lambda: all(node.alive() == names for node in nodes))
            net.cut(nodes[3].addr)
            gone = (State.DEAD, State.LEFT)
            await wait_for(lambda: all(node.state_of("n3") in gone for node in nodes[:3]))
            assert all(node.alive() == names - {"n3"} for node in nodes[:3])
            net.heal(nodes[3].addr)
            await wait_for(lambda: all(node.alive() == names for node in nodes))
            assert net.sent > 0
            _assert_no_core_errors(nodes)


async def test_the_cores_wall_clock_follows_a_step_of_the_hosts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sealed core stamps and checks envelopes on trio's clock plus `wall_offset`; the
    runtime sets that offset from the host's clock and moves it when the host's clock steps
    (NTP, an operator), so a stepped host seals what its peers' clocks accept."""
    key = Keyring.generate()
    rings: list[Keyring | None] = [Keyring([key]), Keyring([key])]
    with trio.fail_after(10):
        async with cluster(2, keyrings=rings) as nodes:
            await wait_for(lambda: nodes[0].alive() == nodes[1].alive() == {"n0", "n1"})
            core = nodes[0].core

            def offset_is(wall: float) -> bool:
                return abs(core.wall_offset - (wall - trio.current_time())) < 0.5

            assert offset_is(time.time())  # the core was built with none: the runtime's
            step = 3600.0
            real = time.time
            monkeypatch.setattr(runtime_module, "time", SimpleNamespace(time=lambda: real() + step))
            nodes[0].runtime.wake()
            await wait_for(lambda: offset_is(real() + step))
            # Both runtimes read the one (patched) host clock: once both followed it, what
            # either seals the other opens again (an hour is far outside the replay window).
            peer = nodes[1].core
            await wait_for(lambda: abs(peer.wall_offset - core.wall_offset) < 0.5)
            opened = opened_by(peer)
            await wait_for(lambda: opened_by(peer) >= opened + 5)
            monkeypatch.setattr(runtime_module, "time", SimpleNamespace(time=real))
            nodes[0].runtime.wake()
            await wait_for(lambda: offset_is(real()))
            _assert_no_core_errors(nodes)


async def test_insecure_and_sealed_do_not_mix(autojump_clock: trio.abc.Clock) -> None:
    rings: list[Keyring | None] = [None, Keyring([Keyring.generate()])]
    with trio.fail_after(10):
        async with cluster(2, keyrings=rings, net=MemoryNetwork()) as nodes:
            await trio.sleep(0.5)
            assert nodes[0].alive() == {"n0"}
            assert nodes[1].alive() == {"n1"}


async def test_leave_is_seen_as_left(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(10):
        async with cluster(3, net=MemoryNetwork()) as nodes:
            await wait_for(lambda: all(len(node.alive()) == 3 for node in nodes))
            assert await nodes[2].runtime.leave(2.0)
            await wait_for(lambda: all(node.state_of("n2") == State.LEFT for node in nodes[:2]))


async def test_a_timer_that_stays_due_does_not_spin(autojump_clock: trio.abc.Clock) -> None:
    # After leave() and leave_propagate_time, the core's get_timer() stays in the past
    # (reported to the core's author); the driver must not turn that into a busy loop.
    with trio.fail_after(10):
        async with cluster(1, join=False, net=MemoryNetwork()) as (n0,):
            calls = 0
            handle_timer = n0.core.handle_timer

            def counting(now: float) -> None:
                nonlocal calls
                calls += 1
                handle_timer(now)

            n0.core.handle_timer = counting  # type: ignore[method-assign]
            assert await n0.runtime.leave(2.0)
            await trio.sleep(LOCAL.leave_propagate_time + 0.5)
            calls = 0
            await trio.sleep(0.5)
            assert calls < 200


async def test_subscribers_get_every_event_and_a_full_one_drops(
    autojump_clock: trio.abc.Clock,
) -> None:
    net = MemoryNetwork()
    with trio.fail_after(10):
        async with cluster(1, join=False, net=net) as (n0,):
            roomy = n0.runtime.subscribe()
            tiny = n0.runtime.subscribe(max_buffer=1)
            async with cluster(2, join=False, prefix="m", net=net) as others:
                for other in others:
                    other.core.join([n0.addr], trio.current_time())
                    other.runtime.wake()
                await wait_for(lambda: len(n0.alive()) == 3)
                await wait_for(lambda: n0.runtime.stats["subscriber_dropped"] > 0)
                seen: list[Event] = []
                while True:
                    try:
                        seen.append(roomy.receive_nowait())
                    except trio.WouldBlock:
                        break
                joined = {e.member.name for e in seen if isinstance(e, MemberJoined)}
                assert joined == {"m0", "m1"}
                assert tiny.receive_nowait() is not None


# ---------------------------------------------------------------- hostile peers


def _garbage_udp(addr: tuple[str, int], payloads: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for p in payloads:
            s.sendto(p, addr)


async def test_garbage_datagrams_are_dropped_and_counted() -> None:
    with trio.fail_after(10):
        async with cluster(2) as nodes:
            await wait_for(lambda: all(len(node.alive()) == 2 for node in nodes))
            before = nodes[0].core.stats["rejected_seal"] + nodes[0].core.stats["rejected_decode"]
            garbage = [b"", b"\x00", b"\x00\x00\xff\xff", b"\x01" * 40, b"\x00\x00" + b"\xff" * 60]
            _garbage_udp(nodes[0].addr, garbage)
            await wait_for(
                lambda: (
                    nodes[0].core.stats["rejected_seal"] + nodes[0].core.stats["rejected_decode"]
                    >= before + len(garbage) - 1
                )
            )
            await keeps_gossiping(nodes[0])
            assert all(len(node.alive()) == 2 for node in nodes)
            _assert_no_core_errors(nodes)


async def test_inbound_queue_drops_when_full() -> None:
    config = replace(LOCAL, inbound_queue_size=4)
    with trio.fail_after(10):
        async with cluster(1, config=config, join=False) as (n0,):
            # sent before the runtime runs again, so they are all waiting in the kernel
            flood = 150
            _garbage_udp(n0.addr, [b"\x00\x00junk"] * flood)
            stats = n0.runtime.stats
            await wait_for(lambda: stats["datagrams_received"] >= flood)
            # the driver has taken what it queued: fed to the core or dropped
            await wait_for(
                lambda: (
                    n0.core.stats["packets_in"] + stats["inbound_dropped"]
                    >= stats["datagrams_received"]
                )
            )
            fed = n0.core.stats["packets_in"]
            # everything read was either queued (then fed to the core) or dropped
            assert fed + stats["inbound_dropped"] == stats["datagrams_received"] == flood
            # read in one burst into a queue of 4: all but a handful dropped
            assert stats["inbound_dropped"] >= flood - 16
            # and the node still works: it answers a datagram-borne probe from a new node
            async with cluster(1, join=False, prefix="late") as (late,):
                late.core.join([n0.addr], trio.current_time())
                late.runtime.wake()
                await wait_for(lambda: len(n0.alive()) == 2)


async def _tcp(addr: tuple[str, int]) -> trio.SocketStream:
    return await trio.open_tcp_stream(*addr)


async def test_garbage_frames_and_huge_length_do_not_hurt() -> None:
    config = replace(LOCAL, tcp_timeout=0.5)
    with trio.fail_after(10):
        async with cluster(2, config=config) as nodes:
            target = nodes[0]
            await wait_for(lambda: all(len(node.alive()) == 2 for node in nodes))
            # a frame in no known envelope: closed without a reply
            s = await _tcp(target.addr)
            await s.send_all(encode_frame(b"\x07garbage"))
            with pytest.raises(FrameError):
                await read_frame(s, 1 << 20)
            await s.aclose()
            # a plaintext envelope around garbage: an error reply, then closed
            s = await _tcp(target.addr)
            await s.send_all(encode_frame(b"\x00\x00garbage"))
            assert await read_frame(s, 1 << 20)
            await s.aclose()
            # a frame announcing 4 GiB: closed at once, nothing allocated
            s = await _tcp(target.addr)
            await s.send_all(b"\xff\xff\xff\xff" + b"x" * 100)
            assert await _drain(s) == b""
            await s.aclose()
            # a frame cut short
            s = await _tcp(target.addr)
            await s.send_all(b"\x00\x00\x01\x00abc")
            await s.send_eof()
            assert await _drain(s) == b""
            await s.aclose()
            await wait_for(lambda: target.runtime.stats["tcp_errors"] >= 2)
            await keeps_gossiping(target)
            assert all(len(node.alive()) == 2 for node in nodes)
            _assert_no_core_errors(nodes)


async def _drain(s: trio.SocketStream) -> bytes:
    out = b""
    try:
        while chunk := await s.receive_some(65536):
            out += chunk
    except trio.BrokenResourceError:
        pass
    return out


async def test_slowloris_and_connection_flood_are_bounded() -> None:
    config = replace(LOCAL, tcp_timeout=0.5)
    with trio.fail_after(10):
        async with cluster(2, config=config) as nodes:
            target = nodes[0]
            await wait_for(lambda: all(len(node.alive()) == 2 for node in nodes))
            # 70 connections sending one byte each and then nothing
            idle: list[trio.SocketStream] = []
            for _ in range(70):
                s = await _tcp(target.addr)
                await s.send_all(b"\x00")
                idle.append(s)
            await wait_for(lambda: target.runtime.stats["tcp_rejected"] >= 6)
            # the gossip (UDP) side keeps working meanwhile
            await keeps_gossiping(target)
            assert all(len(node.alive()) == 2 for node in nodes)
            # the slow ones are cut off after tcp_timeout; then new connections are served
            await wait_for(lambda: target.runtime.stats["tcp_errors"] >= 64)
            for s in idle:
                assert await _drain(s) == b""
                await s.aclose()
            assert target.runtime.stats["tcp_errors"] >= 64
            assert target.runtime._tcp_active == 0
            await _assert_query_works(target)
            _assert_no_core_errors(nodes)


async def _assert_query_works(node: Node) -> None:
    reply = await query(node.addr, "members", node.core.keyring, node.core.label, 2.0)
    assert {m["name"] for m in reply} >= {node.core.name}


# ---------------------------------------------------------------- client helpers


async def test_query_members_and_status() -> None:
    key = Keyring.generate()
    rings: list[Keyring | None] = [Keyring([key]), Keyring([key])]
    with trio.fail_after(10):
        async with cluster(2, keyrings=rings) as nodes:
            await wait_for(lambda: all(len(node.alive()) == 2 for node in nodes))
            members = await query(nodes[1].addr, "members", Keyring([key]), "", 2.0)
            assert sorted(m["name"] for m in members) == ["n0", "n1"]
            status = await query(nodes[1].addr, "status", Keyring([key]), "", 2.0)
            assert status["name"] == "n1"
            with pytest.raises(QueryError, match="wrong key or label"):
                await query(nodes[1].addr, "members", Keyring([Keyring.generate()]), "", 2.0)


async def test_query_refused_is_one_line() -> None:
    s = bind_sockets(LOOPBACK)
    addr = s.addr
    s.close()
    with trio.fail_after(5), pytest.raises(QueryError) as info:
        await query(addr, "members", None, "", 2.0)
    assert str(info.value) == f"no answer from 127.0.0.1:{addr[1]}: connection refused"


async def test_key_op_all_installs_everywhere() -> None:
    key = Keyring.generate()
    rings: list[Keyring | None] = [Keyring([key]) for _ in range(3)]
    new = Keyring.generate()
    with trio.fail_after(10):
        async with cluster(3, keyrings=rings) as nodes:
            await wait_for(lambda: all(len(node.alive()) == 3 for node in nodes))
            ring0 = nodes[0].core.keyring
            assert ring0 is not None
            ring0.install(new)
            result = await nodes[0].runtime.key_op_all("install", new)
            assert result == {"n1": None, "n2": None}
            for node in nodes:
                assert node.core.keyring is not None
                assert new in node.core.keyring.keys
            result = await nodes[0].runtime.key_op_all("remove", Keyring.generate())
            assert set(result) == {"n1", "n2"}
            assert all(err for err in result.values())


def test_bind_accepts_a_host_name() -> None:
    bound = bind_sockets(("localhost", 0))
    try:
        assert bound.addr[0] in ("127.0.0.1", "::1") and bound.addr[1] > 0
    finally:
        bound.close()
