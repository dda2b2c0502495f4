"""Answers to retransmissions: the transaction key (RFC 3261 §17.2.3) and the response cache
with its pending state, lifetime and size bound."""

from __future__ import annotations

from swimthor.sip import PENDING, TIMER_J, Request, ResponseCache, parse_message, transaction_key

NOW = 1000.0


def req(
    method: str = "REGISTER", via: str = "SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bKa1"
) -> Request:
    lines = [
        f"{method} sip:alice@example.com SIP/2.0",
        f"Via: {via}",
        "Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKlower",
        "From: <sip:bob@example.com>;tag=b1",
        "To: <sip:alice@example.com>",
        "Call-ID: c1",
        f"CSeq: 1 {method}",
        "Content-Length: 0",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def test_transaction_key_is_branch_sent_by_and_method() -> None:
    assert transaction_key(req()) == ("z9hG4bKa1", "10.0.0.2:5070", "REGISTER")
    assert transaction_key(req("OPTIONS")) == ("z9hG4bKa1", "10.0.0.2:5070", "OPTIONS")
    # The ACK for a non-2xx final answer belongs to the INVITE's transaction; CANCEL has its own.
    assert transaction_key(req("ACK")) == transaction_key(req("INVITE"))
    assert transaction_key(req("CANCEL")) == ("z9hG4bKa1", "10.0.0.2:5070", "CANCEL")
    # Only the top Via counts.
    other = req(via="SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bKa2")
    assert transaction_key(other) != transaction_key(req())
    moved = req(via="SIP/2.0/UDP 10.0.0.3:5070;branch=z9hG4bKa1")
    assert transaction_key(moved) != transaction_key(req())
    no_port = req(via="SIP/2.0/UDP phone.example.com;branch=z9hG4bKa1")
    assert transaction_key(no_port) == ("z9hG4bKa1", "phone.example.com:None", "REGISTER")


def test_pre_3261_branches_have_no_key() -> None:
    assert transaction_key(req(via="SIP/2.0/UDP 10.0.0.2:5070;branch=abc")) is None
    assert transaction_key(req(via="SIP/2.0/UDP 10.0.0.2:5070")) is None
    assert transaction_key(req(via="SIP/2.0/UDP 10.0.0.2:5070;branch=Z9HG4BKa")) is None


KEY = ("z9hG4bKa1", "10.0.0.2:5070", "REGISTER")


def test_pending_then_answered() -> None:
    cache = ResponseCache()
    assert cache.get(KEY, NOW) is None
    cache.pending(KEY, NOW)
    assert cache.get(KEY, NOW + 1) == PENDING
    assert cache.get(KEY, NOW + 1) is not None  # pending is b"": test it with `is None`
    cache.answered(KEY, NOW + 2, b"SIP/2.0 200 OK\r\n\r\n")
    assert cache.get(KEY, NOW + 3) == b"SIP/2.0 200 OK\r\n\r\n"
    assert len(cache) == 1
    cache.forget(KEY)
    assert cache.get(KEY, NOW + 3) is None
    cache.forget(KEY)  # forgetting twice is fine
    assert len(cache) == 0


def test_entries_live_for_timer_j_from_their_last_store() -> None:
    assert TIMER_J == 32.0
    cache = ResponseCache()
    cache.pending(KEY, NOW)
    cache.answered(KEY, NOW + 10, b"r")
    assert cache.get(KEY, NOW + 10 + TIMER_J - 0.001) == b"r"
    assert cache.get(KEY, NOW + 10 + TIMER_J) is None
    assert len(cache) == 0  # an expired entry found by get is removed
    short = ResponseCache(lifetime=5.0)
    short.answered(KEY, NOW, b"r")
    assert short.get(KEY, NOW + 4.9) == b"r"
    assert short.get(KEY, NOW + 5) is None


def test_storing_sweeps_expired_entries_from_the_old_end() -> None:
    cache = ResponseCache(lifetime=10.0)
    for i in range(3):
        cache.answered(("b", str(i), "REGISTER"), NOW + i, b"r")
    assert len(cache) == 3
    cache.answered(("b", "new", "REGISTER"), NOW + 11, b"r")
    # Entries 0 and 1 were due (at +10 and +11); entry 2 (due +12) stays.
    assert len(cache) == 2
    assert cache.get(("b", "2", "REGISTER"), NOW + 11) == b"r"


def test_the_cache_is_bounded_oldest_first() -> None:
    cache = ResponseCache(max_entries=3)
    keys = [("b", str(i), "REGISTER") for i in range(5)]
    for i, key in enumerate(keys):
        cache.answered(key, NOW + i * 0.01, f"r{i}".encode())
    assert len(cache) == 3
    assert [cache.get(k, NOW + 1) for k in keys] == [None, None, b"r2", b"r3", b"r4"]
    # Storing again makes an entry the newest.
    cache.pending(keys[2], NOW + 1)
    cache.answered(("b", "5", "REGISTER"), NOW + 1, b"r5")
    assert cache.get(keys[2], NOW + 1) == PENDING
    assert cache.get(keys[3], NOW + 1) is None
