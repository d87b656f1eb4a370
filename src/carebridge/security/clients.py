"""OAuth clients (RFC 6749 section 2): public apps (PKCE only), confidential apps (a secret,
stored as an Argon2id hash) and backend services (SMART Backend Services: a JWK Set of public
keys, authenticating with ``private_key_jwt`` assertions, RFC 7523).

Each client has the most it may ever be granted (``scopes``) and, for backend services, the
roles of the system behind it (an HL7 v2 interface engine is ``interface``, a device gateway
``device``; see :mod:`carebridge.security.roles`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from carebridge.security import roles as R
from carebridge.security.scopes import split_scope
from carebridge.security.store import SecurityStore, now

KINDS = ("public", "confidential", "backend")


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    kind: str
    secret_hash: str | None
    redirect_uris: tuple[str, ...]
    scopes: frozenset[str]
    roles: frozenset[str]
    jwks: dict[str, Any] | None
    disabled: bool


class ClientRegistry:
    def __init__(self, store: SecurityStore, hasher: PasswordHasher | None = None) -> None:
        self.store = store
        self.hasher = hasher or PasswordHasher()

    def add(self, client_id: str, kind: str, *, redirect_uris: list[str] | None = None,
            scopes: str, roles: set[str] | None = None,
            jwks: dict[str, Any] | None = None) -> str | None:
        """Register a client; returns the secret of a confidential client (shown once)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        roles = set(roles or ())
        if kind == "backend":
            if not jwks or not isinstance(jwks.get("keys"), list):
                raise ValueError("a backend client needs a JWK Set of public keys")
            if not roles or roles - R.CLIENT_ROLES:
                raise ValueError(f"backend roles must be among {sorted(R.CLIENT_ROLES)}")
        elif not redirect_uris:
            raise ValueError("an app needs at least one redirect URI")
        secret = secrets.token_urlsafe(32) if kind == "confidential" else None
        self.store.execute(
            "INSERT INTO sec_client (client_id, kind, secret_hash, redirect_uris, scopes, roles,"
            " jwks, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (client_id, kind, self.hasher.hash(secret) if secret else None,
             " ".join(redirect_uris or ()), scopes, " ".join(sorted(roles)),
             orjson.dumps(jwks).decode() if jwks else None, now()))
        return secret

    def get(self, client_id: str) -> Client | None:
        rows = self.store.query(
            "SELECT client_id, kind, secret_hash, redirect_uris, scopes, roles, jwks, disabled"
            " FROM sec_client WHERE client_id = ?", (client_id,))
        if not rows:
            return None
        cid, kind, secret_hash, uris, scopes, roles, jwks, disabled = rows[0]
        return Client(cid, kind, secret_hash, tuple(uris.split()), split_scope(scopes),
                      frozenset(roles.split()), orjson.loads(jwks) if jwks else None,
                      bool(disabled))

    def check_secret(self, client: Client, secret: str) -> bool:
        if client.secret_hash is None:
            return False
        try:
            return bool(self.hasher.verify(client.secret_hash, secret))
        except (VerificationError, InvalidHashError):
            return False

    def disable(self, client_id: str) -> bool:
        return self.store.execute("UPDATE sec_client SET disabled = ? WHERE client_id = ?",
                                  (self.store.flag(True), client_id)) > 0
