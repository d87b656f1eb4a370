"""The security commands: user add/disable/reset-mfa, client add, keys rotate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyotp
import pytest
from argon2 import PasswordHasher
from joserfc.jwk import ECKey
from typer.testing import CliRunner

from carebridge.cli import app as cli
from carebridge.security.authority import Authority
from carebridge.security.users import LoginFailed
from carebridge.storage import open_repository

PASSWORD = "correct horse battery"


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_user_lifecycle(database_url: str) -> None:
    out = _run("user", "add", "house", "--role", "physician", "--password", PASSWORD,
               "--database", database_url)
    secret = re.search(r"TOTP secret: ([A-Z2-7]+)", out)
    assert secret and "otpauth://totp/" in out
    repo = open_repository(database_url)
    try:
        users = Authority.open(repo, "http://x").users
        assert users.authenticate("house", PASSWORD, pyotp.TOTP(secret[1]).now())
        new = re.search(r"new TOTP secret: ([A-Z2-7]+)",
                        _run("user", "reset-mfa", "house", "--database", database_url))
        assert new and new[1] != secret[1]
        _run("user", "disable", "house", "--database", database_url)
        with pytest.raises(LoginFailed):
            users.authenticate("house", PASSWORD, pyotp.TOTP(new[1]).now())
    finally:
        repo.close()
    refused = CliRunner().invoke(cli, ["user", "add", "pat", "--role", "patient", "--password",
                                       PASSWORD, "--database", database_url])
    assert refused.exit_code == 2 and "linked" in refused.output


def test_client_add_and_keys_rotate(database_url: str, tmp_path: Path) -> None:
    out = _run("client", "add", "portal", "--kind", "confidential", "--scope", "patient/*.rs",
               "--redirect-uri", "https://portal.example/cb", "--database", database_url)
    assert re.search(r"client secret \(shown once\): \S{20,}", out)
    key = ECKey.generate_key("P-384", parameters={"kid": "k"}, private=True)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    _run("client", "add", "adt-feed", "--kind", "backend", "--scope", "system/*.crus",
         "--role", "interface", "--jwks", str(jwks), "--database", database_url)
    repo = open_repository(database_url)
    try:
        authority = Authority.open(repo, "http://x")
        client = authority.clients.get("adt-feed")
        assert client is not None and client.roles == {"interface"}
        before = authority.keys.signing_key().kid
        rotated = re.search(r"new signing key (\S+)",
                            _run("keys", "rotate", "--database", database_url))
        assert rotated and rotated[1] != before
        authority = Authority.open(repo, "http://x")
        assert authority.keys.signing_key().kid == rotated[1]
        published = {k["kid"] for k in authority.keys.jwks()["keys"]}
        assert published == {before, rotated[1]}  # the old key verifies tokens until expiry
    finally:
        repo.close()


def test_demo_credentials_work(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from starlette.testclient import TestClient

    from carebridge.api import create_api
    from carebridge.api.middleware import ApiSecurity
    from carebridge.security.commands import demo_credentials
    from carebridge.security.policy import SmartPolicy
    from carebridge.services import ResourceService

    cheap = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    demo_credentials(database_url, "http://testserver", "p-1", cheap)
    first = capsys.readouterr().out
    demo_credentials(database_url, "http://testserver", "p-1", cheap)  # a restart resets them
    out = capsys.readouterr().out
    password = re.search(r"demo-patient: password (\S+)", out)
    token = re.search(r"export TOKEN=(\S+)", out)
    assert password and token and password[1] not in first
    repo = open_repository(database_url)
    try:
        authority = Authority.open(repo, "http://testserver", hasher=cheap)
        assert authority.users.authenticate("demo-patient", password[1], None).patient_id == "p-1"
        assert authority.clients.get("demo-app") is not None
        app = create_api(ResourceService(repo, policy=SmartPolicy()),
                         security=ApiSecurity(authority=authority))
        with TestClient(app) as client:
            assert client.get("/fhir/Patient", headers={
                "Authorization": f"Bearer {token[1]}"}).status_code == 200
    finally:
        repo.close()
