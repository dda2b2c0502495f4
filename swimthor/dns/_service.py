"""One agent's DNS front-end: the zone and its server, kept current from membership and
routing.

An agent with `--dns` announces its DNS address in the member tag ``dns`` (``host:port``):
every live member with that tag is a name server of the zone (NS). SRV and apex A/AAAA list the
live members with the role ``sip`` and a ``sip`` tag; a member's own A/AAAA is the host of its
``sip`` tag, else of its ``dns`` tag, else its gossip address.
"""

from __future__ import annotations

from typing import Any

import structlog
import trio

from ..config import DnsConfig, format_hostport, parse_hostport
from ..membership._member import Member, State
from ..ratelimit import RateLimit, SourceLimiter
from ..routing import RoutingTable
from ._server import DnsServer, DnsTransportConfig
from ._zone import Node, Zone

__all__ = ["DNS_TAG", "DnsService"]

log = structlog.get_logger("swimthor.dns")

DNS_TAG = "dns"
_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
SIP_TAG = "sip"
SIP_ROLE = "sip"


class DnsService:
    def __init__(
        self,
        config: DnsConfig,
        *,
        name: str,
        dc: str,
        advertise_host: str,
        routing: RoutingTable,
        replicas: int,
    ) -> None:
        assert config.zone is not None, "check_dns fills in the zone"
        self.config = config
        self.name = name
        self.routing = routing
        self.replicas = replicas
        self.zone = Zone(config.zone, me=name, dc=dc, ttl=config.ttl, owners=self._owners)
        self.server = DnsServer(
            self.zone,
            config.bind,
            DnsTransportConfig(
                max_connections=config.max_connections,
                tcp_idle=config.tcp_idle,
            ),
            SourceLimiter(
                RateLimit(config.rate_limit, config.rate_burst, tuple(config.rate_exempt)),
                trusted=self._is_member_host,
            ),
        )
        self._advertise_host = config.advertise_host or advertise_host
        self._members: dict[str, Member] = {}
        self._member_hosts: set[str] = set()
        self.advertised: tuple[str, int] | None = None

    def open(self) -> tuple[str, int]:
        """Bind the DNS sockets; returns the address to announce in the ``dns`` tag."""
        bound = self.server.open()
        self.advertised = (self._advertise_host, bound[1])
        return self.advertised

    def _is_member_host(self, host: str) -> bool:
        """Whether `host` is a live member's address (never rate-limited)."""
        return host in self._member_hosts

    def _owners(self, aor: str) -> list[str]:
        return [r.name for r in self.routing.owners(aor, self.replicas, SIP_ROLE)]

    # ------------------------------------------------------------ directory

    def sync_members(self, members: list[Member]) -> None:
        self._members = {m.name: m for m in members if m.state.is_live}
        self._rebuild()

    def member_changed(self, m: Member, live: bool) -> None:
        if live and m.state.is_live:
            self._members[m.name] = m
        else:
            self._members.pop(m.name, None)
        self._rebuild()

    def routing_changed(self) -> None:
        self.zone.routing_changed()

    def _rebuild(self) -> None:
        nodes = [_node(m) for m in self._members.values()]
        self.zone.update(nodes)
        self._member_hosts = {n.host for n in nodes} | {
            str(m.addr[0]) for m in self._members.values()
        }

    # ------------------------------------------------------------ run

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.advertised is None:
            self.open()
        assert self.advertised is not None
        async with trio.open_nursery() as nursery:
            await nursery.start(self.server.serve)
            log.info(
                "dns started",
                dns=format_hostport(self.advertised),
                zone=str(self.zone.origin).rstrip("."),
                ttl=self.config.ttl,
            )
            task_status.started()

    def status(self) -> dict[str, Any]:
        return {
            "address": format_hostport(self.advertised) if self.advertised else None,
            "zone": str(self.zone.origin).rstrip("."),
            "ttl": self.config.ttl,
            "servers": sorted(n.name for n in self.zone.nodes() if n.dns),
            "sip_targets": sorted(n.name for n in self.zone.nodes() if n.sip_port is not None),
            "answers": dict(self.zone.stats),
            "by_qtype": dict(self.zone.by_qtype),
            "by_rcode": {_RCODES.get(k, str(k)): v for k, v in sorted(self.zone.by_rcode.items())},
            "transport": dict(self.server.stats),
        }


def _hostport(text: str | None, default_port: int) -> tuple[str, int] | None:
    if not text:
        return None
    try:
        return parse_hostport(text, default_port)
    except ValueError:
        return None


def _node(m: Member) -> Node:
    sip = _hostport(m.tags.get(SIP_TAG), 5060) if SIP_ROLE in m.roles else None
    dns = _hostport(m.tags.get(DNS_TAG), 53)
    host = sip[0] if sip else dns[0] if dns else str(m.addr[0])
    return Node(
        name=m.name,
        host=host,
        dc=m.dc,
        weight=float(m.weight),
        suspect=m.state == State.SUSPECT,
        sip_port=sip[1] if sip else None,
        dns=dns is not None,
    )
