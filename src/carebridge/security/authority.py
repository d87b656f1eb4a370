"""The security authority of one server: its keys, token issuer and verifier, users, OAuth
clients and grants, composed once from the settings (the composition root calls
:meth:`Authority.open`)."""

from __future__ import annotations

from dataclasses import dataclass

from carebridge.security.keys import SigningKeys
from carebridge.security.store import SecurityStore
from carebridge.security.tokens import ExternalIssuer, TokenIssuer, TokenVerifier
from carebridge.storage.base import Repository


@dataclass
class Authority:
    store: SecurityStore
    keys: SigningKeys
    issuer: TokenIssuer
    verifier: TokenVerifier
    base_url: str  # the server's public origin; the FHIR base is base_url + "/fhir"

    @property
    def fhir_base(self) -> str:
        return self.base_url + "/fhir"

    @classmethod
    def open(cls, repository: Repository, base_url: str, *,
             external: tuple[ExternalIssuer, ...] = ()) -> Authority:
        store = SecurityStore(repository)
        keys = SigningKeys(store)
        fhir_base = base_url + "/fhir"
        issuer = TokenIssuer(keys, base_url, fhir_base)
        verifier = TokenVerifier(keys, store, base_url, fhir_base, external)
        return cls(store, keys, issuer, verifier, base_url)
