"""Point 3: access tokens from an external OpenID Connect provider (issuer + JWKS) are
accepted when configured; its keys are fetched over real HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.testclient import TestClient

from carebridge.api import create_api
from carebridge.api.middleware import ApiSecurity
from carebridge.security.authority import Authority
from carebridge.security.policy import SYSTEM, SmartPolicy
from carebridge.security.tokens import ExternalIssuer
from carebridge.services import ResourceService
from carebridge.storage import Repository

IDP = "https://idp.example.org/realms/hospital"


@pytest.fixture
def idp_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "idp-1"}, private=True)


@pytest.fixture
def jwks_url(idp_key: RSAKey) -> Iterator[str]:
    body = json.dumps({"keys": [idp_key.as_dict(private=False)]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/certs"
    finally:
        server.shutdown()
        server.server_close()


def test_external_tokens_are_accepted_with_their_roles(repository: Repository, idp_key: RSAKey,
                                                       jwks_url: str) -> None:
    external = ExternalIssuer(IDP, jwks_url, audience="http://testserver/fhir")
    authority = Authority.open(repository, "http://testserver", external=(external,))
    service = ResourceService(repository, policy=SmartPolicy())
    pid = service.create(SYSTEM, "Patient", {"resourceType": "Patient"}).version.id
    now = int(time.time())

    def token(key: RSAKey = idp_key, **changes: Any) -> dict[str, str]:
        claims = {"iss": IDP, "sub": "f:1234", "aud": "http://testserver/fhir", "iat": now,
                  "exp": now + 300, "scope": "user/*.rs", "roles": ["nurse"],
                  "azp": "ehr-portal", **changes}
        signed = jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)
        return {"Authorization": f"Bearer {signed}"}

    app = create_api(service, security=ApiSecurity(authority=authority))
    with TestClient(app) as client:
        assert client.get(f"/fhir/Patient/{pid}", headers=token()).status_code == 200
        # the provider's roles still cap the scopes: a nurse does not delete
        assert client.delete(f"/fhir/Patient/{pid}", headers=token(
            scope="user/*.cruds")).status_code == 403
        assert client.get(f"/fhir/Patient/{pid}", headers=token(roles=[])).status_code == 403
        assert client.get(f"/fhir/Patient/{pid}", headers=token(
            aud="http://other/fhir")).status_code == 401
        stranger = RSAKey.generate_key(2048, parameters={"kid": "idp-1"}, private=True)
        assert client.get(f"/fhir/Patient/{pid}", headers=token(stranger)).status_code == 401
        assert client.get(f"/fhir/Patient/{pid}", headers=token(
            iss="https://other-idp.example")).status_code == 401
