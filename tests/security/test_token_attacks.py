"""Point 8: forged, expired, mis-addressed and escalated tokens are refused."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey

from carebridge.security.policy import SYSTEM

Secured = Any


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _claims(secured: Secured, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": "http://testserver", "sub": "mallory", "aud": "http://testserver/fhir",
              "iat": now, "exp": now + 300, "jti": "j1", "client_id": "evil",
              "scope": "user/*.cruds", "cb_roles": ["physician"]}
    claims.update(changes)
    return claims


def _get(secured: Secured, token: str) -> int:
    reply = secured.client.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
    if reply.status_code == 401:
        assert reply.headers["www-authenticate"].startswith("Bearer")
    return int(reply.status_code)


def test_a_genuine_token_works(secured: Secured) -> None:
    assert _get(secured, secured.token("user/*.rs", {"physician"})) == 200


def test_alg_none_is_refused(secured: Secured) -> None:
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(secured))}."
    assert _get(secured, token) == 401


def test_hmac_with_the_public_key_is_refused(secured: Secured) -> None:
    public = json.dumps(secured.authority.keys.jwks()["keys"][0]).encode()
    key = OctKey.import_key(public)
    token = jwt.encode({"alg": "HS256"}, _claims(secured), key)
    assert _get(secured, token) == 401


def test_bad_signature_is_refused(secured: Secured) -> None:
    token = secured.token("user/*.rs", {"physician"})
    head, body, sig = token.split(".")
    forged_body = _b64({**json.loads(base64.urlsafe_b64decode(body + "==")),
                        "scope": "user/*.cruds", "cb_roles": ["physician", "auditor"]})
    assert _get(secured, f"{head}.{forged_body}.{sig}") == 401
    flipped = sig[:-2] + ("AA" if not sig.endswith("AA") else "BB")
    assert _get(secured, f"{head}.{body}.{flipped}") == 401


def test_a_key_we_did_not_issue_is_refused(secured: Secured) -> None:
    kid = secured.authority.keys.signing_key().kid
    stranger = ECKey.generate_key("P-384", parameters={"kid": kid}, private=True)
    token = jwt.encode({"alg": "ES384", "kid": kid}, _claims(secured), stranger,
                       algorithms=["ES384"])
    assert _get(secured, token) == 401


def test_expired_wrong_audience_and_unknown_issuer(secured: Secured) -> None:
    key = secured.authority.keys.signing_key()

    def sign(**changes: Any) -> str:
        return jwt.encode({"alg": "ES384", "kid": key.kid}, _claims(secured, **changes), key,
                          algorithms=["ES384"])

    assert _get(secured, sign()) == 200  # the helper itself makes acceptable tokens
    assert _get(secured, sign(exp=int(time.time()) - 120)) == 401
    assert _get(secured, sign(aud="http://elsewhere/fhir")) == 401
    assert _get(secured, sign(iss="http://elsewhere")) == 401
    assert _get(secured, sign(sub="")) == 401
    assert _get(secured, "not-a-jwt") == 401


def test_revoked_token_stops_working(secured: Secured) -> None:
    issued = secured.authority.issuer.issue(subject="s", client_id="c", scope="user/*.rs",
                                            roles=frozenset({"physician"}))
    assert _get(secured, issued.token) == 200
    secured.authority.verifier.revoke(issued.claims["jti"], issued.claims["exp"])
    assert _get(secured, issued.token) == 401


def test_scope_escalation_is_refused(secured: Secured) -> None:
    pid = secured.service.create(SYSTEM, "Patient", {"resourceType": "Patient"}).version.id
    c = secured.client
    obs_only = secured.headers("user/Observation.rs", {"physician"})
    assert c.get(f"/fhir/Patient/{pid}", headers=obs_only).status_code == 403
    assert c.post("/fhir/Observation", json={"resourceType": "Observation"},
                  headers=obs_only).status_code == 403
    assert c.get("/fhir/Observation", headers=obs_only).status_code == 200
    read_only = secured.headers("user/*.read", {"physician"})
    assert c.delete(f"/fhir/Patient/{pid}", headers=read_only).status_code == 403
    assert c.get(f"/fhir/Patient/{pid}", headers=read_only).status_code == 200


@pytest.mark.parametrize(("role", "method", "path", "status"), [
    ("nurse", "DELETE", "/fhir/Patient/{pid}", 403),      # nurses do not delete
    ("nurse", "GET", "/fhir/Patient/{pid}", 200),
    ("admin", "GET", "/fhir/Patient/{pid}", 403),         # admins see no clinical data
    ("admin", "GET", "/fhir/Practitioner", 200),
    ("auditor", "GET", "/fhir/Patient/{pid}", 403),
    ("auditor", "GET", "/fhir/AuditEvent", 200),
    ("physician", "GET", "/fhir/AuditEvent", 403),        # audit is the auditors'
    ("physician", "DELETE", "/fhir/Patient/{pid}", 204),
])
def test_roles_cap_the_scopes(secured: Secured, role: str, method: str, path: str,
                              status: int) -> None:
    pid = secured.service.create(SYSTEM, "Patient", {"resourceType": "Patient"}).version.id
    h = secured.headers("user/*.cruds", {role})
    assert secured.client.request(method, path.format(pid=pid), headers=h).status_code == status


def test_nobody_writes_audit_events(secured: Secured) -> None:
    event = {"resourceType": "AuditEvent", "type": {"code": "rest"}, "recorded":
             "2024-01-01T00:00:00Z", "agent": [{"requestor": True}], "source": {"observer": {}}}
    for role in ("auditor", "physician", "admin"):
        h = secured.headers("user/*.cruds system/*.cruds", {role})
        assert secured.client.post("/fhir/AuditEvent", json=event, headers=h).status_code == 403
        assert secured.client.put("/fhir/AuditEvent/x", json={**event, "id": "x"},
                                  headers=h).status_code == 403
        assert secured.client.delete("/fhir/AuditEvent/x", headers=h).status_code == 403
