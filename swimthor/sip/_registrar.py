"""The registrar: RFC 3261 §10.3 applied to a `BindingStore`, sans-IO.

`register(request, store, aor=..., now=..., policy=..., origin=..., source=...)` returns what
to answer and which binding versions changed (for the replicas). One request is applied all or
nothing: every check runs before the store is touched.

What the dispatcher has already done before calling here: validation (§8.2: Require,
Max-Forwards, methods), the Request-URI domain check (step 1) and finding the
address-of-record's owners. Authentication (steps 3 and 4) is not here yet.
"""

from __future__ import annotations

import email.utils
import functools
import math
from dataclasses import dataclass, field, replace

from ._bindings import MAX_FIELD_LENGTH, Binding, BindingStore
from ._grammar import Uri
from ._message import Request, parse_address

__all__ = [
    "RegisterOutcome",
    "RegistrarPolicy",
    "aor_of",
    "contact_key",
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
        return _register(request, store, aor, now, policy, origin, source)
    except _Reject as r:
        return r.outcome


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
        if any(v.strip() == "*" for v in values):
            # §10.3 step 6: "*" only alone and only with Expires: 0.
            if len(values) != 1 or header_expires != 0:
                raise _Reject(400, "Wildcard Contact Needs Expires 0 And No Other Contact")
            for held in store.contacts(aor):
                if held.removed:
                    continue
                if held.call_id == call_id and cseq <= held.cseq:
                    raise _Reject(500, "Out Of Order CSeq")
                changes.append(_tombstone(held, now, policy, origin, call_id, cseq))
        else:
            changes = _contacts(
                request,
                store,
                aor,
                values,
                header_expires,
                now,
                policy,
                origin,
                source,
                call_id,
                cseq,
            )

    held_keys = {b.key for b in store.all(aor)}  # the subscriber counts for the store's size
    new = sum(1 for b in changes if b.key not in held_keys)
    if new and len(store) + new > store.max_bindings:
        # The store would drop them (BindingStore.put): do not answer 200 for bindings we
        # do not keep.
        raise _Reject(503, "Registrar Full", [("retry-after", "60")])

    # All checks passed: apply every change, then answer with the current bindings.
    final = [b for b in changes if store.put(b)]
    headers = [
        (
            "contact",
            f"<{b.contact}>;expires={max(0, int(b.expires_at - now + 0.5))}"
            + (f";q={_q_text(b.q)}" if b.q != 1.0 else ""),
        )
        for b in store.lookup(aor, now)
    ]
    headers.append(("date", _http_date(int(now))))
    return RegisterOutcome(200, "OK", headers, final)


@functools.lru_cache(maxsize=4)
def _http_date(second: int) -> str:
    """The Date header (RFC 3261 §20.17) for a whole second: formatted once per second."""
    return email.utils.formatdate(second, usegmt=True)


def _q_text(q: float) -> str:
    return f"{q:.3f}".rstrip("0").rstrip(".") if q not in (0.0, 1.0) else str(int(q))


def _contacts(
    request: Request,
    store: BindingStore,
    aor: str,
    values: list[str],
    header_expires: int | None,
    now: float,
    policy: RegistrarPolicy,
    origin: str,
    source: str,
    call_id: str,
    cseq: int,
) -> list[Binding]:
    held = {b.key: b for b in store.contacts(aor)}
    changes: dict[str, Binding] = {}
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
        key = contact_key(uri)
        contact = str(uri)
        if len(contact) > MAX_FIELD_LENGTH or len(key) > MAX_FIELD_LENGTH:
            raise _Reject(400, "Contact Too Long")
        current = held.get(key)
        if current is not None and current.call_id == call_id and cseq <= current.cseq:
            # Same Call-ID and a CSeq not higher: out of order (§10.3 step 7). An equal CSeq
            # is a retransmission the transaction layer answers before we get here.
            raise _Reject(500, "Out Of Order CSeq")
        # The same contact twice in one request: the last one says what happens to it.
        changes.pop(key, None)
        if expires == 0:
            if current is not None and not current.removed:
                changes[key] = _tombstone(current, now, policy, origin, call_id, cseq)
            continue
        stamp = _stamp(current, now, origin, cseq)
        changes[key] = Binding(
            aor, contact, key, now + expires, q, call_id, cseq, source, stamp, origin
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
