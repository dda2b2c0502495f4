"""The responses a node makes, and where responses go: a UAS's response to a request
(RFC 3261 §8.2.6) and the 100 (Trying) as bytes; the Via a server transport stamps on receipt
and the port an answer goes back to (§18.2.1-18.2.2, RFC 3581); and the top Via of a response
read from its bytes, for the fast path of one on its way back (§16.7 step 3, §16.11)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ._actions import Send, Source
from ._message import (
    DISPLAY_NAMES,
    MAX_MESSAGE_SIZE,
    Request,
    Response,
    ViaHop,
    replace_first_value,
)
from ._routes import BRANCH_PREFIX

__all__ = ["make_response", "trying_bytes"]


def make_response(
    request: Request,
    status: int,
    reason: str,
    headers: Iterable[tuple[str, str]] = (),
    *,
    to_tag: str | None = None,
    server: str | None = None,
) -> Response:
    """A response to `request` as a UAS builds it (§8.2.6): Via, From, To, Call-ID and CSeq
    copied, a To tag added unless the request had one or the status is 100."""
    out: list[tuple[str, str]] = []
    names: list[str] = []
    for key, value in request.headers:
        if key in _COPIED_TO_RESPONSE:
            if key == "to" and to_tag and status != 100:
                try:
                    tagged = request.to_tag is not None
                except ValueError:  # a To we could not read (the 400 says so): copy it as is
                    tagged = True
                if not tagged:
                    value = f"{value};tag={to_tag}"
            out.append((key, value))
            names.append(DISPLAY_NAMES.get(key, key))
    for key, value in headers:
        out.append((key, value))
        names.append(DISPLAY_NAMES.get(key, key))
    if server:
        out.append(("server", server))
        names.append("Server")
    response = Response(status, reason, out, names, b"")
    # What it copied parses as the request's did: share those fields instead of parsing again.
    cache = request._cache
    for key in ("vias", "cseq", "from"):
        if key in cache:
            response._cache[key] = cache[key]
    return response


_COPIED_TO_RESPONSE = frozenset(("via", "from", "to", "call-id", "cseq"))
_COPIED_TO_TRYING = _COPIED_TO_RESPONSE | {"timestamp"}


def trying_bytes(request: Request, server: str | None = None) -> bytes:
    """The 100 (Trying) for `request`, as bytes: what `make_response` would build (no To tag)
    and the request's Timestamp (§8.2.6.1), written straight out, since every INVITE the
    owner proxies gets one."""
    parts = ["SIP/2.0 100 Trying"]
    for key, value in request.headers:
        if key in _COPIED_TO_TRYING:
            parts.append(f"{DISPLAY_NAMES.get(key, key)}: {value}")
    if server:
        parts.append(f"Server: {server}")
    parts.append("Content-Length: 0\r\n\r\n")
    return "\r\n".join(parts).encode()


def _to_via(response: Response, request: Request, source: Source) -> Send:
    """Where a response we build goes: back on the connection for TCP; for UDP to the
    address the request came from (the `received` our transport records, §18.2.1), at
    the rport if asked for (RFC 3581) or else the sent-by port (§18.2.2). Never to a host
    the sender merely names in its Via: that would reflect our answers anywhere."""
    data = response.to_bytes()
    if source.transport != "udp":
        return Send(source.transport, source.host, source.port, data, source.conn)
    return Send("udp", source.host, _response_port(request.vias[0], source), data)


def _resend(cached: bytes, request: Request, source: Source) -> Send:
    if source.transport != "udp":
        return Send(source.transport, source.host, source.port, cached, source.conn)
    return Send("udp", source.host, _response_port(request.vias[0], source), cached)


def _stamp_received(request: Request, source: Source) -> None:
    """§18.2.1 and RFC 3581, as a server transport does on receipt: the top Via records the
    address the request really came from (`received`), and the port (`rport`) when the client
    asked for it, or always over TCP: a response must go back on this connection (§18.2.2),
    and the connection is known by the client's address. Responses copy this Via."""
    top = request.vias[0]
    text = top.text
    rport_empty = "rport" in top.params and not top.params.get("rport")
    if rport_empty:
        text = _set_rport(text, source.port)
    elif source.transport != "udp" and "rport" not in top.params:
        text += f";rport={source.port}"
        rport_empty = True
    if "received" not in top.params and (rport_empty or top.host.strip("[]") != source.host):
        text += f";received={source.host}"
    if text != top.text:
        replace_first_value(request, "via", text)


def _response_port(top: ViaHop, source: Source) -> int:
    if "rport" in top.params:
        rport = top.params.get("rport")
        if not rport:
            return source.port
        if rport.isascii() and rport.isdigit() and 0 < int(rport) < 65_536:
            return int(rport)
    if top.port is not None:
        return top.port
    return 5061 if top.transport == "TLS" else 5060


def _set_rport(via_text: str, port: int) -> str:
    parts = via_text.split(";")
    return ";".join(f"rport={port}" if p.strip().lower() == "rport" else p for p in parts)


# The CSeq line of a response in its common spelling: the method is group 1.
_CSEQ_LINE = re.compile(rb"\r\nCSeq:[ \t]*\d{1,10}[ \t]+([A-Za-z]{1,32})[ \t]*\r\n")

# A Via header line in any spelling (RFC 3261 §7.3.1: case-insensitive, compact "v").
_ANY_VIA = re.compile(rb"\r\n(?:via|v)[ \t]*:", re.IGNORECASE)


def _top_via_line(data: bytes) -> tuple[int, int, int] | None:
    """Where a response's top Via line is, if the response has the common shape both fast
    paths need: a well-formed status line, no folded line, a `Via: ` line with no Via in
    another spelling above it and a header line after it. (start of the line's CRLF, end
    of the line, end of the headers), or None: the full parser decides."""
    if len(data) > MAX_MESSAGE_SIZE or not data[8:11].isdigit() or data[11:12] != b" ":
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0 or data.find(b"\r\n ", 0, end) >= 0 or data.find(b"\r\n\t", 0, end) >= 0:
        return None  # a folded line (a Via continued on the next one): the parser unfolds
    at = data.find(b"\r\nVia: ", 0, end)
    if at < 0 or _ANY_VIA.search(data, 0, at) is not None:
        return None  # a Via line (compact, other case) above it: not the top one
    line_end = data.find(b"\r\n", at + 7)
    if line_end >= end:
        return None  # the last header: no hop under ours
    return at, line_end, end


def _cut_our_via(
    data: bytes, at: int, line_end: int, prefix: bytes
) -> tuple[str, bytes, bytes] | None:
    """Our Via (written with `prefix`) cut out of the top Via line at `at`: (our branch,
    the response without it, the next hop's Via value), or None if that line is not one
    we wrote or no hop follows."""
    line = data[at + 7 : line_end]
    ours, comma, rest = line.partition(b",")
    branch = ours[len(prefix) - len(BRANCH_PREFIX) :].rstrip(b" \t")
    if not branch or b";" in branch or b"=" in branch:
        return None  # parameters after the branch: not the Via we wrote
    if comma:
        # Several hops on one line (as sipp's UAS writes them): drop the first value.
        if b'"' in line or not rest.strip():
            return None
        nxt = rest.split(b",", 1)[0].strip()
        stripped = data[: at + 7] + rest.lstrip() + data[line_end:]
    elif data.startswith(b"\r\nVia: ", line_end):
        next_end = data.find(b"\r\n", line_end + 7)
        nxt = data[line_end + 7 : next_end]
        if b"," in nxt:
            nxt = nxt.split(b",", 1)[0].strip()
        stripped = data[:at] + data[line_end:]
    else:
        return None  # no hop under ours
    try:
        return branch.decode("ascii"), stripped, nxt
    except UnicodeDecodeError:
        return None
