"""Pure helpers of the proxy's routing (no proxy state): the form of our Via branches and the
loop hash they carry (RFC 3261 §16.3 step 4, §16.6 step 8), the transport a URI or a target
names (§26.2), and whether a phone can only be reached over the flow its request came on
(RFC 5626, and the NAT tests of Kamailio's nathelper). `Hop` (`_hop.py`) builds on them."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re

from ._actions import Source
from ._message import Request, parse_address
from ._streams import STREAM_TRANSPORTS

__all__ = ["BRANCH_PREFIX", "STATEFUL_PREFIX", "uri_transport"]

# Our Via branches: "st" when forwarded statelessly (the entry node), "sf" when a client
# transaction of ours sent it (the owner's branches). Both end in a MAC under the cluster key of
# the branch and the hop a response to it goes back to, so a response to a branch no node of
# ours made (or one re-addressed to another hop) is dropped rather than relayed anywhere.
BRANCH_PREFIX = "z9hG4bK-st-"
STATEFUL_PREFIX = "z9hG4bK-sf-"
assert len(BRANCH_PREFIX) == len(STATEFUL_PREFIX)  # one cut for both (`_cut_our_via`)
_DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})


def _h(*parts: str, size: int = 8) -> str:
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=size).hexdigest()


class _LoopHash:
    """§16.3 step 4 / §16.6 step 8: a hash of the fields that change on a spiral and not on
    a loop, taken from the request as received and computed at most once, when needed. What
    processing may change before then (the Request-URI, the Route set) is kept at once;
    tags, Call-ID and CSeq stay as they are, and are read only if the hash is asked for
    (most requests are answered here: a REGISTER never needs it)."""

    __slots__ = ("_request", "_routes", "_uri", "_value")

    def __init__(self, request: Request) -> None:
        self._request = request
        self._uri = request.uri_text
        self._routes = request.get_all("route")
        self._value: str | None = None

    def value(self) -> str:
        if self._value is None:
            request = self._request
            self._value = _h(
                self._uri,
                request.from_tag or "",
                # The ACK of a non-2xx final carries the answer's To tag, but must take the
                # INVITE's branch (§16.11, §17.2.3): the tag is left out for it.
                "" if request.method == "ACK" else (request.to_tag or ""),
                request.call_id,
                str(request.cseq[0]),
                ",".join(self._routes),
                size=4,
            )
        return self._value


# The branch of our Via at the top of a request we sent (as the kernel hands it back).
_OUR_BRANCH = re.compile(rb";branch=(z9hG4bK-s[tf]-[0-9a-f]+\.[0-9a-f]+\.[0-9a-f]+)")


def loop_hash(request: Request) -> str:
    """The loop hash our branches carry for `request` (§16.3 step 4, §16.6 step 8): a
    request that comes back with it in a Via of ours has looped."""
    return _LoopHash(request).value()


def _branch_loop(branch: str | None) -> str | None:
    """The loop hash in a branch of ours (the middle of `<id>.<loop>.<mac>`)."""
    if not branch or not branch.startswith((BRANCH_PREFIX, STATEFUL_PREFIX)):
        return None
    parts = branch.split(".")
    return parts[1] if len(parts) == 3 else None


def _out_transport(transport: str) -> str:
    """The transport a request goes out on for a target's `transport` parameter: ours if we
    have it, else UDP (unknown values such as SCTP)."""
    return transport if transport in STREAM_TRANSPORTS else "udp"


def uri_transport(uri: object) -> str:
    """A URI's transport: its parameter, else TLS for a `sips:` URI (RFC 3261 §26.2), UDP
    for a `sip:` one."""
    params = getattr(uri, "parameters", {})
    value = params.get("transport") if params else None
    if not value:
        return "tls" if getattr(uri, "scheme", "sip") == "sips" else "udp"
    return str(value).lower()


def _uri_host(host: str) -> str:
    try:
        if ipaddress.ip_address(host.strip("[]")).version == 6:
            return f"[{host.strip('[]')}]"
    except ValueError:
        pass
    return host


def _needs_flow(request: Request, source: Source) -> bool:
    """Whether a phone can only be reached over the flow its REGISTER came on: a stream
    (its connection), a UA asking for outbound (RFC 5626: a Contact with reg-id), or one
    behind NAT, by the tests Kamailio's nathelper makes: the top Via names another address
    or port than the packet came from, or a Contact names a private address the packet
    did not come from. (A Contact that is merely elsewhere is a third-party registration:
    it is reached where it says.)"""
    if source.transport != "udp":
        return True
    top = request.vias[0]
    if top.host.strip("[]") != source.host or (top.port or 5060) != source.port:
        return True
    for value in request.get_all("contact"):
        try:
            address = parse_address(value)
        except ValueError:
            continue  # the registrar refuses it
        if "reg-id" in {k.lower() for k in address.parameters}:
            return True
        host = address.uri.host.strip("[]")
        if host != source.host and _private(host):
            return True
    return False


@functools.lru_cache(maxsize=4096)
def _private(host: str) -> bool:
    """An IP literal in a range only reachable behind some NAT: RFC 1918, RFC 6598 (carrier
    NAT), link-local, unique-local (what nathelper's private-Contact test looks for)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in net for net in _BEHIND_NAT if net.version == ip.version)


_BEHIND_NAT = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
        "fc00::/7", "fe80::/10",
    )
)  # fmt: skip
