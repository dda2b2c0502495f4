"""The DNS front-end: an authoritative server for the cluster's zone, answering from the live
members (RFC 3263 discovery: NAPTR, SRV, A/AAAA; SOA and NS; per-user owner lookup)."""

from ._query import Query, QueryError, parse_query
from ._server import DnsServer, DnsTransportConfig
from ._service import DNS_TAG, DnsService
from ._service import _node as node_of  # the Node a member publishes in the zone
from ._zone import DEFAULT_TTL, MAX_UDP, Node, Zone, user_label

__all__ = [
    "DEFAULT_TTL",
    "DNS_TAG",
    "MAX_UDP",
    "DnsServer",
    "DnsService",
    "DnsTransportConfig",
    "Node",
    "Query",
    "QueryError",
    "Zone",
    "node_of",
    "parse_query",
    "user_label",
]
