"""The forwarding and forking path of `Proxy` (RFC 3261 §16.5-16.7, §16.11): a request for
an address-of-record goes to its first live owner, and the owner forks it to every device of
the AOR (statefully, with the `Forks` core of `_fork.py`) or answers 480; a request for a flow
of ours goes onto it (RFC 5626 §5.3); anything else is forwarded statelessly, in one hop."""

from __future__ import annotations

from ._actions import Send, Source
from ._bindings import Binding
from ._flow import Flow, decode_token
from ._fork import Target
from ._hop import Action, Hop, Peer
from ._message import MAX_MESSAGE_SIZE, Request, parse_address, parse_uri
from ._responses import _response_port
from ._routes import _DIALOG_CREATING, BRANCH_PREFIX, _h, _LoopHash, _out_transport, uri_transport
from ._transaction import server_key

__all__ = ["Forwarder"]


class Forwarder(Hop):
    """A hop that forwards and forks requests; see the module docstring."""

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

    def _key_of(self, request: Request) -> tuple[str, ...]:
        """`server_key(request)`, as `_request` found it when it looked for a transaction (an
        RFC 3261 key depends only on the top Via, which nothing edits after that)."""
        seen, key = self._server_key
        if seen is request and key[0] != "2543":
            return key
        return server_key(request)

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
