"""One agent's SIP front-end: the proxy, its server, the replicator, and the directory of the
other nodes' SIP addresses, wired to the agent's routing table and membership.

Each agent with the role ``sip`` announces its SIP address in the member tag ``sip``
(``host:port``); the directory is every live member with the role and the tag. Owners of an
address-of-record are `routing.owners(aor, R, role="sip")` among them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import structlog
import trio

from ..config import SipConfig, format_hostport, parse_hostport
from ..membership._keyring import Keyring
from ..membership._member import Addr, Member, State
from ..ratelimit import RateLimit, SourceLimiter
from ..routing import RoutingTable
from ._bindings import BindingStore
from ._proxy import Peer, Proxy, ProxySettings
from ._registrar import RegistrarPolicy
from ._replication import Replicator
from ._server import SipServer, SipTransportConfig

__all__ = ["SIP_TAG", "SipService"]

log = structlog.get_logger("swimthor.sip")

SIP_TAG = "sip"
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
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.routing = routing
        self._peers: dict[str, Peer] = {}
        self._peer_index: dict[tuple[str, int], Peer] = {}
        self._suspects: set[str] = set()
        self._gossip: dict[str, Addr] = {}
        self._member_hosts: set[str] | None = None  # built on demand, dropped on changes
        self.store = BindingStore()
        self.server = SipServer(
            None,  # type: ignore[arg-type]  # set below, once the port is known
            config.bind,
            config=SipTransportConfig(
                max_connections=config.max_connections,
                tcp_idle=config.tcp_idle,
                tcp_message_time=config.tcp_message_time,
            ),
            clock=clock,
            limiter=SourceLimiter(
                RateLimit(config.rate_limit, config.rate_burst, tuple(config.rate_exempt)),
                trusted=self._is_member_host,
            ),
        )
        self._advertise_host = config.advertise_host or advertise_host
        self._clock = clock
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
        )
        self.proxy = Proxy(settings, self.owners, self.peers, self.store, self.peer_at)
        self.server.proxy = self.proxy
        self.replicator = Replicator(
            self.name,
            self.store,
            keyring=self._keyring,
            label=self._label,
            owners=self.owner_names,
            owners_at=self.owner_names_at,
            epoch=lambda: self.routing.epoch,
            address=self._gossip.get,
            replicas=self.config.replicas,
            timeout=self.config.replication_timeout,
            repair_interval=self.config.repair_interval,
            clock=self._clock,
            rng=self._rng,
        )
        self.server.replicate = self.replicator.replicate_each
        return advertised

    @property
    def advertised(self) -> tuple[str, int]:
        assert self.proxy is not None
        return (self.proxy.settings.host, self.proxy.settings.port)

    # ------------------------------------------------------------ directory

    def peers(self) -> dict[str, Peer]:
        return self._peers

    def peer_at(self, host: str, port: int) -> Peer | None:
        return self._peer_index.get((host.lower(), port))

    def _is_member_host(self, host: str) -> bool:
        """Whether `host` is where a member's SIP or gossip lives (never rate-limited)."""
        hosts = self._member_hosts
        if hosts is None:
            hosts = self._member_hosts = {p.host for p in self._peers.values()} | {
                addr[0] for addr in self._gossip.values()
            }
        return host in hosts

    def owner_names(self, aor: str) -> list[str]:
        return [r.name for r in self.routing.owners(aor, self.config.replicas, ROLE)]

    def owner_names_at(self, epoch: int, aor: str) -> list[str]:
        return [r.name for r in self.routing.owners_at(epoch, aor, self.config.replicas, ROLE)]

    def owners(self, aor: str, n: int) -> list[Peer]:
        """The AOR's owners with a SIP address, first first; an owner that is suspected of
        having failed goes after the others (it keeps its keys until it is declared dead, but
        a request is better sent to an owner that answers: the others hold the same
        bindings)."""
        out = []
        suspect = False
        for record in self.routing.owners(aor, n, ROLE):
            peer = self._peers.get(record.name)
            if peer is not None:
                out.append(peer)
                suspect = suspect or record.name in self._suspects
        if suspect:
            out.sort(key=lambda p: p.name in self._suspects)
        return out

    def sync_members(self, members: list[Member]) -> None:
        self._peers.clear()
        self._peer_index.clear()
        self._suspects.clear()
        self._gossip.clear()
        for m in members:
            self.member_changed(m)

    def member_changed(self, m: Member, live: bool | None = None) -> None:
        """Follow one member's state and tags (call with every member event)."""
        if live is None:
            live = m.state in (State.ALIVE, State.SUSPECT)
        self._gossip[m.name] = (str(m.addr[0]), int(m.addr[1]))
        self._member_hosts = None
        if live and m.state == State.SUSPECT:
            self._suspects.add(m.name)
        else:
            self._suspects.discard(m.name)
        text = m.tags.get(SIP_TAG)
        old = self._peers.pop(m.name, None)
        if old is not None and self._peer_index.get((old.host.lower(), old.port)) is old:
            del self._peer_index[(old.host.lower(), old.port)]
        if not live or ROLE not in m.roles or not text:
            return
        try:
            host, port = parse_hostport(text, 5060)
        except ValueError:
            return
        peer = self._peers[m.name] = Peer(m.name, host, port)
        self._peer_index[(host.lower(), port)] = peer

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
            "bindings": len(self.store),
            "aors": sum(1 for _ in self.store.aors()),
            "proxy": dict(self.proxy.stats),
            "transport": dict(self.server.stats),
            "replication": dict(self.replicator.stats),
        }
