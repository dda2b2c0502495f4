"""Digest authentication in the proxy (sans-IO): REGISTER challenged with 401 at the AOR's
owner, INVITE from outside by one of our users challenged with 407 at the entry node;
wrong, replayed, stale and borrowed credentials refused; a refused REGISTER changes nothing;
a node that does not own the caller fetches its credentials first."""

from __future__ import annotations

import itertools

from swimthor.sip import (
    BRANCH_PREFIX,
    Action,
    Credentials,
    FetchCredentials,
    NonceMinter,
    Peer,
    Proxy,
    ProxySettings,
    Send,
    Source,
    Verifier,
    digest_response,
    ha1,
    parse_credentials,
    subscriber_record,
)

DOMAIN = "example.com"
SECRET = [b"s" * 32]
_n = itertools.count(1)


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def make_proxy(clock: Clock, *, owner: bool = True) -> Proxy:
    me = Peer("n1", "10.0.0.1", 5060)
    other = Peer("n2", "10.0.0.2", 5060)
    owners = [me, other] if owner else [other]
    settings = ProxySettings("n1", "10.0.0.1", 5060, frozenset({DOMAIN}), auth=True)
    proxy = Proxy(settings, owners=lambda aor, n: owners, peers=lambda: {"n1": me, "n2": other})
    proxy.verifier = Verifier(NonceMinter(lambda: SECRET, clock=clock))
    return proxy


def add_subscriber(proxy: Proxy, user: str, password: str, now: float) -> None:
    creds = Credentials.from_password(user, DOMAIN, password).to_text()
    proxy.store.put(subscriber_record(f"sip:{user}@{DOMAIN}", creds, stamp=now, origin="n1"))


PHONE = Source("udp", "192.0.2.10", 5062)


def register(user: str, *, auth: str | None = None, cseq: int = 1, call_id: str = "c1") -> bytes:
    lines = [
        f"REGISTER sip:{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-{next(_n)}",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{DOMAIN}>;tag=f{cseq}",
        f"To: <sip:{user}@{DOMAIN}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{user}@192.0.2.10:5062>",
        "Expires: 600",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def invite(caller: str, callee: str, *, auth: str | None = None, cseq: int = 1) -> bytes:
    lines = [
        f"INVITE sip:{callee}@{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-{next(_n)}",
        "Max-Forwards: 70",
        f"From: <sip:{caller}@{DOMAIN}>;tag=inv{cseq}",
        f"To: <sip:{callee}@{DOMAIN}>",
        "Call-ID: call-1",
        f"CSeq: {cseq} INVITE",
        "Contact: <sip:x@192.0.2.10:5062>",
    ]
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def answer(actions: list[Action]) -> tuple[int, bytes]:
    sends = [a for a in actions if isinstance(a, Send)]
    assert len(sends) == 1, actions
    data = sends[0].data
    return int(data.split(b" ", 2)[1]), data


def routed_to(actions: list[Action]) -> tuple[str, int]:
    """Where the one request these actions forward goes."""
    sends = [a for a in actions if isinstance(a, Send)]
    assert len(sends) == 1 and sends[0].data.startswith(b"INVITE "), actions
    return (sends[0].host, sends[0].port)


def challenge_params(data: bytes, header: bytes) -> list[dict[str, str]]:
    out = []
    for line in data.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == header:
            params = parse_credentials(value.decode().strip())
            assert params is not None
            out.append(params)
    return out


def credentials(
    challenge: dict[str, str],
    user: str,
    password: str,
    method: str,
    uri: str,
    nc: str = "00000001",
    *,
    as_user: str | None = None,
) -> str:
    algorithm = challenge["algorithm"]
    h = ha1(user, DOMAIN, password, algorithm)
    response = digest_response(
        algorithm, h, method, uri, challenge["nonce"], qop="auth", nc=nc, cnonce="cn"
    )
    return (
        f'Digest username="{as_user or user}", realm="{DOMAIN}", nonce="{challenge["nonce"]}", '
        f'uri="{uri}", response="{response}", algorithm={algorithm}, qop=auth, nc={nc}, '
        'cnonce="cn"'
    )


def test_register_is_challenged_then_accepted_and_a_refusal_changes_nothing() -> None:
    clock = Clock()
    proxy = make_proxy(clock)
    add_subscriber(proxy, "alice", "s3cret", clock.t)
    status, data = answer(proxy.handle(register("alice"), PHONE, clock.t))
    assert status == 401
    offered = challenge_params(data, b"www-authenticate")
    assert [c["algorithm"] for c in offered] == ["SHA-256", "MD5"]
    assert proxy.store.lookup(f"sip:alice@{DOMAIN}", clock.t) == []
    for algorithm_choice in offered:
        wrong = credentials(algorithm_choice, "alice", "guess", "REGISTER", f"sip:{DOMAIN}")
        status, _ = answer(proxy.handle(register("alice", auth=wrong, cseq=2), PHONE, clock.t))
        assert status == 401
        assert proxy.store.lookup(f"sip:alice@{DOMAIN}", clock.t) == []
    good = credentials(offered[0], "alice", "s3cret", "REGISTER", f"sip:{DOMAIN}")
    actions = proxy.handle(register("alice", auth=good, cseq=3), PHONE, clock.t)
    # Applied here and to be replicated to the other owner before the 200.
    assert len(proxy.store.lookup(f"sip:alice@{DOMAIN}", clock.t)) == 1
    assert proxy.stats["authenticated"] == 1 and proxy.stats["auth_failed"] == 2
    assert actions and not isinstance(actions[0], Send)
    # The same credentials again (a replay, not a retransmission: a new transaction).
    status, _ = answer(proxy.handle(register("alice", auth=good, cseq=4), PHONE, clock.t))
    assert status == 401


def test_register_for_someone_else_or_unknown_is_refused() -> None:
    clock = Clock()
    proxy = make_proxy(clock)
    add_subscriber(proxy, "alice", "s3cret", clock.t)
    add_subscriber(proxy, "mallory", "m4l", clock.t)
    _, data = answer(proxy.handle(register("alice"), PHONE, clock.t))
    ch = challenge_params(data, b"www-authenticate")[0]
    # mallory's own good credentials do not register alice.
    borrowed = credentials(ch, "mallory", "m4l", "REGISTER", f"sip:{DOMAIN}")
    status, _ = answer(proxy.handle(register("alice", auth=borrowed, cseq=2), PHONE, clock.t))
    assert status == 401
    # A user with no subscriber record is challenged, and refused whatever it answers.
    _, data = answer(proxy.handle(register("nobody"), PHONE, clock.t))
    ch = challenge_params(data, b"www-authenticate")[0]
    guess = credentials(ch, "nobody", "x", "REGISTER", f"sip:{DOMAIN}")
    status, _ = answer(proxy.handle(register("nobody", auth=guess, cseq=2), PHONE, clock.t))
    assert status == 401
    assert proxy.store.lookup(f"sip:alice@{DOMAIN}", clock.t) == []
    assert proxy.store.lookup(f"sip:nobody@{DOMAIN}", clock.t) == []


def test_a_stale_nonce_is_challenged_again_with_stale_true() -> None:
    clock = Clock()
    proxy = make_proxy(clock)
    add_subscriber(proxy, "alice", "s3cret", clock.t)
    _, data = answer(proxy.handle(register("alice"), PHONE, clock.t))
    ch = challenge_params(data, b"www-authenticate")[0]
    clock.t += 400
    good_but_old = credentials(ch, "alice", "s3cret", "REGISTER", f"sip:{DOMAIN}")
    status, data = answer(
        proxy.handle(register("alice", auth=good_but_old, cseq=2), PHONE, clock.t)
    )
    assert status == 401
    assert all(c.get("stale") == "true" for c in challenge_params(data, b"www-authenticate"))
    assert proxy.store.lookup(f"sip:alice@{DOMAIN}", clock.t) == []


def test_invite_from_outside_is_challenged_with_407_and_then_routed() -> None:
    clock = Clock()
    proxy = make_proxy(clock)
    add_subscriber(proxy, "alice", "s3cret", clock.t)
    status, data = answer(proxy.handle(invite("alice", "bob"), PHONE, clock.t))
    assert status == 407
    ch = challenge_params(data, b"proxy-authenticate")[0]
    # The ACK of our 407 is ours to absorb.
    to_line = next(line for line in data.split(b"\r\n") if line.lower().startswith(b"to:"))
    ack = invite("alice", "bob").replace(b"INVITE sip", b"ACK sip", 1)
    ack = ack.replace(b"CSeq: 1 INVITE", b"CSeq: 1 ACK").replace(
        f"To: <sip:bob@{DOMAIN}>".encode(), to_line
    )
    assert proxy.handle(ack, PHONE, clock.t) == []
    good = credentials(ch, "alice", "s3cret", "INVITE", f"sip:bob@{DOMAIN}")
    # Past authentication the request is routed: bob has no binding here, so it goes on to
    # his other owner (which may hold one this node has not been handed yet).
    assert routed_to(proxy.handle(invite("alice", "bob", auth=good, cseq=2), PHONE, clock.t)) == (
        "10.0.0.2",
        5060,
    )
    assert proxy.stats["authenticated"] == 1


def test_invite_from_a_foreign_caller_or_a_member_is_not_challenged() -> None:
    clock = Clock()
    proxy = make_proxy(clock)
    data = invite("alice", "bob").replace(f"<sip:alice@{DOMAIN}>".encode(), b"<sip:x@other.net>")
    # An inbound call from another domain: routed (on to bob's other owner), no challenge.
    assert routed_to(proxy.handle(data, PHONE, clock.t)) == ("10.0.0.2", 5060)
    member = Source("udp", "10.0.0.2", 5060)
    relayed = invite("alice", "bob").replace(
        b"Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-",
        (
            f"Via: SIP/2.0/UDP 10.0.0.2:5060;branch={BRANCH_PREFIX}x\r\n"
            "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-"
        ).encode(),
    )
    status, _ = answer(proxy.handle(relayed, member, clock.t))
    assert status == 480  # authenticated by the entry node already


def test_a_node_that_does_not_own_the_caller_fetches_its_credentials() -> None:
    clock = Clock()
    proxy = make_proxy(clock, owner=False)
    _, data = answer(proxy.handle(invite("alice", "bob"), PHONE, clock.t))
    ch = challenge_params(data, b"proxy-authenticate")[0]
    good = credentials(ch, "alice", "s3cret", "INVITE", f"sip:bob@{DOMAIN}")
    request = invite("alice", "bob", auth=good, cseq=2)
    actions = proxy.handle(request, PHONE, clock.t)
    assert len(actions) == 1 and isinstance(actions[0], FetchCredentials)
    fetch = actions[0]
    assert fetch.aor == f"sip:alice@{DOMAIN}" and fetch.owners == ["n2"]
    # The owner answered with alice's record: handled again, the INVITE goes on to bob's
    # owner (n2 too here).
    record = subscriber_record(
        fetch.aor,
        Credentials.from_password("alice", DOMAIN, "s3cret").to_text(),
        stamp=clock.t,
        origin="n2",
    )
    proxy.remember_credentials(fetch.aor, record, clock.t)
    again = proxy.handle(fetch.data, fetch.source, clock.t)
    assert len(again) == 1 and isinstance(again[0], Send)
    assert again[0].host == "10.0.0.2" and again[0].data.startswith(b"INVITE ")
    # An owner that holds no such subscriber: the caller is challenged again.
    proxy.remember_credentials("sip:eve@example.com", None, clock.t)
    _, data = answer(proxy.handle(invite("eve", "bob"), PHONE, clock.t))
    ch = challenge_params(data, b"proxy-authenticate")[0]
    guess = credentials(ch, "eve", "x", "INVITE", f"sip:bob@{DOMAIN}")
    status, _ = answer(proxy.handle(invite("eve", "bob", auth=guess, cseq=3), PHONE, clock.t))
    assert status == 407
