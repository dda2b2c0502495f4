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
import urllib.parse
from dataclasses import dataclass, field

from sipmessage import URI

from ._bindings import Binding, BindingStore
from ._message import Request, parse_address

__all__ = ["RegisterOutcome", "RegistrarPolicy", "aor_of", "contact_key", "register"]


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


def aor_of(uri: URI) -> str | None:
    """The canonical address-of-record of a SIP or SIPS URI: `sip:user@host`, host in lower
    case, user unescaped, no port or parameters (§10.3 step 5). None without a user part."""
    if uri.scheme not in ("sip", "sips") or not uri.user:
        return None
    return f"sip:{uri.user}@{uri.host.lower()}"


def contact_key(uri: URI) -> str:
    """A Contact URI in a form where two URIs that RFC 3261 §19.1.4 calls equal are equal
    (scheme and host without case, user with case, escapes undone, parameters sorted)."""
    params = ";".join(
        f"{k.lower()}={(v or '').lower()}" if v is not None else k.lower()
        for k, v in sorted(uri.parameters.items(), key=lambda kv: kv[0].lower())
    )
    user = urllib.parse.unquote(uri.user) if uri.user else ""
    port = uri.port if uri.port is not None else ""
    return f"{uri.scheme.lower()}:{user}@{uri.host.lower()}:{port};{params}"


class _Reject(Exception):
    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(reason)
        self.outcome = RegisterOutcome(status, reason, headers or [])


def _delta(text: str, what: str) -> int:
    text = text.strip()
    if not text.isdigit() or len(text) > 10:
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
    header_expires: int | None = None
    text = request.get("expires")
    if text is not None:
        header_expires = _delta(text, "Expires")
    values = request.get_all("contact")
    changes: list[Binding] = []

    if values:
        if any(v.strip() == "*" for v in values):
            # §10.3 step 6: "*" only alone and only with Expires: 0.
            if len(values) != 1 or header_expires != 0:
                raise _Reject(400, "Wildcard Contact Needs Expires 0 And No Other Contact")
            for held in store.all(aor):
                if held.removed:
                    continue
                if held.call_id == call_id and cseq <= held.cseq:
                    raise _Reject(500, "Out Of Order CSeq")
                changes.append(
                    store.tombstone(held, stamp=now, origin=origin, call_id=call_id, cseq=cseq)
                )
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

    # All checks passed: apply every change, then answer with the current bindings.
    final = [
        Binding(
            b.aor,
            b.contact,
            b.key,
            now + policy.max_expires,
            b.q,
            b.call_id,
            b.cseq,
            b.source,
            b.stamp,
            b.origin,
            True,
        )
        if b.removed
        else b
        for b in changes
    ]
    for b in final:
        store.put(b)
    headers = [
        (
            "contact",
            f"<{b.contact}>;expires={max(0, int(b.expires_at - now + 0.5))}"
            + (f";q={_q_text(b.q)}" if b.q != 1.0 else ""),
        )
        for b in store.lookup(aor, now)
    ]
    headers.append(("date", email.utils.formatdate(now, usegmt=True)))
    return RegisterOutcome(200, "OK", headers, final)


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
    held = {b.key: b for b in store.all(aor)}
    changes: dict[str, Binding] = {}
    for value in values:
        try:
            address = parse_address(value)
        except ValueError:
            raise _Reject(400, "Bad Contact") from None
        uri = address.uri
        if uri.scheme not in ("sip", "sips", "tel"):
            raise _Reject(400, "Bad Contact")
        expires_param = address.parameters.get("expires")
        if "expires" in address.parameters and expires_param is not None:
            expires = _delta(expires_param, "Contact Expires")
        elif header_expires is not None:
            expires = header_expires
        else:
            expires = policy.default_expires
        if 0 < expires < policy.min_expires:
            raise _Reject(423, "Interval Too Brief", [("min-expires", str(policy.min_expires))])
        expires = min(expires, policy.max_expires)
        q = 1.0
        q_text = address.parameters.get("q")
        if q_text is not None:
            try:
                q = float(q_text)
            except ValueError:
                raise _Reject(400, "Bad Contact q") from None
            if not 0.0 <= q <= 1.0:
                raise _Reject(400, "Bad Contact q")
        key = contact_key(uri)
        current = held.get(key)
        if current is not None and current.call_id == call_id and cseq <= current.cseq:
            # Same Call-ID and a CSeq not higher: out of order (§10.3 step 7). An equal CSeq
            # is a retransmission the transaction layer answers before we get here.
            raise _Reject(500, "Out Of Order CSeq")
        if expires == 0:
            if current is not None and not current.removed:
                changes[key] = store.tombstone(
                    current, stamp=now, origin=origin, call_id=call_id, cseq=cseq
                )
            continue
        changes[key] = Binding(
            aor, str(uri), key, now + expires, q, call_id, cseq, source, now, origin
        )
    live_after = {k for k, b in held.items() if b.live(now)}
    for key, b in changes.items():
        if b.removed:
            live_after.discard(key)
        else:
            live_after.add(key)
    if len(live_after) > policy.max_contacts:
        raise _Reject(403, "Too Many Contacts")
    return list(changes.values())
