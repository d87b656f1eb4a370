"""search.aliases: a parameter that is not stored is answered by the ones it unites.

Checked against the official R4 definitions: on every Observation of the official examples
and the demo data, the values the extractor finds for a combo-* parameter are exactly the
union of the values of the parameters standing for it; and a search on it finds what the
union finds.
"""

from __future__ import annotations

import gzip
import importlib
import io
import tarfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from carebridge.demo import data_dir
from carebridge.fhir import registry
from carebridge.search.aliases import ALIASES
from carebridge.search.extract import values_of
from carebridge.search.index import index_rows
from carebridge.search.params import numbering

# the module (the package re-exports a function of the same name)
extract = importlib.import_module("carebridge.search.extract")
PACKAGE = Path(__file__).parents[3] / "shared" / "fhir-r4" / "hl7.fhir.r4.examples-4.0.1.tgz"

# pid -> parameter code (index rows start with the pid)
CODE = {n: code for (_, code), n in numbering().items()}


def observations() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in sorted(data_dir().glob("*.json.gz")):
        bundle = orjson.loads(gzip.decompress(path.read_bytes()))
        found += [e["resource"] for e in bundle.get("entry", [])
                  if e["resource"]["resourceType"] == "Observation"]
    if PACKAGE.exists():  # the official examples, where ../shared is beside the repository
        with tarfile.open(PACKAGE) as archive:
            for member in archive.getmembers():
                if member.name.startswith("package/Observation-") and member.isfile():
                    extracted = archive.extractfile(member)
                    assert extracted is not None
                    found.append(orjson.loads(io.BytesIO(extracted.read()).read()))
    return found


def test_every_alias_names_parameters_of_its_type() -> None:
    for rtype, table in ALIASES.items():
        parameters = registry.search_parameters_for(rtype)
        for code, parts in table.items():
            assert code in parameters
            assert {parameters[p]["type"] for p in parts} == {parameters[code]["type"]}


def test_alias_rows_are_the_union_of_its_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    found = observations()
    assert len(found) > 100
    with_components = with_alias_rows = 0
    for resource in found:
        resource.setdefault("id", "x")
        with_components += bool(resource.get("component"))
        stored = {CODE[row[0]] for rows in index_rows(resource).values() for row in rows}
        assert not stored & set(ALIASES["Observation"])
        with monkeypatch.context() as patch:  # every parameter's rows, aliases included
            patch.setattr(extract, "_RUNS", {})
            patch.setattr(extract, "_stored_plan", lambda rtype: tuple(
                entry for entry in extract._plan_for(rtype) if entry[0] != "_id"))
            every = index_rows(resource)
        for code, parts in ALIASES["Observation"].items():
            # the values of a row (after its parameter's number): the same, whichever name
            alias = {(t, row[1:]) for t, rows in every.items() for row in rows
                     if CODE[row[0]] == code}
            union = {(t, row[1:]) for t, rows in every.items() for row in rows
                     if CODE[row[0]] in parts}
            assert alias == union, (resource["id"], code)
            with_alias_rows += bool(alias)
        assert {v for v in values_of(resource, "combo-code")} == {
            v for part in ("code", "component-code") for v in values_of(resource, part)}
    assert with_components > 10 and with_alias_rows > 100


@pytest.mark.parametrize(("url", "expected"), [
    ("Observation?combo-code=http://loinc.org|8480-6", {"bp"}),  # a component's code
    ("Observation?combo-code=http://loinc.org|85354-9", {"bp"}),  # the panel's code
    ("Observation?combo-code=http://loinc.org|8867-4", {"hr"}),
    ("Observation?combo-code:missing=true", set()),
    ("Observation?combo-value-quantity=gt100", {"bp"}),  # systolic 120 in a component
    ("Observation?combo-value-quantity=72", {"hr"}),
    ("Observation?combo-code-value-quantity=http://loinc.org|8462-4$80", {"bp"}),
    ("Observation?combo-code-value-quantity=http://loinc.org|8867-4$gt70", {"hr"}),
    ("Observation?combo-code=http://loinc.org|8867-4&_sort=combo-code", {"hr"}),
])
def test_search_on_an_alias(client: TestClient, url: str, expected: set[str]) -> None:
    loinc = "http://loinc.org"
    ucum = "http://unitsofmeasure.org"

    def quantity(value: float, unit: str) -> dict[str, Any]:
        return {"value": value, "unit": unit, "system": ucum, "code": unit}

    resources = [
        {"resourceType": "Observation", "id": "bp", "status": "final",
         "code": {"coding": [{"system": loinc, "code": "85354-9"}]},
         "component": [
             {"code": {"coding": [{"system": loinc, "code": "8480-6"}]},
              "valueQuantity": quantity(120, "mm[Hg]")},
             {"code": {"coding": [{"system": loinc, "code": "8462-4"}]},
              "valueQuantity": quantity(80, "mm[Hg]")}]},
        {"resourceType": "Observation", "id": "hr", "status": "final",
         "code": {"coding": [{"system": loinc, "code": "8867-4"}]},
         "valueQuantity": quantity(72, "/min")},
    ]
    for body in resources:
        assert client.put(f"/fhir/Observation/{body['id']}", json=body).status_code == 201
    bundle = client.get(f"/fhir/{url}").json()
    assert {e["resource"]["id"] for e in bundle.get("entry", [])
            if e["search"]["mode"] == "match"} == expected


def test_restricted_aliases_are_found_in_the_definitions() -> None:
    """R4 parameters defined as another parameter narrowed to one target type."""
    from carebridge.search.aliases import restricted

    assert restricted("Observation") == {"patient": ("subject", "Patient")}
    assert restricted("Encounter") == {"patient": ("subject", "Patient"),
                                       "practitioner": ("participant", "Practitioner")}
    assert restricted("Appointment")["location"] == ("actor", "Location")
    assert "patient" not in restricted("AllergyIntolerance")  # a plain element there
    total = sum(len(restricted(t)) for t in registry.resource_types())
    assert total == 47


def test_restricted_alias_rows_are_the_narrowed_rows_of_the_other() -> None:
    """For every Observation of the examples: no ``patient`` rows are stored, and the values
    the extractor finds for ``patient`` are exactly the ``subject`` values whose target is a
    Patient (what a search on ``patient`` reads)."""
    checked = 0
    for resource in observations():
        resource = {**resource, "id": resource.get("id") or "x",
                    "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}}
        stored = {CODE[row[0]] for row in index_rows(resource).get("idx_reference", [])}
        assert "patient" not in stored
        patient = values_of(resource, "patient")
        narrowed = [v for v in values_of(resource, "subject")
                    if getattr(v, "target_type", None) == "Patient"]
        assert patient == narrowed, resource.get("id")
        checked += bool(patient)
    assert checked > 20


def test_the_migration_drops_the_rows_of_exactly_the_restricted_aliases() -> None:
    import re

    from carebridge.search.aliases import restricted

    migrations = Path(__file__).parents[2] / "src" / "carebridge" / "storage" / "migrations"
    for dialect in ("sqlite", "postgresql"):
        sql = (migrations / dialect / "0008_narrowed_aliases.sql").read_text()
        dropped = {(rtype, code) for code, listed in re.findall(
            r"param = '(\w+)' AND resource_type IN \(([^)]*)\)", sql)
            for rtype in re.findall(r"'(\w+)'", listed)}
        assert dropped == {(rtype, code) for rtype in registry.resource_types()
                           for code in restricted(rtype)}


def test_twins_are_found_in_the_definitions() -> None:
    """Parameters with another's very expression: the one named after the element keeps
    its rows; nothing a restricted alias reads is a twin."""
    from carebridge.search.aliases import restricted, twins

    assert twins("Patient") == {"phonetic": ("name",)}
    assert twins("Practitioner") == {"phonetic": ("name",)}
    assert twins("CodeSystem") == {"system": ("url",)}
    assert twins("Coverage") == {"patient": ("beneficiary",)}
    assert twins("Observation") == {} and twins("Encounter") == {}
    for rtype in registry.resource_types():
        assert not set(twins(rtype)) & set(ALIASES.get(rtype, {}))
        assert not {stored for stored, _ in restricted(rtype).values()} & set(twins(rtype))
    assert sum(len(twins(t)) for t in registry.resource_types()) == 12


def test_a_twin_has_no_rows_and_the_values_of_the_one_it_reads() -> None:
    patient = {"resourceType": "Patient", "id": "p", "meta": {"lastUpdated":
                                                              "2024-01-01T00:00:00Z"},
               "name": [{"family": "Núñez", "given": ["Ana", "María"], "prefix": ["Dr"]},
                        {"text": "Ana Nunez"}]}
    rows = index_rows(patient)["idx_string"]
    assert {CODE[row[0]] for row in rows} >= {"name", "family", "given"}
    assert "phonetic" not in {CODE[row[0]] for row in rows}
    assert values_of(patient, "phonetic") == values_of(patient, "name")
    assert len(values_of(patient, "name")) == 5


@pytest.mark.parametrize(("query", "expected"), [
    ("phonetic=nunez", {"ana"}),
    ("phonetic=ana", {"ana"}),
    ("phonetic:exact=Bob", {"bob"}),
    ("phonetic:contains=ez", {"ana"}),
    ("phonetic:missing=true", {"nameless"}),
    ("phonetic=zzz", set()),
    ("_sort=phonetic&phonetic:missing=false", {"ana", "bob"}),
])
def test_search_on_a_twin(client: TestClient, query: str, expected: set[str]) -> None:
    for body in ({"resourceType": "Patient", "id": "ana",
                  "name": [{"family": "Núñez", "given": ["Ana"]}]},
                 {"resourceType": "Patient", "id": "bob", "name": [{"given": ["Bob"]}]},
                 {"resourceType": "Patient", "id": "nameless", "gender": "other"}):
        assert client.put(f"/fhir/Patient/{body['id']}", json=body).status_code == 201
    bundle = client.get(f"/fhir/Patient?{query}").json()
    assert {e["resource"]["id"] for e in bundle.get("entry", [])} == expected, bundle


def test_the_migration_drops_the_rows_of_exactly_the_twins() -> None:
    import re

    from carebridge.search.aliases import twins

    migrations = Path(__file__).parents[2] / "src" / "carebridge" / "storage" / "migrations"
    tables = {"string": "idx_string", "token": "idx_token", "reference": "idx_reference",
              "uri": "idx_uri"}
    for path in (migrations / "sqlite" / "0010_twin_aliases.sql",
                 migrations / "postgresql" / "0011_twin_aliases.sql"):
        dropped = {(table, rtype, code) for table, code, listed in re.findall(
            r"DELETE FROM (\w+) WHERE param = '([\w-]+)' AND resource_type IN \(([^)]*)\)",
            path.read_text()) for rtype in re.findall(r"'(\w+)'", listed)}
        assert dropped == {
            (tables[registry.search_parameters_for(rtype)[code]["type"]], rtype, code)
            for rtype in registry.resource_types() for code in twins(rtype)}
