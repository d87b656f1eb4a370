"""Access tokens: short-lived JWTs (RFC 7519) signed ES384, and their verification.

A token carries who (``sub``, ``fhirUser``), for which client (``client_id``), what
(``scope``, the roles it was issued under in ``cb_roles``), the launch context (``patient``)
and the usual ``iss``/``aud``/``iat``/``exp``/``jti``. Verification checks the signature
against our published keys (or a configured external OpenID Connect issuer's JWKS), refuses
any algorithm but the expected ones (so ``alg: none`` and HMAC-with-the-public-key tricks fail),
then the issuer, audience and lifetime, then the revocation list.

Verified tokens are cached until they expire (a dictionary lookup instead of an ECDSA
verification per request); the revocation list is re-read every few seconds, so a revoked
token stops working across processes within that time.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from carebridge.fhir.errors import Unauthorized
from carebridge.security.keys import ALGORITHM, SigningKeys
from carebridge.security.policy import Caller
from carebridge.security.roles import REQUESTABLE_PURPOSES, default_purpose
from carebridge.security.scopes import split_scope
from carebridge.security.store import SecurityStore, now

ACCESS_TOKEN_SECONDS = 300
_LEEWAY = 30
_ASYMMETRIC = ["ES384", "RS384", "ES256", "RS256", "PS384"]


@dataclass(frozen=True, slots=True)
class ExternalIssuer:
    """An OpenID Connect provider whose access tokens we accept (issuer + its JWKS URL)."""

    issuer: str
    jwks_url: str
    audience: str
    roles_claim: str = "roles"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    claims: dict[str, Any]


class TokenIssuer:
    def __init__(self, keys: SigningKeys, issuer: str, audience: str,
                 lifetime: int = ACCESS_TOKEN_SECONDS) -> None:
        self.keys, self.issuer, self.audience, self.lifetime = keys, issuer, audience, lifetime

    def issue(self, *, subject: str, client_id: str, scope: str, roles: frozenset[str],
              patient: str | None = None, fhir_user: str | None = None,
              purpose: str | None = None) -> IssuedToken:
        moment = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": subject, "aud": self.audience, "iat": moment,
            "exp": moment + self.lifetime, "jti": secrets.token_urlsafe(16),
            "client_id": client_id, "scope": scope, "cb_roles": sorted(roles),
        }
        if patient:
            claims["patient"] = patient
        if fhir_user:
            claims["fhirUser"] = fhir_user
        if purpose:
            claims["purpose_of_use"] = purpose
        key = self.keys.signing_key()
        token = jwt.encode({"alg": ALGORITHM, "typ": "JWT", "kid": key.kid}, claims, key,
                           algorithms=[ALGORITHM])
        return IssuedToken(token, claims)


def _invalid(description: str) -> Unauthorized:
    # RFC 6750 section 3: the challenge names the error; the body never says more than that.
    return Unauthorized(
        f"Invalid access token: {description}", code="login",
        headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description='
                                     f'"{description}"'})


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a compact JWS, NOT verified (only to route it to the right keys)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise _invalid("malformed")
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise _invalid("malformed") from None
    if not isinstance(payload, dict):
        raise _invalid("malformed")
    return payload


class TokenVerifier:
    def __init__(self, keys: SigningKeys, store: SecurityStore, issuer: str, audience: str,
                 external: tuple[ExternalIssuer, ...] = (), *, revocation_refresh: float = 5.0,
                 cache_size: int = 10000) -> None:
        self.keys, self.store = keys, store
        self.issuer, self.audience = issuer, audience
        self.external = {e.issuer: e for e in external}
        self.revocation_refresh = revocation_refresh
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[Caller, float]] = OrderedDict()
        self._revoked: set[str] = set()
        self._revoked_at = 0.0
        self._external_keys: dict[str, tuple[KeySet, float]] = {}
        self._lock = threading.Lock()

    def verify(self, token: str, remote_addr: str | None = None) -> Caller:
        moment = time.time()
        self._refresh_revocations(moment)
        cached = self._cache.get(token)
        if cached is not None:
            caller, expires = cached
            if expires > moment and caller.token_id not in self._revoked:
                return caller if caller.remote_addr == remote_addr else _at(caller, remote_addr)
            self._cache.pop(token, None)
        caller, expires = self._verify(token, moment, remote_addr)
        if caller.token_id in self._revoked:
            raise _invalid("revoked")
        with self._lock:
            self._cache[token] = (caller, expires)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return caller

    def _verify(self, token: str, moment: float, remote_addr: str | None) -> tuple[Caller, float]:
        issuer = unverified_claims(token).get("iss")
        external = self.external.get(issuer) if isinstance(issuer, str) else None
        if issuer != self.issuer and external is None:
            raise _invalid("unknown issuer")
        try:
            header = orjson.loads(base64.urlsafe_b64decode(
                token.split(".")[0] + "=" * (-len(token.split(".")[0]) % 4)))
            kid = header.get("kid") if isinstance(header, dict) else None
            if external is None:
                decoded = jwt.decode(token, self.keys.verification_keys(kid),
                                     algorithms=[ALGORITHM])
            else:
                decoded = jwt.decode(token, self._external_keyset(external, kid),
                                     algorithms=_ASYMMETRIC)
        except (JoseError, ValueError, orjson.JSONDecodeError):
            raise _invalid("bad signature or algorithm") from None
        claims = decoded.claims
        audience = external.audience if external else self.audience
        aud = claims.get("aud")
        if not (aud == audience or (isinstance(aud, list) and audience in aud)):
            raise _invalid("wrong audience")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp + _LEEWAY < moment:
            raise _invalid("expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf - _LEEWAY > moment:
            raise _invalid("not yet valid")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise _invalid("no subject")
        if external is None:
            roles = claims.get("cb_roles") or []
        else:
            roles = claims.get(external.roles_claim) or []
        scope = claims.get("scope") or claims.get("scp") or ""
        if isinstance(scope, list):
            scope = " ".join(str(s) for s in scope)
        patient = claims.get("patient")
        granted = frozenset(str(r) for r in roles if isinstance(r, str))
        purpose = claims.get("purpose_of_use")
        caller = Caller(
            subject=subject if external is None else f"{issuer}#{subject}",
            client_id=str(claims.get("client_id") or claims.get("azp") or "") or None,
            roles=granted,
            scopes=split_scope(str(scope)),
            remote_addr=remote_addr,
            patient=patient if isinstance(patient, str) else None,
            fhir_user=claims.get("fhirUser") if isinstance(claims.get("fhirUser"), str) else None,
            token_id=str(claims.get("jti") or "") or None,
            purpose=purpose if purpose in REQUESTABLE_PURPOSES else default_purpose(granted),
        )
        return caller, float(exp)

    def _external_keyset(self, external: ExternalIssuer, kid: str | None) -> KeySet:
        cached = self._external_keys.get(external.issuer)
        stale = cached is None or time.time() - cached[1] > 300 or (
            kid is not None and not any(k.kid == kid for k in cached[0].keys))
        if stale:
            with urllib.request.urlopen(external.jwks_url, timeout=5) as reply:
                keyset = KeySet.import_key_set(orjson.loads(reply.read()))
            self._external_keys[external.issuer] = (keyset, time.time())
            return keyset
        assert cached is not None
        return cached[0]

    def _refresh_revocations(self, moment: float) -> None:
        if moment - self._revoked_at < self.revocation_refresh:
            return
        self._revoked_at = moment
        rows = self.store.query("SELECT jti FROM sec_revoked WHERE expires > ?", (now(),))
        self._revoked = {r[0] for r in rows}

    def revoke(self, jti: str, expires: float) -> None:
        self.store.execute(
            "INSERT INTO sec_revoked (jti, expires) VALUES (?, ?) ON CONFLICT (jti) DO NOTHING",
            (jti, expires))
        self._revoked.add(jti)


def _at(caller: Caller, remote_addr: str | None) -> Caller:
    from dataclasses import replace

    return replace(caller, remote_addr=remote_addr)
