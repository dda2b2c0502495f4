"""The cluster's zone, answered from the live members at query time (sans-IO).

`Zone.respond(data, tcp=...)` takes a query's bytes and returns the answer's bytes (or None to
answer nothing). Names, for the zone `example.com` (RFC 3263 discovery, then the cluster's own
names):

- ``example.com``: SOA; NS (every live member with a DNS front-end); NAPTR, one record per
  transport that at least one live SIP member offers (see `TRANSPORTS`): ``SIP+D2U`` →
  ``_sip._udp.example.com``, ``SIP+D2T`` → ``_sip._tcp``, ``SIPS+D2T`` → ``_sips._tcp``,
  ``SIP+D2W`` → ``_sip._ws``, ``SIPS+D2W`` → ``_sips._ws`` (with those SRV sets and their
  addresses in the additional section); A/AAAA of the live SIP members.
- ``_sip._udp.example.com``, ``_sip._tcp.example.com``: SRV, one per live ``sip`` member, port
  its SIP port, target ``<member>.node.example.com``. Members in the answering node's
  datacenter at priority 10, the others at 20; suspected and zero-weight members at 30, so a
  client tries them last. Weights are 100 times the member weights.
- ``_sips._tcp.example.com`` (TLS), ``_sip._ws.example.com`` (WebSocket),
  ``_sips._ws.example.com`` (secure WebSocket): the same, over the members offering that
  transport, with its port (NODATA while none does).
- ``<member>.node.example.com``: the member's A or AAAA.
- ``_sip._udp.<user>.<domain>.aor.example.com`` (and ``_sip._tcp``, ``_sips._tcp``,
  ``_sip._ws``, ``_sips._ws``): the owners of the address-of-record ``sip:<user>@<domain>``
  that offer that transport, in rank order, at priorities 10, 20, ... (an owner under
  suspicion goes after the others, as the SIP proxy does). ``<user>`` is one label, so a
  user with dots or other characters can be written with DNS escapes (``a\\.b``). DNS names are
  case-insensitive; a user part with capitals (SIP user parts are case-sensitive) is written
  ``b32-<base32 of the UTF-8, no padding>``.

Every other name in the zone is NXDOMAIN, except the empty non-terminals (``node``, ``_udp``,
``_tcp``, ``_ws``, ``aor`` and every name under ``aor``), which exist without data (RFC 8020).

Answers are authoritative (AA set, RA clear); NXDOMAIN and NODATA carry the SOA; names outside
the zone are REFUSED; ANY over UDP gets RFC 8482's one HINFO (every rrset over TCP); EDNS0 is
answered with an OPT (UDP payload 1232, DO echoed); over UDP an answer larger than the client
allows loses its additional section first and is then sent with TC set and no records, and
the client retries over TCP.

Answers are built with dnslib once and cached by (name, type, class, EDNS, payload limit)
until the directory or routing changes (`update`, `routing_changed`); a cached answer is
sent with the query's ID, RD and CD bits and the question's bytes (so its letter case) copied
in. That is what makes an answer cost microseconds instead of a dnslib build.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import dnslib
import structlog
from dnslib import QTYPE, RR, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from ._query import (
    BADVERS,
    FORMERR,
    HEADER_SIZE,
    NOERROR,
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    Query,
    QueryError,
    parse_query,
)

__all__ = ["DEFAULT_TTL", "MAX_UDP", "TRANSPORTS", "Node", "Transport", "Zone", "user_label"]

log = structlog.get_logger("swimthor.dns")

DEFAULT_TTL = 5
# What we send over UDP at most, whatever the client allows: no IP fragmentation (the 2020 DNS
# flag day value), and what we advertise in our OPT.
MAX_UDP = 1232
MIN_UDP = 512  # RFC 1035 §4.2.1, and the floor of an OPT's payload size (RFC 6891 §6.2.5)
CACHE_SIZE = 65_536
TCP_LIMIT = 65_535  # a TCP message's length field

CLASS_IN = 1
CLASS_ANY = 255
TYPE_ANY = 255
TYPE_AXFR = 252
TYPE_IXFR = 251

_QTYPE_NAMES = {
    QTYPE.A: "A", QTYPE.AAAA: "AAAA", QTYPE.SRV: "SRV", QTYPE.NAPTR: "NAPTR",
    QTYPE.SOA: "SOA", QTYPE.NS: "NS", TYPE_ANY: "ANY", QTYPE.TXT: "TXT", QTYPE.MX: "MX",
    QTYPE.CNAME: "CNAME", QTYPE.PTR: "PTR",
}  # fmt: skip

PRIORITY_LOCAL = 10
PRIORITY_REMOTE = 20
PRIORITY_LAST = 30

SOA_REFRESH = 3600
SOA_RETRY = 600
SOA_EXPIRE = 86_400

_LABEL = re.compile(rb"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True, slots=True)
class Node:
    """A live member as the zone sees it.

    ``host``: the address its A/AAAA record gives (an IP literal; a host name is used as an
    SRV target as it is). ``sip_port``: its SIP port (UDP and TCP), None if it has no SIP
    front-end. ``dns``: whether it has a DNS front-end (and so is a name server of the zone).
    ``tls_port``, ``ws_port``, ``wss_port``: its SIP over TLS, WebSocket and secure WebSocket
    ports at the same host, None for a transport it does not offer."""

    name: str
    host: str
    dc: str = ""
    weight: float = 1.0
    suspect: bool = False
    sip_port: int | None = None
    dns: bool = False
    tls_port: int | None = None
    ws_port: int | None = None
    wss_port: int | None = None

    @property
    def offers_sip(self) -> bool:
        """Whether it offers SIP over any transport."""
        return any(t.port(self) is not None for t in TRANSPORTS)


@dataclass(frozen=True, slots=True)
class Transport:
    """One way to reach the SIP members: its NAPTR service and preference, the SRV owner
    (relative to the zone, and the per-user prefix) and which port of a `Node` it uses."""

    service: bytes
    preference: int
    srv: tuple[bytes, bytes]
    port: Callable[[Node], int | None]


# The NAPTR services and SRV names, as RFC 3263 and RFC 7118 give them:
# - RFC 3263 §4.1 and its IANA registry ("SIP NAPTR Resource Record Services Field"): SIP+D2U
#   (UDP), SIP+D2T (TCP), SIPS+D2T (TLS over TCP); the SRV service is "_sip" for SIP and
#   "_sips" for SIPS, with the transport's protocol label, so TLS is _sips._tcp (its own
#   example: NAPTR "SIPS+D2T" -> _sips._tcp.example.com). "SIPS+D2U" SHOULD NOT be published.
# - RFC 7118 adds SIP+D2W and SIPS+D2W to that registry, both with the protocol "WS". No SRV
#   owner name for WebSocket is registered (baresip's maintainers looked for one and found none,
#   baresip/re#133); following RFC 3263's pattern (SIPS+D2T -> _sips._tcp) we publish _sip._ws
#   and _sips._ws, which some stacks query directly (SIPSorcery's constants, say; others try
#   _sips._wss). A client following our NAPTR takes the name from its replacement field,
#   whatever it would have guessed.
# - Order and preference: RFC 3263 §4.1 says SIPS records SHOULD come first (a lower order).
#   All five share order 10 here and the new ones come after UDP (10) and TCP (20) by
#   preference, so existing clients resolving a sip: URI keep choosing UDP; a client resolving
#   a sips: URI discards the non-SIPS records (RFC 3263 §4.1) and finds TLS or WSS anyway.
TRANSPORTS: tuple[Transport, ...] = (
    Transport(b"SIP+D2U", 10, (b"_sip", b"_udp"), lambda n: n.sip_port),
    Transport(b"SIP+D2T", 20, (b"_sip", b"_tcp"), lambda n: n.sip_port),
    Transport(b"SIPS+D2T", 30, (b"_sips", b"_tcp"), lambda n: n.tls_port),
    Transport(b"SIP+D2W", 40, (b"_sip", b"_ws"), lambda n: n.ws_port),
    Transport(b"SIPS+D2W", 50, (b"_sips", b"_ws"), lambda n: n.wss_port),
)
_BY_SRV: dict[tuple[bytes, ...], Transport] = {t.srv: t for t in TRANSPORTS}
_SRV_PARENTS = {t.srv[1:] for t in TRANSPORTS}  # _udp, _tcp, _ws: empty non-terminals


def user_label(user: str) -> str:
    """The label that names `user` in ``_sip._udp.<label>.<domain>.aor.<zone>``, in DNS
    presentation form (for `dig`): as is when it has no capitals, else the ``b32-`` form."""
    if user != user.lower():
        encoded = base64.b32encode(user.encode("utf-8")).decode("ascii").rstrip("=").lower()
        return f"b32-{encoded}"
    out = []
    for c in user:
        if c.isascii() and not (c.isalnum() or c in "-_+"):
            # Presentation-form escapes (RFC 1035 §5.1): "\." keeps a dot inside the label.
            out.append(f"\\{ord(c):03d}" if not c.isprintable() or c == " " else "\\" + c)
        else:
            out.append(c)
    return "".join(out)


def _decode_user(label: bytes) -> str | None:
    if label.startswith(b"b32-"):
        text = label[4:].upper()
        text += b"=" * (-len(text) % 8)
        try:
            return base64.b32decode(text).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
    try:
        return label.decode("utf-8")
    except UnicodeDecodeError:
        return None


class _NAPTR(dnslib.NAPTR):  # type: ignore[misc]
    """NAPTR whose replacement is written uncompressed, as RFC 3597 §4 asks of RR types
    defined after RFC 1035 (dnslib compresses it)."""

    def pack(self, buffer: Any) -> None:
        buffer.pack("!HH", self.order, self.preference)
        for text in (self.flags, self.service, self.regexp):
            buffer.pack("!B", len(text))
            buffer.append(text)
        buffer.encode_name_nocompress(self.replacement)


@dataclass(slots=True)
class _Target:
    label: DNSLabel  # the name SRV and NS records point at
    address: RR | None  # its A/AAAA record, when the name is ours


class Zone:
    def __init__(
        self,
        origin: str,
        *,
        me: str,
        dc: str = "",
        ttl: int = DEFAULT_TTL,
        owners: Callable[[str], list[str]] | None = None,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        origin = origin.strip().rstrip(".").lower()
        if not origin:
            raise ValueError("the zone needs a name")
        self.origin = DNSLabel(origin)
        self._origin_labels = tuple(self.origin.label)
        self.me = me
        self.dc = dc
        self.ttl = ttl
        self._owners = owners or (lambda aor: [])
        self._cache_size = cache_size
        self._cache: dict[tuple[Any, ...], bytes] = {}
        self.version = 1
        self._nodes: dict[str, Node] = {}
        self._targets: dict[str, _Target] = {}
        self._by_label: dict[tuple[bytes, ...], str] = {}
        self._labels: dict[str, tuple[bytes, ...]] = {}  # the other way round
        # The empty non-terminals under the node names (each counted by the names below it).
        self._ents: Counter[tuple[bytes, ...]] = Counter()
        self._collided = False  # some name got a hashed label because another had its own
        self.stats: dict[str, int] = {
            "queries": 0,
            "cache_hits": 0,
            "built": 0,
            "noerror": 0,
            "nxdomain": 0,
            "nodata": 0,
            "refused": 0,
            "formerr": 0,
            "notimp": 0,
            "badvers": 0,
            "truncated": 0,
            "servfail": 0,
            "dropped": 0,
        }
        # For the metrics: answered queries by type (the common ones by name, the rest as
        # "other", so a client cannot make the label set grow) and by response code.
        self.by_qtype: dict[str, int] = {}
        self.by_rcode: dict[int, int] = {}

    # ------------------------------------------------------------ directory

    def update(self, nodes: Iterable[Node]) -> None:
        """The live members now (a full list); every cached answer goes."""
        self._nodes = {n.name: n for n in nodes}
        self._reindex()

    def put(self, node: Node) -> None:
        """One member joined or changed: only its records are rebuilt (a join storm costs
        one member's work per event, not the whole zone's); every cached answer goes."""
        if node.name in self._nodes:
            self._nodes[node.name] = node
            self._index_target(node)
        else:
            self._nodes[node.name] = node
            labels = self._labels_of(node.name)
            if labels in self._by_label:
                # Two names that read as one label: who gets the hashed one depends on the
                # whole zone (`_reindex`, in name order). Rare: names differing in case.
                self._reindex()
                return
            self._index_name(node.name, labels)
            self._index_target(node)
        self.routing_changed()

    def remove(self, name: str) -> None:
        """One member failed or left: only its records go; every cached answer goes."""
        if self._nodes.pop(name, None) is None:
            return
        if self._collided:
            self._reindex()  # the name it kept from another may be that one's now
            return
        labels = self._labels.pop(name)
        del self._by_label[labels]
        for i in range(1, len(labels)):
            suffix = labels[i:]
            self._ents[suffix] -= 1
            if not self._ents[suffix]:
                del self._ents[suffix]
        self._targets.pop(name, None)
        self.routing_changed()

    def _reindex(self) -> None:
        self._targets.clear()
        self._by_label.clear()
        self._labels.clear()
        self._ents.clear()
        self._collided = False
        for name in sorted(self._nodes):
            labels = self._labels_of(name)
            if labels in self._by_label:
                labels = self._hashed(name)
                self._collided = True
            self._index_name(name, labels)
            self._index_target(self._nodes[name])
        self.routing_changed()

    def _index_name(self, name: str, labels: tuple[bytes, ...]) -> None:
        self._by_label[labels] = name
        self._labels[name] = labels
        for i in range(1, len(labels)):
            self._ents[labels[i:]] += 1

    def _index_target(self, node: Node) -> None:
        labels = self._labels[node.name]
        node_suffix = (b"node", *self._origin_labels)
        address = self._address_record(node.host, DNSLabel((*labels, *node_suffix)))
        target = DNSLabel((*labels, *node_suffix)) if address is not None else None
        if target is None:
            try:
                target = DNSLabel(node.host.rstrip(".").lower() or ".")
            except Exception:
                self._targets.pop(node.name, None)
                return  # not a name DNS can write: the member gets no records
        self._targets[node.name] = _Target(target, address)

    def routing_changed(self) -> None:
        """Owners may have moved: per-user answers (and the SOA serial) change."""
        self.version += 1
        self._cache.clear()

    def _labels_of(self, name: str) -> tuple[bytes, ...]:
        try:
            labels = tuple(name.lower().encode("ascii").split(b"."))
        except UnicodeEncodeError:
            return self._hashed(name)
        if all(_LABEL.fullmatch(label) for label in labels) and len(b".".join(labels)) < 120:
            return labels
        return self._hashed(name)

    @staticmethod
    def _hashed(name: str) -> tuple[bytes, ...]:
        digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=5)
        return (b"m-" + digest.hexdigest().encode("ascii"),)

    def _address_record(self, host: str, owner: DNSLabel) -> RR | None:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        if ip.version == 4:
            return RR(owner, QTYPE.A, ttl=self.ttl, rdata=dnslib.A(str(ip)))
        return RR(owner, QTYPE.AAAA, ttl=self.ttl, rdata=dnslib.AAAA(str(ip)))

    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    def target_of(self, name: str) -> str | None:
        """The DNS name of a member (what SRV records point at), for status and tests."""
        target = self._targets.get(name)
        return None if target is None else str(target.label)

    # ------------------------------------------------------------ queries

    def respond(self, data: bytes, *, tcp: bool = False) -> bytes | None:
        """The answer to the query in `data`, or None when nothing is to be sent back."""
        stats = self.stats
        stats["queries"] += 1
        try:
            query = parse_query(data)
        except QueryError as e:
            if e.rcode is None or e.query is None:
                stats["dropped"] += 1
                return None
            stats["formerr" if e.rcode == FORMERR else "notimp"] += 1
            return self._bare(e.query, data, e.rcode)
        if query.edns is not None and query.edns_version > 0:
            stats["badvers"] += 1
            return self._bare(query, data, BADVERS)
        if tcp:
            limit = TCP_LIMIT
        elif query.edns is None:
            limit = MIN_UDP
        else:
            limit = max(MIN_UDP, min(query.edns, MAX_UDP))
        key = (query.name, query.qtype, query.qclass, query.edns is None, query.dnssec_ok, limit)
        cached = self._cache.get(key)
        if cached is None:
            try:
                cached = self._build(query, limit)
            except Exception:
                # A name dnslib will not write, or a bug: never a crash, and never silence
                # (the client would retry for nothing).
                stats["servfail"] += 1
                log.exception("dns answer could not be built", name=repr(query.name)[:300])
                return self._bare(query, data, SERVFAIL)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = cached
        else:
            stats["cache_hits"] += 1
        qtype = _QTYPE_NAMES.get(query.qtype, "other")
        self.by_qtype[qtype] = self.by_qtype.get(qtype, 0) + 1
        rcode = cached[3] & 0xF
        self.by_rcode[rcode] = self.by_rcode.get(rcode, 0) + 1
        end = HEADER_SIZE + len(query.qname)
        return b"".join(
            (
                data[:2],
                bytes((cached[2] | (data[2] & 0x01), cached[3] | (data[3] & 0x10))),
                cached[4:HEADER_SIZE],
                data[HEADER_SIZE:end],
                cached[end:],
            )
        )

    def _bare(self, query: Query, data: bytes, rcode: int) -> bytes:
        """A header-only answer (FORMERR, NOTIMP, BADVERS, SERVFAIL), with the question when
        it could be read, and an OPT when the query had one that could be read."""
        flags = 0x8000 | (query.flags & 0x7900) | (rcode & 0xF)  # QR, opcode, RD, rcode
        has_question = bool(query.qname) and query.question_end <= len(data)
        has_opt = query.edns is not None
        head = bytes(
            (
                data[0],
                data[1],
                flags >> 8,
                flags & 0xFF,
                0,
                int(has_question),
                0,
                0,
                0,
                0,
                0,
                int(has_opt),
            )
        )
        body = data[HEADER_SIZE : query.question_end] if has_question else b""
        if has_opt:
            body += self._opt_bytes(rcode >> 4, query.dnssec_ok)
        return head + body

    @staticmethod
    def _opt_bytes(ext_rcode: int, dnssec_ok: bool) -> bytes:
        ttl = (ext_rcode << 24) | (0x8000 if dnssec_ok else 0)
        return (
            b"\x00"
            + (41).to_bytes(2, "big")
            + MAX_UDP.to_bytes(2, "big")
            + (ttl.to_bytes(4, "big"))
            + b"\x00\x00"
        )

    # ------------------------------------------------------------ building

    def _build(self, query: Query, limit: int) -> bytes:
        self.stats["built"] += 1
        labels = query.labels
        qname = DNSLabel(labels)
        origin = self._origin_labels
        in_zone = len(labels) >= len(origin) and tuple(labels[len(labels) - len(origin) :]) == (
            origin
        )
        answer: list[RR] = []
        authority: list[RR] = []
        additional: list[RR] = []
        if query.qclass not in (CLASS_IN, CLASS_ANY) or not in_zone:
            rcode, aa = REFUSED, False
            self.stats["refused"] += 1
        elif query.qtype in (TYPE_AXFR, TYPE_IXFR):
            rcode, aa = REFUSED, True  # no zone transfers: every node builds the zone itself
            self.stats["refused"] += 1
        else:
            aa = True
            rrsets = self._lookup(tuple(labels[: len(labels) - len(origin)]), qname)
            if rrsets is None:
                rcode = NXDOMAIN
                authority.append(self._soa())
                self.stats["nxdomain"] += 1
            else:
                rcode = NOERROR
                if query.qtype == TYPE_ANY and limit == TCP_LIMIT:
                    for records, extra in rrsets.values():
                        answer += records
                        additional += extra
                elif query.qtype == TYPE_ANY:
                    # RFC 8482 §4.2: over UDP, ANY gets one synthesized HINFO, not every
                    # record (the largest answer a spoofed query could aim at someone).
                    if rrsets:
                        answer.append(
                            RR(
                                qname,
                                QTYPE.HINFO,
                                ttl=self.ttl,
                                rdata=dnslib.RD(b"\x07RFC8482\x00"),  # CPU, OS
                            )
                        )
                else:
                    records, extra = rrsets.get(query.qtype, ([], []))
                    answer += records
                    additional += extra
                if not answer:
                    authority.append(self._soa())
                    self.stats["nodata"] += 1
                else:
                    self.stats["noerror"] += 1
        header = DNSHeader(id=0, qr=1, aa=int(aa), rd=0, ra=0, rcode=rcode)
        question = DNSQuestion(qname, query.qtype, query.qclass)
        seen: set[tuple[Any, ...]] = set()
        extra = []
        for rr in additional:  # one copy of each record (NAPTR's SRV sets share targets)
            key = (tuple(rr.rname.label), rr.rtype, str(rr.rdata))
            if key not in seen:
                seen.add(key)
                extra.append(rr)
        for attempt in (extra, []):
            record = DNSRecord(header, q=question, rr=list(answer), auth=list(authority))
            record.ar = list(attempt)
            if query.edns is not None:
                record.ar.append(self._opt(query))
            packed = record.pack()
            if len(packed) <= limit:
                return bytes(packed)
        self.stats["truncated"] += 1
        header = DNSHeader(id=0, qr=1, aa=int(aa), rd=0, ra=0, rcode=rcode, tc=1)
        record = DNSRecord(header, q=question)
        if query.edns is not None:
            record.ar.append(self._opt(query))
        return bytes(record.pack())

    @staticmethod
    def _opt(query: Query) -> RR:
        return dnslib.EDNS0(udp_len=MAX_UDP, flags="do" if query.dnssec_ok else "")

    def _soa(self) -> RR:
        me = self._targets.get(self.me)
        mname = me.label if me is not None else DNSLabel((b"ns", *self._origin_labels))
        return RR(
            self.origin,
            QTYPE.SOA,
            ttl=self.ttl,
            rdata=dnslib.SOA(
                mname,
                DNSLabel((b"hostmaster", *self._origin_labels)),
                (self.version & 0xFFFFFFFF, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, self.ttl),
            ),
        )

    # The rrsets at a name: {type: (records, additional records)}; None: no such name.
    _RRsets = dict[int, tuple[list[RR], list[RR]]]

    def _lookup(self, rel: tuple[bytes, ...], qname: DNSLabel) -> _RRsets | None:
        if not rel:
            return self._apex()
        transport = _BY_SRV.get(rel) if len(rel) == 2 else None
        if transport is not None:
            records, extra = self._srv_all(qname, transport)
            return {QTYPE.SRV: (records, extra)}
        if rel in _SRV_PARENTS or rel in ((b"node",), (b"aor",)):
            return {}
        if rel[-1] == b"aor":
            return self._per_user(rel[:-1], qname)
        if rel[-1] == b"node":
            node_labels = rel[:-1]
            name = self._by_label.get(node_labels)
            if name is not None:
                target = self._targets.get(name)
                address = target.address if target is not None else None
                return {address.rtype: ([address], [])} if address is not None else {}
            if node_labels in self._ents:
                return {}
        return None

    def _live_first(self, nodes: list[Node]) -> list[Node]:
        healthy = [n for n in nodes if not n.suspect]
        return healthy or nodes

    def _addresses(self, nodes: Iterable[Node]) -> list[RR]:
        out = []
        for node in nodes:
            target = self._targets.get(node.name)
            if target is not None and target.address is not None:
                out.append(target.address)
        return out

    def _apex(self) -> _RRsets:
        sip = [n for n in self._nodes.values() if n.offers_sip and n.name in self._targets]
        servers = self._live_first(
            [n for n in self._nodes.values() if n.dns and n.name in self._targets]
        )
        rrsets: Zone._RRsets = {QTYPE.SOA: ([self._soa()], [])}
        if servers:
            ns = [
                RR(
                    self.origin,
                    QTYPE.NS,
                    ttl=self.ttl,
                    rdata=dnslib.NS(self._targets[n.name].label),
                )
                for n in servers
            ]
            rrsets[QTYPE.NS] = (ns, self._addresses(servers))
        if sip:
            naptr = []
            extra: list[RR] = []
            for transport in TRANSPORTS:
                if not any(transport.port(n) is not None for n in sip):
                    continue  # a service no live member offers is not listed
                replacement = DNSLabel((*transport.srv, *self._origin_labels))
                naptr.append(
                    RR(
                        self.origin,
                        QTYPE.NAPTR,
                        ttl=self.ttl,
                        rdata=_NAPTR(
                            10, transport.preference, b"s", transport.service, b"", replacement
                        ),
                    )
                )
                records, glue = self._srv_all(replacement, transport)
                extra += records + glue
            rrsets[QTYPE.NAPTR] = (naptr, extra)
            seen: set[str] = set()
            for rr in self._addresses(self._live_first(sip)):
                if str(rr.rdata) in seen:
                    continue  # one record per address (RFC 2181 §5): members may share a host
                seen.add(str(rr.rdata))
                apex = RR(self.origin, rr.rtype, ttl=self.ttl, rdata=rr.rdata)
                rrsets.setdefault(rr.rtype, ([], []))[0].append(apex)
        return rrsets

    def _offering(self, transport: Transport) -> list[Node]:
        """The members offering `transport` that have a name to point at."""
        return [
            n
            for n in self._nodes.values()
            if transport.port(n) is not None and n.name in self._targets
        ]

    def _srv_all(self, owner: DNSLabel, transport: Transport) -> tuple[list[RR], list[RR]]:
        records = []
        nodes = sorted(self._offering(transport), key=lambda n: n.name)
        for node in nodes:
            if node.suspect or not node.weight > 0:
                priority = PRIORITY_LAST
            elif node.dc == self.dc:
                priority = PRIORITY_LOCAL
            else:
                priority = PRIORITY_REMOTE
            weight = max(0, min(65_535, round(node.weight * 100))) if node.weight > 0 else 0
            records.append(self._srv(owner, priority, weight, node, transport))
        records.sort(key=lambda rr: rr.rdata.priority)
        return records, self._addresses(nodes)

    def _srv(
        self, owner: DNSLabel, priority: int, weight: int, node: Node, transport: Transport
    ) -> RR:
        """The SRV record at `owner` pointing at `node`'s port for `transport` and DNS name."""
        port = transport.port(node)
        assert port is not None
        return RR(
            owner,
            QTYPE.SRV,
            ttl=self.ttl,
            rdata=dnslib.SRV(priority, weight, port, self._targets[node.name].label),
        )

    def _per_user(self, rel: tuple[bytes, ...], qname: DNSLabel) -> _RRsets:
        """Every name under ``aor`` exists (each is a per-user name or an ancestor of one);
        the SRV form answers with the owners."""
        transport = _BY_SRV.get(rel[:2]) if len(rel) >= 4 else None
        if transport is None:
            return {}
        user = _decode_user(rel[2])
        try:
            domain = b".".join(rel[3:]).decode("ascii")
        except UnicodeDecodeError:
            return {}
        if not user or not domain:
            return {}
        # An owner lacking the transport is left out, and the others keep their rank order.
        owners = [
            self._nodes[name]
            for name in self._owners(f"sip:{user}@{domain}")
            if name in self._nodes
            and name in self._targets
            and transport.port(self._nodes[name]) is not None
        ]
        owners.sort(key=lambda n: n.suspect)  # stable: rank order among the healthy
        records = [
            self._srv(qname, 10 * rank, 0, n, transport) for rank, n in enumerate(owners, start=1)
        ]
        return {QTYPE.SRV: (records, self._addresses(owners))} if records else {}
