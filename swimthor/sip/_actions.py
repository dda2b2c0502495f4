"""What the SIP cores hand the transport: where a message came from (`Source`) and what to send
(`Send`). Plain immutable records, shared by the proxy, the transaction layer and the server.
Named tuples, not frozen dataclasses: several are made per message, and a frozen dataclass's
`__init__` (one `object.__setattr__` a field) costs about five times as much."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Send", "Source"]


class Source(NamedTuple):
    """Where a message came from: transport ("udp"/"tcp"), address, and for TCP the
    connection id the answer must go back on."""

    transport: str
    host: str
    port: int
    conn: int | None = None


class Send(NamedTuple):
    """Send `data` to host:port over `transport`; `conn` reuses a TCP connection if open.
    `txn`, when set, is the client transaction (branch, method) the data belongs to: a
    transport that cannot deliver it (connection refused, port unreachable) says so with
    `Proxy.transport_error(txn, now)`, so the transaction fails at once instead of silently."""

    transport: str
    host: str
    port: int
    data: bytes
    conn: int | None = None
    txn: tuple[str, str] | None = None
