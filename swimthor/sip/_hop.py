"""The base of `Proxy` (`_proxy.py`): what it is built with and hands back, its state, and
what every path through it is made of: this node's addresses as a hop (its sent-by, Via and
Record-Route entries, RFC 3261 §16.6, RFC 5658), the branches it marks requests with (a MAC
under the cluster key), the flow tokens of the phones it is the edge of (RFC 5626), the
members it knows, and the answers it makes itself.

`Forwarder` (`_forward.py`), `Registrar` (`_registration.py`) and `Proxy` build on `Hop`, each
adding one path; the state all of them share is made here, in `Hop.__init__`."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ._actions import Send, Source
from ._auth import Credentials, Verifier
from ._bindings import Binding, BindingStore
from ._flow import flow_of, make_token
from ._fork import Forks, Target
from ._keepalive import PING_PREFIX, Pinger
from ._message import MAX_MESSAGE_SIZE, Request, ViaHop, parse_address, pop_first_value
from ._registrar import RegistrarPolicy
from ._responses import _to_via, make_response, trying_bytes
from ._routes import (
    _DIALOG_CREATING,
    BRANCH_PREFIX,
    STATEFUL_PREFIX,
    _h,
    _needs_flow,
    _out_transport,
    _uri_host,
)
from ._transaction import TimerSettings
from ._txn import ResponseCache, transaction_key

__all__ = ["Action", "FetchCredentials", "Hop", "Peer", "ProxySettings", "Replicate"]

# Option tags a Require may name (anything else: 420): Path (RFC 3327) and outbound (RFC 5626).
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(("path", "outbound"))


@dataclass(slots=True)
class Replicate:
    """Store `changes` on `peers` (names of the other live owners), then send `response`
    (and remember it for retransmissions under `txn`). If a peer does not confirm in time,
    `Proxy.replication_failed(this)` is what goes out instead."""

    changes: list[Binding]
    peers: list[str]
    response: Send
    txn: tuple[str, ...] | None
    request: Request
    source: Source
    aor: str = ""
    received: float = 0.0  # perf_counter() when the REGISTER came in (for the metrics)


@dataclass(frozen=True, slots=True)
class FetchCredentials:
    """A caller's credentials live on its AOR's owners, not here: fetch the subscriber
    record of `aor` from `owners` (into `Proxy.credentials`), then handle `data` from
    `source` again."""

    aor: str
    owners: list[str]
    data: bytes
    source: Source


Action = Send | Replicate | FetchCredentials


@dataclass(frozen=True, slots=True)
class Peer:
    """A live member with the sip role, as the proxy needs it."""

    name: str
    host: str
    port: int


@dataclass(slots=True)
class ProxySettings:
    name: str  # this node's member name
    host: str  # the address other nodes and phones reach our SIP port at
    port: int
    domains: frozenset[str]
    replicas: int = 2
    policy: RegistrarPolicy = field(default_factory=RegistrarPolicy)
    retry_after: int = 5  # seconds, on 503
    server_header: str = "swimthor"
    # Digest authentication (RFC 3261 §22): REGISTER, and INVITE from outside the cluster
    # whose caller is one of our domains, must carry a subscriber's credentials.
    auth: bool = False
    auth_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    # Forking at the owner (§16.6-16.7): how long a q group rings before the next is tried,
    # and the transaction timers (T1, T2, T4, timer C).
    fork_timeout: float = 30.0
    timers: TimerSettings = field(default_factory=TimerSettings)
    # Stateful contexts held at once (each lingers 64*T1 after its answer, §17.2.1): at
    # 2,000 calls/s that is 64,000; more get 503.
    max_forks: int = 200_000
    # The edge's OPTIONS pings to the NAT'd UDP phones it holds flows for (0: none), and how
    # many missed in a row make it ask the owners to remove the binding.
    keepalive_interval: float = 30.0
    keepalive_misses: int = 3
    # Where phones reach our other stream transports: "tls", "ws", "wss" -> (host, port)
    # (UDP and TCP share host:port above).
    listen: Mapping[str, tuple[str, int]] = field(default_factory=dict)


class Hop:
    """What every path of the proxy is made of; see the module docstring."""

    def __init__(
        self,
        settings: ProxySettings,
        owners: Callable[[str, int], list[Peer]],
        peers: Callable[[], dict[str, Peer]],
        store: BindingStore | None = None,
        peer_at: Callable[[str, int], Peer | None] | None = None,
        branch_keys: Callable[[], list[bytes]] | None = None,
        flow_alive: Callable[[int], bool] | None = None,
        gone_at: Callable[[str, int], bool] | None = None,
    ) -> None:
        self.settings = settings
        # Whether host:port is where a member that failed or left had its SIP.
        self._gone_at = gone_at or (lambda host, port: False)
        # Whether the transport still has the stream connection of that id (a phone's flow).
        self._flow_alive = flow_alive or (lambda conn: True)
        # The keys our branch MACs are made with (the first) and checked with (any): the
        # cluster keyring's, so a rotation keeps branches in flight valid; without one, a
        # secret of this process (only the node that made a branch checks it).
        secret = [os.urandom(32)]
        self._branch_keys = branch_keys or (lambda: secret)
        # Our stateful branches: a prefix of this process's own, then a serial number.
        self._branch_serial = itertools.count(int.from_bytes(os.urandom(4), "big"))
        self._branch_ident = _h(settings.name, os.urandom(8).hex(), size=4)
        self._keyed: dict[bytes, hashlib.blake2b] = {}
        self._server_key: tuple[Request | None, tuple[str, ...]] = (None, ())
        self.pinger = Pinger(settings.keepalive_interval, settings.keepalive_misses)
        self._ping_tag = _h(settings.name, os.urandom(8).hex(), size=6)
        self.forks = Forks(
            self._build_branch,
            self._build_answer,
            timers=settings.timers,
            fork_timeout=settings.fork_timeout,
            max_forks=settings.max_forks,
        )
        # The monotonic time of the message being handled (transaction timers run on it).
        self._mono = 0.0
        # Nodes our datagrams bounced off (ICMP unreachable): name -> until when (monotonic).
        self._unreachable: dict[str, float] = {}
        self._owners = owners  # aor, n -> live owners, first first
        self._peers = peers  # name -> Peer, the live sip members (us included)
        # (host, port) -> the live member whose SIP address that is; a scan of peers() if the
        # caller keeps no index (tests), an index lookup in the agent.
        self._peer_at = peer_at or self._scan_peers
        self.store = store if store is not None else BindingStore()
        self.txns = ResponseCache()
        # Digest authentication, when settings.auth: set by the service (it knows the keys).
        self.verifier: Verifier | None = None
        # Callers' credentials fetched from their owners: aor -> (record or None, until).
        self.credentials: dict[str, tuple[Credentials | None, float]] = {}
        self.stats: dict[str, int] = {
            "requests": 0,
            "responses": 0,
            "dropped": 0,
            "parse_errors": 0,
            "answered": 0,
            "forwarded": 0,
            "registers": 0,
            "retransmissions": 0,
            "relayed": 0,
            "replication_failed": 0,
            "challenged": 0,
            "auth_failed": 0,
            "authenticated": 0,
            "bad_branch": 0,
            # Flows (RFC 5626) at the edge: Paths we added to REGISTERs, requests sent onto a
            # phone's flow, and those refused: a token not ours (403), a flow gone (430).
            "paths_added": 0,
            "to_flows": 0,
            "bad_flow_tokens": 0,
            "flows_gone": 0,
        }
        # For the metrics: requests by method (unknown ones as "other"), and the answers
        # this node made by status code (relayed responses are counted in `stats`).
        self.requests_by_method: dict[str, int] = {}
        self.answers_by_code: dict[int, int] = {}
        # Our SIP addresses as a Via's host:port says them: UDP/TCP, and TLS/WebSocket.
        self._mes = frozenset(
            f"{h}:{p}".lower()
            for h, p in [(settings.host, settings.port), *settings.listen.values()]
        )
        self._ports = frozenset([settings.port, *(p for _h, p in settings.listen.values())])
        # Our sent-by and Record-Route, formatted once (an IPv6 host in brackets).
        self._sent_by = f"{_uri_host(settings.host)}:{settings.port}"
        # The sent-by of each transport (what our Via and Record-Route name for it).
        self._sent_by_of = {"udp": self._sent_by, "tcp": self._sent_by} | {
            t: f"{_uri_host(h)}:{p}" for t, (h, p) in settings.listen.items()
        }
        self._via_prefix = f"SIP/2.0/UDP {self._sent_by};branch={BRANCH_PREFIX}".encode()
        self._via_prefix_sf = f"SIP/2.0/UDP {self._sent_by};branch={STATEFUL_PREFIX}".encode()
        self._via_prefix_ping = f"SIP/2.0/UDP {self._sent_by};branch={PING_PREFIX}".encode()
        self._ping_branch_at = len(self._via_prefix_ping) - len(PING_PREFIX)

    # ---------------------------------------------------------------- members and addresses

    def _scan_peers(self, host: str, port: int) -> Peer | None:
        for peer in self._peers().values():
            if peer.host == host and peer.port == port:
                return peer
        return None

    def _other_node_at(self, host: str, port: int | None) -> Peer | None:
        peer = self._peer_at(host.strip("[]").lower(), port or 5060)
        if peer is None or peer.name == self.settings.name:
            return None
        return peer

    def _is_peer(self, source: Source, request: Request) -> bool:
        """Did another node of this cluster hand us this request? Its top Via is a peer's
        SIP address with our branch form, and it came from that peer's IP."""
        top = request.vias[0]
        branch = top.branch or ""
        if not branch.startswith(BRANCH_PREFIX):
            return False
        peer = self._other_node_at(top.host, top.port)
        if peer is None or source.host != peer.host:
            return False
        return source.transport != "udp" or source.port == peer.port

    def _ours(self, host: str, port: int | None, scheme: str = "sip") -> bool:
        """Is host[:port] one of this node's SIP addresses (a Route or Request-URI meant for
        us), on any of our transports?"""
        host = host.strip("[]").lower()
        me_host = self.settings.host.strip("[]").lower()
        return host == me_host and (port or (5061 if scheme == "sips" else 5060)) in self._ports

    def _via_of(self, transport: str) -> str:
        """Our Via for a request sent over `transport`, up to its branch."""
        return f"SIP/2.0/{transport.upper()} {self._sent_by_of.get(transport, self._sent_by)}"

    def _served(self, host: str, port: int | None) -> bool:
        """Is the host a domain we serve, or one of the cluster's SIP addresses?"""
        low = host.lower().rstrip(".")
        if low in self.settings.domains:
            return True
        return self._peer_at(low.strip("[]"), port or 5060) is not None

    def _reachable_first(self, owners: list[Peer]) -> list[Peer]:
        """Owners in rank order, those our datagrams bounced off lately last."""
        if not self._unreachable:
            return owners
        now = self._mono
        held = self._unreachable
        for name, until in list(held.items()):
            if until <= now:
                del held[name]
        if not held or not any(p.name in held for p in owners):
            return owners
        return sorted(owners, key=lambda p: p.name in held)

    # ---------------------------------------------------------------- Record-Route and flow tokens

    def _rr_entry(self, transport: str, token: str | None = None) -> str:
        """Our Record-Route for the leg of a dialog over `transport`: the address of ours a
        peer on that leg reaches us at, and a flow token (`ob`) when that peer is a phone we
        hold the flow of (RFC 5626 §5.3: its in-dialog requests come back over it)."""
        user = f"{token}@" if token else ""
        where = self._sent_by_of.get(transport, self._sent_by)
        param = "" if transport == "udp" else f";transport={transport}"
        return f"<sip:{user}{where}{param};lr{';ob' if token else ''}>"

    def _our_rr(self, value: str) -> bool:
        """Is this Record-Route (or Route) value one of ours?"""
        try:
            uri = parse_address(value).uri
        except ValueError:
            return False
        return self._ours(uri.host, uri.port, uri.scheme)

    def _in_rr(self, request: Request, source: Source) -> str:
        """Our Record-Route for the leg a dialog-creating request came in on: with a token
        of its flow when it came from a phone that can only be reached over it (a stream, or
        behind NAT), so the callee's requests come back to the caller the same way."""
        token = None
        if (
            not self._is_peer(source, request)
            and (source.host, source.port) != (self.settings.host, self.settings.port)
            and _needs_flow(request, source)
        ):
            token = self._token_of(source)
        return self._rr_entry(source.transport, token)

    def _token_of(self, source: Source) -> str:
        """The flow token of the flow a request came over, under our current key."""
        return make_token(flow_of(source), self._branch_keys()[0])

    def _add_rr(self, request: Request, source: Source, out: str | None) -> None:
        """Record-Route a dialog-creating request: our entry for the leg it came in on, and
        when the leg it goes out on differs (another transport, or a phone's flow), one for
        that leg on top (RFC 5658)."""
        entry = self._in_rr(request, source)
        request.prepend("record-route", entry)
        if out is not None and out != entry:
            request.prepend("record-route", out)

    # ---------------------------------------------------------------- branches

    def _mac(self, ident: str, loop: str, hop: tuple[str, int], key: bytes) -> str:
        keyed = self._keyed.get(key)
        if keyed is None:
            # Keyed once, copied per branch: a copy costs half of keying anew.
            keyed = hashlib.blake2b(key=key[:64], digest_size=6, person=b"sip-branch")
            if len(self._keyed) >= 16:
                self._keyed.clear()  # keys rotated out (the keyring holds a handful)
            self._keyed[key] = keyed
        mac = keyed.copy()
        mac.update(f"{ident}.{loop}|{hop[0].lower()}|{hop[1]}".encode())
        return mac.hexdigest()

    def _branch(self, prefix: str, ident: str, loop: str, upstream: ViaHop) -> str:
        """A branch of ours for a request whose responses go back to `upstream` (the Via
        below ours): `<prefix><ident>.<loop hash>.<MAC>`."""
        mac = self._mac(ident, loop, upstream.response_target(), self._branch_keys()[0])
        return f"{prefix}{ident}.{loop}.{mac}"

    def _branch_ok(self, branch: str, upstream: ViaHop) -> bool:
        """Did a node of ours (with our keys) make `branch` for responses to `upstream`?"""
        parts = branch[len(BRANCH_PREFIX) :].split(".")
        if len(parts) != 3:
            return False
        ident, loop, mac = parts
        hop = upstream.response_target()
        return any(
            hmac.compare_digest(mac, self._mac(ident, loop, hop, key))
            for key in self._branch_keys()
        )

    def _build_branch(
        self, base: Request, target: Target, loop: str
    ) -> tuple[Request, Send, str] | None:
        """The request of one fork branch (§16.6): a copy of `base` (Max-Forwards already
        decremented, Record-Route added) for `target`, with our Via on top; and its branch."""
        request = base.copy(target.uri)
        transport = _out_transport(target.transport)
        ident = f"{self._branch_ident}{next(self._branch_serial) & 0xFFFFFFFF:08x}"
        branch = self._branch(STATEFUL_PREFIX, ident, loop, base.vias[0])
        request.prepend("via", f"{self._via_of(transport)};branch={branch}")
        if target.route:
            # The binding's Path as the Route set (RFC 3327 §5.3), ahead of any Route left.
            request.set_values("route", [*target.route, *request.get_all("route")])
        if request.method in _DIALOG_CREATING and request.to_tag is None:
            top = request.get("record-route")
            if target.record_route:
                # We are the device's edge: the dialog must come back through us, to its flow
                # (in place of a plain entry of ours for the same transport).
                if top == self._rr_entry(transport):
                    pop_first_value(request, "record-route")
                request.prepend("record-route", target.record_route)
            elif top is not None and top != self._rr_entry(transport) and self._our_rr(top):
                # We Record-Routed the leg the request came in on, and the leg toward the
                # device is over another transport: our entry for it on top (RFC 5658).
                request.prepend("record-route", self._rr_entry(transport))
        data = request.to_bytes()
        if len(data) > MAX_MESSAGE_SIZE:
            return None
        self.stats["forwarded"] += 1
        send = Send(transport, target.host.strip("[]"), target.port, data, target.conn)
        return request, send, branch

    def _build_answer(self, request: Request, status: int, reason: str) -> bytes:
        self.answers_by_code[status] = self.answers_by_code.get(status, 0) + 1
        if status == 100:
            return trying_bytes(request, self.settings.server_header)
        return make_response(
            request, status, reason, to_tag=self._tag(request), server=self.settings.server_header
        ).to_bytes()

    # ---------------------------------------------------------------- answers

    def _answer_unparsed(
        self, data: bytes, source: Source, reason: str, status: int = 400
    ) -> list[Action]:
        """A request that failed a check after its Via was read: answer 400 with the reason,
        built from the raw headers we could read."""
        try:
            head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")
            method, uri_text, _ = head[0].split(" ", 2)
            from ._message import canonical_name

            headers: list[tuple[str, str]] = []
            names: list[str] = []
            for line in head[1:]:
                if line[:1] in (" ", "\t") and headers:  # folded: continues the last one
                    key, value = headers[-1]
                    headers[-1] = (key, f"{value} {line.strip()}".strip())
                    continue
                name, _, value = line.partition(":")
                headers.append((canonical_name(name.strip()), value.strip()))
                names.append(name.strip())
            request = Request(method, uri_text, headers, names, b"")
            if not request.vias:
                raise ValueError("no Via to answer to")
        except (ValueError, IndexError):
            self.stats["dropped"] += 1
            return []
        if method == "ACK":
            return []
        response = make_response(
            request, status, reason, to_tag=self._tag(request), server=self.settings.server_header
        )
        return [_to_via(response, request, source)]

    def _tag(self, request: Request) -> str:
        """Our To tag for a response we build: the same for every retransmission."""
        try:
            from_tag = request.from_tag or ""
        except ValueError:  # answering a request whose From did not parse
            from_tag = request.get("from") or ""
        return _h(request.call_id, from_tag, self.settings.name, size=6)

    def _reply(
        self,
        request: Request,
        source: Source,
        now: float,
        status: int,
        reason: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> list[Action]:
        if request.method == "ACK":
            return []  # never answer an ACK (§17.2.1)
        self.stats["answered"] += 1
        self.answers_by_code[status] = self.answers_by_code.get(status, 0) + 1
        response = make_response(
            request,
            status,
            reason,
            headers,
            to_tag=self._tag(request),
            server=self.settings.server_header,
        )
        send = _to_via(response, request, source)
        key = transaction_key(request)
        if key is not None and status >= 200:
            self.txns.answered(key, now, send.data)
        return [send]

    def _bad_extension(
        self, request: Request, header: str, source: Source, now: float
    ) -> list[Action] | None:
        """420 with Unsupported when `header` (Require or Proxy-Require) names an extension we
        do not support (§8.2.2.3, §16.3 step 5); None when it names none."""
        unsupported = [opt for opt in request.get_all(header) if opt not in SUPPORTED_EXTENSIONS]
        if not unsupported:
            return None
        return self._reply(
            request, source, now, 420, "Bad Extension", [("unsupported", ", ".join(unsupported))]
        )

    def _no_owner(self, request: Request, source: Source, now: float) -> list[Action]:
        """No live member owns the AOR: 503 with Retry-After (§21.5.4), try again later."""
        return self._reply(
            request,
            source,
            now,
            503,
            "Service Unavailable",
            [("retry-after", str(self.settings.retry_after))],
        )
