"""Point 1 of the security issue: authentication on by default, a loud insecure mode."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest
from typer.testing import CliRunner

from carebridge.cli import app as cli
from carebridge.testing import ServerProcess

Secured = Any

PATIENT = {"resourceType": "Patient", "name": [{"family": "Lovelace", "given": ["Ada"]}]}


def test_everything_but_discovery_needs_a_token(secured: Secured) -> None:
    client = secured.client
    for method, path in [("GET", "/fhir/Patient"), ("GET", "/fhir/Patient/x"),
                         ("POST", "/fhir/Patient"), ("GET", "/fhir/_history"),
                         ("POST", "/fhir"), ("DELETE", "/fhir/Patient/x"),
                         ("GET", "/fhir/no/such/path")]:
        reply = client.request(method, path, json=PATIENT)
        assert reply.status_code == 401, (method, path)
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert reply.json()["resourceType"] == "OperationOutcome"
    statement = client.get("/fhir/metadata").json()
    uris = {e["url"]: e["valueUri"] for e in statement["rest"][0]["security"]["extension"][0][
        "extension"]}
    assert uris["authorize"] == "http://testserver/oauth/authorize"  # SMART 1.0 clients
    config = client.get("/fhir/.well-known/smart-configuration").json()
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert config["token_endpoint"] == "http://testserver/oauth/token"
    jwks = client.get("/oauth/jwks").json()
    assert [k["kty"] for k in jwks["keys"]] == ["EC"]
    assert all("d" not in k for k in jwks["keys"])  # no private part published


def test_a_valid_token_reaches_the_service(secured: Secured) -> None:
    headers = secured.headers("user/*.cruds", {"physician"})
    created = secured.client.post("/fhir/Patient", json=PATIENT, headers=headers)
    assert created.status_code == 201
    pid = created.json()["id"]
    assert secured.client.get(f"/fhir/Patient/{pid}", headers=headers).status_code == 200


def test_the_wrong_scheme_is_refused(secured: Secured) -> None:
    reply = secured.client.get("/fhir/Patient", headers={"Authorization": "Basic YTpi"})
    assert reply.status_code == 401


def test_security_headers_on_every_response(secured: Secured) -> None:
    reply = secured.client.get("/fhir/metadata")
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in reply.headers["content-security-policy"]
    assert "x-carebridge-insecure" not in reply.headers


def test_insecure_dev_is_refused_off_loopback() -> None:
    result = CliRunner().invoke(cli, ["serve", "--insecure-dev", "--host", "0.0.0.0",
                                      "--database", "sqlite:///:memory:"])
    assert result.exit_code == 2
    assert "loopback" in result.output


@pytest.mark.slow
def test_real_server_secured_and_insecure(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    with ServerProcess(url, secure=True) as server:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{server.base_url}/Patient")
        assert refused.value.code == 401
        refused.value.close()
        assert "INSECURE" not in server.output()
    with ServerProcess(url) as server:  # the default for other parts' tests: insecure-dev
        with urllib.request.urlopen(f"{server.base_url}/Patient") as reply:
            assert reply.status == 200
            assert "authentication disabled" in reply.headers["x-carebridge-insecure"]
        assert "INSECURE DEVELOPMENT MODE" in server.output()


def test_cors_is_closed_unless_an_origin_is_configured(repository: Any) -> None:
    from starlette.testclient import TestClient

    from carebridge.api import create_api
    from carebridge.api.middleware import ApiSecurity
    from carebridge.security.authority import Authority
    from carebridge.services import ResourceService

    authority = Authority.open(repository, "http://testserver")
    for origins, allowed in (((), False), (("https://app.example",), True)):
        app = create_api(ResourceService(repository), security=ApiSecurity(
            authority=authority, cors_origins=origins))
        with TestClient(app) as client:
            for origin in ("https://app.example", "https://evil.example"):
                reply = client.options("/fhir/Patient", headers={
                    "Origin": origin, "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "authorization"})
                granted = reply.headers.get("access-control-allow-origin") == origin
                assert granted == (allowed and origin == "https://app.example"), (
                    origins, origin)


def test_errors_carry_no_stack_trace_and_logs_no_exception_text() -> None:
    import logging

    from carebridge.security.logfilter import RedactingFilter

    try:
        raise ValueError("Patient Quibblethwaite MRN-1234 broke it")
    except ValueError as exc:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "unexpected error", None,
                                   (type(exc), exc, exc.__traceback__))
    RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "Quibblethwaite" not in text and "MRN-1234" not in text
    assert "Traceback" not in text and "ValueError at " in text


def test_nul_characters_are_refused_before_the_database(secured: Secured) -> None:
    h = secured.headers("user/*.rs", {"physician"})
    for path in ["/fhir/Patient?name=%00", "/fhir/Patient?_id=a%00b", "/fhir/Patient/a%00"]:
        reply = secured.client.get(path, headers=h)
        assert reply.status_code in (400, 404), (path, reply.status_code)
        assert reply.json()["resourceType"] == "OperationOutcome"
