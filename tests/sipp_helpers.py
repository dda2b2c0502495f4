"""sipp (Debian sip-tester) for the interop tests: run it, start it in the background, read what
it did (exit status, final statistics, the messages it sent and received).

Every sipp is started by a `Sipp` and killed by PID when the test ends (`Sipp.close`), pass
or fail; every run and every wait is bounded; nothing is sent anywhere but 127.0.0.1.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/_procs.py
from sip_agents import _free_port

from bench._procs import ProcessExited, wait_until
from swimthor.ports import free_ports

SCENARIOS = Path(__file__).parent.parent / "swimthor" / "sip" / "scenarios"

# The final statistics read from sipp's -trace_stat file, by the name used here.
STATS = {
    "created": "TotalCallCreated",
    "ok": "SuccessfulCall(C)",
    "failed": "FailedCall(C)",
    "retrans": "Retransmissions(C)",
    "unexpected": "FailedUnexpectedMessage(C)",
    "recv_timeouts": "FailedTimeoutOnRecv(C)",
    "dead_call_msgs": "DeadCallMsgs(C)",
    "out_of_call_msgs": "OutOfCallMsgs(C)",
}


class Sipp:
    """sipp processes of one test, killed by PID at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def users(self, name: str, users: list[str]) -> Path:
        path = self.tmp / name
        path.write_text("SEQUENTIAL\n" + "".join(f"{u}\n" for u in users))
        return path

    def run(self, *args: str, timeout: float = 60) -> dict[str, int]:
        """Run sipp to its end; return the final statistics it wrote."""
        stat = self.tmp / f"stat-{time.monotonic_ns()}.csv"
        argv = ["sipp", *args, "-nostdin", "-trace_stat", "-stf", str(stat), "-fd", "1"]
        p = subprocess.Popen(argv, cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(p)
        try:
            p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError(f"sipp {args} did not finish in {timeout} s") from None
        return last_stats(stat) | {"exit": p.returncode}

    def background(self, *args: str) -> subprocess.Popen[bytes]:
        """Start sipp in the background with `args`; when they name a local port (`-p`), as a
        UAS's do, return once sipp has bound it (it answers from then on)."""
        p = subprocess.Popen(
            ["sipp", *args, "-nostdin"],
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(p)
        if "-p" in args:
            wait_bound(p, int(args[args.index("-p") + 1]), f"sipp {' '.join(args)}")
        return p

    def start(
        self, name: str, *args: str, port: int, limit: float = 30, listening: bool = True
    ) -> SippProcess:
        """Start sipp in the background as `name` on UDP `port` (its -p), with private control
        and media ports, a global -timeout of `limit` s that counts as a failure, and its
        statistics, messages and errors traced to files named after `name`. With `listening`
        (a UAS), return once the port is bound."""
        run = SippProcess(self.tmp, name)
        argv = [
            "sipp", *args,
            "-i", "127.0.0.1", "-p", str(port),
            "-cp", str(_free_port()), "-mp", str(free_media_port()),
            "-nostdin",
            "-timeout", f"{int(limit)}s", "-timeout_error",
            "-trace_stat", "-stf", str(run.stat), "-fd", "1",
            "-trace_msg", "-message_file", str(run.messages_file),
            "-trace_err", "-error_file", str(run.errors_file),
        ]  # fmt: skip
        with open(run.screen, "wb") as out:
            run.p = subprocess.Popen(argv, cwd=self.tmp, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(run.p)
        if listening:
            wait_bound(run.p, port, f"sipp {name}", run.log)
        return run

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@dataclass(frozen=True)
class Message:
    """One SIP message sipp sent or received, as its -trace_msg file shows it."""

    at: datetime
    sent: bool
    first_line: str
    headers: dict[str, list[str]]  # lower-case name -> values in order

    @property
    def method(self) -> str:
        """The request's method, or the CSeq method a response answers."""
        return self.header("cseq").split()[-1]

    @property
    def status(self) -> int | None:
        if not self.first_line.startswith("SIP/2.0 "):
            return None
        return int(self.first_line.split()[1])

    @property
    def request(self) -> str | None:
        return None if self.first_line.startswith("SIP/2.0 ") else self.first_line.split()[0]

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower(), [])
        return values[0] if values else ""

    @property
    def to_tag(self) -> str | None:
        m = re.search(r";\s*tag=([^;,\s>]+)", self.header("to"))
        return m.group(1) if m else None

    @property
    def branch(self) -> str | None:
        m = re.search(r";\s*branch=([^;,\s]+)", self.header("via"))
        return m.group(1) if m else None


class SippProcess:
    """A sipp started by `Sipp.start`."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.name = name
        self.stat = tmp / f"{name}.stat.csv"
        self.messages_file = tmp / f"{name}.messages.log"
        self.errors_file = tmp / f"{name}.errors.log"
        self.screen = tmp / f"{name}.screen.log"
        self.p: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def wait(self, timeout: float) -> dict[str, int]:
        """Wait (at most `timeout` s, then kill it and fail) for sipp to end; return its exit
        status ("exit") and final statistics."""
        assert self.p is not None
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError(f"sipp {self.name} did not end in {timeout} s") from None
        return last_stats(self.stat) | {"exit": self.p.returncode}

    def messages(self) -> list[Message]:
        return read_messages(self.messages_file) if self.messages_file.exists() else []

    def received(self, first_word: str) -> list[Message]:
        """What it received whose first line starts with `first_word` (a method, or "SIP/2.0")."""
        return [m for m in self.messages() if not m.sent and m.first_line.startswith(first_word)]

    def sent(self, first_word: str) -> list[Message]:
        return [m for m in self.messages() if m.sent and m.first_line.startswith(first_word)]

    def log(self) -> str:
        """The end of its screen and error output, for assertion messages."""
        text = ""
        for f in (self.screen, self.errors_file):
            if f.exists():
                text += f.read_text(errors="replace")[-1500:]
        return text


def last_stats(path: Path) -> dict[str, int]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    head, last = rows[0], rows[-1]
    return {k: int(last[head.index(v)]) for k, v in STATS.items() if v in head}


_ENTRY = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)$")


def read_messages(path: Path) -> list[Message]:
    """The messages of a sipp -trace_msg file, in order. Each is a line of dashes with the
    local time, "UDP message sent (N bytes):" or "UDP message received [N] bytes :", and
    the message. (sipp also writes a copy of an unexpected message, under a line of dashes
    without a time: not a message of its own, left out.)"""
    out: list[Message] = []
    lines = path.read_text(errors="replace").splitlines()
    i = 0
    while i < len(lines):
        m = _ENTRY.match(lines[i])
        if m is None or i + 1 >= len(lines) or " message " not in lines[i + 1]:
            i += 1
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
        sent = " message sent " in lines[i + 1]
        i += 2
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines):
            break
        first = lines[i].strip()
        headers: dict[str, list[str]] = {}
        i += 1
        while i < len(lines) and lines[i].strip() and not lines[i].startswith("-----"):
            name, _, value = lines[i].partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
            i += 1
        out.append(Message(at, sent, first, headers))
    return out


def udp_bound(port: int, pid: int | None = None) -> bool:
    """Whether some socket is bound to UDP `port` on IPv4 (read from /proc, nothing sent), in
    this network namespace or, with `pid`, in that process's (`ip netns exec` execs, so the
    PID of a command started through it is the command's own)."""
    with open("/proc/net/udp" if pid is None else f"/proc/{pid}/net/udp") as f:
        return any(line.split()[1].endswith(f":{port:04X}") for line in list(f)[1:])


def wait_bound(
    p: subprocess.Popen[bytes],
    port: int,
    what: str,
    log: Callable[[], str] = lambda: "",
    *,
    timeout: float = 10,
    own_namespace: bool = False,
) -> None:
    """Wait (at most `timeout` s) until the process `p` has bound UDP `port`, in our network
    namespace or, with `own_namespace`, in its own; fail at once if it exits first."""

    def bound() -> bool:
        if p.poll() is not None:
            raise ProcessExited(
                f"{what} exited ({p.returncode}) before binding UDP {port}: {log()}"
            )
        return udp_bound(port, p.pid if own_namespace else None)

    wait_until(bound, timeout, f"{what} to bind UDP {port}", interval=0.02)


def free_media_port() -> int:
    """An even port P with P..P+3 free for UDP: sipp's RTP echo binds -mp and -mp + 2."""
    return free_ports(1, block=4)[0]
