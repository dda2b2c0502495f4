"""Subscribers on disk: a journal of subscriber records in the agent's data directory.

Every subscriber record this node stores (added here, replicated to it, handed to it) is
appended as one JSON line (`Binding.to_wire`). On start the journal is read back into the
store, newest version wins, and rewritten with one line per subscriber, so the file stays
the size of what it holds. A torn last line (a crash mid-write) is skipped and counted.

So a full restart of the cluster keeps every subscriber: each node reloads what it held, and
handoff and repair move each record to its AOR's owners as after any restart. Bindings are
not journaled: phones re-register within their expiry anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO

from ._bindings import SUBSCRIBER_KEY, Binding

__all__ = ["JOURNAL_FILE", "SubscriberJournal"]

JOURNAL_FILE = "subscribers.jsonl"


class SubscriberJournal:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        self.bad_lines = 0

    def load(self) -> list[Binding]:
        """The newest version of every record in the journal (none if there is no file)."""
        newest: dict[str, Binding] = {}
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                record = Binding.from_wire(json.loads(line))
            except (ValueError, TypeError):
                self.bad_lines += 1
                continue
            if record.key != SUBSCRIBER_KEY:
                self.bad_lines += 1
                continue
            held = newest.get(record.aor)
            if held is None or record.version > held.version:
                newest[record.aor] = record
        return list(newest.values())

    def rewrite(self, records: list[Binding]) -> None:
        """Replace the journal by exactly `records`, atomically (mode 0600)."""
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".subscribers-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for record in records:
                    f.write(json.dumps(record.to_wire()) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def append(self, record: Binding) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._file.write(json.dumps(record.to_wire()) + "\n")
        self._file.flush()

    def sync(self) -> None:
        """fsync what was appended (after an operator's change, before saying it is done)."""
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
