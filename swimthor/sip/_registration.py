"""The REGISTER path of `Proxy`, and the digest authentication of requests. At the edge a
REGISTER gets a Path with the phone's flow token (RFC 3327, RFC 5626 §5.2) and, for a NAT'd
UDP phone, a plan of keepalives; at an owner the registrar's rules (`register()` in
`_registrar.py`) apply it, and a change goes out as a `Replicate` to the other owners before
the 200. REGISTER (401) and an INVITE from one of our subscribers (407) are challenged
(RFC 3261 §22) with credentials held by the AOR's owners, fetched when not held here."""

from __future__ import annotations

from collections.abc import Iterable

from ._actions import Send, Source
from ._auth import Credentials, challenges, parse_credentials
from ._bindings import Binding
from ._flow import flow_of
from ._forward import Forwarder
from ._hop import Action, FetchCredentials, Replicate
from ._keepalive import Plan, Watched
from ._message import Request, parse_address
from ._registrar import aor_of, register, split_aor
from ._responses import _to_via, make_response
from ._routes import BRANCH_PREFIX, _LoopHash, _needs_flow
from ._txn import transaction_key

__all__ = ["FLOW_LOST_HEADER", "Registrar"]

# The header that marks a node's own removal of a binding whose phone stopped answering its
# keepalives: taken without a challenge from a node, stripped from anyone else's REGISTER.
FLOW_LOST_HEADER = "Swimthor-Flow-Lost"
_FLOW_LOST = FLOW_LOST_HEADER.lower()  # as the parser keys it

# How long a caller's credentials fetched from its owners are kept by another node.
CREDENTIALS_CACHE = 60.0


class Registrar(Forwarder):
    """A forwarder that is also the registrar; see the module docstring."""

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
        if not from_peer and not ours and _needs_flow(request, source):
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
        if not from_peer and not ours and not request.get_all("contact"):
            others = [p for p in owners if p.name != self.settings.name]
            if others and not self.store.lookup(aor, now):
                # A query at an owner that holds nothing for the AOR: it may have become
                # its owner a moment ago (a co-owner died, or it joined) and the handoff has
                # not reached it yet. The other owner answers (an empty 200 if it holds
                # nothing either; it does not send the query back: it came from a peer).
                return self._to_node(request, source, now, others[0], max_forwards, False, loop)
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
            send = _to_via(ok, request, source)
            if key is not None:
                self.txns.answered(key, now, send.data)
            return [send]
        if key is not None:
            self.txns.pending(key, now)
        return [
            Replicate(
                outcome.changes,
                peers,
                _to_via(ok, request, source),
                key,
                request,
                source,
                aor,
            )
        ]

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

    def stand_ins(self, aor: str, count: int, tried: Iterable[str] = ()) -> list[str]:
        """Up to `count` live members, best ranked first, that are not this node and not in
        `tried` (the owners already written to): they take a copy of a write when an owner
        does not confirm in time (one that died and is not yet declared), so the write still
        ends up on R nodes; repair later moves it to the real owners and the stand-in drops
        it. Ranked afresh, so an owner declared dead meanwhile is already left out."""
        skip = {self.settings.name, *tried}
        ranked = self._owners(aor, self.settings.replicas + count + len(skip))
        return [p.name for p in ranked if p.name not in skip][:count]

    def copy_targets(self, aor: str, owners: Iterable[str], holders: set[str]) -> list[str]:
        """Where a write goes next when not every one of `owners` (the other owners it was
        first sent to) confirmed it and `holders` did: the owners not in `holders`, asked
        again whatever membership now thinks of them (a suspect may be a paused host about
        to answer; one declared dead costs a datagram), then one stand-in per copy still
        missing (`stand_ins`, which leaves out `owners` and `holders`)."""
        owners = list(owners)
        missing = len(owners) - len(holders)
        if missing <= 0:
            return []
        again = [n for n in owners if n not in holders]
        return again + self.stand_ins(aor, missing, [*owners, *holders])

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
        return _to_via(response, action.request, action.source)

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


def _credentials(record: Binding) -> Credentials | None:
    try:
        return Credentials.from_text(split_aor(record.aor)[0], record.contact)
    except ValueError:
        return None
