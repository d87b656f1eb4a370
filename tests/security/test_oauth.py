"""Points 3 and 8: SMART App Launch (authorization code + PKCE S256, refresh rotation,
standalone and EHR launch), Backend Services, introspection, revocation, and attacks on them."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import pyotp
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey

from carebridge.security.policy import SYSTEM

Secured = Any
PASSWORD = "correct horse battery"
APP = "growth-chart"
REDIRECT = "https://app.example/callback"
FHIR = "http://testserver/fhir"


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


class Codes:
    """TOTP codes for successive logins: each a later time step (a step is accepted once)."""

    def __init__(self, secret: str) -> None:
        self.totp, self.step = pyotp.TOTP(secret), -1

    def next(self) -> str:
        code = self.totp.at(time.time() + 30 * self.step)
        self.step += 1
        return code


@pytest.fixture
def setup(secured: Secured) -> dict[str, Any]:
    a = secured.authority
    pid = secured.service.create(SYSTEM, "Patient", {"resourceType": "Patient"}).version.id
    other = secured.service.create(SYSTEM, "Patient", {"resourceType": "Patient"}).version.id
    a.clients.add(APP, "public", redirect_uris=[REDIRECT],
                  scopes="openid fhirUser launch launch/patient offline_access patient/*.rs "
                         "user/*.cruds")
    codes = Codes(a.users.add("house", PASSWORD, {"physician"}) or "")
    a.users.add("ada", PASSWORD, {"patient"}, patient_id=pid)
    return {"pid": pid, "other": other, "codes": codes}


def _authorize(secured: Secured, scope: str, challenge: str, **extra: str) -> dict[str, str]:
    params = {"response_type": "code", "client_id": APP, "redirect_uri": REDIRECT,
              "scope": scope, "state": "xyz", "aud": FHIR, "code_challenge": challenge,
              "code_challenge_method": "S256", **extra}
    return params


def _login(secured: Secured, params: dict[str, str], username: str, totp: str = "",
           patient: str = "") -> Any:
    page = secured.client.get("/oauth/authorize?" + urlencode(params))
    assert page.status_code == 200 and "<form" in page.text
    assert page.headers["cache-control"] == "no-store"
    return secured.client.post("/oauth/authorize", data={
        **params, "username": username, "password": PASSWORD, "totp": totp,
        "patient": patient}, follow_redirects=False)


def _code(reply: Any) -> str:
    assert reply.status_code == 302, reply.text
    query = parse_qs(urlparse(reply.headers["location"]).query)
    assert query["state"] == ["xyz"]
    return query["code"][0]


def _exchange(secured: Secured, code: str, verifier: str) -> Any:
    return secured.client.post("/oauth/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "client_id": APP, "code_verifier": verifier})


def test_patient_standalone_launch(secured: Secured, setup: dict[str, Any]) -> None:
    verifier, challenge = _pkce()
    params = _authorize(secured, "openid fhirUser launch/patient patient/*.rs offline_access",
                        challenge)
    token = _exchange(secured, _code(_login(secured, params, "ada")), verifier)
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["token_type"] == "Bearer" and body["patient"] == setup["pid"]
    assert body["expires_in"] <= 3600 and "refresh_token" in body and "id_token" in body
    h = {"Authorization": f"Bearer {body['access_token']}"}
    assert secured.client.get(f"/fhir/Patient/{setup['pid']}", headers=h).status_code == 200
    assert secured.client.get(f"/fhir/Patient/{setup['other']}", headers=h).status_code == 404


def test_staff_standalone_picks_a_patient_with_totp(secured: Secured,
                                                    setup: dict[str, Any]) -> None:
    verifier, challenge = _pkce()
    params = _authorize(secured, "launch/patient patient/*.rs", challenge)
    refused = _login(secured, params, "house", totp="")  # no second factor
    assert refused.status_code == 401 and "Login failed" in refused.text
    reply = _login(secured, params, "house", setup["codes"].next(), patient=setup["other"])
    body = _exchange(secured, _code(reply), verifier).json()
    assert body["patient"] == setup["other"]


def test_ehr_launch(secured: Secured, setup: dict[str, Any]) -> None:
    ehr = secured.headers("user/*.cruds", {"physician"})
    launch = secured.client.post("/oauth/launch", data={"client_id": APP,
                                                        "patient": setup["pid"]}, headers=ehr)
    assert launch.status_code == 200 and launch.json()["iss"] == FHIR
    assert secured.client.post("/oauth/launch", data={"client_id": APP, "patient": "x"},
                               headers=secured.headers("user/*.rs", {"auditor"})
                               ).status_code == 403
    verifier, challenge = _pkce()
    params = _authorize(secured, "launch patient/*.rs", challenge,
                        launch=launch.json()["launch"])
    reply = _login(secured, params, "house", setup["codes"].next())
    assert _exchange(secured, _code(reply), verifier).json()["patient"] == setup["pid"]
    # a launch handle works once
    again = _login(secured, params, "house", setup["codes"].next())
    assert "error=invalid_request" in again.headers["location"]


def test_replayed_code_fails_and_revokes_its_refresh_token(secured: Secured,
                                                           setup: dict[str, Any]) -> None:
    verifier, challenge = _pkce()
    params = _authorize(secured, "patient/*.rs offline_access", challenge)
    code = _code(_login(secured, params, "ada"))
    first = _exchange(secured, code, verifier)
    assert first.status_code == 200
    replay = _exchange(secured, code, verifier)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    refreshed = secured.client.post("/oauth/token", data={
        "grant_type": "refresh_token", "refresh_token": first.json()["refresh_token"],
        "client_id": APP})
    assert refreshed.status_code == 400


def test_pkce_is_required_and_checked(secured: Secured, setup: dict[str, Any]) -> None:
    verifier, challenge = _pkce()
    params = _authorize(secured, "patient/*.rs", challenge)
    code = _code(_login(secured, params, "ada"))
    wrong = _exchange(secured, code, _pkce()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    assert _exchange(secured, code, verifier).status_code == 400  # burnt by the attempt
    plain = {**params, "code_challenge_method": "plain"}
    reply = secured.client.get("/oauth/authorize?" + urlencode(plain), follow_redirects=False)
    assert reply.status_code == 302 and "error=invalid_request" in reply.headers["location"]


def test_redirect_uri_and_audience_are_checked(secured: Secured, setup: dict[str, Any]) -> None:
    _, challenge = _pkce()
    evil = _authorize(secured, "patient/*.rs", challenge, redirect_uri="https://evil.example/")
    page = secured.client.get("/oauth/authorize?" + urlencode(evil), follow_redirects=False)
    assert page.status_code == 400 and "location" not in page.headers  # never redirected
    wrong_aud = _authorize(secured, "patient/*.rs", challenge, aud="https://other/fhir")
    reply = secured.client.get("/oauth/authorize?" + urlencode(wrong_aud),
                               follow_redirects=False)
    assert reply.status_code == 302 and reply.headers["location"].startswith(REDIRECT)
    assert "error=invalid_request" in reply.headers["location"]


def test_refresh_tokens_rotate_and_reuse_revokes_the_family(secured: Secured,
                                                            setup: dict[str, Any]) -> None:
    verifier, challenge = _pkce()
    params = _authorize(secured, "patient/*.rs offline_access", challenge)
    first = _exchange(secured, _code(_login(secured, params, "ada")), verifier).json()

    def refresh(token: str) -> Any:
        return secured.client.post("/oauth/token", data={
            "grant_type": "refresh_token", "refresh_token": token, "client_id": APP})

    second = refresh(first["refresh_token"])
    assert second.status_code == 200
    assert second.json()["refresh_token"] != first["refresh_token"]
    assert refresh(first["refresh_token"]).status_code == 400  # reuse: theft suspected
    assert refresh(second.json()["refresh_token"]).status_code == 400  # family revoked


def test_introspection_and_revocation(secured: Secured, setup: dict[str, Any]) -> None:
    verifier, challenge = _pkce()
    params = _authorize(secured, "patient/*.rs offline_access", challenge)
    body = _exchange(secured, _code(_login(secured, params, "ada")), verifier).json()
    h = {"Authorization": f"Bearer {body['access_token']}"}
    assert secured.client.post("/oauth/introspect", data={"token": "x"}).status_code == 401
    info = secured.client.post("/oauth/introspect", data={"token": body["access_token"]},
                               headers=h).json()
    assert info["active"] is True and info["client_id"] == APP and info["patient"] == setup["pid"]
    refresh_info = secured.client.post("/oauth/introspect",
                                       data={"token": body["refresh_token"]}, headers=h).json()
    assert refresh_info["active"] is True
    viewer = secured.headers("user/*.rs", {"physician"})
    assert secured.client.post("/oauth/revoke", data={"token": body["access_token"]}
                               ).status_code == 200
    assert secured.client.get(f"/fhir/Patient/{setup['pid']}", headers=h).status_code == 401
    assert secured.client.post("/oauth/introspect", data={"token": body["access_token"]},
                               headers=viewer).json() == {"active": False}
    secured.client.post("/oauth/revoke", data={"token": body["refresh_token"]})
    assert secured.client.post("/oauth/introspect", data={"token": body["refresh_token"]},
                               headers=viewer).json() == {"active": False}


def test_confidential_client_needs_its_secret(secured: Secured, setup: dict[str, Any]) -> None:
    secret = secured.authority.clients.add("portal", "confidential", redirect_uris=[REDIRECT],
                                           scopes="patient/*.rs")
    assert secret
    verifier, challenge = _pkce()
    params = {**_authorize(secured, "patient/*.rs", challenge), "client_id": "portal"}
    code = _code(_login(secured, params, "ada"))
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": verifier}
    bad = secured.client.post("/oauth/token", data=form, auth=("portal", "guess"))
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    code = _code(_login(secured, params, "ada"))
    good = secured.client.post("/oauth/token", data={**form, "code": code},
                               auth=("portal", secret))
    assert good.status_code == 200


# ------------------------------------------------------------------ backend services

def _assertion(key: Any, alg: str, client_id: str = "lab-feed", **changes: Any) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": "http://testserver/oauth/token",
              "exp": now + 240, "jti": secrets.token_hex(8), **changes}
    return jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg])


@pytest.fixture
def backend(secured: Secured) -> dict[str, Any]:
    ec = ECKey.generate_key("P-384", parameters={"kid": "ec1"}, private=True)
    rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa1"}, private=True)
    jwks = {"keys": [ec.as_dict(private=False), rsa.as_dict(private=False)]}
    secured.authority.clients.add("lab-feed", "backend", scopes="system/Observation.cruds "
                                  "system/Patient.rs", roles={"interface"}, jwks=jwks)
    return {"ec": ec, "rsa": rsa}


def _backend_token(secured: Secured, assertion: str, scope: str = "system/Observation.rs") -> Any:
    return secured.client.post("/oauth/token", data={
        "grant_type": "client_credentials", "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion})


def test_backend_services_es384_and_rs384(secured: Secured, backend: dict[str, Any]) -> None:
    for key, alg in ((backend["ec"], "ES384"), (backend["rsa"], "RS384")):
        reply = _backend_token(secured, _assertion(key, alg),
                               "system/Observation.rs system/*.cruds")
        assert reply.status_code == 200, reply.text
        assert reply.json()["scope"] == "system/Observation.rs"  # never more than registered
        h = {"Authorization": f"Bearer {reply.json()['access_token']}"}
        assert secured.client.get("/fhir/Observation", headers=h).status_code == 200
        assert secured.client.get("/fhir/Patient", headers=h).status_code == 403


def test_backend_assertion_attacks(secured: Secured, backend: dict[str, Any]) -> None:
    ec = backend["ec"]
    once = _assertion(ec, "ES384")
    assert _backend_token(secured, once).status_code == 200
    assert _backend_token(secured, once).status_code == 401  # jti replay
    assert _backend_token(secured, _assertion(ec, "ES384", aud="http://x/token")
                          ).status_code == 401
    assert _backend_token(secured, _assertion(ec, "ES384", exp=int(time.time()) + 3600)
                          ).status_code == 401  # lives longer than 5 minutes
    assert _backend_token(secured, _assertion(ec, "ES384", exp=int(time.time()) - 10)
                          ).status_code == 401
    stranger = ECKey.generate_key("P-384", parameters={"kid": "ec1"}, private=True)
    assert _backend_token(secured, _assertion(stranger, "ES384")).status_code == 401
    hmac = OctKey.generate_key(256, parameters={"kid": "ec1"})
    assert _backend_token(secured, _assertion(hmac, "HS256")).status_code == 401
    assert _backend_token(secured, _assertion(ec, "ES384", client_id="nobody")
                          ).status_code == 401


def test_login_brute_force_is_stopped(secured: Secured, setup: dict[str, Any]) -> None:
    _, challenge = _pkce()
    params = _authorize(secured, "patient/*.rs", challenge)
    statuses = []
    for _ in range(25):
        reply = secured.client.post("/oauth/authorize", data={
            **params, "username": "ada", "password": "guess-guess-guess"},
            follow_redirects=False)
        statuses.append(reply.status_code)
    assert statuses[:5] == [401] * 5
    assert 429 in statuses  # the per-address rate limit (20 a minute) kicks in
    # and the account itself is locked: the right password no longer works
    with pytest.raises(Exception, match="Login failed"):
        secured.authority.users.authenticate("ada", PASSWORD, None)


def test_a_token_carries_the_purpose_of_use_its_client_asked_for(
        secured: Secured, backend: dict[str, Any]) -> None:
    """``purpose_of_use`` at the token endpoint (a v3-ActReason code) goes into the token and
    into every AuditEvent made with it; an unknown code is refused."""
    def token(purpose: str) -> Any:
        return secured.client.post("/oauth/token", data={
            "grant_type": "client_credentials", "scope": "system/Observation.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": _assertion(backend["ec"], "ES384"),
            "purpose_of_use": purpose})

    refused = token("SNOOPING")
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"
    reply = token("ETREAT")
    assert reply.status_code == 200, reply.text
    access = reply.json()["access_token"]
    assert secured.authority.verifier.verify(access).purpose == "ETREAT"
    assert secured.client.get("/fhir/Observation", headers={
        "Authorization": f"Bearer {access}"}).status_code == 200
    secured.authority.ledger.flush()
    auditor = secured.headers("user/*.rs", {"auditor"})
    events = secured.client.get("/fhir/AuditEvent", params={"subtype": "search-type"},
                                headers=auditor).json()["entry"]
    codes = [e["resource"].get("purposeOfEvent", [{}])[0].get("coding", [{}])[0].get("code")
             for e in events if e["resource"]["agent"][0]["who"]["identifier"]["value"]
             == "lab-feed"]
    assert codes == ["ETREAT"]
