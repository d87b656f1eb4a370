"""End to end against a real, secured ``carebridge serve``: the operator registers a user and
a SMART app with the CLI, the app runs a standalone patient launch over real HTTP (discovery,
authorize page, login, code, PKCE token exchange), then fhirpy (a FHIR client nobody here
wrote) reads with the access token and is confined to the patient's compartment. Then the
SMART app library ``fhirclient`` (SMART Health IT's Python client) runs the launch itself:
discovery from the CapabilityStatement, its own PKCE and state, the code exchange, and reads.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, urlencode, urlparse

import httpx2
import pytest
from fhirclient import client as smart_client
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound
from typer.testing import CliRunner

from carebridge.cli import app as cli
from carebridge.security.policy import SYSTEM
from carebridge.services import ResourceService
from carebridge.storage import open_repository
from carebridge.testing import ServerProcess

PASSWORD = "correct horse battery"
REDIRECT = "http://127.0.0.1:9/callback"


def _two_patients(url: str) -> tuple[str, str]:
    """Two patients with an Observation each; the user ``ada`` (patient role, the first
    one) and the public app ``e2e-app`` registered with the CLI."""
    repo = open_repository(url)
    try:
        service = ResourceService(repo)
        mine = service.create(SYSTEM, "Patient", {"resourceType": "Patient",
                                                  "name": [{"family": "Lovelace"}]}).version.id
        theirs = service.create(SYSTEM, "Patient", {"resourceType": "Patient",
                                                    "name": [{"family": "Byron"}]}).version.id
        for pid in (mine, theirs):
            service.create(SYSTEM, "Observation", {
                "resourceType": "Observation", "status": "final",
                "code": {"text": "weight"}, "subject": {"reference": f"Patient/{pid}"}})
    finally:
        repo.close()
    runner = CliRunner()
    for args in (["user", "add", "ada", "--role", "patient", "--patient", mine,
                  "--password", PASSWORD],
                 ["client", "add", "e2e-app", "--kind", "public", "--scope",
                  "launch/patient patient/*.rs openid fhirUser", "--redirect-uri", REDIRECT]):
        assert runner.invoke(cli, [*args, "--database", url]).exit_code == 0
    return mine, theirs


@pytest.mark.slow
def test_standalone_patient_launch_then_fhirpy_reads(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/e2e.db"
    mine, theirs = _two_patients(url)
    with ServerProcess(url, secure=True) as server, ExitStack() as stack:
        http = httpx2.Client(timeout=30)
        stack.callback(http.close)
        config = http.get(f"{server.base_url}/.well-known/smart-configuration").json()
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        params = {"response_type": "code", "client_id": "e2e-app", "redirect_uri": REDIRECT,
                  "scope": "launch/patient patient/*.rs openid fhirUser", "state": "s1",
                  "aud": server.base_url, "code_challenge": challenge,
                  "code_challenge_method": "S256"}
        page = http.get(f"{config['authorization_endpoint']}?{urlencode(params)}")
        assert page.status_code == 200
        hidden = dict(re.findall(r'type=hidden name="([^"]+)" value="([^"]*)"', page.text))
        assert hidden["client_id"] == "e2e-app"
        login = http.post(config["authorization_endpoint"],
                          data={**params, "username": "ada", "password": PASSWORD})
        assert login.status_code == 302, login.text
        query = parse_qs(urlparse(login.headers["location"]).query)
        token = http.post(config["token_endpoint"], data={
            "grant_type": "authorization_code", "code": query["code"][0],
            "redirect_uri": REDIRECT, "client_id": "e2e-app",
            "code_verifier": verifier}).json()
        assert token["patient"] == mine

        fhir = SyncFHIRClient(server.base_url, authorization=f"Bearer {token['access_token']}",
                              requests_config={"timeout": 30})
        me = fhir.reference("Patient", mine).to_resource()
        assert me["name"][0]["family"] == "Lovelace"
        with pytest.raises(ResourceNotFound):
            fhir.reference("Patient", theirs).to_resource()
        observations = fhir.resources("Observation").fetch_all()
        assert [o["subject"]["reference"] for o in observations] == [f"Patient/{mine}"]
        anonymous = SyncFHIRClient(server.base_url, requests_config={"timeout": 30})
        with pytest.raises(Exception, match="requires an access token"):
            anonymous.resources("Observation").fetch_all()


@pytest.mark.slow
def test_fhirclient_completes_a_launch_and_reads(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/e2e.db"
    mine, theirs = _two_patients(url)
    with ServerProcess(url, secure=True) as server, httpx2.Client(timeout=30) as http:
        smart = smart_client.FHIRClient(settings={
            "app_id": "e2e-app", "api_base": server.base_url, "redirect_uri": REDIRECT,
            "scope": "launch/patient patient/*.rs openid fhirUser"})
        assert not smart.ready
        authorize = smart.authorize_url  # discovery, state and PKCE are the library's
        assert authorize is not None
        endpoint, _, query = authorize.partition("?")
        params = dict(parse_qsl(query))
        assert params["code_challenge_method"] == "S256" and params["aud"] == server.base_url
        # the person at the browser: our login page, answered with ada's password
        login = http.post(endpoint, data={**params, "username": "ada", "password": PASSWORD})
        assert login.status_code == 302, login.text
        smart.handle_callback(login.headers["location"])
        assert smart.ready and smart.patient_id == mine

        patient = Patient.read(mine, smart.server)
        assert patient.name[0].family == "Lovelace"
        found = list(Observation.where(struct={"patient": mine})
                     .perform_resources_iter(smart.server))
        assert [o.subject.reference for o in found] == [f"Patient/{mine}"]
        # the other patient's record is out of the token's compartment: it does not exist
        with pytest.raises(Exception, match="404"):
            Patient.read(theirs, smart.server)
