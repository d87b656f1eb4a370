"""Indexed search parameters never scan whole tables (checked with the databases' own plans).

A few thousand generated resources are stored through the storage protocol (with their index
rows, as the service writes them), the planner gets statistics (``ANALYZE``), and for a
representative search per parameter type - and for chains, ``_has``, includes, compartments,
sorting and the pages behind a cursor - the SQL the SearchService really runs is recorded by a
wrapper around the real session and explained: ``EXPLAIN QUERY PLAN`` on SQLite, ``EXPLAIN`` on
PostgreSQL. No plan may read the resource table or an index table from end to end: no SQLite
``SCAN`` of them (even "using index": that is a full index scan), no PostgreSQL ``Seq Scan`` on
them and no index scan without an index condition. The planner settings are left as they are.

SQLite runs twice: as a fresh database has it (no statistics, which is how the server runs
unless someone analyzes the file) and after ``ANALYZE``.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import orjson
import psycopg
import pytest

from carebridge.fhir.resource import with_meta
from carebridge.search.index import index_rows
from carebridge.security.policy import Caller
from carebridge.services import ResourceService
from carebridge.services.search import SearchService
from carebridge.storage import Repository, open_repository
from carebridge.storage.base import Session, StoredVersion, Write
from carebridge.storage.wrapper import RepositoryWrapper
from carebridge.testing import ThrowawayPostgres

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

PATIENTS = 1500
OBSERVATIONS_PER_PATIENT = 3
CODES = [f"{1000 + n}-{n % 10}" for n in range(60)]  # 60 codes: each one is rare
FILLER = 30_000


# ----------------------------------------------------------------------------- data


def _reference(target: str) -> dict[str, str]:
    return {"reference": target}


def generate() -> Iterator[dict[str, Any]]:
    """About 45 000 resources; every searched value below is selective."""
    rnd = random.Random(20240601)
    base = datetime(2023, 1, 1, tzinfo=UTC)
    for n in range(100):
        parent = {"partOf": _reference(f"Organization/org{n // 10}")} if n >= 10 else {}
        yield {"resourceType": "Organization", "id": f"org{n}", "name": f"Org {n}", **parent}
        yield {"resourceType": "Practitioner", "id": f"pr{n}",
               "name": [{"family": f"Doctor{n}", "given": ["Pat"]}]}
    for n in range(PATIENTS):
        yield {
            "resourceType": "Patient", "id": f"p{n}",
            "meta": {"tag": [{"system": "urn:tags", "code": f"tag{n % 100}"}],
                     "profile": [f"http://example.org/StructureDefinition/p{n % 200}"]},
            "identifier": [{"system": "urn:mrn", "value": str(n),
                            "type": {"coding": [{"system": V2_0203, "code": "MR"}]}}],
            "name": [{"family": f"Fam{n}", "given": [f"Given{n % 300}"]}],
            "gender": ["male", "female", "other", "unknown"][n % 4],
            **({"birthDate": (base - timedelta(days=365 * 20 + 7 * n)).date().isoformat()}
               if n % 10 else {}),
            "managingOrganization": _reference(f"Organization/org{n % 100}"),
            "generalPractitioner": [_reference(f"Practitioner/pr{n % 100}")],
        }
        yield {"resourceType": "Encounter", "id": f"e{n}", "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                         "code": "AMB"},
               "subject": _reference(f"Patient/p{n}"),
               "period": {"start": (base + timedelta(hours=7 * n)).isoformat(),
                          "end": (base + timedelta(hours=7 * n + 3)).isoformat()}}
        status = ["active", "recurrence", "relapse", "inactive", "remission", "resolved"][n % 6]
        yield {"resourceType": "Condition", "id": f"c{n}", "subject": _reference(f"Patient/p{n}"),
               "clinicalStatus": {"coding": [{"system": CLINICAL, "code": status}]},
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": str(n % 200)}],
                        "text": f"Condition number {n % 200}"}}
        yield {"resourceType": "RiskAssessment", "id": f"ra{n}", "status": "final",
               "subject": _reference(f"Patient/p{n}"),
               "prediction": [{"probabilityDecimal": n * 37 % 10000 / 10000}]}
        yield {"resourceType": "ValueSet", "id": f"vs{n}", "status": "active",
               "url": f"http://example.org/fhir/ValueSet/group{n % 50}/vs{n}"}
        yield {"resourceType": "QuestionnaireResponse", "id": f"qr{n}", "status": "completed",
               "questionnaire": f"http://example.org/fhir/Questionnaire/q{n % 300}",
               "subject": _reference(f"Patient/p{n}")}
        for k in range(OBSERVATIONS_PER_PATIENT):
            m = n * OBSERVATIONS_PER_PATIENT + k
            code = CODES[m % len(CODES)]
            yield {
                "resourceType": "Observation", "id": f"o{m}", "status": "final",
                "code": {"coding": [{"system": LOINC, "code": code, "display": f"Test {code}"}]},
                "subject": _reference(f"Patient/p{n}"),
                **({"encounter": _reference(f"Encounter/e{n}")} if k < 2 else {}),
                "performer": [_reference(f"Practitioner/pr{m % 100}")],
                "effectiveDateTime": (base + timedelta(minutes=97 * m)).isoformat(),
                "valueQuantity": {"value": rnd.randint(1, 400), "system": UCUM,
                                  "code": ["mg", "g", "kg"][m % 3]},
                "component": [{"code": {"coding": [{"system": LOINC,
                                                     "code": CODES[(m + 1) % len(CODES)]}]},
                               "valueQuantity": {"value": rnd.randint(80, 199), "system": UCUM,
                                                 "code": "mm[Hg]"}}],
            }
        if n % 3 == 0:
            yield {"resourceType": "Provenance", "id": f"prov{n}",
                   "target": [_reference(f"Observation/o{n * OBSERVATIONS_PER_PATIENT}")],
                   "recorded": base.isoformat(),
                   "agent": [{"who": _reference(f"Practitioner/pr{n % 100}")}]}
    # Other data, as a live server has (it makes reading the resource table from end to end
    # as costly, relative to the searches, as it is there).
    for n in range(FILLER):
        yield {"resourceType": "Basic", "id": f"b{n}",
               "code": {"coding": [{"system": "urn:kinds", "code": f"k{n % 500}"}]}}
    for n in range(50):
        yield {"resourceType": "List", "id": f"list{n}", "status": "current", "mode": "working",
               "entry": [{"item": _reference(f"Patient/p{n * 20 + k}")} for k in range(5)]}


def load(repository: Repository) -> None:
    """Store the resources, written one a minute over the year (so that the _lastUpdated
    index values spread out like a live server's do)."""
    writes: list[Write] = []
    for n, resource in enumerate(generate()):
        moment = datetime(2023, 1, 1, tzinfo=UTC) + timedelta(minutes=40 * n)
        stored = with_meta(resource, resource["id"], 1, moment)
        version = StoredVersion(resource["resourceType"], resource["id"], 1, moment, "PUT",
                                orjson.dumps(stored))
        writes.append(Write(version, None, index_rows(stored)))
    with repository.session(write=True) as session:
        for start in range(0, len(writes), 2000):
            session.write(writes[start:start + 2000])


# ----------------------------------------------------------------------------- recording


@dataclass
class RecordingSession:
    """The real session; ``query`` also notes the SQL and parameters it ran."""

    inner: Session
    log: list[tuple[str, list[Any]]]

    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        self.log.append((sql, list(params)))
        return self.inner.query(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RecordingRepository(RepositoryWrapper):
    """The real repository, whose sessions record the queries run through them."""

    def __init__(self, inner: Repository) -> None:
        super().__init__(inner)
        self.log: list[tuple[str, list[Any]]] = []

    def wrap(self, session: Session, write: bool) -> Session:
        return RecordingSession(session, self.log)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- plans


@dataclass
class Database:
    repository: Repository
    recording: RecordingRepository
    search: SearchService

    def explain(self, sql: str, params: list[Any]) -> list[str]:
        with self.repository.session() as session:
            if self.repository.dialect == "sqlite":
                return [str(row[3]) for row in session.query(f"EXPLAIN QUERY PLAN {sql}", params)]
            return [str(row[0]) for row in session.query(f"EXPLAIN {sql}", params)]


_BASE_TABLE = re.compile(r"\b(?:FROM|JOIN)\s+(resource|idx_\w+)(?:\s+(?!WHERE|ON|JOIN)(\w+))?")


def sqlite_full_scans(sql: str, plan: list[str]) -> list[str]:
    """Plan lines that read a base table or an index of one from end to end."""
    tables = {"resource"} | {m.group(1) for m in _BASE_TABLE.finditer(sql)}
    aliases = tables | {m.group(2) for m in _BASE_TABLE.finditer(sql) if m.group(2)}
    return [line for line in plan
            if (m := re.match(r"SCAN (\w+)", line)) and m.group(1) in aliases]


def postgres_full_scans(plan: list[str]) -> list[str]:
    bad = [line for line in plan if re.search(r"Seq Scan on (resource|idx_\w+)", line)]
    for n, line in enumerate(plan):
        if re.search(r"(Index Scan|Index Only Scan) using|Bitmap Index Scan on", line):
            indent = len(line) - len(line.lstrip())
            details = []
            for following in plan[n + 1:]:
                if "->" in following or len(following) - len(following.lstrip()) <= indent:
                    break
                details.append(following)
            if not any("Index Cond:" in d for d in details):
                bad.append(line)
    return bad


pytestmark = pytest.mark.slow

_BACKENDS = ["sqlite", "sqlite-analyzed",
             pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="module", params=_BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Database]:
    if request.param.startswith("sqlite"):
        url = f"sqlite:///{tmp_path_factory.mktemp('explain') / 'carebridge.db'}"
    else:
        server: ThrowawayPostgres = request.getfixturevalue("postgres_server")
        url = server.create_database(f"t_{uuid.uuid4().hex[:16]}")
    repository = open_repository(url)
    try:
        load(repository)
        if request.param == "sqlite-analyzed":
            with repository.session(write=True) as session:
                session.query("ANALYZE", [])
        elif request.param == "postgresql":
            # VACUUM too: it sets the visibility map that index-only scans are costed by, so
            # autovacuum cannot change the plans midway through the module by doing it later.
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
        recording = RecordingRepository(repository)
        search = SearchService(ResourceService(recording))  # type: ignore[arg-type]
        yield Database(repository, recording, search)
    finally:
        repository.close()


# ----------------------------------------------------------------------------- searches

SEARCHES = [
    # string
    "Patient?family=fam123",
    "Patient?family:exact=Fam123",
    "Practitioner?name=doctor7",
    "Patient?family:contains=am12",  # LIKE: only the parameter's own index range is read
    # token
    f"Observation?code={LOINC}|{CODES[7]}",
    "Patient?identifier=urn:mrn|77",
    f"Patient?identifier:of-type={V2_0203}|MR|77",
    f"Condition?clinical-status:below={CLINICAL}|inactive&code=17",
    "Patient?gender:in=http://hl7.org/fhir/ValueSet/administrative-gender&identifier=12",
    "Patient?_tag=urn:tags|tag42",
    "Patient?_id=p7,p8",
    "Condition?code:text=number 17",
    "Patient?_lastUpdated=2023-03-01",
    # date
    "Observation?date=2023-03-05",
    "Observation?date=gt2023-10-30T12:00:00Z",
    "Observation?date=sa2023-10-30",
    "Observation?date=eb2023-01-02",
    "Observation?date=ge2023-10-30T12:00:00Z",
    "Observation?date=le2023-01-01T12:00:00Z",
    "Encounter?date=ge2024-03-01&date=le2024-03-02",
    "Patient?birthdate=2002-11-18",
    # number
    "RiskAssessment?probability=gt0.998",
    "RiskAssessment?probability=0.0259",
    # quantity
    f"Observation?value-quantity=5|{UCUM}|g",
    f"Observation?value-quantity=gt399|{UCUM}|kg",
    "Observation?value-quantity=lt1.5",
    # reference
    "Observation?subject=Patient/p7",
    "Observation?subject=p7",
    "Observation?subject:Patient=p7&code=" + CODES[21],
    "Encounter?patient=Patient/p9",
    "QuestionnaireResponse?questionnaire=http://example.org/fhir/Questionnaire/q17",
    # uri
    "ValueSet?url=http://example.org/fhir/ValueSet/group3/vs3",
    "ValueSet?url:below=http://example.org/fhir/ValueSet/group3/",
    "ValueSet?url:above=http://example.org/fhir/ValueSet/group3/vs53/v2",
    "Patient?_profile=http://example.org/StructureDefinition/p7",
    # composite
    f"Observation?component-code-value-quantity={LOINC}|{CODES[3]}$gt150",
    # :missing, :not (negations scan only the searched type's rows, by index)
    "Observation?subject=Patient/p7&encounter:missing=true",
    "Observation?subject=Patient/p7&code:not=" + CODES[21],
    "Patient?birthdate:missing=true",
    "Patient?gender:not=male",
    # chains and _has
    "Observation?subject:Patient.family=fam123",
    "Observation?subject:Patient.organization.name=org 47",
    "Observation?subject:Patient.organization.partof.name=org 4",
    f"Patient?_has:Observation:subject:code={CODES[7]}&_has:Observation:subject:date=2023-03",
    "Patient?_has:Observation:subject:_has:Provenance:target:agent=Practitioner/pr3",
    "Patient?_list=list7",
    # includes
    "Observation?_id=o21&_include=Observation:subject&_revinclude=Provenance:target",
    "Observation?_id=o21&_include=Observation:subject&_include:iterate=Patient:organization"
    "&_include:iterate=Organization:partof",
    "Patient?_id=p7&_revinclude=Observation:subject",
    "Observation?_id=o21&_include=*",
    # sorting and paging: the pages behind the cursor too
    f"Observation?code={CODES[7]}&_count=5",
    f"Observation?code={CODES[7]}&_count=5&_sort=-date",
    "Observation?subject=Patient/p7&_sort=date,-value-quantity&_count=1",
    "Organization?_count=10",
    "Patient?_sort=birthdate&_count=5",
    "Patient?family=fam12&_sort=-family&_count=3",
    # system and compartment search
    "?_type=Patient,Practitioner&name=fam123",
    "?_id=p7",
    "Patient/p7/Observation",
    "Patient/p7/*",
    "Practitioner/pr7/Observation?code=" + CODES[7],
]


def run(database: Database, search: str) -> list[tuple[str, list[Any]]]:
    """Run a search through the real SearchService; return the SQL of its first pages."""
    path, _, query = search.partition("?")
    # _total=accurate: the count query runs too (else only when there is a next page)
    params = [*parse_qsl(query, keep_blank_values=True), ("_total", "accurate")]
    compartment = None
    resource_type: str | None = path or None
    if path.count("/") == 2:
        kind, cid, target = path.split("/")
        compartment, resource_type = (kind, cid), None if target == "*" else target
    database.recording.log.clear()
    caller = Caller("explain")
    result = database.search.search(caller, resource_type, params, compartment=compartment)
    pages = 1
    while result.next_cursor and pages < 3:
        result = database.search.search(caller, resource_type,
                                        [*params, ("_cursor", result.next_cursor)],
                                        compartment=compartment)
        pages += 1
    assert result.matches or pages > 1, f"{search} found nothing: not representative"
    return list(database.recording.log)


def full_scans(database: Database, statements: list[tuple[str, list[Any]]]) -> list[str]:
    """Each statement whose plan reads a whole table, with that plan."""
    problems = []
    for sql, params in statements:
        plan = database.explain(sql, params)
        if database.repository.dialect == "sqlite":
            bad = sqlite_full_scans(sql, plan)
        else:
            bad = postgres_full_scans(plan)
        if bad:
            problems.append(f"{sql}\n  " + "\n  ".join(plan))
    return problems


@pytest.mark.parametrize("search", SEARCHES)
def test_search_uses_indexes(database: Database, search: str) -> None:
    statements = run(database, search)
    assert statements
    problems = full_scans(database, statements)
    assert not problems, "full scans:\n" + "\n\n".join(problems)


def test_the_detectors_detect(database: Database) -> None:
    """A query that must read a whole table is reported (the checks are not vacuous)."""
    sql = "SELECT count(*) FROM resource r WHERE r.body IS NOT NULL"
    plan = database.explain(sql, [])
    if database.repository.dialect == "sqlite":
        assert sqlite_full_scans(sql, plan)
    else:
        assert postgres_full_scans(plan)



def test_conditional_identifier_look_ups_use_indexes(database: Database) -> None:
    """The look-ups conditional writes and HL7 v2 results make by business identifier
    (SearchService.ids_by_token: one value, or many at once) read the token lookup index."""
    database.recording.log.clear()
    with database.recording.session() as session:
        assert database.search.match_ids(session, "Patient", "identifier=urn:mrn|77")
        found = database.search.ids_by_token(session, "Patient", "identifier", "urn:mrn",
                                             ["77", "78", "79", "no-such-mrn"])
    assert sorted(found) == ["77", "78", "79"]
    statements = list(database.recording.log)
    assert len(statements) == 2
    problems = full_scans(database, statements)
    assert not problems, "full scans:\n" + "\n\n".join(problems)
