"""Parameter numbers (search.params) and the migration that keyed the index by integers:
the numbers the code uses are the ones the database's ``search_param`` table holds, and a
database written in the old layout (rows keyed by type, id and parameter code) is searched
the same after the migration (both backends)."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import pytest
from tests.conftest import backend_of

from carebridge.fhir import registry
from carebridge.search.params import code_range, numbering, pid, pids
from carebridge.security.policy import SYSTEM
from carebridge.services import ResourceService
from carebridge.services.search import SearchService
from carebridge.storage import open_repository
from carebridge.storage.migrations import migrations_for, sql_statements

KEYED = {"sqlite": 11, "postgresql": 12}  # the migration that keyed the index


def test_numbers_cover_every_pair_and_group_codes() -> None:
    pairs = numbering()
    assert len(pairs) == sum(len(registry.search_parameters_for(t))
                             for t in registry.resource_types())
    assert sorted(pairs.values()) == list(range(1, len(pairs) + 1))
    low, high = code_range("_lastUpdated")
    assert high - low + 1 == len(registry.resource_types())
    assert pid("Observation", "code") != pid("Condition", "code")
    assert pids("code", ("Observation", "Patient")) == [pid("Observation", "code")]


def test_the_database_holds_the_same_numbers(repository: Any) -> None:
    with repository.session() as session:
        rows = session.query("SELECT pid, resource_type, code FROM search_param", ())
    assert {(str(t), str(c)): int(n) for n, t, c in rows} == numbering()


def _old_schema(url: str, dialect: str) -> None:
    """The schema as it was before the keyed index (migrations 1..KEYED-1)."""
    earlier = [m for m in migrations_for(dialect) if m.version < KEYED[dialect]]
    record = ("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
              " name TEXT NOT NULL, applied_at TEXT NOT NULL)")
    if dialect == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.execute(record)
        for m in earlier:
            for statement in sql_statements(m.sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 'x')", (m.version, m.name))
        conn.commit()
        conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute(record.replace("applied_at TEXT", "applied_at TIMESTAMPTZ"))
            for m in earlier:
                for statement in sql_statements(m.sql):
                    pg.execute(statement.encode())
                pg.execute("INSERT INTO schema_migrations VALUES (%s, %s, now())",
                           (m.version, m.name))


def _run(url: str, dialect: str, sql: str, rows: list[tuple[Any, ...]]) -> None:
    if dialect == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.executemany(sql, rows)
        conn.commit()
        conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as pg, pg.cursor() as cur:
            cur.executemany(sql.replace("?", "%s").encode(), rows)


def test_rows_of_the_old_layout_are_converted(database_url: str) -> None:
    dialect = backend_of(database_url)
    _old_schema(database_url, dialect)
    when = "2024-01-01T00:00:00.000000Z"
    patient = b'{"resourceType":"Patient","id":"p1","name":[{"family":"Smith"}]}'
    obs = b'{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}'
    _run(database_url, dialect, "INSERT INTO resource (resource_type, id, version,"
         " last_updated, deleted, body) VALUES (?, ?, 1, ?, ?, ?)",
         [("Patient", "p1", when, False, patient), ("Observation", "o1", when, False, obs)])
    _run(database_url, dialect, "INSERT INTO idx_string (resource_type, id, param, norm,"
         " exact) VALUES (?, ?, ?, ?, ?)", [("Patient", "p1", "family", "smith", "Smith")])
    _run(database_url, dialect, "INSERT INTO idx_token (resource_type, id, param, system,"
         " code) VALUES (?, ?, ?, ?, ?)", [("Patient", "p1", "identifier", "urn:mrn", "42"),
                                          ("Patient", "p1", "identifier", "urn:mrn", "43")])
    _run(database_url, dialect, "INSERT INTO idx_reference (resource_type, id, param,"
         " target_type, target_id) VALUES (?, ?, ?, ?, ?)",
         [("Observation", "o1", "subject", "Patient", "p1")])
    repository = open_repository(database_url)  # runs the keyed migration
    try:
        service = ResourceService(repository)
        search = SearchService(service)

        def found(rtype: str, params: list[tuple[str, str]]) -> list[str]:
            return [m.id for m in search.search(SYSTEM, rtype, params).matches]

        assert found("Patient", [("identifier", "urn:mrn|43")]) == ["p1"]
        assert found("Patient", [("family", "smi")]) == ["p1"]
        assert found("Observation", [("patient", "p1")]) == ["o1"]
        assert found("Observation", [("subject:Patient.family", "smith")]) == ["o1"]
        assert found("Patient", [("_has:Observation:subject:_id", "o1")]) == ["p1"]
        assert found("Patient", [("identifier", "urn:mrn|44")]) == []
        # a resource written afterwards is numbered after the converted ones, and an
        # update of a converted one replaces its converted rows
        service.create(SYSTEM, "Patient", {"resourceType": "Patient",
                                           "name": [{"family": "Smithers"}]})
        service.update(SYSTEM, "Patient", "p1", {"resourceType": "Patient", "id": "p1",
                                                 "name": [{"family": "Jones"}]})
        assert found("Patient", [("family", "smith")]) != ["p1"]
        assert len(found("Patient", [("family", "smith")])) == 1
        assert found("Patient", [("identifier", "urn:mrn|42")]) == []
        assert found("Patient", [("family", "jones")]) == ["p1"]
        with repository.session() as session:
            numbers = session.query("SELECT resource_type, id, rid FROM resource ORDER BY rid", ())
        assert [(str(t), str(i)) for t, i, _ in numbers][:2] == [("Patient", "p1"),
                                                                  ("Observation", "o1")]
        assert len({int(n) for *_, n in numbers}) == 3
    finally:
        repository.close()


@pytest.mark.parametrize("code", ["_lastUpdated", "identifier", "subject"])
def test_pids_of_a_code_on_every_type_that_has_it(code: str) -> None:
    having = [t for t in sorted(registry.resource_types())
              if code in registry.search_parameters_for(t)]
    assert pids(code, ()) == sorted(pid(t, code) for t in having)
