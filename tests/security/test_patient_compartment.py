"""Point 4: a patient-context token reaches only its patient's compartment, by every route,
and what it may not see looks exactly like what does not exist."""

from __future__ import annotations

from typing import Any

import pytest

from carebridge.security.policy import SYSTEM

Secured = Any
LAB = "http://terminology.hl7.org/CodeSystem/observation-category"


def _obs(patient: str, code: str, category: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": LAB, "code": category}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{patient}"},
            "performer": [{"reference": "Practitioner/doc"}]}


@pytest.fixture
def world(secured: Secured) -> dict[str, str]:
    svc = secured.service
    ids: dict[str, str] = {}
    svc.update(SYSTEM, "Practitioner", "doc", {"resourceType": "Practitioner", "id": "doc",
                                                 "name": [{"family": "House"}]})
    for who, family in (("a", "Alpha"), ("b", "Bravo")):
        ids[who] = svc.create(SYSTEM, "Patient", {
            "resourceType": "Patient", "name": [{"family": family}],
            "generalPractitioner": [{"reference": "Practitioner/doc"}]}).version.id
        ids[f"{who}_lab"] = svc.create(SYSTEM, "Observation",
                                       _obs(ids[who], "2345-7", "laboratory")).version.id
        ids[f"{who}_vital"] = svc.create(SYSTEM, "Observation",
                                         _obs(ids[who], "8867-4", "vital-signs")).version.id
    return ids


def _as_patient(secured: Secured, ids: dict[str, str], scope: str = "patient/*.rs",
                roles: set[str] | None = None) -> dict[str, str]:
    return secured.headers(scope, roles or {"patient"}, patient=ids["a"])


def _ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if "resource" in e
            and e["resource"]["resourceType"] != "OperationOutcome"}


def test_own_data_is_readable(secured: Secured, world: dict[str, str]) -> None:
    h = _as_patient(secured, world)
    c = secured.client
    assert c.get(f"/fhir/Patient/{world['a']}", headers=h).status_code == 200
    assert c.get(f"/fhir/Observation/{world['a_lab']}", headers=h).status_code == 200
    assert c.get(f"/fhir/Observation/{world['a_lab']}/_history/1", headers=h).status_code == 200
    assert c.get(f"/fhir/Observation/{world['a_lab']}/_history", headers=h).status_code == 200
    found = c.get("/fhir/Observation", headers=h).json()
    assert _ids(found) == {world["a_lab"], world["a_vital"]}
    assert found["total"] == 2
    # Not patient data: readable from a patient context (scope permitting).
    assert c.get("/fhir/Practitioner/doc", headers=h).status_code == 200


def test_other_patients_data_looks_missing_by_every_instance_route(
        secured: Secured, world: dict[str, str]) -> None:
    h = _as_patient(secured, world)
    c = secured.client
    for path in [f"/fhir/Patient/{world['b']}", f"/fhir/Observation/{world['b_lab']}",
                 f"/fhir/Observation/{world['b_lab']}/_history/1",
                 f"/fhir/Observation/{world['b_lab']}/_history"]:
        forbidden = c.get(path, headers=h)
        missing = c.get(path.replace(world["b_lab"], "nope").replace(world["b"], "nope"),
                        headers=h)
        assert forbidden.status_code == missing.status_code == 404, path
        text = forbidden.json()["issue"][0]["diagnostics"]
        assert text.replace(world["b_lab"], "X").replace(world["b"], "X") == (
            missing.json()["issue"][0]["diagnostics"].replace("nope", "X"))


def test_searches_are_narrowed_not_filtered(secured: Secured, world: dict[str, str]) -> None:
    h = _as_patient(secured, world)
    c = secured.client
    a = {world["a_lab"], world["a_vital"]}
    assert _ids(c.get(f"/fhir/Observation?subject=Patient/{world['b']}", headers=h).json()) == set()
    assert c.get(f"/fhir/Observation?subject=Patient/{world['b']}&_summary=count",
                 headers=h).json()["total"] == 0
    assert _ids(c.get(f"/fhir/Patient/{world['b']}/Observation", headers=h).json()) == set()
    assert _ids(c.get(f"/fhir/Patient/{world['a']}/Observation", headers=h).json()) == a
    assert _ids(c.get("/fhir/Patient", headers=h).json()) == {world["a"]}
    assert _ids(c.get("/fhir?_type=Patient,Observation", headers=h).json()) == a | {world["a"]}
    # chaining and _has only ever run inside the compartment
    assert _ids(c.get("/fhir/Observation?subject:Patient.family=Bravo", headers=h).json()) == set()
    assert _ids(c.get("/fhir/Observation?subject:Patient.family=Alpha", headers=h).json()) == a
    has = c.get("/fhir/Patient?_has:Observation:subject:code=2345-7", headers=h).json()
    assert _ids(has) == {world["a"]}


def test_includes_stay_inside(secured: Secured, world: dict[str, str]) -> None:
    h = _as_patient(secured, world)
    c = secured.client
    rev = c.get("/fhir/Patient?_revinclude=Observation:subject", headers=h).json()
    assert _ids(rev) == {world["a"], world["a_lab"], world["a_vital"]}
    # Patient B reached through an include from a chain of references never appears.
    inc = c.get(f"/fhir/Observation?_include=Observation:subject&_id={world['a_lab']}",
                headers=h).json()
    assert _ids(inc) == {world["a_lab"], world["a"]}
    # Included types the scope does not grant are not fetched at all.
    narrow = secured.headers("patient/Observation.rs", {"patient"}, patient=world["a"])
    inc = c.get("/fhir/Observation?_include=Observation:performer", headers=narrow).json()
    assert _ids(inc) == {world["a_lab"], world["a_vital"]}


def test_everything_is_the_own_record_only(secured: Secured, world: dict[str, str]) -> None:
    """Patient/$everything: a patient gets their own record and what it references; another
    patient's answers like a missing one; a narrower scope narrows it, type by type."""
    h = _as_patient(secured, world)
    c = secured.client
    own = c.get(f"/fhir/Patient/{world['a']}/$everything", headers=h)
    assert own.status_code == 200, own.text
    assert _ids(own.json()) == {world["a"], world["a_lab"], world["a_vital"], "doc"}
    other = c.get(f"/fhir/Patient/{world['b']}/$everything", headers=h)
    missing = c.get("/fhir/Patient/nope/$everything", headers=h)
    assert other.status_code == missing.status_code == 404
    assert other.json()["issue"][0]["diagnostics"].replace(world["b"], "X") == (
        missing.json()["issue"][0]["diagnostics"].replace("nope", "X"))
    narrow = secured.headers("patient/Patient.rs patient/Observation.rs?category=vital-signs",
                             {"patient"}, patient=world["a"])
    vital = c.get(f"/fhir/Patient/{world['a']}/$everything", headers=narrow)
    assert vital.status_code == 200, vital.text
    assert _ids(vital.json()) == {world["a"], world["a_vital"]}
    # Staff see any patient's record, and nothing of another patient's in it.
    staff = secured.headers("user/*.rs", {"physician"})
    theirs = c.get(f"/fhir/Patient/{world['b']}/$everything", headers=staff).json()
    assert _ids(theirs) == {world["b"], world["b_lab"], world["b_vital"], "doc"}


def test_history_bundles_and_conditionals_are_closed(secured: Secured,
                                                      world: dict[str, str]) -> None:
    h = _as_patient(secured, world, "patient/*.cruds")
    c = secured.client
    assert c.get("/fhir/_history", headers=h).status_code == 403
    assert c.get("/fhir/Observation/_history", headers=h).status_code == 403
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Observation/{world['b_lab']}"}},
        {"request": {"method": "GET", "url": "Observation?code=2345-7"}}]}
    reply = c.post("/fhir", json=batch, headers=h)
    assert reply.status_code == 200
    assert [e["response"]["status"][:3] for e in reply.json()["entry"]] == ["403", "403"]
    assert "resource" not in reply.json()["entry"][0]
    transaction = {**batch, "type": "transaction"}
    assert c.post("/fhir", json=transaction, headers=h).status_code == 403
    cond = c.put("/fhir/Observation?code=2345-7", json=_obs(world["a"], "1", "laboratory"),
                 headers=h)
    assert cond.status_code == 403
    assert c.delete("/fhir/Observation?code=2345-7", headers=h).status_code == 403


def test_writes_stay_inside(secured: Secured, world: dict[str, str]) -> None:
    h = _as_patient(secured, world, "patient/Observation.cruds", {"physician"})
    c = secured.client
    assert c.post("/fhir/Observation", json=_obs(world["a"], "1-8", "survey"),
                  headers=h).status_code == 201
    assert c.post("/fhir/Observation", json=_obs(world["b"], "1-8", "survey"),
                  headers=h).status_code == 403
    theirs = {**_obs(world["b"], "1-8", "survey"), "id": world["b_lab"]}
    assert c.put(f"/fhir/Observation/{world['b_lab']}", json=theirs, headers=h).status_code == 403
    moved = {**_obs(world["a"], "1-8", "survey"), "id": world["b_lab"]}
    assert c.put(f"/fhir/Observation/{world['b_lab']}", json=moved, headers=h).status_code == 404
    assert c.delete(f"/fhir/Observation/{world['b_lab']}", headers=h).status_code == 404
    patch = [{"op": "replace", "path": "/status", "value": "amended"}]
    assert c.patch(f"/fhir/Observation/{world['a_lab']}", json=patch, headers={
        **h, "Content-Type": "application/json-patch+json"}).status_code == 403
    # B's observation is untouched
    doc = secured.service.read(SYSTEM, "Observation", world["b_lab"])
    assert doc.version == 1


def test_granular_scope_narrows_by_category(secured: Secured, world: dict[str, str]) -> None:
    h = secured.headers(f"patient/Observation.rs?category={LAB}|laboratory", {"patient"},
                        patient=world["a"])
    c = secured.client
    assert _ids(c.get("/fhir/Observation", headers=h).json()) == {world["a_lab"]}
    assert c.get(f"/fhir/Observation/{world['a_lab']}", headers=h).status_code == 200
    assert c.get(f"/fhir/Observation/{world['a_vital']}", headers=h).status_code == 404
    assert _ids(c.get("/fhir/Observation?code=8867-4", headers=h).json()) == set()
    # a user-level granular scope narrows by category without a compartment
    u = secured.headers(f"user/Observation.rs?category={LAB}|laboratory", {"physician"})
    assert _ids(c.get("/fhir/Observation", headers=u).json()) == {world["a_lab"], world["b_lab"]}


def test_patient_role_is_bound_even_with_user_scopes(secured: Secured,
                                                      world: dict[str, str]) -> None:
    h = secured.headers("user/*.rs", {"patient"}, patient=world["a"])
    c = secured.client
    assert c.get(f"/fhir/Observation/{world['b_lab']}", headers=h).status_code == 404
    assert _ids(c.get("/fhir/Observation", headers=h).json()) == {world["a_lab"], world["a_vital"]}
    assert c.post("/fhir/Observation", json=_obs(world["a"], "1", "survey"),
                  headers=h).status_code == 403  # the patient role reads only


def test_patient_scope_without_patient_context_grants_nothing(secured: Secured,
                                                               world: dict[str, str]) -> None:
    h = secured.headers("patient/*.rs", {"physician"})
    assert secured.client.get(f"/fhir/Observation/{world['a_lab']}", headers=h).status_code == 403
