"""Synthea bundles with conditional references load over HTTP, and every reference resolves.

``../shared/data/synthea-r4-conditional/`` (google/fhir-data-pipes sample data) holds:

* two **batch** bundles that create the shared targets: ``hospitalInformation.json``
  (1191 Organizations + 1191 Locations) and ``practitionerInformation.json`` (1191
  Practitioners + 1191 PractitionerRoles), 2382 entries each. Every Organization, Location and
  Practitioner entry is a ``POST`` with ``ifNoneExist: identifier=system|value``; the
  PractitionerRole entries are plain ``POST``s without ``ifNoneExist`` (re-posting them would
  rightly create them again), and point at their Practitioner, Organization and Location by
  logical identifier only (no ``reference``);
* six patient **transaction** bundles whose resources point at each other by ``urn:uuid:``
  and at the shared targets by conditional reference (``Practitioner?identifier=...``,
  ``Organization?identifier=...``, ``Location?identifier=...``), which the server resolves
  by search inside the transaction.

A real ``carebridge serve`` process per backend (SQLite file, fresh PostgreSQL database) gets:
the two batch bundles, then the six transactions, then the batch entries that carry
``ifNoneExist`` once more (which must find every target and create nothing). The tests then
check each response, the counts per type (``Session.count_current()`` and the ``resource``
table), that every stored resource is the file's resource with only its id, meta and
references changed, that each conditional reference became the ``Type/id`` of the resource the
batch created for that identifier, and that no ``urn:uuid:`` or ``Type?criteria`` reference is
left anywhere.

Slow (about 15 s on SQLite and 50 s on PostgreSQL here; on PostgreSQL nearly all of it is the
batch bundles, one database transaction, lock and ``ifNoneExist`` search per entry); skipped
when the folder is absent.
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
from tests.conftest import SHARED_DATA, backend_of
from tests.e2e.stored import (
    current_resources,
    references,
    rewritten,
    urn_uuid_strings,
    without_server_fields,
)

from carebridge.storage import open_repository
from carebridge.testing import ServerProcess

CONDITIONAL = SHARED_DATA / "synthea-r4-conditional"
BATCH_FILES = ("hospitalInformation.json", "practitionerInformation.json")
FHIR_JSON = {"content-type": "application/fhir+json", "accept": "application/fhir+json"}
LOCAL_REFERENCE = re.compile(r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})")
CONDITIONAL_REFERENCE = re.compile(r"[A-Z][A-Za-z]+\?.*")
LOCATION = re.compile(r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})/_history/1")

Key = tuple[str, str]  # (resource type, id)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CONDITIONAL.is_dir(),
                       reason=f"{CONDITIONAL} is not there (CI/dev only)"),
]


def patient_files() -> list[Path]:
    return sorted(CONDITIONAL.glob("patient-*.json"))


# ------------------------------------------------------------------------------ loading


@dataclass
class Posted:
    """One bundle as posted, the response, and how long the POST took."""

    name: str
    bundle: dict[str, Any]
    status: int
    response: dict[str, Any]
    seconds: float

    @property
    def entries(self) -> list[dict[str, Any]]:
        return list(self.bundle["entry"])


@dataclass
class LoadedServer:
    backend: str
    database_url: str
    batches: list[Posted]
    transactions: list[Posted]
    reloads: list[Posted]
    counts_before_reload: Counter[str]
    counts_after_reload: Counter[str]
    # "Type?criteria" -> "Type/id" of what the first batch load created (or found)
    by_criteria: dict[str, str] = field(default_factory=dict)


def post(http: httpx2.Client, url: str, name: str, bundle: dict[str, Any]) -> Posted:
    body = orjson.dumps(bundle)
    started = time.perf_counter()
    response = http.post(url, content=body, headers=FHIR_JSON)
    seconds = time.perf_counter() - started
    return Posted(name, bundle, response.status_code, orjson.loads(response.content), seconds)


def count_stored(database_url: str) -> Counter[str]:
    repository = open_repository(database_url)
    try:
        with repository.session() as session:
            return Counter(session.count_current())
    finally:
        repository.close()


def with_if_none_exist(bundle: dict[str, Any]) -> dict[str, Any]:
    """The batch again, keeping only the entries that carry ``ifNoneExist``."""
    entries = [e for e in bundle["entry"] if e["request"].get("ifNoneExist")]
    return {**bundle, "entry": entries}


@pytest.fixture(scope="module")
def loaded(module_database_url: str) -> Iterator[LoadedServer]:
    url = module_database_url
    batch_bundles = {name: orjson.loads((CONDITIONAL / name).read_bytes())
                     for name in BATCH_FILES}
    with (
        ServerProcess(url) as server,
        httpx2.Client(timeout=httpx2.Timeout(600.0, connect=10.0)) as http,
    ):
        batches = [post(http, server.base_url, name, bundle)
                   for name, bundle in batch_bundles.items()]
        transactions = [post(http, server.base_url, path.name, orjson.loads(path.read_bytes()))
                        for path in patient_files()]
        before = count_stored(url)
        reloads = [post(http, server.base_url, name, with_if_none_exist(bundle))
                   for name, bundle in batch_bundles.items()]
        after = count_stored(url)
        yield LoadedServer(backend_of(url), url, batches, transactions, reloads, before, after)


# ------------------------------------------------------------------------------ helpers


def location_of(entry_response: dict[str, Any], where: str) -> str:
    """``Type/id`` from a response entry's ``Type/id/_history/1`` location."""
    match = LOCATION.fullmatch(entry_response["response"].get("location", ""))
    assert match is not None, (where, entry_response["response"])
    return f"{match['type']}/{match['id']}"


def criteria_of(entry: dict[str, Any]) -> str | None:
    """``Type?criteria`` of a conditional create, as a conditional reference spells it."""
    request = entry["request"]
    criteria = request.get("ifNoneExist")
    return f"{request['url']}?{criteria}" if criteria else None


def expected_counts(loaded: LoadedServer) -> Counter[str]:
    """What the files hold: one resource per distinct ``ifNoneExist`` criteria, one per entry
    without it, one per transaction entry."""
    counts: Counter[str] = Counter()
    distinct: set[str] = set()
    for posted in loaded.batches:
        for entry in posted.entries:
            criteria = criteria_of(entry)
            if criteria is None or criteria not in distinct:
                counts[entry["resource"]["resourceType"]] += 1
            if criteria is not None:
                distinct.add(criteria)
    for posted in loaded.transactions:
        counts.update(e["resource"]["resourceType"] for e in posted.entries)
    return counts


def assigned_by_batches(loaded: LoadedServer) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``Type?criteria`` -> ``Type/id``, and (file entry key, ``Type/id``) for every entry."""
    by_criteria: dict[str, str] = {}
    per_entry: list[tuple[str, str]] = []
    for posted in loaded.batches:
        for index, (sent, got) in enumerate(
                zip(posted.entries, posted.response["entry"], strict=True)):
            ref = location_of(got, f"{posted.name} entry {index}")
            criteria = criteria_of(sent)
            if criteria is not None:
                assert by_criteria.setdefault(criteria, ref) == ref, (posted.name, index)
            per_entry.append((f"{posted.name}#{index}", ref))
    return by_criteria, per_entry


# ------------------------------------------------------------------------------ the tests


def test_load_times(loaded: LoadedServer) -> None:
    """Not a property: prints how long each POST took (``pytest -s`` shows it)."""
    lines = [f"synthea-r4-conditional on {loaded.backend}:"]
    total = 0.0
    for label, group in (("batch", loaded.batches), ("transaction", loaded.transactions),
                         ("batch again", loaded.reloads)):
        for posted in group:
            total += posted.seconds
            lines.append(f"  {label:12} {posted.name:30} {len(posted.entries):5} entries"
                         f" {posted.seconds:7.2f} s")
    lines.append(f"  total {total:.1f} s")
    print("\n" + "\n".join(lines))
    assert loaded.batches and loaded.transactions


def test_batch_bundles_create_each_target_once(loaded: LoadedServer) -> None:
    assert [p.name for p in loaded.batches] == list(BATCH_FILES)
    seen: set[str] = set()
    for posted in loaded.batches:
        assert posted.status == 200, (posted.name, posted.response)
        assert posted.response["type"] == "batch-response"
        assert len(posted.response["entry"]) == len(posted.entries) == 2382
        for index, (sent, got) in enumerate(
                zip(posted.entries, posted.response["entry"], strict=True)):
            where = f"{posted.name} entry {index}"
            status = got["response"]["status"]
            assert "outcome" not in got["response"], (where, got["response"])
            criteria = criteria_of(sent)
            # the first entry with given criteria creates, a repeat finds it
            expected = "200 OK" if criteria in seen else "201 Created"
            assert status == expected, (where, got["response"])
            if criteria is not None:
                seen.add(criteria)
            ref = location_of(got, where)
            assert ref.split("/")[0] == sent["request"]["url"] == sent["resource"][
                "resourceType"], where
            assert got["fullUrl"].endswith("/" + ref), where
    by_criteria, per_entry = assigned_by_batches(loaded)
    assert len(by_criteria) == len(seen) == 3573  # Organization, Location, Practitioner
    created = {ref for _, ref in per_entry}
    expected = expected_counts(loaded)
    assert Counter(ref.split("/")[0] for ref in created) == {
        t: expected[t] for t in ("Organization", "Location", "Practitioner", "PractitionerRole")}


def test_patient_transactions_create_every_entry(loaded: LoadedServer) -> None:
    names = [p.name for p in loaded.transactions]
    assert names == [p.name for p in patient_files()]
    assert len(names) == 6
    for posted in loaded.transactions:
        assert posted.status == 200, (posted.name, posted.response)
        response = posted.response
        assert response["type"] == "transaction-response", posted.name
        assert len(response["entry"]) == len(posted.entries), posted.name
        refs = set()
        for index, (sent, got) in enumerate(zip(posted.entries, response["entry"], strict=True)):
            where = f"{posted.name} entry {index}"
            assert got["response"]["status"] == "201 Created", (where, got["response"])
            ref = location_of(got, where)
            assert ref.split("/")[0] == sent["resource"]["resourceType"], where
            refs.add(ref)
        assert len(refs) == len(posted.entries), f"{posted.name}: an id was reused"


def test_loading_the_batches_again_creates_nothing(loaded: LoadedServer) -> None:
    by_criteria, _ = assigned_by_batches(loaded)
    for posted in loaded.reloads:
        assert posted.status == 200, (posted.name, posted.response)
        assert len(posted.response["entry"]) == len(posted.entries) > 0
        for index, (sent, got) in enumerate(
                zip(posted.entries, posted.response["entry"], strict=True)):
            where = f"{posted.name} (again) entry {index}"
            assert got["response"]["status"] == "200 OK", (where, got["response"])
            criteria = criteria_of(sent)
            assert criteria is not None
            assert location_of(got, where) == by_criteria[criteria], where
    assert [len(p.entries) for p in loaded.reloads] == [2382, 1191]
    assert loaded.counts_after_reload == loaded.counts_before_reload


def test_counts_per_type_match_the_files(loaded: LoadedServer) -> None:
    expected = expected_counts(loaded)
    assert expected["Organization"] == expected["Location"] == 1191
    assert expected["Practitioner"] == expected["PractitionerRole"] == 1191
    assert loaded.counts_after_reload == expected
    rows = current_resources(loaded.database_url)
    assert Counter(rtype for rtype, _ in rows) == expected
    assert {version for version, _ in rows.values()} == {1}


def test_every_reference_resolves(loaded: LoadedServer) -> None:
    stored = {key: orjson.loads(body)
              for key, (_, body) in current_resources(loaded.database_url).items()}
    dangling: list[str] = []
    conditional_left: list[str] = []
    urns_left: list[str] = []
    checked: Counter[str] = Counter()
    for (rtype, rid), body in stored.items():
        here = f"{rtype}/{rid}"
        assert body["id"] == rid and body["resourceType"] == rtype, here
        contained = {c.get("id") for c in body.get("contained", [])}
        urns_left.extend(f"{here}: {urn}" for urn in urn_uuid_strings(body))
        for ref in references(body):
            if ref.startswith("#"):
                checked["contained"] += 1
                if ref[1:] not in contained:
                    dangling.append(f"{here} -> {ref} (no such contained resource)")
                continue
            if CONDITIONAL_REFERENCE.fullmatch(ref) or "?" in ref:
                conditional_left.append(f"{here} -> {ref}")
                continue
            match = LOCAL_REFERENCE.fullmatch(ref)
            if match is None or (match["type"], match["id"]) not in stored:
                dangling.append(f"{here} -> {ref}")
            else:
                checked[match["type"]] += 1
    assert not urns_left, f"{len(urns_left)} urn:uuid strings left: {urns_left[:10]}"
    assert not conditional_left, (
        f"{len(conditional_left)} conditional references left: {conditional_left[:10]}")
    assert not dangling, f"{len(dangling)} dangling references: {dangling[:10]}"
    # the shared targets are referenced, not just the patients' own resources
    for target in ("Patient", "Encounter", "Practitioner", "Organization", "Location"):
        assert checked[target] > 0, (target, checked)


def test_stored_resources_are_the_files_with_references_resolved(
    loaded: LoadedServer,
) -> None:
    """Each stored resource is the posted one with its ``urn:uuid:`` references replaced by the
    ids of this bundle's entries and each conditional reference by the id of the resource the
    batch load created for those criteria."""
    stored = {key: orjson.loads(body)
              for key, (_, body) in current_resources(loaded.database_url).items()}
    by_criteria, per_entry = assigned_by_batches(loaded)
    batch_refs = iter(per_entry)
    for posted in loaded.batches:
        for index, entry in enumerate(posted.entries):
            key, ref = next(batch_refs)
            assert key == f"{posted.name}#{index}"
            rtype, rid = ref.split("/")
            body = stored[(rtype, rid)]
            assert without_server_fields(body) == without_server_fields(entry["resource"]), key

    conditional_seen: Counter[str] = Counter()
    for posted in loaded.transactions:
        assigned = {
            sent["fullUrl"]: location_of(got, f"{posted.name} entry {index}")
            for index, (sent, got) in enumerate(
                zip(posted.entries, posted.response["entry"], strict=True))
        }
        patient_refs = [ref for ref in assigned.values() if ref.startswith("Patient/")]
        assert len(patient_refs) == 1, posted.name
        for index, entry in enumerate(posted.entries):
            where = f"{posted.name} entry {index}"
            for ref in references(entry["resource"]):
                if CONDITIONAL_REFERENCE.fullmatch(ref):
                    assert ref in by_criteria, f"{where}: {ref} names no batch-created target"
                    conditional_seen[ref.split("?")[0]] += 1
            rtype, rid = assigned[entry["fullUrl"]].split("/")
            body = stored[(rtype, rid)]
            expected = rewritten(entry["resource"], {**assigned, **by_criteria})
            assert without_server_fields(body) == without_server_fields(expected), where
            # every Patient reference of a patient bundle is to its own Patient
            assert {r for r in references(body) if r.startswith("Patient/")} <= set(
                patient_refs), where
    assert set(conditional_seen) == {"Practitioner", "Organization", "Location"}
