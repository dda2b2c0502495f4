"""The cluster keyring: seals gossip packets, SIP replication and stream frames with
ChaCha20-Poly1305. Its own module (not membership's) because every package that seals uses it.

The primary key seals; every installed key may open, so a cluster rotates keys without a
flag day (install the new key everywhere, `use` it everywhere, then `remove` the old one).

Envelopes (the first byte is the envelope version):

* ``0x02`` sealed: ``0x02 || nonce(12) || ciphertext || tag(16)``, with
  ``b"swimthor/1 " + label`` as associated data, so a packet of another cluster (other label)
  does not open even under the same key. The plaintext starts with the sender's wall clock
  (milliseconds, 8 bytes) for the replay window below.
* ``0x01`` sealed without that timestamp (before replay protection): no longer opened.
* ``0x00`` plaintext, only when the cluster runs ``--insecure`` (no keyring):
  ``0x00 || len(label) || label || plaintext``, so a node with the wrong label is still rejected.

Replay window (as kinship's): an envelope stamped more than `replay_window` seconds (30) away
from our clock is refused as stale, and one whose nonce was already opened within the window is
refused as replayed. The nonces are kept for the window, at most `REPLAY_CACHE` of them; when
more arrive than that, the oldest go and envelopes stamped before them are refused too (the
window shrinks under load rather than letting a replay through). Cluster hosts need clocks
within the window of each other (NTP).

Keys are stored as a small JSON file ``{"primary": "<base64>", "keys": ["<base64>", ...]}``
written atomically with mode 0600; a file holding just one base64 key (what
``swimthor keygen > file`` writes) loads as a keyring of that one key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
STAMP_SIZE = 8
SEALED = 0x02
SEALED_UNSTAMPED = 0x01
PLAIN = 0x00
SEAL_OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE + STAMP_SIZE
REPLAY_WINDOW = 30.0
REPLAY_CACHE = 200_000
MAX_LABEL = 255
_AD_PREFIX = b"swimthor/1 "

__all__ = [
    "KEY_SIZE",
    "NONCE_SIZE",
    "REPLAY_WINDOW",
    "SEAL_OVERHEAD",
    "Keyring",
    "KeyringFileError",
    "SealError",
    "new_nonce",
    "open_frame",
    "seal_frame",
    "unwrap_plain",
    "wrap_plain",
]


class SealError(Exception):
    """A packet or frame could not be opened; `str()` is a short reason for logs, `kind` one
    word for counters: "seal" (no key opens it, a wrong envelope or label, cut short),
    "replay" (opened before) or "stale" (stamped outside the replay window)."""

    def __init__(self, reason: str, kind: str = "seal") -> None:
        super().__init__(reason)
        self.kind = kind


class KeyringFileError(ValueError):
    """A keyring file could not be read or written; the message names the path."""


def _label_bytes(label: str) -> bytes:
    raw = label.encode("utf-8")
    if len(raw) > MAX_LABEL:
        raise ValueError(f"cluster label is {len(raw)} bytes in UTF-8, at most {MAX_LABEL}")
    return raw


def wrap_plain(label: str, data: bytes) -> bytes:
    """Plaintext envelope (``--insecure``): ``0x00 || len(label) || label || data``."""
    raw = _label_bytes(label)
    return b"".join([bytes([PLAIN, len(raw)]), raw, data])


def unwrap_plain(label: str, data: bytes) -> bytes:
    """The payload of a plaintext envelope carrying `label`; SealError otherwise."""
    raw = _label_bytes(label)
    if not data:
        raise SealError("truncated")
    if data[0] == SEALED:
        raise SealError("sealed packet but cluster is plaintext")
    if data[0] != PLAIN:
        raise SealError("wrong envelope")
    if len(data) < 2 or len(data) < 2 + data[1]:
        raise SealError("truncated")
    if data[2 : 2 + data[1]] != raw:
        raise SealError("wrong cluster label")
    return bytes(data[2 + data[1] :])


def new_nonce() -> bytes:
    """A fresh random nonce for `Keyring.seal`: the drivers' source (the sans-IO cores are
    given theirs, so that the simulator's is seeded)."""
    return os.urandom(NONCE_SIZE)


def seal_frame(
    keyring: Keyring | None, data: bytes, label: str, wall_now: float, nonce: bytes
) -> bytes:
    """`data` sealed by `keyring`, or wrapped in plaintext when the cluster runs without one
    (`--insecure`)."""
    if keyring is None:
        return wrap_plain(label, data)
    return keyring.seal(data, label, wall_now, nonce)


def open_frame(keyring: Keyring | None, data: bytes, label: str, wall_now: float) -> bytes:
    """What `seal_frame` sealed or wrapped; SealError when it does not open."""
    if keyring is None:
        return unwrap_plain(label, data)
    return keyring.open(data, label, wall_now)


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"a key is bytes, not {type(key).__name__}")
    if len(key) != KEY_SIZE:
        raise ValueError(f"a key is {KEY_SIZE} bytes, not {len(key)}")
    return bytes(key)


class Keyring:
    """Installed cluster keys; the primary seals, any installed key opens."""

    def __init__(
        self,
        keys: Sequence[bytes],
        primary: bytes | None = None,
        *,
        replay_window: float = REPLAY_WINDOW,
        replay_cache: int = REPLAY_CACHE,
    ) -> None:
        """`primary` defaults to ``keys[0]`` and is installed if `keys` lacks it. A keyring
        reads no clock and makes no randomness: `seal` and `open` are given the wall clock, and
        `seal` its nonce, by the caller (the sans-IO core passes its own; `new_nonce` is the
        drivers' source)."""
        checked = [_check_key(k) for k in keys]
        if primary is not None:
            checked.insert(0, _check_key(primary))
        if not checked:
            raise ValueError("a keyring needs at least one key")
        # Insertion-ordered set: the primary first, then the others in the order given.
        self._ciphers: dict[bytes, ChaCha20Poly1305] = {}
        for k in checked:
            if k not in self._ciphers:
                self._ciphers[k] = ChaCha20Poly1305(k)
        self._primary = checked[0]
        self.replay_window = replay_window
        self._replay_cache = replay_cache
        self._seen: set[bytes] = set()
        self._seen_order: deque[tuple[float, bytes]] = deque()
        self._floor = -math.inf  # stamps at or before this may have left the cache

    def __repr__(self) -> str:
        ids = ", ".join(self.key_id(k) for k in self.keys)
        return f"Keyring(primary={self.key_id(self._primary)}, keys=[{ids}])"

    @property
    def primary(self) -> bytes:
        """The key that seals."""
        return self._primary

    @property
    def keys(self) -> tuple[bytes, ...]:
        """Every installed key, the primary first."""
        return (self._primary, *(k for k in self._ciphers if k != self._primary))

    # ------------------------------------------------------------ sealing

    def seal(self, data: bytes, label: str, wall_now: float, nonce: bytes) -> bytes:
        """`data` sealed under the primary key with `nonce` (NONCE_SIZE bytes, never used
        twice: `new_nonce`), stamped with the wall clock `wall_now` (seconds):
        ``0x02 || nonce || ciphertext+tag``."""
        ad = _AD_PREFIX + _label_bytes(label)
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"a nonce is {NONCE_SIZE} bytes, not {len(nonce)}")
        stamp = max(0, int(wall_now * 1000)).to_bytes(STAMP_SIZE, "big")
        sealed = self._ciphers[self._primary].encrypt(nonce, stamp + data, ad)
        return b"".join([bytes([SEALED]), nonce, sealed])

    def open(self, data: bytes, label: str, wall_now: float) -> bytes:
        """The plaintext of a sealed envelope: the primary is tried first, then every other
        installed key. SealError when the envelope is wrong, no key opens it, or it is stale
        (against the wall clock `wall_now`, seconds) or a replay (the reason says which)."""
        ad = _AD_PREFIX + _label_bytes(label)
        if not data:
            raise SealError("truncated")
        if data[0] == PLAIN:
            raise SealError("plaintext packet but cluster is sealed")
        if data[0] == SEALED_UNSTAMPED:
            raise SealError("envelope without a timestamp (a sender older than replay checks)")
        if data[0] != SEALED:
            raise SealError("wrong envelope")
        if len(data) < SEAL_OVERHEAD:
            raise SealError("truncated")
        nonce = bytes(data[1 : 1 + NONCE_SIZE])
        body = bytes(data[1 + NONCE_SIZE :])
        for key in self.keys:
            try:
                plain = self._ciphers[key].decrypt(nonce, body, ad)
            except InvalidTag:
                continue
            self._check_replay(nonce, int.from_bytes(plain[:STAMP_SIZE], "big") / 1000, wall_now)
            return plain[STAMP_SIZE:]
        raise SealError("no key opens it")

    def _check_replay(self, nonce: bytes, stamp: float, now: float) -> None:
        skew = now - stamp
        if abs(skew) > self.replay_window:
            what = "stale" if skew > 0 else "stamped in the future"
            raise SealError(
                f"{what} by {abs(skew):.0f} s (replay window {self.replay_window:.0f} s; "
                "are the hosts' clocks in sync?)",
                "stale",
            )
        if nonce in self._seen:
            raise SealError("replayed", "replay")
        if stamp <= self._floor:
            raise SealError("too old to tell from a replay (replay cache full)", "stale")
        seen, order = self._seen, self._seen_order
        horizon = now - self.replay_window
        while order and (order[0][0] < horizon or len(order) >= self._replay_cache):
            old_stamp, old = order.popleft()
            seen.discard(old)
            if old_stamp >= horizon:
                self._floor = max(self._floor, old_stamp)
        seen.add(nonce)
        order.append((stamp, nonce))

    # ------------------------------------------------------------ rotation

    def install(self, key: bytes) -> None:
        """Add `key` so it may open (installing an installed key does nothing)."""
        k = _check_key(key)
        if k not in self._ciphers:
            self._ciphers[k] = ChaCha20Poly1305(k)

    def use(self, key: bytes) -> None:
        """Make an installed key the primary; ValueError if it is not installed."""
        k = _check_key(key)
        if k not in self._ciphers:
            raise ValueError(f"key {self.key_id(k)} is not installed")
        self._primary = k

    def remove(self, key: bytes) -> None:
        """Uninstall `key`; ValueError if it is the primary or not installed."""
        k = _check_key(key)
        if k not in self._ciphers:
            raise ValueError(f"key {self.key_id(k)} is not installed")
        if k == self._primary:
            raise ValueError(f"key {self.key_id(k)} is the primary; `use` another one first")
        del self._ciphers[k]

    # ------------------------------------------------------------ keys as text

    @staticmethod
    def generate() -> bytes:
        """A fresh random key."""
        return os.urandom(KEY_SIZE)

    @staticmethod
    def key_id(key: bytes) -> str:
        """A short stable fingerprint (16 hex digits of SHA-256) that does not reveal the key."""
        return hashlib.sha256(key).hexdigest()[:16]

    @staticmethod
    def encode_key(key: bytes) -> str:
        """`key` as standard base64."""
        return base64.b64encode(_check_key(key)).decode("ascii")

    @staticmethod
    def decode_key(text: str) -> bytes:
        """A key from standard base64; ValueError on bad base64 or a length other than 32."""
        try:
            key = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("key is not valid base64") from None
        if len(key) != KEY_SIZE:
            raise ValueError(f"key decodes to {len(key)} bytes, a key is {KEY_SIZE}")
        return key

    # ------------------------------------------------------------ files

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keyring:
        """A keyring from a JSON keyring file or a file holding one base64 key."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise KeyringFileError(f"{p}: cannot read keyring: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise KeyringFileError(f"{p}: keyring file is not UTF-8 text") from None
        text = text.strip()
        if not text:
            raise KeyringFileError(f"{p}: keyring file is empty")
        try:
            if text.startswith("{"):
                return cls._from_json(text)
            if len(text.splitlines()) != 1:
                raise ValueError("expected JSON or a single base64 key on one line")
            return cls([cls.decode_key(text)])
        except ValueError as e:  # also json.JSONDecodeError
            raise KeyringFileError(f"{p}: {_one_line(str(e))}") from None

    @classmethod
    def _from_json(cls, text: str) -> Keyring:
        doc: Any = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("keyring JSON must be an object")
        keys = doc.get("keys")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise ValueError('"keys" must be a non-empty list of base64 keys')
        primary = doc.get("primary")
        if primary is not None and not isinstance(primary, str):
            raise ValueError('"primary" must be a base64 key')
        decoded = [cls.decode_key(k) for k in keys]
        return cls(decoded, cls.decode_key(primary) if primary is not None else None)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the keyring atomically (temp file in the same folder, then rename), mode 0600."""
        p = Path(path)
        doc = {
            "primary": self.encode_key(self._primary),
            "keys": [self.encode_key(k) for k in self.keys],
        }
        payload = (json.dumps(doc, indent=2) + "\n").encode("utf-8")
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
            tmp = None
        except OSError as e:
            raise KeyringFileError(f"{p}: cannot write keyring: {e.strerror or e}") from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def _one_line(text: str) -> str:
    return " ".join(text.split())
