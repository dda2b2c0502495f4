"""Fuzz targets for everything that reads bytes from the network or the control socket.

Each target feeds hostile input to one entry point and checks that it either does its job or
refuses the input the documented way, and that nothing else escapes:

1. gossip codec (`membership._messages`): `decode_packet` and `decode_stream` on arbitrary
   bytes, CBOR-shaped bytes, well-formed CBOR of any shape, and valid encodings mutated at the
   byte and at the CBOR-tree level. They return a value or raise `DecodeError`; whatever they
   accept re-encodes to bytes they read back the same.
2. gossip core (`membership._core.Membership`): `receive_datagram`, `handle_stream` and
   `stream_response` of an insecure core fed garbage, mutated packets and sequences of
   well-formed but hostile messages (names, addresses and incarnations from small pools, so
   that they meet the core's state), interleaved with timers and with the core's own traffic
   answered or reflected; and a sealed core (a keyring) fed arbitrary and sealed bytes. After
   every step: nothing raised, our own member is alive in our own view, `num_live()` agrees
   with the member list, every datagram and stream frame we send decodes (what we send is valid
   gossip), and `status()` is JSON.
3. SIP parser and proxy (`sip._message.parse_message`, `sip._proxy.Proxy.handle`): arbitrary
   bytes and valid REGISTER/INVITE/BYE/OPTIONS/ACK/CANCEL/responses mutated header by header
   (grammar-ish values, duplicated, deleted, folded, recased, compact names) and byte by byte.
   `parse_message` returns a message or raises `SipParseError`, and what it accepts serializes
   to a message it reads back the same; `handle` returns actions and never raises, and every
   `Send` it makes for a message it could read is itself a message `parse_message` reads.
   Differential: for a response the parser reads, the fast relay path and the full path send
   the same message to the same place. Every call runs under a time limit (a hang or
   exponential backtracking fails the example instead of stalling the run).
4. DNS query path: `test_dns_server.py` (`test_fuzz_*`), which follows the same profiles.
5. control protocol (`control.serve_control`): a real server on a temporary Unix socket with a
   trivial handler gets random request lines (invalid JSON, wrong shapes, NUL bytes, non-UTF-8,
   deep nesting, lines over the size limit, no newline, a client that hangs up) on several
   connections at once; each is answered with one JSON line (an error unless it was a valid
   request), and a valid request is answered afterwards.

6. stream framing (`sip._streams`): `StreamFramer` (TCP, TLS) and `WsFramer` (WebSocket,
   RFC 7118) fed arbitrary bytes, and valid streams (SIP messages with CRLF pings; a client's
   upgrade and masked frames made by wsproto) mutated byte by byte, in chunks of any size.
   The stream framer returns whole messages or raises `BadStream`; the WebSocket framer never
   raises, hands out no message before the upgrade or after it closed, and no message bigger
   than a SIP message may be. Chunking never changes what comes out of a valid stream.

Running: `make test` runs every target with a few hundred examples (about 15 s in all).
`make fuzz` sets ``HYPOTHESIS_PROFILE=fuzz`` (see `conftest.py`), which gives each target
thousands to tens of thousands of fresh random examples (about 8 minutes); by hand::

    HYPOTHESIS_PROFILE=fuzz .venv/bin/pytest -q tests/test_fuzz.py -x

Every bug found becomes a regression test in the last section of this file, marked
``xfail(strict=True)`` until the code is fixed. Meanwhile the targets step around it, so that
a long run can find the next one: a KNOWN_* flag set to True, or `overflowed`. The five
found so far are fixed, and their flags are False; the switches stay as the way to handle the
next one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import re
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest
import trio
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request as WsRequest

from swimthor.config import profile
from swimthor.control import MAX_REQUEST, serve_control
from swimthor.keyring import new_nonce, unwrap_plain, wrap_plain
from swimthor.membership import (
    ALIVE,
    MAX_DATAGRAM,
    PUSH_PULL,
    QUERY_REPLY,
    Ack,
    Addr,
    Alive,
    Dead,
    DecodeError,
    KeyOp,
    KeyOpReply,
    Keyring,
    Membership,
    MemberState,
    Message,
    Nack,
    Packet,
    Ping,
    PingReq,
    PushPull,
    Query,
    QueryReply,
    State,
    StreamError,
    StreamMessage,
    StreamRequest,
    Summary,
    Suspect,
    decode_packet,
    decode_stream,
    encode_message,
    encode_packet,
    encode_stream,
)
from swimthor.sip import (
    BRANCH_PREFIX,
    MAX_MESSAGE_SIZE,
    Action,
    BadStream,
    Peer,
    Proxy,
    ProxySettings,
    Replicate,
    Request,
    Response,
    Send,
    SipParseError,
    Source,
    StreamFramer,
    WsFramer,
    parse_message,
)

# ---------------------------------------------------------------- budgets

# The active Hypothesis profile decides how long each target runs: the counts below in a
# normal run, the profile's max_examples (times a target's share) under the fuzz profile.
FUZZING = settings.get_current_profile_name() == "fuzz"
PROFILE_EXAMPLES = settings().max_examples


def budget(quick: int, share: float = 1.0) -> settings:
    """Settings for one target: `quick` examples in a normal run, `share` of the profile's
    max_examples under the fuzz profile. Everything else comes from the active profile."""
    n = max(quick, int(PROFILE_EXAMPLES * share)) if FUZZING else quick
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


class _TooSlow(BaseException):
    """Raised by the alarm inside the code under test (a BaseException, so that no `except
    Exception` there swallows it)."""


# One call of a target taking this long is a bug (a hang, or exponential backtracking).
CALL_LIMIT = 2.0


@contextlib.contextmanager
def time_limit(
    what: str, seconds: float = CALL_LIMIT, *, skip_known: bool = True
) -> Iterator[None]:
    """Fail if the block takes longer than `seconds` (SIGALRM, so the main thread only: it
    interrupts a runaway regular expression too). `skip_known`: a known slow path (see
    KNOWN_REDOS) rejects the example instead."""

    def alarm(signum: int, frame: object) -> None:
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _TooSlow as e:
        if skip_known and KNOWN_REDOS and _in_known_redos(e):
            reject()  # the known bug below: not news, try another input
        raise AssertionError(f"{what} took more than {seconds:g} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- shared strategies


@st.composite
def mutated_bytes(draw: st.DrawFn, valid: st.SearchStrategy[bytes], most: int = 4) -> bytes:
    """`valid` bytes with 1..`most` byte-level edits: bit flips, overwrites, cuts, inserts,
    deletions, and a copy of a slice elsewhere (which duplicates whole items)."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, most))):
        kind = draw(
            st.sampled_from(["flip", "set", "truncate", "append", "insert", "delete", "splice"])
        )
        if not data and kind != "append":
            kind = "append"
        if kind == "flip":
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[draw(st.integers(0, len(data) - 1))] = draw(
                st.sampled_from([0x00, 0x17, 0x18, 0x1F, 0x7F, 0x80, 0x9F, 0xBF, 0xF5, 0xFF])
                | st.integers(0, 255)
            )
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=16))
        elif kind == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            i = draw(st.integers(0, len(data) - 1))
            del data[i : i + draw(st.integers(1, 4))]
        else:
            i = draw(st.integers(0, len(data) - 1))
            j = draw(st.integers(i, min(len(data), i + 64)))
            k = draw(st.integers(0, len(data)))
            data[k:k] = data[i:j]
    return bytes(data)


# ================================================================ 1. gossip codec

STREAM_MAX = 1 << 24

_print = st.characters(categories=("L", "N", "P", "S"), include_characters=" ").filter(
    str.isprintable
)
# Names and hosts from small pools (so that messages meet each other in the core), with an
# occasional odd one.
NAMES = ["n0", "n1", "n2", "n3", "n4"]
HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "::1"]
names = st.sampled_from(NAMES) | st.text(_print, min_size=1, max_size=8)
hosts = st.sampled_from(HOSTS) | st.text(_print, min_size=1, max_size=12)
ports = st.sampled_from([7000, 7001, 7002]) | st.integers(0, 65535)
addrs = st.tuples(hosts, ports)
# Incarnations and sequence numbers at the edges of their range, and small ones.
u63 = st.sampled_from([0, 1, 2, 3, 2**31, 2**63 - 2, 2**63 - 1]) | st.integers(0, 2**63 - 1)
dcs = st.sampled_from(["dc1", "dc2"]) | st.text(_print, min_size=1, max_size=8)
roles = st.lists(st.text(_print, min_size=1, max_size=8), max_size=3).map(tuple)
tags = st.dictionaries(
    st.text(_print, min_size=1, max_size=8), st.text(_print, max_size=8), max_size=3
)
weights = st.sampled_from([0.0, 1.0, 1e6]) | st.floats(0.0, 1e6, allow_nan=False)
healths = st.sampled_from([0, 1, 8, 1000]) | st.integers(0, 1000)
protocols = st.sampled_from([1, 2, 2**16]) | st.integers(1, 2**16)


def gossip_strategies() -> tuple[st.SearchStrategy[Message], st.SearchStrategy[StreamMessage]]:
    """Every packet message and every stream message, well formed, with values at the edges
    of the wire ranges."""
    summaries = st.builds(
        Summary, names, u63, st.binary(max_size=64), healths, st.integers(0, 2**31)
    )
    messages = st.one_of(
        st.builds(Ping, u63, names, names, addrs, dcs),
        st.builds(PingReq, u63, names, addrs, names, addrs, st.booleans()),
        st.builds(Ack, u63, names),
        st.builds(Nack, u63, names),
        st.builds(Alive, names, u63, addrs, dcs, roles, weights, tags, protocols, healths),
        st.builds(Suspect, names, u63, names),
        st.builds(Dead, names, u63, names),
        summaries,
    )
    member_states = st.builds(
        MemberState,
        names,
        addrs,
        dcs,
        roles,
        weights,
        tags,
        u63,
        st.sampled_from(State),
        protocols,
    )
    push_pulls = st.builds(
        PushPull,
        st.booleans(),
        st.lists(member_states, max_size=6).map(tuple),
        st.lists(summaries, max_size=4).map(tuple),
        st.booleans(),
    )
    stream_messages = st.one_of(
        push_pulls,
        st.builds(Query, st.sampled_from(["members", "status"]) | st.text(_print, max_size=8)),
        st.builds(QueryReply, st.text(_print, min_size=1, max_size=8), json_data),
        st.builds(StreamError, st.text(_print, max_size=20)),
        st.builds(
            KeyOp,
            st.sampled_from(["install", "use", "remove"]),
            st.binary(min_size=32, max_size=32) | st.binary(max_size=64),
        ),
        st.builds(KeyOpReply, st.booleans(), st.text(_print, max_size=20)),
    )
    return messages, stream_messages


_json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=8)
)
json_data = st.recursive(
    _json_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
messages, stream_messages = gossip_strategies()


def packet_of(sender: str, msgs: list[Message]) -> bytes:
    return encode_packet(sender, [encode_message(m) for m in msgs])


valid_packets = st.builds(packet_of, names, st.lists(messages, min_size=1, max_size=5))
valid_streams = stream_messages.map(encode_stream)

# Well-formed CBOR of any shape: what a confused or hostile peer can send without breaking
# the CBOR layer itself.
cbor_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, 23, 24, 255, 256, 65535, 65536, 2**32, 2**63 - 1, 2**63, 2**64 - 1]),
    st.integers(-(2**64), 2**64 - 1),
    st.integers(),  # beyond 64 bits cbor2 writes a bignum tag, which must be refused
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(["", "\x00", "\n", "\u200b", "\ud7ff", "a" * 200]),
    st.binary(max_size=10),
)
cbor_values = st.recursive(
    cbor_leaves,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.text(max_size=5) | st.integers(0, 5), inner, max_size=4)
    ),
    max_leaves=24,
)


@st.composite
def cbor_items(draw: st.DrawFn, depth: int = 0) -> bytes:
    """Raw CBOR built head by head: every major type with every kind of argument (immediate,
    1/2/4/8 bytes, reserved 28-30, indefinite 31), tags, breaks, and lengths that lie."""
    major = draw(st.integers(0, 7))
    info = draw(st.sampled_from([0, 1, 2, 3, 5, 23, 24, 25, 26, 27, 28, 31]) | st.integers(0, 31))
    head = bytes([(major << 5) | info])
    if 24 <= info <= 27:
        width = 1 << (info - 24)
        arg = draw(st.integers(0, min(2 ** (8 * width) - 1, 8 if major in (2, 3, 4, 5) else 2**64)))
        if major in (4, 5, 6) and depth >= 4:
            arg = min(arg, 1)
        head += arg.to_bytes(width, "big")
    else:
        arg = info if info < 24 else 0
    if major in (2, 3):  # byte and text strings: the content, maybe short or not UTF-8
        body = draw(st.binary(max_size=arg + 1))
    elif major in (4, 5, 6) and depth < 4:  # arrays, maps (2 items an entry), tags
        count = {4: arg, 5: 2 * arg, 6: 1}[major]
        body = b"".join(draw(cbor_items(depth + 1)) for _ in range(min(count, 6)))
        if info == 31:
            body += draw(st.sampled_from([b"\xff", b""]))
    else:
        body = b""
    return head + body


@st.composite
def cbor_tree_mutation(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid encoding decoded to its CBOR tree, one node replaced, dropped or duplicated,
    and encoded again: wrong types and counts at every position of a real message."""
    tree = cbor2.loads(draw(valid))
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for i, child in enumerate(node):
                paths.append((node, i))
                walk(child)
        elif isinstance(node, dict):
            for key, child in node.items():
                paths.append((node, key))
                walk(child)

    walk(tree)
    if not paths:
        return cbor2.dumps(draw(cbor_values))
    for _ in range(draw(st.integers(1, 3))):
        parent, key = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["replace", "drop", "duplicate", "append"]))
        if isinstance(parent, list):
            if key >= len(parent):
                continue
            if kind == "replace":
                parent[key] = draw(cbor_values)
            elif kind == "drop":
                del parent[key]
            elif kind == "duplicate":
                parent.insert(key, parent[key])
            else:
                parent.append(draw(cbor_values))
        elif key in parent:
            if kind == "drop":
                del parent[key]
            else:
                parent[key] = draw(cbor_values)
    return cbor2.dumps(tree)


def check_packet(data: bytes) -> Packet | None:
    """decode_packet returns a Packet or raises DecodeError; an accepted packet re-encodes to
    bytes that decode to the same messages."""
    try:
        packet = decode_packet(data)
    except DecodeError:
        return None
    assert isinstance(packet, Packet)
    assert isinstance(packet.sender, str) and packet.sender
    again = packet_of(packet.sender, list(packet.messages))
    assert decode_packet(again).messages == packet.messages
    return packet


def check_stream(data: bytes) -> StreamMessage | None:
    """decode_stream returns a message or raises DecodeError; an accepted message re-encodes
    to bytes that decode and encode to the same bytes."""
    try:
        msg = decode_stream(data, STREAM_MAX)
    except DecodeError:
        return None
    once = encode_stream(msg)
    assert encode_stream(decode_stream(once, STREAM_MAX)) == once
    return msg


@budget(300, 1.0)
@given(data=st.binary(max_size=400))
def test_codec_arbitrary_bytes(data: bytes) -> None:
    check_packet(data)
    check_stream(data)


@budget(300, 0.4)
@given(data=cbor_items())
def test_codec_raw_cbor_heads(data: bytes) -> None:
    check_packet(data)
    check_stream(data)
    check_packet(b"\x83\x01\x62n1" + data)  # as the message list of a packet
    check_packet(b"\x83\x01\x62n1\x81" + data)  # as one message


@budget(300, 0.5)
@given(value=cbor_values, where=st.integers(0, 8))
def test_codec_any_cbor_shape(value: Any, where: int) -> None:
    """Well-formed CBOR of the wrong shape, alone and at each position of real messages."""
    framed = [
        value,
        [1, "n1", value],
        [1, "n1", [value]],
        [value, "n1", []],
        [1, "n1", [[ALIVE, "n1", 1, ["h", 1], "dc", [], 1.0, {}, 1, value]]],
        [1, "n1", [[ALIVE, "n1", 1, value, "dc", [], 1.0, {}, 1]]],
        [PUSH_PULL, True, [value], []],
        [PUSH_PULL, True, [["n1", ["h", 1], "dc", [], 1.0, {}, 1, value, 1]], [value]],
        [QUERY_REPLY, "members", value],
    ]
    data = cbor2.dumps(framed[where])
    check_packet(data)
    check_stream(data)


@budget(300, 0.35)
@given(data=cbor_tree_mutation(valid_packets) | cbor_tree_mutation(valid_streams))
def test_codec_mutated_trees(data: bytes) -> None:
    check_packet(data)
    check_stream(data)


@budget(300, 0.5)
@given(data=mutated_bytes(valid_packets) | mutated_bytes(valid_streams))
def test_codec_mutated_bytes(data: bytes) -> None:
    check_packet(data)
    check_stream(data)


# ================================================================ 2. gossip core

ME = "n0"
MY_ADDR = ("10.0.0.1", 7000)
LOCAL = profile("local")
WALL = 1_800_000_000.0


def new_nonce_bytes(n: int) -> bytes:
    return new_nonce()[:n]


class Clock:
    """Virtual time for a core; its wall clock is WALL later (the core's `wall_offset`)."""

    def __init__(self) -> None:
        self.now = 0.0

    def wall(self) -> float:
        return WALL + self.now


def new_core(
    label: str = "",
    keyring: Keyring | None = None,
    nonce_source: Callable[[int], bytes] = new_nonce_bytes,
) -> Membership:
    return Membership(
        name=ME,
        addr=MY_ADDR,
        config=LOCAL,
        rng=random.Random(1),
        now=0.0,
        label=label,
        keyring=keyring,
        wall_offset=WALL,
        nonce_source=nonce_source,
    )


def overflowed(core: Membership) -> bool:
    """Our own incarnation went past the wire's 2**63 - 1: a known bug (see
    `test_regression_refuting_a_maximal_incarnation_stays_on_the_wire`); until it is fixed
    the core targets let it through so they can look for other bugs."""
    return core.local.incarnation > 2**63 - 1  # fixed: never true any more


def readable_stream(core: Membership, data: bytes, what: str) -> None:
    try:
        decode_stream(open_own(core, data), STREAM_MAX)
    except DecodeError as e:
        if not overflowed(core):
            raise AssertionError(f"the core sent {what} it cannot read: {e}") from None


def drain(core: Membership, now: float) -> tuple[list[tuple[bytes, Addr]], list[StreamRequest]]:
    """Everything the core wants to send, checked: each datagram opens and decodes (what we
    send is valid gossip) and so does every stream request's payload. Events are dropped."""
    out = core.datagrams_to_send(now)
    for data, addr in out:
        assert len(data) <= MAX_DATAGRAM
        assert isinstance(addr, tuple) and len(addr) == 2
        try:
            packet = decode_packet(open_own(core, data))
        except DecodeError as e:
            if not overflowed(core):
                raise AssertionError(f"the core sent a datagram it cannot read: {e}") from None
            continue
        assert packet.sender == ME
    streams = core.streams_to_open(now)
    for req in streams:
        readable_stream(core, req.payload, "a stream frame")
    while core.next_event() is not None:
        pass
    return out, streams


def open_own(core: Membership, data: bytes) -> bytes:
    if core.keyring is None:
        return unwrap_plain(core.label, data)
    # Open with a copy of the keys and no replay state (the core's keyring would refuse its
    # own fresh nonces only if it saw them again, which it does not).
    twin = Keyring(core.keyring.keys, replay_window=math.inf)
    return twin.open(data, core.label, WALL + 1e9)


def check_core(core: Membership, now: float) -> None:
    me = core.member(ME)
    assert me is not None and me.state == State.ALIVE, me
    members = core.members()
    live = sum(1 for m in members if m.state.is_live)
    assert core.num_live() == live
    assert 1 <= core.num_live() <= len(members)
    timer = core.get_timer()
    assert timer is not None and not math.isnan(timer)
    json.dumps(core.status(now), allow_nan=False)
    json.dumps(core.members_json(), allow_nan=False)


# One step of a run against the core.
@dataclass(frozen=True)
class Step:
    # "datagram", "stream" (a request frame to `handle_stream`), "respond" (`data` as the
    # reply to our oldest open stream; empty: the connection failed), "timer", "answer" (ack
    # our pings), "reflect" (our datagrams back to us) or "join" (through `addr`).
    kind: str
    data: bytes = b""
    addr: Addr = ("10.0.0.2", 7000)
    dt: float = 0.0


_peer_addrs = st.sampled_from([("10.0.0.2", 7000), ("10.0.0.3", 7001), MY_ADDR]) | addrs
# Plaintext payloads: mostly well-formed hostile messages, some garbage.
_payloads = st.one_of(
    st.builds(packet_of, names, st.lists(messages, min_size=1, max_size=4)),
    st.builds(packet_of, names, st.lists(messages, min_size=1, max_size=4)),
    mutated_bytes(valid_packets, most=2),
    cbor_tree_mutation(valid_packets),
    st.binary(max_size=60),
)
_stream_payloads = st.one_of(
    valid_streams,
    valid_streams,
    mutated_bytes(valid_streams, most=2),
    cbor_tree_mutation(valid_streams),
    st.binary(max_size=60),
)


def insecure_steps(label: str) -> st.SearchStrategy[Step]:
    def wrap(data: bytes) -> bytes:
        return wrap_plain(label, data)

    return st.one_of(
        st.builds(Step, st.just("datagram"), _payloads.map(wrap), _peer_addrs),
        st.builds(Step, st.just("datagram"), _payloads.map(wrap), _peer_addrs),
        st.builds(Step, st.just("datagram"), st.binary(max_size=40), _peer_addrs),
        st.builds(Step, st.just("stream"), _stream_payloads.map(wrap), _peer_addrs),
        st.builds(Step, st.just("respond"), _stream_payloads.map(wrap) | st.just(b"")),
        st.builds(
            Step,
            st.just("timer"),
            dt=st.sampled_from([0.0, 0.01, 0.05, 0.2, 1.0, 5.0, 60.0])
            | st.floats(0.0, 100.0, allow_nan=False),
        ),
        st.builds(Step, st.just("answer"), dt=st.floats(0.0, 0.1)),
        st.builds(Step, st.just("reflect")),
        st.builds(Step, st.just("join"), addr=_peer_addrs),
    )


def run_steps(
    core: Membership, clock: Clock, steps: list[Step], seal: Callable[[bytes], bytes]
) -> None:
    check_core(core, clock.now)
    pending: list[StreamRequest] = []
    for step in steps:
        now = clock.now
        if step.kind == "datagram":
            core.receive_datagram(step.data, step.addr, now)
        elif step.kind == "stream":
            reply = core.handle_stream(step.data, step.addr, now)
            if reply is not None:
                readable_stream(core, reply, "a stream reply")
        elif step.kind == "respond":
            if pending:
                core.stream_response(pending.pop(0).id, step.data or None, now)
        elif step.kind == "timer":
            clock.now += step.dt
            core.handle_timer(clock.now)
        elif step.kind == "answer":
            # Play every other member: ack our pings, nack our ping-reqs.
            clock.now += step.dt
            sent, streams = drain(core, clock.now)
            pending.extend(streams)
            for data, addr in sent:
                try:
                    packet = decode_packet(open_own(core, data))
                except DecodeError:
                    continue  # overflowed (see `overflowed`)
                replies: list[Message] = []
                for m in packet.messages:
                    if isinstance(m, Ping):
                        replies.append(Ack(m.seq, m.target))
                    elif isinstance(m, PingReq):
                        replies.append(Nack(m.seq, m.target))
                if replies:
                    core.receive_datagram(seal(packet_of("n1", replies)), addr, clock.now)
        elif step.kind == "reflect":
            # Our own traffic, sent back to us from elsewhere.
            for data, _addr in core.datagrams_to_send(clock.now):
                core.receive_datagram(data, ("10.0.0.9", 7009), clock.now)
        elif step.kind == "join":
            core.join([step.addr], now)
        pending.extend(drain(core, clock.now)[1])
        check_core(core, clock.now)
    # Every open stream gets a valid (empty) reply, then time moves on.
    for req in pending:
        reply = encode_stream(PushPull(False, (), (), reply=True))
        core.stream_response(req.id, seal(reply), clock.now)
    clock.now += 30.0
    core.handle_timer(clock.now)
    drain(core, clock.now)
    check_core(core, clock.now)


@budget(150, 0.35)
@given(steps=st.lists(insecure_steps(""), min_size=1, max_size=12))
def test_core_insecure_survives_hostile_input(steps: list[Step]) -> None:
    core = new_core()
    run_steps(core, Clock(), steps, lambda data: wrap_plain("", data))


@budget(100, 0.1)
@given(steps=st.lists(insecure_steps("c1"), min_size=1, max_size=8))
def test_core_with_label_survives_hostile_input(steps: list[Step]) -> None:
    core = new_core(label="c1")
    run_steps(core, Clock(), steps, lambda data: wrap_plain("c1", data))


KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


@budget(150, 0.15)
@given(
    inputs=st.lists(
        st.tuples(
            st.sampled_from(["raw", "sealed", "stream"]),
            st.binary(max_size=80)
            | st.binary(max_size=80).map(lambda b: b"\x02" + b)
            | _payloads
            | _stream_payloads,
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_core_sealed_survives_hostile_input(inputs: list[tuple[str, bytes, bool]]) -> None:
    """A sealed core: arbitrary envelopes are refused; sealed garbage (from a key holder) is
    refused by the codec; sealed valid messages, key ops included, are handled."""
    clock = Clock()
    nonces = itertools.count()

    def nonce(n: int) -> bytes:
        return next(nonces).to_bytes(n, "big")

    core = new_core(keyring=Keyring([KEY]), nonce_source=nonce)
    sender_nonces = itertools.count(1 << 64)
    sender = Keyring([KEY, OTHER_KEY])

    def sealed(data: bytes) -> bytes:
        return sender.seal(data, "", clock.wall(), next(sender_nonces).to_bytes(12, "big"))

    check_core(core, clock.now)
    for kind, data, advance in inputs:
        if kind == "raw":
            core.receive_datagram(data, ("10.0.0.2", 7000), clock.now)
        elif kind == "sealed":
            core.receive_datagram(sealed(data), ("10.0.0.2", 7000), clock.now)
        else:
            reply = core.handle_stream(sealed(data), ("10.0.0.2", 7000), clock.now)
            if reply is not None:
                readable_stream(core, reply, "a stream reply")
        if advance:
            clock.now += 0.5
            core.handle_timer(clock.now)
        drain(core, clock.now)
        check_core(core, clock.now)


# ================================================================ 3. SIP parser and proxy

# Known bugs the SIP targets found (each has a regression test at the end of this file). Until
# one is fixed its flag stays True: the targets then skip an input that runs into it (and avoid
# building the commonest ones) so that a long fuzz goes on looking for other bugs. Set a flag
# to False once its regression test passes.
#
# `test_regression_name_addr_pattern_backtracks_exponentially`: a From, To, Contact or Route
# value with a long run of token characters and spaces that is not a valid name-addr makes
# `_grammar._NAME_ADDR_RE` backtrack exponentially.
KNOWN_REDOS = False  # fixed; the regression test below keeps it so
# `test_regression_unparsed_request_without_a_via_value`: a request answered from its raw
# headers (`Proxy._answer_unparsed`) whose first Via line is empty, or that has no Via line,
# raises IndexError out of `Proxy.handle`.
KNOWN_UNPARSED_WITHOUT_VIA = False  # fixed; the regression test below keeps it so

# `test_regression_folded_blank_call_id_is_refused`: a header folded onto a blank
# continuation line ("Call-ID: \r\n \r\n") reads as " ": parse_message accepts a Call-ID of
# one space, the proxy answers and forwards with it, and nobody can read that message back.
KNOWN_BLANK_FOLDED_VALUE = False  # fixed; the regression test below keeps it so

_ADDRESS_HEADERS = {"from", "f", "to", "t", "contact", "m", "route", "record-route"}
_LONG_TOKEN_RUN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~\s]{16,}")


def _raised_in(exc: BaseException, function: str, filename: str) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == function and code.co_filename.endswith(filename):
            return True
        tb = tb.tb_next
    return False


def _in_known_redos(exc: BaseException) -> bool:
    return _raised_in(exc, "parse_name_addr", "_grammar.py")


def _blank_folded(message: Request | Response) -> bool:
    return any(value and not value.strip() for _, value in message.headers)


def _defuse(name: str, value: str) -> str:
    if not KNOWN_REDOS or name.strip().lower() not in _ADDRESS_HEADERS:
        return value
    return _LONG_TOKEN_RUN.sub(lambda m: m.group(0)[:15], value)


DOMAIN = "example.com"
NOW = 1_000_000.0
PEERS = {
    name: Peer(name, "127.0.0.1", port) for name, port in (("n1", 5071), ("n2", 5072), ("n3", 5073))
}
PHONE = ("127.0.0.1", 5080)


def owners(aor: str, n: int) -> list[Peer]:
    # Fixed but varied: some AORs we own, some we forward to a peer.
    order = ["n1", "n2", "n3"] if len(aor) % 2 else ["n2", "n3", "n1"]
    return [PEERS[x] for x in order][:n]


class _AnyBranchProxy(Proxy):
    """A proxy that takes every branch of our form as its own: these targets fuzz the relay
    and parsing paths with made-up branches; the branch MAC has its own tests
    (test_sip_hostile, test_sip_proxy)."""

    def _branch_ok(self, branch: str, upstream: object) -> bool:
        return True


def new_proxy() -> Proxy:
    proxy = _AnyBranchProxy(
        ProxySettings("n1", "127.0.0.1", 5071, frozenset({DOMAIN})),
        owners=owners,
        peers=lambda: PEERS,
    )
    # Bob (and carol, whom n2 and n3 own) registered, so requests to them are forwarded.
    for user in ("bob", "bob2"):
        reg = sip(
            "REGISTER",
            f"sip:{DOMAIN}",
            [("Contact", f"<sip:{user}@127.0.0.1:5080>")],
            to=f"<sip:{user}@{DOMAIN}>",
            call_id=f"reg-{user}",
        )
        proxy.handle(reg, Source("udp", *PHONE), NOW)
    return proxy


def sip(
    method: str,
    uri: str,
    extra: Sequence[tuple[str, str]] = (),
    *,
    via: str = "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-a1;rport",
    to: str = "<sip:bob@example.com>",
    call_id: str = "call-1",
    cseq: int = 1,
    body: bytes = b"",
) -> bytes:
    headers = [
        ("Via", via),
        ("Max-Forwards", "70"),
        ("From", "Alice <sip:alice@example.com>;tag=a"),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
        *extra,
    ]
    return build_sip(f"{method} {uri} SIP/2.0", headers, body)


def build_sip(start: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [start, *(f"{k}: {v}" for k, v in headers), f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


OUR_VIA = f"SIP/2.0/UDP 127.0.0.1:5071;branch={BRANCH_PREFIX}0123456789abcdef.01234567"
PEER_VIA = f"SIP/2.0/UDP 127.0.0.1:5072;branch={BRANCH_PREFIX}fedcba9876543210.76543210"
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"

# (message, where it comes from): every kind of message a node sees, well formed.
TEMPLATES: list[tuple[bytes, tuple[str, int]]] = [
    (sip("REGISTER", f"sip:{DOMAIN}", [("Contact", "<sip:bob@127.0.0.1:5080>;expires=60")]), PHONE),
    (
        sip(
            "REGISTER",
            f"sip:{DOMAIN}",
            [("Contact", "*"), ("Expires", "0")],
            to="<sip:carol@example.com>",
        ),
        PHONE,
    ),
    (
        sip(
            "REGISTER",
            f"sip:{DOMAIN}",
            [("Contact", '"Bob" <sip:bob@[::1]:5080;transport=tcp>;q=0.5, <sip:b@h>')],
        ),
        PHONE,
    ),
    (
        sip(
            "INVITE",
            "sip:bob@example.com",
            [("Contact", "<sip:alice@127.0.0.1:5081>"), ("Content-Type", "application/sdp")],
            body=SDP,
        ),
        ("127.0.0.1", 5081),
    ),
    (sip("INVITE", "sip:carol2@example.com"), ("127.0.0.1", 5081)),
    (
        sip(
            "BYE",
            "sip:bob@127.0.0.1:5080",
            [("Route", "<sip:127.0.0.1:5071;lr>")],
            to="<sip:bob@example.com>;tag=b",
        ),
        ("127.0.0.1", 5081),
    ),
    (
        sip(
            "ACK",
            "sip:127.0.0.1:5071",
            [("Route", "<sip:127.0.0.1:5072;lr>, <sip:bob@127.0.0.1:5080>")],
            to="<sip:bob@example.com>;tag=b",
        ),
        ("127.0.0.1", 5081),
    ),
    (sip("OPTIONS", f"sip:{DOMAIN}", [("Accept", "application/sdp")]), PHONE),
    (sip("OPTIONS", "sip:127.0.0.1:5071", [("Max-Forwards", "0")]), PHONE),
    (sip("CANCEL", "sip:bob@example.com"), ("127.0.0.1", 5081)),
    (sip("MESSAGE", "sip:bob@elsewhere.org", body=b"hi"), ("127.0.0.1", 5081)),
    (
        sip("INVITE", "sip:bob@example.com", via=f"{PEER_VIA}, SIP/2.0/UDP 127.0.0.1:5081"),
        ("127.0.0.1", 5072),
    ),
    (
        sip("SUBSCRIBE", "sip:bob@example.com", [("Require", "foo"), ("Proxy-Require", "bar")]),
        PHONE,
    ),
    (
        build_sip(
            "SIP/2.0 200 OK",
            [
                ("Via", OUR_VIA),
                ("Via", "SIP/2.0/UDP 127.0.0.1:5081;branch=z9hG4bK-a1;rport=5081"),
                ("From", "<sip:alice@example.com>;tag=a"),
                ("To", "<sip:bob@example.com>;tag=b"),
                ("Call-ID", "call-1"),
                ("CSeq", "1 INVITE"),
                ("Contact", "<sip:bob@127.0.0.1:5080>"),
            ],
            SDP,
        ),
        PHONE,
    ),
    (
        build_sip(
            "SIP/2.0 180 Ringing",
            [
                ("Via", f"{OUR_VIA}, SIP/2.0/TCP [::1]:5081;branch=z9hG4bK-a1;received=::1"),
                ("f", "<sip:alice@example.com>;tag=a"),
                ("t", "<sip:bob@example.com>;tag=b"),
                ("i", "call-1"),
                ("CSeq", "1 INVITE"),
            ],
        ),
        PHONE,
    ),
    (
        build_sip(
            "SIP/2.0 486 Busy Here",
            [
                ("Via", PEER_VIA),
                ("Via", "SIP/2.0/UDP 127.0.0.1:5081;branch=z9hG4bK-a1"),
                ("From", "<sip:alice@example.com>;tag=a"),
                ("To", "<sip:bob@example.com>;tag=b"),
                ("Call-ID", "call-1"),
                ("CSeq", "1 INVITE"),
            ],
        ),
        PHONE,
    ),
]

HEADER_NAMES = [
    "Via", "v", "VIA", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Contact", "m",
    "Content-Length", "l", "Content-Type", "c", "Max-Forwards", "Route", "Record-Route",
    "Expires", "Require", "Proxy-Require", "Supported", "k", "Allow", "X-Custom",
]  # fmt: skip
FRAGMENTS = [
    "sip:", "sips:", "tel:", "http:", "bob", "alice", "@", "example.com", "EXAMPLE.COM.",
    "127.0.0.1", "[::1]", "::1", "[", "]", ":", "5071", "5072", "5080", "0", "65536",
    "99999999999", "<", ">", ";", ",", "=", '"', "\\", " ", "\t", "\r\n", "\r\n ", "\r", "\n",
    "lr", "rport", "received=", "branch=", "z9hG4bK", BRANCH_PREFIX, "tag=", "expires=", "q=",
    "transport=tcp", "maddr=", "SIP/2.0/UDP ", "SIP/2.0/TCP ", "SIP/2.0", "*", "%", "%2", "%41",
    "%00", "?", "&", "é", "\u00a0", "\u2028", "\x00", "\x7f", "\ufeff", "😀", "1", "-1", "1.5",
    "INVITE", "REGISTER", "ACK",
]  # fmt: skip
header_values = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join),
    st.text(max_size=40),
    st.sampled_from(FRAGMENTS).map(lambda f: f * 300),
    st.integers(0, 8192).map(lambda n: "a" * n),
)
header_names = st.sampled_from(HEADER_NAMES) | st.text(
    st.characters(codec="ascii"), min_size=0, max_size=10
)


@dataclass
class SipParts:
    start: str
    headers: list[tuple[str, str]]
    body: bytes

    def encode(self, content_length: str | None) -> bytes:
        lines = [self.start, *(f"{k}: {v}" for k, v in self.headers)]
        if content_length is not None:
            lines.append(f"Content-Length: {content_length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass") + self.body


def split_template(data: bytes) -> SipParts:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        if name.lower() != "content-length":
            headers.append((name, value))
    return SipParts(lines[0], headers, body)


@st.composite
def mutated_sip(
    draw: st.DrawFn, templates: list[tuple[bytes, tuple[str, int]]] = TEMPLATES
) -> tuple[bytes, tuple[str, int]]:
    """A template mutated header by header, then maybe byte by byte."""
    template, source = draw(st.sampled_from(templates))
    parts = split_template(template)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(
            st.sampled_from(
                [
                    "value", "value", "insert", "delete", "duplicate", "rename", "fold",
                    "start", "swap", "body",
                ]
            )
        )  # fmt: skip
        h = parts.headers
        if kind == "value" and h:
            i = draw(st.integers(0, len(h) - 1))
            h[i] = (h[i][0], draw(header_values))
        elif kind == "insert":
            h.insert(draw(st.integers(0, len(h))), (draw(header_names), draw(header_values)))
        elif kind == "delete" and h:
            del h[draw(st.integers(0, len(h) - 1))]
        elif kind == "duplicate" and h:
            i = draw(st.integers(0, len(h) - 1))
            h.insert(draw(st.integers(0, len(h))), h[i])
        elif kind == "rename" and h:
            i = draw(st.integers(0, len(h) - 1))
            h[i] = (draw(header_names), h[i][1])
        elif kind == "fold" and h:
            i = draw(st.integers(0, len(h) - 1))
            name, value = h[i]
            cut = draw(st.integers(0, len(value)))
            h[i] = (
                name,
                value[:cut] + draw(st.sampled_from(["\r\n ", "\r\n\t", "\r\n  "])) + value[cut:],
            )
        elif kind == "start":
            bits = parts.start.split(" ", 2)
            i = draw(st.integers(0, len(bits) - 1))
            bits[i] = draw(
                st.sampled_from(
                    ["SIP/2.0", "SIP/3.0", "sip/2.0", "200", "099", "700", "", "INVITE"]
                )
                | header_values
            )
            parts.start = " ".join(bits)
        elif kind == "swap" and len(h) > 1:
            i, j = draw(st.integers(0, len(h) - 1)), draw(st.integers(0, len(h) - 1))
            h[i], h[j] = h[j], h[i]
        elif kind == "body":
            parts.body = draw(st.binary(max_size=40) | st.just(parts.body * 2))
    content_length = draw(
        st.sampled_from([str(len(parts.body))] * 4 + [None, "0", "-1", "1000", " 5", "1e3", "٣"])
    )
    parts.headers = [(k, _defuse(k, v)) for k, v in parts.headers]
    data = parts.encode(content_length)
    if draw(st.integers(0, 3)) == 0:
        data = draw(mutated_bytes(st.just(data), most=3))
    return data, source


sources = st.one_of(
    st.sampled_from([PHONE, ("127.0.0.1", 5081), ("127.0.0.1", 5072), ("10.1.1.1", 5060)]),
    st.tuples(st.sampled_from(["127.0.0.1", "::1", "10.1.1.1"]), st.integers(1, 65535)),
)


def check_parse(data: bytes, datagram: bool) -> Request | Response | None:
    """parse_message returns a message or raises SipParseError; an accepted message
    serializes to bytes that read back as the same message (headers up to the whitespace
    around values, and the Content-Length it writes), and serializing is stable from then
    on."""
    try:
        with time_limit("parse_message"):
            message = parse_message(data, datagram=datagram)
    except SipParseError as e:
        assert isinstance(e.reason, str) and e.reason
        return None
    assert isinstance(message, Request | Response)
    out = message.to_bytes()
    try:
        again = parse_message(out, datagram=datagram)
    except SipParseError:
        if KNOWN_BLANK_FOLDED_VALUE and _blank_folded(message):
            reject()
        raise
    assert again.start_line() == message.start_line()
    assert again.body == message.body

    def content(m: Request | Response) -> list[tuple[str, str]]:
        return [(k, v.strip()) for k, v in m.headers if k != "content-length"]

    assert content(again) == content(message)
    assert parse_message(again.to_bytes(), datagram=datagram).to_bytes() == again.to_bytes()
    return message


def only_sends(actions: list[Action]) -> list[Send]:
    """`actions`, each of them a Send (what relaying a response gives)."""
    sends = []
    for action in actions:
        assert isinstance(action, Send), action
        sends.append(action)
    return sends


def check_handle(proxy: Proxy, data: bytes, source: Source) -> list[Action]:
    """Proxy.handle never raises; when it could read the message, what it sends can be read
    too."""
    message: Request | Response | None = None
    try:
        with time_limit("parse_message"):
            message = parse_message(data, datagram=source.transport == "udp")
    except SipParseError:
        pass
    try:
        with time_limit("Proxy.handle"):
            actions = proxy.handle(data, source, NOW)
    except IndexError as e:
        if KNOWN_UNPARSED_WITHOUT_VIA and _raised_in(e, "_answer_unparsed", "_proxy.py"):
            reject()
        raise
    assert isinstance(actions, list)
    for action in actions:
        send = action.response if isinstance(action, Replicate) else action
        assert isinstance(send, Send)
        assert send.transport in ("udp", "tcp")
        assert isinstance(send.port, int) and 0 <= send.port < 65536, send
        if message is not None:
            try:
                parse_message(send.data, datagram=send.transport == "udp")
            except SipParseError as e:
                if KNOWN_BLANK_FOLDED_VALUE and _blank_folded(message):
                    reject()
                raise AssertionError(
                    f"sent a message it cannot read ({e.reason}) for input {data!r}:\n{send.data!r}"
                ) from None
    return actions


@budget(300, 1.0)
@given(data=st.binary(max_size=300), datagram=st.booleans())
def test_sip_parse_arbitrary_bytes(data: bytes, datagram: bool) -> None:
    check_parse(data, datagram)
    check_parse(b"INVITE sip:a@b SIP/2.0\r\n" + data, datagram)


@budget(300, 0.75)
@given(case=mutated_sip(), datagram=st.booleans())
def test_sip_parse_mutated_messages(case: tuple[bytes, tuple[str, int]], datagram: bool) -> None:
    check_parse(case[0], datagram)


@budget(200, 0.5)
@given(data=st.binary(max_size=300), source=sources, tcp=st.booleans())
def test_sip_proxy_arbitrary_bytes(data: bytes, source: tuple[str, int], tcp: bool) -> None:
    proxy = new_proxy()
    check_handle(proxy, data, Source("tcp" if tcp else "udp", *source, conn=1 if tcp else None))
    check_handle(proxy, b"SIP/2.0 200 OK\r\n" + data, Source("udp", *source))


@budget(300, 0.75)
@given(
    cases=st.lists(st.tuples(mutated_sip(), st.booleans(), st.booleans()), min_size=1, max_size=4)
)
def test_sip_proxy_mutated_messages(
    cases: list[tuple[tuple[bytes, tuple[str, int]], bool, bool]],
) -> None:
    """Several mutated messages through one proxy (so retransmissions, registrations and
    dialogs meet), each from its template's source or from a cluster peer, over UDP or TCP."""
    proxy = new_proxy()
    for (data, source), tcp, resend in cases:
        src = Source("tcp", *source, conn=7) if tcp else Source("udp", *source)
        check_handle(proxy, data, src)
        if resend:
            check_handle(proxy, data, src)  # a retransmission


RESPONSES = [t for t in TEMPLATES if t[0].startswith(b"SIP/2.0 ")]
# Known bug (`test_regression_fast_relay_reads_a_folded_via_differently`): the fast path for
# responses reads the Via lines without unfolding them, so a folded next-hop Via sends the
# response elsewhere than the full path would. Until it is fixed, the differential target
# skips responses with folded lines.
KNOWN_FAST_RELAY_FOLDING = False  # fixed; the regression test below keeps it so
_FOLDED_LINE = re.compile(rb"\r\n[ \t]")


@budget(300, 0.5)
@given(case=mutated_sip(RESPONSES))
def test_sip_fast_relay_agrees_with_the_parser(case: tuple[bytes, tuple[str, int]]) -> None:
    """Differential: for a response the parser reads, the fast path (our Via cut out, the
    rest relayed byte for byte) and the full path send the same message to the same place.
    (For responses it cannot read, the fast path still relays what it can route: by design,
    it checks only the start line and the Via lines.)"""
    data, _ = case
    if not data.startswith(b"SIP/2.0 "):
        return  # what `Proxy.handle` checks before it tries the fast path
    with time_limit("Proxy._relay_fast"):
        relayed = new_proxy()._relay_fast(data)
    if relayed is None:
        return
    fast = only_sends(relayed)
    try:
        with time_limit("parse_message"):
            response = parse_message(data)
    except SipParseError:
        return
    if KNOWN_FAST_RELAY_FOLDING and _FOLDED_LINE.search(data.partition(b"\r\n\r\n")[0]):
        reject()
    assert isinstance(response, Response)
    full = only_sends(new_proxy()._response(response))
    assert [(s.transport, s.host, s.port) for s in fast] == [
        (s.transport, s.host, s.port) for s in full
    ]
    for a, b in zip(fast, full, strict=True):
        ra, rb = parse_message(a.data), parse_message(b.data)
        assert ra.start_line() == rb.start_line() and ra.body == rb.body
        assert [(k, v.strip()) for k, v in ra.headers if k != "content-length"] == [
            (k, v.strip()) for k, v in rb.headers if k != "content-length"
        ]


# ================================================================ 5. control protocol

CONTROL_ECHO = "echo"


async def echo_handler(cmd: str, args: dict[str, Any]) -> Any:
    if cmd == CONTROL_ECHO:
        return {"args": args}
    from swimthor.control import ControlError

    raise ControlError(f"unknown command {cmd[:40]!r}")


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner)


_json_any = st.recursive(
    _json_leaves | st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=8),
    _json_containers,
    max_leaves=16,
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


control_payloads = st.one_of(
    st.binary(max_size=200),
    _json_any.map(_dumps),  # JSON of any shape
    st.fixed_dictionaries(
        {"cmd": st.sampled_from([CONTROL_ECHO, "members", "", "x" * 100]) | _json_any},
        optional={"args": _json_any, "extra": _json_any},
    ).map(_dumps),
    st.builds(
        lambda args: _dumps({"cmd": CONTROL_ECHO, "args": args}),
        st.dictionaries(st.text(max_size=6), _json_any, max_size=4),
    ),
    st.sampled_from(
        [
            b"",
            b"\x00",
            b'{"cmd": "echo"}\x00',
            b'{"cmd": "\xff"}',
            b'{"cmd": "echo", "args": {"a": "\\ud800"}}',
            b'{"cmd": "echo", "args": {"a": NaN, "b": Infinity, "c": 1e999}}',
            b'{"cmd": "echo", "args": {"a": 1' + b"0" * 5000 + b"}}",
            b'{"cmd": "echo", "cmd": "members"}',
            b"\xef\xbb\xbf{}",
            b"[" * 100_000,
            b"[" * 50_000 + b"]" * 50_000,
            b'{"a":' * 30_000,
            b'{"cmd": "echo", "args": {"deep": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
        ]
    ),
    st.sampled_from([MAX_REQUEST - 1, MAX_REQUEST, MAX_REQUEST + 1, 3 * MAX_REQUEST]).map(
        lambda n: b"x" * n
    ),
    # Nesting near the interpreter's recursion limit: parsed, then echoed back.
    st.integers(900, 1000).map(
        lambda n: b'{"cmd": "echo", "args": {"deep": ' + b"[" * n + b"]" * n + b"}}"
    ),
    st.sampled_from([MAX_REQUEST - 40, MAX_REQUEST + 10]).map(
        lambda n: _dumps({"cmd": CONTROL_ECHO, "args": {"pad": "p" * n}})
    ),
)
# How the client ends its request: a newline (and it then waits for the reply), a half-close
# without a newline, two requests on one line break, or hanging up without reading.
control_endings = st.sampled_from(["newline", "eof", "two-lines", "hang-up"])


def expected_reply(payload: bytes) -> dict[str, Any] | None:
    """What a correct server answers for the first line of `payload`: {"ok": True, ...} for
    a valid echo request, None when it must be an error."""
    line = payload.split(b"\n", 1)[0]
    if len(line) > MAX_REQUEST:
        return None
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("cmd") != CONTROL_ECHO:
        return None
    args = doc.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    return {"ok": True, "result": {"args": args}}


async def control_exchange(path: str, payload: bytes, ending: str) -> bytes | None:
    stream = await trio.open_unix_socket(path)
    got = bytearray()
    async with stream:
        if ending == "hang-up":
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(payload)
            return None
        data = payload
        if ending == "newline":
            data += b"\n"
        elif ending == "two-lines":
            data += b'\n{"cmd": "echo", "args": {"second": true}}\n'

        async def send() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(data)
                if ending == "eof":
                    await stream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            with contextlib.suppress(trio.BrokenResourceError):
                while chunk := await stream.receive_some(65536):
                    got += chunk
                    assert len(got) < 10 * MAX_REQUEST
            nursery.cancel_scope.cancel()
    return bytes(got)


def check_control_reply(payload: bytes, ending: str, got: bytes | None) -> None:
    if got is None:
        return
    assert got.endswith(b"\n") and got.count(b"\n") == 1, got[:200]
    reply = json.loads(got)
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    want = expected_reply(payload)
    if reply["ok"]:
        assert want is not None, (payload[:200], reply)
        assert json.dumps(reply, sort_keys=True) == json.dumps(want, sort_keys=True)
    else:
        assert isinstance(reply.get("error"), str) and reply["error"]
        if want is not None and len(payload) <= MAX_REQUEST:
            raise AssertionError(f"valid request refused: {payload[:200]!r} -> {reply}")


async def control_session(path: str, requests: list[tuple[bytes, str]]) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, path, echo_handler)
        with trio.fail_after(20):
            results: list[bytes | None] = [None] * len(requests)

            async def one(i: int, payload: bytes, ending: str) -> None:
                results[i] = await control_exchange(path, payload, ending)

            async with trio.open_nursery() as clients:
                for i, (payload, ending) in enumerate(requests):
                    clients.start_soon(one, i, payload, ending)
            for (payload, ending), got in zip(requests, results, strict=True):
                check_control_reply(payload, ending, got)
            # The server still answers a valid request.
            got = await control_exchange(path, _dumps({"cmd": "echo", "args": {"k": 1}}), "newline")
            assert got is not None and json.loads(got) == {"ok": True, "result": {"args": {"k": 1}}}
        nursery.cancel_scope.cancel()


@budget(200, 0.25)
@given(requests=st.lists(st.tuples(control_payloads, control_endings), min_size=1, max_size=5))
def test_control_protocol_survives_hostile_requests(requests: list[tuple[bytes, str]]) -> None:
    with tempfile.TemporaryDirectory(prefix="stfz-") as d:
        trio.run(control_session, os.path.join(d, "c.sock"), requests)


# ================================================================ 6. stream framing

_SIP = (
    b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n"
    b"Content-Length: 5\r\n\r\nhello"
)


@st.composite
def sip_streams(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.sampled_from([_SIP, b"\r\n\r\n", b"\r\n"]), max_size=6))
    return b"".join(parts)


@st.composite
def ws_streams(draw: st.DrawFn) -> bytes:
    client = WSConnection(ConnectionType.CLIENT)
    out = client.send(WsRequest(host="h", target="/", subprotocols=draw(
        st.sampled_from([["sip"], ["chat"], [], ["SIP", "x"]]))))  # fmt: skip
    # No server answers this client, so wsproto would not frame data for it: its frame
    # layer alone makes the client's (masked) frames.
    proto = _client_frames()
    for kind in draw(
        st.lists(st.sampled_from(["text", "bytes", "ping", "crlf", "split"]), max_size=5)
    ):
        if kind == "text":
            out += proto.send_data(_SIP.decode(), True)
        elif kind == "bytes":
            out += proto.send_data(_SIP, True)
        elif kind == "ping":
            out += proto.ping(b"hi")
        elif kind == "crlf":
            out += proto.send_data("\r\n\r\n", True)
        else:
            out += proto.send_data(_SIP[:20].decode(), False) + proto.send_data(
                _SIP[20:].decode(), True
            )
    return out  # fmt: skip


def _client_frames() -> Any:
    from wsproto.frame_protocol import FrameProtocol

    return FrameProtocol(client=True, extensions=[])


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def feed_stream(data: bytes, cuts: list[int]) -> list[bytes] | None:
    """What a StreamFramer hands out for `data` cut at `cuts`; None once it refused it."""
    framer = StreamFramer()
    got: list[bytes] = []
    for chunk in _chunks(data, cuts):
        try:
            messages, reply = framer.feed(chunk)
        except BadStream:
            return None
        assert reply in (b"", b"\r\n")
        for m in messages:
            assert len(m) <= MAX_MESSAGE_SIZE
        got += messages
    return got


def feed_ws(data: bytes, cuts: list[int]) -> list[bytes]:
    framer = WsFramer()
    got: list[bytes] = []
    for chunk in _chunks(data, cuts):
        if framer.closed:
            break
        messages, reply = framer.feed(chunk)
        assert isinstance(reply, bytes)
        if messages:
            assert framer.open, "a message before the upgrade"
        for m in messages:
            assert len(m) <= MAX_MESSAGE_SIZE
        got += messages
    return got


cut_lists = st.lists(st.integers(0, 4000), max_size=6)


@budget(300, 0.2)
@given(data=st.binary(max_size=600) | mutated_bytes(sip_streams()), cuts=cut_lists)
def test_stream_framer_takes_any_bytes(data: bytes, cuts: list[int]) -> None:
    with time_limit("StreamFramer.feed"):
        feed_stream(data, cuts)


@budget(200, 0.1)
@given(data=sip_streams(), cuts=cut_lists)
def test_stream_framing_does_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    assert feed_stream(data, cuts) == feed_stream(data, [])


@budget(300, 0.2)
@given(data=st.binary(max_size=600) | mutated_bytes(ws_streams()), cuts=cut_lists)
def test_websocket_framer_takes_any_bytes(data: bytes, cuts: list[int]) -> None:
    with time_limit("WsFramer.feed"):
        feed_ws(data, cuts)


@budget(200, 0.1)
@given(data=ws_streams(), cuts=cut_lists)
def test_websocket_framing_does_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    assert feed_ws(data, cuts) == feed_ws(data, [])


# ================================================================ regressions

# What the fuzz targets found (exceptions, hangs, and messages we send that cannot be read
# back), each as a small input that shows it. Each was marked xfail(strict=True) until fixed;
# all five are fixed now and these hold them so.


def test_regression_refuting_a_maximal_incarnation_stays_on_the_wire() -> None:
    """Found by test_core_insecure_survives_hostile_input. A suspicion (or death, or alive
    at another address) of us at incarnation 2**63 - 1, the largest the codec reads, makes
    `Membership._refute` raise ours to 2**63: every packet that carries our alive (all of
    them, while it is being gossiped) and every push-pull then fails to decode at every
    other member ("bad incarnation"), so one forged datagram silences a node."""
    core = new_core()
    accusation = Suspect(ME, 2**63 - 1, "n1")
    core.receive_datagram(wrap_plain("", packet_of("n1", [accusation])), ("10.0.0.2", 7000), 0.0)
    assert core.local.state == State.ALIVE
    assert core.local.incarnation <= 2**63 - 1
    sent = core.datagrams_to_send(0.0)
    assert sent
    for data, _ in sent:
        decode_packet(unwrap_plain("", data))


def test_regression_name_addr_pattern_backtracks_exponentially() -> None:
    """Found by test_sip_proxy_mutated_messages (it hung). `_grammar._NAME_ADDR_RE` is
    ``((?:TOKEN\\s*)*|"...")\\s*<`` : a run of n token characters that is not followed by a
    valid ``<uri>`` is split every possible way before the match fails, about 2**n steps
    (24 characters take 0.6 s, 40 take hours). parse_message reads From and To of every
    request, so one small datagram stops a node's SIP loop."""
    value = "a" * 40
    data = (
        "OPTIONS sip:example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-1\r\n"
        f"From: {value}\r\n"
        "To: <sip:bob@example.com>\r\n"
        "Call-ID: c1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    with (
        time_limit("parse_message", 1.0, skip_known=False),
        pytest.raises(SipParseError, match="Bad From"),
    ):
        parse_message(data)


@pytest.mark.parametrize(
    "data",
    [
        # A request of another SIP version with no Via: answered 505 from raw headers.
        b"OPTIONS sip:example.com SIP/3.0\r\n\r\n",
        # A Via folded onto its continuation line: parse_message reads it (and then refuses
        # the bad From), the raw reader behind the 400 does not unfold it.
        b"REGISTER sip:example.com SIP/2.0\r\n"
        b"Via: \r\n SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-a1;rport\r\n"
        b"From: \r\n"
        b"To: <sip:bob@example.com>\r\n"
        b"Call-ID: call-1\r\n"
        b"CSeq: 1 REGISTER\r\n"
        b"Content-Length: 0\r\n\r\n",
    ],
    ids=["505-without-via", "400-with-folded-via"],
)
def test_regression_unparsed_request_without_a_via_value(data: bytes) -> None:
    """Found by test_sip_proxy_mutated_messages. `Proxy.handle` answers a request that
    failed a respondable check from its raw header lines (`_answer_unparsed`); when those
    hold no Via value (none at all, an empty first line, or a folded one it does not join),
    `_to_via` indexes `request.vias[0]` of an empty list and IndexError escapes `handle`
    (the server logs a traceback per datagram and sends nothing)."""
    proxy = new_proxy()
    actions = proxy.handle(data, Source("udp", *PHONE), NOW)
    for action in actions:
        assert isinstance(action, Send)
        parse_message(action.data)


def test_regression_folded_blank_call_id_is_refused() -> None:
    """Found by test_sip_parse_mutated_messages. A header whose value is only a folded
    blank line reads as one space (folding joins with " " and nothing strips it), so
    parse_message accepts ``Call-ID: \\r\\n \\r\\n`` (the emptiness check sees " "); the
    proxy then stores a binding and answers 200 with ``Call-ID:  ``, which neither we nor
    the phone can read. Either refusing the request (Bad Call-ID) or reading the value as
    stripped makes this pass."""
    data = (
        b"REGISTER sip:example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-blank\r\n"
        b"From: <sip:alice@example.com>;tag=a\r\n"
        b"To: <sip:alice@example.com>\r\n"
        b"Call-ID: \r\n \r\n"
        b"CSeq: 1 REGISTER\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    try:
        message = parse_message(data)
    except SipParseError:
        return  # refused: fixed
    parse_message(message.to_bytes())  # what we accept, we can write back and read


def test_regression_fast_relay_reads_a_folded_via_differently() -> None:
    """Found by test_sip_fast_relay_agrees_with_the_parser. `Proxy._relay_fast` takes the
    next hop from the raw Via line without joining its continuation lines, so a valid
    response whose next Via is folded (here its received/rport, as a NAT'd phone's Via is
    after our stamp) is sent to the Via's sent-by (10.0.0.5:5060) instead of where the full
    path sends it (192.0.2.1:40000), and never reaches the phone."""
    data = (
        b"SIP/2.0 200 OK\r\n"
        b"Via: " + OUR_VIA.encode() + b"\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.5:5060\r\n ;received=192.0.2.1;rport=40000;branch=z9hG4bK-a1\r\n"
        b"From: <sip:alice@example.com>;tag=a\r\n"
        b"To: <sip:bob@example.com>;tag=b\r\n"
        b"Call-ID: call-1\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    response = parse_message(data)
    assert isinstance(response, Response)
    full = only_sends(new_proxy()._response(response))
    assert [(s.host, s.port) for s in full] == [("192.0.2.1", 40000)]
    sent = new_proxy().handle(data, Source("udp", *PHONE), NOW)
    assert [(s.host, s.port) for s in sent if isinstance(s, Send)] == [("192.0.2.1", 40000)]
