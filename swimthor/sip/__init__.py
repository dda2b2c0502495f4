"""The SIP front-end: parsing, registrar, one-hop stateless proxy, replicated bindings, and the
trio server (UDP, TCP, TLS, WebSocket). See docs/sip.md."""

from ._actions import Send, Source
from ._bindings import Binding, BindingStore
from ._message import Request, Response, SipParseError, parse_message
from ._proxy import Peer, Proxy, ProxySettings, Replicate, make_response
from ._registrar import RegisterOutcome, RegistrarPolicy, aor_of, register
from ._server import SipServer, SipTransportConfig, StreamListen
from ._streams import TlsFiles, client_tls_context, server_tls_context

__all__ = [
    "Binding",
    "BindingStore",
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
    "SipTransportConfig",
    "Source",
    "StreamListen",
    "TlsFiles",
    "aor_of",
    "client_tls_context",
    "make_response",
    "parse_message",
    "register",
    "server_tls_context",
]
