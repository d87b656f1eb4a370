"""Every error is an OperationOutcome with the right status, and writes nothing."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from starlette.testclient import TestClient

from carebridge.api import create_api
from carebridge.fhir.errors import Conflict
from carebridge.services import ResourceService
from carebridge.storage import Repository
from carebridge.storage.base import HistoryQuery

JSON = {"content-type": "application/fhir+json"}


def versions(repository: Repository) -> int:
    with repository.session() as s:
        return s.history(HistoryQuery(count=1, with_total=True)).total or 0


def outcome(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] in ("error", "fatal")
    assert body["issue"][0]["diagnostics"]
    return body


@pytest.mark.parametrize(
    ("body", "message", "expression"),
    [
        (b"{not json", "not valid JSON", None),
        (b"", "empty", None),
        (b"[1, 2]", "JSON object", None),
        (b'{"name": []}', "no resourceType", ["resourceType"]),
        (b'{"resourceType": "Patientt"}', "Unknown resource type 'Patientt'", ["resourceType"]),
        (b'{"resourceType": "Observation"}', "does not match the URL", ["resourceType"]),
        (b'{"resourceType": "Patient", "colour": "blue"}', "Unknown element 'colour'",
         ["Patient.colour"]),
    ],
)
def test_bad_bodies_are_400_and_write_nothing(
    client: TestClient, repository: Repository, body: bytes, message: str,
    expression: list[str] | None,
) -> None:
    for method, url in (("POST", "/fhir/Patient"), ("PUT", "/fhir/Patient/p1")):
        response = client.request(method, url, content=body, headers=JSON)
        issue = outcome(response, 400)["issue"][0]
        assert message in issue["diagnostics"]
        if expression:
            assert issue["expression"] == expression
    assert versions(repository) == 0


def test_update_id_rules(client: TestClient, repository: Repository) -> None:
    mismatch = client.put("/fhir/Patient/a", json={"resourceType": "Patient", "id": "b"},
                          headers=JSON)
    assert "does not match the id in the URL" in outcome(mismatch, 400)["issue"][0]["diagnostics"]
    missing = client.put("/fhir/Patient/a", json={"resourceType": "Patient"}, headers=JSON)
    assert outcome(missing, 400)["issue"][0]["expression"] == ["id"]
    bad = client.put("/fhir/Patient/bad_id!", json={"resourceType": "Patient", "id": "bad_id!"},
                     headers=JSON)
    assert "Invalid resource id" in outcome(bad, 400)["issue"][0]["diagnostics"]
    assert versions(repository) == 0


def test_unknown_type_and_path_are_404(client: TestClient) -> None:
    outcome(client.get("/fhir/Unicorn/1"), 404)
    outcome(client.post("/fhir/Unicorn", json={"resourceType": "Unicorn"}, headers=JSON), 404)
    outcome(client.get("/fhir/Patient/1/_history/1/extra"), 404)
    outcome(client.get("/nothing-here"), 404)


def test_wrong_method_is_405(client: TestClient) -> None:
    outcome(client.patch("/fhir/Patient", content=b"[]"), 405)
    outcome(client.put("/fhir/metadata", json={}), 405)
    outcome(client.post("/fhir/Patient/1", json={"resourceType": "Patient"}), 405)


def test_xml_is_406_or_415(client: TestClient, repository: Repository) -> None:
    client.put("/fhir/Patient/x", json={"resourceType": "Patient", "id": "x"}, headers=JSON)
    outcome(client.get("/fhir/Patient/x", headers={"accept": "application/fhir+xml"}), 406)
    outcome(client.get("/fhir/Patient/x", params={"_format": "xml"}), 406)
    outcome(client.get("/fhir/metadata", params={"_format": "application/fhir+xml"}), 406)
    assert client.get("/fhir/Patient/x", params={"_format": "json"}).status_code == 200
    assert client.get("/fhir/Patient/x", headers={
        "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    ).status_code == 200
    xml = b'<Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient>'
    before = versions(repository)
    outcome(client.post("/fhir/Patient", content=xml,
                        headers={"content-type": "application/fhir+xml"}), 415)
    outcome(client.post("/fhir/Patient", content=b"{}",
                        headers={"content-type": "text/plain"}), 415)
    assert versions(repository) == before


def test_oversized_body_is_413(service: ResourceService, repository: Repository) -> None:
    with TestClient(create_api(service, max_body_bytes=2000),
                    raise_server_exceptions=False) as small:
        big = {"resourceType": "Patient", "name": [{"text": "x" * 3000}]}
        outcome(small.post("/fhir/Patient", json=big, headers=JSON), 413)

        def chunks() -> Any:  # no Content-Length: the limit holds while streaming
            yield b'{"resourceType": "Patient", "name": [{"text": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}]}'

        outcome(small.post("/fhir/Patient", content=chunks(), headers=JSON), 413)
        ok = small.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=JSON)
        assert ok.status_code == 201
    assert versions(repository) == 1


def test_conditional_write_without_criteria_is_400(client: TestClient) -> None:
    outcome(client.delete("/fhir/Patient"), 400)
    outcome(client.put("/fhir/Patient", json={"resourceType": "Patient"}, headers=JSON), 400)


def test_lost_race_without_if_match_is_409_or_serialized(
    service: ResourceService, repository: Repository
) -> None:
    """A write that read a version another writer then replaced must not overwrite it.

    PostgreSQL: the loser's conditional UPDATE finds no row at its version -> 409.
    SQLite: writers hold the database lock from BEGIN IMMEDIATE, so the second waits and
    then sees the new version -> both succeed, one after the other.
    """
    service.update(service_caller(), "Patient", "r", {"resourceType": "Patient", "id": "r"})
    read_done = threading.Event()
    other_done = threading.Event()

    def loser(session: Any, pending: Any) -> None:
        current = session.read("Patient", "r")
        read_done.set()
        other_done.wait(timeout=2)
        service.stage(pending, {"resourceType": "Patient", "id": "r", "active": True},
                      "Patient", "r", current.version + 1, "PUT", service.clock(),
                      current.version)

    def winner() -> None:
        read_done.wait(timeout=5)
        service.update(service_caller(), "Patient", "r",
                       {"resourceType": "Patient", "id": "r", "gender": "male"})
        other_done.set()

    thread = threading.Thread(target=winner)
    thread.start()
    result: str
    try:
        service.run_write(loser, retry=False)
        result = "ok"
    except Conflict as exc:
        assert exc.status == 409
        result = "409"
    thread.join()
    with repository.session() as s:
        current = s.read("Patient", "r")
        assert current is not None
        history = s.history(HistoryQuery("Patient", "r", count=10))
    if repository.dialect == "postgresql":
        assert result == "409"
        assert current.version == 2 and b'"gender":"male"' in (current.body or b"")
    else:
        assert result == "ok"
        assert current.version == 3  # serialized: the winner waited and wrote version 3
    assert sorted(v.version for _, v in history.entries) == list(range(1, current.version + 1))


def service_caller() -> Any:
    from carebridge.security.policy import SYSTEM

    return SYSTEM
