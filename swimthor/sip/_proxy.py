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

from ._actions import Send, Source
from ._hop import Action
from ._keepalive import PING_PREFIX, Watched
from ._message import (
    Request,
    Response,
    SipParseError,
    parse_address,
    parse_message,
    parse_via,
    pop_first_value,
)
from ._registrar import aor_of
from ._registration import FLOW_LOST_HEADER, Registrar
from ._responses import _CSEQ_LINE, _cut_our_via, _resend, _stamp_received, _top_via_line
from ._routes import (
    _OUR_BRANCH,
    BRANCH_PREFIX,
    STATEFUL_PREFIX,
    _branch_loop,
    _h,
    _LoopHash,
    _out_transport,
    uri_transport,
)
from ._transaction import ResponseBytes, client_key, server_key
from ._txn import PENDING, transaction_key

__all__ = ["ALLOWED_METHODS", "Proxy"]

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
DEFAULT_MAX_FORWARDS = 70
# Seconds a node our datagrams bounced off is tried after the AOR's other owners: about the
# time SWIM takes to declare it (local profile ~1 s, LAN ~5 s).
UNREACHABLE_HOLD = 5.0


class Proxy(Registrar):
    """One node's SIP behaviour; see the module docstring. Built by `Hop.__init__`
    (`_hop.py`, its state); the REGISTER path and authentication are `Registrar`'s
    (`_registration.py`), forwarding and forking `Forwarder`'s (`_forward.py`)."""

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
            found = _top_via_line(data)
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

    # ---------------------------------------------------------------- responses

    def _relay_fast(
        self, data: bytes, found: tuple[int, int, int] | None = None
    ) -> list[Action] | None:
        """The common response on its way back, without a full parse: our stateless Via alone
        on the top Via line (`_top_via_line`), the next hop after it. Our Via is cut out and the
        rest goes on byte for byte (§16.7 step 3, §16.11). Anything else is None, and the full
        parser decides."""
        found = found or _top_via_line(data)
        if found is None or not data.startswith(self._via_prefix, found[0] + 7):
            return None
        cut = _cut_our_via(data, found[0], found[1], self._via_prefix)
        if cut is None:
            return None
        branch, out, nxt = cut
        try:
            hop = parse_via(nxt.decode("utf-8"))
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
        found = found or _top_via_line(data)
        if found is None or not data.startswith(self._via_prefix_sf, found[0] + 7):
            return None
        status = int(data[8:11])
        if not 100 <= status < 300:
            return None  # a non-2xx final needs its To for the ACK: parsed in full
        cut = _cut_our_via(data, found[0], found[1], self._via_prefix_sf)
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
                return [_resend(cached, request, source)]
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
