"""End to end with a FHIR client library nobody here wrote: fhirpy against a real server.

A ``carebridge serve`` process runs per backend (SQLite in a temporary file, PostgreSQL in a
fresh database of the session's throwaway server) and fhirpy's ``SyncFHIRClient`` does every
HTTP request: create, read, update, delete, and history. fhirpy has no history API, so history
goes through its generic ``execute`` (a GET it builds, sends and decodes itself), and paging
follows the absolute ``Bundle.link`` URLs the server hands out, again through ``execute``.

Nothing here uses search (the server does not implement it yet).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

from carebridge.testing import ServerProcess


@pytest.fixture(scope="module")
def server(module_database_url: str) -> Iterator[ServerProcess]:
    url = module_database_url
    with ServerProcess(url) as process:
        yield process


class StatusLog:
    """Records the status of every HTTP response fhirpy receives (a ``requests`` hook):
    fhirpy maps both 404 and 410 to ``ResourceNotFound`` and does not keep the status."""

    def __init__(self) -> None:
        self.responses: list[tuple[str, str, int]] = []

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.responses.append((response.request.method or "", response.url, response.status_code))

    @property
    def last_status(self) -> int:
        return self.responses[-1][2]


@pytest.fixture
def status_log() -> StatusLog:
    return StatusLog()


@pytest.fixture
def fhir(server: ServerProcess, status_log: StatusLog) -> SyncFHIRClient:
    return SyncFHIRClient(
        server.base_url,
        requests_config={"timeout": 30, "hooks": {"response": [status_log]}},
    )


def _patient(family: str) -> dict[str, Any]:
    return {
        "name": [{"family": family, "given": ["Ada"]}],
        "gender": "female",
        "birthDate": "1985-12-10",
        "telecom": [{"system": "phone", "value": "+44 20 7946 0000", "use": "home"}],
    }


def _content(resource: Any) -> dict[str, Any]:
    """The client-owned part of a resource (no resourceType, id or meta), as plain dicts."""
    data = dict(resource.serialize())
    for key in ("resourceType", "id", "meta"):
        data.pop(key, None)
    return data


def _history_pages(fhir: SyncFHIRClient, path: str, count: int) -> list[Any]:
    """Every page of a history, following ``next`` links with the client."""
    pages = [fhir.execute(path, method="get", params={"_count": count})]
    while (url := _link(pages[-1], "next")) is not None:
        assert len(pages) < 100, "the next links do not end"
        pages.append(fhir.execute(url, method="get"))
    return pages


def _link(bundle: Any, relation: str) -> str | None:
    urls = [link["url"] for link in bundle.get("link", []) if link["relation"] == relation]
    assert len(urls) <= 1, f"several {relation!r} links: {urls}"
    return urls[0] if urls else None


def _versions(bundle: Any) -> list[tuple[str, str, str]]:
    """(type/id from fullUrl, version from the etag, request method) of each history entry."""
    out = []
    for entry in bundle.get("entry", []):
        ref = "/".join(entry["fullUrl"].split("/")[-2:])
        version = entry["response"]["etag"].removeprefix('W/"').removesuffix('"')
        out.append((ref, version, entry["request"]["method"]))
    return out


def test_create_assigns_id_and_version_1(fhir: SyncFHIRClient, status_log: StatusLog) -> None:
    patient = fhir.resource("Patient", **_patient("Lovelace"))
    patient.save()

    assert status_log.responses[-1][0] == "POST"
    assert status_log.last_status == 201
    assert patient.id
    assert patient["meta"]["versionId"] == "1"
    assert patient["meta"]["lastUpdated"]
    assert _content(patient) == _patient("Lovelace")


def test_read_returns_what_was_created(fhir: SyncFHIRClient) -> None:
    created = fhir.resource("Patient", **_patient("Hopper"))
    created.save()

    by_reference = fhir.reference("Patient", created.id).to_resource()
    by_get = fhir.get("Patient", created.id)

    assert by_reference.resource_type == "Patient"
    assert by_reference.id == created.id
    assert by_reference.serialize() == created.serialize()
    assert dict(by_get) == created.serialize()
    assert _content(by_reference) == _patient("Hopper")


def test_update_bumps_the_version_and_changes_content(
    fhir: SyncFHIRClient, status_log: StatusLog
) -> None:
    patient = fhir.resource("Patient", **_patient("Noether"))
    patient.save()
    first_id = patient.id

    patient["gender"] = "other"
    patient["name"] = [{"family": "Noether", "given": ["Emmy"]}]
    patient.save()

    assert status_log.responses[-1][0] == "PUT"
    assert status_log.last_status == 200
    assert patient.id == first_id
    assert patient["meta"]["versionId"] == "2"

    current = fhir.reference("Patient", first_id).to_resource()
    assert current["meta"]["versionId"] == "2"
    assert current["gender"] == "other"
    assert current["name"] == [{"family": "Noether", "given": ["Emmy"]}]
    # the first version is still there, unchanged
    first = fhir.execute(f"Patient/{first_id}/_history/1", method="get")
    assert first["meta"]["versionId"] == "1"
    assert first["gender"] == "female"
    assert first["name"] == _patient("Noether")["name"]


def test_read_after_delete_is_gone(fhir: SyncFHIRClient, status_log: StatusLog) -> None:
    patient = fhir.resource("Patient", **_patient("Turing"))
    patient.save()

    patient.delete()
    assert status_log.responses[-1][0] == "DELETE"
    assert status_log.last_status == 204

    with pytest.raises(ResourceNotFound) as gone:
        fhir.reference("Patient", patient.id).to_resource()
    assert status_log.last_status == 410
    assert '"deleted"' in str(gone.value)  # OperationOutcome.issue.code

    with pytest.raises(ResourceNotFound):
        fhir.get("Patient", patient.id)
    assert status_log.last_status == 410

    # fhirpy raises the same exception for an id that never existed; the status tells them apart
    with pytest.raises(ResourceNotFound):
        fhir.get("Patient", str(uuid.uuid4()))
    assert status_log.last_status == 404


def test_instance_history_lists_create_update_delete_newest_first(
    fhir: SyncFHIRClient,
) -> None:
    patient = fhir.resource("Patient", **_patient("Hamilton"))
    patient.save()
    patient["gender"] = "unknown"
    patient.save()
    patient.delete()

    history = fhir.execute(f"Patient/{patient.id}/_history", method="get")

    assert history["resourceType"] == "Bundle"
    assert history["type"] == "history"
    assert history["total"] == 3
    ref = f"Patient/{patient.id}"
    assert _versions(history) == [(ref, "3", "DELETE"), (ref, "2", "PUT"), (ref, "1", "POST")]
    deleted, updated, created = history["entry"]
    assert "resource" not in deleted
    assert updated["resource"]["gender"] == "unknown"
    assert updated["resource"]["meta"]["versionId"] == "2"
    assert created["resource"]["gender"] == "female"
    assert created["resource"]["meta"]["versionId"] == "1"
    assert [e["response"]["status"][:3] for e in history["entry"]] == ["204", "200", "201"]


def test_type_history_pages_through_every_version_once(fhir: SyncFHIRClient) -> None:
    # A type no other test in this module writes, so the server's history of it is ours alone.
    created = []
    for n in range(25):
        device = fhir.resource("Device", status="active", serialNumber=f"SN-{n:03d}")
        device.save()
        created.append(f"Device/{device.id}")

    pages = _history_pages(fhir, "Device/_history", count=10)

    seen = [v for page in pages for v in _versions(page)]
    assert [len(page.get("entry", [])) for page in pages] == [10, 10, 5]
    assert len(seen) == len(set(seen)) == 25
    assert {(ref, version) for ref, version, _ in seen} == {(ref, "1") for ref in created}
    assert [ref for ref, _, _ in seen] == created[::-1]  # newest first, across pages
    for page in pages:
        assert page["type"] == "history"
        assert page["total"] == 25
    for page in pages:
        for entry in page["entry"]:
            assert entry["resource"]["serialNumber"].startswith("SN-")

    # previous from page 2 gives page 1 back, and its next leads to page 2 again
    previous = _link(pages[1], "previous")
    assert previous is not None
    assert _link(pages[0], "previous") is None
    page_one = fhir.execute(previous, method="get")
    assert _versions(page_one) == _versions(pages[0])
    assert [e["resource"] for e in page_one["entry"]] == [e["resource"] for e in pages[0]["entry"]]
    next_of_one = _link(page_one, "next")
    assert next_of_one is not None
    assert _versions(fhir.execute(next_of_one, method="get")) == _versions(pages[1])


def test_history_paging_sees_updates_as_new_versions(fhir: SyncFHIRClient) -> None:
    """Type history holds versions, not resources: updates show up, each version once."""
    ids = []
    for n in range(4):
        item = fhir.resource("Medication", status="active", code={"text": f"drug {n}"})
        item.save()
        ids.append(item.id)
        item["status"] = "inactive"
        item.save()
    fhir.delete("Medication", ids[0])

    pages = _history_pages(fhir, "Medication/_history", count=3)

    seen = [v for page in pages for v in _versions(page)]
    # A full last page carries a next link; it may lead to an empty page (keyset paging).
    assert [len(page["entry"]) for page in pages] in ([3, 3, 3], [3, 3, 3, 0])
    assert len(seen) == len(set(seen)) == 9
    assert pages[0]["total"] == 9
    assert seen[0] == (f"Medication/{ids[0]}", "3", "DELETE")
    expected = {(f"Medication/{i}", "1", "POST") for i in ids}
    expected |= {(f"Medication/{i}", "2", "PUT") for i in ids}
    expected.add((f"Medication/{ids[0]}", "3", "DELETE"))
    assert set(seen) == expected


def test_server_links_point_at_the_base_the_client_uses(
    fhir: SyncFHIRClient, server: ServerProcess
) -> None:
    """fhirpy refuses absolute URLs outside its base URL, so paging relies on this."""
    fhir.resource("Patient", **_patient("Curie")).save()
    history = fhir.execute("Patient/_history", method="get", params={"_count": 1})
    for link in history["link"]:
        assert link["url"].startswith(server.base_url + "/Patient/_history?")
