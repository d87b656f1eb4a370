"""Token signing keys: ES384 (ECDSA P-384, RFC 7518 section 3.4), rotated, published as JWKS.

Keys live in ``sec_signing_key`` so every server process signs and verifies with the same set.
The newest unretired key signs; ``rotate`` adds a key and retires the old ones, which stay
published (RFC 7517 JWK Set) until every token they signed has expired. Private keys pass
through ``seal``/``unseal`` (encryption at rest wraps them when configured).
"""

from __future__ import annotations

import base64
import secrets
import threading
from collections.abc import Callable
from typing import Any

import orjson
from joserfc.jwk import ECKey, KeySet

from carebridge.security.store import SecurityStore, now

ALGORITHM = "ES384"
#: Retired keys are published this long after retirement (longer than any access token lives).
PUBLISH_RETIRED = 24 * 3600.0


def _identity(data: bytes) -> bytes:
    return data


class SigningKeys:
    def __init__(self, store: SecurityStore, *, reload_every: float = 30.0,
                 seal: Callable[[bytes], bytes] = _identity,
                 unseal: Callable[[bytes], bytes] = _identity) -> None:
        self.store = store
        self.reload_every = reload_every
        self.seal, self.unseal = seal, unseal
        self._lock = threading.Lock()
        self._keys: list[tuple[str, ECKey, float | None]] = []  # newest first
        self._loaded = 0.0

    def _load(self) -> None:
        rows = self.store.query(
            "SELECT kid, private_jwk, retired FROM sec_signing_key WHERE retired IS NULL"
            " OR retired > ? ORDER BY created DESC, kid", (now() - PUBLISH_RETIRED,))
        keys = []
        for kid, sealed, retired in rows:
            data = orjson.loads(self.unseal(base64.b64decode(sealed)))
            keys.append((kid, ECKey.import_key(data), retired))
        self._keys, self._loaded = keys, now()

    def _fresh(self, force: bool = False) -> list[tuple[str, ECKey, float | None]]:
        with self._lock:
            if force or not self._keys or now() - self._loaded > self.reload_every:
                self._load()
                if not any(r is None for _, _, r in self._keys):
                    self._create()
                    self._load()
            return self._keys

    def _create(self) -> str:
        kid = secrets.token_urlsafe(12)
        key = ECKey.generate_key("P-384", parameters={"kid": kid, "alg": ALGORITHM,
                                                      "use": "sig"}, private=True)
        private = orjson.dumps(key.as_dict(private=True))
        self.store.execute(
            "INSERT INTO sec_signing_key (kid, private_jwk, created) VALUES (?, ?, ?)",
            (kid, base64.b64encode(self.seal(private)).decode(), now()))
        return kid

    def signing_key(self) -> ECKey:
        for _, key, retired in self._fresh():
            if retired is None:
                return key
        raise RuntimeError("no active signing key")

    def verification_keys(self, kid: str | None) -> KeySet:
        keys = self._fresh()
        if kid is not None and not any(k == kid for k, _, _ in keys):
            keys = self._fresh(force=True)  # another process may have rotated
        return KeySet([key for _, key, _ in keys])

    def every_public_key(self) -> KeySet:
        """Every key ever used, retired or not (public parts): audit checkpoints signed
        years ago still verify."""
        rows = self.store.query("SELECT private_jwk FROM sec_signing_key")
        keys = [ECKey.import_key(orjson.loads(self.unseal(base64.b64decode(r[0]))))
                for r in rows]
        return KeySet([ECKey.import_key(k.as_dict(private=False)) for k in keys])

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.as_dict(private=False) for _, key, _ in self._fresh()]}

    def rotate(self) -> str:
        """Add a new signing key and retire the others (they stay published for a day)."""
        with self._lock:
            self.store.execute("UPDATE sec_signing_key SET retired = ? WHERE retired IS NULL",
                               (now(),))
            kid = self._create()
            self._load()
        return kid
