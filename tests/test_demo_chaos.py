"""`swimthor demo --chaos` under a pseudo-terminal for a bounded time: nodes are crashed and
restarted on a timer, and the live view says when each failure was detected, where bob's
calls went, and when the node took its place back."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def test_demo_chaos_under_a_terminal() -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "swimthor", "demo", "--nodes", "3", "--chaos", "2",
         "--duration", "9"],
        stdin=slave, stdout=slave, stderr=slave, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 40
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed: the demo has exited
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = out.decode(errors="replace")
    assert code == 0, text[-2000:]
    assert "\x1b[H\x1b[2J" in text  # a terminal: redrawn in place
    assert "chaos (a node killed every 2 s" in text
    assert "killed node" in text
    assert "node1 declared node" in text and " dead after " in text
    assert "took its place back after" in text
    assert "stopping: every node leaves the cluster" in text
