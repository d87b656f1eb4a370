"""OAuth 2.0 / SMART endpoints at ``/oauth``: authorize (a server-rendered login page with a
TOTP field), token, introspect, revoke, and ``launch`` (an EHR creates a launch context).

A thin adapter over :class:`carebridge.security.oauth.AuthorizationServer`; it reads forms,
applies the per-address rate limit, and shapes RFC 6749 responses (JSON errors from the token
endpoint, redirects with ``error`` from the authorization endpoint once the redirect URI is
known to be the client's, a plain page before that).
"""

from __future__ import annotations

import base64
import html
from typing import Any
from urllib.parse import parse_qsl, unquote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge.fhir.errors import FhirError
from carebridge.security import roles as R
from carebridge.security.authority import Authority
from carebridge.security.oauth import AuthorizationRequest, OAuthError
from carebridge.security.ratelimit import RateLimiter
from carebridge.security.users import LoginFailed

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_PAGE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self' *;"
             " frame-ancestors 'none'")
_FORM_BYTES = 16 * 1024
_CARRIED = ("response_type", "client_id", "redirect_uri", "scope", "state", "aud",
            "code_challenge", "code_challenge_method", "launch")


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>"
        f"{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:28em;"
        "margin:3em auto}}label{{display:block;margin:.6em 0}}input{{width:100%}}"
        f".err{{color:#a00}}</style></head><body><h1>{html.escape(title)}</h1>{body}"
        "</body></html>")
    return HTMLResponse(document, status, headers={**_NO_STORE,
                                                   "Content-Security-Policy": _PAGE_CSP})


def _login_form(params: dict[str, str], request: AuthorizationRequest, error: str = "",
                status: int = 200) -> HTMLResponse:
    hidden = "".join(f'<input type=hidden name="{k}" value="{html.escape(params[k])}">'
                     for k in _CARRIED if k in params)
    patient = ""
    if request.wants_patient and not request.launch:
        patient = ("<label>Patient id (for a patient-context app; staff only)"
                   "<input name=patient autocomplete=off></label>")
    problem = f"<p class=err>{html.escape(error)}</p>" if error else ""
    scopes = html.escape(" ".join(sorted(request.scope)) or "(none)")
    body = (f"<p>{html.escape(request.client.client_id)} asks for: <code>{scopes}</code></p>"
            f"{problem}<form method=post action=/oauth/authorize>{hidden}"
            "<label>Username<input name=username autocomplete=username required></label>"
            "<label>Password<input name=password type=password required></label>"
            "<label>Authenticator code (staff)<input name=totp inputmode=numeric "
            "autocomplete=one-time-code></label>"
            f"{patient}<button type=submit>Sign in and allow</button></form>")
    return _page("Sign in to carebridge", body, status)


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (RFC 6749 section 3.2), first value
    of each name; size-limited before it is read whole."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _FORM_BYTES:
            raise OAuthError("invalid_request", "Request too large", 413)
    form: dict[str, str] = {}
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        form.setdefault(key, value)
    return _clean(form)


def _clean(params: dict[str, str]) -> dict[str, str]:
    """No control characters in OAuth parameters (RFC 6749 appendix A allows none; a NUL
    would also reach the database, which refuses it in text)."""
    for key, value in params.items():
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key + value):
            raise OAuthError("invalid_request", "Control characters are not allowed")
    return params


def _basic(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except ValueError:
        raise OAuthError("invalid_client", "Malformed Basic credentials", 401) from None
    client_id, _, secret = decoded.partition(":")
    cleaned = _clean({"client_id": unquote(client_id), "client_secret": unquote(secret)})
    return cleaned["client_id"], cleaned["client_secret"]  # RFC 6749 2.3.1: form-encoded


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def oauth_routes(authority: Authority, *, login_per_minute: float = 20,
                 token_per_minute: float = 60) -> list[BaseRoute]:
    server = authority.oauth
    login_limit = RateLimiter(login_per_minute, burst=max(1, int(login_per_minute)))
    token_limit = RateLimiter(token_per_minute, burst=max(1, int(token_per_minute)))

    def too_many(limiter: RateLimiter, request: Request) -> Response | None:
        wait = limiter.allow(_address(request))
        if wait <= 0:
            return None
        return JSONResponse({"error": "slow_down", "error_description": "Too many requests"},
                            429, headers={"Retry-After": str(int(wait) + 1), **_NO_STORE})

    async def authorize(request: Request) -> Response:
        if request.method == "POST":
            limited = too_many(login_limit, request)
            if limited is not None:
                return limited
            try:
                params = await _form(request)
            except OAuthError as exc:
                return _page("Request refused", f"<p>{html.escape(exc.description)}</p>",
                             exc.status)
        else:
            params = dict(request.query_params)
        try:
            _clean(params)
            auth = await run_in_threadpool(server.check_request, params)
        except OAuthError as exc:
            return _page("Request refused", f"<p>{html.escape(exc.description)}</p>", 400)
        problem = server.request_problem(params)
        if problem is not None:
            return RedirectResponse(auth.error_redirect(*problem), 302)
        if request.method == "GET":
            return _login_form(params, auth)
        try:
            target = await run_in_threadpool(
                server.login, auth, params.get("username", ""), params.get("password", ""),
                params.get("totp"), params.get("patient"))
        except LoginFailed as exc:
            return _login_form(params, auth, str(exc), 401)
        except OAuthError as exc:
            return RedirectResponse(auth.error_redirect(exc.error, exc.description), 302)
        return RedirectResponse(target, 302, headers=_NO_STORE)

    async def token(request: Request) -> Response:
        limited = too_many(token_limit, request)
        if limited is not None:
            return limited
        try:
            form = await _form(request)
            reply = await run_in_threadpool(server.token, form, _basic(request))
        except OAuthError as exc:
            headers = dict(_NO_STORE)
            if exc.status == 401:
                headers["WWW-Authenticate"] = "Basic"
            return JSONResponse(exc.body(), exc.status, headers=headers)
        return JSONResponse(reply, headers=_NO_STORE)

    async def authenticated(request: Request) -> bool:
        """Introspection callers: a confidential client's secret, or any valid token."""
        try:
            basic = _basic(request)
        except OAuthError:
            return False
        if basic is not None:
            client = authority.clients.get(basic[0])
            return client is not None and await run_in_threadpool(
                authority.clients.check_secret, client, basic[1])
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            try:
                authority.verifier.verify(header[7:].strip())
                return True
            except FhirError:
                return False
        return False

    async def introspect(request: Request) -> Response:
        if not await authenticated(request):
            return JSONResponse({"error": "invalid_client"}, 401,
                                headers={"WWW-Authenticate": "Basic", **_NO_STORE})
        try:
            form = await _form(request)
        except OAuthError as exc:
            return JSONResponse(exc.body(), exc.status, headers=_NO_STORE)
        reply = await run_in_threadpool(server.introspect, form.get("token", ""))
        return JSONResponse(reply, headers=_NO_STORE)

    async def revoke(request: Request) -> Response:
        limited = too_many(token_limit, request)
        if limited is not None:
            return limited
        try:
            form = await _form(request)
        except OAuthError as exc:
            return JSONResponse(exc.body(), exc.status, headers=_NO_STORE)
        await run_in_threadpool(server.revoke, form.get("token", ""))
        return Response(status_code=200, headers=_NO_STORE)

    async def launch(request: Request) -> Response:
        """An EHR (a signed-in clinician's token) opens a launch context for an app."""
        header = request.headers.get("authorization", "")
        try:
            caller = authority.verifier.verify(header[7:].strip()) if header.lower(
            ).startswith("bearer ") else None
        except FhirError:
            caller = None
        if caller is None or not caller.roles & {R.PHYSICIAN, R.NURSE}:
            return JSONResponse({"error": "access_denied"}, 403, headers=_NO_STORE)
        try:
            form = await _form(request)
        except OAuthError as exc:
            return JSONResponse(exc.body(), exc.status, headers=_NO_STORE)
        if not form.get("client_id") or not form.get("patient"):
            return JSONResponse({"error": "invalid_request",
                                 "error_description": "client_id and patient are required"},
                                400, headers=_NO_STORE)
        handle = await run_in_threadpool(server.create_launch, form["client_id"],
                                         form["patient"], caller.subject)
        body: dict[str, Any] = {"launch": handle, "iss": authority.fhir_base}
        return JSONResponse(body, headers=_NO_STORE)

    return [
        Route("/oauth/authorize", authorize, methods=["GET", "POST"]),
        Route("/oauth/token", token, methods=["POST"]),
        Route("/oauth/introspect", introspect, methods=["POST"]),
        Route("/oauth/revoke", revoke, methods=["POST"]),
        Route("/oauth/launch", launch, methods=["POST"]),
    ]
