"""The registrar: RFC 3261 §10.3 applied to a `BindingStore`, sans-IO.

`register(request, store, aor=..., now=..., policy=..., origin=..., source=...)` returns what
to answer and which binding versions changed (for the replicas). One request is applied all or
nothing: every check runs before the store is touched.

What the dispatcher has already done before calling here: validation (§8.2: Require,
Max-Forwards, methods), the Request-URI domain check (step 1), finding the address-of-record's
owners and authentication (steps 3 and 4).

Two rules phones rely on beyond the contact list itself:

- Order (step 7) holds over every record of the AOR from the request's Call-ID, tombstones
  included: an older CSeq is refused (500), and an equal one asking for what is held is the
  same request again (a retransmission that reached a node holding the binding but not the
  transaction: the other owner, a stand-in, an owner after a failover), answered 200 with
  nothing changed.
- A contact with `+sip.instance` (and `reg-id`) is bound by device rather than by URI
  (RFC 5626 §6, RFC 5627): a new contact of the same instance and reg-id replaces the old one,
  and the 200 gives both parameters back.
"""

from __future__ import annotations

import email.utils
import functools
import math
from dataclasses import dataclass, field, replace

from ._bindings import MAX_FIELD_LENGTH, MAX_PATH, Binding, BindingStore
from ._grammar import Uri
from ._message import Request, parse_address

__all__ = [
    "RegisterOutcome",
    "RegistrarPolicy",
    "aor_of",
    "contact_key",
    "contact_value",
    "instance_key",
    "register",
    "split_aor",
]


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    """Expiry bounds in seconds (RFC 3261 §10.3 step 7; defaults as in config.py)."""

    default_expires: int = 3600
    min_expires: int = 60
    max_expires: int = 7200
    max_contacts: int = 10  # per address-of-record
    # RFC 5626 §4.4.1: the keepalive interval a 200 asks of a UA that registered a flow (its
    # NAT binding must not time out; 30 s keeps most alive).
    flow_timer: int = 30


@dataclass(slots=True)
class RegisterOutcome:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    changes: list[Binding] = field(default_factory=list)


def aor_of(uri: Uri) -> str | None:
    """The canonical address-of-record of a SIP or SIPS URI: `sip:user@host`, host in lower
    case without a trailing dot (the dispatcher takes `example.com.` for `example.com` too),
    user unescaped, no port or parameters (§10.3 step 5). None without a user part."""
    if uri.scheme not in ("sip", "sips") or not uri.user:
        return None
    return f"sip:{uri.user}@{uri.host.lower().rstrip('.')}"


def split_aor(aor: str) -> tuple[str, str]:
    """(user, domain) of a canonical address-of-record as `aor_of` writes it."""
    user, _, domain = aor[len("sip:") :].rpartition("@")
    return user, domain


def contact_key(uri: Uri) -> str:
    """A Contact URI in a form where two URIs that RFC 3261 §19.1.4 calls equal are equal
    (scheme and host without case, user with case, escapes undone, parameters sorted)."""
    params = ";".join(
        f"{k.lower()}={v.lower()}" if v is not None else k.lower()
        for k, v in sorted(uri.parameters.items(), key=lambda kv: kv[0].lower())
    )
    # sipmessage has already undone the escapes: unquoting again would make `a%2541` (user
    # "a%41") equal to `aA`.
    user = uri.user or ""
    port = uri.port if uri.port is not None else ""
    return f"{uri.scheme.lower()}:{user}@{uri.host.lower()}:{port};{params}"


# How far the expiry a retransmission asks for may be from the binding its first copy made:
# a client retransmits a REGISTER for 64*T1 = 32 s (Timer F, RFC 3261 §17.1.2.2), and the
# copy may be compared on another owner, whose clock is a few seconds off.
RETRANSMISSION_WINDOW = 40.0


class _Reject(Exception):
    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(reason)
        self.outcome = RegisterOutcome(status, reason, headers or [])


def _delta(text: str, what: str) -> int:
    text = text.strip()
    # delta-seconds = 1*DIGIT, ASCII only: str.isdigit() also takes "²" (which int() refuses)
    # and other scripts' digits.
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        raise _Reject(400, f"Bad {what}")
    return min(int(text), 2**32 - 1)


def register(
    request: Request,
    store: BindingStore,
    *,
    aor: str,
    now: float,
    policy: RegistrarPolicy,
    origin: str,
    source: str,
) -> RegisterOutcome:
    try:
        outcome = _register(request, store, aor, now, policy, origin, source)
    except _Reject as r:
        return r.outcome
    if outcome.status == 200:
        outcome.headers.extend(_extensions(request, policy))
    return outcome


def _extensions(request: Request, policy: RegistrarPolicy) -> list[tuple[str, str]]:
    """What a 200 to a REGISTER says of Path and outbound: the Path values back, in order, to
    a UA that supports path (RFC 3327 §5.3); `Require: outbound` and a Flow-Timer for a UA
    that registered a flow (a Contact with +sip.instance and reg-id, RFC 5626 §6)."""
    out: list[tuple[str, str]] = [("supported", "path, outbound")]
    supported = {o.lower() for o in request.get_all("supported")}
    if "path" in supported:
        out += [("path", value) for value in request.get_all("path")]
    flows = False
    for value in request.get_all("contact"):
        try:
            params = {k.lower(): v for k, v in parse_address(value).parameters.items()}
            flows = flows or _device(params)[1] != 0  # a reg-id counts with an instance only
        except (ValueError, _Reject):
            continue  # "*", or (refused before a 200) not a device
    if flows and "outbound" in supported:
        out += [("require", "outbound"), ("flow-timer", str(policy.flow_timer))]
    return out


def _stamp(held: Binding | None, now: float, origin: str, cseq: int) -> float:
    """The version stamp of a write replacing `held`: `now`, unless that would not be newer
    than `held` (our clock stepped back, or the write came from a node whose clock is ahead),
    in which case the smallest stamp above it, so the store takes the write."""
    if held is None or (now, origin, cseq) > held.version:
        return now
    return math.nextafter(held.stamp, math.inf)


def _tombstone(
    held: Binding, now: float, policy: RegistrarPolicy, origin: str, call_id: str, cseq: int
) -> Binding:
    """A removal of `held`, kept until any version of it could have expired."""
    stamp = _stamp(held, now, origin, cseq)
    return replace(
        BindingStore.tombstone(held, stamp=stamp, origin=origin, call_id=call_id, cseq=cseq),
        expires_at=max(held.expires_at, stamp + policy.max_expires),
    )


def _register(
    request: Request,
    store: BindingStore,
    aor: str,
    now: float,
    policy: RegistrarPolicy,
    origin: str,
    source: str,
) -> RegisterOutcome:
    call_id = request.call_id
    cseq = request.cseq[0]
    # Whatever we store must survive the trip to the replicas (Binding.from_wire).
    if len(call_id) > MAX_FIELD_LENGTH:
        raise _Reject(400, "Call-ID Too Long")
    if len(aor) > MAX_FIELD_LENGTH:
        raise _Reject(400, "Address Of Record Too Long")
    header_expires: int | None = None
    text = request.get("expires")
    if text is not None:
        header_expires = _delta(text, "Expires")
    values = request.get_all("contact")
    changes: list[Binding] = []
    if not values and request.count("contact"):
        raise _Reject(400, "Bad Contact")  # a Contact header with no value in it

    if values:
        # §10.3 step 7, over every record of the AOR from this Call-ID (a UA registers all
        # its contacts under one Call-ID, §10.2.4), tombstones included: a CSeq below the
        # highest one seen is out of order; an equal one is the same request again, or out of
        # order if it asks for something else.
        same_call = [b for b in store.contacts(aor) if b.call_id == call_id]
        top = max((b.cseq for b in same_call), default=-1)
        if cseq < top:
            raise _Reject(500, "Out Of Order CSeq")
        last = [b for b in same_call if b.cseq == top]
        if any(v.strip() == "*" for v in values):
            # §10.3 step 6: "*" only alone and only with Expires: 0.
            if len(values) != 1 or header_expires != 0:
                raise _Reject(400, "Wildcard Contact Needs Expires 0 And No Other Contact")
            if cseq == top:
                if not all(b.removed for b in last):
                    raise _Reject(500, "Out Of Order CSeq")
                return _ok(store, aor, now, [])  # the removal again: already done
            changes = [
                _tombstone(held, now, policy, origin, call_id, cseq)
                for held in store.contacts(aor)
                if not held.removed
            ]
        else:
            wanted = _wanted(request, values, header_expires, policy)
            if cseq == top:
                if not _same_request(wanted, last, store, aor, now):
                    raise _Reject(500, "Out Of Order CSeq")
                return _ok(store, aor, now, [])  # a retransmission: already applied
            # Kept for the operator (`swimthor location`); too long is cut, not refused.
            user_agent = (request.get("user-agent") or "")[:MAX_FIELD_LENGTH]
            changes = _contacts(
                wanted, store, aor, now, policy, origin, source, call_id, cseq, user_agent,
                _path(request),
            )  # fmt: skip

    held_keys = {b.key for b in store.all(aor)}  # the subscriber counts for the store's size
    new = sum(1 for b in changes if b.key not in held_keys)
    if new and len(store) + new > store.max_bindings:
        # The store would drop them (BindingStore.put): do not answer 200 for bindings we
        # do not keep.
        raise _Reject(503, "Registrar Full", [("retry-after", "60")])

    # All checks passed: apply every change, then answer with the current bindings.
    return _ok(store, aor, now, [b for b in changes if store.put(b)])


def _path(request: Request) -> tuple[str, ...]:
    """The REGISTER's Path values (RFC 3327), top first, each a name-addr; stored with every
    binding the request writes."""
    values = request.get_all("path")
    if len(values) > MAX_PATH:
        raise _Reject(400, "Too Many Path Values")
    for value in values:
        if len(value) > MAX_FIELD_LENGTH:
            raise _Reject(400, "Path Too Long")
        try:
            uri = parse_address(value).uri
        except ValueError:
            raise _Reject(400, "Bad Path") from None
        if uri.scheme not in ("sip", "sips") or not uri.host:
            raise _Reject(400, "Bad Path")
    return tuple(values)


def _ok(store: BindingStore, aor: str, now: float, changes: list[Binding]) -> RegisterOutcome:
    """200 with every current binding of `aor` (§10.3 step 8), with what changed."""
    headers = [("contact", contact_value(b, now)) for b in store.lookup(aor, now)]
    headers.append(("date", _http_date(int(now))))
    return RegisterOutcome(200, "OK", headers, changes)


def contact_value(binding: Binding, now: float) -> str:
    """A binding as a 200 lists it: its URI, the seconds it has left, its q, and the device's
    +sip.instance and reg-id as registered (RFC 5626 §6)."""
    value = f"<{binding.contact}>;expires={max(0, int(binding.expires_at - now + 0.5))}"
    if binding.q != 1.0:
        value += f";q={_q_text(binding.q)}"
    if binding.instance:
        value += f";+sip.instance={binding.instance}"
        if binding.reg_id:
            value += f";reg-id={binding.reg_id}"
    return value


@functools.lru_cache(maxsize=4)
def _http_date(second: int) -> str:
    """The Date header (RFC 3261 §20.17) for a whole second: formatted once per second."""
    return email.utils.formatdate(second, usegmt=True)


def _q_text(q: float) -> str:
    return f"{q:.3f}".rstrip("0").rstrip(".") if q not in (0.0, 1.0) else str(int(q))


@dataclass(frozen=True, slots=True)
class _Wanted:
    """One Contact of a REGISTER, read and checked: what it asks the binding of `key` to be."""

    key: str
    contact: str
    expires: int
    q: float
    instance: str
    reg_id: int


def _wanted(
    request: Request, values: list[str], header_expires: int | None, policy: RegistrarPolicy
) -> list[_Wanted]:
    """Every Contact of the request, in order, each fully checked (all before any change)."""
    out = []
    for value in values:
        try:
            address = parse_address(value)
        except ValueError:
            raise _Reject(400, "Bad Contact") from None
        uri = address.uri
        if uri.scheme not in ("sip", "sips", "tel"):
            raise _Reject(400, "Bad Contact")
        # Parameter names compare without case (RFC 3261 §7.3.1): ";Expires=60" counts.
        params = {k.lower(): v for k, v in address.parameters.items()}
        expires_param = params.get("expires")
        if expires_param is not None:
            expires = _delta(expires_param, "Contact Expires")
        elif header_expires is not None:
            expires = header_expires
        else:
            expires = policy.default_expires
        if 0 < expires < policy.min_expires:
            raise _Reject(423, "Interval Too Brief", [("min-expires", str(policy.min_expires))])
        expires = min(expires, policy.max_expires)
        q = 1.0
        q_text = params.get("q")
        if q_text is not None:
            try:
                q = float(q_text)
            except ValueError:
                raise _Reject(400, "Bad Contact q") from None
            if not 0.0 <= q <= 1.0:
                raise _Reject(400, "Bad Contact q")
        contact = str(uri)
        instance, reg_id = _device(params)
        key = instance_key(instance, reg_id) if instance else contact_key(uri)
        if (
            len(contact) > MAX_FIELD_LENGTH
            or len(key) > MAX_FIELD_LENGTH
            or len(instance) > MAX_FIELD_LENGTH
        ):
            raise _Reject(400, "Contact Too Long")
        out.append(_Wanted(key, contact, expires, q, instance, reg_id))
    return out


def _device(params: dict[str, str | None]) -> tuple[str, int]:
    """(+sip.instance as written, reg-id or 0) of a Contact's parameters. A reg-id without an
    instance is ignored: such a contact is bound by RFC 3261's rules (RFC 5626 §6)."""
    if "+sip.instance" not in params:
        return "", 0
    instance = params["+sip.instance"] or ""
    if not _instance_id(instance):
        raise _Reject(400, "Bad Contact +sip.instance")
    if "reg-id" not in params:
        return instance, 0
    text = params["reg-id"] or ""
    # reg-id = 1*DIGIT, 1 to 2**31 - 1 (RFC 5626 §12)
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or not 0 < int(text) < 2**31:
        raise _Reject(400, "Bad Contact reg-id")
    return instance, int(text)


def _instance_id(instance: str) -> str:
    """The instance-id in comparable form: quotes and angle brackets off, a URN's `urn:` and
    namespace in lower case, and a UUID all in lower case (RFC 4122 §3). Empty if none."""
    text = instance.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    if len(text) >= 2 and text[0] == "<" and text[-1] == ">":
        text = text[1:-1].strip()
    scheme, sep, rest = text.partition(":")
    if sep and scheme.lower() == "urn":
        nid, sep2, nss = rest.partition(":")
        nid = nid.lower()
        text = f"urn:{nid}{sep2}{nss.lower() if nid == 'uuid' else nss}"
    return text


def instance_key(instance: str, reg_id: int = 0) -> str:
    """The binding key of a device's contact (RFC 5626 §6, RFC 5627): its instance-id and
    reg-id, so a new contact of the same device and flow replaces the old one. No contact key
    (`contact_key`, always a `scheme:` of sip, sips or tel) can take this form."""
    key = f"instance:{_instance_id(instance)}"
    return f"{key};reg-id={reg_id}" if reg_id else key


def _same_request(
    wanted: list[_Wanted], last: list[Binding], store: BindingStore, aor: str, now: float
) -> bool:
    """Whether a REGISTER with the Call-ID and CSeq of the records `last` asks for what they
    hold: the same contacts, q and expiry (the time left within what a retransmission can
    lag), the removed ones removed. Then it is that request again (a retransmission reaching a
    node that holds the binding but not the transaction)."""
    final = {w.key: w for w in wanted}  # the same contact twice: the last one counts
    if not last or any(b.key not in final for b in last):
        return False
    held = {b.key: b for b in store.contacts(aor)}
    call_id, cseq = last[0].call_id, last[0].cseq
    for key, w in final.items():
        b = held.get(key)
        if w.expires == 0:
            if b is not None and not b.removed:
                return False
            continue
        if (
            b is None
            or b.removed
            or (b.call_id, b.cseq) != (call_id, cseq)
            or b.contact != w.contact
            or b.q != w.q
            or abs(now + w.expires - b.expires_at) > RETRANSMISSION_WINDOW
        ):
            return False
    return True


def _contacts(
    wanted: list[_Wanted],
    store: BindingStore,
    aor: str,
    now: float,
    policy: RegistrarPolicy,
    origin: str,
    source: str,
    call_id: str,
    cseq: int,
    user_agent: str,
    path: tuple[str, ...] = (),
) -> list[Binding]:
    held = {b.key: b for b in store.contacts(aor)}
    changes: dict[str, Binding] = {}
    for w in wanted:
        key = w.key
        current = held.get(key)
        # The same contact twice in one request: the last one says what happens to it.
        changes.pop(key, None)
        if w.expires == 0:
            if current is not None and not current.removed:
                changes[key] = _tombstone(current, now, policy, origin, call_id, cseq)
            continue
        stamp = _stamp(current, now, origin, cseq)
        changes[key] = Binding(
            aor,
            w.contact,
            key,
            now + w.expires,
            w.q,
            call_id,
            cseq,
            source,
            stamp,
            origin,
            instance=w.instance,
            reg_id=w.reg_id,
            user_agent=user_agent,
            path=path,
        )
    live_before = {k for k, b in held.items() if b.live(now)}
    live_after = set(live_before)
    for key, b in changes.items():
        if b.removed:
            live_after.discard(key)
        else:
            live_after.add(key)
    # Only a request that adds contacts can be refused for their number: one that refreshes
    # or removes must go through even when replicas merged the set past the limit.
    if live_after - live_before and len(live_after) > policy.max_contacts:
        raise _Reject(403, "Too Many Contacts")
    return list(changes.values())
