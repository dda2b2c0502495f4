"""One agent's SIP front-end: the proxy, its server, the replicator, and the directory of the
other nodes' SIP addresses, wired to the agent's routing table and membership.

Each agent with the role ``sip`` announces its SIP address in the member tag ``sip``
(``host:port``); the directory is every live member with the role and the tag. Owners of an
address-of-record are `routing.owners(aor, R, role="sip")` among them.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
import trio

from ..clocks import HOST_CLOCKS, Clocks
from ..config import SipConfig, format_hostport, parse_hostport, tls_context
from ..directory import SIP_TAG, STREAM_TAGS, DirectoryChange, MemberDirectory
from ..keyring import Keyring
from ..membership import Member
from ..ratelimit import RateLimit, SourceLimiter
from ..routing import EpochUnavailable, RoutingTable
from ._auth import Credentials, NonceMinter, Verifier, random_secret
from ._bindings import SUBSCRIBER_KEY, Binding, BindingStore, subscriber_record
from ._flow import decode_token
from ._grammar import parse_uri
from ._hop import Peer, ProxySettings
from ._message import parse_address
from ._proxy import Proxy
from ._registrar import RegistrarPolicy, aor_of, split_aor
from ._replication import Replicator
from ._routes import uri_transport
from ._server import SipServer, SipTransportConfig, StreamListen
from ._subscribers import JOURNAL_FILE, SubscriberJournal

__all__ = ["SIP_TAG", "STREAM_TAGS", "SipService", "location_reply"]

log = structlog.get_logger("swimthor.sip")

# For this long after the routing epoch moves, an AOR's owners that already owned it before
# are asked before those that gained it (`SipService.owners`): handoff takes about a second,
# retried after 1, 2, 4 s when a push is not confirmed.
HANDOFF_SETTLE = 10.0
# AORs whose owner names are kept per epoch (about 150 bytes each beyond the AOR itself).
OWNER_NAMES_CACHED = 2_000_000
ROLE = "sip"


class SipService:
    def __init__(
        self,
        config: SipConfig,
        *,
        name: str,
        advertise_host: str,
        routing: RoutingTable,
        keyring: Callable[[], Keyring | None],
        label: str,
        clocks: Clocks = HOST_CLOCKS,
        rng: random.Random | None = None,
        data_dir: str | None = None,
        directory: MemberDirectory | None = None,
    ) -> None:
        """`directory`: the live members, followed from here on (the agent feeds it; a
        service of its own when none is given)."""
        self.config = config
        self.name = name
        self.routing = routing
        self.directory = directory if directory is not None else MemberDirectory()
        # The SIP members' addresses (from their `sip` tags), both ways, kept from the
        # directory's changes; and where members that failed or left had theirs.
        self._peers: dict[str, Peer] = {}
        self._peer_index: dict[tuple[str, int], Peer] = {}
        self._gone: dict[tuple[str, int], str] = {}  # SIP address -> a member no longer live
        self._epoch = routing.epoch
        # When each recent routing epoch came into force, for `owners` (a test may set the
        # clock).
        self.monotonic: Callable[[], float] = time.monotonic
        self._epoch_since: deque[tuple[float, int]] = deque([(-math.inf, routing.epoch)], maxlen=64)
        self.directory.subscribe(self._members_changed)
        # owner_names' answers for the current routing epoch.
        self._names: dict[str, tuple[str, ...]] = {}
        self._names_epoch = -1
        self.store = BindingStore(max_bindings=config.max_bindings)
        # Subscribers survive restarts: journaled in the data directory (none: memory only).
        self.journal = SubscriberJournal(os.path.join(data_dir, JOURNAL_FILE)) if data_dir else None
        self._nonce_secret = random_secret()
        streams = []
        origins = (
            frozenset(o.lower().rstrip("/") for o in config.ws_origins)
            if config.ws_origins
            else None
        )
        if config.tls_bind is not None or config.wss_bind is not None:
            tls = tls_context(config)
            if config.tls_bind is not None:
                streams.append(StreamListen("tls", config.tls_bind, tls))
            if config.wss_bind is not None:
                streams.append(StreamListen("wss", config.wss_bind, tls, origins))
        if config.ws_bind is not None:
            streams.append(StreamListen("ws", config.ws_bind, None, origins))
        self.server = SipServer(
            None,  # type: ignore[arg-type]  # set below, once the port is known
            config.bind,
            config=SipTransportConfig(
                max_connections=config.max_connections,
                tcp_idle=config.tcp_idle,
                tcp_message_time=config.tcp_message_time,
                handshake_time=config.handshake_time,
                replication_timeout=config.replication_timeout,
                replication_deadline=config.replication_deadline,
            ),
            streams=tuple(streams),
            tls_ca=config.tls_ca,
            clocks=clocks,
            limiter=SourceLimiter(
                RateLimit(config.rate_limit, config.rate_burst, tuple(config.rate_exempt)),
                trusted=self._is_member_host,
            ),
        )
        # Where phones and nodes reach our SIP: as configured, else the address SIP is bound
        # to when that is one address, else the gossip advertise address.
        bound_host = config.bind[0]
        specific = bound_host not in ("0.0.0.0", "::", "")
        self._advertise_host = config.advertise_host or (bound_host if specific else advertise_host)
        self._clock = clocks.wall  # expiry, stamps, nonces (swimthor.clocks)
        self._rng = rng
        self.proxy: Proxy | None = None
        self.replicator: Replicator | None = None
        self._label = label
        self._keyring = keyring

    def open(self) -> tuple[str, int]:
        """Bind the SIP sockets; returns the address to announce in the ``sip`` tag."""
        bound = self.server.open()
        advertised = (self._advertise_host, bound[1])
        settings = ProxySettings(
            name=self.name,
            host=advertised[0],
            port=advertised[1],
            domains=frozenset(d.lower() for d in self.config.domains),
            replicas=self.config.replicas,
            policy=RegistrarPolicy(
                default_expires=self.config.default_expires,
                min_expires=self.config.min_expires,
                max_expires=self.config.max_expires,
                max_contacts=self.config.max_contacts,
            ),
            auth=self.config.auth,
            auth_algorithms=tuple(self.config.auth_algorithms),
            fork_timeout=self.config.fork_timeout,
            keepalive_interval=self.config.keepalive_interval,
            keepalive_misses=self.config.keepalive_misses,
            listen={
                transport: (self._advertise_host, port)
                for transport, (_host, port) in self.server.stream_bound.items()
            },
        )
        self.proxy = Proxy(
            settings,
            self.owners,
            self.peers,
            self.store,
            self.peer_at,
            branch_keys=self._nonce_secrets,
            flow_alive=self.server.has_connection,
            gone_at=self.member_gone_at,
        )
        self.proxy.verifier = Verifier(NonceMinter(self._nonce_secrets, clock=self._clock))
        self._load_subscribers()
        self.server.proxy = self.proxy
        self.replicator = Replicator(
            self.name,
            self.store,
            keyring=self._keyring,
            label=self._label,
            owners=self.owner_names,
            owners_at=self.owner_names_at,
            epoch=lambda: self.routing.epoch,
            address=self.directory.address,
            replicas=self.config.replicas,
            timeout=self.config.replication_timeout,
            repair_interval=self.config.repair_interval,
            clock=self._clock,
            rng=self._rng,
            peers=lambda: [n for n in self._peers if n != self.name],
        )
        self.server.replicate = self.replicator.replicate_each
        self.server.fetch = self.replicator.fetch_subscriber
        self.replicator.locate = self.location  # `swimthor location --via`
        return advertised

    def flows(self) -> dict[str, int]:
        """Flows held here by transport: the NAT'd UDP phones we ping, and the open TCP,
        TLS and WebSocket connections."""
        assert self.proxy is not None
        return {"udp": len(self.proxy.pinger.flows)} | self.server.connections()

    def keepalives(self) -> dict[str, int]:
        """Keepalives by transport: OPTIONS pings to UDP flows (sent, answered, flows lost),
        STUN bindings answered on UDP, CRLF pongs on the streams."""
        assert self.proxy is not None
        stats = self.server.stats
        return (
            {f"udp_{k}": v for k, v in self.proxy.pinger.stats.items() if k != "watched"}
            | {"udp_stun": stats["stun_bindings"]}
            | {f"{t}_pongs": stats[f"{t}_pongs"] for t in ("tcp", "tls", "ws", "wss")}
        )

    def stream_tags(self) -> dict[str, str]:
        """The member tags announcing our TLS and WebSocket addresses (after `open`)."""
        return {
            STREAM_TAGS[transport]: format_hostport((self._advertise_host, port))
            for transport, (_host, port) in self.server.stream_bound.items()
        }

    def _nonce_secrets(self) -> list[bytes]:
        """What nonces and Via branch MACs are made and checked with: the cluster keyring's
        keys (every node makes nonces the others accept, a rotation keeps what is in flight
        valid), or without one a secret of this process."""
        ring = self._keyring()
        return list(ring.keys) if ring is not None else [self._nonce_secret]

    def _load_subscribers(self) -> None:
        if self.journal is None:
            return
        records = self.journal.load()
        now = self._clock()
        self.store.merge(records, now)
        self.journal.rewrite([r for r in records if r.expires_at > now])
        if self.journal.bad_lines:
            log.warning("subscriber journal lines skipped", count=self.journal.bad_lines)
        self.store.on_subscriber = self.journal.append
        loaded = sum(1 for r in records if not r.removed)
        if loaded:
            log.info("subscribers loaded", count=loaded, journal=str(self.journal.path))

    # ------------------------------------------------------------ subscribers

    def _subscriber_aor(self, aor: str) -> str:
        """The canonical AOR of `aor` in one of our domains; ValueError otherwise."""
        try:
            uri = parse_uri(aor)
        except ValueError:
            raise ValueError(f"not a SIP address-of-record: {aor!r}") from None
        canonical = aor_of(uri)
        if canonical is None:
            raise ValueError(f"an address-of-record needs a user part: {aor!r}")
        if uri.host.lower().rstrip(".") not in {d.lower() for d in self.config.domains}:
            raise ValueError(f"{uri.host} is not a domain served here")
        return canonical

    async def set_subscriber(self, aor: str, password: str | None) -> dict[str, Any]:
        """Add or change (`password`) or remove (None) a subscriber: written on every live
        owner of its AOR (a stand-in for an owner that does not confirm), journaled there.
        ValueError for a bad AOR or password; RuntimeError when no owner took it."""
        canonical = self._subscriber_aor(aor)
        if password is not None and not 1 <= len(password) <= 256:
            raise ValueError("a password is 1 to 256 characters")
        assert self.replicator is not None
        now = self._clock()
        held = self.store.all(canonical)
        last = max((b.stamp for b in held if b.key == SUBSCRIBER_KEY), default=0.0)
        stamp = max(now, math.nextafter(last, math.inf))
        if password is None:
            record = subscriber_record(canonical, "", stamp=stamp, origin=self.name, removed=True)
        else:
            user, realm = split_aor(canonical)
            creds = Credentials.from_password(user, realm, password).to_text()
            record = subscriber_record(canonical, creds, stamp=stamp, origin=self.name)
        owners = self.owner_names(canonical)
        done: list[str] = []
        if self.name in owners:
            self.store.put(record)
            done.append(self.name)
        peers = [n for n in owners if n != self.name]
        confirmed = await self.replicator.replicate_each([record], peers)
        done += [n for n in peers if n in confirmed]
        missing = len(peers) - len([n for n in peers if n in confirmed])
        if missing:
            stand_ins = [
                n for n in self.proxy.stand_ins(canonical, missing, owners) if n != self.name
            ] if self.proxy is not None else []  # fmt: skip
            done += sorted(await self.replicator.replicate_each([record], stand_ins))
        if self.journal is not None and self.name in done:
            self.journal.sync()
        if not done:
            raise RuntimeError(f"no owner of {canonical} confirmed the change")
        return {"aor": canonical, "removed": password is None, "owners": owners, "on": done}

    async def list_subscribers(self) -> dict[str, Any]:
        """Every subscriber of the cluster: what this node holds and what each other live
        member says it holds; and the members that did not answer."""
        assert self.replicator is not None
        found = {r.aor for r in self.store.subscribers(self._clock())}
        others = [n for n in self._peers if n != self.name]
        theirs, silent = await self.replicator.list_subscribers(others)
        return {"subscribers": sorted(found | theirs), "unanswered": sorted(silent)}

    # ------------------------------------------------------------ location

    async def location(self, aor: str) -> dict[str, Any]:
        """`swimthor location AOR`: the AOR's live bindings as its owners hold them, each
        with the owners that hold its newest version. Each owner is asked at once over the
        replication channel (this node reads its own store); one that does not answer in
        `replication_timeout` is listed as unanswered. ValueError for a bad AOR."""
        canonical = self._subscriber_aor(aor)
        assert self.replicator is not None
        owners = self.owner_names(canonical)
        copies: dict[str, list[Binding]] = {}
        if self.name in owners:
            copies[self.name] = self.store.contacts(canonical)
        theirs, silent = await self.replicator.fetch_location(
            canonical, [n for n in owners if n != self.name]
        )
        copies.update(theirs)
        now = self._clock()
        return location_reply(
            canonical, owners, copies, silent, now, asked=self.name, keys=self._nonce_secrets()
        )

    @property
    def advertised(self) -> tuple[str, int]:
        assert self.proxy is not None
        return (self.proxy.settings.host, self.proxy.settings.port)

    # ------------------------------------------------------------ directory

    def peers(self) -> dict[str, Peer]:
        return self._peers

    def peer_at(self, host: str, port: int) -> Peer | None:
        return self._peer_index.get((host.lower(), port))

    def member_gone_at(self, host: str, port: int) -> bool:
        """Whether host:port is the SIP address of a member that failed or left (and no live
        member has it now)."""
        return (host.lower(), port) in self._gone and (host.lower(), port) not in self._peer_index

    def _is_member_host(self, host: str) -> bool:
        """Whether `host` is where a member's SIP or gossip lives (never rate-limited)."""
        return host in self.directory.hosts()

    def owner_names(self, aor: str) -> list[str]:
        """The AOR's owners (names, first first) in the current routing epoch. Anti-entropy
        asks this of every AOR held here several times a round (to sweep, to pick the AORs
        shared with each co-owner, to answer their digests), far more AORs than the routing
        table's LRU keeps, so the answers are kept here for the whole epoch."""
        epoch = self.routing.epoch
        if epoch != self._names_epoch:
            self._names = {}
            self._names_epoch = epoch
        names = self._names.get(aor)
        if names is None:
            names = tuple(r.name for r in self.routing.owners(aor, self.config.replicas, ROLE))
            if len(self._names) < OWNER_NAMES_CACHED:
                self._names[aor] = names
        return list(names)

    def owner_names_at(self, epoch: int, aor: str) -> list[str]:
        return [r.name for r in self.routing.owners_at(epoch, aor, self.config.replicas, ROLE)]

    def owners(self, aor: str, n: int) -> list[Peer]:
        """The AOR's owners with a SIP address, first first; an owner that is suspected of
        having failed goes after the others (it keeps its keys until it is declared dead, but
        a request is better sent to an owner that answers: the others hold the same
        bindings)."""
        out = []
        suspect = False
        is_suspect = self.directory.is_suspect
        for record in self.routing.owners(aor, n, ROLE):
            peer = self._peers.get(record.name)
            if peer is not None:
                out.append(peer)
                suspect = suspect or is_suspect(record.name)
        held = self._held_before(aor, n)
        if held is not None and all(p.name in held for p in out):
            held = None
        if suspect or held is not None:
            out.sort(key=lambda p: (is_suspect(p.name), held is not None and p.name not in held))
        return out

    def _held_before(self, aor: str, n: int) -> set[str] | None:
        """For `HANDOFF_SETTLE` seconds after the routing epoch moved, the AOR's owners in
        the epoch in force before that: an owner that gained the AOR since may not have its
        bindings from handoff yet (a query or a call sent to it would find none), so `owners`
        puts those that held it first. None once the epoch has settled."""
        since = self._epoch_since
        cutoff = self.monotonic() - HANDOFF_SETTLE
        if since[-1][0] <= cutoff:
            return None
        settled = since[0][1]
        for at, epoch in since:
            if at > cutoff:
                break
            settled = epoch
        try:
            return {r.name for r in self.routing.owners_at(settled, aor, n, ROLE)}
        except EpochUnavailable:
            return None

    def _members_changed(self, changes: list[DirectoryChange]) -> None:
        """Follow the directory: each changed member's SIP address, and replication's
        hand-off when routing moved (owners may have)."""
        for change in changes:
            self._peer_changed(change.name, change.after)
        if self.routing.epoch != self._epoch:
            self._epoch = self.routing.epoch
            self._epoch_since.append((self.monotonic(), self._epoch))
            self.routing_changed()

    def _peer_changed(self, name: str, m: Member | None) -> None:
        old = self._peers.pop(name, None)
        if old is not None and self._peer_index.get((old.host.lower(), old.port)) is old:
            del self._peer_index[(old.host.lower(), old.port)]
        if old is not None and m is None:
            # Where a member's SIP was, now that it is gone: a Path naming it leads to a
            # flow that died with it (bounded: members come and go over months).
            if len(self._gone) >= 4096:
                self._gone.clear()
            self._gone[(old.host.lower(), old.port)] = name
        text = m.tags.get(SIP_TAG) if m is not None else None
        if m is None or ROLE not in m.roles or not text:
            return
        try:
            host, port = parse_hostport(text, 5060)
        except ValueError:
            return
        peer = self._peers[name] = Peer(name, host, port)
        self._peer_index[(host.lower(), port)] = peer
        self._gone.pop((host.lower(), port), None)

    def routing_changed(self) -> None:
        if self.replicator is not None:
            self.replicator.routing_changed()

    # ------------------------------------------------------------ run

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.proxy is None:
            self.open()
        assert self.replicator is not None
        async with trio.open_nursery() as nursery:
            await nursery.start(self.server.serve)
            await nursery.start(self.replicator.run)
            log.info(
                "sip started",
                sip=format_hostport(self.advertised),
                domains=",".join(self.config.domains),
                replicas=self.config.replicas,
            )
            task_status.started()

    def status(self) -> dict[str, Any]:
        assert self.proxy is not None and self.replicator is not None
        return {
            "address": format_hostport(self.advertised),
            "domains": list(self.config.domains),
            "replicas": self.config.replicas,
            # Subscriber records (and their tombstones) live in the store beside the bindings.
            "bindings": len(self.store) - self.store.subscriber_records,
            "subscribers": self.store.subscriber_records,
            "aors": self.store.aor_count(),
            # "synced", or "syncing: N of M" while a node that started has not yet found its
            # digests equal to every other member's (Replicator.sync_state).
            "sync": self.replicator.sync_state(),
            "proxy": dict(self.proxy.stats),
            # The owner's stateful proxy: transactions held now, forks and branches so far.
            "transactions": self.proxy.forks.counts() | self.proxy.forks.stats,
            # The phones' flows this node is the edge for: NAT'd UDP phones it pings, and
            # open connections by transport; the keepalives on each (our OPTIONS pings to
            # the UDP ones, the STUN bindings and CRLF pongs we answered).
            "flows": self.flows(),
            "keepalive": self.keepalives(),
            "requests_by_method": dict(self.proxy.requests_by_method),
            "latency": {
                "handling": self.server.latency_handling.snapshot(),
                "register": self.server.latency_register.snapshot(),
            },
            "answers_by_code": {str(k): v for k, v in sorted(self.proxy.answers_by_code.items())},
            "transport": dict(self.server.stats),
            "replication": dict(self.replicator.stats),
        }


def _edge_and_flow(path: tuple[str, ...], keys: list[bytes]) -> tuple[str, str]:
    """A binding's edge (host:port of its first Path hop) and the flow that hop's token
    names ("transport:host:port"): "" without a Path, "?" for what cannot be read (a flow
    token the cluster's keys do not open)."""
    if not path:
        return "", ""
    try:
        uri = parse_address(path[0]).uri
    except ValueError:
        return "?", "?"
    edge = format_hostport((uri.host, uri.port or 5060))
    flow = decode_token(uri.user or "", keys)
    if flow is None:
        return edge, "?"
    return edge, f"{flow.transport}:{format_hostport((flow.host, flow.port))}"


def _transport_of(binding: Binding, flow: str) -> str:
    """How the phone is reached: its flow's transport, else its Contact's."""
    if flow and flow != "?":
        return flow.split(":", 1)[0]
    try:
        return uri_transport(parse_uri(binding.contact))
    except ValueError:
        return "?"


def location_reply(
    aor: str,
    owners: list[str],
    copies: dict[str, list[Binding]],
    unanswered: list[str],
    now: float,
    *,
    asked: str,
    keys: list[bytes] | None = None,
) -> dict[str, Any]:
    """What `swimthor location` shows, from what each owner that answered holds (`copies`:
    owner -> its contact records of `aor`). Per binding key, the newest version any owner
    holds; listed when it is live, with the owners holding that version (`on`), an older
    one (`older`) or none (`missing`). Highest q first, then the most recently written."""
    # The owners in rank order (a node asked that is not an owner any more after them).
    order = [o for o in owners if o in copies] + sorted(o for o in copies if o not in owners)
    newest: dict[str, Binding] = {}
    for records in copies.values():
        for b in records:
            held = newest.get(b.key)
            if held is None or b.version > held.version:
                newest[b.key] = b
    bindings = []
    for b in sorted(newest.values(), key=lambda b: (-b.q, -b.stamp)):
        if not b.live(now):
            continue  # removed (a tombstone is the newest) or expired
        on, older, missing = [], [], []
        for owner in order:
            mine = next((c for c in copies[owner] if c.key == b.key), None)
            if mine is None:
                missing.append(owner)
            elif mine.version == b.version:
                on.append(owner)
            else:
                older.append(owner)
        edge, flow = _edge_and_flow(b.path, keys or [])
        bindings.append(
            {
                "contact": b.contact,
                "q": b.q,
                "expires": max(0, int(b.expires_at - now + 0.5)),
                "expires_at": b.expires_at,
                "call_id": b.call_id,
                "cseq": b.cseq,
                "instance": b.instance,
                "reg_id": b.reg_id,
                "user_agent": b.user_agent,
                "source": b.source,
                "origin": b.origin,
                "stamp": b.stamp,
                # RFC 3327: calls go through the first Path hop, the phone's edge (the node
                # holding its flow), when it has one.
                "path": list(b.path),
                "edge": edge,
                # The phone's flow at that edge, from the Path's token, and the transport it
                # is reached over.
                "flow": flow,
                "transport": _transport_of(b, flow),
                "on": on,
                "older": older,
                "missing": missing,
            }
        )
    return {
        "aor": aor,
        "asked": asked,
        "owners": owners,
        "answered": order,
        "unanswered": [o for o in owners if o in unanswered]
        + sorted(o for o in unanswered if o not in owners),
        "bindings": bindings,
    }
