"""Digest authentication arithmetic, nonces, credential parsing and replay refusal
(swimthor/sip/_auth.py): known answers from RFC 2617 and RFC 7616, and what must be refused."""

from __future__ import annotations

import pytest

from swimthor.sip import (
    Credentials,
    NonceMinter,
    Verifier,
    challenges,
    digest_response,
    ha1,
    parse_credentials,
)


def test_rfc2617_md5_example() -> None:
    h = ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    got = digest_response(
        "MD5", h, "GET", "/dir/index.html", "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth", nc="00000001", cnonce="0a4f113b",
    )  # fmt: skip
    assert got == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_examples(algorithm: str, expected: str) -> None:
    h = ha1("Mufasa", "http-auth@example.org", "Circle of Life", algorithm)
    got = digest_response(
        algorithm, h, "GET", "/dir/index.html", "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        qop="auth", nc="00000001", cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )  # fmt: skip
    assert got == expected


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def test_nonces_are_stateless_shared_across_nodes_and_expire() -> None:
    clock = Clock()
    secret = [b"k" * 32]
    a = NonceMinter(lambda: secret, clock=clock)
    b = NonceMinter(lambda: secret, clock=clock)  # another node of the same cluster
    nonce = a.mint("example.com")
    assert b.check(nonce, "example.com") == "ok"
    assert b.check(nonce, "example.org") == "bad"  # bound to the realm
    assert NonceMinter(lambda: [b"x" * 32], clock=clock).check(nonce, "example.com") == "bad"
    tampered = nonce[:-1] + ("0" if nonce[-1] != "0" else "1")
    assert b.check(tampered, "example.com") == "bad"
    for junk in ("", ".", "zz.00", "1" * 40 + ".ab", "nonce"):
        assert b.check(junk, "example.com") == "bad"
    clock.t += 301
    assert b.check(nonce, "example.com") == "stale"
    # After a key rotation the old key still checks (every installed key), the new one mints.
    rotated = NonceMinter(lambda: [b"n" * 32, b"k" * 32], clock=clock)
    clock.t -= 301
    assert rotated.check(nonce, "example.com") == "ok"


def test_parse_credentials() -> None:
    p = parse_credentials(
        'Digest username="bob", realm="example.com", nonce="1a.ff", '
        'uri="sip:example.com", response="abc", algorithm=SHA-256, qop=auth, nc=00000001, '
        'cnonce="x\\"y"'
    )
    assert p == {
        "username": "bob", "realm": "example.com", "nonce": "1a.ff", "uri": "sip:example.com",
        "response": "abc", "algorithm": "SHA-256", "qop": "auth", "nc": "00000001",
        "cnonce": 'x"y',
    }  # fmt: skip
    assert parse_credentials("Basic Ym9iOnB3") is None
    assert parse_credentials('Digest username="a", username="b"') is None  # ambiguous
    assert parse_credentials('Digest username="unterminated') is None
    assert parse_credentials("Digest " + "a=b, " * 2000) is None  # too long


def authorization(
    minter: NonceMinter, password: str, *, method: str = "REGISTER", nc: str = "00000001",
    algorithm: str = "SHA-256", qop: bool = True, nonce: str | None = None, user: str = "bob",
) -> dict[str, str]:  # fmt: skip
    nonce = nonce or minter.mint("example.com")
    h = ha1(user, "example.com", password, algorithm)
    params = {
        "username": user, "realm": "example.com", "nonce": nonce, "uri": "sip:example.com",
        "algorithm": algorithm,
    }  # fmt: skip
    if qop:
        params |= {"qop": "auth", "nc": nc, "cnonce": "c1"}
        params["response"] = digest_response(
            algorithm, h, method, "sip:example.com", nonce, qop="auth", nc=nc, cnonce="c1"
        )
    else:
        params["response"] = digest_response(algorithm, h, method, "sip:example.com", nonce)
    return params


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
@pytest.mark.parametrize("qop", [True, False])
def test_verify_accepts_the_right_password_once(algorithm: str, qop: bool) -> None:
    clock = Clock()
    minter = NonceMinter(lambda: [b"k" * 32], clock=clock)
    v = Verifier(minter)
    creds = Credentials.from_password("bob", "example.com", "s3cret")
    good = authorization(minter, "s3cret", algorithm=algorithm, qop=qop)
    ok = v.verify(good, method="REGISTER", realm="example.com", credentials=creds)
    assert ok.ok, ok
    again = v.verify(good, method="REGISTER", realm="example.com", credentials=creds)
    assert not again.ok and again.reason == "replayed credentials"
    if qop:
        nxt = authorization(
            minter, "s3cret", algorithm=algorithm, nonce=good["nonce"], nc="00000002"
        )
        assert v.verify(nxt, method="REGISTER", realm="example.com", credentials=creds).ok


def test_verify_refuses_what_it_must() -> None:
    clock = Clock()
    minter = NonceMinter(lambda: [b"k" * 32], clock=clock)
    v = Verifier(minter)
    creds = Credentials.from_password("bob", "example.com", "s3cret")

    def check(params: dict[str, str], credentials: Credentials | None = creds) -> str:
        verdict = v.verify(params, method="REGISTER", realm="example.com", credentials=credentials)
        assert not verdict.ok
        return verdict.reason

    assert check(authorization(minter, "wrong")) == "wrong password"
    assert check(authorization(minter, "s3cret", method="INVITE")) == "wrong password"
    assert check(authorization(minter, "s3cret"), credentials=None) == "no such subscriber"
    assert check(authorization(minter, "s3cret", user="eve")) == "no such subscriber"
    assert check(authorization(minter, "s3cret", nonce="1.00")) == "not a nonce of ours"
    forged = authorization(minter, "s3cret")
    forged["realm"] = "evil.com"
    assert check(forged) == "credentials for another realm"
    no_nc = authorization(minter, "s3cret")
    no_nc["nc"] = "1"
    assert check(no_nc) == "qop without a valid nc and cnonce"
    weird = authorization(minter, "s3cret")
    weird["algorithm"] = "SHA-512-256"
    assert "unsupported algorithm" in check(weird)
    missing = authorization(minter, "s3cret")
    del missing["response"]
    assert check(missing) == "credentials without response"
    # The right password on a nonce that has expired: a stale verdict, not a refusal.
    old = authorization(minter, "s3cret")
    clock.t += 400
    verdict = v.verify(old, method="REGISTER", realm="example.com", credentials=creds)
    assert not verdict.ok and verdict.stale


def test_challenges_offer_sha256_then_md5_with_one_nonce() -> None:
    minter = NonceMinter(lambda: [b"k" * 32], clock=Clock())
    values = challenges("example.com", minter, stale=True)
    assert [v.split("algorithm=")[1].split(",")[0] for v in values] == ["SHA-256", "MD5"]
    parsed = [parse_credentials(v) for v in values]
    nonces = {p["nonce"] for p in parsed if p is not None}
    assert None not in parsed
    assert len(nonces) == 1 and minter.check(nonces.pop(), "example.com") == "ok"
    assert all("stale=true" in v and 'qop="auth"' in v for v in values)


def test_credentials_records_round_trip_and_hold_no_password() -> None:
    c = Credentials.from_password("alice", "example.com", "hunter2")
    text = c.to_text()
    assert "hunter2" not in text
    assert Credentials.from_text("alice", text) == c
    for bad in ("", "digest", "digest;realm=x;md5=zz;sha256=yy", "basic;a=b;c=d;e=f"):
        with pytest.raises(ValueError):
            Credentials.from_text("alice", bad)
