"""The cluster keyring: sealing, envelope mix-ups, rotation and keyring files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from swimthor.keyring import (
    NONCE_SIZE,
    SEAL_OVERHEAD,
    Keyring,
    KeyringFileError,
    SealError,
    new_nonce,
    open_frame,
    seal_frame,
    unwrap_plain,
    wrap_plain,
)

K1 = bytes(range(32))
K2 = bytes(range(1, 33))
K3 = bytes(32)
LABEL = "prod-eu"
WALL = 1_000_000.0  # the wall clock the envelopes are stamped with and checked against


def test_seal_open_round_trip() -> None:
    ring = Keyring([K1])
    for data in (b"", b"x", b"hello gossip" * 100):
        sealed = ring.seal(data, LABEL, WALL, new_nonce())
        assert sealed[0] == 0x02
        assert len(sealed) == len(data) + SEAL_OVERHEAD
        assert ring.open(sealed, LABEL, WALL) == data


def test_new_nonce_is_fresh_per_message() -> None:
    ring = Keyring([K1])
    assert new_nonce() != new_nonce()
    assert ring.seal(b"same", LABEL, WALL, new_nonce()) != ring.seal(
        b"same", LABEL, WALL, new_nonce()
    )


def test_sealing_reads_no_clock_and_no_randomness() -> None:
    """The same nonce and wall clock give the same envelope: what the simulator's sealed
    clusters rely on (their nonces come from the seed)."""
    nonce = b"\x07" * NONCE_SIZE
    sealed = Keyring([K1]).seal(b"data", LABEL, 1000.0, nonce)
    assert sealed == Keyring([K1]).seal(b"data", LABEL, 1000.0, nonce)
    assert sealed[1:13] == nonce
    assert sealed != Keyring([K1]).seal(b"data", LABEL, 1001.0, nonce)  # the stamp is sealed
    assert Keyring([K1]).open(sealed, LABEL, 1000.0 + 29) == b"data"
    with pytest.raises(ValueError, match="a nonce is 12 bytes"):
        Keyring([K1]).seal(b"data", LABEL, WALL, b"short")


def test_seal_frame_and_open_frame_seal_or_wrap() -> None:
    ring = Keyring([K1])
    assert open_frame(ring, seal_frame(ring, b"d", LABEL, WALL, new_nonce()), LABEL, WALL) == b"d"
    assert seal_frame(None, b"d", LABEL, WALL, b"") == wrap_plain(LABEL, b"d")
    assert open_frame(None, wrap_plain(LABEL, b"d"), LABEL, WALL) == b"d"
    with pytest.raises(SealError):
        open_frame(None, seal_frame(ring, b"d", LABEL, WALL, new_nonce()), LABEL, WALL)


def test_wrong_key_does_not_open() -> None:
    sealed = Keyring([K1]).seal(b"data", LABEL, WALL, new_nonce())
    with pytest.raises(SealError, match="no key opens it"):
        Keyring([K2]).open(sealed, LABEL, WALL)


def test_wrong_label_does_not_open() -> None:
    ring = Keyring([K1])
    with pytest.raises(SealError, match="no key opens it"):
        ring.open(ring.seal(b"data", LABEL, WALL, new_nonce()), "prod-us", WALL)


def test_any_flipped_byte_is_rejected() -> None:
    ring = Keyring([K1])
    sealed = ring.seal(b"some gossip", LABEL, WALL, new_nonce())
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x01
        with pytest.raises(SealError):
            ring.open(bytes(tampered), LABEL, WALL)


def test_truncated_is_rejected() -> None:
    ring = Keyring([K1])
    sealed = ring.seal(b"some gossip", LABEL, WALL, new_nonce())
    for n in range(len(sealed)):
        with pytest.raises(SealError):
            ring.open(sealed[:n], LABEL, WALL)
    with pytest.raises(SealError, match="truncated"):
        ring.open(b"", LABEL, WALL)
    with pytest.raises(SealError, match="truncated"):
        ring.open(sealed[: SEAL_OVERHEAD - 1], LABEL, WALL)


def test_unknown_envelope_version() -> None:
    ring = Keyring([K1])
    sealed = ring.seal(b"data", LABEL, WALL, new_nonce())
    with pytest.raises(SealError, match="wrong envelope"):
        ring.open(b"\x03" + sealed[1:], LABEL, WALL)
    with pytest.raises(SealError, match="without a timestamp"):
        ring.open(b"\x01" + sealed[1:], LABEL, WALL)


def test_plaintext_packet_to_sealed_cluster() -> None:
    with pytest.raises(SealError, match="plaintext packet but cluster is sealed"):
        Keyring([K1]).open(wrap_plain(LABEL, b"data"), LABEL, WALL)


def test_sealed_packet_to_plaintext_cluster() -> None:
    with pytest.raises(SealError):
        unwrap_plain(LABEL, Keyring([K1]).seal(b"data", LABEL, WALL, new_nonce()))


def test_plain_round_trip_and_rejections() -> None:
    wrapped = wrap_plain(LABEL, b"data")
    assert wrapped == b"\x00\x07prod-eudata"
    assert unwrap_plain(LABEL, wrapped) == b"data"
    assert unwrap_plain("", wrap_plain("", b"")) == b""
    assert unwrap_plain("é", wrap_plain("é", b"x")) == b"x"
    with pytest.raises(SealError, match="label"):
        unwrap_plain("prod-us", wrapped)
    with pytest.raises(SealError, match="label"):
        unwrap_plain("prod", wrapped)  # a prefix of the label is not the label
    with pytest.raises(SealError, match="wrong envelope"):
        unwrap_plain(LABEL, b"\x05" + wrapped[1:])
    for n in range(len(LABEL) + 2):
        with pytest.raises(SealError, match="truncated"):
            unwrap_plain(LABEL, wrapped[:n])


def test_label_limits() -> None:
    ring = Keyring([K1])
    longest = "x" * 255
    assert unwrap_plain(longest, wrap_plain(longest, b"d")) == b"d"
    assert ring.open(ring.seal(b"d", longest, WALL, new_nonce()), longest, WALL) == b"d"
    too_long = "é" * 128  # 256 bytes in UTF-8
    with pytest.raises(ValueError):
        wrap_plain(too_long, b"d")
    with pytest.raises(ValueError):
        unwrap_plain(too_long, b"\x00\x00")
    with pytest.raises(ValueError):
        ring.seal(b"d", too_long, WALL, new_nonce())
    with pytest.raises(ValueError):
        ring.open(b"\x01" + bytes(40), too_long, WALL)


def test_constructor_rules() -> None:
    with pytest.raises(ValueError):
        Keyring([])
    with pytest.raises(ValueError):
        Keyring([K1[:31]])
    with pytest.raises(ValueError):
        Keyring([K1 + b"\x00"])
    with pytest.raises(ValueError):
        Keyring([K1], primary=b"short")
    ring = Keyring([K1, K2, K3])
    assert ring.primary == K1
    assert ring.keys == (K1, K2, K3)
    ring = Keyring([K1, K2, K3], primary=K2)
    assert ring.primary == K2
    assert ring.keys == (K2, K1, K3)
    ring = Keyring([K1, K1])
    assert ring.keys == (K1,)


def test_other_installed_keys_open() -> None:
    sealed = Keyring([K2]).seal(b"data", LABEL, WALL, new_nonce())
    assert Keyring([K1, K2, K3]).open(sealed, LABEL, WALL) == b"data"


def test_rotation() -> None:
    # Three nodes share K1. The operator installs K2 everywhere, then switches to it.
    a, b = Keyring([K1]), Keyring([K1])
    a.install(K2)
    b.install(K2)
    assert a.primary == K1
    assert a.keys == (K1, K2)
    # A new node that only knows the new key cannot open until the others `use` it.
    new = Keyring([K2])
    old_sealed = a.seal(b"gossip", LABEL, WALL, new_nonce())
    with pytest.raises(SealError):
        new.open(old_sealed, LABEL, WALL)
    # ... but what it seals opens everywhere K2 is installed.
    assert a.open(new.seal(b"hello", LABEL, WALL, new_nonce()), LABEL, WALL) == b"hello"
    a.use(K2)
    assert a.primary == K2
    assert a.keys == (K2, K1)
    assert new.open(a.seal(b"gossip", LABEL, WALL, new_nonce()), LABEL, WALL) == b"gossip"
    # b has not switched yet but still opens what a seals.
    assert b.open(a.seal(b"gossip", LABEL, WALL, new_nonce()), LABEL, WALL) == b"gossip"
    # Finally drop the old key.
    a.remove(K1)
    assert list(a.keys) == [K2]
    with pytest.raises(SealError):
        a.open(old_sealed, LABEL, WALL)


def test_install_is_idempotent() -> None:
    ring = Keyring([K1])
    ring.install(K2)
    ring.install(K2)
    ring.install(K1)
    assert ring.keys == (K1, K2)
    with pytest.raises(ValueError):
        ring.install(b"short")


def test_use_and_remove_errors() -> None:
    ring = Keyring([K1, K2])
    with pytest.raises(ValueError, match="not installed"):
        ring.use(K3)
    with pytest.raises(ValueError, match="not installed"):
        ring.remove(K3)
    with pytest.raises(ValueError, match="primary"):
        ring.remove(K1)
    ring.remove(K2)
    assert list(ring.keys) == [K1]
    with pytest.raises(ValueError):
        ring.remove(K2)


def test_generate_and_key_id() -> None:
    k = Keyring.generate()
    assert len(k) == 32
    assert Keyring.generate() != k
    kid = Keyring.key_id(K1)
    assert kid == Keyring.key_id(K1)
    assert len(kid) == 16
    assert all(c in "0123456789abcdef" for c in kid)
    assert kid != Keyring.key_id(K2)
    assert K1.hex()[:8] not in kid
    assert Keyring.encode_key(K1) not in repr(Keyring([K1]))


def test_encode_decode_key() -> None:
    text = Keyring.encode_key(K1)
    assert text == "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    assert Keyring.decode_key(text) == K1
    assert Keyring.decode_key(text + "\n") == K1
    with pytest.raises(ValueError, match="base64"):
        Keyring.decode_key("not base64 at all!")
    with pytest.raises(ValueError, match="32"):
        Keyring.decode_key("AAECAwQF")
    with pytest.raises(ValueError):
        Keyring.decode_key("")


def test_save_load_round_trip(tmp_path: Path) -> None:
    ring = Keyring([K1, K2, K3], primary=K3)
    path = tmp_path / "keyring.json"
    ring.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["primary"] == Keyring.encode_key(K3)
    assert sorted(doc["keys"]) == sorted(Keyring.encode_key(k) for k in (K1, K2, K3))
    loaded = Keyring.load(path)
    assert loaded.primary == K3
    assert loaded.keys == ring.keys
    assert loaded.open(ring.seal(b"d", LABEL, WALL, new_nonce()), LABEL, WALL) == b"d"
    # No temp files left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["keyring.json"]


def test_save_replaces_and_tightens_mode(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    path.write_text("old")
    os.chmod(path, 0o644)
    Keyring([K1]).save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Keyring.load(path).keys == (K1,)


def test_load_accepts_group_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    Keyring([K1]).save(path)
    os.chmod(path, 0o644)
    assert Keyring.load(path).primary == K1


def test_save_to_missing_folder(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "keyring.json"
    with pytest.raises(KeyringFileError, match="nope"):
        Keyring([K1]).save(path)


def test_load_single_key_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    path.write_text(Keyring.encode_key(K2) + "\n")
    ring = Keyring.load(path)
    assert ring.primary == K2
    assert ring.keys == (K2,)


def test_load_json_without_primary_uses_first_key(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    path.write_text(json.dumps({"keys": [Keyring.encode_key(K2), Keyring.encode_key(K1)]}))
    ring = Keyring.load(path)
    assert ring.primary == K2
    assert ring.keys == (K2, K1)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "\n\n",
        "{not json",
        "[]",
        '{"keys": []}',
        '{"keys": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}',
        '{"keys": [1]}',
        '{"primary": 5, "keys": ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="]}',
        '{"keys": ["AAECAwQF"]}',
        '{"primary": "!!", "keys": ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="]}',
        "not base64!",
        "AAECAwQF",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
        "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\n",
    ],
)
def test_bad_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "keyring.json"
    path.write_text(content)
    with pytest.raises(KeyringFileError) as info:
        Keyring.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(KeyringFileError, match=r"missing\.json"):
        Keyring.load(tmp_path / "missing.json")
    path = tmp_path / "binary"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(KeyringFileError, match="binary"):
        Keyring.load(path)
    with pytest.raises(KeyringFileError):
        Keyring.load(tmp_path)  # a folder
    assert issubclass(KeyringFileError, ValueError)


# ---------------------------------------------------------------- replay window


def test_a_replayed_envelope_is_refused_once_opened() -> None:
    sender, receiver = Keyring([K1]), Keyring([K1])
    sealed = sender.seal(b"alive", LABEL, WALL, new_nonce())
    assert receiver.open(sealed, LABEL, WALL) == b"alive"
    with pytest.raises(SealError, match="replayed"):
        receiver.open(sealed, LABEL, WALL)
    # Another receiver has not seen it: each node keeps its own window.
    assert Keyring([K1]).open(sealed, LABEL, WALL) == b"alive"


def test_envelopes_outside_the_window_are_refused_as_stale_or_future() -> None:
    sender, receiver = Keyring([K1]), Keyring([K1])
    old = sender.seal(b"x", LABEL, WALL, new_nonce())
    with pytest.raises(SealError, match="stale by 31 s"):
        receiver.open(old, LABEL, WALL + 31)
    future = sender.seal(b"x", LABEL, WALL + 31 + 45, new_nonce())
    with pytest.raises(SealError, match="in the future"):
        receiver.open(future, LABEL, WALL + 31)
    # Within the window either way: opened.
    near = sender.seal(b"x", LABEL, WALL + 31 - 29, new_nonce())
    assert receiver.open(near, LABEL, WALL + 31) == b"x"
    late = sender.seal(b"y", LABEL, WALL + 31 + 29, new_nonce())
    assert receiver.open(late, LABEL, WALL + 31) == b"y"


def test_the_replay_cache_is_bounded_and_refuses_what_it_forgot() -> None:
    t = WALL
    sender = Keyring([K1])
    receiver = Keyring([K1], replay_cache=100)
    early = [sender.seal(b"%d" % i, LABEL, t, new_nonce()) for i in range(5)]
    t += 1
    for i in range(150):
        t += 0.01
        receiver.open(sender.seal(b"%d" % i, LABEL, t, new_nonce()), LABEL, t)
    assert len(receiver._seen) <= 100
    # The first ones were forgotten; an envelope stamped that early cannot be told from a
    # replay any more, so it is refused rather than opened twice.
    with pytest.raises(SealError, match=r"replay cache full|replayed"):
        receiver.open(early[0], LABEL, t)
    # Entries older than the window leave on their own.
    t += 31
    receiver.open(sender.seal(b"late", LABEL, t, new_nonce()), LABEL, t)
    assert len(receiver._seen) == 1
