"""The authorization server: SMART App Launch 2.0 on OAuth 2.0 (RFC 6749).

- Authorization code grant with PKCE (RFC 7636), ``S256`` only; codes live 60 s and work once
  (a replayed code also revokes what it produced, RFC 6749 section 4.1.2).
- Refresh tokens rotate: each use returns a new one; presenting a used one revokes its whole
  family (theft detection, OAuth 2.0 Security BCP section 4.14).
- SMART launch context: ``launch/patient`` from the patient a user picks (standalone), from an
  EHR launch handle (``launch``), or the Patient a patient user is linked to.
- SMART Backend Services: ``client_credentials`` with a ``private_key_jwt`` assertion (RFC 7523)
  signed RS384 or ES384 with a key in the client's registered JWK Set; ``aud`` must be the
  token endpoint, lifetime at most 5 minutes, and each ``jti`` is accepted once.
- Introspection (RFC 7662) and revocation (RFC 7009).

Opaque handles (codes, refresh tokens, launch ids) are stored only as SHA-256 hashes.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from carebridge.fhir.errors import FhirError
from carebridge.security import roles as R
from carebridge.security.clients import Client, ClientRegistry
from carebridge.security.keys import ALGORITHM
from carebridge.security.scopes import CONTEXT_SCOPES, parse_scopes, split_scope, within
from carebridge.security.store import SecurityStore, now
from carebridge.security.tokens import TokenIssuer, TokenVerifier, unverified_claims
from carebridge.security.users import LoginFailed, User, UserDirectory

CODE_SECONDS = 60
REFRESH_SECONDS = 30 * 24 * 3600
LAUNCH_SECONDS = 300
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")

#: (event, outcome "0"/"4"/"8", subject, client_id, detail) -> None; the audit trail.
AuditHook = Callable[[str, str, str | None, str | None, str], None]


class OAuthError(Exception):
    """An RFC 6749 section 5.2 error (``invalid_grant``, ...)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    client: Client
    redirect_uri: str
    scope: frozenset[str]
    state: str
    code_challenge: str
    launch: str | None

    def error_redirect(self, error: str, description: str) -> str:
        query = {"error": error, "error_description": description, "state": self.state}
        return f"{self.redirect_uri}?{urlencode(query)}"

    @property
    def wants_patient(self) -> bool:
        return "launch/patient" in self.scope or any(
            g.context == "patient" for g in parse_scopes(self.scope))


def _hash(handle: str) -> str:
    return hashlib.sha256(handle.encode()).hexdigest()


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _no_audit(event: str, outcome: str, subject: str | None, client: str | None,
              detail: str) -> None:
    return None


class AuthorizationServer:
    def __init__(self, store: SecurityStore, users: UserDirectory, clients: ClientRegistry,
                 issuer: TokenIssuer, verifier: TokenVerifier, base_url: str,
                 audit: AuditHook = _no_audit) -> None:
        self.store, self.users, self.clients = store, users, clients
        self.issuer, self.verifier = issuer, verifier
        self.base_url = base_url
        self.fhir_base = base_url + "/fhir"
        self.token_endpoint = base_url + "/oauth/token"
        self.audit = audit

    # ---------------------------------------------------------------- authorize

    def check_request(self, params: dict[str, str]) -> AuthorizationRequest:
        """Validate an authorization request. Errors about the client or redirect URI are
        raised as :class:`OAuthError` (shown, never redirected: RFC 6749 section 4.1.2.1);
        the request returned carries everything else, still to be checked by the caller
        through :meth:`request_problem`."""
        client = self.clients.get(params.get("client_id", ""))
        if client is None or client.disabled or client.kind == "backend":
            raise OAuthError("invalid_client", "Unknown client")
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            raise OAuthError("invalid_request", "The redirect_uri is not registered")
        return AuthorizationRequest(
            client, redirect_uri, within(split_scope(params.get("scope")), client.scopes),
            params.get("state", ""), params.get("code_challenge", ""), params.get("launch"))

    def request_problem(self, params: dict[str, str]) -> tuple[str, str] | None:
        """The (error, description) to redirect with, or None when the request is sound."""
        if params.get("response_type") != "code":
            return "unsupported_response_type", "Only response_type=code is supported"
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            return "invalid_request", "PKCE with code_challenge_method=S256 is required"
        if not params.get("state"):
            return "invalid_request", "state is required"
        if params.get("aud", "").rstrip("/") != self.fhir_base:
            return "invalid_request", f"aud must be this server's FHIR base {self.fhir_base}"
        return None

    def login(self, request: AuthorizationRequest, username: str, password: str,
              totp: str | None, chosen_patient: str | None = None) -> str:
        """Authenticate the user and return the redirect URL carrying a fresh code."""
        try:
            user = self.users.authenticate(username, password, totp)
        except LoginFailed as exc:
            self.audit("login", "4", username, request.client.client_id, exc.reason)
            raise
        self.audit("login", "0", username, request.client.client_id, "authenticated")
        patient = self._patient_context(request, user, chosen_patient)
        scope = request.scope
        if patient is None:
            scope = frozenset(s for s in scope if not s.startswith("patient/")
                              and s != "launch/patient")
        code = secrets.token_urlsafe(32)
        data = {"scope": " ".join(sorted(scope)), "patient": patient,
                "redirect_uri": request.redirect_uri, "challenge": request.code_challenge,
                "username": user.username, "roles": sorted(user.roles),
                "fhir_user": user.fhir_user}
        self._put_grant(code, "code", secrets.token_urlsafe(12), request.client.client_id,
                        user.username, data, CODE_SECONDS)
        query = {"code": code, "state": request.state}
        return f"{request.redirect_uri}?{urlencode(query)}"

    def _patient_context(self, request: AuthorizationRequest, user: User,
                         chosen: str | None) -> str | None:
        if R.PATIENT in user.roles:
            return user.patient_id  # a patient sees only themself, whatever was asked
        if request.launch:
            launch = self._take_grant(request.launch, "launch", request.client.client_id)
            if launch is None:
                raise OAuthError("invalid_request", "Unknown or expired launch")
            patient = launch[1].get("patient")
            return patient if isinstance(patient, str) else None
        if request.wants_patient:
            return chosen.strip() if chosen and chosen.strip() else None
        return None

    def create_launch(self, client_id: str, patient: str, username: str) -> str:
        """An EHR launch handle (SMART ``launch`` parameter) binding a patient context."""
        handle = secrets.token_urlsafe(24)
        self._put_grant(handle, "launch", handle, client_id, username, {"patient": patient},
                        LAUNCH_SECONDS)
        return handle

    # ---------------------------------------------------------------- token

    def token(self, form: dict[str, str], basic: tuple[str, str] | None) -> dict[str, Any]:
        purpose = form.get("purpose_of_use")
        if purpose is not None and purpose not in R.REQUESTABLE_PURPOSES:
            raise OAuthError("invalid_request", "purpose_of_use must be a v3-ActReason purpose"
                             " of use code (e.g. TREAT, ETREAT, HOPERAT, PATRQT)")
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._code_grant(form, basic)
        if grant_type == "refresh_token":
            return self._refresh_grant(form, basic)
        if grant_type == "client_credentials":
            return self._client_credentials(form)
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")

    def _client(self, form: dict[str, str], basic: tuple[str, str] | None) -> Client:
        """Authenticate the client (RFC 6749 section 2.3): secret for confidential clients,
        none for public ones (PKCE protects them)."""
        client_id, secret = basic if basic else (form.get("client_id", ""),
                                                 form.get("client_secret"))
        client = self.clients.get(client_id)
        if client is None or client.disabled or client.kind == "backend":
            raise OAuthError("invalid_client", "Client authentication failed", 401)
        if client.kind == "confidential" and not (
                secret and self.clients.check_secret(client, secret)):
            raise OAuthError("invalid_client", "Client authentication failed", 401)
        return client

    def _code_grant(self, form: dict[str, str], basic: tuple[str, str] | None) -> dict[str, Any]:
        client = self._client(form, basic)
        code = form.get("code", "")
        found = self._take_grant(code, "code", client.client_id, replay_revokes=True)
        if found is None:
            self.audit("token", "4", None, client.client_id, "invalid or replayed code")
            raise OAuthError("invalid_grant", "The code is invalid, expired or used")
        family, data = found
        if form.get("redirect_uri") != data["redirect_uri"]:
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorization")
        verifier = form.get("code_verifier", "")
        if not _VERIFIER.match(verifier) or not secrets.compare_digest(
                _s256(verifier), data["challenge"]):
            self.audit("token", "4", data["username"], client.client_id, "PKCE mismatch")
            raise OAuthError("invalid_grant", "PKCE verification failed")
        return self._issue(client, data, family, form.get("purpose_of_use"))

    def _refresh_grant(self, form: dict[str, str],
                       basic: tuple[str, str] | None) -> dict[str, Any]:
        client = self._client(form, basic)
        found = self._take_grant(form.get("refresh_token", ""), "refresh", client.client_id,
                                 replay_revokes=True)
        if found is None:
            self.audit("token", "4", None, client.client_id, "invalid or reused refresh token")
            raise OAuthError("invalid_grant", "The refresh token is invalid, expired or used")
        family, data = found
        asked = split_scope(form.get("scope")) if form.get("scope") else None
        if asked is not None:  # RFC 6749 section 6: a refresh may narrow, never widen
            data = {**data, "scope": " ".join(sorted(asked & split_scope(data["scope"])))}
        user = self.users.get(data["username"])
        if user is None or user.disabled:
            raise OAuthError("invalid_grant", "The user is no longer active")
        return self._issue(client, data, family, form.get("purpose_of_use"))

    def _issue(self, client: Client, data: dict[str, Any], family: str,
               purpose: str | None = None) -> dict[str, Any]:
        scope = split_scope(data["scope"])
        issued = self.issuer.issue(
            subject=data["username"], client_id=client.client_id, scope=data["scope"],
            roles=frozenset(data["roles"]), patient=data.get("patient"),
            fhir_user=data.get("fhir_user"), purpose=purpose)
        reply: dict[str, Any] = {
            "access_token": issued.token, "token_type": "Bearer",
            "expires_in": self.issuer.lifetime, "scope": data["scope"]}
        if data.get("patient"):
            reply["patient"] = data["patient"]
        if "openid" in scope:
            reply["id_token"] = self._id_token(client, data)
        if scope & {"offline_access", "online_access"}:
            refresh = secrets.token_urlsafe(32)
            self._put_grant(refresh, "refresh", family, client.client_id, data["username"],
                            {k: data.get(k) for k in ("scope", "patient", "username", "roles",
                                                      "fhir_user")}, REFRESH_SECONDS)
            reply["refresh_token"] = refresh
        self.audit("token", "0", data["username"], client.client_id, f"scope {data['scope']}")
        return reply

    def _id_token(self, client: Client, data: dict[str, Any]) -> str:
        moment = int(time.time())
        claims = {"iss": self.base_url, "sub": data["username"], "aud": client.client_id,
                  "iat": moment, "exp": moment + self.issuer.lifetime}
        if data.get("fhir_user"):
            claims["fhirUser"] = f"{self.fhir_base}/{data['fhir_user']}"
        key = self.issuer.keys.signing_key()
        return jwt.encode({"alg": ALGORITHM, "kid": key.kid}, claims, key,
                          algorithms=[ALGORITHM])

    def _client_credentials(self, form: dict[str, str]) -> dict[str, Any]:
        """SMART Backend Services (backend-services.html#obtaining-an-access-token)."""
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_client", "A private_key_jwt client assertion is required",
                             401)
        assertion = form.get("client_assertion", "")
        claims = unverified_claims(assertion) if assertion.count(".") == 2 else {}
        client = self.clients.get(str(claims.get("iss", "")))
        if client is None or client.kind != "backend" or client.disabled or not client.jwks:
            self.audit("token", "4", None, str(claims.get("iss")), "unknown backend client")
            raise OAuthError("invalid_client", "Client authentication failed", 401)
        try:
            verified = jwt.decode(assertion, KeySet.import_key_set(client.jwks),  # type: ignore[arg-type]
                                  algorithms=["RS384", "ES384"]).claims
        except (JoseError, ValueError):
            self.audit("token", "4", None, client.client_id, "bad client assertion signature")
            raise OAuthError("invalid_client", "Client authentication failed", 401) from None
        moment = now()
        exp = verified.get("exp")
        if (verified.get("sub") != client.client_id or verified.get("aud") not in (
                self.token_endpoint, [self.token_endpoint])
                or not isinstance(exp, int | float) or exp < moment or exp > moment + 300
                or not isinstance(verified.get("jti"), str)):
            self.audit("token", "4", None, client.client_id, "client assertion claims")
            raise OAuthError("invalid_client", "Client assertion claims are not acceptable",
                             401)
        if not self.store.execute(
                "INSERT INTO sec_revoked (jti, expires) VALUES (?, ?) ON CONFLICT (jti)"
                " DO NOTHING", (f"assertion:{client.client_id}:{verified['jti']}", exp + 60)):
            self.audit("token", "4", None, client.client_id, "client assertion replayed")
            raise OAuthError("invalid_client", "Client assertion already used", 401)
        requested = split_scope(form.get("scope"))
        scope = frozenset(s for s in within(requested, client.scopes)
                          if s.startswith("system/") or s in CONTEXT_SCOPES - {
                              "launch", "launch/patient", "offline_access"})
        if not scope:
            raise OAuthError("invalid_scope", "No requested scope is allowed for this client")
        issued = self.issuer.issue(subject=client.client_id, client_id=client.client_id,
                                   scope=" ".join(sorted(scope)), roles=client.roles,
                                   purpose=form.get("purpose_of_use"))
        self.audit("token", "0", client.client_id, client.client_id, "client_credentials")
        return {"access_token": issued.token, "token_type": "Bearer",
                "expires_in": self.issuer.lifetime, "scope": " ".join(sorted(scope))}

    # ---------------------------------------------------------------- introspect, revoke

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662: ``active`` and the claims of a valid access token; refresh tokens answer
        with their scope and expiry."""
        try:
            caller = self.verifier.verify(token)
        except FhirError:  # any failure is simply "not active"
            return self._introspect_refresh(token)
        claims = unverified_claims(token)
        reply: dict[str, Any] = {"active": True}
        reply.update({k: claims[k] for k in (
            "scope", "client_id", "sub", "exp", "iat", "iss", "aud", "jti") if k in claims})
        reply["token_type"] = "Bearer"
        if caller.patient:
            reply["patient"] = caller.patient
        return reply

    def _introspect_refresh(self, token: str) -> dict[str, Any]:
        rows = self.store.query(
            "SELECT client_id, username, data, expires FROM sec_grant WHERE handle_hash = ?"
            " AND kind = 'refresh' AND used = ? AND expires > ?",
            (_hash(token), self.store.flag(False), now()))
        if not rows:
            return {"active": False}
        client_id, username, data, expires = rows[0]
        return {"active": True, "client_id": client_id, "sub": username,
                "scope": orjson.loads(data)["scope"], "exp": int(expires),
                "token_type": "refresh_token"}

    def revoke(self, token: str) -> None:
        """RFC 7009: revoke a refresh token (and its family) or an access token; unknown
        tokens are not an error."""
        rows = self.store.query(
            "SELECT family FROM sec_grant WHERE handle_hash = ? AND kind = 'refresh'",
            (_hash(token),))
        if rows:
            self._revoke_family(rows[0][0])
            return
        try:
            claims = unverified_claims(token)
            self.verifier.verify(token)
        except FhirError:  # not one of ours, or already invalid
            return
        if isinstance(claims.get("jti"), str):
            self.verifier.revoke(claims["jti"], float(claims.get("exp", now() + 3600)))

    # ---------------------------------------------------------------- grant store

    def _put_grant(self, handle: str, kind: str, family: str, client_id: str,
                   username: str | None, data: dict[str, Any], seconds: float) -> None:
        self.store.execute(
            "INSERT INTO sec_grant (handle_hash, kind, family, client_id, username, data,"
            " expires, used) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (_hash(handle), kind, family, client_id, username, orjson.dumps(data).decode(),
             now() + seconds, self.store.flag(False)))

    def _take_grant(self, handle: str, kind: str, client_id: str, *,
                    replay_revokes: bool = False) -> tuple[str, dict[str, Any]] | None:
        """Spend a one-time handle: (family, data), or None when unknown, expired, another
        client's or already spent (which, with ``replay_revokes``, revokes its family)."""
        if not handle:
            return None
        with self.store.repository.session(write=True) as session:
            rows = self.store.query(
                "SELECT family, client_id, data, expires, used FROM sec_grant"
                " WHERE handle_hash = ? AND kind = ?", (_hash(handle), kind), session=session)
            if not rows:
                return None
            family, owner, data, expires, used = rows[0]
            if used:
                if replay_revokes:
                    self.store.execute("UPDATE sec_grant SET used = ? WHERE family = ?",
                                       (self.store.flag(True), family), session=session)
                return None
            self.store.execute("UPDATE sec_grant SET used = ? WHERE handle_hash = ?",
                               (self.store.flag(True), _hash(handle)), session=session)
        if owner != client_id or expires < now():
            return None
        return family, orjson.loads(data)

    def _revoke_family(self, family: str) -> None:
        self.store.execute("UPDATE sec_grant SET used = ? WHERE family = ?",
                           (self.store.flag(True), family))
