"""Transaction and batch bundles (http://hl7.org/fhir/R4/http.html#transaction)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from starlette.testclient import TestClient

from carebridge.demo import load_bundle
from carebridge.storage import Repository
from carebridge.storage.base import HistoryQuery

JSON = {"content-type": "application/fhir+json"}


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(method: str, url: str, resource: dict[str, Any] | None = None,
         full_url: str | None = None, **request: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        entry["resource"] = resource
    if full_url is not None:
        entry["fullUrl"] = full_url
    return entry


def count_versions(repository: Repository) -> int:
    with repository.session() as s:
        page = s.history(HistoryQuery(count=1, with_total=True))
        return page.total or 0


PATIENT_URN = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"


def test_transaction_rewrites_urn_uuid_references(client: TestClient) -> None:
    tx = bundle(
        "transaction",
        post("POST", "Observation", {
            "resourceType": "Observation", "status": "final", "code": {"text": "hr"},
            "subject": {"reference": PATIENT_URN},
            "derivedFrom": [{"reference": "urn:uuid:0a6f6c61-8c19-4f5c-a2c8-6d8f5a3c2b10"}],
        }),
        post("POST", "Patient", {"resourceType": "Patient", "id": "ignored"},
             full_url=PATIENT_URN),
        post("POST", "Observation", {
            "resourceType": "Observation", "status": "final", "code": {"text": "bp"},
        }, full_url="urn:uuid:0a6f6c61-8c19-4f5c-a2c8-6d8f5a3c2b10"),
    )
    response = client.post("/fhir", json=tx, headers=JSON)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    entries = result["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created"] * 3
    patient_ref = entries[1]["response"]["location"].split("/_history")[0]
    assert patient_ref.startswith("Patient/") and not patient_ref.endswith("ignored")
    assert entries[0]["response"]["etag"] == 'W/"1"'
    assert entries[0]["fullUrl"].endswith(entries[0]["response"]["location"].split("/_hist")[0])
    obs = client.get("/fhir/" + entries[0]["response"]["location"].split("/_history")[0]).json()
    assert obs["subject"]["reference"] == patient_ref
    other = entries[2]["response"]["location"].split("/_history")[0]
    assert obs["derivedFrom"][0]["reference"] == other


def test_transaction_resolves_relative_references_against_absolute_full_urls(
    client: TestClient,
) -> None:
    base = "http://other.example.org/fhir"
    tx = bundle(
        "transaction",
        post("POST", "Patient", {"resourceType": "Patient"}, full_url=f"{base}/Patient/p9"),
        post("POST", "Observation", {
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/p9"},
            "focus": [{"reference": f"{base}/Patient/p9"}],
        }, full_url=f"{base}/Observation/o1"),
        post("POST", "Observation", {
            "resourceType": "Observation", "status": "final", "code": {"text": "y"},
            "subject": {"reference": "Patient/p9"},  # no fullUrl: relative to this server
        }),
    )
    response = client.post("/fhir", json=tx, headers=JSON)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    patient = entries[0]["response"]["location"].split("/_history")[0]
    first = client.get("/fhir/" + entries[1]["response"]["location"].split("/_history")[0])
    assert first.json()["subject"]["reference"] == patient
    assert first.json()["focus"][0]["reference"] == patient
    second = client.get("/fhir/" + entries[2]["response"]["location"].split("/_history")[0])
    assert second.json()["subject"]["reference"] == "Patient/p9"


def test_transaction_is_all_or_nothing(client: TestClient, repository: Repository) -> None:
    client.put("/fhir/Patient/keep", json={"resourceType": "Patient", "id": "keep",
                                           "active": True}, headers=JSON)
    before = count_versions(repository)
    tx = bundle(
        "transaction",
        post("POST", "Patient", {"resourceType": "Patient"}),
        post("PUT", "Patient/keep", {"resourceType": "Patient", "id": "keep", "active": False}),
        post("DELETE", "Patient/keep"),
        post("PUT", "Patient/other", {"resourceType": "Patient", "id": "mismatch"}),
    )
    response = client.post("/fhir", json=tx, headers=JSON)
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"][0].startswith("Bundle.entry[")
    assert count_versions(repository) == before
    assert client.get("/fhir/Patient/keep").json()["active"] is True


def test_transaction_failure_in_a_later_entry_rolls_back_earlier_ones(
    client: TestClient, repository: Repository
) -> None:
    before = count_versions(repository)
    tx = bundle(
        "transaction",
        post("POST", "Patient", {"resourceType": "Patient"}),
        post("PUT", "Patient/p1", {"resourceType": "Patient", "id": "p1"}, ifMatch='W/"4"'),
    )
    response = client.post("/fhir", json=tx, headers=JSON)
    assert response.status_code == 412
    assert "Bundle.entry[1]" in response.json()["issue"][0]["diagnostics"]
    assert count_versions(repository) == before


def test_transaction_processing_order_and_mixed_methods(client: TestClient) -> None:
    client.put("/fhir/Patient/a", json={"resourceType": "Patient", "id": "a"}, headers=JSON)
    client.put("/fhir/Patient/b", json={"resourceType": "Patient", "id": "b", "active": True},
               headers=JSON)
    client.put("/fhir/Patient/c", json={"resourceType": "Patient", "id": "c"}, headers=JSON)
    patch = base64.b64encode(b'[{"op":"add","path":"/gender","value":"female"}]').decode()
    tx = bundle(
        "transaction",
        post("GET", "Patient/a"),  # runs last: sees the update below
        post("PUT", "Patient/a", {"resourceType": "Patient", "id": "a", "gender": "male"}),
        post("DELETE", "Patient/b"),
        post("PATCH", "Patient/c", {"resourceType": "Binary",
                                    "contentType": "application/json-patch+json",
                                    "data": patch}),
        post("GET", "Patient/b/_history/1"),
    )
    response = client.post("/fhir", json=tx, headers={**JSON, "Prefer": "return=representation"})
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [e["response"]["status"] for e in entries] == [
        "200 OK", "200 OK", "204 No Content", "200 OK", "200 OK"]
    assert entries[0]["resource"]["gender"] == "male"
    assert entries[3]["resource"]["gender"] == "female"
    assert entries[4]["resource"]["active"] is True
    assert client.get("/fhir/Patient/b").status_code == 410


def test_transaction_rejects_unresolvable_and_duplicate_entries(client: TestClient) -> None:
    dangling = bundle("transaction", post("POST", "Observation", {
        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "urn:uuid:9d9c2d4e-0000-4000-8000-000000000000"}}))
    assert client.post("/fhir", json=dangling, headers=JSON).status_code == 400
    same_url = bundle("transaction",
                      post("POST", "Patient", {"resourceType": "Patient"}, full_url=PATIENT_URN),
                      post("POST", "Patient", {"resourceType": "Patient"}, full_url=PATIENT_URN))
    assert client.post("/fhir", json=same_url, headers=JSON).status_code == 400
    twice = bundle("transaction",
                   post("PUT", "Patient/x", {"resourceType": "Patient", "id": "x"}),
                   post("DELETE", "Patient/x"))
    assert client.post("/fhir", json=twice, headers=JSON).status_code == 400


def test_batch_entries_are_independent(client: TestClient) -> None:
    batch = bundle(
        "batch",
        post("POST", "Patient", {"resourceType": "Patient", "gender": "female"}),
        post("PUT", "Patient/z", {"resourceType": "Patient", "id": "y"}),
        post("GET", "Patient/does-not-exist"),
        post("PUT", "Patient/z", {"resourceType": "Patient", "id": "z"}),
        post("POST", "Foo", {"resourceType": "Foo"}),
    )
    response = client.post("/fhir", json=batch, headers=JSON)
    assert response.status_code == 200
    result = response.json()
    assert result["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses == ["201 Created", "400 Bad Request", "404 Not Found", "201 Created",
                        "404 Not Found"]
    failed = result["entry"][1]["response"]["outcome"]
    assert failed["resourceType"] == "OperationOutcome"
    assert failed["issue"][0]["expression"] == ["Bundle.entry[1].id"]
    assert client.get("/fhir/Patient/z").status_code == 200


def test_bundle_shape_errors(client: TestClient) -> None:
    assert client.post("/fhir", json={"resourceType": "Patient"}, headers=JSON).status_code == 400
    collection = bundle("collection")
    response = client.post("/fhir", json=collection, headers=JSON)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Bundle.type"]
    no_request = {"resourceType": "Bundle", "type": "transaction",
                  "entry": [{"resource": {"resourceType": "Patient"}}]}
    response = client.post("/fhir", json=no_request, headers=JSON)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[0].request"]
    empty = client.post("/fhir", json=bundle("transaction"), headers=JSON)
    assert empty.status_code == 200 and empty.json()["entry"] == []


def test_synthea_bundle_loads_with_all_references_resolved(
    client: TestClient, repository: Repository
) -> None:
    source = load_bundle("patient-034.json.gz")
    response = client.post("/fhir", json=source, headers=JSON)
    assert response.status_code == 200
    entries = response.json()["entry"]
    assert len(entries) == len(source["entry"])
    with repository.session() as s:
        counts = s.count_current()
    expected: dict[str, int] = {}
    for e in source["entry"]:
        expected[e["resource"]["resourceType"]] = expected.get(e["resource"]["resourceType"], 0) + 1
    assert counts == expected
    stored_refs = {e["response"]["location"].split("/_history")[0] for e in entries}
    for e in entries[:50]:
        body = client.get("/fhir/" + e["response"]["location"].split("/_history")[0]).content
        for ref in _references(orjson.loads(body)):
            assert ref.startswith("#") or ref in stored_refs, ref


def _references(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                found.append(value)
            else:
                found += _references(value)
    elif isinstance(node, list):
        for value in node:
            found += _references(value)
    return found
