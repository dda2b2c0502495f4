"""SIP message parsing: start lines, header access (compact forms, folding, case, multi-value
splitting), the size and structure checks with their reasons and `respondable`, Via hops and
where responses go, and the `to_bytes` round trip. Messages are built as raw bytes, the way
the server hands them over."""

from __future__ import annotations

from typing import TypedDict, Unpack

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swimthor.sip import (
    MAX_HEADER_LENGTH,
    MAX_HEADERS,
    MAX_MESSAGE_SIZE,
    Request,
    Response,
    SipParseError,
    ViaHop,
    canonical_name,
    parse_address,
    parse_message,
    parse_uri,
    split_values,
)

VIA = "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc"
DEFAULTS = (
    ("Via", VIA),
    ("From", "<sip:alice@example.com>;tag=f1"),
    ("To", "<sip:alice@example.com>"),
    ("Call-ID", "call-1@10.0.0.1"),
    ("CSeq", "1 {method}"),
    ("Max-Forwards", "70"),
)


def raw(
    *headers: str,
    method: str = "REGISTER",
    uri: str = "sip:example.com",
    body: bytes = b"",
    drop: tuple[str, ...] = (),
    start: str | None = None,
    length: bool = True,
) -> bytes:
    """A request (or, with `start`, any start line) as CRLF text. A header given as
    "Name: value" replaces the default of the same name; `drop` leaves defaults out."""
    given_names = {h.partition(":")[0].strip().lower() for h in headers}
    lines = [start or f"{method} {uri} SIP/2.0"]
    for name, value in DEFAULTS:
        if name.lower() not in given_names and name.lower() not in drop:
            lines.append(f"{name}: {value.format(method=method)}")
    lines.extend(headers)
    if length and "content-length" not in given_names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawOptions(TypedDict, total=False):
    """raw()'s keyword arguments but `start`."""

    method: str
    uri: str
    body: bytes
    drop: tuple[str, ...]
    length: bool


def response_raw(*headers: str, status: str = "200 OK", **kw: Unpack[RawOptions]) -> bytes:
    return raw(*headers, start=f"SIP/2.0 {status}", **kw)


def req(*headers: str, **kw: Unpack[RawOptions]) -> Request:
    message = parse_message(raw(*headers, **kw))
    assert isinstance(message, Request)
    return message


def parse_error(data: bytes, *, datagram: bool = True) -> SipParseError:
    with pytest.raises(SipParseError) as caught:
        parse_message(data, datagram=datagram)
    return caught.value


# ------------------------------------------------------------------------ start lines


def test_a_request_is_parsed_field_by_field() -> None:
    r = req("Contact: <sip:alice@10.0.0.2:5070>", "Expires: 600")
    assert (r.method, r.uri_text) == ("REGISTER", "sip:example.com")
    assert r.uri.host == "example.com"
    assert r.call_id == "call-1@10.0.0.1"
    assert r.cseq == (1, "REGISTER")
    assert r.from_tag == "f1"
    assert r.to_tag is None
    assert r.to_addr.uri.user == "alice"
    assert r.get("expires") == "600"
    assert r.get("nothing") is None
    assert [h.branch for h in r.vias] == ["z9hG4bKabc"]
    assert r.body == b""
    assert r.start_line() == "REGISTER sip:example.com SIP/2.0"


def test_a_response_keeps_its_reason_phrase_whole() -> None:
    for status, reason in (
        ("200 OK", "OK"),
        ("486 Busy Here", "Busy Here"),
        ("500 ", ""),
        # A reason phrase that reads like a version is still a reason phrase.
        ("200 SIP/2.0", "SIP/2.0"),
    ):
        m = parse_message(response_raw(status=status))
        assert isinstance(m, Response)
        assert (m.status, m.reason) == (int(status[:3]), reason)
        assert m.start_line() == f"SIP/2.0 {status}"


def test_request_uri_must_be_sip_sips_or_tel_when_read() -> None:
    assert req(uri="tel:+4930123").uri.scheme == "tel"
    assert req(uri="sips:bob@example.com").uri.scheme == "sips"
    r = req(uri="http://example.com/")  # the parser leaves the URI to the dispatcher
    with pytest.raises(ValueError):
        r.uri  # noqa: B018


def test_a_request_in_another_sip_version_is_answered_505() -> None:
    e = parse_error(raw(start="REGISTER sip:example.com SIP/3.0"))
    assert (e.reason, e.respondable, e.status) == ("Version Not Supported", True, 505)


def test_two_content_lengths_are_malformed() -> None:
    e = parse_error(raw("Content-Length: 0", "l: 0"))
    assert (e.reason, e.respondable) == ("Duplicate Content-Length", True)


@pytest.mark.parametrize(
    ("start", "reason"),
    [
        ("REGISTER sip:example.com", "Bad Start Line"),
        ("REGISTER", "Bad Start Line"),
        ("HELLO WORLD AGAIN", "Bad Start Line"),
        ("REGISTER sip:a b SIP/2.0", "Bad Start Line"),
        ("SIP/1.0 200 OK", "Version Not Supported"),
        ("REG@STER sip:example.com SIP/2.0", "Bad Method"),
        ("RÉGISTER sip:example.com SIP/2.0", "Bad Method"),
        ("SIP/2.0 99 Low", "Bad Status Code"),
        ("SIP/2.0 700 High", "Bad Status Code"),
        ("SIP/2.0 2000 Long", "Bad Status Code"),
        ("SIP/2.0 02 Short", "Bad Status Code"),
        ("SIP/2.0 abc What", "Bad Status Code"),
        ("SIP/2.0 +20 Sign", "Bad Status Code"),
        ("SIP/2.0 \uff12\uff10\uff10 Wide", "Bad Status Code"),
    ],
)
def test_bad_start_lines_are_dropped(start: str, reason: str) -> None:
    e = parse_error(raw(start=start))
    assert e.reason == reason
    assert not e.respondable  # nothing was read to answer with


# ------------------------------------------------------------------------ headers


def test_compact_forms_are_expanded_and_written_back_long() -> None:
    data = (
        "REGISTER sip:example.com SIP/2.0\r\n"
        f"v: {VIA}\r\n"
        "f: <sip:alice@example.com>;tag=f1\r\n"
        "t: <sip:alice@example.com>\r\n"
        "i: abc\r\n"
        "CSeq: 7 REGISTER\r\n"
        "m: <sip:alice@10.0.0.2>\r\n"
        "k: path\r\n"
        "o: reg\r\n"
        "l: 0\r\n\r\n"
    ).encode()
    m = parse_message(data)
    assert [k for k, _ in m.headers] == [
        "via",
        "from",
        "to",
        "call-id",
        "cseq",
        "contact",
        "supported",
        "event",
        "content-length",
    ]
    assert m.call_id == "abc"
    assert m.get_all("contact") == ["<sip:alice@10.0.0.2>"]
    out = m.to_bytes().decode()
    for line in ("Via: ", "From: ", "To: ", "Call-ID: abc", "Contact: ", "Supported: path"):
        assert f"\r\n{line}" in out
    assert "\r\no: reg" in out  # no display name known: kept as received


def test_header_names_are_compared_without_case_and_kept_for_output() -> None:
    m = req("X-Custom-Thing: 1", "eXpIrEs: 5", "cALL-iD: zz")
    assert m.get("call-id") == "zz"
    assert m.get("expires") == "5"
    assert m.get("x-custom-thing") == "1"
    out = m.to_bytes().decode()
    assert "\r\nX-Custom-Thing: 1\r\n" in out
    assert "\r\nCall-ID: zz\r\n" in out
    assert "\r\nExpires: 5\r\n" in out
    assert canonical_name("L") == "content-length"
    assert canonical_name("Subject") == "subject"
    assert canonical_name("s") == "subject"


def test_space_before_the_colon_is_allowed() -> None:
    m = req("Expires  \t: 30")
    assert m.get("expires") == "30"


def test_folded_lines_are_joined_with_one_space() -> None:
    m = req("Subject: first\r\n  second\r\n\tthird")
    assert m.get("subject") == "first second third"
    e = parse_error(raw(start="REGISTER sip:example.com SIP/2.0\r\n folded"))
    assert e.reason == "Bad Header Folding"


def test_get_all_splits_only_multi_value_headers() -> None:
    m = req(
        'Contact: "Alice, at home" <sip:alice@10.0.0.2>;q=0.5, <sip:alice@10.0.0.3>',
        "Contact: <sip:alice@10.0.0.4>",
        "Subject: one, two",
        "Supported: path, outbound",
    )
    assert m.get_all("contact") == [
        '"Alice, at home" <sip:alice@10.0.0.2>;q=0.5',
        "<sip:alice@10.0.0.3>",
        "<sip:alice@10.0.0.4>",
    ]
    assert m.count("contact") == 2
    assert m.get_all("subject") == ["one, two"]
    assert m.get_all("supported") == ["path", "outbound"]
    assert m.get_all("route") == []


def test_comma_joined_vias_are_separate_hops() -> None:
    m = req(f"Via: {VIA}, SIP/2.0/TCP proxy.example.com;branch=z9hG4bKp", f"Via: {VIA}2")
    assert [(h.transport, h.host, h.branch) for h in m.vias] == [
        ("UDP", "10.0.0.1", "z9hG4bKabc"),
        ("TCP", "proxy.example.com", "z9hG4bKp"),
        ("UDP", "10.0.0.1", "z9hG4bKabc2"),
    ]


@pytest.mark.parametrize(
    ("value", "values"),
    [
        ("a", ["a"]),
        ("  a  ", ["a"]),
        ("a,b", ["a", "b"]),
        (" a , b ,c ", ["a", "b", "c"]),
        ('"x, y" <sip:a@b>, <sip:c@d>', ['"x, y" <sip:a@b>', "<sip:c@d>"]),
        (r'"x \" , y" <sip:a@b>, c', [r'"x \" , y" <sip:a@b>', "c"]),
        ("<sip:a@b;p=1,2>;q=1, <sip:c@d>", ["<sip:a@b;p=1,2>;q=1", "<sip:c@d>"]),
        ("a,,b,", ["a", "b"]),
        (",", []),
        ("", []),
        ("   ", []),
        ("a>, b", ["a>", "b"]),  # a stray '>' does not swallow the rest
    ],
)
def test_split_values(value: str, values: list[str]) -> None:
    assert split_values(value) == values


_plain = st.text(
    alphabet=st.characters(categories=("L", "N"), max_codepoint=0x24F)
    | st.sampled_from("@.:;=-_ "),
    min_size=1,
    max_size=12,
).map(str.strip)
_quoted = st.text(alphabet=st.sampled_from('ab ,;<>"\\'), max_size=10).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
)
_angled = st.text(alphabet=st.sampled_from("ab,;=@:"), max_size=10).map(lambda s: f"<{s}>")
_value = st.lists(st.one_of(_plain, _quoted, _angled), min_size=1, max_size=3).map(
    lambda parts: " ".join(parts).strip()
)


@given(st.lists(_value.filter(bool), min_size=1, max_size=6))
def test_split_values_inverts_a_comma_join(values: list[str]) -> None:
    assert split_values(", ".join(values)) == values
    assert split_values(",".join(values)) == values


def test_editing_headers_updates_the_parsed_fields() -> None:
    m = req()
    assert len(m.vias) == 1
    m.prepend("via", "SIP/2.0/UDP 192.0.2.9:5080;branch=z9hG4bKtop")
    assert [h.host for h in m.vias] == ["192.0.2.9", "10.0.0.1"]
    m.set_values("via", ["SIP/2.0/TCP 192.0.2.7;branch=z9hG4bKa", VIA])
    assert [h.host for h in m.vias] == ["192.0.2.7", "10.0.0.1"]
    assert m.names[:2] == ["Via", "Via"]
    m.remove("via")
    assert m.vias == []
    assert m.count("via") == 0
    m.set_values("via", [VIA])  # absent: appended
    assert [h.branch for h in m.vias] == ["z9hG4bKabc"]

    m.set("max-forwards", "69")
    assert m.get_all("max-forwards") == ["69"]
    m.append("route", "<sip:p1;lr>")
    m.append("route", "<sip:p2;lr>")
    m.set("route", "<sip:p3;lr>")
    assert m.get_all("route") == ["<sip:p3;lr>"]
    m.set("expires", "60")  # absent: appended
    assert m.headers[-1] == ("expires", "60")
    m.set_values("record-route", [])
    assert m.count("record-route") == 0
    out = m.to_bytes()
    again = parse_message(out)
    # Content-Length is written last, whatever its place was.
    assert again.headers[:-1] == [h for h in m.headers if h[0] != "content-length"]
    assert again.headers[-1] == ("content-length", "0")
    assert b"\r\nRoute: <sip:p3;lr>\r\n" in out
    assert b"\r\nMax-Forwards: 69\r\n" in out


def test_set_keeps_the_position_of_the_first_value() -> None:
    m = req("Route: <sip:a;lr>", "Expires: 1", "Route: <sip:b;lr>")
    m.set("route", "<sip:c;lr>")
    keys = [k for k, _ in m.headers]
    assert keys.index("route") < keys.index("expires")
    assert m.count("route") == 1


def test_cseq_and_from_are_parsed_from_the_current_headers() -> None:
    m = req("CSeq: 5 REGISTER")
    assert m.cseq == (5, "REGISTER")
    m.set("cseq", "9 REGISTER")
    assert m.cseq == (9, "REGISTER")
    m.set("from", "<sip:bob@example.com>;tag=zz")
    assert (m.from_addr.uri.user, m.from_tag) == ("bob", "zz")


# ------------------------------------------------------------------------ round trip


def test_to_bytes_round_trip_rewrites_content_length() -> None:
    body = b"v=0\r\no=- 0 0 IN IP4 10.0.0.1\r\n"
    data = raw("Content-Type: application/sdp", method="INVITE", uri="sip:bob@x.com", body=body)
    m = parse_message(data)
    assert m.to_bytes() == data
    m.body = b"shorter"
    out = m.to_bytes()
    assert out.endswith(b"\r\nContent-Length: 7\r\n\r\nshorter")
    assert out.count(b"Content-Length") == 1
    assert parse_message(out).body == b"shorter"


_name = st.text(alphabet=st.sampled_from("abcdefXYZ-"), min_size=1, max_size=8).map(
    lambda s: "X-" + s
)
_header_value = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30
).map(str.strip)


@settings(max_examples=60)
@given(
    extra=st.lists(st.tuples(_name, _header_value), max_size=8),
    body=st.binary(max_size=40),
    method=st.sampled_from(["REGISTER", "OPTIONS", "INVITE", "MESSAGE"]),
)
def test_parse_to_bytes_round_trip(extra: list[tuple[str, str]], body: bytes, method: str) -> None:
    data = raw(*[f"{n}: {v}" for n, v in extra], method=method, body=body)
    m = parse_message(data)
    assert isinstance(m, Request)
    assert m.body == body
    assert m.to_bytes() == data
    for datagram in (True, False):
        again = parse_message(m.to_bytes(), datagram=datagram)
        assert isinstance(again, Request)
        assert (again.method, again.uri_text, again.headers, again.body) == (
            m.method,
            m.uri_text,
            m.headers,
            m.body,
        )


# ------------------------------------------------------------------------ Content-Length


def test_content_length_over_udp_cuts_the_body() -> None:
    m = parse_message(raw("Content-Length: 3", body=b"abcdef"))
    assert m.body == b"abc"
    m = parse_message(raw(body=b"abcdef", length=False))
    assert m.body == b"abcdef"  # no Content-Length on a datagram: the rest is the body


def test_content_length_larger_than_the_body() -> None:
    e = parse_error(raw("Content-Length: 10", body=b"abc"))
    assert (e.reason, e.respondable) == ("Content-Length Larger Than Body", True)
    e = parse_error(response_raw("Content-Length: 10", body=b"abc"))
    assert (e.reason, e.respondable) == ("Content-Length Larger Than Body", False)


def test_content_length_over_a_stream_must_be_exact_and_present() -> None:
    assert parse_message(raw(body=b"abc"), datagram=False).body == b"abc"
    e = parse_error(raw("Content-Length: 2", body=b"abc"), datagram=False)
    assert (e.reason, e.respondable) == ("Bad Content-Length", True)
    e = parse_error(raw(body=b"", length=False), datagram=False)
    assert (e.reason, e.respondable) == ("Missing Content-Length", True)
    e = parse_error(response_raw(body=b"", length=False), datagram=False)
    assert (e.reason, e.respondable) == ("Missing Content-Length", False)


@pytest.mark.parametrize("value", ["abc", "-1", "+3", "1_0", "٣", "3.0", ""])
def test_content_length_must_be_digits(value: str) -> None:
    e = parse_error(raw(f"Content-Length: {value}", body=b"abcdefghijk"))
    assert (e.reason, e.respondable) == ("Bad Content-Length", True)


# ------------------------------------------------------------------------ size and structure


def test_size_limits() -> None:
    filler = "x" * (MAX_MESSAGE_SIZE - len(raw("X-Fill: ")) + 1)
    e = parse_error(raw(f"X-Fill: {filler}"))
    assert (e.reason, e.respondable) == ("Message Too Large", False)
    # One byte less fits the size bound (and then fails the header bound instead).
    e = parse_error(raw(f"X-Fill: {filler[:-1]}"))
    assert e.reason == "Header Too Long"

    long_value = "y" * MAX_HEADER_LENGTH
    assert parse_error(raw(f"X-Long: {long_value}")).reason == "Header Too Long"
    fits = "y" * (MAX_HEADER_LENGTH - len("X-Long: "))
    assert req(f"X-Long: {fits}").get("x-long") == fits
    halves = "z" * (MAX_HEADER_LENGTH // 2)
    assert parse_error(raw(f"X-Long: {halves}\r\n {halves}")).reason == "Header Too Long"

    start = f"REGISTER sip:{'a' * MAX_HEADER_LENGTH}.com SIP/2.0"
    assert parse_error(raw(start=start)).reason == "Start Line Too Long"


LONG = "y" * MAX_HEADER_LENGTH


@pytest.mark.parametrize(
    "headers",
    [
        (f"X-Long: {LONG}",),
        (f"User-Agent: {LONG}", "Contact: <sip:alice@10.0.0.2>"),
        (
            f"X-Long: {LONG[: MAX_HEADER_LENGTH // 2]}",
            f" {LONG[: MAX_HEADER_LENGTH // 2]}",
            " more",
        ),
        (f"X-Long: {LONG}", " folded on", "Contact: <sip:alice@10.0.0.2>"),
        (f"Contact: <sip:{LONG}@10.0.0.2>",),
        (f"x-lOnG  : {LONG}", f"X-Other: {LONG}"),
    ],
)
def test_a_header_line_too_long_is_answered_400_when_the_via_is_usable(
    headers: tuple[str, ...],
) -> None:
    e = parse_error(raw(*headers))
    assert (e.reason, e.respondable, e.status) == ("Header Too Long", True, 400)
    e = parse_error(raw(*headers), datagram=False)
    assert (e.reason, e.respondable, e.status) == ("Header Too Long", True, 400)


@pytest.mark.parametrize("name", ["Via", "v", "From", "To", "t", "Call-ID", "i", "CSeq"])
def test_a_header_line_too_long_that_an_answer_copies_is_dropped(name: str) -> None:
    # The answer would have to copy it (or route by it): no answer.
    e = parse_error(raw(f"{name}: {LONG}"))
    assert (e.reason, e.respondable) == ("Header Too Long", False)
    # Nor when the Via that is too long is a second one, or a folded one.
    if name in ("Via", "v"):
        e = parse_error(raw(f"Via: {VIA}", f"Via: {LONG}"))
        assert (e.reason, e.respondable) == ("Header Too Long", False)
        e = parse_error(raw(f"Via: {VIA}", f" , {LONG}"))
        assert (e.reason, e.respondable) == ("Header Too Long", False)


def test_a_header_line_too_long_is_dropped_when_nothing_else_can_be_answered() -> None:
    # No header name to go by.
    e = parse_error(raw(f"X Long: {LONG}"))
    assert (e.reason, e.respondable) == ("Header Too Long", False)
    e = parse_error(raw(LONG + "y"))
    assert (e.reason, e.respondable) == ("Header Too Long", False)
    # A response is never answered.
    e = parse_error(response_raw(f"X-Long: {LONG}"))
    assert (e.reason, e.respondable) == ("Header Too Long", False)
    # A request that also lacks what an answer needs gets the reason for that.
    e = parse_error(raw(f"X-Long: {LONG}", drop=("call-id",)))
    assert (e.reason, e.respondable) == ("Missing Call-ID", True)
    e = parse_error(raw(f"X-Long: {LONG}", drop=("via",)))
    assert (e.reason, e.respondable) == ("Missing Via", False)


def test_a_request_too_large_is_answered_513_when_its_headers_are_readable() -> None:
    body = b"x" * MAX_MESSAGE_SIZE
    e = parse_error(raw(body=body))
    assert (e.reason, e.respondable, e.status) == ("Message Too Large", True, 513)
    e = parse_error(raw(body=body), datagram=False)
    assert (e.reason, e.respondable, e.status) == ("Message Too Large", True, 513)
    # Headers that are readable enough to answer, but wrong too: still 513.
    e = parse_error(raw(f"X-Long: {LONG}", body=body))
    assert (e.reason, e.respondable, e.status) == ("Message Too Large", True, 513)
    # Not for a response, nor for headers that cannot be answered or do not end in time.
    for data in (
        response_raw(body=body),
        raw(f"Via: {LONG}", body=body),
        raw(drop=("via",), body=body),
        b"INVITE sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 20_000,
    ):
        e = parse_error(data)
        assert (e.reason, e.respondable) == ("Message Too Large", False)


def test_the_proxy_answers_a_header_too_long_and_a_message_too_large() -> None:
    from swimthor.sip import Proxy, ProxySettings, Send, Source

    proxy = Proxy(
        ProxySettings("n1", "127.0.0.1", 5071, frozenset({"example.com"})),
        owners=lambda aor, n: [],
        peers=dict,
    )
    source = Source("udp", "10.0.0.1", 5060)
    for data, status, reason in (
        (raw(f"User-Agent: {LONG}"), 400, "Header Too Long"),
        (raw(body=b"x" * MAX_MESSAGE_SIZE), 513, "Message Too Large"),
    ):
        (send,) = proxy.handle(data, source, 1000.0)
        assert isinstance(send, Send)
        assert (send.transport, send.host, send.port) == ("udp", "10.0.0.1", 5060)
        answer = parse_message(send.data)
        assert isinstance(answer, Response)
        assert (answer.status, answer.reason) == (status, reason)
        assert answer.get("call-id") == "call-1@10.0.0.1"
        assert answer.vias[0].branch == "z9hG4bKabc"
        assert len(send.data) < 1000  # the long line is not sent back
    # One it cannot answer is dropped, as before.
    assert proxy.handle(raw(f"Via: {LONG}"), source, 1000.0) == []


def test_header_count_limit() -> None:
    base = len(DEFAULTS) + 1  # with Content-Length
    ok = [f"X-H{i}: {i}" for i in range(MAX_HEADERS - base)]
    assert len(req(*ok).headers) == MAX_HEADERS
    e = parse_error(raw(*ok, "X-One-Too-Many: 1"))
    assert (e.reason, e.respondable) == ("Too Many Headers", False)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"REGISTER sip:example.com SIP/2.0\r\nVia: x\r\n", "No End Of Headers"),
        (b"REGISTER sip:example.com SIP/2.0\nVia: x\n\n", "No End Of Headers"),
        (raw("X-Bin: MARK").replace(b"MARK", b"\xff\xfe"), "Headers Are Not UTF-8"),
        (raw("NoColonHere"), "Bad Header Line"),
        (raw("Bad Name: 1"), "Bad Header Line"),
        (raw(": empty name"), "Bad Header Line"),
        (raw("Bäd: 1"), "Bad Header Line"),
        (raw("X-A: a\nVia: SIP/2.0/UDP 6.6.6.6;branch=z9hG4bKevil"), "Bare CR Or LF In Headers"),
        (raw("X-A: a\rb"), "Bare CR Or LF In Headers"),
        (raw(start="REGISTER sip:example.com\n SIP/2.0"), "Bare CR Or LF In Headers"),
    ],
)
def test_structure_errors(data: bytes, reason: str) -> None:
    e = parse_error(data)
    assert (e.reason, e.respondable) == (reason, False)


def test_a_body_may_hold_anything() -> None:
    body = b"\xff\x00\r\n\n\r\r\n\r\n"
    assert parse_message(raw(body=body)).body == body


# ------------------------------------------------------------------------ mandatory headers


@pytest.mark.parametrize(
    ("headers", "drop", "reason", "respondable"),
    [
        ((), ("via",), "Missing Via", False),
        (("Via: junk",), (), "Bad Via", False),
        ((f"Via: {VIA}", "Via: junk"), (), "Bad Via", False),
        (("Via: ", f"Via: {VIA}"), (), "Bad Via", False),
        (("Via: , ,", f"Via: {VIA}"), (), "Bad Via", False),
        (("Via: SIP/2.0/UDP 10.0.0.1:70000;branch=z9hG4bK1",), (), "Bad Via", False),
        ((), ("to",), "Missing To", True),
        ((), ("from",), "Missing From", True),
        ((), ("call-id",), "Missing Call-ID", True),
        ((), ("cseq",), "Missing CSeq", True),
        (("t: <sip:alice@example.com>", "To: <sip:alice@example.com>"), (), "Duplicate To", True),
        (("From: <sip:a@x>;tag=1", "f: <sip:a@x>;tag=2"), (), "Duplicate From", True),
        (("Call-ID: a", "i: b"), (), "Duplicate Call-ID", True),
        (("CSeq: 1 REGISTER", "CSeq: 2 REGISTER"), (), "Duplicate CSeq", True),
        (("CSeq: x REGISTER",), (), "Bad CSeq", True),
        (("CSeq: 1",), (), "Bad CSeq", True),
        (("CSeq: REGISTER",), (), "Bad CSeq", True),
        (("CSeq: -1 REGISTER",), (), "Bad CSeq", True),
        (("CSeq: +1 REGISTER",), (), "Bad CSeq", True),
        (("CSeq: 1_0 REGISTER",), (), "Bad CSeq", True),
        (("CSeq: ٣ REGISTER",), (), "Bad CSeq", True),
        (("CSeq: 2147483648 REGISTER",), (), "Bad CSeq", True),
        (("CSeq: 1 REG/STER",), (), "Bad CSeq", True),
        (("CSeq: 1 REGISTER extra",), (), "Bad CSeq", True),
        (("CSeq: 1 INVITE",), (), "CSeq Method Does Not Match", True),
        (("CSeq: 1 register",), (), "CSeq Method Does Not Match", True),
        (("Call-ID: ",), (), "Bad Call-ID", True),
        (("From: <not a uri>",), (), "Bad From", True),
        (("To: <sip:@@>",), (), "Bad To", True),
    ],
)
def test_request_header_errors_and_whether_they_can_be_answered(
    headers: tuple[str, ...], drop: tuple[str, ...], reason: str, respondable: bool
) -> None:
    e = parse_error(raw(*headers, drop=drop))
    assert (e.reason, e.respondable) == (reason, respondable)
    assert str(e) == reason


@pytest.mark.parametrize(
    ("headers", "drop", "reason"),
    [
        ((), ("via",), "Missing Via"),
        ((), ("to",), "Missing To"),
        (("CSeq: x REGISTER",), (), "Bad CSeq"),
        (("Call-ID: ",), (), "Bad Call-ID"),
    ],
)
def test_a_bad_response_is_never_answered(
    headers: tuple[str, ...], drop: tuple[str, ...], reason: str
) -> None:
    e = parse_error(response_raw(*headers, drop=drop))
    assert (e.reason, e.respondable) == (reason, False)


def test_a_response_is_routed_by_its_vias_without_reading_from_and_to() -> None:
    # A proxy reads a response's Vias only; its From and To are parsed when asked for.
    m = parse_message(response_raw("From: <nope>"))
    with pytest.raises(ValueError):
        m.from_addr  # noqa: B018


def test_response_cseq_method_is_not_compared_with_anything() -> None:
    m = parse_message(response_raw("CSeq: 4 INVITE"))
    assert m.cseq == (4, "INVITE")


def test_cseq_limits_and_whitespace() -> None:
    assert req("CSeq: 2147483647 REGISTER").cseq == (2**31 - 1, "REGISTER")
    assert req("CSeq: 0 REGISTER").cseq == (0, "REGISTER")
    assert req("CSeq: 12\t REGISTER").cseq == (12, "REGISTER")
    assert req("CSeq:   3    REGISTER  ").cseq == (3, "REGISTER")


# ------------------------------------------------------------------------ Via hops


def hop(text: str) -> ViaHop:
    (h,) = req(f"Via: {text}").vias
    return h


def test_via_hop_fields() -> None:
    h = hop("SIP/2.0/udp Host.Example.com:5070;BRANCH=z9hG4bKx;rport;Received=192.0.2.1")
    assert (h.transport, h.host, h.port) == ("UDP", "Host.Example.com", 5070)
    assert h.params == {"branch": "z9hG4bKx", "rport": None, "received": "192.0.2.1"}
    assert h.branch == "z9hG4bKx"
    assert h.text == "SIP/2.0/udp Host.Example.com:5070;BRANCH=z9hG4bKx;rport;Received=192.0.2.1"
    assert hop("SIP/2.0/UDP h.example.com").branch is None


@pytest.mark.parametrize(
    ("via", "target"),
    [
        ("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1", ("10.0.0.1", 5070)),
        ("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1", ("10.0.0.1", 5060)),
        ("SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK1", ("10.0.0.1", 5060)),
        ("SIP/2.0/TLS 10.0.0.1;branch=z9hG4bK1", ("10.0.0.1", 5061)),
        ("SIP/2.0/tls 10.0.0.1;branch=z9hG4bK1", ("10.0.0.1", 5061)),
        ("SIP/2.0/UDP h.example.com:5070;received=192.0.2.1", ("192.0.2.1", 5070)),
        ("SIP/2.0/UDP h.example.com;received=192.0.2.1", ("192.0.2.1", 5060)),
        ("SIP/2.0/UDP 10.0.0.1:5070;rport=40000", ("10.0.0.1", 40000)),
        ("SIP/2.0/UDP 10.0.0.1:5070;received=192.0.2.1;rport=40000", ("192.0.2.1", 40000)),
        ("SIP/2.0/UDP 10.0.0.1:5070;rport", ("10.0.0.1", 5070)),
        ("SIP/2.0/UDP 10.0.0.1:5070;rport=junk", ("10.0.0.1", 5070)),
        ("SIP/2.0/UDP 10.0.0.1:5070;rport=70000", ("10.0.0.1", 5070)),
        ("SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bK1", ("2001:db8::1", 5070)),
        ("SIP/2.0/UDP [2001:db8::1];received=[2001:db8::2]", ("2001:db8::2", 5060)),
        # RFC 3261 §25.1: received = IPv4address / IPv6address, the latter unbracketed.
        ("SIP/2.0/UDP [2001:db8::1]:5070;received=2001:db8::9;rport=4000", ("2001:db8::9", 4000)),
        (
            "SIP/2.0/UDP h.example.com;branch=z9hG4bK1;received=::ffff:192.0.2.1",
            ("::ffff:192.0.2.1", 5060),
        ),
    ],
)
def test_response_target(via: str, target: tuple[str, int]) -> None:
    assert hop(via).response_target() == target


def test_an_unbracketed_ipv6_received_keeps_the_via_parseable() -> None:
    # What a proxy in front of an IPv6 phone writes into its Via (RFC 3261 §18.2.1); the
    # response coming back carries it in the second Via and must still parse.
    text = "SIP/2.0/UDP [2001:db8::5]:5060;branch=z9hG4bKphone;received=2001:db8::5;rport=5060"
    m = parse_message(response_raw(f"Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKus, {text}"))
    second = m.vias[1]
    assert second.params["received"] == "2001:db8::5"
    assert second.text == text  # written back exactly as received
    assert second.branch == "z9hG4bKphone"


# ------------------------------------------------------------------------ grammar helpers


def test_parse_uri_and_address() -> None:
    u = parse_uri("  sip:Alice@Example.com:5070;transport=tcp ")
    assert (u.user, u.host, u.port, dict(u.parameters)) == (
        "Alice",
        "Example.com",
        5070,
        {"transport": "tcp"},
    )
    a = parse_address('"Alice" <sip:alice@example.com>;tag=9;expires=60')
    assert (a.name, a.uri.user, dict(a.parameters)) == (
        "Alice",
        "alice",
        {"tag": "9", "expires": "60"},
    )
    for bad in ("", "mailto:a@b", "sip:", "<sip:a@b"):
        with pytest.raises(ValueError):
            parse_address(bad)
    with pytest.raises(ValueError):
        parse_uri("http://example.com")
