"""Reserved local ports (`swimthor.ports`): outside the kernel's ephemeral range, bindable,
and never handed out twice while the run that reserved them lives, whichever run asks."""

from __future__ import annotations

import socket
import subprocess
import sys

from swimthor import ports
from swimthor.ports import free_ports


def test_ports_are_free_for_tcp_and_udp_and_below_the_ephemeral_range() -> None:
    got = free_ports(20)
    assert len(set(got)) == 20
    low = ports._ephemeral_low()
    for p in got:
        assert p < low
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", p))
    # This run never hands one out twice.
    assert not set(got) & set(free_ports(20))


def test_a_block_starts_even_and_is_free_throughout() -> None:
    for base in free_ports(3, block=4):
        assert base % 2 == 0
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
        try:
            for i, s in enumerate(socks):
                s.bind(("127.0.0.1", base + i))
        finally:
            for s in socks:
                s.close()


def test_a_port_another_run_reserved_is_not_handed_out_until_that_run_ends() -> None:
    code = (
        "import sys; from swimthor.ports import free_ports; "
        "print(*free_ports(30), flush=True); sys.stdin.read()"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None
        theirs = [int(p) for p in other.stdout.readline().split()]
        assert len(theirs) == 30
        assert not any(ports._reserve(p) for p in theirs)
    finally:
        assert other.stdin is not None
        other.stdin.close()
        other.wait(timeout=10)
    # Its locks went with it.
    assert all(ports._reserve(p) for p in theirs)
