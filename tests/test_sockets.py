"""swimthor.sockets: what the front-ends share. `is_ip` decides whether a target is sent to at
once or resolved first; it must agree with `ipaddress` on every string. Frames on the gossip
TCP port, and the port's sharing with SIP replication (`SharedPort`)."""

from __future__ import annotations

import ipaddress
from typing import cast

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from swimthor.sockets import (
    FrameError,
    SharedPort,
    StreamHandler,
    encode_frame,
    is_ip,
    read_frame,
    write_frame,
)


def _reference(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@given(
    st.ip_addresses().map(str)
    | st.lists(st.integers(0, 300).map(str), min_size=3, max_size=5).map(".".join)
    | st.lists(st.sampled_from(["0", "00", "01", "1", "255", "256", "a", ""]), min_size=4,
               max_size=4).map(".".join)
    | st.text(alphabet="0123456789abcdef.:%[]x ", max_size=20)
)  # fmt: skip
def test_is_ip_agrees_with_ipaddress(host: str) -> None:
    assert is_ip(host) == _reference(host), host


def test_is_ip_on_what_sip_targets_look_like() -> None:
    for host in ("192.0.2.7", "10.0.0.1", "::1", "2001:db8::5", "fe80::1%eth0"):
        assert is_ip(host), host
    for host in ("sip.example.com", "1.example.com", "[::1]", "192.0.2.7:5060", "1.2.3", ""):
        assert not is_ip(host), host


# ---------------------------------------------------------------- frames and the shared port


async def test_frames_round_trip_and_bad_ones_are_refused() -> None:
    left, right = trio.testing.memory_stream_pair()
    await write_frame(left, b"push-pull")
    assert await read_frame(right, 64) == b"push-pull"
    await left.send_all(encode_frame(b"x" * 100))
    with pytest.raises(FrameError, match="exceeds the limit of 64"):
        await read_frame(right, 64)
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(encode_frame(b"cut short")[:7])
    await left.aclose()
    with pytest.raises(FrameError, match="closed after 3 of 9 bytes"):
        await read_frame(right, 64)


async def test_the_shared_port_hands_a_connection_to_the_service_that_claims_it() -> None:
    port = SharedPort(limit=1)
    served: list[str] = []
    gate = trio.Event()

    async def replication(_stream: trio.abc.Stream) -> None:
        served.append("replication")
        await gate.wait()

    def claim(first: bytes, _addr: tuple[str, int]) -> StreamHandler | None:
        return replication if first.startswith(b"hello") else None

    assert port.claim(b"hello", ("192.0.2.1", 1)) is None  # no service yet
    port.add(lambda _first, _addr: None)
    port.add(claim)
    assert port.claim(b"push-pull", ("192.0.2.1", 1)) is None
    service = port.claim(b"hello", ("192.0.2.1", 1))
    assert service is replication
    stream = cast(trio.abc.Stream, None)  # the handlers here never touch it
    async with trio.open_nursery() as nursery:
        nursery.start_soon(port.serve, service, stream)
        await trio.testing.wait_all_tasks_blocked()
        assert port.active == 1
        assert await port.serve(service, stream) is False  # over the limit: refused at once
        gate.set()
    assert port.active == 0 and served == ["replication"]
