"""The security authority of one server: its keys, token issuer and verifier, users, OAuth
clients and grants, composed once from the settings (the composition root calls
:meth:`Authority.open`)."""

from __future__ import annotations

from dataclasses import dataclass

from argon2 import PasswordHasher

from carebridge.security.audit import AuditLedger
from carebridge.security.audit_events import login_event
from carebridge.security.clients import ClientRegistry
from carebridge.security.crypto import cipher_of
from carebridge.security.keys import SigningKeys
from carebridge.security.oauth import AuthorizationServer
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
    ledger: AuditLedger
    base_url: str  # the server's public origin; the FHIR base is base_url + "/fhir"

    @property
    def fhir_base(self) -> str:
        return self.base_url + "/fhir"

    @classmethod
    def open(cls, repository: Repository, base_url: str, *,
             external: tuple[ExternalIssuer, ...] = (), hasher: PasswordHasher | None = None,
             audit_interval: float = 0.2) -> Authority:
        """``hasher``: Argon2id parameters (argon2-cffi's defaults unless given; tests pass
        cheap ones). The audit ledger is created here; :meth:`start` runs its writer."""
        store = SecurityStore(repository)
        cipher = cipher_of(repository)
        keys = SigningKeys(store, seal=cipher.seal, unseal=cipher.open) if cipher else (
            SigningKeys(store))
        fhir_base = base_url + "/fhir"
        issuer = TokenIssuer(keys, base_url, fhir_base)
        verifier = TokenVerifier(keys, store, base_url, fhir_base, external)
        hasher = hasher or PasswordHasher()
        users = UserDirectory(store, hasher, seal=cipher.seal if cipher else None,
                              unseal=cipher.open if cipher else None)
        clients = ClientRegistry(store, hasher)
        ledger = AuditLedger(repository, keys, interval=audit_interval)

        def audit(kind: str, outcome: str, subject: str | None, client: str | None,
                  detail: str) -> None:
            ledger.record(login_event(kind, outcome, subject, client, detail))

        oauth = AuthorizationServer(store, users, clients, issuer, verifier, base_url,
                                    audit=audit)
        return cls(store, keys, issuer, verifier, users, clients, oauth, ledger, base_url)

    def start(self) -> None:
        self.ledger.start()

    def close(self) -> None:
        """Flush the audit trail (call before closing the repository)."""
        self.ledger.close()
