"""Real `swimthor join` SIP agents on loopback for tests: start, read, kill.

Every process is started by `cluster_of` and killed by PID when the block ends, pass or fail;
every wait is bounded; nothing is sent anywhere but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from swimthor.demo import free_ports
from swimthor.membership import Keyring

DOMAIN = "example.com"


def _free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP."""
    return free_ports(1)[0]


def start_agent(
    argv: list[str], log: Path, new_ports: Callable[[], None]
) -> subprocess.Popen[bytes]:
    """Start `argv` with stderr appended to `log`. If a port picked as free was taken
    meanwhile (by another process's ephemeral port, say), `new_ports()` rewrites `argv` with
    fresh ones and the agent starts again (at most four tries)."""
    for _ in range(3):
        size = log.stat().st_size if log.exists() else 0
        p = _spawn(argv, log)
        if not _lost_a_port(p, log, size):
            return p
        new_ports()
    return _spawn(argv, log)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=out)


def _lost_a_port(p: subprocess.Popen[bytes], log: Path, since: int) -> bool:
    """Whether the agent exited at once because a port it was given is in use."""
    try:
        p.wait(0.6)
    except subprocess.TimeoutExpired:
        return False
    return "in use" in log.read_bytes()[since:].decode(errors="replace")


def swimthor(*args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swimthor", *args], capture_output=True, text=True, timeout=timeout
    )


class Node:
    def __init__(
        self,
        tmp: Path,
        name: str,
        key_file: Path,
        seed: int | None,
        dns: bool = False,
        auth: bool = False,
        extra: list[str] | None = None,
    ) -> None:
        """`extra`: more `swimthor join` flags, put before the seed address."""
        self.name = name
        self.port = _free_port()
        self.sip_port = _free_port()
        self.dns_port = _free_port() if dns else None
        self.sock = str(tmp / f"{name}.sock")
        self.log = tmp / f"{name}.log"
        self.argv = [
            sys.executable, "-m", "swimthor", "join",
            "--name", name,
            "--bind", f"127.0.0.1:{self.port}",
            "--profile", "local",
            "--key-file", str(key_file),
            "--control", self.sock,
            "--data-dir", str(tmp / name),
            "--log-format", "json",
            "--role", "sip",
            "--sip", f"127.0.0.1:{self.sip_port}",
            "--domain", DOMAIN,
            "--sip-auth", "off",  # the sipp scenarios do not authenticate
        ]  # fmt: skip
        if self.dns_port is not None:
            self.argv += ["--dns", f"127.0.0.1:{self.dns_port}"]
        if auth:
            # sipp 3.6 reads only the first challenge and knows only MD5.
            at = self.argv.index("--sip-auth")
            self.argv[at : at + 2] = ["--sip-auth", "on", "--sip-auth-algorithms", "MD5,SHA-256"]
        self.argv += extra or []
        if seed is not None:
            self.argv.append(f"127.0.0.1:{seed}")
        self.p: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the agent (again on new ports if one picked as free was taken meanwhile)."""
        self.p = start_agent(self.argv, self.log, self._new_ports)

    def _new_ports(self) -> None:
        for flag, attr in (("--bind", "port"), ("--sip", "sip_port"), ("--dns", "dns_port")):
            if flag in self.argv:
                port = _free_port()
                setattr(self, attr, port)
                self.argv[self.argv.index(flag) + 1] = f"127.0.0.1:{port}"

    def kill(self) -> None:
        assert self.p is not None
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def status(self) -> dict[str, Any]:
        r = swimthor("status", "--control", self.sock, "--format", "json")
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout))

    def members(self) -> dict[str, dict[str, Any]]:
        r = swimthor("members", "--control", self.sock, "--format", "json")
        assert r.returncode == 0, r.stderr
        return {m["name"]: m for m in json.loads(r.stdout)}

    def owners(self, aor: str) -> list[str]:
        r = swimthor("route", aor, "--control", self.sock, "--format", "json")
        assert r.returncode == 0, r.stderr
        return [o["name"] for o in json.loads(r.stdout)["owners"]]


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            if cond():
                return
        except AssertionError as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {last}")


@contextlib.contextmanager
def cluster_of(
    tmp_path: Path, n: int, dns: bool = False, auth: bool = False, extra: list[str] | None = None
) -> Iterator[dict[str, Node]]:
    """n SIP agents n0..n{n-1} (local profile, sealed; each with a DNS front-end if `dns`, and
    the `extra` join flags) converged; killed by PID at the end."""
    key_file = tmp_path / "cluster.key"
    key_file.write_text(Keyring.encode_key(Keyring.generate()) + "\n")
    key_file.chmod(0o600)
    first = Node(tmp_path, "n0", key_file, None, dns, auth, extra)
    nodes = [first]
    try:
        first.start()  # first: the others join through the port it really got
        nodes += [
            Node(tmp_path, f"n{i}", key_file, first.port, dns, auth, extra) for i in range(1, n)
        ]
        for node in nodes[1:]:
            node.start()
        wait_until(
            lambda: all(
                sum(m["state"] == "alive" and "sip" in m["tags"] for m in n.members().values())
                == len(nodes)
                for n in nodes
            ),
            30,
            f"{len(nodes)} SIP agents to converge",
        )
        yield {n.name: n for n in nodes}
    finally:
        for node in nodes:
            if node.p is not None and node.p.poll() is None:
                node.p.kill()
                node.p.wait()
