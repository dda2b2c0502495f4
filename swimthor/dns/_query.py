"""Reading a DNS query off the wire, by hand (RFC 1035 §4.1, RFC 6891 for EDNS0).

A query is a 12-byte header, one question and at most an OPT record: a few dozen bytes that
can be checked and split in a few microseconds without building dnslib objects, which is what
makes a cached answer cheap (`_zone.Zone.respond`). Everything that is not a plain query comes
out as a `QueryError` that says which response code to answer with, or to answer nothing.

The checks (RFC 1035 §4.1.1, RFC 6891 §6.1.1, §7):
- shorter than a header, or a response (QR set): nothing is answered;
- an opcode other than QUERY: NOTIMP;
- QDCOUNT other than 1, an answer or authority record, a name that is too long, uses
  compression or an unknown label type, a question cut short, trailing bytes, a second OPT, an
  OPT not owned by the root, malformed EDNS options: FORMERR;
- an EDNS version above 0: BADVERS (RFC 6891 §6.1.3), answered with an OPT of version 0.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BADVERS",
    "FORMERR",
    "NOERROR",
    "NOTIMP",
    "NXDOMAIN",
    "REFUSED",
    "SERVFAIL",
    "Query",
    "QueryError",
    "parse_query",
]

NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
BADVERS = 16  # an extended code: 0 in the header, 1 in the OPT's upper rcode bits

HEADER_SIZE = 12
MAX_NAME = 255  # octets on the wire, length bytes and the root included (RFC 1035 §3.1)
TYPE_OPT = 41


class QueryError(Exception):
    """A query we answer with `rcode` (None: answer nothing). `query` is what could be read of
    it (at least the ID and flags when `rcode` is not None), to echo in the answer."""

    def __init__(self, reason: str, rcode: int | None, query: Query | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rcode = rcode
        self.query = query


@dataclass(slots=True)
class Query:
    """One query as read off the wire.

    ``qname`` is the question's name exactly as sent (wire format, the client's case), so an
    answer can echo it byte for byte; ``name`` is the same in lower case. ``edns`` is the
    requestor's UDP payload size, or None without an OPT record."""

    id: int
    flags: int
    qname: bytes = b""
    name: bytes = b""
    qtype: int = 0
    qclass: int = 0
    question_end: int = HEADER_SIZE
    edns: int | None = None
    edns_version: int = 0
    dnssec_ok: bool = False

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def labels(self) -> list[bytes]:
        """The lower-case name as a list of labels, the root left out."""
        out = []
        name = self.name
        i = 0
        while name[i]:
            out.append(name[i + 1 : i + 1 + name[i]])
            i += 1 + name[i]
        return out


def _read_name(data: bytes, at: int, query: Query) -> int:
    """The offset just past an uncompressed name starting at `at`; FORMERR otherwise."""
    start = at
    end = len(data)
    while True:
        if at >= end:
            raise QueryError("name cut short", FORMERR, query)
        length = data[at]
        if length == 0:
            at += 1
            break
        if length & 0xC0:
            # 11: a compression pointer (nothing earlier in a query to point at: the question
            # is the first name); 01 and 10: extended label types, obsolete (RFC 6891 §5).
            raise QueryError("compressed or extended label in the query", FORMERR, query)
        at += 1 + length
    if at > end:
        raise QueryError("name cut short", FORMERR, query)
    if at - start > MAX_NAME:
        raise QueryError("name longer than 255 octets", FORMERR, query)
    return at


def _skip_name(data: bytes, at: int, query: Query) -> int:
    """Past a name that may end in a compression pointer (an additional record's owner)."""
    end = len(data)
    for _ in range(128):
        if at >= end:
            raise QueryError("name cut short", FORMERR, query)
        length = data[at]
        if length == 0:
            return at + 1
        if length & 0xC0 == 0xC0:
            if at + 2 > end:
                raise QueryError("name cut short", FORMERR, query)
            return at + 2
        if length & 0xC0:
            raise QueryError("extended label type", FORMERR, query)
        at += 1 + length
    raise QueryError("name with too many labels", FORMERR, query)


def parse_query(data: bytes) -> Query:
    """The query in `data`, or QueryError saying how to answer (or not) instead."""
    if len(data) < HEADER_SIZE:
        raise QueryError("shorter than a DNS header", None)
    ident = (data[0] << 8) | data[1]
    flags = (data[2] << 8) | data[3]
    query = Query(ident, flags)
    if flags & 0x8000:
        raise QueryError("a response, not a query", None)
    if query.opcode != 0:
        raise QueryError(f"opcode {query.opcode} is not QUERY", NOTIMP, query)
    qdcount = (data[4] << 8) | data[5]
    ancount = (data[6] << 8) | data[7]
    nscount = (data[8] << 8) | data[9]
    arcount = (data[10] << 8) | data[11]
    if qdcount != 1:
        raise QueryError(f"{qdcount} questions (one is answered)", FORMERR, query)
    at = _read_name(data, HEADER_SIZE, query)
    if at + 4 > len(data):
        raise QueryError("question cut short", FORMERR, query)
    query.qname = bytes(data[HEADER_SIZE:at])
    # Lower case: only bytes A-Z change, and a length byte is at most 63, below "A".
    query.name = query.qname.lower()
    query.qtype = (data[at] << 8) | data[at + 1]
    query.qclass = (data[at + 2] << 8) | data[at + 3]
    at += 4
    query.question_end = at
    if ancount or nscount:
        raise QueryError("a query with answer or authority records", FORMERR, query)
    if query.qtype == TYPE_OPT:
        raise QueryError("OPT is not a question type", FORMERR, query)
    seen_opt = False
    end = len(data)
    for _ in range(arcount):
        owner = at
        at = _skip_name(data, at, query)
        if at + 10 > end:
            raise QueryError("additional record cut short", FORMERR, query)
        rtype = (data[at] << 8) | data[at + 1]
        rclass = (data[at + 2] << 8) | data[at + 3]
        ttl = int.from_bytes(data[at + 4 : at + 8], "big")
        rdlength = (data[at + 8] << 8) | data[at + 9]
        rdata = at + 10
        at = rdata + rdlength
        if at > end:
            raise QueryError("additional record cut short", FORMERR, query)
        if rtype != TYPE_OPT:
            continue  # TSIG and the like: not supported, answered unsigned
        if seen_opt:
            raise QueryError("more than one OPT record", FORMERR, query)
        if data[owner] != 0:
            raise QueryError("OPT record not owned by the root", FORMERR, query)
        seen_opt = True
        _check_options(data, rdata, at, query)
        query.edns = rclass
        query.edns_version = (ttl >> 16) & 0xFF
        query.dnssec_ok = bool(ttl & 0x8000)
    if at != end:
        raise QueryError("bytes after the last record", FORMERR, query)
    return query


def _check_options(data: bytes, at: int, end: int, query: Query) -> None:
    """EDNS options are code, length, value (RFC 6891 §6.1.2); none is acted on (a COOKIE,
    RFC 7873, is ignored as the RFC lets a server that does not do cookies), but they must
    add up to the record's length."""
    while at < end:
        if at + 4 > end:
            raise QueryError("EDNS option cut short", FORMERR, query)
        length = (data[at + 2] << 8) | data[at + 3]
        at += 4 + length
        if at > end:
            raise QueryError("EDNS option longer than its record", FORMERR, query)
