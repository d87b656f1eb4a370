"""The security authority of one server: its keys, token issuer and verifier, users, OAuth
clients and grants, composed once from the settings (the composition root calls
:meth:`Authority.open`)."""

from __future__ import annotations

from dataclasses import dataclass

from argon2 import PasswordHasher

from carebridge.security.clients import ClientRegistry
from carebridge.security.keys import SigningKeys
from carebridge.security.oauth import AuditHook, AuthorizationServer
from carebridge.security.store import SecurityStore
from carebridge.security.tokens import ExternalIssuer, TokenIssuer, TokenVerifier
from carebridge.security.users import UserDirectory
from carebridge.storage.base import Repository


@dataclass
class Authority:
    store: SecurityStore
    keys: SigningKeys
    issuer: TokenIssuer
    verifier: TokenVerifier
    users: UserDirectory
    clients: ClientRegistry
    oauth: AuthorizationServer
    base_url: str  # the server's public origin; the FHIR base is base_url + "/fhir"

    @property
    def fhir_base(self) -> str:
        return self.base_url + "/fhir"

    @classmethod
    def open(cls, repository: Repository, base_url: str, *,
             external: tuple[ExternalIssuer, ...] = (), hasher: PasswordHasher | None = None,
             audit: AuditHook | None = None) -> Authority:
        """``hasher``: Argon2id parameters (argon2-cffi's defaults unless given; tests pass
        cheap ones). ``audit``: where login and token events go."""
        store = SecurityStore(repository)
        keys = SigningKeys(store)
        fhir_base = base_url + "/fhir"
        issuer = TokenIssuer(keys, base_url, fhir_base)
        verifier = TokenVerifier(keys, store, base_url, fhir_base, external)
        hasher = hasher or PasswordHasher()
        users = UserDirectory(store, hasher)
        clients = ClientRegistry(store, hasher)
        oauth = AuthorizationServer(store, users, clients, issuer, verifier, base_url,
                                    **({"audit": audit} if audit else {}))
        return cls(store, keys, issuer, verifier, users, clients, oauth, base_url)
