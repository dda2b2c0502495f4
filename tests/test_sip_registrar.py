"""The registrar, RFC 3261 §10.3, against a `BindingStore`: the address-of-record and contact
forms, expiry (Contact parameter, then Expires, then the default; 423 below the minimum;
clamped to the maximum), the `*` contact, Call-ID/CSeq ordering, queries, q-values, the 200
listing every binding, all-or-nothing updates, the contact limit and the tombstones left by
removals. Requests are parsed from raw bytes; time is passed in."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swimthor.sip import (
    MAX_FIELD_LENGTH,
    Binding,
    BindingStore,
    Peer,
    Proxy,
    ProxySettings,
    RegisterOutcome,
    RegistrarPolicy,
    Replicate,
    Request,
    Response,
    Send,
    Source,
    aor_of,
    contact_key,
    instance_key,
    parse_address,
    parse_message,
    parse_uri,
    register,
)

AOR = "sip:alice@example.com"
POLICY = RegistrarPolicy(default_expires=3600, min_expires=60, max_expires=7200, max_contacts=4)
NOW = 1000.0


def req(
    *headers: str,
    method: str = "REGISTER",
    uri: str = "sip:example.com",
    body: bytes = b"",
    call_id: str = "call-1",
    cseq: int = 1,
) -> Request:
    lines = [
        f"{method} {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1",
        "From: <sip:alice@example.com>;tag=a1",
        "To: <sip:alice@example.com>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Max-Forwards: 70",
        *headers,
        f"Content-Length: {len(body)}",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    assert isinstance(message, Request)
    return message


def reg(
    store: BindingStore,
    *headers: str,
    now: float = NOW,
    call_id: str = "call-1",
    cseq: int = 1,
    policy: RegistrarPolicy = POLICY,
    origin: str = "n1",
    aor: str = AOR,
) -> RegisterOutcome:
    return register(
        req(*headers, call_id=call_id, cseq=cseq),
        store,
        aor=aor,
        now=now,
        policy=policy,
        origin=origin,
        source="udp:10.0.0.2:5060",
    )


def listed(outcome: RegisterOutcome) -> dict[str, dict[str, str | None]]:
    """The Contact values of a 200, as {uri: {param: value}}."""
    out: dict[str, dict[str, str | None]] = {}
    for name, value in outcome.headers:
        if name == "contact":
            uri, _, params = value.partition(">")
            assert uri.startswith("<")
            out[uri[1:]] = {
                k: v or None for k, _, v in (p.partition("=") for p in params.split(";") if p)
            }
    return out


def snapshot(store: BindingStore) -> dict[tuple[str, str], Binding]:
    return {(b.aor, b.key): b for aor in store.aors() for b in store.all(aor)}


def live(store: BindingStore, now: float = NOW, aor: str = AOR) -> list[str]:
    return [b.contact for b in store.lookup(aor, now)]


# ------------------------------------------------------------------------ AOR and contact keys


@pytest.mark.parametrize(
    ("uri", "aor"),
    [
        ("sip:alice@example.com", "sip:alice@example.com"),
        ("sip:alice@EXAMPLE.Com", "sip:alice@example.com"),
        ("sip:Alice@example.com", "sip:Alice@example.com"),  # the user keeps its case
        ("sip:alice@example.com:5070;transport=tcp;user=ip", "sip:alice@example.com"),
        ("sips:alice@example.com", "sip:alice@example.com"),
        ("sip:%61lice@example.com", "sip:alice@example.com"),
        ("sip:alice:secret@example.com", "sip:alice@example.com"),
        ("sip:alice@example.com.", "sip:alice@example.com"),
        ("sip:+4930123@example.com;user=phone", "sip:+4930123@example.com"),
        ("sip:example.com", None),
        ("tel:+4930123", None),
    ],
)
def test_aor_of(uri: str, aor: str | None) -> None:
    assert aor_of(parse_uri(uri)) == aor


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:alice@10.0.0.2", "sip:alice@10.0.0.2"),
        ("sip:alice@Host.Example.com", "sip:alice@host.example.com"),
        ("sip:%61lice@host", "sip:alice@host"),
        ("sip:alice@host;transport=TCP;lr", "sip:alice@host;LR;transport=tcp"),
        ("sip:alice@host:5070", "sip:alice@HOST:5070"),
        ("tel:+4930123", "tel:+4930123"),
    ],
)
def test_contact_keys_that_are_equal(a: str, b: str) -> None:
    assert contact_key(parse_uri(a)) == contact_key(parse_uri(b))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:alice@host", "sip:Alice@host"),  # userinfo compares with case
        ("sip:alice@host", "sips:alice@host"),
        ("sip:alice@host", "sip:alice@host:5060"),  # an explicit default port differs
        ("sip:alice@host:5060", "sip:alice@host:5070"),
        ("sip:alice@host", "sip:bob@host"),
        ("sip:alice@host;transport=tcp", "sip:alice@host;transport=udp"),
        ("sip:alice@host", "sip:alice@host;transport=tcp"),
        # The user of `a%2541` is "a%41", not "aA": escapes are undone once.
        ("sip:a%2541@host", "sip:aA@host"),
    ],
)
def test_contact_keys_that_differ(a: str, b: str) -> None:
    assert contact_key(parse_uri(a)) != contact_key(parse_uri(b))


# ------------------------------------------------------------------------ a first registration


def test_a_registration_stores_and_lists_the_binding() -> None:
    store = BindingStore()
    out = reg(store, "Contact: <sip:alice@10.0.0.2:5060;transport=udp>", call_id="c9", cseq=7)
    assert (out.status, out.reason) == (200, "OK")
    assert listed(out) == {"sip:alice@10.0.0.2:5060;transport=udp": {"expires": "3600"}}
    dates = [v for k, v in out.headers if k == "date"]
    assert dates == [email.utils.formatdate(NOW, usegmt=True)]
    (b,) = out.changes
    assert b == Binding(
        AOR,
        "sip:alice@10.0.0.2:5060;transport=udp",
        contact_key(parse_uri("sip:alice@10.0.0.2:5060;transport=udp")),
        NOW + 3600,
        1.0,
        "c9",
        7,
        "udp:10.0.0.2:5060",
        NOW,
        "n1",
    )
    assert store.all(AOR) == [b]
    assert live(store) == ["sip:alice@10.0.0.2:5060;transport=udp"]


def test_display_names_with_commas_are_one_contact() -> None:
    store = BindingStore()
    out = reg(store, 'Contact: "Alice, desk" <sip:alice@10.0.0.2>;q=0.5')
    assert out.status == 200
    assert list(listed(out)) == ["sip:alice@10.0.0.2"]


def test_a_tel_contact_is_a_binding() -> None:
    store = BindingStore()
    out = reg(store, "Contact: <tel:+4930123>")
    assert out.status == 200
    assert live(store) == ["tel:+4930123"]


@pytest.mark.parametrize(
    "contact",
    ["<mailto:alice@example.com>", "<http://example.com/>", "<sip:alice@10.0.0.2", "<>", "@@"],
)
def test_a_contact_that_is_no_sip_uri_is_a_bad_request(contact: str) -> None:
    store = BindingStore()
    out = reg(store, f"Contact: {contact}")
    assert (out.status, out.reason, out.changes) == (400, "Bad Contact", [])
    assert len(store) == 0


def test_an_empty_contact_header_is_a_bad_request_not_a_query() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>")
    out = reg(store, "Contact: ", cseq=2)
    assert (out.status, out.reason) == (400, "Bad Contact")


# ------------------------------------------------------------------------ expiry


@pytest.mark.parametrize(
    ("headers", "expires"),
    [
        (("Contact: <sip:alice@10.0.0.2>",), 3600),  # the default
        (("Contact: <sip:alice@10.0.0.2>", "Expires: 120"), 120),
        (("Contact: <sip:alice@10.0.0.2>;expires=300", "Expires: 120"), 300),
        (("Contact: <sip:alice@10.0.0.2>;expires=300",), 300),
        # Parameter names compare without case.
        (("Contact: <sip:alice@10.0.0.2>;EXPIRES=300", "Expires: 120"), 300),
        (("Contact: <sip:alice@10.0.0.2>;Expires=90",), 90),
        # A valueless expires parameter is no expires parameter.
        (("Contact: <sip:alice@10.0.0.2>;expires", "Expires: 120"), 120),
        (("Contact: <sip:alice@10.0.0.2>", "Expires: 60"), 60),  # exactly the minimum
        (("Contact: <sip:alice@10.0.0.2>", "Expires: 7200"), 7200),
        (("Contact: <sip:alice@10.0.0.2>", "Expires: 7201"), 7200),  # clamped
        (("Contact: <sip:alice@10.0.0.2>;expires=86400",), 7200),
        (("Contact: <sip:alice@10.0.0.2>", "Expires: 4294967295"), 7200),
        (("Contact: <sip:alice@10.0.0.2>", "Expires: 9999999999"), 7200),
        (("Contact: <sip:alice@10.0.0.2>", "Expires:  0120 "), 120),
    ],
)
def test_expiry_comes_from_the_parameter_then_the_header_then_the_default(
    headers: tuple[str, ...], expires: int
) -> None:
    store = BindingStore()
    out = reg(store, *headers)
    assert out.status == 200
    assert listed(out)["sip:alice@10.0.0.2"]["expires"] == str(expires)
    assert store.all(AOR)[0].expires_at == NOW + expires


def test_the_default_policy_matches_the_config_defaults() -> None:
    p = RegistrarPolicy()
    assert (p.default_expires, p.min_expires, p.max_expires, p.max_contacts) == (
        3600,
        60,
        7200,
        10,
    )


@pytest.mark.parametrize(
    "headers",
    [
        ("Contact: <sip:alice@10.0.0.2>", "Expires: 30"),
        ("Contact: <sip:alice@10.0.0.2>;expires=1", "Expires: 3600"),
        ("Contact: <sip:alice@10.0.0.2>", "Expires: 59"),
    ],
)
def test_too_brief_an_interval_is_423_with_min_expires(headers: tuple[str, ...]) -> None:
    store = BindingStore()
    out = reg(store, *headers)
    assert (out.status, out.reason) == (423, "Interval Too Brief")
    assert out.headers == [("min-expires", "60")]
    assert out.changes == []
    assert len(store) == 0


def test_min_expires_follows_the_policy() -> None:
    policy = RegistrarPolicy(min_expires=300)
    out = reg(BindingStore(), "Contact: <sip:alice@10.0.0.2>", "Expires: 299", policy=policy)
    assert (out.status, out.headers) == (423, [("min-expires", "300")])


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (("Contact: <sip:alice@10.0.0.2>", "Expires: soon"), "Bad Expires"),
        (("Contact: <sip:alice@10.0.0.2>", "Expires: -5"), "Bad Expires"),
        (("Contact: <sip:alice@10.0.0.2>", "Expires: 1.5"), "Bad Expires"),
        (("Contact: <sip:alice@10.0.0.2>", "Expires: 12345678901"), "Bad Expires"),
        (("Contact: <sip:alice@10.0.0.2>", "Expires: "), "Bad Expires"),
        # str.isdigit() says yes to these; delta-seconds is ASCII digits only.
        (("Contact: <sip:alice@10.0.0.2>", "Expires: ²"), "Bad Expires"),
        (("Contact: <sip:alice@10.0.0.2>", "Expires: ٣٠٠"), "Bad Expires"),
        (("Contact: <sip:alice@10.0.0.2>;expires=abc",), "Bad Contact Expires"),
        (("Contact: <sip:alice@10.0.0.2>;expires=-1",), "Bad Contact Expires"),
        (("Expires: x",), "Bad Expires"),  # a query with a bad Expires too
    ],
)
def test_malformed_expiry_is_a_bad_request(headers: tuple[str, ...], reason: str) -> None:
    store = BindingStore()
    out = reg(store, *headers)
    assert (out.status, out.reason, out.changes) == (400, reason, [])
    assert len(store) == 0


def test_the_200_lists_every_binding_with_the_time_it_has_left() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>", "Expires: 3600", now=1000.0)
    out = reg(store, "Contact: <sip:alice@10.0.0.3>", "Expires: 600", now=1100.0, cseq=2)
    assert listed(out) == {
        "sip:alice@10.0.0.2": {"expires": "3500"},
        "sip:alice@10.0.0.3": {"expires": "600"},
    }
    # Fractions of a second round to the nearest second.
    out = reg(store, now=1100.6, cseq=3)
    assert listed(out) == {
        "sip:alice@10.0.0.2": {"expires": "3499"},
        "sip:alice@10.0.0.3": {"expires": "599"},
    }
    # An expired binding is not listed, even before expire() collects it.
    out = reg(store, now=1700.0, cseq=4)
    assert listed(out) == {"sip:alice@10.0.0.2": {"expires": "2900"}}


# ------------------------------------------------------------------------ queries


def test_a_register_without_contact_is_a_query() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>;q=0.4, <sip:alice@10.0.0.3>", "Expires: 900")
    before = snapshot(store)
    out = reg(store, now=NOW + 100, call_id="other", cseq=1)
    assert (out.status, out.changes) == (200, [])
    assert listed(out) == {
        "sip:alice@10.0.0.3": {"expires": "800"},
        "sip:alice@10.0.0.2": {"expires": "800", "q": "0.4"},
    }
    assert snapshot(store) == before
    # A query on an address-of-record with nothing bound lists nothing.
    out = reg(BindingStore())
    assert (out.status, listed(out), out.changes) == (200, {}, [])
    assert [k for k, _ in out.headers] == ["date", "supported"]


def test_a_query_is_not_held_to_cseq_order() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>", cseq=5)
    out = reg(store, cseq=5)
    assert out.status == 200
    assert list(listed(out)) == ["sip:alice@10.0.0.2"]


# ------------------------------------------------------------------------ several contacts, q


def test_several_contacts_and_q_values() -> None:
    store = BindingStore()
    out = reg(
        store,
        "Contact: <sip:alice@10.0.0.2>;q=0.1, <sip:alice@10.0.0.3>;q=1.0",
        "Contact: <sip:alice@10.0.0.4>;q=0.75;expires=120, <sip:alice@10.0.0.5>;q=0",
    )
    assert out.status == 200
    assert len(out.changes) == 4
    # Listed highest q first.
    assert [(u, p.get("q")) for u, p in listed(out).items()] == [
        ("sip:alice@10.0.0.3", None),
        ("sip:alice@10.0.0.4", "0.75"),
        ("sip:alice@10.0.0.2", "0.1"),
        ("sip:alice@10.0.0.5", "0"),
    ]
    assert listed(out)["sip:alice@10.0.0.4"]["expires"] == "120"
    assert {b.contact: b.q for b in store.all(AOR)} == {
        "sip:alice@10.0.0.2": 0.1,
        "sip:alice@10.0.0.3": 1.0,
        "sip:alice@10.0.0.4": 0.75,
        "sip:alice@10.0.0.5": 0.0,
    }


@pytest.mark.parametrize("q", ["2", "1.5", "-0.1", "abc", "nan", "inf"])
def test_a_bad_q_is_a_bad_request(q: str) -> None:
    store = BindingStore()
    out = reg(store, f"Contact: <sip:alice@10.0.0.2>;q={q}")
    assert (out.status, out.reason) == (400, "Bad Contact q")
    assert len(store) == 0


def test_a_q_parameter_name_compares_without_case() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>;Q=0.5")
    assert store.all(AOR)[0].q == 0.5


def test_the_same_contact_twice_in_one_request_the_last_one_counts() -> None:
    store = BindingStore()
    out = reg(store, "Contact: <sip:alice@10.0.0.2>;expires=300, <sip:alice@10.0.0.2>;expires=900")
    assert listed(out) == {"sip:alice@10.0.0.2": {"expires": "900"}}
    assert len(store) == 1
    # Added and removed in the same request: not bound.
    store = BindingStore()
    out = reg(store, "Contact: <sip:alice@10.0.0.2>, <sip:alice@10.0.0.2>;expires=0")
    assert (out.status, listed(out), out.changes) == (200, {}, [])
    assert len(store) == 0


# ------------------------------------------------------------------------ refresh and removal


def test_a_refresh_replaces_the_binding_of_the_same_contact() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2;transport=udp>", "Expires: 600")
    out = reg(
        store,
        "Contact: <sip:alice@10.0.0.2;TRANSPORT=UDP>;q=0.5",
        "Expires: 1200",
        now=NOW + 300,
        cseq=2,
    )
    assert out.status == 200
    (b,) = store.all(AOR)
    assert (b.expires_at, b.q, b.cseq, b.stamp) == (NOW + 300 + 1200, 0.5, 2, NOW + 300)
    assert b.contact == "sip:alice@10.0.0.2;TRANSPORT=UDP"  # as last registered
    assert len(store) == 1


def test_expires_zero_removes_and_leaves_a_tombstone() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>, <sip:alice@10.0.0.3>", call_id="c1", cseq=1)
    out = reg(store, "Contact: <sip:alice@10.0.0.2>;expires=0", now=NOW + 10, call_id="c1", cseq=2)
    assert out.status == 200
    assert list(listed(out)) == ["sip:alice@10.0.0.3"]
    (tomb,) = out.changes
    assert tomb.removed
    assert (tomb.contact, tomb.call_id, tomb.cseq, tomb.stamp, tomb.origin) == (
        "sip:alice@10.0.0.2",
        "c1",
        2,
        NOW + 10,
        "n1",
    )
    # Kept until any copy of the removed binding could have expired.
    assert tomb.expires_at == NOW + 10 + POLICY.max_expires
    assert tomb in store.all(AOR)
    assert live(store, NOW + 10) == ["sip:alice@10.0.0.3"]
    assert len(store) == 2  # the tombstone is stored


def test_expires_header_zero_removes_every_listed_contact() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>, <sip:alice@10.0.0.3>, <sip:alice@10.0.0.4>")
    out = reg(
        store,
        "Contact: <sip:alice@10.0.0.2>, <sip:alice@10.0.0.3>;expires=60",
        "Expires: 0",
        cseq=2,
    )
    assert out.status == 200
    assert sorted(listed(out)) == ["sip:alice@10.0.0.3", "sip:alice@10.0.0.4"]
    assert [b.removed for b in out.changes] == [True, False]


def test_removing_what_is_not_bound_changes_nothing() -> None:
    store = BindingStore()
    out = reg(store, "Contact: <sip:alice@10.0.0.2>;expires=0")
    assert (out.status, out.changes, len(store)) == (200, [], 0)
    # Nor does removing it twice.
    reg(store, "Contact: <sip:alice@10.0.0.2>", cseq=2)
    assert len(reg(store, "Contact: <sip:alice@10.0.0.2>;expires=0", cseq=3).changes) == 1
    out = reg(store, "Contact: <sip:alice@10.0.0.2>;expires=0", cseq=4)
    assert (out.status, out.changes) == (200, [])


def test_a_removed_contact_can_register_again() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>", cseq=1)
    reg(store, "Contact: <sip:alice@10.0.0.2>;expires=0", cseq=2)
    out = reg(store, "Contact: <sip:alice@10.0.0.2>", cseq=3, now=NOW + 1)
    assert out.status == 200
    (b,) = store.all(AOR)
    assert (b.removed, b.cseq) == (False, 3)


# ------------------------------------------------------------------------ Call-ID and CSeq


@pytest.mark.parametrize("cseq", [5, 4, 0])
def test_same_call_id_and_a_cseq_not_higher_is_500_and_changes_nothing(cseq: int) -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>", "Expires: 600", call_id="c1", cseq=5)
    before = snapshot(store)
    for headers in (
        ("Contact: <sip:alice@10.0.0.2>", "Expires: 1200"),
        ("Contact: <sip:alice@10.0.0.2>;expires=0",),
        # All or nothing: the new contact is not added either.
        ("Contact: <sip:alice@10.0.0.9>, <sip:alice@10.0.0.2>",),
    ):
        out = reg(store, *headers, now=NOW + 5, call_id="c1", cseq=cseq)
        assert (out.status, out.reason, out.changes) == (500, "Out Of Order CSeq", [])
        assert snapshot(store) == before


def test_a_higher_cseq_or_another_call_id_updates() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>", call_id="c1", cseq=5)
    out = reg(store, "Contact: <sip:alice@10.0.0.2>;q=0.3", now=NOW + 1, call_id="c1", cseq=6)
    assert out.status == 200
    assert store.all(AOR)[0].q == 0.3
    # Another Call-ID (the phone restarted): any CSeq will do.
    out = reg(store, "Contact: <sip:alice@10.0.0.2>;q=0.2", now=NOW + 2, call_id="c2", cseq=1)
    assert out.status == 200
    (b,) = store.all(AOR)
    assert (b.q, b.call_id, b.cseq) == (0.2, "c2", 1)


def test_the_order_rule_holds_after_a_removal() -> None:
    # The tombstone remembers the removal's Call-ID and CSeq: a delayed older REGISTER of the
    # same call does not bring the contact back.
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>", call_id="c1", cseq=1)
    reg(store, "Contact: <sip:alice@10.0.0.2>;expires=0", call_id="c1", cseq=3)
    out = reg(store, "Contact: <sip:alice@10.0.0.2>", now=NOW + 1, call_id="c1", cseq=2)
    assert (out.status, out.reason) == (500, "Out Of Order CSeq")
    assert live(store, NOW + 1) == []


def test_the_order_rule_spans_every_contact_of_the_call_id() -> None:
    # A UA registers all its contacts under one Call-ID (§10.2.4): CSeq 2 after CSeq 4 is
    # older, whichever contact it names (it used to get 200 and add a binding).
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>", call_id="c1", cseq=4)
    before = snapshot(store)
    for headers in (
        ("Contact: <sip:alice@10.0.0.3>",),
        ("Contact: <sip:alice@10.0.0.3>", "Expires: 0"),
        ("Contact: <sip:alice@10.0.0.2>;expires=0",),
    ):
        out = reg(store, *headers, now=NOW + 1, call_id="c1", cseq=2)
        assert (out.status, out.reason, out.changes) == (500, "Out Of Order CSeq", [])
        assert snapshot(store) == before
    assert live(store, NOW + 1) == ["sip:alice@10.0.0.2"]
    # A higher CSeq for another contact of the same call is the next request: it adds.
    out = reg(store, "Contact: <sip:alice@10.0.0.3>", now=NOW + 1, call_id="c1", cseq=5)
    assert out.status == 200
    assert sorted(live(store, NOW + 1)) == ["sip:alice@10.0.0.2", "sip:alice@10.0.0.3"]


def test_the_order_rule_counts_tombstones_of_other_contacts() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>", call_id="c1", cseq=1)
    reg(store, "Contact: <sip:alice@10.0.0.2>;expires=0", call_id="c1", cseq=6)
    assert live(store) == []
    out = reg(store, "Contact: <sip:alice@10.0.0.3>", now=NOW + 1, call_id="c1", cseq=3)
    assert (out.status, out.reason) == (500, "Out Of Order CSeq")
    assert live(store, NOW + 1) == []
    # Another Call-ID (the phone restarted) is not held to it.
    out = reg(store, "Contact: <sip:alice@10.0.0.3>", now=NOW + 1, call_id="c2", cseq=1)
    assert out.status == 200


# ------------------------------------------------------------------------ retransmissions


def test_the_same_register_again_is_200_with_no_change() -> None:
    """Same Call-ID, CSeq, contacts and expiry: the request again, reaching a node that holds
    what it did (the second owner, a stand-in, an owner after a failover) but not its
    transaction. Answered 200 with the current bindings; no new version, nothing to send."""
    store = BindingStore()
    headers = ("Contact: <sip:alice@10.0.0.2>;q=0.5, <sip:alice@10.0.0.3>", "Expires: 600")
    first = reg(store, *headers, call_id="c1", cseq=7, origin="n2")
    assert first.status == 200
    before = snapshot(store)
    for later in (0.0, 2.0, 31.0):
        out = reg(store, *headers, now=NOW + later, call_id="c1", cseq=7, origin="n3")
        assert (out.status, out.reason, out.changes) == (200, "OK", [])
        assert snapshot(store) == before
        left = str(600 - int(later))
        assert listed(out) == {
            "sip:alice@10.0.0.3": {"expires": left},
            "sip:alice@10.0.0.2": {"expires": left, "q": "0.5"},
        }
    # The contacts written another way that RFC 3261 calls equal: still the same request.
    out = reg(store, "Contact: <sip:alice@10.0.0.3>, <sip:alice@10.0.0.2>;Q=0.5",
              "Expires: 600", call_id="c1", cseq=7)  # fmt: skip
    assert (out.status, out.changes) == (200, [])


@pytest.mark.parametrize(
    "headers",
    [
        ("Contact: <sip:alice@10.0.0.2>", "Expires: 1200"),  # another expiry
        ("Contact: <sip:alice@10.0.0.2>;q=0.3", "Expires: 600"),  # another q
        ("Contact: <sip:alice@10.0.0.2>, <sip:alice@10.0.0.4>", "Expires: 600"),  # one more
        ("Contact: <sip:alice@10.0.0.3>", "Expires: 600"),  # one left out
        ("Contact: <sip:alice@10.0.0.2>;expires=0, <sip:alice@10.0.0.3>", "Expires: 600"),
        ("Contact: *", "Expires: 0"),
    ],
)
def test_the_same_cseq_asking_for_something_else_is_500(headers: tuple[str, ...]) -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>, <sip:alice@10.0.0.3>", "Expires: 600", cseq=7)
    before = snapshot(store)
    out = reg(store, *headers, now=NOW + 1, cseq=7)
    assert (out.status, out.reason, out.changes) == (500, "Out Of Order CSeq", [])
    assert snapshot(store) == before


def test_a_retransmission_long_after_its_first_copy_is_not_taken_for_one() -> None:
    # The expiry it asks for ends more than a retransmission can lag from the binding's.
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>", "Expires: 600", cseq=7)
    out = reg(store, "Contact: <sip:alice@10.0.0.2>", "Expires: 600", now=NOW + 60, cseq=7)
    assert (out.status, out.reason) == (500, "Out Of Order CSeq")


def test_a_removal_again_and_a_wildcard_again_are_200_with_no_change() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>, <sip:alice@10.0.0.3>", call_id="c1", cseq=1)
    removal = ("Contact: <sip:alice@10.0.0.2>;expires=0",)
    assert len(reg(store, *removal, call_id="c1", cseq=2).changes) == 1
    before = snapshot(store)
    out = reg(store, *removal, now=NOW + 1, call_id="c1", cseq=2)
    assert (out.status, out.changes, list(listed(out))) == (200, [], ["sip:alice@10.0.0.3"])
    assert snapshot(store) == before
    star = ("Contact: *", "Expires: 0")
    assert len(reg(store, *star, call_id="c1", cseq=3).changes) == 1
    before = snapshot(store)
    out = reg(store, *star, now=NOW + 1, call_id="c1", cseq=3)
    assert (out.status, out.changes, listed(out)) == (200, [], {})
    assert snapshot(store) == before
    # A wildcard with the CSeq of a registration (not a removal) is out of order.
    reg(store, "Contact: <sip:alice@10.0.0.4>", call_id="c1", cseq=4)
    out = reg(store, *star, call_id="c1", cseq=4)
    assert (out.status, out.reason) == (500, "Out Of Order CSeq")
    # And one older than a tombstone of the call.
    out = reg(store, *star, call_id="c1", cseq=2)
    assert (out.status, out.reason) == (500, "Out Of Order CSeq")


# ------------------------------------------------------------------------ devices (RFC 5626)

INSTANCE = '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'


def test_a_device_that_moves_replaces_its_binding_by_instance_and_reg_id() -> None:
    store = BindingStore()
    out = reg(store, f"Contact: <sip:alice@10.0.0.2:5060>;+sip.instance={INSTANCE};reg-id=1",
              "User-Agent: Phone/1.0", call_id="c1", cseq=1)  # fmt: skip
    assert out.status == 200
    (b,) = out.changes
    assert (b.instance, b.reg_id, b.user_agent) == (INSTANCE, 1, "Phone/1.0")
    assert b.key == instance_key(INSTANCE, 1)
    # New address (wifi to 4G), same device and flow: the old binding is replaced.
    out = reg(store, f"Contact: <sip:alice@192.0.2.9:40000>;+sip.instance={INSTANCE};reg-id=1",
              now=NOW + 5, call_id="c1", cseq=2)  # fmt: skip
    assert out.status == 200
    assert live(store, NOW + 5) == ["sip:alice@192.0.2.9:40000"]
    assert len(store) == 1
    # Its second flow (reg-id 2) is a binding of its own (RFC 5626 §6).
    out = reg(store, f"Contact: <sip:alice@192.0.2.9:40002>;+sip.instance={INSTANCE};reg-id=2",
              now=NOW + 5, call_id="c1", cseq=3)  # fmt: skip
    assert sorted(live(store, NOW + 5)) == [
        "sip:alice@192.0.2.9:40000",
        "sip:alice@192.0.2.9:40002",
    ]
    # The instance is compared as a UUID URN: without case, quotes and brackets aside.
    same = '"<URN:UUID:00000000-0000-1000-8000-aabbccddeeff>"'
    out = reg(store, f"Contact: <sip:alice@192.0.2.9:40004>;+sip.instance={same};reg-id=2",
              now=NOW + 6, call_id="c9", cseq=1)  # fmt: skip
    assert out.status == 200
    assert sorted(live(store, NOW + 6)) == [
        "sip:alice@192.0.2.9:40000",
        "sip:alice@192.0.2.9:40004",
    ]
    # Removing by instance and reg-id removes that flow's binding whatever URI it is sent with.
    out = reg(store, f"Contact: <sip:alice@invalid>;+sip.instance={INSTANCE};reg-id=1;expires=0",
              now=NOW + 7, call_id="c9", cseq=2)  # fmt: skip
    assert out.status == 200
    assert live(store, NOW + 7) == ["sip:alice@192.0.2.9:40004"]


def test_an_instance_alone_is_the_key_too() -> None:
    # RFC 5627 (GRUU) without outbound: the instance alone names the device.
    store = BindingStore()
    reg(store, f"Contact: <sip:alice@10.0.0.2>;+sip.instance={INSTANCE}", call_id="c1", cseq=1)
    reg(store, f"Contact: <sip:alice@10.0.0.7>;+sip.instance={INSTANCE}", call_id="c1", cseq=2)
    (b,) = store.all(AOR)
    assert (b.contact, b.instance, b.reg_id, b.key) == (
        "sip:alice@10.0.0.7",
        INSTANCE,
        0,
        instance_key(INSTANCE),
    )
    # An instance with a reg-id is another flow, a contact without an instance another binding.
    reg(store, f"Contact: <sip:alice@10.0.0.7>;+sip.instance={INSTANCE};reg-id=1", cseq=3)
    reg(store, "Contact: <sip:alice@10.0.0.7>", call_id="c1", cseq=4)
    assert len(store.all(AOR)) == 3


def test_a_reg_id_without_an_instance_is_bound_by_its_uri() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>;reg-id=1", cseq=1)
    reg(store, "Contact: <sip:alice@10.0.0.3>;reg-id=1", cseq=2)
    assert sorted(live(store)) == ["sip:alice@10.0.0.2", "sip:alice@10.0.0.3"]
    assert {(b.instance, b.reg_id) for b in store.all(AOR)} == {("", 0)}


def test_the_200_gives_back_the_instance_and_reg_id() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.1>;q=0.2", cseq=1)
    out = reg(store, f"Contact: <sip:alice@10.0.0.2>;+sip.instance={INSTANCE};reg-id=3",
              f"Contact: <sip:alice@10.0.0.3>;+Sip.Instance={INSTANCE.lower()}",
              "Expires: 600", cseq=2)  # fmt: skip
    contacts = [v for k, v in out.headers if k == "contact"]
    assert len(contacts) == 3
    assert set(contacts) == {
        f"<sip:alice@10.0.0.2>;expires=600;+sip.instance={INSTANCE};reg-id=3",
        f"<sip:alice@10.0.0.3>;expires=600;+sip.instance={INSTANCE.lower()}",
        "<sip:alice@10.0.0.1>;expires=3600;q=0.2",
    }
    # What the 200 lists parses back to the same device.
    for value in contacts:
        address = parse_address(value)
        if "+sip.instance" in address.parameters:
            assert address.parameters["+sip.instance"] in (INSTANCE, INSTANCE.lower())


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        (";+sip.instance", "Bad Contact +sip.instance"),
        (';+sip.instance=""', "Bad Contact +sip.instance"),
        (';+sip.instance="<>"', "Bad Contact +sip.instance"),
        (f";+sip.instance={INSTANCE};reg-id=0", "Bad Contact reg-id"),
        (f";+sip.instance={INSTANCE};reg-id=abc", "Bad Contact reg-id"),
        (f";+sip.instance={INSTANCE};reg-id=2147483648", "Bad Contact reg-id"),
        (f";+sip.instance={INSTANCE};reg-id", "Bad Contact reg-id"),
        (f';+sip.instance="<urn:uuid:{"a" * 2100}>"', "Contact Too Long"),
    ],
)
def test_a_bad_instance_or_reg_id_is_a_bad_request(params: str, reason: str) -> None:
    store = BindingStore()
    out = reg(store, f"Contact: <sip:alice@10.0.0.2>{params}")
    assert (out.status, out.reason) == (400, reason)
    assert len(store) == 0


def test_the_user_agent_is_kept_and_a_long_one_cut() -> None:
    store = BindingStore()
    out = reg(store, "Contact: <sip:alice@10.0.0.2>", "User-Agent: " + "u" * 3000)
    assert out.status == 200
    assert store.all(AOR)[0].user_agent == "u" * MAX_FIELD_LENGTH
    out = reg(store, "Contact: <sip:alice@10.0.0.3>", cseq=2)
    assert {b.contact: b.user_agent for b in store.all(AOR)} == {
        "sip:alice@10.0.0.2": "u" * MAX_FIELD_LENGTH,
        "sip:alice@10.0.0.3": "",
    }
    for b in store.all(AOR):
        assert Binding.from_wire(b.to_wire()) == b


# ------------------------------------------------------------------------ the * contact


def test_star_with_expires_zero_removes_every_binding() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>, <sip:alice@10.0.0.3>", call_id="c1", cseq=1)
    reg(store, "Contact: <sip:alice@10.0.0.4>", call_id="c2", cseq=1)
    out = reg(store, "Contact: *", "Expires: 0", now=NOW + 5, call_id="c3", cseq=1)
    assert (out.status, listed(out)) == (200, {})
    assert len(out.changes) == 3
    assert all(b.removed for b in out.changes)
    assert {(b.call_id, b.cseq, b.stamp) for b in out.changes} == {("c3", 1, NOW + 5)}
    assert live(store, NOW + 5) == []
    assert len(store) == 3  # three tombstones
    # Nothing left to remove: 200 with no changes.
    out = reg(store, "Contact: *", "Expires: 0", now=NOW + 6, call_id="c3", cseq=2)
    assert (out.status, out.changes) == (200, [])


def test_star_on_nothing_bound_is_fine() -> None:
    out = reg(BindingStore(), "Contact: *", "Expires: 0")
    assert (out.status, out.changes, listed(out)) == (200, [], {})


@pytest.mark.parametrize(
    "headers",
    [
        ("Contact: *",),
        ("Contact: *", "Expires: 60"),
        ("Contact: *, <sip:alice@10.0.0.2>", "Expires: 0"),
        ("Contact: <sip:alice@10.0.0.2>, *", "Expires: 0"),
        ("Contact: *", "Contact: <sip:alice@10.0.0.2>", "Expires: 0"),
        ("Contact: *", "Contact: *", "Expires: 0"),
    ],
)
def test_star_only_alone_and_only_with_expires_zero(headers: tuple[str, ...]) -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.3>")
    before = snapshot(store)
    out = reg(store, *headers, cseq=2)
    assert (out.status, out.reason) == (
        400,
        "Wildcard Contact Needs Expires 0 And No Other Contact",
    )
    assert snapshot(store) == before


def test_star_keeps_the_call_id_and_cseq_rule() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>", call_id="c1", cseq=5)
    reg(store, "Contact: <sip:alice@10.0.0.3>", call_id="c2", cseq=1)
    before = snapshot(store)
    # Same Call-ID as one binding and a CSeq not higher: the whole request fails.
    for cseq in (5, 4):
        out = reg(store, "Contact: *", "Expires: 0", call_id="c1", cseq=cseq)
        assert (out.status, out.reason, out.changes) == (500, "Out Of Order CSeq", [])
        assert snapshot(store) == before
    # A higher CSeq removes both, the other Call-ID's binding too.
    out = reg(store, "Contact: *", "Expires: 0", call_id="c1", cseq=6)
    assert out.status == 200
    assert live(store) == []


# ------------------------------------------------------------------------ all or nothing


@pytest.mark.parametrize(
    ("second", "status"),
    [
        ("<mailto:alice@example.com>", 400),
        ("<sip:alice@10.0.0.4>;expires=abc", 400),
        ("<sip:alice@10.0.0.4>;expires=10", 423),
        ("<sip:alice@10.0.0.4>;q=7", 400),
        ("*", 400),
    ],
)
def test_a_later_bad_contact_changes_nothing(second: str, status: int) -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>", "Expires: 600")
    before = snapshot(store)
    out = reg(
        store,
        f"Contact: <sip:alice@10.0.0.2>;expires=0, <sip:alice@10.0.0.3>, {second}",
        now=NOW + 1,
        cseq=2,
    )
    assert out.status == status
    assert out.changes == []
    assert snapshot(store) == before
    assert live(store, NOW + 1) == ["sip:alice@10.0.0.2"]


# ------------------------------------------------------------------------ the contact limit


def test_max_contacts_is_403() -> None:
    store = BindingStore()
    four = ", ".join(f"<sip:alice@10.0.0.{i}>" for i in range(1, 5))
    assert reg(store, f"Contact: {four}").status == 200
    before = snapshot(store)
    out = reg(store, "Contact: <sip:alice@10.0.0.5>", cseq=2)
    assert (out.status, out.reason, out.changes) == (403, "Too Many Contacts", [])
    assert snapshot(store) == before
    # Five in one request on an empty address-of-record: the same.
    out = reg(BindingStore(), f"Contact: {four}, <sip:alice@10.0.0.5>")
    assert out.status == 403
    # Swapping one for another in one request stays within the limit.
    out = reg(
        store, "Contact: <sip:alice@10.0.0.1>;expires=0, <sip:alice@10.0.0.5>", now=NOW + 1, cseq=3
    )
    assert out.status == 200
    assert len(live(store, NOW + 1)) == 4


def test_expired_bindings_do_not_count_against_the_limit() -> None:
    store = BindingStore()
    four = ", ".join(f"<sip:alice@10.0.0.{i}>" for i in range(1, 5))
    reg(store, f"Contact: {four}", "Expires: 60")
    out = reg(store, "Contact: <sip:alice@10.0.0.5>", now=NOW + 61, cseq=2)
    assert out.status == 200
    assert live(store, NOW + 61) == ["sip:alice@10.0.0.5"]


def test_over_the_limit_refreshes_and_removals_still_go_through() -> None:
    # Replicas can merge an address-of-record past the limit (two owners each accepted some).
    store = BindingStore()
    for i in range(1, 7):
        contact = f"sip:alice@10.0.0.{i}"
        key = contact_key(parse_uri(contact))
        store.put(Binding(AOR, contact, key, NOW + 600, 1.0, "c", 1, "s", NOW, "n2"))
    out = reg(store, "Contact: <sip:alice@10.0.0.7>", now=NOW + 1, call_id="x", cseq=1)
    assert (out.status, out.reason) == (403, "Too Many Contacts")
    # Adds nothing new: allowed.
    out = reg(store, "Contact: <sip:alice@10.0.0.1>", "Expires: 900", now=NOW + 1, cseq=2)
    assert out.status == 200
    out = reg(store, "Contact: <sip:alice@10.0.0.2>;expires=0", now=NOW + 1, cseq=3)
    assert out.status == 200
    assert len(live(store, NOW + 1)) == 5
    # Binding the removed contact again adds one while over the limit: refused.
    out = reg(store, "Contact: <sip:alice@10.0.0.2>", now=NOW + 2, cseq=4)
    assert out.status == 403


# ------------------------------------------------------------------------ versions and limits


def test_a_write_wins_over_a_binding_stamped_by_a_clock_ahead_of_ours() -> None:
    # The binding came from a peer whose clock is 50 s ahead, or ours stepped back.
    store = BindingStore()
    contact = "sip:alice@10.0.0.2"
    ahead = Binding(
        AOR, contact, contact_key(parse_uri(contact)), NOW + 650, 1.0, "c1", 1, "s", NOW + 50, "n9"
    )
    store.put(ahead)
    out = reg(store, f"Contact: <{contact}>", "Expires: 3600", call_id="c1", cseq=2)
    assert out.status == 200
    (b,) = store.all(AOR)
    assert (b.cseq, b.expires_at) == (2, NOW + 3600)  # the refresh was kept
    assert b.version > ahead.version
    assert out.changes == [b]
    assert listed(out) == {contact: {"expires": "3600"}}
    # And a removal in the same situation is kept too.
    out = reg(store, f"Contact: <{contact}>;expires=0", call_id="c1", cseq=3)
    assert out.status == 200
    assert store.all(AOR)[0].removed
    assert live(store) == []


def test_two_calls_registering_one_contact_in_the_same_instant() -> None:
    store = BindingStore()
    reg(store, "Contact: <sip:alice@10.0.0.2>;q=0.1", call_id="c1", cseq=1)
    out = reg(store, "Contact: <sip:alice@10.0.0.2>;q=0.9", call_id="c2", cseq=1)
    assert out.status == 200
    (b,) = store.all(AOR)
    assert (b.call_id, b.q) == ("c2", 0.9)


def test_a_full_store_is_503_not_a_200_for_a_binding_not_kept() -> None:
    store = BindingStore(max_bindings=2)
    assert reg(store, "Contact: <sip:alice@10.0.0.2>, <sip:alice@10.0.0.3>").status == 200
    before = snapshot(store)
    out = reg(store, "Contact: <sip:bob@10.0.0.4>", aor="sip:bob@example.com")
    assert (out.status, out.reason) == (503, "Registrar Full")
    assert ("retry-after", "60") in out.headers
    assert snapshot(store) == before
    # What replaces a held binding still fits.
    out = reg(store, "Contact: <sip:alice@10.0.0.2>;expires=0", cseq=2)
    assert out.status == 200
    out = reg(store, "Contact: <sip:alice@10.0.0.3>", "Expires: 900", cseq=3)
    assert out.status == 200


def test_fields_too_long_to_replicate_are_refused() -> None:
    store = BindingStore()
    out = reg(store, "Contact: <sip:alice@10.0.0.2>", call_id="c" * 2049)
    assert (out.status, out.reason) == (400, "Call-ID Too Long")
    long_user = "u" * 2100
    out = reg(store, f"Contact: <sip:{long_user}@10.0.0.2>")
    assert (out.status, out.reason) == (400, "Contact Too Long")
    out = reg(store, "Contact: <sip:alice@10.0.0.2>", aor=f"sip:{long_user}@example.com")
    assert (out.status, out.reason) == (400, "Address Of Record Too Long")
    assert len(store) == 0


_user = st.text(alphabet=st.sampled_from("abcXYZ019-_.!~*'()&=+$,;?/%"), min_size=1, max_size=40)


@given(
    user=_user,
    port=st.none() | st.integers(1, 65535),
    expires=st.integers(0, 10**6),
    q=st.sampled_from(["0", "0.5", "1", "0.001", "1.000"]),
    call_id=st.text(alphabet=st.sampled_from("abc123@.-"), min_size=1, max_size=30),
)
def test_what_the_registrar_stores_can_be_replicated(
    user: str, port: int | None, expires: int, q: str, call_id: str
) -> None:
    user = user.replace("%", "%25")
    hostport = f"10.0.0.2:{port}" if port else "10.0.0.2"
    store = BindingStore()
    out = reg(store, f"Contact: <sip:{user}@{hostport}>;q={q}", f"Expires: {expires}")
    if 0 < expires < POLICY.min_expires:
        assert out.status == 423
        return
    assert out.status == 200
    for b in out.changes:
        assert Binding.from_wire(b.to_wire()) == b
    # And the stored contact is the same URI as registered.
    for b in store.all(AOR):
        assert contact_key(parse_uri(b.contact)) == b.key


# ------------------------------------------------------------------- retransmissions at the proxy


class _Cluster:
    """Three sans-IO proxies wired by hand (as in test_sip_proxy.Net): n1 is no owner, n2 and
    n3 own every address-of-record; a `Replicate` is applied to its peers with `store.merge`
    at once, and sends between nodes are delivered until something leaves the cluster."""

    PHONE = ("10.0.0.2", 5060)

    def __init__(self) -> None:
        ports = {"n1": 5071, "n2": 5072, "n3": 5073}
        self.peers = {n: Peer(n, "127.0.0.1", p) for n, p in ports.items()}
        self.live = dict(self.peers)
        self.nodes = {
            n: Proxy(
                ProxySettings(n, p.host, p.port, frozenset({"example.com"}), policy=POLICY),
                owners=lambda aor, k: [self.live[x] for x in ("n2", "n3") if x in self.live][:k],
                peers=lambda: self.live,
            )
            for n, p in self.peers.items()
        }

    def send(self, node: str, data: bytes) -> list[bytes]:
        """Deliver `data` from the phone to `node`; what came back to the phone."""
        out: list[bytes] = []
        queue = [(node, data, self.PHONE)]
        while queue:
            name, payload, frm = queue.pop(0)
            proxy = self.nodes[name]
            for action in proxy.handle(payload, Source("udp", *frm), NOW):
                if isinstance(action, Replicate):
                    for peer in action.peers:
                        self.nodes[peer].store.merge(action.changes, NOW)
                    action = action.response
                assert isinstance(action, Send), action  # no credentials to fetch: no auth here
                target = next(
                    (
                        n
                        for n, p in self.live.items()
                        if (p.host, p.port) == (action.host, action.port)
                    ),
                    None,
                )
                if target is None:
                    out.append(action.data)
                else:
                    queue.append((target, action.data, (proxy.settings.host, proxy.settings.port)))
        return out


def _register_bytes(contact: str, *, call_id: str = "reg-1", cseq: int = 7) -> bytes:
    return "\r\n".join(
        [
            "REGISTER sip:example.com SIP/2.0",
            "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-retx;rport",
            "From: <sip:alice@example.com>;tag=a1",
            "To: <sip:alice@example.com>",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} REGISTER",
            "Max-Forwards: 70",
            f"Contact: {contact}",
            "Expires: 600",
            "Content-Length: 0",
            "",
            "",
        ]
    ).encode()


@pytest.mark.parametrize("where", ["second owner", "entry after the first owner died"])
def test_a_retransmission_landing_where_the_binding_is_but_not_the_transaction_is_200(
    where: str,
) -> None:
    """The REGISTER was applied on owner n2 and replicated to n3; its retransmission reaches
    n3, which holds the binding but never saw the transaction (the phone's edge failed over,
    or n2 died and n1 now routes to n3). It is answered 200 with the binding, and nothing
    changes: no new version, nothing to replicate."""
    cluster = _Cluster()
    data = _register_bytes("<sip:alice@10.0.0.2:5060>")
    (first,) = cluster.send("n1", data)
    response = parse_message(first)
    assert isinstance(response, Response) and response.status == 200
    held = snapshot(cluster.nodes["n3"].store)
    assert held == snapshot(cluster.nodes["n2"].store) and len(held) == 1
    if where == "second owner":
        answers = cluster.send("n3", data)
    else:
        del cluster.live["n2"]
        answers = cluster.send("n1", data)
    (again,) = answers
    response = parse_message(again)
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (200, "OK")
    assert response.get_all("contact") == ["<sip:alice@10.0.0.2:5060>;expires=600"]
    assert snapshot(cluster.nodes["n3"].store) == held
    assert cluster.nodes["n3"].stats["registers"] == 1
