"""Validation on every way in, over HTTP, on SQLite and PostgreSQL: REST create/update/patch,
transactions (all or nothing, the entry named), batches (entry by entry), import, $validate,
warnings returned and kept in a Provenance, warn-only mode, uploaded profiles."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import orjson
from starlette.testclient import TestClient
from tests.fhir.validation.catalogue import BLOOD_PRESSURE, HEART_RATE, PATIENT, SD, broken

from carebridge.api import create_api
from carebridge.security.policy import SYSTEM
from carebridge.services.importer import Importer
from carebridge.services.resources import ResourceService
from carebridge.services.validation import WriteValidation
from carebridge.storage.base import Repository

FHIR = {"content-type": "application/fhir+json"}
OUTCOME = {**FHIR, "prefer": "return=OperationOutcome"}


def count(client: TestClient, rtype: str) -> int:
    total = client.get(f"/fhir/{rtype}?_summary=count").json()["total"]
    assert isinstance(total, int)
    return total


def issue_at(outcome: dict[str, Any], expression: str) -> dict[str, Any]:
    found = [i for i in outcome["issue"] if expression in i.get("expression", [])]
    assert found, outcome
    return found[0]


# ------------------------------------------------------------------------------ REST


def test_create_with_an_invalid_code_is_422_and_nothing_is_stored(client: TestClient) -> None:
    response = client.post("/fhir/Observation", json=broken(HEART_RATE, status="done"),
                           headers=FHIR)
    assert response.status_code == 422
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = issue_at(outcome, "Observation.status")
    assert (issue["severity"], issue["code"]) == ("error", "code-invalid")
    assert "'done'" in issue["diagnostics"] and "final" in issue["diagnostics"]
    assert count(client, "Observation") == 0


def test_every_error_is_reported_at_once(client: TestClient) -> None:
    bad = broken(PATIENT, gender="Male", birthDate="2021-02-29", name=[{}])
    outcome = client.post("/fhir/Patient", json=bad, headers=FHIR).json()
    codes = {(i["code"], i["expression"][0]) for i in outcome["issue"]}
    assert codes >= {("code-invalid", "Patient.gender"), ("value", "Patient.birthDate"),
                     ("invariant", "Patient.name[0]")}


def test_update_and_patch_are_validated(client: TestClient) -> None:
    created = client.put("/fhir/Patient/p1", json=PATIENT, headers=FHIR)
    assert created.status_code == 201
    response = client.put("/fhir/Patient/p1", json=broken(PATIENT, active="yes"),
                          headers=FHIR)
    assert response.status_code == 422
    assert issue_at(response.json(), "Patient.active")["code"] == "value"
    patch = [{"op": "replace", "path": "/gender", "value": "F"}]
    response = client.patch("/fhir/Patient/p1", content=orjson.dumps(patch),
                            headers={"content-type": "application/json-patch+json"})
    assert response.status_code == 422
    assert issue_at(response.json(), "Patient.gender")["code"] == "code-invalid"
    assert client.get("/fhir/Patient/p1").json()["gender"] == "female"
    assert client.get("/fhir/Patient/p1").json()["meta"]["versionId"] == "1"


def test_warnings_come_back_with_the_write_and_are_kept_with_the_version(
        client: TestClient, service: ResourceService) -> None:
    tachycardia = broken(HEART_RATE, valueQuantity__value=400)
    response = client.post("/fhir/Observation", json=tachycardia, headers=OUTCOME)
    assert response.status_code == 201
    outcome = response.json()
    assert outcome["issue"][0]["severity"] == "information"
    warning = issue_at(outcome, "Observation.valueQuantity.value")
    assert (warning["severity"], warning["code"]) == ("warning", "business-rule")
    assert "400" in warning["diagnostics"]
    rid = response.headers["location"].split("/fhir/Observation/")[1].split("/")[0]
    kept = service.validation.recorded("Observation", rid)
    assert [version for version, _ in kept] == [1]
    outcome = kept[0][1]
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Observation.valueQuantity.value"]
    # The stored resource is what was sent, and no other resource was added.
    stored = client.get(f"/fhir/Observation/{rid}").json()
    assert stored["valueQuantity"] == tachycardia["valueQuantity"]
    assert count(client, "Provenance") == 0
    # A clean update keeps nothing for its version.
    update = broken(HEART_RATE, id=rid)
    assert client.put(f"/fhir/Observation/{rid}", json=update, headers=FHIR).status_code == 200
    assert [version for version, _ in service.validation.recorded("Observation", rid)] == [1]


# ------------------------------------------------------------------------------ bundles


def _entry(resource: dict[str, Any], url: str, method: str = "POST") -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{len(url):08d}-0000-4000-8000-{abs(hash(url)) % 10**12:012d}",
            "resource": resource, "request": {"method": method, "url": url}}


def test_a_transaction_with_one_invalid_entry_fails_whole_naming_it(client: TestClient) -> None:
    entries = [
        _entry(PATIENT, "Patient/p1", "PUT"),
        _entry(HEART_RATE, "Observation"),
        _entry(broken(HEART_RATE, id="hr2"), "Observation/hr2", "PUT"),
        _entry(broken(HEART_RATE, status="done"), "Observation/hr3", "PUT"),
    ]
    entries[3]["resource"]["id"] = "hr3"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    response = client.post("/fhir", json=bundle, headers=FHIR)
    assert response.status_code == 422
    issue = issue_at(response.json(), "Bundle.entry[3].resource.status")
    assert issue["code"] == "code-invalid"
    assert count(client, "Patient") == 0 and count(client, "Observation") == 0


def test_batch_entries_fail_one_by_one_and_warnings_ride_along(client: TestClient) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        _entry(PATIENT, "Patient/p1", "PUT"),
        _entry(broken(PATIENT, id="p2", gender="Male"), "Patient/p2", "PUT"),
        _entry(broken(HEART_RATE, valueQuantity__value=400), "Observation"),
    ]}
    response = client.post("/fhir", json=bundle, headers=FHIR)
    assert response.status_code == 200
    first, second, third = (e["response"] for e in response.json()["entry"])
    assert first["status"].startswith("201")
    assert second["status"].startswith("422")
    assert issue_at(second["outcome"], "Bundle.entry[1].resource.gender")["code"] == (
        "code-invalid")
    assert third["status"].startswith("201")
    assert third["outcome"]["issue"][0]["severity"] == "warning"
    assert count(client, "Patient") == 1


def test_import_fails_a_file_with_an_invalid_resource(tmp_path: Path,
                                                      repository: Repository) -> None:
    good = tmp_path / "good.ndjson"
    good.write_bytes(orjson.dumps(PATIENT) + b"\n")
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(orjson.dumps(broken(PATIENT, id="p9")) + b"\n"
                    + orjson.dumps(broken(PATIENT, id="p8", birthDate="1980-13-01")) + b"\n")
    importer = Importer(ResourceService(repository), SYSTEM)
    assert importer.load_file(good).ok
    result = importer.load_file(bad)
    assert not result.ok
    assert result.error is not None and "Bundle.entry[1]" in result.error
    assert "birthDate" in result.error
    with repository.session() as session:
        assert session.read("Patient", "p9") is None


def test_warn_mode_stores_invalid_resources_and_keeps_the_errors_as_warnings(
        repository: Repository) -> None:
    service = ResourceService(repository, validation=WriteValidation(repository, "warn"))
    with TestClient(create_api(service)) as client:
        response = client.put("/fhir/Patient/p1", json=broken(PATIENT, gender="Male"),
                              headers=OUTCOME)
        assert response.status_code == 201
        warning = issue_at(response.json(), "Patient.gender")
        assert (warning["severity"], warning["code"]) == ("warning", "code-invalid")
        assert "warn-only" in warning["diagnostics"]
        assert client.get("/fhir/Patient/p1").json()["gender"] == "Male"
    (version, outcome), = service.validation.recorded("Patient", "p1")
    assert version == 1 and outcome["issue"][0]["expression"] == ["Patient.gender"]


def test_off_mode_checks_only_the_shape(repository: Repository) -> None:
    service = ResourceService(repository, validation=WriteValidation(repository, "off"))
    with TestClient(create_api(service)) as client:
        response = client.put("/fhir/Patient/p1", json=broken(PATIENT, gender="Male"),
                              headers=FHIR)
        assert response.status_code == 201
        assert client.put("/fhir/Patient/p2", json=broken(PATIENT, id="p2", nickname="x"),
                          headers=FHIR).status_code == 400


# ------------------------------------------------------------------------------ $validate


def test_validate_at_type_level_returns_200_with_every_issue(client: TestClient) -> None:
    response = client.post("/fhir/Observation/$validate",
                           json=broken(HEART_RATE, status="done"), headers=FHIR)
    assert response.status_code == 200
    assert issue_at(response.json(), "Observation.status")["severity"] == "error"
    response = client.post("/fhir/Observation/$validate", json=HEART_RATE, headers=FHIR)
    assert response.json()["issue"] == [{
        "severity": "information", "code": "informational",
        "diagnostics": "No errors: the resource is valid"}]
    assert count(client, "Observation") == 0  # $validate stores nothing


def test_validate_takes_parameters_with_mode_and_profile(client: TestClient) -> None:
    parameters = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": broken(HEART_RATE, effectiveDateTime=None)},
        {"name": "mode", "valueCode": "create"},
        {"name": "profile", "valueUri": SD + "heartrate"}]}
    del parameters["parameter"][0]["resource"]["effectiveDateTime"]  # type: ignore[index]
    outcome = client.post("/fhir/Observation/$validate", json=parameters, headers=FHIR).json()
    issue = issue_at(outcome, "Observation.effective[x]")
    assert issue["code"] == "required" and "heartrate" in issue["diagnostics"]
    # The same resource without the profile is valid.
    plain = client.post("/fhir/Observation/$validate?mode=create",
                        json=parameters["parameter"][0]["resource"], headers=FHIR).json()
    assert plain["issue"][0]["severity"] == "information"


def test_validate_at_instance_level(client: TestClient) -> None:
    assert client.put("/fhir/Patient/p1", json=PATIENT, headers=FHIR).status_code == 201
    stored = client.post("/fhir/Patient/p1/$validate", headers=FHIR).json()
    assert stored["issue"][0]["severity"] == "information"
    other = client.post("/fhir/Patient/p1/$validate?mode=update",
                        json=broken(PATIENT, id="p2"), headers=FHIR).json()
    assert issue_at(other, "Patient.id")["code"] == "invalid"
    deleting = client.post("/fhir/Patient/p1/$validate?mode=delete", headers=FHIR)
    assert deleting.status_code == 200
    assert client.post("/fhir/Patient/nope/$validate?mode=delete",
                       headers=FHIR).status_code == 404
    metadata = client.get("/fhir/metadata").json()
    patient = next(r for r in metadata["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"name": "validate", "definition":
            "http://hl7.org/fhir/OperationDefinition/Resource-validate"} in patient["operation"]


# ------------------------------------------------------------------------------ profiles


def test_core_vital_signs_profiles_are_honoured_on_write(client: TestClient) -> None:
    assert client.post("/fhir/Observation", json=BLOOD_PRESSURE, headers=FHIR).status_code == 201
    only_systolic = copy.deepcopy(BLOOD_PRESSURE)
    only_systolic["component"] = only_systolic["component"][:1]
    response = client.post("/fhir/Observation", json=only_systolic, headers=FHIR)
    assert response.status_code == 422
    issue = issue_at(response.json(), "Observation.component")
    assert issue["code"] == "required" and "DiastolicBP" in issue["diagnostics"]


NEWS2_PROFILE = "http://example.org/fhir/StructureDefinition/scored-heart-rate"


def _uploaded_profile() -> dict[str, Any]:
    """A profile on Observation: interpretation required, at most one note."""
    profile: dict[str, Any] = {
        "resourceType": "StructureDefinition", "url": NEWS2_PROFILE,
        "name": "ScoredHeartRate", "status": "active", "kind": "resource",
        "abstract": False, "type": "Observation", "derivation": "constraint",
        "baseDefinition": SD + "heartrate",
        "differential": {"element": [
            {"id": "Observation.interpretation", "path": "Observation.interpretation",
             "min": 1},
            {"id": "Observation.note", "path": "Observation.note", "max": "1"},
            {"id": "Observation.valueQuantity.value", "path": "Observation.valueQuantity.value",
             "min": 1},
        ]},
    }
    return profile


def test_an_uploaded_differential_profile_is_snapshotted_and_honoured(
        client: TestClient) -> None:
    response = client.post("/fhir/StructureDefinition", json=_uploaded_profile(),
                           headers=FHIR)
    assert response.status_code == 201, response.text
    stored = response.json()
    ids = [e["id"] for e in stored["snapshot"]["element"]]
    # The differential's shorthand valueQuantity is the heartrate profile's type slice.
    assert "Observation.interpretation" in ids
    assert "Observation.value[x]:valueQuantity.value" in ids
    interpretation = next(e for e in stored["snapshot"]["element"]
                          if e["id"] == "Observation.interpretation")
    assert interpretation["min"] == 1
    claimed = broken(HEART_RATE, meta={"profile": [NEWS2_PROFILE]})
    response = client.post("/fhir/Observation", json=claimed, headers=FHIR)
    assert response.status_code == 422
    issue = issue_at(response.json(), "Observation.interpretation")
    assert issue["code"] == "required" and NEWS2_PROFILE in issue["diagnostics"]
    # Still a heart rate profile underneath: the base profile's rules hold too.
    wrong_unit = broken(claimed, valueQuantity__code="kg",
                        interpretation=[{"text": "normal"}])
    response = client.post("/fhir/Observation", json=wrong_unit, headers=FHIR)
    assert issue_at(response.json(), "Observation.valueQuantity.code")["code"] == "value"
    fine = broken(claimed, interpretation=[{"text": "normal"}])
    assert client.post("/fhir/Observation", json=fine, headers=FHIR).status_code == 201


def test_a_changed_profile_applies_to_the_next_write(client: TestClient) -> None:
    profile = _uploaded_profile()
    created = client.post("/fhir/StructureDefinition", json=profile, headers=FHIR).json()
    claimed = broken(HEART_RATE, meta={"profile": [NEWS2_PROFILE]},
                     interpretation=[{"text": "normal"}], note=[{"text": "a"}, {"text": "b"}])
    response = client.post("/fhir/Observation", json=claimed, headers=FHIR)
    assert issue_at(response.json(), "Observation.note")["code"] == "structure"
    profile["id"] = created["id"]
    profile["differential"]["element"][1]["max"] = "*"
    assert client.put(f"/fhir/StructureDefinition/{created['id']}", json=profile,
                      headers=FHIR).status_code == 200
    assert client.post("/fhir/Observation", json=claimed, headers=FHIR).status_code == 201


def test_unknown_profiles_are_reported_but_do_not_block(client: TestClient) -> None:
    claimed = broken(PATIENT, meta={"profile": ["http://example.org/unknown"]})
    outcome = client.post("/fhir/Patient/$validate", json=claimed, headers=FHIR).json()
    note = issue_at(outcome, "Patient.meta.profile")
    assert (note["severity"], note["code"]) == ("information", "not-supported")
    assert client.post("/fhir/Patient", json=claimed, headers=FHIR).status_code == 201


def test_binary_patch_entries_in_transactions_are_validated(client: TestClient) -> None:
    assert client.put("/fhir/Patient/p1", json=PATIENT, headers=FHIR).status_code == 201
    patch = [{"op": "replace", "path": "/birthDate", "value": "yesterday"}]
    binary = {"resourceType": "Binary", "contentType": "application/json-patch+json",
              "data": base64.b64encode(orjson.dumps(patch)).decode()}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": binary, "request": {"method": "PATCH", "url": "Patient/p1"}}]}
    response = client.post("/fhir", json=bundle, headers=FHIR)
    assert response.status_code == 422
    assert issue_at(response.json(), "Bundle.entry[0].resource.birthDate")["code"] == "value"


def test_a_likely_duplicate_patient_is_a_warning_on_write(client: TestClient,
                                                          service: ResourceService) -> None:
    assert client.put("/fhir/Patient/p1", json=PATIENT, headers=FHIR).status_code == 201
    # Updating the same patient is not a duplicate of itself.
    again = client.put("/fhir/Patient/p1", json=broken(PATIENT, active=False), headers=OUTCOME)
    assert [i["severity"] for i in again.json()["issue"]] == ["information"]
    twin = broken(PATIENT, id="p2", name=[{"family": "SMITH", "given": ["Ánn"]}])
    response = client.put("/fhir/Patient/p2", json=twin, headers=OUTCOME)
    assert response.status_code == 201
    warning = issue_at(response.json(), "Patient")
    assert (warning["severity"], warning["code"]) == ("warning", "business-rule")
    assert warning["diagnostics"].startswith(
        "duplicate-patient: likely the same person as Patient/p1: same name (smith, ann), "
        "birth date 1980-05-01 and identifier http://hospital.example.org/mrn|12345")
    other = broken(twin, id="p3", identifier=[{"system": "http://x", "value": "9"}])
    quiet = client.put("/fhir/Patient/p3", json=other, headers=OUTCOME)
    assert [i["severity"] for i in quiet.json()["issue"]] == ["information"]
    assert [v for v, _ in service.validation.recorded("Patient", "p2")] == [1]
    # A shared address (first line and postal code, compared folded) is enough too.
    home = [{"line": ["1 Main St"], "postalCode": "AB1 2CD"}]
    assert client.put("/fhir/Patient/p4", json=broken(other, id="p4", address=home),
                      headers=FHIR).status_code == 201
    moved = broken(other, id="p5", identifier=[{"system": "http://x", "value": "5"}],
                   address=[{"line": ["1 MAIN ST"], "postalCode": "ab1 2cd"}])
    response = client.put("/fhir/Patient/p5", json=moved, headers=OUTCOME)
    warning = issue_at(response.json(), "Patient")
    assert warning["diagnostics"].startswith(
        "duplicate-patient: likely the same person as Patient/p4: same name (smith, ann), "
        "birth date 1980-05-01 and address"), warning
