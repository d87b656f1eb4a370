"""The security layer in front of every route: bearer-token authentication and response
headers, as one pure ASGI middleware (no per-request Starlette objects on the hot path).

- Everything but the public paths (the CapabilityStatement, the SMART discovery document, the
  JWKS, the OAuth endpoints and device ingest, which authenticate their callers themselves) needs
  ``Authorization: Bearer <access token>`` (RFC 6750); a missing or bad token gets 401 with a
  ``WWW-Authenticate`` challenge and an OperationOutcome that says nothing more.
- The verified :class:`~carebridge.security.policy.Caller` is put in the ASGI scope
  (``carebridge.caller``) where the FHIR routes pick it up for the service layer.
- ``insecure``: no authentication at all (``serve --insecure-dev``, loopback only); every
  response says so in ``X-Carebridge-Insecure``.
- Every response gets defensive headers (no sniffing, no framing, no referrer, not cached,
  a restrictive Content-Security-Policy unless the page set its own, HSTS under TLS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carebridge.api.responses import fhir_json
from carebridge.fhir.errors import BadRequest, FhirError, Unauthorized
from carebridge.security.audit import AuditLedger
from carebridge.security.audit_events import rest_event
from carebridge.security.authority import Authority
from carebridge.security.policy import Caller
from carebridge.security.roles import SYSTEM_ROLE
from carebridge.security.tokens import TokenVerifier

PUBLIC_PATHS = frozenset({
    "/", "/fhir/metadata", "/.well-known/smart-configuration",
    "/fhir/.well-known/smart-configuration",
})
# /oauth/ endpoints authenticate clients themselves; /devices/ takes per-device credentials
# (carebridge.ingest.devices) and writes under a least-privilege device identity.
PUBLIC_PREFIXES = ("/oauth/", "/devices/")
INSECURE_HEADER = b"x-carebridge-insecure"
INSECURE_VALUE = b"authentication disabled (--insecure-dev); never expose this server"
#: Who every request is in insecure development mode.
INSECURE_CALLER = Caller("insecure-dev", roles=frozenset({SYSTEM_ROLE}))

_BASE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_NO_STORE = (b"cache-control", b"no-store")
_HSTS = (b"strict-transport-security", b"max-age=31536000")


class SecurityLayer:
    def __init__(self, app: ASGIApp, *, verifier: TokenVerifier | None, insecure: bool = False,
                 tls: bool = False, ledger: AuditLedger | None = None) -> None:
        if verifier is None and not insecure:
            raise ValueError("a secured server needs a token verifier")
        self.app = app
        self.verifier = verifier
        self.insecure = insecure
        self.ledger = ledger
        self.extra = list(_BASE_HEADERS)
        if tls:
            self.extra.append(_HSTS)
        if insecure:
            self.extra.append((INSECURE_HEADER, INSECURE_VALUE))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]
        send_with_headers = self._headers(send, status)
        path: str = scope["path"]
        client = scope.get("client")
        remote = client[0] if client else None
        # Every way in over HTTP is audited but discovery and /oauth/ (whose logins and token
        # issues the authorization server records itself, with their reasons).
        audited = self.ledger is not None and path not in PUBLIC_PATHS and (
            not path.startswith("/oauth/"))
        if (path not in PUBLIC_PATHS and not path.startswith("/oauth/")
                and (b"%00" in scope.get("query_string", b"") or "\x00" in path)):
            # No NUL in a request line that reaches the database: PostgreSQL refuses it in
            # text (a 500). The OAuth endpoints check their parameters themselves.
            response = fhir_json(BadRequest("NUL characters are not allowed").outcome(), 400)
            await response(scope, receive, send_with_headers)
            return
        if self.insecure:
            scope["carebridge.caller"] = INSECURE_CALLER
        elif path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
            try:
                scope["carebridge.caller"] = self._authenticate(scope, remote)
            except FhirError as exc:
                response = fhir_json(exc.outcome(), status=exc.status, headers=exc.headers)
                await response(scope, receive, send_with_headers)
                if audited:
                    self._audit(scope, status[0], remote, "no valid access token")
                return
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            # A route that records its own, richer event (device ingest) says so in the scope.
            if audited and not scope.get("carebridge.audited"):
                self._audit(scope, status[0], remote)

    def _audit(self, scope: Scope, status: int, remote: str | None, detail: str = "") -> None:
        assert self.ledger is not None
        caller = scope.get("carebridge.caller")
        if scope["path"].startswith("/fhir"):
            interaction, rtype, rid, patient = classify(scope["method"], scope["path"])
        else:  # device ingest, monitoring desk: named by method and path
            interaction, rtype, rid, patient = "operation", None, None, None
            detail = detail or f"{scope['method']} {scope['path']}"
        if isinstance(caller, Caller) and caller.patient:
            patient = caller.patient
        self.ledger.record(rest_event(
            interaction, status, caller if isinstance(caller, Caller) else None,
            address=remote, resource_type=rtype, resource_id=rid,
            query=scope.get("query_string", b"").decode("latin-1"), patient=patient,
            detail=detail))

    def _authenticate(self, scope: Scope, remote: str | None) -> Caller:
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        if authorization is None:
            raise Unauthorized("This server requires an access token", code="login",
                               headers={"WWW-Authenticate": "Bearer"})
        kind, _, token = authorization.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise Unauthorized("Use the Bearer authorization scheme", code="login",
                               headers={"WWW-Authenticate": "Bearer"})
        assert self.verifier is not None
        return self.verifier.verify(token.strip(), remote)

    def _headers(self, send: Send, status: list[int]) -> Any:
        extra = self.extra

        async def sender(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [h for h in extra if h[0] not in names]
                if b"content-security-policy" not in names:
                    headers.append(_CSP)
                if b"cache-control" not in names:
                    headers.append(_NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        return sender


def classify(method: str, path: str) -> tuple[str, str | None, str | None, str | None]:
    """(restful interaction, type, id, patient) of a request to ``/fhir`` (for the audit)."""
    parts = [p for p in path.split("/")[2:] if p]
    if parts and parts[-1] == "_search":
        parts, method = parts[:-1], "GET"
    rtype = parts[0] if parts and parts[0][:1].isupper() else None
    rid = parts[1] if len(parts) > 1 and not parts[1].startswith("_") else None
    patient = rid if rtype == "Patient" else None
    if not parts:
        return ("transaction" if method == "POST" else "search-system"), None, None, None
    if parts[0] == "_history":
        return "history-system", None, None, None
    if len(parts) == 1:
        interaction = {"GET": "search-type", "POST": "create", "PUT": "update",
                       "DELETE": "delete"}.get(method, "operation")
        return interaction, rtype, None, None
    if parts[1] == "_history":
        return "history-type", rtype, None, None
    if len(parts) == 2:
        interaction = {"GET": "read", "PUT": "update", "PATCH": "patch",
                       "DELETE": "delete"}.get(method, "operation")
        return interaction, rtype, rid, patient
    if parts[2] == "_history":
        return ("vread" if len(parts) > 3 else "history-instance"), rtype, rid, patient
    if parts[2].startswith("$"):  # an instance operation ($validate, Patient $everything)
        return "operation", rtype, rid, patient
    return "search-type", parts[2], None, patient  # compartment search


@dataclass
class ApiSecurity:
    """How :func:`carebridge.api.create_api` secures the application.

    ``authority`` set: bearer tokens required (SecurityLayer), SMART discovery, JWKS and the
    OAuth endpoints mounted. ``insecure``: no authentication (development on loopback only).
    """

    authority: Authority | None = None
    insecure: bool = False
    tls: bool = False
    cors_origins: tuple[str, ...] = ()
    extra_routes: list[BaseRoute] = field(default_factory=list)
