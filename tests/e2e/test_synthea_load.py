"""Real Synthea data loads through the REST API as transactions, and nothing is lost or dangles.

The slow tests post every bundle of ``../shared/data/synthea-r4/`` (82 patients plus
``hospitalInformation.json`` and ``practitionerInformation.json``, loaded first; about 25,000
resources) to a real ``carebridge serve`` process over HTTP, on each backend, then check:

* each transaction-response: one ``201 Created`` with a ``Type/id/_history/1`` location per
  entry, in request order;
* the number of stored resources per type equals the number in the files;
* every stored resource is the file's resource with only its id, meta and references changed,
  each ``urn:uuid:`` reference becoming the ``Type/id`` the server gave its target;
* every reference inside the stored resources points at a stored resource (``#`` references
  at a contained resource) and no ``urn:uuid:`` is left anywhere;
* each patient's resources point at that patient and no other.

Search is not implemented, so the counts and the bodies are read straight from the database
(the test process and the server open the same SQLite file or PostgreSQL database).

The fast test does the same with the committed sample bundles (``carebridge.demo``) through the
in-process ASGI client, so the property is checked on a fresh clone without ``../shared``.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from starlette.testclient import TestClient
from tests.conftest import SHARED_DATA
from tests.e2e.stored import (
    current_resources,
    references,
    rewritten,
    urn_uuid_strings,
    without_server_fields,
)

from carebridge.demo import load_bundle
from carebridge.storage import Repository, open_repository
from carebridge.testing import ServerProcess

SYNTHEA = SHARED_DATA / "synthea-r4"
LOAD_FIRST = ("hospitalInformation", "practitionerInformation")
DEMO_FILES = (
    "hospitalInformation.json.gz",
    "practitionerInformation.json.gz",
    "patient-016.json.gz",
    "patient-034.json.gz",
    "patient-050.json.gz",
)
FHIR_JSON = {"content-type": "application/fhir+json", "accept": "application/fhir+json"}
LOCAL_REFERENCE = re.compile(r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})")
LOCATION = re.compile(r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})/_history/1")

Key = tuple[str, str]  # (resource type, id)


# ------------------------------------------------------------------------------ the checks


@dataclass
class Loaded:
    """One bundle as it was posted and the transaction-response the server gave."""

    name: str
    bundle: dict[str, Any]
    response: dict[str, Any]
    # fullUrl in the bundle -> "Type/id" the server assigned
    assigned: dict[str, str] = field(default_factory=dict)


def synthea_files() -> list[Path]:
    """Every bundle of the folder, the hospital and practitioner files first."""
    files = sorted(SYNTHEA.glob("*.json"))
    return sorted(files, key=lambda p: (not p.name.startswith(LOAD_FIRST), p.name))


def count_in_files(loaded: list[Loaded]) -> Counter[str]:
    return Counter(e["resource"]["resourceType"] for b in loaded for e in b.bundle["entry"])


def check_response(item: Loaded) -> None:
    """Every entry created (201) with a location; remember which id each fullUrl got."""
    entries = item.bundle["entry"]
    response = item.response
    assert response["resourceType"] == "Bundle", item.name
    assert response["type"] == "transaction-response", item.name
    assert len(response["entry"]) == len(entries), item.name
    for index, (sent, got) in enumerate(zip(entries, response["entry"], strict=True)):
        where = f"{item.name} entry {index}"
        assert got["response"]["status"] == "201 Created", (where, got["response"])
        location = LOCATION.fullmatch(got["response"].get("location", ""))
        assert location is not None, (where, got["response"])
        assert location["type"] == sent["resource"]["resourceType"] == sent["request"]["url"]
        assert got["response"]["etag"] == 'W/"1"', where
        ref = f"{location['type']}/{location['id']}"
        assert got["fullUrl"].endswith("/" + ref), where
        assert sent["fullUrl"] not in item.assigned, f"{where}: fullUrl repeated"
        item.assigned[sent["fullUrl"]] = ref
    assert len(set(item.assigned.values())) == len(entries), f"{item.name}: an id was reused"


def count_stored(repository: Repository) -> Counter[str]:
    with repository.session() as session:
        return Counter(session.count_current())


def check_reference_integrity(stored: dict[Key, dict[str, Any]]) -> int:
    """Every reference resolves to a stored resource; returns how many were checked."""
    dangling: list[str] = []
    leftover_urns: list[str] = []
    checked = 0
    for (rtype, rid), body in stored.items():
        here = f"{rtype}/{rid}"
        contained_ids = {c.get("id") for c in body.get("contained", [])}
        leftover_urns.extend(f"{here}: {urn}" for urn in urn_uuid_strings(body))
        for ref in references(body):
            checked += 1
            if ref.startswith("#"):
                if ref[1:] not in contained_ids:
                    dangling.append(f"{here} -> {ref} (no such contained resource)")
                continue
            match = LOCAL_REFERENCE.fullmatch(ref)
            if match is None or (match["type"], match["id"]) not in stored:
                dangling.append(f"{here} -> {ref}")
    assert not leftover_urns, f"{len(leftover_urns)} urn:uuid strings left: {leftover_urns[:10]}"
    assert not dangling, f"{len(dangling)} dangling references: {dangling[:10]}"
    return checked


def check_stored_content(item: Loaded, stored: dict[Key, dict[str, Any]]) -> None:
    """Each stored resource is the posted one, its references rewritten to the new ids."""
    for index, entry in enumerate(item.bundle["entry"]):
        rtype, rid = item.assigned[entry["fullUrl"]].split("/")
        body = stored.get((rtype, rid))
        assert body is not None, f"{item.name} entry {index}: {rtype}/{rid} is not stored"
        assert body["id"] == rid
        assert body["meta"]["versionId"] == "1"
        expected = without_server_fields(rewritten(entry["resource"], item.assigned))
        assert without_server_fields(body) == expected, f"{item.name} entry {index}"


def check_patient_links(item: Loaded, stored: dict[Key, dict[str, Any]]) -> None:
    """A patient bundle's resources point at its own new Patient and at no other patient."""
    patients = [e["fullUrl"] for e in item.bundle["entry"]
                if e["resource"]["resourceType"] == "Patient"]
    assert len(patients) == 1, item.name
    patient_ref = item.assigned[patients[0]]
    observations = 0
    patients_named: set[str] = set()
    for ref in item.assigned.values():
        rtype, rid = ref.split("/")
        body = stored[(rtype, rid)]
        if rtype == "Observation":
            observations += 1
            assert body["subject"]["reference"] == patient_ref, (item.name, ref)
        if rtype in ("Encounter", "Condition", "Procedure", "DiagnosticReport"):
            assert body["subject"]["reference"] == patient_ref, (item.name, ref)
        if rtype in ("Claim", "ExplanationOfBenefit", "Immunization"):
            assert body["patient"]["reference"] == patient_ref, (item.name, ref)
        patients_named.update(r for r in references(body) if r.startswith("Patient/"))
    assert observations > 0, f"{item.name} has no Observation to check"
    assert patients_named == {patient_ref}, item.name


def check_everything(loaded: list[Loaded], database_url: str, repository: Repository) -> None:
    for item in loaded:
        check_response(item)

    in_files = count_in_files(loaded)
    assert count_stored(repository) == in_files

    rows = current_resources(database_url)
    assert Counter(rtype for rtype, _ in rows) == in_files
    assert {version for version, _ in rows.values()} == {1}
    stored = {key: orjson.loads(body) for key, (_, body) in rows.items()}
    assert check_reference_integrity(stored) > 0

    for item in loaded:
        check_stored_content(item, stored)
        if not item.name.startswith(LOAD_FIRST):
            check_patient_links(item, stored)


# ------------------------------------------------------------------------------ fast: demo data


def test_sample_bundles_load_with_counts_and_references_intact(
    client: TestClient, database_url: str, repository: Repository
) -> None:
    loaded = []
    for name in DEMO_FILES:
        bundle = load_bundle(name)
        response = client.post("/fhir", content=orjson.dumps(bundle), headers=FHIR_JSON)
        assert response.status_code == 200, (name, response.text[:2000])
        loaded.append(Loaded(name, bundle, response.json()))

    check_everything(loaded, database_url, repository)
    assert sum(count_in_files(loaded).values()) == 442


# ------------------------------------------------------------------------------ slow: all Synthea


@dataclass
class LoadedServer:
    database_url: str
    loaded: list[Loaded]
    seconds: float


@pytest.fixture(scope="module")
def synthea_server(module_database_url: str) -> Iterator[LoadedServer]:
    """A real server process with all of synthea-r4 posted to it over HTTP."""
    url = module_database_url
    loaded = []
    with (
        ServerProcess(url) as server,
        httpx2.Client(timeout=httpx2.Timeout(300.0, connect=10.0)) as http,
    ):
        started = time.perf_counter()
        for path in synthea_files():
            body = path.read_bytes()
            response = http.post(server.base_url, content=body, headers=FHIR_JSON)
            assert response.status_code == 200, (path.name, response.text[:2000])
            loaded.append(Loaded(path.name, orjson.loads(body), orjson.loads(response.content)))
        seconds = time.perf_counter() - started
        yield LoadedServer(url, loaded, seconds)


@pytest.mark.slow
@pytest.mark.skipif(not SYNTHEA.is_dir(), reason=f"{SYNTHEA} is not there (CI/dev only)")
def test_all_of_synthea_loads_with_counts_and_references_intact(
    synthea_server: LoadedServer,
) -> None:
    loaded = synthea_server.loaded
    assert [item.name for item in loaded[:2]] == [
        "hospitalInformation.json", "practitionerInformation.json"]
    assert len(loaded) == len(list(SYNTHEA.glob("*.json")))

    repository = open_repository(synthea_server.database_url)
    try:
        check_everything(loaded, synthea_server.database_url, repository)
    finally:
        repository.close()
