"""Framing of the SIP stream transports, sans-IO: bytes in, SIP messages and bytes to send out.

- TCP and TLS (RFC 3261 §18.3): messages framed by Content-Length, a double CRLF between them
  a keepalive ping answered with one CRLF (RFC 5626 §4.4.1).
- WebSocket (RFC 7118, on RFC 6455 as `wsproto` frames it): the HTTP upgrade must offer the
  subprotocol ``sip``; each WebSocket message is one SIP message, text (UTF-8) or binary; pings
  are answered, a close is echoed; a frame that breaks RFC 6455 (a client frame not masked, a
  bad opcode, invalid UTF-8 in a text frame) or a message over the size bound closes the
  connection with the status RFC 6455 gives for it.

The TLS contexts of the server and of the connections we open are made here too.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from dataclasses import dataclass

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ._message import MAX_MESSAGE_SIZE

__all__ = [
    "STREAM_TRANSPORTS",
    "StreamFramer",
    "TlsFiles",
    "WsFramer",
    "client_tls_context",
    "server_tls_context",
]

# The connection-oriented transports, by their lower-case names (a Via says them in capitals).
STREAM_TRANSPORTS = frozenset(("tcp", "tls", "ws", "wss"))
WS_SUBPROTOCOL = "sip"  # RFC 7118 §4.1
_CLOSE_TOO_BIG = 1009  # RFC 6455 §7.4.1
# The end of an HTTP request head (as h11 reads it: bare LFs too), and the most an upgrade
# request may take before it is refused (h11's own bound is 16 KiB).
_HEAD_END = re.compile(rb"\r?\n\r?\n")
MAX_UPGRADE = 16_384
_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
_REQUEST_LINE = re.compile(rb"[A-Z]+ [!-~]+ HTTP/\d\.\d")
_PRINTABLE = re.compile(rb"[ -~]*")
_PING = b"\r\n\r\n"  # RFC 5626 §4.4.1: a keepalive ping on a stream (the pong is one CRLF)


def _not_http(pre: bytearray) -> bool:
    """Whether the start of an upgrade request cannot be HTTP: its request line has bytes no
    request line has, or is complete and not `METHOD TARGET HTTP/x.y`."""
    line_end = pre.find(b"\n")
    first = bytes(pre if line_end < 0 else pre[:line_end]).rstrip(b"\r")
    if not _PRINTABLE.fullmatch(first):
        return True
    return line_end >= 0 and not _REQUEST_LINE.fullmatch(first)


class BadStream(Exception):
    """What came on the connection cannot be framed: close it."""


class StreamFramer:
    """TCP and TLS: messages framed by Content-Length, CRLF keepalives."""

    __slots__ = ("buf", "partial")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.partial = False  # a message has begun and is not complete yet

    def feed(self, chunk: bytes | bytearray) -> tuple[list[bytes], bytes]:
        """The whole messages `chunk` completes, and what to answer now (a pong). BadStream
        when the framing cannot be trusted any more. How the bytes came in chunks changes
        nothing of what comes out."""
        buf = self.buf
        buf += chunk
        out: list[bytes] = []
        reply = b""
        while True:
            # CRLFs before a start line are ignored (RFC 3261 §7.5), except that a double
            # CRLF among them is a ping, answered with one CRLF (RFC 5626 §4.4.1; one pong
            # however many pings came together).
            lead = len(buf) - len(buf.lstrip(b"\r\n"))
            if lead:
                if _PING in buf[:lead]:
                    reply = b"\r\n"
                    cut = buf.rfind(_PING, 0, lead) + 4
                else:
                    cut = 0
                if lead == len(buf):
                    # Nothing but CRLFs so far: keep the end that may still become a ping
                    # with what comes next ("\r", "\r\n" or "\r\n\r").
                    rest = bytes(buf[cut:])
                    buf.clear()
                    for size in (3, 2, 1):
                        if len(rest) >= size and _PING.startswith(rest[-size:]):
                            buf += rest[-size:]
                            break
                    break
                del buf[:lead]
            framed = take_message(buf)
            if framed is None:
                break
            if framed is _BAD:
                raise BadStream("bad framing")
            assert isinstance(framed, bytes)
            out.append(framed)
        self.partial = bool(buf.strip(b"\r\n"))
        return out, reply

    def frame(self, data: bytes) -> bytes:
        return data


class WsFramer:
    """One WebSocket connection, server side (RFC 7118): the upgrade, then SIP messages."""

    __slots__ = (
        "_origins",
        "_parts",
        "_pre",
        "_size",
        "closed",
        "open",
        "partial",
        "ws",
    )

    def __init__(self, origins: frozenset[str] | None = None) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)
        # The web origins whose pages may open a WebSocket to us (None: any). Browsers send
        # Origin with every upgrade; checking it is the server's defence against another
        # site's page using a visitor's browser to talk SIP to us (RFC 6455 §10.2).
        self._origins = origins
        self.open = False  # the upgrade was accepted
        self.closed = False  # nothing more will be read: close the connection
        self.partial = False
        self._parts: list[bytes] = []  # the message so far, as UTF-8 (what the bound counts)
        self._size = 0
        self._pre = bytearray()  # the upgrade request, until its blank line is in

    def feed(self, chunk: bytes | bytearray) -> tuple[list[bytes], bytes]:
        """The SIP messages `chunk` completes and the bytes to send back (the upgrade's
        answer, pongs, a close). After a close (`closed`), send what is returned and close."""
        if self.open or self.closed:
            return self._feed(bytes(chunk))
        # Until the upgrade is accepted wsproto is given the request alone: what follows
        # its blank line in the same read would be dropped by its handshake (a client must
        # wait for our 101 before it sends frames, RFC 6455 §4.1, but need not be trusted to).
        self._pre += chunk
        end = _HEAD_END.search(self._pre)
        if end is None:
            if len(self._pre) > MAX_UPGRADE:
                self.closed = True
                return [], _TOO_LARGE
            if _not_http(self._pre):
                self.closed = True  # TLS to a ws port, garbage: at once
                return [], _BAD_REQUEST
            return [], b""
        head, rest = bytes(self._pre[: end.end()]), bytes(self._pre[end.end() :])
        self._pre.clear()
        out, reply = self._feed(head)
        if rest and self.open and not self.closed:
            more, more_reply = self._feed(rest)
            out += more
            reply += more_reply
        return out, reply

    def _feed(self, chunk: bytes) -> tuple[list[bytes], bytes]:
        out: list[bytes] = []
        reply = bytearray()
        try:
            self.ws.receive_data(chunk)
            for event in self.ws.events():
                if isinstance(event, Request):
                    # The token as the client spelled it: the answer must name one it offered.
                    offered = {p.strip().lower(): p for p in event.subprotocols}
                    if self._origins is not None and _origin(event) not in self._origins:
                        reply += self._reject(403)
                        break
                    if WS_SUBPROTOCOL in offered:
                        reply += self.ws.send(AcceptConnection(subprotocol=offered[WS_SUBPROTOCOL]))
                        self.open = True
                    else:
                        reply += self._reject(400)
                        break
                elif isinstance(event, TextMessage | BytesMessage):
                    data = event.data.encode() if isinstance(event.data, str) else event.data
                    self._size += len(data)
                    if self._size > MAX_MESSAGE_SIZE:
                        reply += self.ws.send(
                            CloseConnection(code=_CLOSE_TOO_BIG, reason="message too big")
                        )
                        self.closed = True
                        break
                    self._parts.append(bytes(data))
                    if event.message_finished:
                        out.append(self._message())
                elif isinstance(event, Ping):
                    reply += self.ws.send(event.response())
                elif isinstance(event, CloseConnection):
                    # The peer's close, or wsproto's for a frame that broke RFC 6455.
                    with contextlib.suppress(LocalProtocolError):  # cannot echo: just close
                        reply += self.ws.send(event.response())
                    self.closed = True
                    break
        except LocalProtocolError:
            # Something we were about to send that wsproto will not: nothing sane to say.
            self.closed = True
        except ValueError:
            # wsproto reads some upgrade headers as ASCII and lets the error out (a byte over
            # 0x7f in Sec-WebSocket-Protocol, say): a broken upgrade like any other.
            if not self.open:
                reply += self._reject(400)
            self.closed = True
        except RemoteProtocolError as e:
            # A broken HTTP upgrade: wsproto has the answer (400) ready in some cases.
            if e.event_hint is not None:
                with contextlib.suppress(LocalProtocolError):
                    reply += self.ws.send(e.event_hint)
            self.closed = True
        self.partial = bool(self._parts)
        return out, bytes(reply)

    def _reject(self, status: int) -> bytes:
        """Refuse the upgrade with `status` (and close once it is sent)."""
        self.closed = True
        with contextlib.suppress(LocalProtocolError):
            return self.ws.send(
                RejectConnection(
                    status_code=status, headers=[(b"content-length", b"0")], has_body=False
                )
            )
        return b""

    def _message(self) -> bytes:
        parts, self._parts, self._size = self._parts, [], 0
        return b"".join(parts)

    def frame(self, data: bytes) -> bytes:
        """One SIP message as one WebSocket message: text when it is UTF-8 (RFC 7118 §5.1:
        what browsers' SIP stacks expect), else binary."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return self.ws.send(BytesMessage(data=data))
        return self.ws.send(TextMessage(data=text))


def _origin(request: Request) -> str:
    for name, value in request.extra_headers:
        if bytes(name).lower() == b"origin":
            return bytes(value).decode("latin-1").strip().lower().rstrip("/")
    return ""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: str
    key: str
    ca: str | None = None
    verify_client: str = "none"  # "optional" or "required" (config.TLS_VERIFY_CLIENT)


def server_tls_context(files: TlsFiles) -> ssl.SSLContext:
    """The server side: our certificate chain, TLS 1.2 at least, and client certificates
    asked for (`optional`: checked when sent) or demanded (`required`) against `ca`. An
    unreadable or mismatched file is an OSError or ssl.SSLError naming it."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert, files.key)
    if files.verify_client != "none":
        if files.ca:
            ctx.load_verify_locations(files.ca)
        else:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if files.verify_client == "required" else ssl.CERT_OPTIONAL
        )
    return ctx


def client_tls_context(ca: str | None = None) -> ssl.SSLContext:
    """For TLS connections we open (a `sips:` or `transport=tls` target with no flow): the
    peer's certificate checked against `ca`, else the system's roots, and its name."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


_BAD = object()


def take_message(buf: bytearray) -> bytes | object | None:
    """Cut one whole message off the front of `buf` (which StreamFramer.feed has rid of the
    CRLFs before it): bytes, None (need more) or _BAD."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_MESSAGE_SIZE:
            return _BAD
        return None
    head = bytes(buf[:end])
    length: int | None = None
    for line in head.split(b"\r\n")[1:]:
        if line[:1] in (b" ", b"\t"):
            continue  # a folded continuation of the line before: never a header of its own
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = name.rstrip(b" \t").lower()
        if key in (b"content-length", b"l"):
            value = value.strip(b" \t")
            if length is not None or not value.isdigit() or len(value) > 6:
                # A second length, or one that is not 1*DIGIT: no way to know where this
                # message ends, so nothing after it on this connection can be trusted.
                return _BAD
            length = int(value)
        elif key.strip().lower() in (b"content-length", b"l"):
            return _BAD  # a length header under odd whitespace (VT, FF ...): refuse to guess
    if length is None:
        # RFC 3261 §18.3: Content-Length is mandatory on streams. Pass the message on so the
        # parser answers it (400); what follows is framed from after its blank line.
        length = 0
    if length < 0 or end + 4 + length > MAX_MESSAGE_SIZE:
        return _BAD
    total = end + 4 + length
    if len(buf) < total:
        return None
    message = bytes(buf[:total])
    del buf[:total]
    return message
