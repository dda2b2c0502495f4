"""The SIP front-end: parsing, registrar, one-hop stateless proxy, replicated bindings, and the
trio server (UDP, TCP, TLS, WebSocket). See docs/sip.md."""

from ._actions import Send, Source
from ._auth import (
    Credentials,
    NonceMinter,
    Verifier,
    challenges,
    digest_response,
    ha1,
    parse_credentials,
)
from ._bindings import (
    DIGEST_BUCKETS,
    MAX_FIELD_LENGTH,
    MAX_PATH,
    Binding,
    BindingStore,
    aor_bucket,
    subscriber_record,
)
from ._connections import TlsStream
from ._flow import Flow, decode_token, make_token
from ._grammar import parse_uri
from ._hop import Action, FetchCredentials, Peer, ProxySettings, Replicate
from ._message import (
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
    parse_via,
    split_values,
)
from ._proxy import Proxy
from ._registrar import (
    RegisterOutcome,
    RegistrarPolicy,
    aor_of,
    contact_key,
    instance_key,
    register,
)
from ._replication import MAX_LOCATED, LocateError, Replicator, locate_via
from ._responses import make_response
from ._routes import BRANCH_PREFIX, loop_hash
from ._server import TIMER_TICK, SipServer, SipTransportConfig, StreamListen
from ._service import SIP_TAG, SipService, location_reply
from ._streams import (
    BadStream,
    StreamFramer,
    TlsFiles,
    WsFramer,
    client_tls_context,
    server_tls_context,
)
from ._stun import is_stun, stun_binding_response
from ._subscribers import SubscriberJournal
from ._transaction import (
    ClientTransaction,
    Deliver,
    Ended,
    ServerTransaction,
    TimedOut,
    TimerSettings,
    Transmit,
    TransportFailed,
    ack_for,
    cancel_for,
    client_key,
    server_key,
)
from ._transaction import State as TransactionState
from ._txn import PENDING, TIMER_J, ResponseCache, transaction_key

__all__ = [
    "BRANCH_PREFIX",
    "DIGEST_BUCKETS",
    "MAX_FIELD_LENGTH",
    "MAX_HEADERS",
    "MAX_HEADER_LENGTH",
    "MAX_LOCATED",
    "MAX_MESSAGE_SIZE",
    "MAX_PATH",
    "PENDING",
    "SIP_TAG",
    "TIMER_J",
    "TIMER_TICK",
    "Action",
    "BadStream",
    "Binding",
    "BindingStore",
    "ClientTransaction",
    "Credentials",
    "Deliver",
    "Ended",
    "FetchCredentials",
    "Flow",
    "LocateError",
    "NonceMinter",
    "Peer",
    "Proxy",
    "ProxySettings",
    "RegisterOutcome",
    "RegistrarPolicy",
    "Replicate",
    "Replicator",
    "Request",
    "Response",
    "ResponseCache",
    "Send",
    "ServerTransaction",
    "SipParseError",
    "SipServer",
    "SipService",
    "SipTransportConfig",
    "Source",
    "StreamFramer",
    "StreamListen",
    "SubscriberJournal",
    "TimedOut",
    "TimerSettings",
    "TlsFiles",
    "TlsStream",
    "TransactionState",
    "Transmit",
    "TransportFailed",
    "Verifier",
    "ViaHop",
    "WsFramer",
    "ack_for",
    "aor_bucket",
    "aor_of",
    "cancel_for",
    "canonical_name",
    "challenges",
    "client_key",
    "client_tls_context",
    "contact_key",
    "decode_token",
    "digest_response",
    "ha1",
    "instance_key",
    "is_stun",
    "locate_via",
    "location_reply",
    "loop_hash",
    "make_response",
    "make_token",
    "parse_address",
    "parse_credentials",
    "parse_message",
    "parse_uri",
    "parse_via",
    "register",
    "server_key",
    "server_tls_context",
    "split_values",
    "stun_binding_response",
    "subscriber_record",
    "transaction_key",
]
