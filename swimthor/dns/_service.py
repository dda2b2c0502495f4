"""One agent's DNS front-end: the zone and its server, kept current from membership and
routing.

An agent with `--dns` announces its DNS address in the member tag ``dns`` (``host:port``):
every live member with that tag is a name server of the zone (NS). SRV and apex A/AAAA list the
live members with the role ``sip`` and a ``sip`` tag; a member's own A/AAAA is the host of its
``sip`` tag, else of its ``dns`` tag, else its gossip address.

A ``sip`` member also announces the other SIP transports it offers, each ``host:port`` like
``sip``: ``sips`` (SIP over TLS, port 5061 when none is given), ``ws`` (SIP over WebSocket,
RFC 7118, port 80) and ``wss`` (secure WebSocket, port 443). The zone publishes them under
``_sips._tcp``, ``_sip._ws`` and ``_sips._ws``. A tag that does not parse (port 0 or above
65535, a host that is no IP address or DNS name) is ignored, as is one whose host is not the
member's address: the SRV target is the member's one name.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import structlog
import trio

from ..config import (
    DEFAULT_SIP_PORT,
    DEFAULT_SIPS_PORT,
    DEFAULT_WS_PORT,
    DEFAULT_WSS_PORT,
    DnsConfig,
    format_hostport,
    parse_hostport,
)
from ..directory import (
    DNS_TAG,
    SIP_TAG,
    SIPS_TAG,
    WS_TAG,
    WSS_TAG,
    DirectoryChange,
    MemberDirectory,
)
from ..membership import Member, State
from ..ratelimit import RateLimit, SourceLimiter
from ..routing import RoutingTable
from ._server import DnsServer, DnsTransportConfig
from ._zone import Node, Zone

__all__ = ["DNS_TAG", "SIPS_TAG", "SIP_TAG", "WSS_TAG", "WS_TAG", "DnsService"]

log = structlog.get_logger("swimthor.dns")

_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
SIP_ROLE = "sip"
# The ports a tag without one means: RFC 3261 §19.1.2 (5060, and 5061 for TLS); WebSocket's
# own (RFC 6455 §3: 80 for ws, 443 for wss).
_DEFAULT_PORTS = {
    SIP_TAG: DEFAULT_SIP_PORT,
    SIPS_TAG: DEFAULT_SIPS_PORT,
    WS_TAG: DEFAULT_WS_PORT,
    WSS_TAG: DEFAULT_WSS_PORT,
}
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
# A host name as a tag may give it: labels of letters, digits, "-" and "_", 253 octets at most.
_HOST_NAME = re.compile(rf"(?=.{{1,253}}\.?$)({_LABEL}\.)*{_LABEL}\.?", re.IGNORECASE | re.ASCII)


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
        directory: MemberDirectory | None = None,
    ) -> None:
        """`directory`: the live members, followed from here on (the agent feeds it; a
        service of its own when none is given)."""
        assert config.zone is not None, "check_dns fills in the zone"
        self.config = config
        self.name = name
        self.routing = routing
        self.directory = directory if directory is not None else MemberDirectory()
        self.directory.subscribe(self._members_changed)
        self._epoch = routing.epoch
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
        self.advertised: tuple[str, int] | None = None

    def open(self) -> tuple[str, int]:
        """Bind the DNS sockets; returns the address to announce in the ``dns`` tag."""
        bound = self.server.open()
        self.advertised = (self._advertise_host, bound[1])
        return self.advertised

    def _is_member_host(self, host: str) -> bool:
        """Whether `host` is a live member's address (never rate-limited)."""
        return host in self.directory.hosts()

    def _owners(self, aor: str) -> list[str]:
        return [r.name for r in self.routing.owners(aor, self.replicas, SIP_ROLE)]

    # ------------------------------------------------------------ directory

    def _members_changed(self, changes: list[DirectoryChange]) -> None:
        """Only the records of the members that changed are rebuilt; per-user answers go
        when routing moved (their owners may have)."""
        zone = self.zone
        if len(changes) > 1:
            zone.update(_node(m) for m in self.directory.live())
        else:
            for change in changes:
                if change.after is None:
                    zone.remove(change.name)
                else:
                    zone.put(_node(change.after))
        if self.routing.epoch != self._epoch:
            self._epoch = self.routing.epoch
            zone.routing_changed()

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
    """A tag's ``host:port``, None when it is missing or malformed: a port outside 1..65535,
    a host that is neither an IP address nor a DNS name (a tag is any string a member sent)."""
    if not text or not isinstance(text, str):
        return None
    try:
        host, port = parse_hostport(text, default_port)
    except ValueError:
        return None
    if not 0 < port <= 65_535:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_NAME.fullmatch(host):
            return None
    else:
        if ip.is_unspecified or ip.is_multicast:
            return None  # nothing a client can connect to (":5060" reads as 0.0.0.0)
    return host, port


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.rstrip(".").lower() == b.rstrip(".").lower()


def _node(m: Member) -> Node:
    sip_member = SIP_ROLE in m.roles
    front = {
        tag: _hostport(m.tags.get(tag), port) if sip_member else None
        for tag, port in _DEFAULT_PORTS.items()
    }
    sip = front[SIP_TAG]
    dns = _hostport(m.tags.get(DNS_TAG), 53)
    first = next((a for a in (sip, front[SIPS_TAG], front[WSS_TAG], front[WS_TAG]) if a), None)
    host = first[0] if first else dns[0] if dns else str(m.addr[0])

    def port(tag: str) -> int | None:
        # The zone has one name per member: a transport at another host is not published
        # (its SRV record would send clients to the wrong address).
        addr = front[tag]
        return addr[1] if addr is not None and _same_host(addr[0], host) else None

    return Node(
        name=m.name,
        host=host,
        dc=m.dc,
        weight=float(m.weight),
        suspect=m.state == State.SUSPECT,
        sip_port=sip[1] if sip else None,
        dns=dns is not None,
        tls_port=port(SIPS_TAG),
        ws_port=port(WS_TAG),
        wss_port=port(WSS_TAG),
    )
