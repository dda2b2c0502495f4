"""Gossip wire messages and their CBOR codec.

A packet (UDP datagram, after unsealing) is the CBOR array
``[protocol_version, sender_name, [message, ...]]`` and every message is an array whose first
item is its integer type. A stream frame (TCP: push-pull, queries) is one message. Numbers are
never reused: a new message gets a new number, and a receiver skips (and counts) types newer
than it knows. Decoding is bounded (size first, depth, no indefinite lengths, no tags, exact
types) and raises only `DecodeError`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import cbor2

from ._member import Addr, State

PROTOCOL_VERSION = 1
MAX_DATAGRAM = 65507
MAX_NAME = 128
MAX_DC = 64
MAX_ROLES = 16
MAX_ROLE = 64
MAX_TAGS = 64
MAX_TAG_BYTES = 512
MAX_HOST = 255
MAX_DEPTH = 8
MAX_MESSAGES = 512
MAX_QUERY_DEPTH = 6


class DecodeError(Exception):
    """The bytes are not a valid message; `str()` says why (for logs and counters)."""


# Message type numbers: only ever added, never changed.
PING = 1
PING_REQ = 2
ACK = 3
NACK = 4
ALIVE = 5
SUSPECT = 6
DEAD = 7
SUMMARY = 8
PUSH_PULL = 20
PUSH_PULL_REPLY = 21
QUERY = 22
QUERY_REPLY = 23
STREAM_ERROR = 24
KEY_OP = 25
KEY_OP_REPLY = 26


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str
    source: str
    source_addr: Addr
    source_dc: str


@dataclass(frozen=True, slots=True)
class PingReq:
    seq: int
    target: str
    target_addr: Addr
    source: str
    source_addr: Addr
    nack: bool


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    source: str


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int
    source: str


@dataclass(frozen=True, slots=True)
class Alive:
    name: str
    incarnation: int
    addr: Addr
    dc: str
    roles: tuple[str, ...]
    weight: float
    tags: dict[str, str]
    protocol: int = PROTOCOL_VERSION
    # Appended field (older senders omit it: 0). The sender's Lifeguard health score when it
    # announced itself: a member that knows it is slow says so, and others give it longer to
    # refute a suspicion.
    health: int = 0
    # Appended field (older senders omit it: None). The incarnation of the accusation this
    # alive answers (the member heard it suspected or declared at that incarnation), or -1
    # if it never refuted one. An alive that answers no suspicion in force (a deaf member's
    # metadata change) does not clear it; from an older sender any newer alive does.
    refutes: int | None = None


@dataclass(frozen=True, slots=True)
class Suspect:
    name: str
    incarnation: int
    origin: str


@dataclass(frozen=True, slots=True)
class Dead:
    """Declares `name` dead; when `origin == name` the member left gracefully."""

    name: str
    incarnation: int
    origin: str


@dataclass(frozen=True, slots=True)
class Summary:
    """A member's own view summary: its digest of the live view, its health score and how
    many live members it sees. `seq` orders summaries from one origin."""

    name: str
    seq: int
    digest: bytes
    health: int
    live: int
    # A small, bounded load report (name -> count: requests served, bindings held, uptime
    # ...), so one `swimthor status` shows every member's load. Optional on the wire.
    load: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class MemberState:
    """One member's full record, as exchanged in push-pull."""

    name: str
    addr: Addr
    dc: str
    roles: tuple[str, ...]
    weight: float
    tags: dict[str, str]
    incarnation: int
    state: State
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full state sync over TCP; the receiver answers with a PushPullReply of its own."""

    join: bool
    states: tuple[MemberState, ...]
    summaries: tuple[Summary, ...] = ()
    reply: bool = False


@dataclass(frozen=True, slots=True)
class Query:
    """Read-only request over TCP (from `swimthor members/status --via`)."""

    what: str


@dataclass(frozen=True, slots=True)
class QueryReply:
    what: str
    data: Any


@dataclass(frozen=True, slots=True)
class StreamError:
    message: str


@dataclass(frozen=True, slots=True)
class KeyOp:
    """Key rotation step sent to every member: op is "install", "use" or "remove"."""

    op: str
    key: bytes


@dataclass(frozen=True, slots=True)
class KeyOpReply:
    ok: bool
    message: str


Message = Ping | PingReq | Ack | Nack | Alive | Suspect | Dead | Summary
StreamMessage = PushPull | Query | QueryReply | StreamError | KeyOp | KeyOpReply


@dataclass(frozen=True, slots=True)
class Packet:
    version: int
    sender: str
    messages: tuple[Message, ...]
    unknown: int  # messages of types this version does not know (skipped)


# ---------------------------------------------------------------- encoding


def _addr(a: Addr) -> list[Any]:
    return [a[0], a[1]]


def encode_message(m: Message) -> bytes:
    """One message as CBOR, to be placed in a packet with `encode_packet`."""
    obj: list[Any]
    if isinstance(m, Ping):
        obj = [PING, m.seq, m.target, m.source, _addr(m.source_addr), m.source_dc]
    elif isinstance(m, PingReq):
        obj = [
            PING_REQ,
            m.seq,
            m.target,
            _addr(m.target_addr),
            m.source,
            _addr(m.source_addr),
            m.nack,
        ]
    elif isinstance(m, Ack):
        obj = [ACK, m.seq, m.source]
    elif isinstance(m, Nack):
        obj = [NACK, m.seq, m.source]
    elif isinstance(m, Alive):
        obj = [
            ALIVE,
            m.name,
            m.incarnation,
            _addr(m.addr),
            m.dc,
            list(m.roles),
            float(m.weight),
            dict(m.tags),
            m.protocol,
            m.health,
        ]
        if m.refutes is not None:
            obj.append(m.refutes)
    elif isinstance(m, Suspect):
        obj = [SUSPECT, m.name, m.incarnation, m.origin]
    elif isinstance(m, Dead):
        obj = [DEAD, m.name, m.incarnation, m.origin]
    elif isinstance(m, Summary):
        obj = [SUMMARY, m.name, m.seq, m.digest, m.health, m.live]
        if m.load:
            obj.append(dict(m.load))
    else:  # pragma: no cover - exhaustive
        raise TypeError(f"not a packet message: {m!r}")
    return cbor2.dumps(obj)


def _array_header(n: int) -> bytes:
    if n < 24:
        return bytes([0x80 + n])
    if n < 256:
        return bytes([0x98, n])
    return bytes([0x99]) + n.to_bytes(2, "big")


def packet_overhead(sender: str, count: int = 255) -> int:
    """Bytes a packet adds around its encoded messages (for filling up to the size limit)."""
    return (
        1
        + len(cbor2.dumps(PROTOCOL_VERSION))
        + len(cbor2.dumps(sender))
        + len(_array_header(count))
    )


def check_metadata(
    name: str,
    dc: str,
    roles: tuple[str, ...],
    weight: float,
    tags: dict[str, str],
    *,
    max_tags: int,
    max_tag_bytes: int,
    room: int,
) -> None:
    """Refuse (ValueError) roles, a weight or tags of ours that members would not take, or
    whose alive would not fit in `room` bytes of a packet."""
    if len(roles) > MAX_ROLES or any(
        not r or len(r) > MAX_ROLE or not r.isprintable() for r in roles
    ):
        raise ValueError(f"at most {MAX_ROLES} roles of 1 to {MAX_ROLE} printable characters")
    if not (math.isfinite(weight) and 0.0 <= weight <= 1e6):
        raise ValueError("weight must be a number from 0 to 1000000")
    if len(tags) > max_tags:
        raise ValueError(f"at most {max_tags} tags")
    for k, v in tags.items():
        if not k or len(k.encode()) > max_tag_bytes or len(v.encode()) > max_tag_bytes:
            raise ValueError(f"tag keys and values are at most {max_tag_bytes} bytes")
        if not k.isprintable() or not v.isprintable():
            raise ValueError("tags must be printable text")
    probe = Alive(name, 0, ("0:0:0:0:0:0:0:0", 65535), dc, roles, weight, tags)
    if len(encode_message(probe)) > room:
        raise ValueError("metadata too large to fit one packet")


def encode_packet(sender: str, encoded_messages: list[bytes]) -> bytes:
    """A packet from messages already encoded with `encode_message`."""
    return b"".join(
        [
            b"\x83",
            cbor2.dumps(PROTOCOL_VERSION),
            cbor2.dumps(sender),
            _array_header(len(encoded_messages)),
            *encoded_messages,
        ]
    )


def _state_obj(s: MemberState) -> list[Any]:
    return [
        s.name,
        _addr(s.addr),
        s.dc,
        list(s.roles),
        float(s.weight),
        dict(s.tags),
        s.incarnation,
        int(s.state),
        s.protocol,
    ]


def _summary_obj(s: Summary) -> list[Any]:
    obj: list[Any] = [s.name, s.seq, s.digest, s.health, s.live]
    if s.load:
        obj.append(dict(s.load))
    return obj


MAX_LOAD_ENTRIES = 8


def _load(x: Any) -> tuple[tuple[str, int], ...]:
    """A summary's load report: at most 8 short names, each with a count."""
    if not isinstance(x, dict) or len(x) > MAX_LOAD_ENTRIES:
        raise DecodeError("bad load report")
    out = []
    for key, value in x.items():
        if not isinstance(key, str) or not 0 < len(key) <= 16 or not key.isascii():
            raise DecodeError("bad load report key")
        out.append((key, _int(value, "load", 0, 2**53)))
    return tuple(sorted(out))


def encode_stream(m: StreamMessage) -> bytes:
    """One stream frame's payload (framing and sealing are the runtime's and keyring's)."""
    obj: list[Any]
    if isinstance(m, PushPull):
        obj = [
            PUSH_PULL_REPLY if m.reply else PUSH_PULL,
            m.join,
            [_state_obj(s) for s in m.states],
            [_summary_obj(s) for s in m.summaries],
        ]
    elif isinstance(m, Query):
        obj = [QUERY, m.what]
    elif isinstance(m, QueryReply):
        obj = [QUERY_REPLY, m.what, m.data]
    elif isinstance(m, StreamError):
        obj = [STREAM_ERROR, m.message]
    elif isinstance(m, KeyOp):
        obj = [KEY_OP, m.op, m.key]
    elif isinstance(m, KeyOpReply):
        obj = [KEY_OP_REPLY, m.ok, m.message]
    else:  # pragma: no cover - exhaustive
        raise TypeError(f"not a stream message: {m!r}")
    return cbor2.dumps(obj)


# ---------------------------------------------------------------- decoding


def _reject_tag(decoder: Any, tag: Any = None) -> Any:
    raise cbor2.CBORDecodeError("CBOR tags are not allowed")


# Every semantic tag cbor2 knows is refused; unknown ones reach tag_hook and are refused too.
_NO_TAGS = {t: _reject_tag for t in (*range(0, 300), 1004, 55799, 25799, 55800, 55801)}


def _loads(data: bytes, max_depth: int) -> Any:
    fp = io.BytesIO(data)
    try:
        dec = cbor2.CBORDecoder(
            fp,
            max_depth=max_depth,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            semantic_decoders=_NO_TAGS,
            tag_hook=_reject_tag,
        )
        obj = dec.decode()
    except DecodeError:
        raise
    except Exception as e:  # cbor2 raises CBORDecodeError, but be total: bytes are hostile
        raise DecodeError(f"bad CBOR: {e}") from None
    if fp.tell() != len(data):
        raise DecodeError("trailing bytes after CBOR item")
    return obj


def _int(x: Any, what: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if type(x) is not int or not lo <= x <= hi:
        raise DecodeError(f"bad {what}")
    return x


def _str(x: Any, what: str, maxlen: int, allow_empty: bool = False) -> str:
    if type(x) is not str or len(x) > maxlen or (not x and not allow_empty):
        raise DecodeError(f"bad {what}")
    if not x.isprintable():
        raise DecodeError(f"bad {what}: unprintable characters")
    return x


def _name(x: Any) -> str:
    return _str(x, "name", MAX_NAME)


def _bool(x: Any, what: str) -> bool:
    if type(x) is not bool:
        raise DecodeError(f"bad {what}")
    return x


def _float(x: Any, what: str) -> float:
    if type(x) not in (int, float) or not math.isfinite(x):
        raise DecodeError(f"bad {what}")
    return float(x)


def _bytes(x: Any, what: str, maxlen: int) -> bytes:
    if type(x) is not bytes or len(x) > maxlen:
        raise DecodeError(f"bad {what}")
    return x


def _list(x: Any, what: str, maxlen: int) -> list[Any]:
    if type(x) is not list or len(x) > maxlen:
        raise DecodeError(f"bad {what}")
    return x


def _decode_addr(x: Any) -> Addr:
    items = _list(x, "address", 2)
    if len(items) != 2:
        raise DecodeError("bad address")
    return _str(items[0], "host", MAX_HOST), _int(items[1], "port", 0, 65535)


def _roles(x: Any) -> tuple[str, ...]:
    return tuple(_str(r, "role", MAX_ROLE) for r in _list(x, "roles", MAX_ROLES))


def _tags(x: Any) -> dict[str, str]:
    if type(x) is not dict or len(x) > MAX_TAGS:
        raise DecodeError("bad tags")
    out: dict[str, str] = {}
    for k, v in x.items():
        key = _str(k, "tag key", MAX_TAG_BYTES)
        out[key] = _str(v, "tag value", MAX_TAG_BYTES, allow_empty=True)
    return out


def _weight(x: Any) -> float:
    w = _float(x, "weight")
    if not 0.0 <= w <= 1e6:
        raise DecodeError("bad weight")
    return w


def _fields(m: list[Any], n: int, what: str) -> list[Any]:
    # A newer sender may append fields to a known message: accept and ignore the extra ones.
    if len(m) < n + 1:
        raise DecodeError(f"short {what} message")
    return m[1 : n + 1]


def _decode_message(m: Any) -> Message | None:
    items = _list(m, "message", 64)
    if not items:
        raise DecodeError("empty message")
    t = _int(items[0], "message type", 0, 2**32)
    if t == PING:
        seq, target, source, addr, dc = _fields(items, 5, "ping")
        return Ping(
            _int(seq, "seq"),
            _name(target),
            _name(source),
            _decode_addr(addr),
            _str(dc, "dc", MAX_DC),
        )
    if t == PING_REQ:
        seq, target, taddr, source, saddr, nack = _fields(items, 6, "ping-req")
        return PingReq(
            _int(seq, "seq"),
            _name(target),
            _decode_addr(taddr),
            _name(source),
            _decode_addr(saddr),
            _bool(nack, "nack"),
        )
    if t == ACK:
        seq, source = _fields(items, 2, "ack")
        return Ack(_int(seq, "seq"), _name(source))
    if t == NACK:
        seq, source = _fields(items, 2, "nack")
        return Nack(_int(seq, "seq"), _name(source))
    if t == ALIVE:
        name, inc, addr, dc, roles, weight, tags, proto = _fields(items, 8, "alive")
        health = _int(items[9], "health", 0, 1000) if len(items) > 9 else 0
        refutes = _int(items[10], "refutes", -1) if len(items) > 10 else None
        return Alive(
            _name(name),
            _int(inc, "incarnation"),
            _decode_addr(addr),
            _str(dc, "dc", MAX_DC),
            _roles(roles),
            _weight(weight),
            _tags(tags),
            _int(proto, "protocol", 1, 2**16),
            health,
            refutes,
        )
    if t == SUSPECT:
        name, inc, origin = _fields(items, 3, "suspect")
        return Suspect(_name(name), _int(inc, "incarnation"), _name(origin))
    if t == DEAD:
        name, inc, origin = _fields(items, 3, "dead")
        return Dead(_name(name), _int(inc, "incarnation"), _name(origin))
    if t == SUMMARY:
        name, seq, digest, health, live = _fields(items, 5, "summary")
        return Summary(
            _name(name),
            _int(seq, "seq"),
            _bytes(digest, "digest", 64),
            _int(health, "health", 0, 1000),
            _int(live, "live", 0, 2**31),
            _load(items[6]) if len(items) > 6 else (),
        )
    if t in (PUSH_PULL, PUSH_PULL_REPLY, QUERY, QUERY_REPLY, STREAM_ERROR, KEY_OP, KEY_OP_REPLY):
        raise DecodeError("stream message in a datagram")
    return None  # unknown, newer type: skipped and counted by the caller


def decode_packet(data: bytes) -> Packet:
    """A datagram's plaintext to a Packet; DecodeError for anything malformed."""
    if len(data) > MAX_DATAGRAM:
        raise DecodeError("datagram too large")
    obj = _loads(data, MAX_DEPTH)
    items = _list(obj, "packet", 16)
    if len(items) < 3:
        raise DecodeError("short packet")
    version = _int(items[0], "protocol version", 1, 2**16)
    sender = _name(items[1])
    raw = _list(items[2], "message list", MAX_MESSAGES)
    out: list[Message] = []
    unknown = 0
    for m in raw:
        msg = _decode_message(m)
        if msg is None:
            unknown += 1
        else:
            out.append(msg)
    return Packet(version, sender, tuple(out), unknown)


def _decode_state(x: Any) -> MemberState:
    items = _list(x, "member state", 32)
    if len(items) < 9:
        raise DecodeError("short member state")
    name, addr, dc, roles, weight, tags, inc, state, proto = items[:9]
    st = _int(state, "state", 0, 3)
    return MemberState(
        _name(name),
        _decode_addr(addr),
        _str(dc, "dc", MAX_DC),
        _roles(roles),
        _weight(weight),
        _tags(tags),
        _int(inc, "incarnation"),
        State(st),
        _int(proto, "protocol", 1, 2**16),
    )


def _decode_summary(x: Any) -> Summary:
    items = _list(x, "summary", 32)
    if len(items) < 5:
        raise DecodeError("short summary")
    name, seq, digest, health, live = items[:5]
    return Summary(
        _name(name),
        _int(seq, "seq"),
        _bytes(digest, "digest", 64),
        _int(health, "health", 0, 1000),
        _int(live, "live", 0, 2**31),
        _load(items[5]) if len(items) > 5 else (),
    )


def _check_query_data(x: Any, depth: int = 0) -> Any:
    if depth > MAX_QUERY_DEPTH:
        raise DecodeError("query reply too deep")
    if x is None or type(x) in (bool, int, float, str):
        return x
    if type(x) is list:
        return [_check_query_data(v, depth + 1) for v in x]
    if type(x) is dict:
        if not all(type(k) is str for k in x):
            raise DecodeError("query reply keys must be strings")
        return {k: _check_query_data(v, depth + 1) for k, v in x.items()}
    raise DecodeError("bad value in query reply")


def decode_stream(data: bytes, max_size: int, max_members: int = 100_000) -> StreamMessage:
    """A stream frame's plaintext to a message; DecodeError for anything malformed."""
    if len(data) > max_size:
        raise DecodeError("stream frame too large")
    obj = _loads(data, MAX_DEPTH + MAX_QUERY_DEPTH)
    items = _list(obj, "stream message", 16)
    if not items:
        raise DecodeError("empty stream message")
    t = _int(items[0], "message type", 0, 2**32)
    if t in (PUSH_PULL, PUSH_PULL_REPLY):
        join, states, summaries = _fields(items, 3, "push-pull")
        return PushPull(
            _bool(join, "join"),
            tuple(_decode_state(s) for s in _list(states, "states", max_members)),
            tuple(_decode_summary(s) for s in _list(summaries, "summaries", max_members)),
            reply=t == PUSH_PULL_REPLY,
        )
    if t == QUERY:
        (what,) = _fields(items, 1, "query")
        return Query(_str(what, "query", 64))
    if t == QUERY_REPLY:
        what, data_ = _fields(items, 2, "query reply")
        return QueryReply(_str(what, "query", 64), _check_query_data(data_))
    if t == STREAM_ERROR:
        (message,) = _fields(items, 1, "error")
        return StreamError(_str(message, "error", 1024, allow_empty=True))
    if t == KEY_OP:
        op, key = _fields(items, 2, "key op")
        if op not in ("install", "use", "remove"):
            raise DecodeError("bad key op")
        return KeyOp(op, _bytes(key, "key", 64))
    if t == KEY_OP_REPLY:
        ok, message = _fields(items, 2, "key op reply")
        return KeyOpReply(_bool(ok, "ok"), _str(message, "message", 1024, allow_empty=True))
    raise DecodeError(f"unknown stream message type {t}")
