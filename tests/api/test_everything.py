"""Patient/[id]/$everything (http://hl7.org/fhir/R4/patient-operation-everything.html), on
both backends: the patient, their compartment, what it references, paging, the parameters."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.testclient import TestClient

FHIR = {"Content-Type": "application/fhir+json"}


def _create(client: TestClient, resource: dict[str, Any]) -> str:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _world(client: TestClient) -> dict[str, str]:
    ids = {"doc": "doc", "org": "org"}
    client.put("/fhir/Practitioner/doc", json={"resourceType": "Practitioner", "id": "doc"},
               headers=FHIR)
    client.put("/fhir/Organization/org", json={"resourceType": "Organization", "id": "org",
                                                "name": "General"}, headers=FHIR)
    for who in ("a", "b"):
        ids[who] = _create(client, {"resourceType": "Patient", "name": [{"family": who}],
                                    "managingOrganization": {"reference": "Organization/org"}})
        for day in ("2019-05-01", "2021-05-01", "2023-05-01"):
            ids[f"{who}_obs_{day[:4]}"] = _create(client, {
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": f"Patient/{ids[who]}"},
                "performer": [{"reference": "Practitioner/doc"}],
                "effectiveDateTime": day, "valueQuantity": {"value": 70, "unit": "/min"}})
        ids[f"{who}_condition"] = _create(client, {
            "resourceType": "Condition", "subject": {"reference": f"Patient/{ids[who]}"},
            "code": {"text": "asthma"}, "recordedDate": "2015-01-01"})
    return ids


def _entries(bundle: dict[str, Any]) -> dict[str, str]:
    """id -> search mode of every entry."""
    return {e["resource"]["id"]: e["search"]["mode"] for e in bundle.get("entry", [])}


def _next(bundle: dict[str, Any]) -> str | None:
    link = next((k["url"] for k in bundle["link"] if k["relation"] == "next"), None)
    if link is None:
        return None
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}"


def test_everything_is_the_patient_their_compartment_and_what_it_references(
        client: TestClient) -> None:
    ids = _world(client)
    response = client.get(f"/fhir/Patient/{ids['a']}/$everything")
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "searchset"
    got = _entries(bundle)
    own = {ids["a"], ids["a_condition"], *(ids[f"a_obs_{y}"] for y in ("2019", "2021", "2023"))}
    assert {k for k, mode in got.items() if mode == "match"} == own
    # referenced from those: the performer and the managing organization, once each
    assert {k for k, mode in got.items() if mode == "include"} == {"doc", "org"}
    assert not {ids["b"], ids["b_condition"], ids["b_obs_2021"]} & set(got)
    assert bundle["entry"][0]["resource"]["resourceType"] == "Patient"  # the patient first


def test_pages_follow_next_links_without_gaps_or_repeats(client: TestClient) -> None:
    ids = _world(client)
    url: str | None = f"/fhir/Patient/{ids['a']}/$everything?_count=2"
    seen: list[str] = []
    pages = 0
    while url is not None:
        bundle = client.get(url).json()
        matches = [k for k, mode in _entries(bundle).items() if mode == "match"]
        assert 0 < len(matches) <= 2
        seen += matches
        url = _next(bundle)
        pages += 1
        if url is not None:
            assert parse_qs(urlsplit(url).query)["_count"] == ["2"]
    assert pages == 3 and len(seen) == len(set(seen)) == 5


def test_start_end_bound_care_dates_since_and_type_narrow(client: TestClient) -> None:
    ids = _world(client)
    base = f"/fhir/Patient/{ids['a']}/$everything"
    window = _entries(client.get(f"{base}?start=2020-01-01&end=2022-12-31").json())
    # Observations have a clinical date: only 2021's is in the window; the Condition and
    # the Patient have none a server can compare, so they stay.
    assert ids["a_obs_2021"] in window
    assert ids["a_obs_2019"] not in window and ids["a_obs_2023"] not in window
    assert ids["a_condition"] in window and ids["a"] in window
    only = _entries(client.get(f"{base}?_type=Condition").json())
    assert {k for k, m in only.items() if m == "match"} == {ids["a_condition"]}
    future = _entries(client.get(f"{base}?_since=2999-01-01T00:00:00Z").json())
    assert not [k for k, m in future.items() if m == "match"]
    posted = client.post(base, json={"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"},
        {"name": "start", "valueDate": "2023-01-01"}]}, headers=FHIR)
    assert posted.status_code == 200, posted.text
    assert {k for k, m in _entries(posted.json()).items() if m == "match"} == {
        ids["a_obs_2023"]}


def test_bad_parameters_are_400_naming_them_and_unknown_patients_404(
        client: TestClient) -> None:
    ids = _world(client)
    base = f"/fhir/Patient/{ids['a']}/$everything"
    for query, name in (("start=yesterday", "start"), ("_type=Practitioner", "_type"),
                        ("_count=0", "_count"), ("color=red", "color"),
                        ("_cursor=garbage", "_cursor")):
        response = client.get(f"{base}?{query}")
        assert response.status_code == 400, query
        assert response.json()["issue"][0]["expression"] == [name], query
    assert client.get("/fhir/Patient/nobody/$everything").status_code == 404


def test_the_capability_statement_lists_the_operation(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"name": "everything",
            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"} in (
        patient["operation"])
