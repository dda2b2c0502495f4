"""The SIP front-end: parsing, registrar, one-hop stateless proxy, replicated bindings, and the
trio server (UDP, TCP, TLS, WebSocket). See docs/sip.md."""

from ._actions import Send, Source
from ._bindings import Binding, BindingStore
from ._grammar import parse_uri
from ._hop import Peer, ProxySettings, Replicate
from ._message import Request, Response, SipParseError, parse_message
from ._proxy import Proxy
from ._registrar import RegisterOutcome, RegistrarPolicy, aor_of, register
from ._replication import LocateError, locate_via
from ._responses import make_response
from ._server import SipServer, SipTransportConfig, StreamListen
from ._service import SIP_TAG, SipService
from ._streams import TlsFiles, client_tls_context, server_tls_context

__all__ = [
    "SIP_TAG",
    "Binding",
    "BindingStore",
    "LocateError",
    "Peer",
    "Proxy",
    "ProxySettings",
    "RegisterOutcome",
    "RegistrarPolicy",
    "Replicate",
    "Request",
    "Response",
    "Send",
    "SipParseError",
    "SipServer",
    "SipService",
    "SipTransportConfig",
    "Source",
    "StreamListen",
    "TlsFiles",
    "aor_of",
    "client_tls_context",
    "locate_via",
    "make_response",
    "parse_message",
    "parse_uri",
    "register",
    "server_tls_context",
]
