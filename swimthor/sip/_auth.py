"""SIP digest authentication (RFC 3261 §22, RFC 8760: MD5 and SHA-256), sans-IO.

The parts the registrar and proxy use:

- `ha1(user, realm, password, algorithm)`: what a subscriber record stores instead of the
  password (`Credentials` holds one HA1 per algorithm);
- `NonceMinter`: stateless nonces. A nonce is ``<issued, milliseconds, hex>.<HMAC>`` under a
  secret that every node of the cluster derives from the keyring's primary key, so a nonce
  minted by one node is good at another (a phone that fails over keeps its credentials
  working); a nonce older than `lifetime` (300 s) is answered with a fresh challenge marked
  ``stale=true`` (RFC 3261 §22.4) and is never accepted;
- `parse_credentials(header)`: an Authorization or Proxy-Authorization value, read with
  quoted strings and escapes, bounded;
- `Verifier`: checks one request's credentials: the nonce (ours, unexpired, for this realm),
  the response (RFC 2617 / RFC 7616 arithmetic, with or without ``qop=auth``), and replays:
  with ``qop=auth`` a nonce count must grow for each (nonce, cnonce), without qop a response
  is accepted once. The replay memory holds a nonce's lifetime and is bounded;
- `challenges(realm, ...)`: the WWW-Authenticate / Proxy-Authenticate values, SHA-256 first
  and then MD5, as RFC 8760 §2.4 lists them, one per algorithm.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ALGORITHMS",
    "Credentials",
    "NonceMinter",
    "Verdict",
    "Verifier",
    "challenges",
    "digest_response",
    "ha1",
    "parse_credentials",
]

# RFC 8760 §2: the algorithm names as they appear on the wire, strongest first.
ALGORITHMS = ("SHA-256", "MD5")
_HASHES: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
}
NONCE_LIFETIME = 300.0
MAX_HEADER = 4096
REPLAY_MEMORY = 100_000


def _h(algorithm: str, text: str) -> str:
    return _HASHES[algorithm](text.encode("utf-8")).hexdigest()


def ha1(user: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username ":" realm ":" password), hex: what is stored for a subscriber."""
    return _h(algorithm, f"{user}:{realm}:{password}")


def digest_response(
    algorithm: str,
    ha1_hex: str,
    method: str,
    uri: str,
    nonce: str,
    *,
    qop: str | None = None,
    nc: str = "",
    cnonce: str = "",
    body: bytes = b"",
) -> str:
    """The request-digest of RFC 2617 §3.2.2.1 (RFC 7616 §3.4.1 for SHA-256)."""
    if qop == "auth-int":
        ha2 = _h(algorithm, f"{method}:{uri}:{_HASHES[algorithm](body).hexdigest()}")
    else:
        ha2 = _h(algorithm, f"{method}:{uri}")
    if qop:
        return _h(algorithm, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(algorithm, f"{ha1_hex}:{nonce}:{ha2}")


@dataclass(frozen=True, slots=True)
class Credentials:
    """A subscriber's stored secret: the HA1 for each algorithm, never the password."""

    user: str
    realm: str
    ha1_md5: str
    ha1_sha256: str

    @classmethod
    def from_password(cls, user: str, realm: str, password: str) -> Credentials:
        return cls(
            user, realm, ha1(user, realm, password, "MD5"), ha1(user, realm, password, "SHA-256")
        )

    def ha1_for(self, algorithm: str) -> str:
        return self.ha1_sha256 if algorithm == "SHA-256" else self.ha1_md5

    def to_text(self) -> str:
        return f"digest;realm={self.realm};md5={self.ha1_md5};sha256={self.ha1_sha256}"

    @classmethod
    def from_text(cls, user: str, text: str) -> Credentials:
        """ValueError unless `text` is what `to_text` writes."""
        parts = text.split(";")
        if parts[0] != "digest" or len(parts) != 4:
            raise ValueError("not a credentials record")
        fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        md5, sha = fields.get("md5", ""), fields.get("sha256", "")
        if not re.fullmatch(r"[0-9a-f]{32}", md5) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ValueError("bad HA1 in a credentials record")
        if "realm" not in fields:
            raise ValueError("credentials record without a realm")
        return cls(user, fields["realm"], md5, sha)


class NonceMinter:
    """Stateless nonces: the issue time and an HMAC of it and the realm."""

    def __init__(
        self,
        secrets: Callable[[], list[bytes]],
        *,
        clock: Callable[[], float] = time.time,
        lifetime: float = NONCE_LIFETIME,
    ) -> None:
        """`secrets()`: the keys to check with, the first one to mint with (the cluster
        keyring's keys, so every node mints and checks the same nonces)."""
        self._secrets = secrets
        self._clock = clock
        self.lifetime = lifetime

    @staticmethod
    def _mac(secret: bytes, issued: str, realm: str) -> str:
        key = hmac.new(secret, b"swimthor/sip-nonce", hashlib.sha256).digest()
        return hmac.new(key, f"{issued}:{realm}".encode(), hashlib.sha256).hexdigest()[:32]

    def mint(self, realm: str) -> str:
        issued = format(int(self._clock() * 1000), "x")
        return f"{issued}.{self._mac(self._secrets()[0], issued, realm)}"

    def check(self, nonce: str, realm: str) -> str:
        """ "ok", "stale" (ours, but expired: challenge again with stale=true) or "bad"."""
        issued, dot, mac = nonce.partition(".")
        if not dot or not issued or len(issued) > 16 or not re.fullmatch(r"[0-9a-f]+", issued):
            return "bad"
        if not any(
            hmac.compare_digest(mac, self._mac(secret, issued, realm)) for secret in self._secrets()
        ):
            return "bad"
        age = self._clock() - int(issued, 16) / 1000
        if age < -5.0:
            return "bad"  # from the future: not one of ours, whatever the MAC says
        return "ok" if age <= self.lifetime else "stale"


_PARAM = re.compile(
    r'\s*([A-Za-z][A-Za-z0-9\-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*(?:,|$)', re.DOTALL
)


def parse_credentials(value: str) -> dict[str, str] | None:
    """The parameters of a ``Digest ...`` credentials value (names in lower case, quotes and
    escapes undone), or None if it is not digest credentials or cannot be read."""
    if len(value) > MAX_HEADER:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    out: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            return None
        name, raw = m.group(1).lower(), m.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if name in out:
            return None  # a parameter twice: ambiguous
        out[name] = raw
        pos = m.end()
    return out


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    stale: bool = False  # challenge again with stale=true (a good response to an old nonce)
    reason: str = ""


class Verifier:
    """Checks credentials against a minter and a subscriber's `Credentials`; remembers what
    it accepted for the nonce lifetime to refuse replays."""

    def __init__(self, minter: NonceMinter, *, memory: int = REPLAY_MEMORY) -> None:
        self.minter = minter
        self._memory = memory
        # (nonce, cnonce) -> highest nc accepted; (nonce, response) -> 0 without qop.
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()

    def verify(
        self,
        params: dict[str, str],
        *,
        method: str,
        realm: str,
        credentials: Credentials | None,
        body: bytes = b"",
    ) -> Verdict:
        for name in ("username", "realm", "nonce", "uri", "response"):
            if not params.get(name):
                return Verdict(False, reason=f"credentials without {name}")
        if params["realm"] != realm:
            return Verdict(False, reason="credentials for another realm")
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm not in _HASHES:
            return Verdict(False, reason=f"unsupported algorithm {algorithm}")
        qop = params.get("qop")
        if qop not in (None, "auth", "auth-int"):
            return Verdict(False, reason="unsupported qop")
        nc, cnonce = params.get("nc", ""), params.get("cnonce", "")
        if qop and (not re.fullmatch(r"[0-9a-fA-F]{8}", nc) or not cnonce):
            return Verdict(False, reason="qop without a valid nc and cnonce")
        nonce_state = self.minter.check(params["nonce"], realm)
        if nonce_state == "bad":
            return Verdict(False, reason="not a nonce of ours")
        if credentials is None or credentials.user != params["username"]:
            return Verdict(False, reason="no such subscriber")
        want = digest_response(
            algorithm,
            credentials.ha1_for(algorithm),
            method,
            params["uri"],
            params["nonce"],
            qop=qop,
            nc=nc,
            cnonce=cnonce,
            body=body,
        )
        if not hmac.compare_digest(want, params["response"].lower()):
            return Verdict(False, reason="wrong password")
        if nonce_state == "stale":
            # The right password on an expired nonce: ask again (no new password prompt).
            return Verdict(False, stale=True, reason="stale nonce")
        key = (params["nonce"], cnonce if qop else params["response"].lower())
        count = int(nc, 16) if qop else 0
        seen = self._seen.get(key)
        if seen is not None and count <= seen:
            return Verdict(False, reason="replayed credentials")
        self._seen[key] = count
        self._seen.move_to_end(key)
        while len(self._seen) > self._memory:
            self._seen.popitem(last=False)
        return Verdict(True)


def challenges(
    realm: str,
    minter: NonceMinter,
    *,
    stale: bool = False,
    algorithms: tuple[str, ...] = ALGORITHMS,
) -> list[str]:
    """One challenge per algorithm in order of preference (RFC 8760 §2.4: SHA-256 first by
    default), sharing one nonce. Some clients (sipp 3.6, older phones) read only the first
    challenge and know only MD5: `algorithms` lets an operator put MD5 first for them."""
    nonce = minter.mint(realm)
    tail = ", stale=true" if stale else ""
    return [
        f'Digest realm="{realm}", nonce="{nonce}", algorithm={algorithm}, qop="auth"{tail}'
        for algorithm in algorithms
    ]


def random_secret() -> bytes:
    """A per-process secret for a cluster without a keyring (--insecure): nonces are then
    only good at the node that minted them."""
    return os.urandom(32)
