"""Property tests of the gossip wire codec (`swimthor.membership._messages`).

Rules for these tests:
- strategies build only values the decoder documents as valid, so a round trip must be exact;
- for any other bytes the decoders either return a value or raise `DecodeError`, nothing else;
- example counts stay moderate so the whole file runs in a few seconds.
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from swimthor.membership import (
    ACK,
    ALIVE,
    MAX_DATAGRAM,
    MAX_DEPTH,
    MAX_QUERY_DEPTH,
    PROTOCOL_VERSION,
    PUSH_PULL,
    QUERY_REPLY,
    Ack,
    Alive,
    Dead,
    DecodeError,
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
    Summary,
    Suspect,
    decode_packet,
    decode_stream,
    encode_message,
    encode_packet,
    encode_stream,
)

STREAM_MAX = 1 << 24
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- strategies

# str.isprintable(): letters, marks, numbers, punctuation, symbols and the plain space.
_printable_char = st.characters(
    categories=("L", "M", "N", "P", "S"), include_characters=" "
).filter(str.isprintable)


def printable(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(_printable_char, min_size=min_size, max_size=max_size)


names = printable(1, 128)
dcs = printable(1, 64)
hosts = printable(1, 255)
u63 = st.integers(0, 2**63 - 1)
addrs = st.tuples(hosts, st.integers(0, 65535))
roles = st.lists(printable(1, 64), max_size=16).map(tuple)
tags = st.dictionaries(printable(1, 512), printable(0, 512), max_size=64)
small_tags = st.dictionaries(printable(1, 16), printable(0, 16), max_size=4)
weights = st.floats(0.0, 1e6, allow_nan=False)
protocols = st.integers(1, 2**16)

pings = st.builds(Ping, u63, names, names, addrs, dcs)
ping_reqs = st.builds(PingReq, u63, names, addrs, names, addrs, st.booleans())
acks = st.builds(Ack, u63, names)
nacks = st.builds(Nack, u63, names)
alives = st.builds(Alive, names, u63, addrs, dcs, roles, weights, tags, protocols)
suspects = st.builds(Suspect, names, u63, names)
deads = st.builds(Dead, names, u63, names)
summaries = st.builds(
    Summary,
    names,
    u63,
    st.binary(max_size=64),
    st.integers(0, 1000),
    st.integers(0, 2**31),
)
messages: st.SearchStrategy[Message] = st.one_of(
    pings, ping_reqs, acks, nacks, alives, suspects, deads, summaries
)
# Packets stay far from the datagram limit so that `assume` rarely rejects.
small_alives = st.builds(Alive, names, u63, addrs, dcs, roles, weights, small_tags, protocols)
small_messages: st.SearchStrategy[Message] = st.one_of(
    pings, ping_reqs, acks, nacks, small_alives, suspects, deads, summaries
)
packet_messages = st.lists(small_messages, max_size=12)

member_states = st.builds(
    MemberState,
    names,
    addrs,
    dcs,
    roles,
    weights,
    small_tags,
    u63,
    st.sampled_from(State),
    protocols,
)
push_pulls = st.builds(
    PushPull,
    st.booleans(),
    st.lists(member_states, max_size=6).map(tuple),
    st.lists(summaries, max_size=6).map(tuple),
    st.booleans(),
)
queries = st.builds(Query, printable(1, 64))

_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),  # wider needs a bignum tag, which is refused
    st.floats(allow_nan=False),
    st.text(max_size=20),
)


def query_data(depth: int) -> st.SearchStrategy[Any]:
    """JSON-like data nested at most `depth` containers deep."""
    if depth == 0:
        return _leaves
    inner = query_data(depth - 1)
    return st.one_of(
        _leaves,
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=8), inner, max_size=3),
    )


query_replies = st.builds(QueryReply, printable(1, 64), query_data(MAX_QUERY_DEPTH))
stream_errors = st.builds(StreamError, printable(0, 1024))
stream_messages: st.SearchStrategy[StreamMessage] = st.one_of(
    push_pulls, queries, query_replies, stream_errors
)


def packet_of(sender: str, msgs: list[Message]) -> bytes:
    return encode_packet(sender, [encode_message(m) for m in msgs])


def decodes_or_rejects_packet(data: bytes) -> None:
    try:
        result = decode_packet(data)
    except DecodeError:
        return
    assert isinstance(result, Packet)


def decodes_or_rejects_stream(data: bytes) -> None:
    try:
        decode_stream(data, STREAM_MAX)
    except DecodeError:
        return


# ---------------------------------------------------------------- (a) round trips


@SETTINGS
@given(sender=names, msg=messages)
def test_every_message_round_trips_alone(sender: str, msg: Message) -> None:
    data = packet_of(sender, [msg])
    assume(len(data) <= MAX_DATAGRAM)
    assert decode_packet(data) == Packet(PROTOCOL_VERSION, sender, (msg,), 0)


@SETTINGS
@given(sender=names, msgs=packet_messages)
def test_packets_round_trip(sender: str, msgs: list[Message]) -> None:
    data = packet_of(sender, msgs)
    assume(len(data) <= MAX_DATAGRAM)
    assert decode_packet(data) == Packet(PROTOCOL_VERSION, sender, tuple(msgs), 0)


@SETTINGS
@given(msg=stream_messages)
def test_stream_messages_round_trip(msg: StreamMessage) -> None:
    assert decode_stream(encode_stream(msg), STREAM_MAX) == msg


def test_bounds_at_their_limits_round_trip() -> None:
    longest = "n" * 128
    alive = Alive(
        longest,
        2**63 - 1,
        ("h" * 255, 65535),
        "d" * 64,
        tuple("r" * 64 for _ in range(16)),
        1e6,
        {f"{i:03}" + "k" * 60: "v" * 100 for i in range(64)},
        2**16,
    )
    summary = Summary(longest, 2**63 - 1, b"\xff" * 64, 1000, 2**31)
    msgs: list[Message] = [alive, summary, Ack(0, "a"), Ping(0, "t", "s", ("h", 0), "d")]
    data = packet_of(longest, msgs)
    assert len(data) <= MAX_DATAGRAM
    assert decode_packet(data).messages == tuple(msgs)
    error = StreamError("e" * 1024)
    assert decode_stream(encode_stream(error), STREAM_MAX) == error
    assert decode_stream(encode_stream(StreamError("")), STREAM_MAX) == StreamError("")


def test_push_pull_reply_flag_survives() -> None:
    state = MemberState("a", ("10.0.0.1", 7946), "dc1", ("sip",), 1.0, {}, 3, State.LEFT)
    for reply in (False, True):
        msg = PushPull(True, (state,), (Summary("a", 1, b"d", 0, 1),), reply=reply)
        assert decode_stream(encode_stream(msg), STREAM_MAX) == msg


# ---------------------------------------------------------------- (b) hostile bytes


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    decodes_or_rejects_packet(data)
    decodes_or_rejects_stream(data)


# Byte strings that start like CBOR arrays reach deeper into the decoders than random bytes.
@settings(max_examples=300, deadline=None)
@given(
    head=st.sampled_from([b"\x83\x01", b"\x83\x01\x61a\x81", b"\x84\x14\xf5", b"\x83\x17"]),
    tail=st.binary(max_size=80),
)
def test_array_shaped_bytes_never_crash(head: bytes, tail: bytes) -> None:
    decodes_or_rejects_packet(head + tail)
    decodes_or_rejects_stream(head + tail)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "append", "insert", "delete"]))
        if kind in ("flip", "set", "delete") and not data:
            continue
        if kind == "flip":
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=16))
        elif kind == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[draw(st.integers(0, len(data) - 1))]
    return bytes(data)


valid_packets = st.builds(packet_of, names, st.lists(small_messages, min_size=1, max_size=4))
small_replies = st.builds(QueryReply, printable(1, 8), query_data(3))
valid_streams = st.one_of(push_pulls, queries, small_replies, stream_errors).map(encode_stream)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated(valid_packets))
def test_mutated_packets_never_crash(data: bytes) -> None:
    decodes_or_rejects_packet(data)
    decodes_or_rejects_stream(data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated(valid_streams))
def test_mutated_streams_never_crash(data: bytes) -> None:
    decodes_or_rejects_stream(data)
    decodes_or_rejects_packet(data)


@SETTINGS
@given(msg=messages, cut=st.integers(0, 10**6))
def test_every_strict_prefix_is_rejected(msg: Message, cut: int) -> None:
    data = packet_of("s", [msg])
    with pytest.raises(DecodeError):
        decode_packet(data[: cut % len(data)])


# Structurally valid CBOR of the wrong shape: any JSON-ish value, at any position.
cbor_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**64), 2**64 - 1),
        st.floats(),
        st.text(max_size=10),
        st.binary(max_size=10),
    ),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(value=cbor_values)
def test_wrong_shapes_never_crash(value: Any) -> None:
    data = cbor2.dumps(value)
    decodes_or_rejects_packet(data)
    decodes_or_rejects_stream(data)
    decodes_or_rejects_packet(cbor2.dumps([1, "s", [value]]))
    decodes_or_rejects_packet(cbor2.dumps([1, "s", [[ALIVE, value, 1, ["h", 1]]]]))
    decodes_or_rejects_stream(cbor2.dumps([PUSH_PULL, True, [value], []]))
    decodes_or_rejects_stream(cbor2.dumps([QUERY_REPLY, "members", value]))


# ---------------------------------------------------------------- (c) specific cases


def test_trailing_bytes_rejected() -> None:
    data = packet_of("s", [Ack(1, "a")])
    decode_packet(data)
    with pytest.raises(DecodeError, match="trailing"):
        decode_packet(data + b"\x00")
    stream = encode_stream(Query("members"))
    with pytest.raises(DecodeError, match="trailing"):
        decode_stream(stream + b"\xf6", STREAM_MAX)


def test_indefinite_length_rejected() -> None:
    # [1, "s", [_ ]] with an indefinite-length message list, and an indefinite outer array.
    inner = b"\x83\x01\x61s\x9f" + encode_message(Ack(1, "a")) + b"\xff"
    with pytest.raises(DecodeError):
        decode_packet(inner)
    with pytest.raises(DecodeError):
        decode_packet(b"\x9f\x01\x61s\x80\xff")
    # Indefinite-length text string as the sender.
    with pytest.raises(DecodeError):
        decode_packet(b"\x83\x01\x7f\x61s\xff\x80")
    # Indefinite-length map in a query reply.
    with pytest.raises(DecodeError):
        decode_stream(b"\x83\x17\x61q\xbf\x61k\x01\xff", STREAM_MAX)


def _tagged(tag: int, value: Any) -> cbor2.CBORTag:
    return cbor2.CBORTag(tag, value)


@pytest.mark.parametrize(
    "tagged",
    [
        _tagged(0, "2024-01-01T00:00:00Z"),  # datetime string
        _tagged(1, 1_700_000_000),  # epoch datetime
        _tagged(2, b"\x01"),  # positive bignum: would decode to a plain int
        _tagged(3, b"\x01"),  # negative bignum
        _tagged(32, "http://example.com/"),  # URI
        _tagged(55799, 7),  # self-described CBOR: would decode to the bare value
        _tagged(1000, 5),  # a tag nobody knows
    ],
)
def test_tags_rejected(tagged: cbor2.CBORTag) -> None:
    # As a seq number, as the sender, and as a whole packet.
    with pytest.raises(DecodeError):
        decode_packet(cbor2.dumps([1, "s", [[ACK, tagged, "a"]]]))
    with pytest.raises(DecodeError):
        decode_packet(cbor2.dumps([1, tagged, []]))
    with pytest.raises(DecodeError):
        decode_packet(cbor2.dumps(_tagged(55799, [1, "s", []])))
    with pytest.raises(DecodeError):
        decode_stream(cbor2.dumps([QUERY_REPLY, "q", {"k": tagged}]), STREAM_MAX)


def test_tag_bypass_of_int_check_rejected() -> None:
    # A bignum tag that fits in 64 bits would otherwise pass as a plain int.
    data = b"\x83\x01\x61s\x81\x83\x03\xc2\x41\x05\x61a"  # [1, "s", [[ACK, 2(h'05'), "a"]]]
    with pytest.raises(DecodeError):
        decode_packet(data)
    assert decode_packet(data.replace(b"\xc2\x41\x05", b"\x05")).messages == (Ack(5, "a"),)


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_too_deep_rejected() -> None:
    # An unknown message type is skipped, so only the depth limit can reject these.
    ok = cbor2.dumps([1, "s", [[99, _nested(MAX_DEPTH - 4)]]])
    assert decode_packet(ok).unknown == 1
    for depth in (MAX_DEPTH, MAX_DEPTH * 4):
        with pytest.raises(DecodeError):
            decode_packet(cbor2.dumps([1, "s", [[99, _nested(depth)]]]))
    # Hand-built: 100k nested one-element arrays (cbor2.dumps would recurse too deep).
    with pytest.raises(DecodeError):
        decode_packet(b"\x81" * 60_000 + b"\x00")
    with pytest.raises(DecodeError):
        decode_stream(b"\x81" * 100_000 + b"\x00", STREAM_MAX)


def test_query_reply_depth_limit() -> None:
    ok = QueryReply("q", _nested(MAX_QUERY_DEPTH))
    assert decode_stream(encode_stream(ok), STREAM_MAX) == ok
    with pytest.raises(DecodeError):
        decode_stream(encode_stream(QueryReply("q", _nested(MAX_QUERY_DEPTH + 1))), STREAM_MAX)


def test_unknown_message_types_skipped_and_counted() -> None:
    known: list[Message] = [Ack(1, "a"), Suspect("b", 2, "c")]
    data = encode_packet(
        "s",
        [
            cbor2.dumps([99, "from", {"a": "newer"}, [1, 2]]),
            encode_message(known[0]),
            cbor2.dumps([4000]),
            encode_message(known[1]),
            cbor2.dumps([2**32, b"blob"]),
        ],
    )
    packet = decode_packet(data)
    assert packet.messages == tuple(known)
    assert packet.unknown == 3


def test_known_message_with_extra_fields_decodes() -> None:
    # A newer sender appends fields to known messages; this version ignores them.
    data = encode_packet(
        "s",
        [
            cbor2.dumps([ACK, 7, "a", "extra", {"x": 1}]),
            cbor2.dumps([ALIVE, "n", 1, ["h", 1], "dc", ["sip"], 1.5, {"k": "v"}, 1, 2, 4, [9]]),
            # An older sender, without the health and refutes fields (appended later).
            cbor2.dumps([ALIVE, "o", 1, ["h", 1], "dc", ["sip"], 1.5, {"k": "v"}, 1]),
        ],
    )
    packet = decode_packet(data)
    assert packet.messages == (
        Ack(7, "a"),
        Alive("n", 1, ("h", 1), "dc", ("sip",), 1.5, {"k": "v"}, 1, health=2, refutes=4),
        Alive("o", 1, ("h", 1), "dc", ("sip",), 1.5, {"k": "v"}, 1, health=0, refutes=None),
    )
    assert packet.unknown == 0
    # A newer packet may carry more top-level fields too.
    assert decode_packet(cbor2.dumps([2, "s", [], "later"])).version == 2
    stream = cbor2.dumps(
        [PUSH_PULL, False, [["a", ["h", 1], "d", [], 1.0, {}, 4, 1, 1, "new"]], [], "more"]
    )
    msg = decode_stream(stream, STREAM_MAX)
    assert isinstance(msg, PushPull)
    assert msg.states[0].state is State.SUSPECT


def test_short_known_message_rejected() -> None:
    with pytest.raises(DecodeError, match="short"):
        decode_packet(encode_packet("s", [cbor2.dumps([ACK, 7])]))


def test_stream_message_in_datagram_rejected() -> None:
    with pytest.raises(DecodeError):
        decode_packet(encode_packet("s", [encode_stream(Query("members"))]))


def test_oversize_datagram_rejected() -> None:
    huge = Alive("n", 1, ("h", 1), "d", (), 1.0, {f"k{i}": "v" * 512 for i in range(64)})
    msgs = [encode_message(huge)] * 3
    data = encode_packet("s", msgs)
    assert len(data) > MAX_DATAGRAM
    with pytest.raises(DecodeError, match="too large"):
        decode_packet(data)
    with pytest.raises(DecodeError, match="too large"):
        decode_packet(b"\x00" * (MAX_DATAGRAM + 1))
    # Exactly at the limit the size check passes (and the CBOR check decides).
    with pytest.raises(DecodeError, match="trailing"):
        decode_packet(b"\x00" * MAX_DATAGRAM)


def test_oversize_stream_frame_rejected() -> None:
    data = encode_stream(StreamError("x" * 100))
    with pytest.raises(DecodeError, match="too large"):
        decode_stream(data, len(data) - 1)
    assert decode_stream(data, len(data)) == StreamError("x" * 100)


def test_bound_violations_rejected() -> None:
    bad_messages = [
        [ACK, -1, "a"],  # negative seq
        [ACK, 2**63, "a"],  # seq too large
        [ACK, 1, ""],  # empty name
        [ACK, 1, "n" * 129],  # name too long
        [ACK, 1, "a\nb"],  # unprintable name
        [ACK, True, "a"],  # bool is not an int
        [ACK, 1.0, "a"],  # float is not an int
        [ACK, 1, b"a"],  # bytes are not text
        [ALIVE, "n", 1, ["h", 65536], "d", [], 1.0, {}, 1],  # port
        [ALIVE, "n", 1, ["h", 1, 2], "d", [], 1.0, {}, 1],  # address of three items
        [ALIVE, "n", 1, ["h", 1], "d", [], float("nan"), {}, 1],  # NaN weight
        [ALIVE, "n", 1, ["h", 1], "d", [], float("inf"), {}, 1],  # infinite weight
        [ALIVE, "n", 1, ["h", 1], "d", [], -1.0, {}, 1],  # negative weight
        [ALIVE, "n", 1, ["h", 1], "d", ["r"] * 17, 1.0, {}, 1],  # too many roles
        [ALIVE, "n", 1, ["h", 1], "d", [], 1.0, {"k": 1}, 1],  # tag value not text
        [ALIVE, "n", 1, ["h", 1], "d", [], 1.0, {}, 0],  # protocol 0
        [ALIVE, "n", 1, ["h", 1], "", [], 1.0, {}, 1],  # empty dc
        [8, "n", 1, b"x" * 65, 0, 0],  # digest too long
        [8, "n", 1, b"x", 1001, 0],  # health too high
    ]
    for m in bad_messages:
        with pytest.raises(DecodeError):
            decode_packet(encode_packet("s", [cbor2.dumps(m)]))
    with pytest.raises(DecodeError):
        bad_state = ["a", ["h", 1], "d", [], 1.0, {}, 1, 4, 1]  # state 4 does not exist
        decode_stream(cbor2.dumps([PUSH_PULL, True, [bad_state], []]), STREAM_MAX)
    with pytest.raises(DecodeError):
        decode_stream(cbor2.dumps([QUERY_REPLY, "q", {1: "int key"}]), STREAM_MAX)
    with pytest.raises(DecodeError):
        decode_stream(cbor2.dumps([QUERY_REPLY, "q", b"bytes"]), STREAM_MAX)
    with pytest.raises(DecodeError):
        decode_stream(cbor2.dumps([77, "future"]), STREAM_MAX)
    with pytest.raises(DecodeError):
        decode_packet(cbor2.dumps([1, "s", [[ACK, 1, "a"]] * 513]))


def test_duplicate_map_keys_rejected() -> None:
    # {"k": "v", "k": "w"} as the tags of an Alive.
    alive = cbor2.dumps([ALIVE, "n", 1, ["h", 1], "d", [], 1.0, {"k": "v"}, 1])
    dup = alive.replace(b"\xa1\x61k\x61v", b"\xa2\x61k\x61v\x61k\x61w")
    assert dup != alive
    with pytest.raises(DecodeError):
        decode_packet(encode_packet("s", [dup]))
