"""Local ports for agents, phones and load generators on one host, that nothing else takes.

The usual way to find a free port, binding port 0 and closing the socket, leaves a window
between the close and the moment the program it was found for binds it, and the port comes
from the kernel's ephemeral range: any process's next unbound `sendto` or `connect` may be
given it meanwhile, and a second run on the same machine may find the same port. With two
test runs side by side that happened (a sipp that exits at once on a bind error, 254).

`free_ports` closes both gaps:

- ports come from below the ephemeral range (`ip_local_port_range`), which the kernel never
  hands out on its own, so only a program that asks for that port by number can take it;
- each port is reserved for the life of this process by an exclusive lock on a file named
  after it in a directory every run shares (`/tmp/swimthor-ports`), so two runs (two
  `make test`, a `make run` beside them) never hand out one port twice. The lock goes when
  the process exits, or when it has reserved `_KEEP` more ports since (a run reuses a port
  within minutes of getting it, not hundreds of reservations later);
- a port is handed out only if both TCP and UDP can bind it on `host` now.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import tempfile
from collections import OrderedDict
from pathlib import Path

__all__ = ["free_ports"]

LOCK_DIR = Path(tempfile.gettempdir()) / "swimthor-ports"
# Below the ephemeral range, but above the ports services commonly listen on.
_LOW = 20000
# How many reservations this process holds at most (each is an open file).
_KEEP = 256

_held: OrderedDict[int, int] = OrderedDict()  # port -> the descriptor holding its lock
_rng = random.Random()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _candidates() -> range:
    top = _ephemeral_low()
    if top - _LOW >= 2048:
        return range(_LOW, top)
    return range(max(1024, top - 2048), top) if top > 3072 else range(49152, 65536)


def _bindable(host: str, port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _reserve(port: int) -> bool:
    LOCK_DIR.mkdir(mode=0o777, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(LOCK_DIR, 0o777)  # shared by every user's runs
    fd = os.open(LOCK_DIR / str(port), os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held[port] = fd
    while len(_held) > _KEEP:
        _, old = _held.popitem(last=False)
        os.close(old)
    return True


def _release(port: int) -> None:
    fd = _held.pop(port, None)
    if fd is not None:
        os.close(fd)


def free_ports(n: int, host: str = "127.0.0.1", *, block: int = 1) -> list[int]:
    """`n` distinct ports that TCP and UDP can bind on `host`, reserved for this process (see
    the module's docstring). With `block` > 1 each port P is the first of `block` such
    ports in a row, P even when `block` is even (sipp's RTP echo binds P and P + 2)."""
    span = _candidates()
    step = 2 if block % 2 == 0 else 1
    count = len(span) // step
    out: list[int] = []
    start = _rng.randrange(count)
    for i in range(count):
        if len(out) == n:
            break
        base = span.start + ((start + i) % count) * step
        ports = list(range(base, base + block))
        if ports[-1] >= span.stop or any(p in _held for p in ports):
            continue
        got: list[int] = []
        for p in ports:
            if not _reserve(p):
                break
            got.append(p)
            if not _bindable(host, p):
                break
        else:
            out.append(base)
            continue
        for p in got:
            _release(p)
    if len(out) < n:
        raise RuntimeError(f"no {n} free port(s) on {host} in {span.start}-{span.stop - 1}")
    return out
