"""What one node does with each SIP message: validate, answer, register, or forward in one hop.

`Proxy.handle(data, source, now)` takes the bytes of one message and where they came from, and
returns what to do: datagrams or stream writes to send (`Send`), and for a REGISTER that
changed bindings, a `Replicate` whose response may only go out once the other owners hold the
change. Sans-IO: the trio server in `_server.py` does the sending, the resolving and the
waiting.

Routing (RFC 3261 §16, stateless per §16.11):

- a request for an address-of-record of a served domain goes to the AOR's first live owner
  (one hop); an owner, or a node a peer handed the request to, forwards it to the AOR's best
  binding (highest q, then most recently refreshed), or answers 480 when there is none;
- the node where a dialog-creating request enters the cluster adds Record-Route, so in-dialog
  requests come back through it and are loose-routed (§16.4, §16.12);
- responses follow the Via chain: our Via is popped and the response goes where the next one
  says (§16.11, §18.2.2, RFC 3581);
- requests to foreign domains are relayed only inside a dialog this node record-routed, or
  when a cluster peer hands them over; strangers get 403 (no open relay).

The Via branch we add is a hash of the incoming request's transaction identity, so a
retransmission (and a CANCEL for an INVITE) takes the same branch and the same path; its
second half hashes the fields that change on a spiral and not on a loop (§16.3 step 4).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import itertools
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ._actions import Send, Source
from ._auth import Credentials, Verifier, challenges, parse_credentials
from ._bindings import Binding, BindingStore
from ._flow import Flow, decode_token, flow_of, make_token
from ._fork import Forks, Target
from ._keepalive import PING_PREFIX, Pinger, Plan, Watched
from ._message import (
    DISPLAY_NAMES,
    MAX_MESSAGE_SIZE,
    Request,
    Response,
    SipParseError,
    ViaHop,
    _parse_via,
    parse_address,
    parse_message,
    parse_uri,
    pop_first_value,
    replace_first_value,
)
from ._registrar import RegistrarPolicy, aor_of, register, split_aor
from ._streams import STREAM_TRANSPORTS
from ._transaction import ResponseBytes, TimerSettings, client_key, server_key
from ._txn import PENDING, ResponseCache, transaction_key

__all__ = [
    "ALLOWED_METHODS",
    "BRANCH_PREFIX",
    "STATEFUL_PREFIX",
    "Peer",
    "Proxy",
    "ProxySettings",
    "Replicate",
    "Send",
    "Source",
    "make_response",
]

# Our Via branches: "st" when forwarded statelessly (the entry node), "sf" when a client
# transaction of ours sent it (the owner's branches). Both end in a MAC under the cluster key of
# the branch and the hop a response to it goes back to, so a response to a branch no node of
# ours made (or one re-addressed to another hop) is dropped rather than relayed anywhere.
# The header that marks a node's own removal of a binding whose phone stopped answering its
# keepalives: taken without a challenge from a node, stripped from anyone else's REGISTER.
FLOW_LOST_HEADER = "Swimthor-Flow-Lost"
_FLOW_LOST = FLOW_LOST_HEADER.lower()  # as the parser keys it
BRANCH_PREFIX = "z9hG4bK-st-"
STATEFUL_PREFIX = "z9hG4bK-sf-"
assert len(BRANCH_PREFIX) == len(STATEFUL_PREFIX)  # one cut for both (`_cut_our_via`)
ALLOWED_METHODS = (
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "PRACK",
    "UPDATE",
    "INFO",
    "MESSAGE",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "PUBLISH",
)
_ALLOWED = frozenset(ALLOWED_METHODS)
_DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
# Option tags a Require may name (anything else: 420): Path (RFC 3327) and outbound (RFC 5626).
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(("path", "outbound"))
DEFAULT_MAX_FORWARDS = 70
# Seconds a node our datagrams bounced off is tried after the AOR's other owners: about the
# time SWIM takes to declare it (local profile ~1 s, LAN ~5 s).
UNREACHABLE_HOLD = 5.0


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

# How long a caller's credentials fetched from its owners are kept by another node.
CREDENTIALS_CACHE = 60.0


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


def _h(*parts: str, size: int = 8) -> str:
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=size).hexdigest()


def make_response(
    request: Request,
    status: int,
    reason: str,
    headers: Iterable[tuple[str, str]] = (),
    *,
    to_tag: str | None = None,
    server: str | None = None,
) -> Response:
    """A response to `request` as a UAS builds it (§8.2.6): Via, From, To, Call-ID and CSeq
    copied, a To tag added unless the request had one or the status is 100."""
    out: list[tuple[str, str]] = []
    names: list[str] = []
    for key, value in request.headers:
        if key in _COPIED_TO_RESPONSE:
            if key == "to" and to_tag and status != 100:
                try:
                    tagged = request.to_tag is not None
                except ValueError:  # a To we could not read (the 400 says so): copy it as is
                    tagged = True
                if not tagged:
                    value = f"{value};tag={to_tag}"
            out.append((key, value))
            names.append(DISPLAY_NAMES.get(key, key))
    for key, value in headers:
        out.append((key, value))
        names.append(DISPLAY_NAMES.get(key, key))
    if server:
        out.append(("server", server))
        names.append("Server")
    response = Response(status, reason, out, names, b"")
    # What it copied parses as the request's did: share those fields instead of parsing again.
    cache = request._cache
    for key in ("vias", "cseq", "from"):
        if key in cache:
            response._cache[key] = cache[key]
    return response


_COPIED_TO_RESPONSE = frozenset(("via", "from", "to", "call-id", "cseq"))
_COPIED_TO_TRYING = _COPIED_TO_RESPONSE | {"timestamp"}


def trying_bytes(request: Request, server: str | None = None) -> bytes:
    """The 100 (Trying) for `request`, as bytes: what `make_response` would build (no To tag)
    and the request's Timestamp (§8.2.6.1), written straight out, since every INVITE the
    owner proxies gets one."""
    parts = ["SIP/2.0 100 Trying"]
    for key, value in request.headers:
        if key in _COPIED_TO_TRYING:
            parts.append(f"{DISPLAY_NAMES.get(key, key)}: {value}")
    if server:
        parts.append(f"Server: {server}")
    parts.append("Content-Length: 0\r\n\r\n")
    return "\r\n".join(parts).encode()


class Proxy:
    """One node's SIP behaviour; see the module docstring."""

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
        self._rr = f"<sip:{self._sent_by};lr>"

    # ---------------------------------------------------------------- entry point

    def handle(
        self, data: bytes, source: Source, now: float, mono: float | None = None
    ) -> list[Action]:
        """`now` is wall-clock time (binding expiry and versions), `mono` a monotonic clock
        for the transaction timers (the same as `now` when not given)."""
        self._mono = now if mono is None else mono
        if not data.strip(b"\r\n"):
            return []  # keep-alive (RFC 5626 §3.5.1 CRLF): nothing to do
        if data.startswith(b"SIP/2.0 ") and source.transport == "udp":
            found = self._top_via_line(data)
            if found is not None:
                if data.startswith(self._via_prefix_ping, found[0] + 7):
                    # A phone's answer to our keepalive (one per NAT'd phone and interval):
                    # its branch is all we need, not a parse.
                    branch = data[found[0] + 7 + self._ping_branch_at : found[1]]
                    branch = branch.split(b";", 1)[0].split(b",", 1)[0].strip()
                    if self.pinger.answered(branch.decode("ascii", "replace")):
                        self.stats["responses"] += 1
                        return []
                relayed = self._relay_fast(data, found)
                if relayed is None and self.forks.clients:
                    relayed = self._branch_response_fast(data, found)
                if relayed is not None:
                    return relayed
        try:
            message = parse_message(data, datagram=source.transport == "udp")
        except SipParseError as e:
            self.stats["parse_errors"] += 1
            if e.respondable:
                return self._answer_unparsed(data, source, e.reason, e.status)
            self.stats["dropped"] += 1
            return []
        if isinstance(message, Response):
            self.stats["responses"] += 1
            return self._response(message)
        self.stats["requests"] += 1
        method = message.method if message.method in _ALLOWED else "other"
        self.requests_by_method[method] = self.requests_by_method.get(method, 0) + 1
        try:
            return self._request(message, source, now)
        except SipParseError as e:
            return self._reply(message, source, now, 400, e.reason)

    # ---------------------------------------------------------------- timers, transport

    def next_timer(self) -> float | None:
        """When (monotonic) `handle_timer` wants to run next; None: no timer pending."""
        forks = self.forks.next_deadline()
        pings = self.pinger.next_deadline() if self.pinger.flows else None
        if pings is None or (forks is not None and forks < pings):
            return forks
        return pings

    def handle_timer(self, mono: float, now: float | None = None) -> list[Action]:
        """The transaction timers due at `mono`, and the edge's keepalive pings; `now` is the
        wall clock, for the removal of a binding whose phone stopped answering."""
        self._mono = mono
        out: list[Action] = list(self.forks.on_timer(mono))
        if self.pinger.flows:
            pings, lost = self.pinger.due(mono)
            for watched, branch in pings:
                out.append(self._ping(watched, branch))
            for watched in lost:
                out += self._flow_lost(watched, mono if now is None else now)
        return out

    def _ping(self, w: Watched, branch: str) -> Send:
        """OPTIONS to a phone over its flow: any answer says it (and its NAT mapping) is
        there."""
        parts = w.template
        if parts is None:
            parts = w.template = (
                f"OPTIONS {w.contact} SIP/2.0\r\nVia: SIP/2.0/UDP {self._sent_by};branch=".encode(),
                (
                    "\r\nMax-Forwards: 70\r\n"
                    f"From: <sip:keepalive@{self._sent_by}>;tag={self._ping_tag}\r\n"
                    f"To: <{w.contact}>\r\n"
                    "Call-ID: "
                ).encode(),
                (
                    f"@{self._sent_by}\r\n"
                    "CSeq: 1 OPTIONS\r\n"
                    f"User-Agent: {self.settings.server_header}\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode(),
            )
        b = branch.encode()
        return Send("udp", w.flow.host, w.flow.port, parts[0] + b + parts[1] + b + parts[2])

    def _flow_lost(self, w: Watched, now: float) -> list[Action]:
        """A phone missed its pings: remove its binding, as a REGISTER with Expires 0 from
        us (marked, so the owner takes it without a challenge: only a node can send it), on
        to the owners and replicated like any other."""
        branch = f"{PING_PREFIX}lost-{_h(w.aor, w.contact, str(w.cseq), size=6)}"
        domain = w.aor.partition("@")[2] or self._sent_by
        data = (
            f"REGISTER sip:{domain} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self._sent_by};branch={branch}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <{w.aor}>;tag={self._ping_tag}\r\n"
            f"To: <{w.aor}>\r\n"
            f"Call-ID: {w.call_id}\r\n"
            f"CSeq: {w.cseq + 1} REGISTER\r\n"
            f"Contact: <{w.contact}>{w.device};expires=0\r\n"
            f"{FLOW_LOST_HEADER}: {w.flow.host}:{w.flow.port}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        me = Source("udp", self.settings.host, self.settings.port)
        return [a for a in self.handle(data, me, now, self._mono) if not isinstance(a, Send)
                or (a.host, a.port) != (self.settings.host, self.settings.port)]  # fmt: skip

    def transport_error(self, txn: tuple[str, str], mono: float) -> list[Send]:
        """The transport could not deliver what a client transaction sent (connection
        refused, ICMP port unreachable): the branch fails now, as a 503 (§8.1.3.1)."""
        self._mono = mono
        return self.forks.transport_error(txn, mono)

    def unreachable(
        self, data: bytes, mono: float, dest: tuple[str, int] | None = None
    ) -> list[Send]:
        """A datagram we sent to `dest` came back undeliverable (the kernel's error queue
        gives back its first bytes): fail the client transaction named by the branch in its
        top Via. If `dest` is a node of ours (dead, not yet declared), requests go to the
        AOR's other owners first for a few seconds: the caller's next retransmission then
        reaches one that answers instead of waiting for the failure to be declared."""
        if dest is not None:
            peer = self._peer_at(dest[0], dest[1])
            if peer is not None and peer.name != self.settings.name:
                if len(self._unreachable) >= 1024:
                    self._unreachable.clear()
                self._unreachable[peer.name] = mono + UNREACHABLE_HOLD
        found = _OUR_BRANCH.search(data, 0, 2048)
        method = data.split(b" ", 1)[0]
        if found is None or not method.isalpha():
            return []
        try:
            key = client_key(found.group(1).decode("ascii"), method.decode("ascii"))
        except UnicodeDecodeError:
            return []
        return self.transport_error(key, mono)

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

    def _key_of(self, request: Request) -> tuple[str, ...]:
        """`server_key(request)`, as `_request` found it when it looked for a transaction (an
        RFC 3261 key depends only on the top Via, which nothing edits after that)."""
        seen, key = self._server_key
        if seen is request and key[0] != "2543":
            return key
        return server_key(request)

    def _build_answer(self, request: Request, status: int, reason: str) -> bytes:
        self.answers_by_code[status] = self.answers_by_code.get(status, 0) + 1
        if status == 100:
            return trying_bytes(request, self.settings.server_header)
        return make_response(
            request, status, reason, to_tag=self._tag(request), server=self.settings.server_header
        ).to_bytes()

    # ---------------------------------------------------------------- helpers

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
        return [self._to_via(response, request, source)]

    def _tag(self, request: Request) -> str:
        """Our To tag for a response we build: the same for every retransmission."""
        try:
            from_tag = request.from_tag or ""
        except ValueError:  # answering a request whose From did not parse
            from_tag = request.get("from") or ""
        return _h(request.call_id, from_tag, self.settings.name, size=6)

    def _to_via(self, response: Response, request: Request, source: Source) -> Send:
        """Where a response we build goes: back on the connection for TCP; for UDP to the
        address the request came from (the `received` our transport records, §18.2.1), at
        the rport if asked for (RFC 3581) or else the sent-by port (§18.2.2). Never to a host
        the sender merely names in its Via: that would reflect our answers anywhere."""
        data = response.to_bytes()
        if source.transport != "udp":
            return Send(source.transport, source.host, source.port, data, source.conn)
        return Send("udp", source.host, _response_port(request.vias[0], source), data)

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
        send = self._to_via(response, request, source)
        key = transaction_key(request)
        if key is not None and status >= 200:
            self.txns.answered(key, now, send.data)
        return [send]

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
            and self._needs_flow(request, source)
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

    def _served(self, host: str, port: int | None) -> bool:
        """Is the host a domain we serve, or one of the cluster's SIP addresses?"""
        low = host.lower().rstrip(".")
        if low in self.settings.domains:
            return True
        return self._peer_at(low.strip("[]"), port or 5060) is not None

    # ---------------------------------------------------------------- responses

    def _top_via_line(self, data: bytes) -> tuple[int, int, int] | None:
        """Where a response's top Via line is, if the response has the common shape both fast
        paths need: a well-formed status line, no folded line, a `Via: ` line with no Via in
        another spelling above it and a header line after it. (start of the line's CRLF, end
        of the line, end of the headers), or None: the full parser decides."""
        if len(data) > MAX_MESSAGE_SIZE or not data[8:11].isdigit() or data[11:12] != b" ":
            return None
        end = data.find(b"\r\n\r\n")
        if end < 0 or data.find(b"\r\n ", 0, end) >= 0 or data.find(b"\r\n\t", 0, end) >= 0:
            return None  # a folded line (a Via continued on the next one): the parser unfolds
        at = data.find(b"\r\nVia: ", 0, end)
        if at < 0 or _ANY_VIA.search(data, 0, at) is not None:
            return None  # a Via line (compact, other case) above it: not the top one
        line_end = data.find(b"\r\n", at + 7)
        if line_end >= end:
            return None  # the last header: no hop under ours
        return at, line_end, end

    def _cut_our_via(
        self, data: bytes, at: int, line_end: int, prefix: bytes
    ) -> tuple[str, bytes, bytes] | None:
        """Our Via (written with `prefix`) cut out of the top Via line at `at`: (our branch,
        the response without it, the next hop's Via value), or None if that line is not one
        we wrote or no hop follows."""
        line = data[at + 7 : line_end]
        ours, comma, rest = line.partition(b",")
        branch = ours[len(prefix) - len(BRANCH_PREFIX) :].rstrip(b" \t")
        if not branch or b";" in branch or b"=" in branch:
            return None  # parameters after the branch: not the Via we wrote
        if comma:
            # Several hops on one line (as sipp's UAS writes them): drop the first value.
            if b'"' in line or not rest.strip():
                return None
            nxt = rest.split(b",", 1)[0].strip()
            stripped = data[: at + 7] + rest.lstrip() + data[line_end:]
        elif data.startswith(b"\r\nVia: ", line_end):
            next_end = data.find(b"\r\n", line_end + 7)
            nxt = data[line_end + 7 : next_end]
            if b"," in nxt:
                nxt = nxt.split(b",", 1)[0].strip()
            stripped = data[:at] + data[line_end:]
        else:
            return None  # no hop under ours
        try:
            return branch.decode("ascii"), stripped, nxt
        except UnicodeDecodeError:
            return None

    def _relay_fast(
        self, data: bytes, found: tuple[int, int, int] | None = None
    ) -> list[Action] | None:
        """The common response on its way back, without a full parse: our stateless Via alone
        on the top Via line (`_top_via_line`), the next hop after it. Our Via is cut out and the
        rest goes on byte for byte (§16.7 step 3, §16.11). Anything else is None, and the full
        parser decides."""
        found = found or self._top_via_line(data)
        if found is None or not data.startswith(self._via_prefix, found[0] + 7):
            return None
        cut = self._cut_our_via(data, found[0], found[1], self._via_prefix)
        if cut is None:
            return None
        branch, out, nxt = cut
        try:
            hop = _parse_via(nxt.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        if hop.transport != "UDP" or not self._branch_ok(branch, hop):
            return None  # the full path drops a forged one and counts it
        host, port = hop.response_target()
        self.stats["responses"] += 1
        self.stats["forwarded"] += 1
        if self.pinger.expected:
            self.pinger.settled(branch, int(data[8:11]), self._mono)
        return [Send("udp", host, port, out)]

    def _branch_response_fast(
        self, data: bytes, found: tuple[int, int, int] | None = None
    ) -> list[Action] | None:
        """A device's provisional or 2xx answer to one of our branches, in the common shape
        (our stateful Via alone at the top, one CSeq line), handed to its client transaction
        without a full parse: status, branch and CSeq method are read from the bytes and our
        Via is cut out of them. Anything else, or no such transaction, is None: the full
        path."""
        found = found or self._top_via_line(data)
        if found is None or not data.startswith(self._via_prefix_sf, found[0] + 7):
            return None
        status = int(data[8:11])
        if not 100 <= status < 300:
            return None  # a non-2xx final needs its To for the ACK: parsed in full
        cut = self._cut_our_via(data, found[0], found[1], self._via_prefix_sf)
        if cut is None:
            return None
        branch, stripped, _nxt = cut
        end = found[2]
        cseq = _CSEQ_LINE.search(data, 0, end + 2)
        if cseq is None or data.count(b"\r\nCSeq:", 0, end) != 1:
            return None
        key = client_key(branch, cseq.group(1).decode("ascii"))
        handled = self.forks.response(ResponseBytes(status, stripped), key, self._mono)
        if handled is None:
            return None
        self.stats["responses"] += 1
        self.stats["forwarded"] += 1
        return list(handled)

    def _response(self, response: Response) -> list[Action]:
        vias = response.vias
        top = vias[0]
        branch = top.branch or ""
        if branch.startswith(PING_PREFIX) and f"{top.host}:{top.port}".lower() in self._mes:
            self.pinger.answered(branch)  # a phone answered our ping (or the owner our removal)
            return []
        if not branch.startswith((BRANCH_PREFIX, STATEFUL_PREFIX)):
            self.stats["dropped"] += 1
            return []  # not from a request any node of ours forwarded (§16.11: drop)
        if branch.startswith(STATEFUL_PREFIX) and f"{top.host}:{top.port}".lower() in self._mes:
            # §16.7 step 1: a response to one of our client transactions goes to its context.
            handled = self.forks.response(
                response, client_key(branch, response.cseq[1]), self._mono
            )
            if handled is not None:
                self.stats["forwarded"] += 1
                return list(handled)
            # No transaction (it ended: a late 2xx retransmission): on statelessly, below.
        if f"{top.host}:{top.port}".lower() not in self._mes:
            # A response meant for another node of the cluster. Compliant UAs send responses
            # where the Via says, but some (sipp's UAS among them) send every response of a
            # dialog to where its first request came from. Hand it to that node unchanged.
            peer = self._other_node_at(top.host, top.port)
            if peer is not None:
                self.stats["relayed"] += 1
                return [Send("udp", peer.host, peer.port, response.to_bytes())]
            self.stats["dropped"] += 1
            return []
        if len(vias) < 2 or not self._branch_ok(branch, vias[1]):
            # No next hop, or a branch no node of ours made for that hop: a forged response
            # (relaying it would reflect it to whatever address its next Via names).
            self.stats["dropped"] += 1
            self.stats["bad_branch"] += 1
            return []
        if self.pinger.expected:
            self.pinger.settled(branch, response.status, self._mono)
        # Pop our Via: the first value of the first Via line.
        pop_first_value(response, "via")
        nxt = vias[1]
        host, port = nxt.response_target()
        # Over a stream the Via's received/rport (which we stamped) is the connection's peer:
        # the transport sends it on that connection.
        transport = _out_transport(nxt.transport.lower())
        self.stats["forwarded"] += 1
        return [Send(transport, host, port, response.to_bytes())]

    # ---------------------------------------------------------------- requests

    def _request(self, request: Request, source: Source, now: float) -> list[Action]:
        _stamp_received(request, source)
        key = transaction_key(request)
        if key is not None and request.method != "ACK":
            cached = self.txns.get(key, now)
            if cached is not None:
                self.stats["retransmissions"] += 1
                if cached == PENDING:
                    return []
                return [self._resend(cached, request, source)]
        if self.forks.servers:
            # A request of a transaction we proxy statefully: a retransmission or the ACK of
            # a non-2xx final (absorbed there, §17.2.1), or the caller's CANCEL (§16.10).
            skey = server_key(request)
            self._server_key = (request, skey)  # for _fork: this request's Via stays as it is
            fork = self.forks.server_for(skey)
            if fork is not None:
                return list(self.forks.retransmission(fork, request, self._mono))
            if request.method == "CANCEL":
                fork = self.forks.server_for((*skey[:-1], "INVITE"))
                if fork is not None:
                    answer = self._reply(request, source, now, 200, "OK")
                    return answer + list(self.forks.cancel(fork, self._mono))

        method = request.method
        # §16.3 / §8.2.1-8.2.2 checks, in the order the RFC lists them.
        try:
            uri = request.uri
        except ValueError:
            scheme = request.uri_text.partition(":")[0].lower()
            if scheme and scheme not in ("sip", "sips", "tel") and scheme.isalpha():
                return self._reply(request, source, now, 416, "Unsupported URI Scheme")
            return self._reply(request, source, now, 400, "Bad Request-URI")
        if uri.scheme not in ("sip", "sips"):
            return self._reply(request, source, now, 416, "Unsupported URI Scheme")
        mf_text = request.get("max-forwards")
        max_forwards = DEFAULT_MAX_FORWARDS
        if mf_text is not None:
            if not (mf_text.isascii() and mf_text.isdigit()) or len(mf_text) > 3:
                return self._reply(request, source, now, 400, "Bad Max-Forwards")
            max_forwards = int(mf_text)
        # A method we do not know is routed like any other (§16: a proxy need not understand
        # a method to forward it); only REGISTER and OPTIONS to us are ours to answer.
        if method not in ("ACK", "CANCEL"):
            refused = self._bad_extension(request, "proxy-require", source, now)
            if refused is not None:
                return refused
        if max_forwards == 0 and not (
            method in ("REGISTER", "OPTIONS")
            and uri.user is None
            and self._served(uri.host, uri.port)
        ):
            # §16.3 step 3, before any target is looked for. A request addressed to the
            # registrar or to the node itself is for us to answer, not to forward (§16.3).
            return self._reply(request, source, now, 483, "Too Many Hops")
        # The loop hash covers the request as received; it is computed only when needed (a
        # Via of ours is present, or we forward), most requests are answered here.
        loop = _LoopHash(request)
        for via in request.vias:
            if (
                f"{via.host}:{via.port}".lower() in self._mes
                and _branch_loop(via.branch) == loop.value()
            ):
                return self._reply(request, source, now, 482, "Loop Detected")

        from_peer = self._is_peer(source, request)
        if method == "ACK" and request.to_tag == self._tag(request):
            return []  # the ACK of a non-2xx answer we made ourselves (a 407, a 480 ...)
        if self.settings.auth and method == "INVITE" and not from_peer and request.to_tag is None:
            caller = self._local_caller(request)
            if caller is not None:
                refused = self._authenticate(request, source, now, caller, proxy=True)
                if refused is not None:
                    return refused
        # §16.4: route information preprocessing.
        routes = request.get_all("route")
        record_routed = False
        if self._ours(uri.host, uri.port) and routes and uri.user is None:
            # We were a strict router's target: the real Request-URI is the last Route.
            last = routes.pop()
            try:
                request.uri_text = str(parse_address(last).uri)
            except ValueError:
                return self._reply(request, source, now, 400, "Bad Route")
            request.set_values("route", routes)
            uri = request.uri
            record_routed = True  # our Record-Route, used by a strict router (§16.4)
        # Every Route of ours on top goes: one, or two where we Record-Routed a dialog twice
        # (RFC 5658: one entry for each leg, when their transports differ).
        flow_tokens: list[str] = []
        while routes:
            try:
                first = parse_address(routes[0]).uri
            except ValueError:
                return self._reply(request, source, now, 400, "Bad Route")
            if not self._ours(first.host, first.port, first.scheme):
                break
            routes.pop(0)
            pop_first_value(request, "route")
            record_routed = True
            if first.user and "ob" in first.parameters:
                # Our Path or Record-Route toward a phone's flow (we always mark those `ob`);
                # a user part in a plain Route of ours is just routed on.
                flow_tokens.append(first.user)
        for token in flow_tokens:
            # A dialog between two phones at this edge has a token for each: the request goes
            # onto the flow it did not come from.
            sent = self._to_flow(request, source, now, token, max_forwards, loop)
            if sent is not None:
                return sent

        if routes:
            if not (record_routed or from_peer):
                return self._reply(request, source, now, 403, "Relaying Denied")
            try:
                nxt = parse_address(routes[0]).uri
            except ValueError:
                return self._reply(request, source, now, 400, "Bad Route")
            return self._forward(
                request,
                source,
                now,
                nxt.host,
                nxt.port,
                uri_transport(nxt),
                max_forwards,
                add_rr=False,
                loop=loop,
            )

        if self._served(uri.host, uri.port):
            if method == "REGISTER":
                return self._register(request, source, now, max_forwards, loop, from_peer)
            if uri.user is None:
                if method == "OPTIONS":
                    return self._reply(
                        request,
                        source,
                        now,
                        200,
                        "OK",
                        [("allow", ", ".join(ALLOWED_METHODS)), ("accept", "application/sdp")],
                    )
                if method not in _ALLOWED:
                    # Addressed to us (the domain, no user): ours to answer as a UAS (§8.2.1).
                    return self._reply(
                        request,
                        source,
                        now,
                        405,
                        "Method Not Allowed",
                        [("allow", ", ".join(ALLOWED_METHODS))],
                    )
                return self._reply(request, source, now, 404, "Not Found")
            aor = aor_of(uri)
            if (
                aor is None
                or not self._served(uri.host, uri.port)
                or (uri.host.lower().rstrip(".") not in self.settings.domains)
            ):
                return self._reply(request, source, now, 404, "Not Found")
            return self._to_aor(request, source, now, aor, max_forwards, loop, from_peer)

        # A foreign Request-URI with no Route left.
        if record_routed or from_peer:
            return self._forward(
                request,
                source,
                now,
                uri.host,
                uri.port,
                uri_transport(uri),
                max_forwards,
                add_rr=False,
                loop=loop,
            )
        return self._reply(request, source, now, 403, "Relaying Denied")

    def _resend(self, cached: bytes, request: Request, source: Source) -> Send:
        if source.transport != "udp":
            return Send(source.transport, source.host, source.port, cached, source.conn)
        return Send("udp", source.host, _response_port(request.vias[0], source), cached)

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

    def _loop_hash(self, request: Request) -> str:
        return _LoopHash(request).value()

    # ---------------------------------------------------------------- registrar

    def _register(
        self,
        request: Request,
        source: Source,
        now: float,
        max_forwards: int,
        loop: _LoopHash,
        from_peer: bool,
    ) -> list[Action]:
        refused = self._bad_extension(request, "require", source, now)
        if refused is not None:
            return refused
        to_uri = request.to_addr.uri
        aor = aor_of(to_uri)
        if aor is None or to_uri.host.lower().rstrip(".") not in self.settings.domains:
            return self._reply(request, source, now, 404, "Not Found")
        owners = self._reachable_first(self._owners(aor, self.settings.replicas))
        names = [p.name for p in owners]
        ours = (source.host, source.port) == (self.settings.host, self.settings.port)
        trusted_removal = False
        plan: Plan = []
        if request.count(_FLOW_LOST):
            if from_peer or ours:
                trusted_removal = True  # a node's removal of a phone that stopped answering
            else:
                request.remove(_FLOW_LOST)  # nobody outside may claim that
        if not from_peer and not ours and self._needs_flow(request, source):
            # We are the phone's edge: calls to it must come back through us, onto the flow it
            # registered over (RFC 5626 §5.2). Our Path is the first the registrar sees.
            # (Owners and other nodes reach us by UDP: the Path names that address.)
            request.prepend("path", self._rr_entry("udp", self._token_of(source)))
            self.stats["paths_added"] += 1
            if source.transport == "udp" and self.settings.keepalive_interval > 0:
                # Pinged once its owners accept it: at once if we are one, else when their
                # 2xx comes back through us.
                plan = self._watch_plan(request, source, aor)
        if self.settings.name not in names and not from_peer:
            if not owners:
                return self._no_owner(request, source, now)
            out = self._to_node(request, source, now, owners[0], max_forwards, False, loop)
            branch = request.vias[0].branch or ""
            if plan and branch.startswith(BRANCH_PREFIX):
                self.pinger.expect(branch, plan, self._mono)
            return out
        if self.settings.auth and not trusted_removal:
            refused = self._authenticate(request, source, now, aor, proxy=False)
            if refused is not None:
                return refused
        self.stats["registers"] += 1
        where = f"{source.transport}:{source.host}:{source.port}"
        outcome = register(
            request,
            self.store,
            aor=aor,
            now=now,
            policy=self.settings.policy,
            origin=self.settings.name,
            source=where,
        )
        if outcome.status == 200 and plan:
            self.pinger.apply(plan, self._mono)
        if outcome.status != 200 or not outcome.changes:
            return self._reply(
                request, source, now, outcome.status, outcome.reason, outcome.headers
            )
        peers = [n for n in names if n != self.settings.name]
        ok = make_response(
            request,
            200,
            "OK",
            outcome.headers,
            to_tag=self._tag(request),
            server=self.settings.server_header,
        )
        self.stats["answered"] += 1
        self.answers_by_code[200] = self.answers_by_code.get(200, 0) + 1
        key = transaction_key(request)
        if not peers:
            send = self._to_via(ok, request, source)
            if key is not None:
                self.txns.answered(key, now, send.data)
            return [send]
        if key is not None:
            self.txns.pending(key, now)
        return [
            Replicate(
                outcome.changes,
                peers,
                self._to_via(ok, request, source),
                key,
                request,
                source,
                aor,
            )
        ]

    # ---------------------------------------------------------------- authentication

    def _local_caller(self, request: Request) -> str | None:
        """The AOR of the caller (From) when its domain is one of ours, else None."""
        try:
            uri = request.from_addr.uri
        except ValueError:
            return None
        aor = aor_of(uri)
        if aor is None or uri.host.lower().rstrip(".") not in self.settings.domains:
            return None
        return aor

    def remember_credentials(self, aor: str, record: Binding | None, now: float) -> None:
        """What an owner answered for a caller's subscriber record, kept a minute (bounded)."""
        if len(self.credentials) >= 10_000:
            self.credentials = {a: c for a, c in self.credentials.items() if c[1] > now}
            if len(self.credentials) >= 10_000:
                self.credentials.clear()
        creds = _credentials(record) if record is not None and record.live(now) else None
        self.credentials[aor] = (creds, now + CREDENTIALS_CACHE)

    def _credentials_of(self, aor: str, now: float) -> Credentials | bool | None:
        """The subscriber's credentials: from our store when we own the AOR, else from what
        was fetched (cached a minute); False when they must be fetched first."""
        record = self.store.subscriber(aor, now)
        if record is not None:
            return _credentials(record)
        cached = self.credentials.get(aor)
        if cached is not None and cached[1] > now:
            return cached[0]
        names = [p.name for p in self._owners(aor, self.settings.replicas)]
        if self.settings.name in names or not names:
            return None  # we are an owner (or nobody is): there is no such subscriber
        return False

    def _authenticate(
        self, request: Request, source: Source, now: float, aor: str, *, proxy: bool
    ) -> list[Action] | None:
        """None when the request carries good credentials of `aor`'s subscriber; else the
        answer: a 401 (REGISTER) or 407 (INVITE) challenge, or a fetch of the credentials."""
        assert self.verifier is not None, "settings.auth needs a verifier"
        user, realm = split_aor(aor)
        header = "proxy-authorization" if proxy else "authorization"
        params = None
        for value in request.get_all(header):
            candidate = parse_credentials(value)
            if candidate is not None and candidate.get("realm") == realm:
                params = candidate
                break
        stale = False
        if params is not None:
            creds = self._credentials_of(aor, now)
            if creds is False:
                owners = [p.name for p in self._owners(aor, self.settings.replicas)]
                return [FetchCredentials(aor, owners, request.to_bytes(), source)]
            if params.get("username") != user:
                creds = None  # a subscriber may only speak for itself
            verdict = self.verifier.verify(
                params,
                method=request.method,
                realm=realm,
                credentials=creds if isinstance(creds, Credentials) else None,
                body=request.body,
            )
            if verdict.ok:
                self.stats["authenticated"] += 1
                return None
            self.stats["auth_failed"] += 1
            stale = verdict.stale
        self.stats["challenged"] += 1
        status, reason, name = (
            (407, "Proxy Authentication Required", "proxy-authenticate")
            if proxy
            else (401, "Unauthorized", "www-authenticate")
        )
        values = challenges(
            realm, self.verifier.minter, stale=stale, algorithms=self.settings.auth_algorithms
        )
        return self._reply(request, source, now, status, reason, [(name, v) for v in values])

    def stand_ins(self, aor: str, count: int, tried: Iterable[str] = ()) -> list[str]:
        """Up to `count` live members, best ranked first, that are not this node and not in
        `tried` (the owners already written to): they take a copy of a write when an owner
        does not confirm in time (one that died and is not yet declared), so the write still
        ends up on R nodes; repair later moves it to the real owners and the stand-in drops
        it. Ranked afresh, so an owner declared dead meanwhile is already left out."""
        skip = {self.settings.name, *tried}
        ranked = self._owners(aor, self.settings.replicas + count + len(skip))
        return [p.name for p in ranked if p.name not in skip][:count]

    def replication_failed(self, action: Replicate) -> Send:
        """The answer when the other owners did not confirm a REGISTER in time: 503 with
        Retry-After, so the phone tries again rather than believing it is registered."""
        self.stats["replication_failed"] += 1
        response = make_response(
            action.request,
            503,
            "Replica Did Not Confirm",
            [("retry-after", "1")],
            to_tag=self._tag(action.request),
            server=self.settings.server_header,
        )
        return self._to_via(response, action.request, action.source)

    # ---------------------------------------------------------------- proxy

    def _to_aor(
        self,
        request: Request,
        source: Source,
        now: float,
        aor: str,
        max_forwards: int,
        loop: _LoopHash,
        from_peer: bool,
    ) -> list[Action]:
        owners = self._reachable_first(self._owners(aor, self.settings.replicas))
        names = [p.name for p in owners]
        entry = not from_peer
        if self.settings.name in names or from_peer:
            bindings = self.store.lookup(aor, now)
            others = [p for p in owners if p.name != self.settings.name]
            if not bindings and not from_peer and others:
                # We hold nothing for the AOR, but we may have become its owner a moment
                # ago (a co-owner died) and the handoff has not reached us yet: the other
                # owner decides (it answers 480 itself if it has nothing either).
                return self._to_node(request, source, now, others[0], max_forwards, entry, loop)
            if not bindings:
                if request.method == "ACK":
                    return []
                return self._reply(request, source, now, 480, "Temporarily Unavailable")
            if request.method == "ACK":
                # The ACK of a 2xx with no route set (end to end): to the best binding.
                target = bindings[0]
                try:
                    contact = parse_uri(target.contact)
                except ValueError:
                    return []
                request.uri_text = target.contact
                return self._forward(
                    request,
                    source,
                    now,
                    contact.host,
                    contact.port,
                    uri_transport(contact),
                    max_forwards,
                    add_rr=False,
                    loop=loop,
                )
            if request.method == "CANCEL":
                # No transaction of ours to cancel (§16.10 would forward it statelessly, but
                # our branches are our own: no device could match it).
                return self._reply(request, source, now, 481, "Call/Transaction Does Not Exist")
            return self._fork(request, source, now, bindings, max_forwards, add_rr=entry, loop=loop)
        if not owners:
            return self._no_owner(request, source, now)
        return self._to_node(request, source, now, owners[0], max_forwards, entry, loop)

    def _fork(
        self,
        request: Request,
        source: Source,
        now: float,
        bindings: list[Binding],
        max_forwards: int,
        *,
        add_rr: bool,
        loop: _LoopHash,
    ) -> list[Action]:
        """Proxy statefully to every device of the AOR (§16.5-16.7): one target per
        `+sip.instance` (else per contact), in groups of equal q, highest first."""
        if max_forwards <= 0:
            return self._reply(request, source, now, 483, "Too Many Hops")
        if self.forks.full:
            self.forks.stats["fork_full"] += 1
            return self._reply(
                request, source, now, 503, "Service Unavailable", [("retry-after", "1")]
            )
        # One target per device, the first binding that can be reached (highest q, then the
        # most recently refreshed); its other flows (RFC 5626: another reg-id, through
        # another edge) are its alternates, tried in turn on a 430 (§5.3).
        targets: dict[str, list[Target]] = {}
        flows_gone = 0
        for binding in bindings:
            device = getattr(binding, "instance", "") or binding.key
            try:
                contact = parse_uri(binding.contact)
            except ValueError:
                continue
            if binding.path:
                target = self._path_target(binding, device)
                if target is None:
                    flows_gone += 1
                    continue
            else:
                target = Target(
                    binding.contact,
                    uri_transport(contact),
                    contact.host,
                    contact.port or (5061 if contact.scheme == "sips" else 5060),
                    binding.q,
                    device,
                )
            targets.setdefault(device, []).append(target)
        groups: list[list[Target]] = []
        last_q: float | None = None
        for found in targets.values():
            first = found[0]
            if len(found) > 1:
                first = first._replace(alternates=tuple(found[1:]))
            if last_q is None or first.q != last_q:
                groups.append([])
                last_q = first.q
            groups[-1].append(first)
        if not groups:
            if flows_gone:
                # RFC 5626 §5.3: every device is reachable only over a flow that is gone.
                return self._reply(request, source, now, 430, "Flow Failed")
            return self._reply(request, source, now, 480, "Temporarily Unavailable")
        request.set("max-forwards", str(max_forwards - 1))
        if add_rr and request.method in _DIALOG_CREATING and request.to_tag is None:
            self._add_rr(request, source, None)  # each branch adds its own leg's entry
        # Where the responses go, as `_to_via` sends ours (the source, never the Via's host).
        if source.transport != "udp":
            respond_to = Send(source.transport, source.host, source.port, b"", source.conn)
        else:
            respond_to = Send("udp", source.host, _response_port(request.vias[0], source), b"")
        return list(
            self.forks.start(
                self._key_of(request), request, respond_to, groups, self._mono, loop.value()
            )
        )

    def _to_flow(
        self,
        request: Request,
        source: Source,
        now: float,
        token: str,
        max_forwards: int,
        loop: _LoopHash,
    ) -> list[Action] | None:
        """A request routed to us by a URI of ours with a flow token (the Path the owner
        followed, or our Record-Route in a dialog): onto that flow (RFC 5626 §5.3), with our
        Record-Route (the token in it) on a dialog-creating request so the rest of the dialog
        comes back here. None when it came over that very flow (the phone's own request: on
        by the next Route). 403 for a token we did not make, 430 for a flow that is gone."""
        flow = decode_token(token, self._branch_keys())
        if flow is None:
            self.stats["bad_flow_tokens"] += 1
            if request.method == "ACK":
                return []
            return self._reply(request, source, now, 403, "Forbidden")
        if (flow.transport, flow.host, flow.port) == (source.transport, source.host, source.port):
            return None
        if self._flow_gone(flow):
            if request.method == "ACK":
                return []
            return self._reply(request, source, now, 430, "Flow Failed")
        self.stats["to_flows"] += 1
        rr = None
        if request.method in _DIALOG_CREATING and request.to_tag is None:
            rr = self._rr_entry(flow.transport, token)
        return self._forward(
            request,
            source,
            now,
            flow.host,
            flow.port,
            flow.transport,
            max_forwards,
            add_rr=False,
            loop=loop,
            conn=flow.conn,
            record_route=rr,
        )

    def _watch_plan(self, request: Request, source: Source, aor: str) -> Plan:
        """We are this NAT'd UDP phone's edge: what to do once the REGISTER is accepted,
        ping it for as long as it asks to be registered (or stop, for a removal)."""
        plan: Plan = []
        header = request.get("expires")
        for value in request.get_all("contact"):
            try:
                address = parse_address(value)
            except ValueError:
                continue
            params = {k.lower(): v for k, v in address.parameters.items()}
            text = params.get("expires") or header or str(self.settings.policy.default_expires)
            seconds = int(text) if text.isascii() and text.isdigit() else 0
            if seconds == 0:
                plan.append((source.host, source.port))
                continue
            seconds = min(seconds, self.settings.policy.max_expires)
            # A device (RFC 5626 §6) is bound by its instance and reg-id, not its URI: the
            # removal must name them too.
            device = "".join(
                f";{k}={v}" if v is not None else f";{k}"
                for k, v in address.parameters.items()
                if k.lower() in ("+sip.instance", "reg-id")
            )
            watched = Watched(
                flow_of(source),
                aor,
                str(address.uri),
                request.call_id,
                request.cseq[0],
                self._mono + seconds,
                device,
            )
            plan.append(watched)
        return plan

    def _needs_flow(self, request: Request, source: Source) -> bool:
        """Whether a phone can only be reached over the flow its REGISTER came on: a stream
        (its connection), a UA asking for outbound (RFC 5626: a Contact with reg-id), or one
        behind NAT, by the tests Kamailio's nathelper makes: the top Via names another address
        or port than the packet came from, or a Contact names a private address the packet
        did not come from. (A Contact that is merely elsewhere is a third-party registration:
        it is reached where it says.)"""
        if source.transport != "udp":
            return True
        top = request.vias[0]
        if top.host.strip("[]") != source.host or (top.port or 5060) != source.port:
            return True
        for value in request.get_all("contact"):
            try:
                address = parse_address(value)
            except ValueError:
                continue  # the registrar refuses it
            if "reg-id" in {k.lower() for k in address.parameters}:
                return True
            host = address.uri.host.strip("[]")
            if host != source.host and _private(host):
                return True
        return False

    def _path_target(self, binding: Binding, device: str) -> Target | None:
        """Where a branch to a binding with a Path goes (RFC 3327): to its first hop, with the
        Path as the Route set; when that hop is us (we are the device's edge), straight onto
        the flow its token names. None when that flow is gone (or the token is not ours)."""
        try:
            first = parse_address(binding.path[0]).uri
        except ValueError:
            return None
        if not self._ours(first.host, first.port):
            host, port = first.host.strip("[]").lower(), first.port or 5060
            if self._gone_at(host, port) or (
                self._peer_at(host, port) is None
                and decode_token(first.user or "", self._branch_keys()) is not None
            ):
                # The first hop is a member that failed or left, or no live member has the
                # address of a flow token of the cluster's: the edge that held the phone's
                # flow is gone, and the flow with it (RFC 5626 §5.3: 430).
                self.stats["flows_gone"] += 1
                return None
            return Target(
                binding.contact,
                uri_transport(first),
                first.host,
                first.port or 5060,
                binding.q,
                device,
                route=binding.path,
            )
        flow = self._flow_of_token(first.user)
        if flow is None:
            return None
        return Target(
            binding.contact,
            flow.transport,
            flow.host,
            flow.port,
            binding.q,
            device,
            route=binding.path[1:],
            conn=flow.conn,
            record_route=self._rr_entry(flow.transport, first.user),
        )

    def _flow_of_token(self, token: str | None) -> Flow | None:
        """The flow a token of ours names, if it is still there: a stream flow whose
        connection closed is gone (a datagram flow is only known gone by its keepalives)."""
        flow = decode_token(token or "", self._branch_keys())
        if flow is None:
            self.stats["bad_flow_tokens"] += 1
            return None
        return None if self._flow_gone(flow) else flow

    def _flow_gone(self, flow: Flow) -> bool:
        """A stream flow whose connection closed is gone (counted); a datagram flow is only
        known gone by its keepalives."""
        if flow.stream and flow.conn is not None and not self._flow_alive(flow.conn):
            self.stats["flows_gone"] += 1
            return True
        return False

    def _to_node(
        self,
        request: Request,
        source: Source,
        now: float,
        peer: Peer,
        max_forwards: int,
        add_rr: bool,
        loop: _LoopHash,
    ) -> list[Action]:
        """Forward statelessly, in one hop, to another node of the cluster (nodes talk UDP)."""
        return self._forward(
            request,
            source,
            now,
            peer.host,
            peer.port,
            "udp",
            max_forwards,
            add_rr=add_rr,
            loop=loop,
        )

    def _forward(
        self,
        request: Request,
        source: Source,
        now: float,
        host: str,
        port: int | None,
        transport: str,
        max_forwards: int,
        *,
        add_rr: bool,
        loop: _LoopHash,
        conn: int | None = None,
        record_route: str | None = None,
    ) -> list[Action]:
        """§16.6 steps 3-8 for one target, then send (stateless, §16.11). `record_route`: our
        Record-Route value to add instead of the plain one; `conn`: the stream to send on."""
        if max_forwards <= 0:
            return self._reply(request, source, now, 483, "Too Many Hops")
        top = request.vias[0]
        request.set("max-forwards", str(max_forwards - 1))
        out_transport = _out_transport(transport)
        if record_route is not None:
            self._add_rr(request, source, record_route)
        elif add_rr and request.method in _DIALOG_CREATING and request.to_tag is None:
            self._add_rr(request, source, self._rr_entry(out_transport))
        stateless = _h(
            top.branch or f"{request.call_id}|{request.from_tag}|{request.cseq[0]}",
            f"{top.host}:{top.port}",
            self.settings.name,
            size=8,
        )
        branch = self._branch(BRANCH_PREFIX, stateless, loop.value(), top)
        via = f"{self._via_of(out_transport)};branch={branch}"
        request.prepend("via", via)
        data = request.to_bytes()
        if len(data) > MAX_MESSAGE_SIZE:
            return self._reply(request, source, now, 513, "Message Too Large")
        self.stats["forwarded"] += 1
        host = host.strip("[]")
        return [Send(out_transport, host, port or 5060, data, conn)]


@functools.lru_cache(maxsize=4096)
def _private(host: str) -> bool:
    """An IP literal in a range only reachable behind some NAT: RFC 1918, RFC 6598 (carrier
    NAT), link-local, unique-local (what nathelper's private-Contact test looks for)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in net for net in _BEHIND_NAT if net.version == ip.version)


_BEHIND_NAT = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
        "fc00::/7", "fe80::/10",
    )
)  # fmt: skip


def _stamp_received(request: Request, source: Source) -> None:
    """§18.2.1 and RFC 3581, as a server transport does on receipt: the top Via records the
    address the request really came from (`received`), and the port (`rport`) when the client
    asked for it, or always over TCP: a response must go back on this connection (§18.2.2),
    and the connection is known by the client's address. Responses copy this Via."""
    top = request.vias[0]
    text = top.text
    rport_empty = "rport" in top.params and not top.params.get("rport")
    if rport_empty:
        text = _set_rport(text, source.port)
    elif source.transport != "udp" and "rport" not in top.params:
        text += f";rport={source.port}"
        rport_empty = True
    if "received" not in top.params and (rport_empty or top.host.strip("[]") != source.host):
        text += f";received={source.host}"
    if text != top.text:
        replace_first_value(request, "via", text)


class _LoopHash:
    """§16.3 step 4 / §16.6 step 8: a hash of the fields that change on a spiral and not on
    a loop, taken from the request as received and computed at most once, when needed. What
    processing may change before then (the Request-URI, the Route set) is kept at once;
    tags, Call-ID and CSeq stay as they are, and are read only if the hash is asked for
    (most requests are answered here: a REGISTER never needs it)."""

    __slots__ = ("_request", "_routes", "_uri", "_value")

    def __init__(self, request: Request) -> None:
        self._request = request
        self._uri = request.uri_text
        self._routes = request.get_all("route")
        self._value: str | None = None

    def value(self) -> str:
        if self._value is None:
            request = self._request
            self._value = _h(
                self._uri,
                request.from_tag or "",
                # The ACK of a non-2xx final carries the answer's To tag, but must take the
                # INVITE's branch (§16.11, §17.2.3): the tag is left out for it.
                "" if request.method == "ACK" else (request.to_tag or ""),
                request.call_id,
                str(request.cseq[0]),
                ",".join(self._routes),
                size=4,
            )
        return self._value


# The branch of our Via at the top of a request we sent (as the kernel hands it back).
_OUR_BRANCH = re.compile(rb";branch=(z9hG4bK-s[tf]-[0-9a-f]+\.[0-9a-f]+\.[0-9a-f]+)")

# The CSeq line of a response in its common spelling: the method is group 1.
_CSEQ_LINE = re.compile(rb"\r\nCSeq:[ \t]*\d{1,10}[ \t]+([A-Za-z]{1,32})[ \t]*\r\n")

# A Via header line in any spelling (RFC 3261 §7.3.1: case-insensitive, compact "v").
_ANY_VIA = re.compile(rb"\r\n(?:via|v)[ \t]*:", re.IGNORECASE)


def _branch_loop(branch: str | None) -> str | None:
    """The loop hash in a branch of ours (the middle of `<id>.<loop>.<mac>`)."""
    if not branch or not branch.startswith((BRANCH_PREFIX, STATEFUL_PREFIX)):
        return None
    parts = branch.split(".")
    return parts[1] if len(parts) == 3 else None


def _response_port(top: ViaHop, source: Source) -> int:
    if "rport" in top.params:
        rport = top.params.get("rport")
        if not rport:
            return source.port
        if rport.isascii() and rport.isdigit() and 0 < int(rport) < 65_536:
            return int(rport)
    if top.port is not None:
        return top.port
    return 5061 if top.transport == "TLS" else 5060


def _out_transport(transport: str) -> str:
    """The transport a request goes out on for a target's `transport` parameter: ours if we
    have it, else UDP (unknown values such as SCTP)."""
    return transport if transport in STREAM_TRANSPORTS else "udp"


def uri_transport(uri: object) -> str:
    """A URI's transport: its parameter, else TLS for a `sips:` URI (RFC 3261 §26.2), UDP
    for a `sip:` one."""
    params = getattr(uri, "parameters", {})
    value = params.get("transport") if params else None
    if not value:
        return "tls" if getattr(uri, "scheme", "sip") == "sips" else "udp"
    return str(value).lower()


def _uri_host(host: str) -> str:
    try:
        if ipaddress.ip_address(host.strip("[]")).version == 6:
            return f"[{host.strip('[]')}]"
    except ValueError:
        pass
    return host


def _set_rport(via_text: str, port: int) -> str:
    parts = via_text.split(";")
    return ";".join(f"rport={port}" if p.strip().lower() == "rport" else p for p in parts)


def _credentials(record: Binding) -> Credentials | None:
    try:
        return Credentials.from_text(split_aor(record.aor)[0], record.contact)
    except ValueError:
        return None
