"""FHIR REST interactions (http://hl7.org/fhir/R4/http.html), on every backend."""

from __future__ import annotations

import threading
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.conftest import backend_of

from carebridge.fhir.subsetting import SUBSETTED

PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
    "active": True,
    "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
    "gender": "male",
    "birthDate": "1974-12-25",
    "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">P</div>"},
}
JSON = {"content-type": "application/fhir+json"}


def create(client: TestClient, resource: dict[str, Any] = PATIENT) -> dict[str, Any]:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=JSON)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def test_create_assigns_id_version_and_headers(client: TestClient) -> None:
    body = {**PATIENT, "id": "client-chosen"}
    response = client.post("/fhir/Patient", json=body, headers=JSON)
    assert response.status_code == 201
    created = response.json()
    assert created["id"] != "client-chosen"  # R4: the server ignores an id given to create
    assert created["meta"]["versionId"] == "1"
    assert created["name"] == PATIENT["name"]
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"].endswith(f"/fhir/Patient/{created['id']}/_history/1")
    modified = parsedate_to_datetime(response.headers["last-modified"])
    assert abs(modified.timestamp() - _instant(created["meta"]["lastUpdated"])) < 1


def test_reads_by_id_skip_the_worker_thread_on_sqlite_only(
        client: TestClient, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import carebridge.api.fhir_routes as routes

    handed: list[str] = []
    hand_over = routes.run_in_threadpool

    async def recording(func: Any, *args: Any) -> Any:
        handed.append(getattr(func, "__name__", "?"))
        return await hand_over(func, *args)

    monkeypatch.setattr(routes, "run_in_threadpool", recording)
    created = create(client)
    handed.clear()
    read = client.get(f"/fhir/Patient/{created['id']}")
    vread = client.get(f"/fhir/Patient/{created['id']}/_history/1")
    missing = client.get("/fhir/Patient/no-such-patient")
    found = client.get("/fhir/Patient?family=Chalmers")
    assert read.json() == vread.json() == created
    assert missing.status_code == 404  # errors raised on the loop answer as before
    assert found.json()["total"] == 1
    if backend_of(database_url) == "sqlite":
        assert handed == ["<lambda>"]  # the search only: reads ran on the event loop
    else:  # PostgreSQL reads wait on the network: the loop serves others meanwhile
        assert handed == ["read", "vread", "read", "<lambda>"]


def _instant(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_read_and_vread(client: TestClient) -> None:
    created = create(client)
    pid = created["id"]
    read = client.get(f"/fhir/Patient/{pid}")
    assert read.status_code == 200
    assert read.json() == created
    assert read.headers["etag"] == 'W/"1"'
    updated = client.put(f"/fhir/Patient/{pid}", json={**created, "active": False}, headers=JSON)
    assert updated.status_code == 200
    assert updated.json()["meta"]["versionId"] == "2"
    v1 = client.get(f"/fhir/Patient/{pid}/_history/1")
    assert v1.status_code == 200 and v1.json()["active"] is True
    v2 = client.get(f"/fhir/Patient/{pid}/_history/2")
    assert v2.json()["active"] is False and v2.headers["etag"] == 'W/"2"'
    assert client.get(f"/fhir/Patient/{pid}/_history/3").status_code == 404
    assert client.get(f"/fhir/Patient/{pid}/_history/x").status_code == 404
    assert client.get("/fhir/Patient/nobody").status_code == 404


def test_conditional_read(client: TestClient) -> None:
    created = create(client)
    url = f"/fhir/Patient/{created['id']}"
    first = client.get(url)
    same = client.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert same.status_code == 304 and same.content == b""
    assert same.headers["etag"] == 'W/"1"'
    assert client.get(url, headers={"If-None-Match": 'W/"7"'}).status_code == 200
    modified = first.headers["last-modified"]
    assert client.get(url, headers={"If-Modified-Since": modified}).status_code == 304
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert client.get(url, headers={"If-Modified-Since": old}).status_code == 200
    client.put(url, json={**created, "active": False}, headers=JSON)
    changed = client.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert changed.status_code == 200 and changed.json()["active"] is False


def test_update_as_create_with_client_id(client: TestClient) -> None:
    response = client.put("/fhir/Patient/pat-1", json={**PATIENT, "id": "pat-1"}, headers=JSON)
    assert response.status_code == 201
    assert response.headers["location"].endswith("/fhir/Patient/pat-1/_history/1")
    again = client.put("/fhir/Patient/pat-1", json={**PATIENT, "id": "pat-1", "active": False},
                       headers=JSON)
    assert again.status_code == 200 and again.json()["meta"]["versionId"] == "2"


def test_update_with_same_content_makes_no_new_version(client: TestClient) -> None:
    created = create(client)
    same = client.put(f"/fhir/Patient/{created['id']}", json=created, headers=JSON)
    assert same.status_code == 200
    assert same.json()["meta"]["versionId"] == "1"


def test_update_keeps_client_meta_but_owns_version(client: TestClient) -> None:
    created = create(client)
    meta = {"versionId": "99", "lastUpdated": "2000-01-01T00:00:00Z",
            "profile": ["http://example.org/p"], "tag": [{"code": "t"}]}
    body = {**created, "meta": meta}
    updated = client.put(f"/fhir/Patient/{created['id']}", json=body, headers=JSON).json()
    assert updated["meta"]["versionId"] == "2"
    assert updated["meta"]["lastUpdated"] != "2000-01-01T00:00:00Z"
    assert updated["meta"]["profile"] == ["http://example.org/p"]
    assert updated["meta"]["tag"] == [{"code": "t"}]


def test_if_match_stale_version_is_412_and_nothing_is_lost(client: TestClient) -> None:
    created = create(client)
    pid = created["id"]
    first = client.put(f"/fhir/Patient/{pid}", json={**created, "gender": "female"},
                       headers={**JSON, "If-Match": 'W/"1"'})
    assert first.status_code == 200
    stale = client.put(f"/fhir/Patient/{pid}", json={**created, "gender": "other"},
                       headers={**JSON, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/fhir/Patient/{pid}").json()["gender"] == "female"
    bad = client.put(f"/fhir/Patient/{pid}", json=created, headers={**JSON, "If-Match": "zz"})
    assert bad.status_code == 400


def test_concurrent_version_aware_updates_exactly_one_wins(client: TestClient) -> None:
    created = create(client)
    pid = created["id"]
    statuses: list[int] = []
    lock = threading.Lock()

    def attempt(gender: str) -> None:
        response = client.put(f"/fhir/Patient/{pid}", json={**created, "gender": gender},
                              headers={**JSON, "If-Match": 'W/"1"'})
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=attempt, args=(g,))
               for g in ("female", "other", "unknown", "female", "other", "unknown")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 412, 412, 412, 412, 412]
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "2"


def test_delete_keeps_history_and_read_is_410(client: TestClient) -> None:
    created = create(client)
    pid = created["id"]
    deleted = client.delete(f"/fhir/Patient/{pid}")
    assert deleted.status_code == 204
    assert deleted.headers["etag"] == 'W/"2"'
    gone = client.get(f"/fhir/Patient/{pid}")
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
    assert client.get(f"/fhir/Patient/{pid}/_history/2").status_code == 410
    again = client.delete(f"/fhir/Patient/{pid}")  # idempotent, no new version
    assert again.status_code == 204
    history = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]
    assert client.delete("/fhir/Patient/never-was").status_code == 204
    revived = client.put(f"/fhir/Patient/{pid}", json={**created}, headers=JSON)
    assert revived.status_code == 201 and revived.json()["meta"]["versionId"] == "3"


def test_json_patch(client: TestClient) -> None:
    created = create(client)
    pid = created["id"]
    ops = (b'[{"op":"replace","path":"/gender","value":"female"},'
           b'{"op":"add","path":"/name/0/given/-","value":"Jo"}]')
    headers = {"content-type": "application/json-patch+json"}
    patched = client.patch(f"/fhir/Patient/{pid}", content=ops, headers=headers)
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["gender"] == "female"
    assert body["name"][0]["given"] == ["Peter", "James", "Jo"]
    assert body["meta"]["versionId"] == "2"
    history = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert history["entry"][0]["request"]["method"] == "PATCH"
    failing = client.patch(f"/fhir/Patient/{pid}", headers=headers,
                           content=b'[{"op":"test","path":"/gender","value":"male"}]')
    assert failing.status_code == 422
    change_id = client.patch(f"/fhir/Patient/{pid}", headers=headers,
                             content=b'[{"op":"replace","path":"/id","value":"x"}]')
    assert change_id.status_code == 422
    unknown = client.patch(f"/fhir/Patient/{pid}", headers=headers,
                           content=b'[{"op":"add","path":"/colour","value":"x"}]')
    assert unknown.status_code == 400
    stale = client.patch(f"/fhir/Patient/{pid}", content=ops,
                         headers={**headers, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    wrong_type = client.patch(f"/fhir/Patient/{pid}", content=ops, headers=JSON)
    assert wrong_type.status_code == 415
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "2"
    assert client.patch("/fhir/Patient/nobody", content=ops, headers=headers).status_code == 404


@pytest.mark.parametrize("preference", ["minimal", "representation", "OperationOutcome"])
def test_prefer_return(client: TestClient, preference: str) -> None:
    response = client.post("/fhir/Patient", json=PATIENT,
                           headers={**JSON, "Prefer": f"return={preference}"})
    assert response.status_code == 201
    assert response.headers["location"]
    if preference == "minimal":
        assert response.content == b""
    elif preference == "representation":
        assert response.json()["resourceType"] == "Patient"
    else:
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["severity"] == "information"


def test_pretty_summary_and_elements(client: TestClient) -> None:
    created = create(client)
    url = f"/fhir/Patient/{created['id']}"
    pretty = client.get(url, params={"_pretty": "true"})
    assert pretty.text.startswith('{\n  "resourceType"')
    assert pretty.json() == created
    compact = client.get(url)
    assert "\n" not in compact.text
    summary = client.get(url, params={"_summary": "true"}).json()
    assert "text" not in summary  # Patient.text is not a summary element
    assert summary["name"] == PATIENT["name"] and summary["birthDate"] == "1974-12-25"
    assert SUBSETTED in summary["meta"]["tag"]
    text = client.get(url, params={"_summary": "text"}).json()
    assert set(text) == {"resourceType", "id", "meta", "text"}
    data = client.get(url, params={"_summary": "data"}).json()
    assert "text" not in data and "identifier" in data
    elements = client.get(url, params={"_elements": "gender,birthDate"}).json()
    assert set(elements) == {"resourceType", "id", "meta", "gender", "birthDate"}
    assert SUBSETTED in elements["meta"]["tag"]
    assert client.get(url, params={"_summary": "maybe"}).status_code == 400
    assert client.get(url, params={"_summary": "count"}).status_code == 400


def test_elements_keeps_choice_by_base_name(client: TestClient) -> None:
    observation = {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 72, "unit": "/min"}, "note": [{"text": "resting"}],
    }
    created = create(client, observation)
    got = client.get(f"/fhir/Observation/{created['id']}", params={"_elements": "value"}).json()
    assert got["valueQuantity"]["value"] == 72
    assert "note" not in got
    assert got["status"] == "final" and "code" in got  # mandatory elements stay


def test_history_levels_since_and_paging(client: TestClient) -> None:
    ids = [create(client)["id"] for _ in range(5)]
    obs = create(client, {"resourceType": "Observation", "status": "final",
                          "code": {"text": "x"}})
    client.delete(f"/fhir/Patient/{ids[0]}")
    type_history = client.get("/fhir/Patient/_history").json()
    assert type_history["type"] == "history" and type_history["total"] == 6
    assert type_history["entry"][0]["request"] == {"method": "DELETE",
                                                   "url": f"Patient/{ids[0]}"}
    assert type_history["entry"][-1]["resource"]["id"] == ids[0]
    system = client.get("/fhir/_history").json()
    assert system["total"] == 7
    assert {e["fullUrl"].split("/fhir/")[1] for e in system["entry"]} >= {
        f"Observation/{obs['id']}"}
    # Paging: 3 per page, follow next to the end, then go back.
    seen: list[str] = []
    url: str | None = "/fhir/Patient/_history?_count=3"
    pages = []
    while url:
        page = client.get(url).json()
        pages.append(page)
        seen += [f"{e['fullUrl']}|{e['response']['etag']}" for e in page["entry"]]
        url = next((lnk["url"] for lnk in page["link"] if lnk["relation"] == "next"), None)
    assert len(seen) == 6 and len(set(seen)) == 6
    assert len(pages) == 2  # no link leads to an empty page
    assert not any(lnk["relation"] == "previous" for lnk in pages[0]["link"])
    previous = next(lnk["url"] for lnk in pages[1]["link"] if lnk["relation"] == "previous")
    assert client.get(previous).json()["entry"] == pages[0]["entry"]
    # _since: only what changed at or after the instant.
    since = type_history["entry"][0]["response"]["lastModified"]
    recent = client.get("/fhir/Patient/_history", params={"_since": since}).json()
    assert [e["request"]["method"] for e in recent["entry"]] == ["DELETE"]
    assert client.get("/fhir/Patient/_history", params={"_since": "not-a-date"}).status_code == 400
    assert client.get("/fhir/Patient/_history", params={"_count": "-1"}).status_code == 400
    assert client.get("/fhir/Patient/_history", params={"_cursor": "x"}).status_code == 400
    assert client.get("/fhir/Patient/unknown/_history").status_code == 404


def test_capability_statement_tells_the_truth(client: TestClient) -> None:
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["format"] == ["application/fhir+json", "json"]
    rest = statement["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {
        "transaction", "batch", "search-system", "history-system"}
    assert len(rest["resource"]) == 146
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    codes = {i["code"] for i in patient["interaction"]}
    assert {"read", "vread", "update", "patch", "delete", "create", "history-instance",
            "search-type"} <= codes
    assert patient["conditionalCreate"] is True
    assert patient["conditionalDelete"] == "single"
    params = {p["name"]: p["type"] for p in patient["searchParam"]}
    assert params["birthdate"] == "date" and params["identifier"] == "token"
    assert "_text" not in params and "_content" not in params  # not searchable: not claimed
    assert "Observation:subject" in patient["searchRevInclude"]
    location = next(r for r in rest["resource"] if r["type"] == "Location")
    assert "near" not in {p["name"] for p in location["searchParam"]}
