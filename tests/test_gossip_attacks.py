"""Gossip under attack: each attack is refused, counted, reported (a `Rejected` event, which
the agent logs) and changes nobody's view. Every test here fails without its defence.

Covered elsewhere, with the same bar:
- a wrong key, a wrong label, a plaintext node, and the gossip they forge:
  `test_core.test_wrong_key_or_label_cannot_join_or_change_a_view`;
- a stranger that claims a live member's name: `test_core` (name conflicts);
- oversized and malformed datagrams and frames at the codec: `test_codec`;
- a push-pull stream that never ends, and a connection flood:
  `test_runtime.test_slowloris_and_connection_flood_are_bounded`;
- key rotation across a live cluster: `test_control.test_key_rotation_through_control`.
"""

from __future__ import annotations

from corenet import CoreNet

from swimthor.keyring import new_nonce
from swimthor.membership import (
    Dead,
    Event,
    Keyring,
    MemberFailed,
    Membership,
    MemberSuspected,
    Rejected,
    State,
    Suspect,
    encode_message,
    encode_packet,
)

KEY = Keyring.generate()


WALL = 1_800_000_000.0  # the cores' wall clock is the network's virtual time plus this


def sealed_cluster(n: int) -> tuple[CoreNet, list[Membership]]:
    net = CoreNet()
    cores = [net.add(f"n{i}", keyring=Keyring([KEY]), wall_offset=WALL) for i in range(n)]
    for c in cores[1:]:
        c.join([cores[0].local.addr], net.now)
    net.run(3.0)
    assert all(c.num_live() == n for c in cores)
    return net, cores


def events_of(net: CoreNet, core: Membership) -> list[Event]:
    """The core's events since the last call (what the network collected, and any still
    queued in the core)."""
    net._flush(core)
    out = net.events[core.name]
    net.events[core.name] = []
    return out


def test_replayed_packets_are_refused_and_reported() -> None:
    net, cores = sealed_cluster(3)
    n0, n1 = cores[0], cores[1]
    captured = [
        data for src, dst, data in net.sent if src == n1.local.addr and dst == n0.local.addr
    ]
    assert len(captured) > 10
    before = {m.name: (m.state, m.incarnation) for m in n0.members()}
    for data in captured[-10:]:
        n0.receive_datagram(data, n1.local.addr, net.now)
    assert n0.stats["rejected_replay"] == 10
    assert any(isinstance(e, Rejected) and e.reason == "replay" for e in events_of(net, n0))
    assert {m.name: (m.state, m.incarnation) for m in n0.members()} == before


def test_packets_from_outside_the_window_are_refused_as_stale() -> None:
    net, cores = sealed_cluster(3)
    n0, n1 = cores[0], cores[1]
    old = [data for src, dst, data in net.sent if src == n1.local.addr and dst == n0.local.addr]
    net.run(31.0)  # virtual time moves the keyrings' wall clock too
    for data in old[:5]:
        n0.receive_datagram(data, n1.local.addr, net.now)
    assert n0.stats["rejected_stale"] == 5
    events = events_of(net, n0)
    assert any(isinstance(e, Rejected) and e.reason == "stale" for e in events)
    assert all(c.num_live() == 3 for c in cores)


def test_reports_are_rate_limited_and_carry_the_count() -> None:
    net, cores = sealed_cluster(2)
    n0 = cores[0]
    events_of(net, n0)
    for _ in range(500):
        n0.receive_datagram(b"\x02" + b"\x00" * 60, ("10.9.9.9", 1), net.now)
    reports = [e for e in events_of(net, n0) if isinstance(e, Rejected)]
    assert len(reports) == 1 and reports[0].reason == "unsealed"
    assert reports[0].addr == ("10.9.9.9", 1) and "no key opens it" in reports[0].detail
    n0.receive_datagram(b"\x02" + b"\x00" * 60, ("10.9.9.9", 1), net.now + 11)
    later = [e for e in events_of(net, n0) if isinstance(e, Rejected)]
    assert [e.count for e in later] == [500]  # the 499 held back, and this one
    assert n0.stats["rejected_seal"] == 501


def test_sealed_but_malformed_packets_are_refused_and_reported() -> None:
    net, cores = sealed_cluster(2)
    n0, n1 = cores[0], cores[1]
    ring = n1.keyring
    assert ring is not None
    for junk in (b"", b"\xff" * 40, encode_packet("n1", [b"\x83\x01"]) + b"trailing"):
        sealed = ring.seal(junk, n1.label, WALL + net.now, new_nonce())
        n0.receive_datagram(sealed, n1.local.addr, net.now)
    assert n0.stats["rejected_decode"] == 3
    assert any(isinstance(e, Rejected) and e.reason == "malformed" for e in events_of(net, n0))
    assert n0.num_live() == 2


def _forge(net: CoreNet, liar: Membership, message: bytes, *targets: Membership) -> None:
    for t in targets:
        liar._send(t.local.addr, message)
    net._flush(liar)


def test_a_member_forging_a_death_changes_nobodys_view() -> None:
    net, cores = sealed_cluster(4)
    n0, _, n2, liar = cores
    net.run(1.0)
    for c in cores:
        events_of(net, c)  # drop the join events
    # An insider (it holds the key) tells everyone that n1, alive and well, died.
    victim = net.view(n0, "n1")
    assert victim is not None
    _forge(net, liar, encode_message(Dead("n1", victim.incarnation, "n3")), n0, n2)
    net.run(3.0)
    for c in (n0, n2, liar):
        assert net.state(c, "n1") == State.ALIVE, c.name
    for c in (n0, n2):
        events = events_of(net, c)
        assert not [e for e in events if isinstance(e, MemberFailed)], c.name
        assert c.stats["deaths_doubted"] == 1
        assert any(isinstance(e, Rejected) and "death" in e.reason for e in events)


def test_a_real_death_is_still_declared_at_once() -> None:
    net, cores = sealed_cluster(4)
    net.run(1.0)
    net.crash(cores[1])
    took = net.run_until(
        lambda: all(net.state(c, "n1") == State.DEAD for c in (cores[0], cores[2], cores[3])),
        10.0,
    )
    assert took < 10.0
    assert all(c.stats["deaths_doubted"] == 0 for c in cores)


def test_a_member_forging_a_suspicion_fails_nobody() -> None:
    net, cores = sealed_cluster(4)
    n0, n1, n2, liar = cores
    net.run(1.0)
    for c in cores:
        events_of(net, c)
    victim = net.view(n0, "n1")
    assert victim is not None
    _forge(net, liar, encode_message(Suspect("n1", victim.incarnation, "n3")), n0, n1, n2)
    net.run(5.0)
    for c in cores:
        assert net.state(c, "n1") == State.ALIVE, c.name
        assert not [e for e in events_of(net, c) if isinstance(e, MemberFailed)], c.name
    assert n1.stats["refutations"] >= 1  # the accused answered for itself


def test_a_forged_death_of_a_suspect_that_refutes_is_undone() -> None:
    """Belt and braces: even a death that is believed (the victim was already suspect
    here) is refuted by the victim, so the view comes back whole."""
    net, cores = sealed_cluster(3)
    n0, _, liar = cores
    net.run(1.0)
    victim = net.view(n0, "n1")
    assert victim is not None
    _forge(net, liar, encode_message(Suspect("n1", victim.incarnation, "n2")), n0)
    _forge(net, liar, encode_message(Dead("n1", victim.incarnation, "n2")), n0)
    net.run(5.0)
    assert all(net.state(c, "n1") == State.ALIVE for c in cores)
    suspected = [e for e in events_of(net, n0) if isinstance(e, MemberSuspected)]
    assert suspected


async def test_a_live_agent_logs_what_it_refuses(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The agent turns `Rejected` events into one log line per reason, with the count."""
    import socket

    import structlog
    import trio

    from swimthor.agent import Agent
    from swimthor.config import AgentConfig

    cfg = AgentConfig(
        name="solo",
        bind=("127.0.0.1", 0),
        profile="local",
        control=str(tmp_path / "solo.sock"),
        data_dir=str(tmp_path / "solo"),
    )
    agent = Agent(cfg, keyring=Keyring([KEY]), handle_signals=False)
    with trio.fail_after(20), structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            assert agent.bound_addr is not None
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await sock.bind(("127.0.0.1", 0))
            for _ in range(50):
                await sock.sendto(b"\x02" + b"\x00" * 80, agent.bound_addr)
            for _ in range(100):  # until every datagram was read and the report logged
                if agent.core.stats["rejected_seal"] == 50 and any(
                    e.get("event") == "packets rejected" for e in logs
                ):
                    break
                await trio.sleep(0.05)
            sock.close()
            nursery.cancel_scope.cancel()
    lines = [e for e in logs if e.get("event") == "packets rejected"]
    assert lines and lines[0]["reason"] == "unsealed" and lines[0]["log_level"] == "warning"
    assert lines[0]["last_from"].startswith("127.0.0.1:")
    assert agent.core.stats["rejected_seal"] == 50
