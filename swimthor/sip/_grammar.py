"""The SIP grammar we read: URIs, name-addr values and Via values (RFC 3261 §25.1).

Every REGISTER carries a To, a From, a Via and a Contact, and at thousands of requests a second
how these are read is most of the cost of a request. The common, well-formed shapes go through
one compiled regular expression each, strict enough that anything they accept is valid SIP;
whatever they do not accept (quoted display names with escapes, quoted parameter values,
escaped hosts ...) is handed to sipmessage's full grammar, which decides (for Vias that is
`_message.parse_via`, which also reads an IPv6 `received`). Both paths give the same small
types (`Uri`, `NameAddr`, `Via`) with the attribute names sipmessage uses, and keep
the text exactly as received, so a URI is forwarded or stored byte for byte.
"""

from __future__ import annotations

import functools
import re
import urllib.parse

import sipmessage

__all__ = [
    "NameAddr",
    "Uri",
    "Via",
    "match_via",
    "parse_name_addr",
    "parse_uri",
    "split_params",
]

_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_ESCAPED = r"%[0-9A-Fa-f]{2}"
_USER = rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESCAPED})+"
_PASSWORD = rf"(?:[{_UNRESERVED}&=+$,]|{_ESCAPED})*"
_HOSTNAME = (
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.?"
)
_IPV4 = r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
_IPV6REF = r"\[[0-9A-Fa-f:.]+\]"
_HOST = rf"(?:{_IPV4}|{_HOSTNAME}|{_IPV6REF})"
_PARAMCHAR = rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESCAPED})"
_URI_PARAM = rf";{_PARAMCHAR}+(?:={_PARAMCHAR}*)?"
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_GEN_VALUE = rf"(?:{_TOKEN}|{_IPV6REF})"
_GEN_PARAM = rf"\s*;\s*{_TOKEN}(?:\s*=\s*{_GEN_VALUE})?"

_URI_RE = re.compile(
    rf"(sips?):(?:({_USER})(?::({_PASSWORD}))?@)?({_HOST})(?::(\d{{1,5}}))?((?:{_URI_PARAM})*)"
    rf"(\?[^\s<>]*)?\Z",
    re.IGNORECASE,
)
_NAME_ADDR_RE = re.compile(
    # display-name: tokens separated by whitespace (one way only to split them: `(?:T\s*)*`
    # backtracks exponentially on a long token with no `<` after it), or a quoted string.
    rf"\s*((?:{_TOKEN}(?:\s+{_TOKEN})*)?|\"[^\"\\]*\")\s*<([^<>\s]+)>((?:{_GEN_PARAM})*)\s*\Z"
)
_PARAMS_RE = re.compile(rf"(?:{_GEN_PARAM})*\s*\Z")
_VIA_RE = re.compile(
    rf"SIP\s*/\s*2\.0\s*/\s*({_TOKEN})\s+({_HOST})(?:\s*:\s*(\d{{1,5}}))?((?:{_GEN_PARAM})*)\s*\Z",
    re.IGNORECASE,
)


def split_params(text: str) -> dict[str, str | None]:
    """`;a=1;b` (already checked by a pattern above) as {"a": "1", "b": None}; names in
    lower case, the first occurrence wins."""
    out: dict[str, str | None] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        key = name.strip().lower()
        if key not in out:
            out[key] = value.strip() if sep else None
    return out


class Uri:
    """A SIP or SIPS URI (TEL URIs are read by sipmessage and kept in `host=""`)."""

    __slots__ = ("host", "parameters", "password", "port", "scheme", "text", "user")

    def __init__(
        self,
        text: str,
        scheme: str,
        user: str | None,
        password: str | None,
        host: str,
        port: int | None,
        parameters: dict[str, str | None],
    ) -> None:
        self.text = text
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.parameters = parameters

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Uri({self.text!r})"


class NameAddr:
    """A From, To, Contact, Route or Record-Route value: display name, URI, parameters."""

    __slots__ = ("name", "parameters", "text", "uri")

    def __init__(self, text: str, name: str, uri: Uri, parameters: dict[str, str | None]) -> None:
        self.text = text
        self.name = name
        self.uri = uri
        self.parameters = parameters

    def __repr__(self) -> str:
        return f"NameAddr({self.text!r})"


class Via:
    __slots__ = ("host", "params", "port", "text", "transport")

    def __init__(
        self, text: str, transport: str, host: str, port: int | None, params: dict[str, str | None]
    ) -> None:
        self.text = text
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params


@functools.lru_cache(maxsize=65_536)
def parse_uri(text: str) -> Uri:
    """ValueError unless `text` is a SIP, SIPS or TEL URI."""
    text = text.strip()
    m = _URI_RE.match(text)
    if m is not None:
        scheme, user, password, host, port, params, _headers = m.groups()
        port_number = int(port) if port else None
        if port_number is not None and port_number > 65535:
            raise ValueError("URI port out of range")
        return Uri(
            text,
            scheme.lower(),
            urllib.parse.unquote(user) if user and "%" in user else user,
            password,
            host,
            port_number,
            split_params(params) if params else {},
        )
    if len(text) > 2048:
        raise ValueError("URI too long")
    full = sipmessage.URI.parse(text)  # ValueError when it is not a URI at all
    return Uri(
        text,
        full.scheme.lower(),
        full.user,
        full.password,
        full.host,
        full.port,
        {k.lower(): v for k, v in full.parameters.items()},
    )


@functools.lru_cache(maxsize=65_536)
def parse_name_addr(text: str) -> NameAddr:
    """One name-addr or addr-spec with its header parameters; ValueError otherwise."""
    m = _NAME_ADDR_RE.match(text)
    if m is not None:
        name, uri_text, params = m.groups()
        name = name.strip()
        if name.startswith('"'):
            name = name[1:-1]
        return NameAddr(text, name, parse_uri(uri_text), split_params(params) if params else {})
    if "<" not in text and '"' not in text:
        # addr-spec form: the URI runs to the first ";"; what follows are header parameters
        # (RFC 3261 §20: in this form they never belong to the URI).
        uri_text, sep, params = text.strip().partition(";")
        if sep and not _PARAMS_RE.match(";" + params):
            raise ValueError("bad header parameters")
        return NameAddr(text, "", parse_uri(uri_text), split_params(params) if sep else {})
    if len(text) > 8192:
        raise ValueError("address too long")
    full = sipmessage.Address.parse(text)
    return NameAddr(
        text,
        full.name,
        parse_uri(str(full.uri)),
        {k.lower(): v for k, v in full.parameters.items()},
    )


def match_via(text: str) -> Via | None:
    """The common Via shape through one pattern, or None (then use the full grammar)."""
    m = _VIA_RE.match(text)
    if m is None:
        return None
    transport, host, port, params = m.groups()
    return Via(
        text,
        transport.upper(),
        host,
        int(port) if port else None,
        split_params(params) if params else {},
    )
