"""SIP messages: framing, header access and serialization, with every field parsed once.

`parse_message(data)` splits a datagram or a stream frame into a `Request` or `Response`:
start line, headers (compact forms expanded, folded lines joined, names compared without
case) and body. It checks sizes and structure only; what a header *means* is parsed lazily by
the accessors below, once per message, with `_grammar` (one compiled pattern per common
shape, sipmessage's full grammar for the rest) behind small caches, because sipmessage
re-parses on every property access and the same header values (a user's To, a phone's
Contact) come back with every re-registration.

Errors are `SipParseError` with a reason phrase that names the problem; `respondable` says
whether enough of the request was read to build a response (RFC 3261 §8.2: a request that
cannot be answered is dropped).
"""

from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass

from sipmessage import Via

from . import _grammar
from ._grammar import NameAddr, Uri

__all__ = [
    "MAX_HEADERS",
    "MAX_MESSAGE_SIZE",
    "MULTI_VALUE",
    "Request",
    "Response",
    "SipMessage",
    "SipParseError",
    "ViaHop",
    "canonical_name",
    "parse_address",
    "parse_message",
    "parse_uri",
    "split_values",
]

# A SIP message over UDP must fit one datagram (RFC 3261 §18.1.1 suggests staying under the
# path MTU; 65,507 is the IPv4 ceiling). Over TCP we hold a message to the same bound.
MAX_MESSAGE_SIZE = 65_507
MAX_HEADERS = 200
MAX_HEADER_LENGTH = 8_192

COMPACT_FORMS = {
    "a": "accept-contact",
    "u": "allow-events",
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "o": "event",
    "f": "from",
    "y": "identity",
    "r": "refer-to",
    "b": "referred-by",
    "j": "reject-contact",
    "d": "request-disposition",
    "x": "session-expires",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
}

# How a header is written back out, for the names we touch; others keep their received case.
DISPLAY_NAMES = {
    "via": "Via",
    "from": "From",
    "to": "To",
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "contact": "Contact",
    "content-length": "Content-Length",
    "content-type": "Content-Type",
    "max-forwards": "Max-Forwards",
    "record-route": "Record-Route",
    "route": "Route",
    "expires": "Expires",
    "min-expires": "Min-Expires",
    "require": "Require",
    "proxy-require": "Proxy-Require",
    "supported": "Supported",
    "unsupported": "Unsupported",
    "allow": "Allow",
    "retry-after": "Retry-After",
    "date": "Date",
    "user-agent": "User-Agent",
    "server": "Server",
    "www-authenticate": "WWW-Authenticate",
    "authorization": "Authorization",
    "proxy-authenticate": "Proxy-Authenticate",
    "proxy-authorization": "Proxy-Authorization",
}

# Headers whose values may be joined with commas on one line (RFC 3261 §7.3.1). Contact is
# in the list; the `*` form is a single value.
MULTI_VALUE = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "require",
        "proxy-require",
        "supported",
        "unsupported",
        "allow",
        "accept",
        "accept-encoding",
        "accept-language",
        "content-encoding",
        "in-reply-to",
        "path",
    }
)

MANDATORY = ("to", "from", "cseq", "call-id", "via")


class SipParseError(ValueError):
    """The message cannot be used. `reason` is a response phrase ("Bad CSeq", ...)."""

    def __init__(self, reason: str, *, respondable: bool = False, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.respondable = respondable
        self.status = status


def canonical_name(name: str) -> str:
    low = name.lower()
    return COMPACT_FORMS.get(low, low)


def split_values(value: str) -> list[str]:
    """Split a comma-joined header value, leaving commas inside quotes and <...> alone.
    Empty values (a blank header, `a,,b`) are left out."""
    if "," not in value:
        value = value.strip()
        return [value] if value else []
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    start = 0
    for i, ch in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            out.append(value[start:i].strip())
            start = i + 1
    out.append(value[start:].strip())
    return [v for v in out if v]


def parse_uri(text: str) -> Uri:
    """A SIP/SIPS/TEL URI; ValueError when it is none of those."""
    return _grammar.parse_uri(text.strip())


def parse_address(text: str) -> NameAddr:
    """One name-addr or addr-spec with its parameters (From, To, Contact, Route ...)."""
    return _grammar.parse_name_addr(text.strip())


@dataclass(slots=True)
class ViaHop:
    """One Via value: where its sender wants responses, as RFC 3261 §18.2.2 and RFC 3581 say."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]
    text: str

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def response_target(self) -> tuple[str, int]:
        """Host and port a response goes to: received/rport first, then sent-by."""
        host = self.params.get("received") or self.host
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        rport = self.params.get("rport")
        if rport and _digits(rport) and 0 < int(rport) < 65_536:
            return host, int(rport)
        if self.port is not None:
            return host, self.port
        return host, 5061 if self.transport.upper() == "TLS" else 5060


# RFC 3261 §18.2.1 / §25.1: `received` holds an IPv4address or an IPv6address, the latter
# without brackets, which sipmessage's generic-param grammar does not accept. We bracket it
# for parsing and hand back the value as it was written.
_RECEIVED_V6 = re.compile(
    r"(;\s*received\s*=\s*)([0-9A-Fa-f]*:[0-9A-Fa-f:.]*)(?=\s*(?:;|$))", re.IGNORECASE
)


@functools.lru_cache(maxsize=16_384)
def parse_via(text: str) -> ViaHop:
    text = text.strip()
    fast = _grammar.match_via(text)
    if fast is not None:
        if fast.port is not None and not 0 < fast.port < 65_536:
            raise ValueError("Via port out of range")
        return ViaHop(fast.transport, fast.host, fast.port, fast.params, text)
    received_v6 = _RECEIVED_V6.search(text)
    parsable = text
    if received_v6 is not None:
        start, end = received_v6.span(2)
        parsable = f"{text[:start]}[{received_v6.group(2)}]{text[end:]}"
    via = Via.parse(parsable)
    if via.port is not None and not 0 < via.port < 65_536:
        raise ValueError("Via port out of range")
    params = {k.lower(): v for k, v in via.parameters.items()}
    if received_v6 is not None:
        params["received"] = received_v6.group(2)
    return ViaHop(via.transport.upper(), via.host, via.port, params, text)


# The cache entry parsed from a header, where its key is not the header's own name.
_DERIVED = {"via": "vias"}


class SipMessage:
    """Headers as (lower-case name, value) pairs in order, a body, and parsed fields cached."""

    __slots__ = ("_cache", "_idx", "body", "headers", "names")

    def __init__(self, headers: list[tuple[str, str]], names: list[str], body: bytes) -> None:
        self.headers = headers
        self.names = names  # the name to write back for each header, same index
        self.body = body
        self._cache: dict[str, object] = {}  # fields parsed from headers, by header
        self._idx: dict[str, list[str]] | None = None

    # ---------------------------------------------------------------- raw access

    def _index(self) -> dict[str, list[str]]:
        """Header lines by name, built once (every edit below drops it)."""
        index = self._idx
        if index is not None:
            return index
        index = {}
        for key, value in self.headers:
            found = index.get(key)
            if found is None:
                index[key] = [value]
            else:
                found.append(value)
        self._idx = index
        return index

    def get(self, name: str) -> str | None:
        found = (self._idx or self._index()).get(name)
        return found[0] if found else None

    def get_all(self, name: str) -> list[str]:
        """Every value of `name`, comma-joined values split for multi-value headers."""
        found = self._index().get(name)
        if not found:
            return []
        if name not in MULTI_VALUE:
            return list(found)
        out: list[str] = []
        for value in found:
            out.extend(split_values(value))
        return out

    def count(self, name: str) -> int:
        found = self._index().get(name)
        return len(found) if found else 0

    def edited(self, name: str) -> None:
        """Forget what was parsed from `name` headers (and the index): call after changing
        them. What was parsed from other headers stays valid."""
        self._idx = None
        self._cache.pop(_DERIVED.get(name, name), None)

    def remove(self, name: str) -> None:
        headers = self.headers
        if any(key == name for key, _ in headers):
            keep = [i for i, (key, _) in enumerate(headers) if key != name]
            self.headers = [headers[i] for i in keep]
            self.names = [self.names[i] for i in keep]
            self.edited(name)

    def set(self, name: str, value: str) -> None:
        """Replace every `name` header with one, at the position of the first."""
        headers = self.headers
        for i, (key, _) in enumerate(headers):
            if key == name:
                if any(key == name for key, _ in headers[i + 1 :]):
                    self.remove(name)
                    headers = self.headers
                    headers.insert(i, (name, value))
                    self.names.insert(i, DISPLAY_NAMES.get(name, name))
                else:  # the common case, one line: replaced where it is
                    headers[i] = (name, value)
                    self.names[i] = DISPLAY_NAMES.get(name, name)
                self.edited(name)
                return
        self.append(name, value)

    def prepend(self, name: str, value: str) -> None:
        self.headers.insert(0, (name, value))
        self.names.insert(0, DISPLAY_NAMES.get(name, name))
        self.edited(name)

    def append(self, name: str, value: str) -> None:
        self.headers.append((name, value))
        self.names.append(DISPLAY_NAMES.get(name, name))
        self.edited(name)

    def set_values(self, name: str, values: list[str]) -> None:
        """Replace every `name` header with one line per value (nothing if empty)."""
        first = next((i for i, (key, _) in enumerate(self.headers) if key == name), None)
        self.remove(name)
        at = len(self.headers) if first is None else first
        for offset, value in enumerate(values):
            self.headers.insert(at + offset, (name, value))
            self.names.insert(at + offset, DISPLAY_NAMES.get(name, name))
        self.edited(name)

    # ---------------------------------------------------------------- parsed fields

    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        """(sequence number, method); validated at parse time."""
        cached = self._cache.get("cseq")
        if cached is None:
            # CSeq = 1*DIGIT LWS Method
            parts = (self.get("cseq") or "").split(None, 1)
            if len(parts) != 2 or not _digits(parts[0]):
                raise ValueError("CSeq is not 1*DIGIT LWS Method")
            cached = (int(parts[0]), parts[1].strip())
            self._cache["cseq"] = cached
        return cached  # type: ignore[return-value]

    @property
    def vias(self) -> list[ViaHop]:
        cached = self._cache.get("vias")
        if cached is None:
            cached = [parse_via(v) for v in self.get_all("via")]
            self._cache["vias"] = cached
        return cached  # type: ignore[return-value]

    @property
    def from_addr(self) -> NameAddr:
        return self._address("from")

    @property
    def to_addr(self) -> NameAddr:
        return self._address("to")

    @property
    def from_tag(self) -> str | None:
        return self.from_addr.parameters.get("tag")

    @property
    def to_tag(self) -> str | None:
        return self.to_addr.parameters.get("tag")

    def _address(self, name: str) -> NameAddr:
        cached = self._cache.get(name)
        if cached is None:
            cached = parse_address(self.get(name) or "")
            self._cache[name] = cached
        return cached  # type: ignore[return-value]

    # ---------------------------------------------------------------- output

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        head = "".join(
            [
                f"{name}: {value}\r\n"
                for (key, value), name in zip(self.headers, self.names, strict=True)
                if key != "content-length"
            ]
        )
        body = self.body
        return f"{self.start_line()}\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


class Request(SipMessage):
    __slots__ = ("method", "uri_text")

    def __init__(
        self,
        method: str,
        uri_text: str,
        headers: list[tuple[str, str]],
        names: list[str],
        body: bytes,
    ) -> None:
        super().__init__(headers, names, body)
        self.method = method
        self.uri_text = uri_text

    def copy(self, uri_text: str | None = None) -> Request:
        """The same request (to `uri_text`, if given), to edit apart from this one; what was
        parsed from its headers comes along."""
        copy = Request(
            self.method,
            self.uri_text if uri_text is None else uri_text,
            list(self.headers),
            list(self.names),
            self.body,
        )
        copy._cache = dict(self._cache)
        return copy

    @property
    def uri(self) -> Uri:
        """The Request-URI; ValueError when it is not a SIP, SIPS or TEL URI."""
        return parse_uri(self.uri_text)

    def start_line(self) -> str:
        return f"{self.method} {self.uri_text} SIP/2.0"


class Response(SipMessage):
    __slots__ = ("reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        names: list[str],
        body: bytes,
    ) -> None:
        super().__init__(headers, names, body)
        self.status = status
        self.reason = reason

    def start_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"


_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-.!%*_+`'~")
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


def _token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None


# Header names as received -> (canonical, display): a plain dict in front of _header_name,
# filled with the first 4096 distinct names (a handful make up nearly every header line).
_NAME_CACHE: dict[str, tuple[str, str]] = {}


def _header_name(name: str) -> tuple[str, str] | None:
    """(canonical name, name to write back) of a header name as received; None if it is not
    a token. Cached: a handful of names make up nearly every header line."""
    name = name.rstrip(" \t")
    if not _token(name):
        return None
    key = canonical_name(name)
    return key, DISPLAY_NAMES.get(key, name)


def _digits(text: str) -> bool:
    """1*DIGIT: ASCII digits only (`int()` also takes "+1", "1_0" and other scripts' digits)."""
    return text.isascii() and text.isdigit()


# Headers a response copies from its request (§8.2.6.2): a request whose line of one of these
# is too long to read cannot be answered.
_COPIED = frozenset(("via", "from", "to", "call-id", "cseq"))


def parse_message(data: bytes, *, datagram: bool = True) -> Request | Response:
    """Parse one whole message. Over UDP (`datagram`) Content-Length may shorten the body and
    a body longer than it is cut (RFC 3261 §18.3); a longer Content-Length than the datagram
    holds is an error. Stream framing is the server's job; pass the exact message here.

    A request too large (513) or with a header line over MAX_HEADER_LENGTH (400) is
    respondable when what an answer copies (Via, From, To, Call-ID, CSeq) is readable."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise _too_large(data)
    return _parse(data, datagram)


def _too_large(data: bytes) -> SipParseError:
    """The error for a message over MAX_MESSAGE_SIZE: 513 if its headers alone (within the
    size bound) make a request that can be answered, else a drop."""
    end = data.find(b"\r\n\r\n", 0, MAX_MESSAGE_SIZE - 3)
    if end >= 0:
        try:
            respondable = isinstance(_parse(data[: end + 4], True, body=False), Request)
        except SipParseError as e:
            respondable = e.respondable  # something else is wrong too, but it can be answered
        if respondable:
            return SipParseError("Message Too Large", respondable=True, status=513)
    return SipParseError("Message Too Large")


def _parse(data: bytes, datagram: bool, *, body: bool = True) -> Request | Response:
    """`parse_message` within the size bound; `body=False`: the headers only (no
    Content-Length check)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        # Lines end in CRLF (RFC 3261 §7); bare LF line ends are not accepted.
        raise SipParseError("No End Of Headers")
    head = data[:end]
    content = data[end + 4 :]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("Headers Are Not UTF-8") from None
    lines = text.split("\r\n")
    # A CR or LF left over is bare: not a line end, and no header value may hold one (it would
    # end the line for a receiver that accepts bare LF, letting a value inject headers).
    bare = text.replace("\r\n", "")
    if "\r" in bare or "\n" in bare:
        raise SipParseError("Bare CR Or LF In Headers")
    first = lines[0]
    if len(first) > MAX_HEADER_LENGTH:
        raise SipParseError("Start Line Too Long")
    bits = first.split(" ", 2)
    if len(bits) != 3:
        raise SipParseError("Bad Start Line")
    # A status line starts with the version; its reason phrase may be anything, "SIP/2.0" too.
    is_request = bits[0] != "SIP/2.0" and bits[2] == "SIP/2.0"
    if not is_request and bits[0] != "SIP/2.0":
        if bits[2].startswith("SIP/") and not bits[0].startswith("SIP/"):
            # A request in another SIP version: answered 505 if its Via can be read (§8.2.2).
            raise SipParseError("Version Not Supported", respondable=True, status=505)
        if bits[0].startswith("SIP/"):
            raise SipParseError("Version Not Supported")
        raise SipParseError("Bad Start Line")

    headers: list[tuple[str, str]] = []
    names: list[str] = []
    # Header lines over MAX_HEADER_LENGTH are left out, by name, and the request is refused
    # once the rest says whether it can be answered.
    too_long: set[str] = set()
    if not _plain_headers(text, lines, headers, names):
        headers, names = _headers(lines, too_long)

    message: Request | Response

    if is_request:
        method, uri_text = bits[0], bits[1]
        if not _token(method):
            raise SipParseError("Bad Method")
        message = Request(method, uri_text, headers, names, content)
    else:
        if not _digits(bits[1]) or len(bits[1]) != 3 or not 100 <= int(bits[1]) <= 699:
            raise SipParseError("Bad Status Code")
        status = int(bits[1])
        message = Response(status, bits[2], headers, names, content)

    if too_long and (not is_request or too_long & _COPIED):
        raise SipParseError("Header Too Long")
    # From here on a request is answerable if its Via, From, To, Call-ID and CSeq are usable.
    _check_mandatory(message)
    if too_long:
        raise SipParseError("Header Too Long", respondable=True, status=400)
    if not body:
        return message
    length_text = message.get("content-length")
    if length_text is not None:
        if not _digits(length_text):
            raise SipParseError("Bad Content-Length", respondable=is_request)
        length = int(length_text)
        if length > len(content):
            raise SipParseError("Content-Length Larger Than Body", respondable=is_request)
        if datagram and length < len(content):
            message.body = content[:length]
        elif not datagram and length != len(content):
            raise SipParseError("Bad Content-Length", respondable=is_request)
    elif not datagram:
        raise SipParseError("Missing Content-Length", respondable=is_request)
    return message


def _plain_headers(
    text: str, lines: list[str], headers: list[tuple[str, str]], names: list[str]
) -> bool:
    """The header lines of the common message, read in one tight loop: no folding, no line
    over MAX_HEADER_LENGTH, every name one we have seen. False (with nothing kept) as soon
    as anything else turns up: `_headers` then reads them, and says what is wrong."""
    if "\r\n " in text or "\r\n\t" in text or len(lines) > MAX_HEADERS + 1:
        return False
    if len(text) > MAX_HEADER_LENGTH and max(map(len, lines)) > MAX_HEADER_LENGTH:
        return False
    cached = _NAME_CACHE.get
    add_header = headers.append
    add_name = names.append
    for i in range(1, len(lines)):
        name, sep, value = lines[i].partition(":")
        known = cached(name)
        if known is None or not sep:
            headers.clear()
            names.clear()
            return False
        add_header((known[0], value.strip()))
        add_name(known[1])
    return True


def _headers(lines: list[str], too_long: set[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Every header line after the start line, unfolded, as (canonical name, value) and the
    names to write back. Lines over MAX_HEADER_LENGTH are left out and named in `too_long`."""
    headers: list[tuple[str, str]] = []
    names: list[str] = []
    skipping = False  # the line before was too long: its folded continuations go with it
    for line in lines[1:]:
        if not line:
            raise SipParseError("Empty Header Line", respondable=False)
        if line[0] in " \t":  # folded continuation (RFC 3261 §7.3.1)
            if skipping:
                continue
            if not headers:
                raise SipParseError("Bad Header Folding")
            key, value = headers[-1]
            headers[-1] = (key, f"{value} {line.strip()}".strip())
            if len(headers[-1][1]) > MAX_HEADER_LENGTH:
                too_long.add(key)
                headers.pop()
                names.pop()
                skipping = True
            continue
        skipping = False
        if len(line) > MAX_HEADER_LENGTH:
            name, sep, _ = line[: MAX_HEADER_LENGTH + 1].partition(":")
            known = _header_name(name) if sep else None
            if known is None:
                raise SipParseError("Header Too Long")  # not even a header name to go by
            too_long.add(known[0])
            skipping = True
            continue
        name, sep, value = line.partition(":")
        known = _NAME_CACHE.get(name) if sep else None
        if known is None:
            known = _header_name(name) if sep else None
            if known is None:
                raise SipParseError("Bad Header Line")
            if len(_NAME_CACHE) < 4096:
                _NAME_CACHE[name] = known
        headers.append((known[0], value.strip()))
        names.append(known[1])
        if len(headers) > MAX_HEADERS:
            raise SipParseError("Too Many Headers")
    return headers, names


def _check_mandatory(message: Request | Response) -> None:
    index = message._index()
    via_lines = index.get("via")
    if not via_lines:
        raise SipParseError("Missing Via")
    for value in via_lines:
        if not split_values(value):
            # A Via line with no value (blank, or only commas): the proxy edits and pops
            # the first value of the first Via line, which must be the top hop.
            raise SipParseError("Bad Via")
    counts = {name: len(index.get(name, ())) for name in _COUNTED}
    try:
        vias = message.vias
    except ValueError:
        raise SipParseError("Bad Via") from None
    if not vias:
        raise SipParseError("Missing Via")
    respondable = isinstance(message, Request)
    for name in MANDATORY:
        if not counts[name]:
            pretty = DISPLAY_NAMES.get(name, name)
            raise SipParseError(f"Missing {pretty}", respondable=respondable)
    if counts.get("content-length", 0) > 1:
        # Two lengths: no way to know where the body ends (§7.3.1 allows one Content-Length).
        raise SipParseError("Duplicate Content-Length", respondable=respondable)
    for name in ("to", "from", "call-id", "cseq"):
        if counts[name] != 1:
            raise SipParseError(f"Duplicate {DISPLAY_NAMES[name]}", respondable=respondable)
    try:
        number, method = message.cseq
    except ValueError:
        raise SipParseError("Bad CSeq", respondable=respondable) from None
    if not 0 <= number < 2**31 or not _token(method):
        raise SipParseError("Bad CSeq", respondable=respondable)
    if isinstance(message, Request) and method != message.method:
        raise SipParseError("CSeq Method Does Not Match", respondable=True)
    if not message.call_id:
        raise SipParseError("Bad Call-ID", respondable=respondable)
    if not respondable:
        return  # a response is routed by its Vias alone: its From and To are read if needed
    for name in ("from", "to"):
        try:
            message._address(name)
        except ValueError:
            raise SipParseError(f"Bad {DISPLAY_NAMES[name]}", respondable=respondable) from None


_COUNTED = frozenset((*MANDATORY, "content-length"))


def replace_first_value(message: Request | Response, name: str, value: str) -> None:
    """Replace the first value of the first `name` header line (values may be comma-joined)."""
    for i, (key, line) in enumerate(message.headers):
        if key == name:
            values = split_values(line)
            values[0] = value
            joined = ", ".join(values)
            message.headers[i] = (key, joined)
            vias = message._cache.get("vias") if name == "via" else None
            index = message._idx
            message.edited(name)
            if index is not None:
                # The first line of `name` is the one that changed: the index stays good.
                index[name][0] = joined
                message._idx = index
            if vias is not None:
                # The top Via changed (received, rport): the hops under it parse as before.
                message._cache["vias"] = [parse_via(value), *vias[1:]]  # type: ignore[index]
            return


def pop_first_value(message: Request | Response, name: str) -> None:
    for i, (key, line) in enumerate(message.headers):
        if key == name:
            values = split_values(line)
            if len(values) > 1:
                message.headers[i] = (key, ", ".join(values[1:]))
            else:
                del message.headers[i]
                del message.names[i]
            message.edited(name)
            return
