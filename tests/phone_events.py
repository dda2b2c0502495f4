"""A phone run as a process of its own (pjsua2 in tests/pjsua_phone.py, SIP.js in
tests/wsphone/phone.mjs) that prints one JSON event a line: the events so far, and waits on
them, each bounded in time."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


class EventProcess:
    """The process and the events it printed so far (read by a thread of its own)."""

    what_log = "its log"  # how a failed wait names the log

    def __init__(self, name: str, argv: list[str], tmp: Path, log: Path, cwd: Path | None = None):
        self.name = name
        self.log = log
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()  # (an RLock: seen() may be called holding it)
        self.eof = False
        self.p = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.PIPE,  # the phone exits when this closes (we die: it dies)
            stdout=subprocess.PIPE,
            stderr=open(tmp / f"{name}.stderr", "wb"),  # noqa: SIM115 (the child holds it)
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for raw in self.p.stdout:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.cond:
                self.events.append(event)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def seen(self, event: str, **match: Any) -> list[dict[str, Any]]:
        with self.cond:
            return [
                e
                for e in self.events
                if e["event"] == event and all(e.get(k) == v for k, v in match.items())
            ]

    def wait_for(self, event: str, timeout: float, **match: Any) -> dict[str, Any]:
        """The first `event` (with the `match` fields) this phone printed, waiting at most
        `timeout` seconds for it."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                found = self.seen(event, **match)
                if found:
                    return found[0]
                left = end - time.monotonic()
                if left <= 0 or self.eof:
                    break
                self.cond.wait(left)
        raise AssertionError(
            f"{self.name}: no {event} {match or ''} within {timeout} s; it printed:\n"
            + "\n".join(json.dumps(e) for e in self.events if e["event"] != "rx")
            + f"\n({self.what_log}, every SIP message: {self.log})"
        )

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)
        self.reader.join(5)
