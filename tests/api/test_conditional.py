"""Conditional create, update, delete and references (http://hl7.org/fhir/R4/http.html)."""

from __future__ import annotations

import threading
from typing import Any

from starlette.testclient import TestClient

from carebridge.storage import Repository

JSON = {"content-type": "application/fhir+json"}
SYS = "http://hospital.example.org/mrn"


def patient(mrn: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SYS, "value": mrn}], **extra}


def count(repository: Repository, rtype: str = "Patient") -> int:
    with repository.session() as s:
        return s.count_current(rtype).get(rtype, 0)


def test_conditional_create(client: TestClient, repository: Repository) -> None:
    headers = {**JSON, "If-None-Exist": f"identifier={SYS}|m1"}
    first = client.post("/fhir/Patient", json=patient("m1"), headers=headers)
    assert first.status_code == 201
    again = client.post("/fhir/Patient", json=patient("m1", active=True), headers=headers)
    assert again.status_code == 200  # the match is returned, nothing created
    assert again.json()["id"] == first.json()["id"]
    assert "active" not in again.json()
    assert count(repository) == 1
    client.post("/fhir/Patient", json=patient("m1"), headers=JSON)  # a plain duplicate
    ambiguous = client.post("/fhir/Patient", json=patient("m1"), headers=headers)
    assert ambiguous.status_code == 412
    bad = client.post("/fhir/Patient", json=patient("m2"),
                      headers={**JSON, "If-None-Exist": "colour=blue"})
    assert bad.status_code == 400  # criteria must be understood: a guess would be unsafe


def test_concurrent_conditional_creates_never_both_create(
    client: TestClient, repository: Repository
) -> None:
    headers = {**JSON, "If-None-Exist": f"identifier={SYS}|race"}
    statuses: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def racer() -> None:
        start.wait()
        response = client.post("/fhir/Patient", json=patient("race"), headers=headers)
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 7 + [201]
    assert count(repository) == 1


def test_conditional_update(client: TestClient, repository: Repository) -> None:
    created = client.put(f"/fhir/Patient?identifier={SYS}|u1", json=patient("u1"), headers=JSON)
    assert created.status_code == 201
    pid = created.json()["id"]
    updated = client.put(f"/fhir/Patient?identifier={SYS}|u1",
                         json=patient("u1", gender="female"), headers=JSON)
    assert updated.status_code == 200
    assert updated.json()["id"] == pid and updated.json()["meta"]["versionId"] == "2"
    wrong_id = client.put(f"/fhir/Patient?identifier={SYS}|u1",
                          json={**patient("u1"), "id": "other"}, headers=JSON)
    assert wrong_id.status_code == 400
    with_id = client.put(f"/fhir/Patient?identifier={SYS}|u2",
                         json={**patient("u2"), "id": "chosen"}, headers=JSON)
    assert with_id.status_code == 201 and with_id.json()["id"] == "chosen"
    client.post("/fhir/Patient", json=patient("u1"), headers=JSON)
    assert client.put(f"/fhir/Patient?identifier={SYS}|u1", json=patient("u1"),
                      headers=JSON).status_code == 412
    assert count(repository) == 3


def test_conditional_delete(client: TestClient, repository: Repository) -> None:
    client.post("/fhir/Patient", json=patient("d1"), headers=JSON)
    client.post("/fhir/Patient", json=patient("d2"), headers=JSON)
    client.post("/fhir/Patient", json=patient("d2"), headers=JSON)
    assert client.delete(f"/fhir/Patient?identifier={SYS}|d1").status_code == 204
    assert client.delete(f"/fhir/Patient?identifier={SYS}|none").status_code == 204
    assert client.delete(f"/fhir/Patient?identifier={SYS}|d2").status_code == 412
    assert count(repository) == 2


def test_transaction_conditional_entries_and_references(
    client: TestClient, repository: Repository
) -> None:
    client.put("/fhir/Practitioner/dr", json={
        "resourceType": "Practitioner", "id": "dr",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "999"}]},
        headers=JSON)
    existing = client.post("/fhir/Patient", json=patient("t1"), headers=JSON).json()["id"]
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001",
         "resource": patient("t1"),
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYS}|t1"}},
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002",
         "resource": patient("t2"),
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYS}|t2"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001"},
                      "focus": [{"reference": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002"}],
                      "performer": [{"reference":
                                     "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|999"}]},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": patient("t3", gender="male"),
         "request": {"method": "PUT", "url": f"Patient?identifier={SYS}|t3"}},
    ]}
    response = client.post("/fhir", json=tx, headers=JSON)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [e["response"]["status"] for e in entries] == [
        "200 OK", "201 Created", "201 Created", "201 Created"]
    assert entries[0]["response"]["location"].startswith(f"Patient/{existing}/")
    new_patient = entries[1]["response"]["location"].split("/_history")[0]
    obs = client.get("/fhir/" + entries[2]["response"]["location"].split("/_history")[0]).json()
    assert obs["subject"]["reference"] == f"Patient/{existing}"
    assert obs["focus"][0]["reference"] == new_patient
    assert obs["performer"][0]["reference"] == "Practitioner/dr"
    assert count(repository) == 3  # existing, t2, t3


def test_unresolvable_conditional_reference_fails_the_transaction(
    client: TestClient, repository: Repository
) -> None:
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("x1"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": f"Patient?identifier={SYS}|nobody"}},
         "request": {"method": "POST", "url": "Observation"}},
    ]}
    response = client.post("/fhir", json=tx, headers=JSON)
    assert response.status_code == 412
    assert "matches no resource" in response.json()["issue"][0]["diagnostics"]
    assert count(repository) == 0


def test_batch_with_if_none_exist_and_search_entry(client: TestClient,
                                                    repository: Repository) -> None:
    entry = {"resource": patient("b1"),
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYS}|b1"}}
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        entry, entry, {"request": {"method": "GET", "url": f"Patient?identifier={SYS}|b1"}}]}
    response = client.post("/fhir", json=batch, headers=JSON)
    assert response.status_code == 200
    entries = response.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "200 OK", "200 OK"]
    searchset = entries[2]["resource"]
    assert searchset["type"] == "searchset" and searchset["total"] == 1
    assert count(repository) == 1
