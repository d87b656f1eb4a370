"""The search planner (carebridge.search.planner): which plan it picks, and that AND-ed date
ranges are read from one index row only where the parameter has one value per resource.

Answers are worked out from search.html#prefix and #combining (AND of values: each may be met
by a different value of a repeating element), and checked under both plans: as planned and
with nothing ever leading (``cap`` 0: index walks and per-row checks).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.search.test_explain import RecordingRepository

from carebridge.search import planner
from carebridge.search.planner import single_valued
from carebridge.security.policy import SYSTEM
from carebridge.services import ResourceService
from carebridge.services import search as searching
from carebridge.services.search import SearchService
from carebridge.storage import Repository

RESOURCES: list[dict[str, Any]] = [
    # Goal.target is 0..*: target-date has one value per target
    {"resourceType": "Goal", "id": "g1", "lifecycleStatus": "active",
     "description": {"text": "two targets"}, "subject": {"reference": "Patient/p1"},
     "target": [{"dueDate": "2020-01-01"}, {"dueDate": "2022-01-01"}]},
    {"resourceType": "Goal", "id": "g2", "lifecycleStatus": "active",
     "description": {"text": "one target"}, "subject": {"reference": "Patient/p1"},
     "target": [{"dueDate": "2021-01-01"}]},
    {"resourceType": "Patient", "id": "p1"},
    {"resourceType": "Encounter", "id": "e1", "status": "finished",
     "class": {"code": "AMB"}, "subject": {"reference": "Patient/p1"},
     "period": {"start": "2024-01-10T08:00:00Z", "end": "2024-01-12T17:00:00Z"}},
    {"resourceType": "Encounter", "id": "e2", "status": "finished",
     "class": {"code": "AMB"}, "subject": {"reference": "Patient/p1"},
     "period": {"start": "2024-03-01T08:00:00Z", "end": "2024-03-01T09:00:00Z"}},
    {"resourceType": "Encounter", "id": "e3", "status": "in-progress",
     "class": {"code": "IMP"}, "subject": {"reference": "Patient/p1"},
     "period": {"start": "2024-02-01T10:00:00Z", "end": "2024-02-03T10:00:00Z"}},
    {"resourceType": "Encounter", "id": "e4", "status": "finished",
     "class": {"code": "AMB"}, "subject": {"reference": "Patient/p1"}},  # no period
]


@pytest.fixture(params=["planned", "walked"])
def plan(request: pytest.FixtureRequest) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "walked":
            patch.setattr(planner, "DEFAULT_CAP", 0)
        yield request.param


@pytest.fixture
def loaded(client: TestClient) -> TestClient:
    for body in RESOURCES:
        response = client.put(f"/fhir/{body['resourceType']}/{body['id']}", json=body)
        assert response.status_code == 201, response.text
    return client


def ids(client: TestClient, url: str) -> list[str]:
    response = client.get(f"/fhir/{url}")
    assert response.status_code == 200, response.text
    bundle = response.json()
    found = [e["resource"]["id"] for e in bundle.get("entry", [])
             if e["search"]["mode"] == "match"]
    count = client.get(f"/fhir/{url}&_summary=count").json()["total"]
    assert count == len(found)
    return found


def test_single_valued_follows_the_element_cardinalities() -> None:
    assert single_valued("Encounter", "date")  # Encounter.period 0..1
    assert single_valued("Observation", "date")  # Observation.effective[x] 0..1
    assert single_valued("Condition", "onset-date")  # two casts of onset[x] 0..1
    assert single_valued("Patient", "birthdate")
    assert not single_valued("Goal", "target-date")  # Goal.target 0..*
    assert not single_valued("Patient", "address-city")  # Patient.address 0..*
    assert not single_valued("Patient", "no-such-parameter")


@pytest.mark.usefixtures("plan")
@pytest.mark.parametrize(("url", "expected"), [
    # each bound met by a different target: the AND still holds (search.html#combining)
    ("Goal?target-date=ge2021-06-01&target-date=lt2020-06-01", {"g1"}),
    ("Goal?target-date=ge2021-06-01&target-date=lt2021-06-01", {"g1"}),
    ("Goal?target-date=ge2020-06-01&target-date=lt2021-06-01", {"g2"} | {"g1"}),
    ("Goal?target-date=gt2022-06-01&target-date=lt2019-06-01", set()),
    # one period: both bounds on the same range
    ("Encounter?date=ge2024-01-01&date=lt2024-02-01", {"e1"}),
    ("Encounter?date=ge2024-01-11&date=lt2024-01-11", {"e1"}),  # overlaps both sides
    ("Encounter?date=ge2024-02-01&date=le2024-03-31&status=finished", {"e2"}),
    ("Encounter?date=gt2024-05-01&date=lt2024-01-01", set()),
    ("Encounter?date=ge2024-01-11&date=le2024-02-02", {"e1", "e3"}),
    ("Encounter?date=sa2024-01-15&date=eb2024-03-01", {"e3"}),
    ("Encounter?date=eq2024-02&date=ge2024-02-02", {"e3"}),
])
def test_and_ed_date_ranges(loaded: TestClient, url: str, expected: set[str]) -> None:
    assert set(ids(loaded, url)) == expected


@pytest.mark.usefixtures("plan")
@pytest.mark.parametrize("budget", [1000, 1, 0])
def test_sorted_walk_with_criteria_and_paging(loaded: TestClient, budget: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages sorted by date: the same with the first walk's budget enough for a page
    (1000), too small (1: the planned path after it) or none."""
    monkeypatch.setattr(searching, "WALK_BUDGET", budget)
    url = "Encounter?class=AMB&_sort=-date&_count=1"
    seen: list[str] = []
    page = loaded.get(f"/fhir/{url}").json()
    while True:
        seen += [e["resource"]["id"] for e in page["entry"]]
        following = [lk["url"] for lk in page["link"] if lk["relation"] == "next"]
        if not following:
            break
        page = loaded.get(following[0]).json()
    # newest end first, the encounter without a period last
    assert seen == ["e2", "e1", "e4"]


def test_plan_choice(repository: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    service = ResourceService(repository)
    for body in RESOURCES:
        service.update(SYSTEM, body["resourceType"], body["id"], body)
    recording = RecordingRepository(repository)
    search = SearchService(ResourceService(recording))  # type: ignore[arg-type]

    def last_page_sql(params: list[tuple[str, str]]) -> str:
        recording.log.clear()
        search.search(SYSTEM, "Encounter", params)
        return next(sql for sql, _ in recording.log if " LIMIT " in sql
                    and not sql.startswith("SELECT count"))

    # a selective criterion leads: its distinct ids drive the join
    led = last_page_sql([("subject", "Patient/p1"), ("_sort", "-date")])
    assert ") d CROSS JOIN" in led and "SELECT DISTINCT" in led
    # with nothing selective (cap 0), a date sort walks the date index in order
    monkeypatch.setattr(planner, "DEFAULT_CAP", 0)
    walked = last_page_sql([("subject", "Patient/p1"), ("_sort", "-date")])
    assert "FROM idx_date w" in walked and "SELECT DISTINCT" not in walked
    # and the default order walks the resource table's key
    plain = last_page_sql([("subject", "Patient/p1")])
    assert "FROM resource r WHERE" in plain and "EXISTS" in plain


def test_a_system_and_value_identifier_leads_without_a_count_probe(
        repository: Repository) -> None:
    """identifier=system|value names a business key: it leads at once (as _id does), so a
    conditional write's look-up runs one query; a bare value or a system alone is probed."""
    service = ResourceService(repository)
    for body in RESOURCES:
        service.update(SYSTEM, body["resourceType"], body["id"], body)
    recording = RecordingRepository(repository)
    search = SearchService(ResourceService(recording))  # type: ignore[arg-type]

    def statements(value: str) -> list[str]:
        recording.log.clear()
        search.search(SYSTEM, "Encounter", [("identifier", value), ("_total", "none")])
        return [sql for sql, _ in recording.log]

    keyed = statements("http://example.org/visits|V1")
    assert not [sql for sql in keyed if sql.startswith("SELECT count")], keyed
    assert len(keyed) == 1 and "CROSS JOIN resource r" in keyed[0]
    for loose in ("V1", "http://example.org/visits|"):
        assert [sql for sql in statements(loose) if sql.startswith("SELECT count")], loose


def test_a_quantity_without_a_unit_is_not_probed_beside_another_criterion(
        repository: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """No look-up index bounds ``value-quantity=gt100`` (both start with a unit): beside a
    code it is checked per row, never counted over every quantity row; with a unit it is
    probed (its canonical look-up bounds it); the answers are the same."""
    monkeypatch.setattr(planner, "_WORTH_A_RANGE_PROBE", 0)  # probe ranges behind any lead
    monkeypatch.setattr(planner, "_SELECTIVE", 0)  # and after any count
    service = ResourceService(repository)
    for n, (code, value) in enumerate([("2339-0", 90), ("2339-0", 120), ("8480-6", 130)]):
        service.update(SYSTEM, "Observation", f"q{n}", {
            "resourceType": "Observation", "id": f"q{n}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": value, "unit": "mg/dL",
                              "system": "http://unitsofmeasure.org", "code": "mg/dL"}})
    recording = RecordingRepository(repository)
    search = SearchService(ResourceService(recording))  # type: ignore[arg-type]

    def run(quantity: str) -> tuple[list[str], list[str]]:
        recording.log.clear()
        found = search.search(SYSTEM, "Observation", [
            ("code", "http://loinc.org|2339-0"), ("value-quantity", quantity),
            ("_total", "none")])
        probes = [sql for sql, _ in recording.log
                  if sql.startswith("SELECT count(*) FROM (SELECT i.rid FROM idx_quantity")]
        return [m.id for m in found.matches], probes

    assert run("gt100") == (["q1"], [])
    ids, probes = run("gt100|http://unitsofmeasure.org|mg/dL")
    assert ids == ["q1"] and probes


def _recorded(repository: Repository) -> tuple[RecordingRepository, SearchService]:
    service = ResourceService(repository)
    for body in RESOURCES:
        service.update(SYSTEM, body["resourceType"], body["id"], body)
    recording = RecordingRepository(repository)
    return recording, SearchService(ResourceService(recording))  # type: ignore[arg-type]


def test_later_probes_count_no_further_than_the_best_so_far(
        repository: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe only has to show whether its criterion beats the best one so far: counting
    past that cannot change the choice (a patient with thousands of rows would otherwise
    have every later probe count to the cap)."""
    recording, search = _recorded(repository)
    monkeypatch.setattr(planner, "_SELECTIVE", 0)  # keep probing: every criterion counted
    search.search(SYSTEM, "Encounter", [("subject", "Patient/p1"), ("status", "finished"),
                                        ("_total", "none")])
    probes = [(sql, params) for sql, params in recording.log if sql.startswith("SELECT count")]
    assert len(probes) == 2
    assert f"LIMIT {planner.DEFAULT_CAP}) p" in probes[0][0]  # subject: 4 encounters
    assert "LIMIT 4) p" in probes[1][0], probes[1]  # status: counted up to 4 at most


def test_a_count_probes_deeper_for_the_smallest_driver(
        repository: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """When no criterion is selective within the page's cap, a count probes again with a
    larger cap and drives from the smallest criterion, not from the best-ranked form."""
    recording, search = _recorded(repository)
    monkeypatch.setattr(planner, "DEFAULT_CAP", 1)  # nothing selective for the page
    monkeypatch.setattr(planner, "_SELECTIVE", 0)  # (tiny counts: probe every criterion)
    monkeypatch.setattr(planner, "_WORTH_A_RANGE_PROBE", 0)
    params = [("status", "finished"), ("date", "ge2024-02-15")]  # 3 matches, then 1
    result = search.search(SYSTEM, "Encounter", [*params, ("_summary", "count")])
    assert result.total == 1  # e2
    counted = [sql for sql, _ in recording.log
               if sql.startswith("SELECT count") and " LIMIT " not in sql]
    assert len(counted) == 1 and "FROM idx_date" in counted[0].split("WHERE")[0], recording.log
    monkeypatch.setattr(searching, "COUNT_CAP", 1)  # without the deeper probe: by rank
    recording.log.clear()
    assert search.search(SYSTEM, "Encounter", [*params, ("_summary", "count")]).total == 1
    counted = [sql for sql, _ in recording.log
               if sql.startswith("SELECT count") and " LIMIT " not in sql]
    assert "FROM idx_token" in counted[0].split("WHERE")[0], counted


def test_one_row_each_follows_the_definitions() -> None:
    from carebridge.search.planner import one_row_each

    # one element of max 1 whose type gives one value
    assert one_row_each("Patient", "gender") and one_row_each("Encounter", "date")
    assert one_row_each("Observation", "subject") and one_row_each("Patient", "birthdate")
    # a CodeableConcept (a row per coding), a repeating element, a choice with Timing,
    # a HumanName (a row per part), a union alias, a narrowed alias
    for rtype, code in (("Condition", "code"), ("Observation", "category"),
                        ("Observation", "date"), ("Patient", "name"),
                        ("Observation", "combo-code"), ("Observation", "patient")):
        assert not one_row_each(rtype, code), (rtype, code)


def test_counts_with_and_without_distinct_ids(repository: Repository) -> None:
    """gender is one row per Patient: counted without DISTINCT; a Condition with the same
    code in two codings (different displays: two index rows) is still counted once."""
    service = ResourceService(repository)
    for n, gender in enumerate(["female", "female", "male"]):
        service.update(SYSTEM, "Patient", f"c{n}", {"resourceType": "Patient", "id": f"c{n}",
                                                   "gender": gender})
    coding = {"system": "http://snomed.info/sct", "code": "38341003"}
    service.update(SYSTEM, "Condition", "k1", {
        "resourceType": "Condition", "id": "k1", "subject": {"reference": "Patient/c0"},
        "code": {"coding": [{**coding, "display": "Hypertension"},
                            {**coding, "display": "High blood pressure"}]}})
    recording = RecordingRepository(repository)
    search = SearchService(ResourceService(recording))  # type: ignore[arg-type]

    def count(rtype: str, params: list[tuple[str, str]]) -> tuple[int | None, str]:
        recording.log.clear()
        total = search.search(SYSTEM, rtype, [*params, ("_summary", "count")]).total
        (sql,) = [s for s, _ in recording.log if s.startswith("SELECT count")]
        return total, sql

    total, sql = count("Patient", [("gender", "female")])
    assert total == 2 and sql.startswith("SELECT count(*)"), sql
    total, sql = count("Condition", [("code", "http://snomed.info/sct|38341003")])
    assert total == 1 and sql.startswith("SELECT count(DISTINCT"), sql


def test_a_code_only_count_is_pinned_to_the_one_system_its_rows_have(
        repository: Repository) -> None:
    """SQLite: ``category=laboratory`` counted while every laboratory row has the same system
    is counted with that system (ids in index order, no temporary B-tree); once the code also
    appears under another system, or with none, it is not pinned; the counts stay exact, a
    resource with the code under two systems counted once."""
    service = ResourceService(repository)
    lab = "http://terminology.hl7.org/CodeSystem/observation-category"

    def observation(oid: str, *systems: str | None) -> None:
        codings = [{"code": "laboratory", **({"system": s} if s else {})} for s in systems]
        service.update(SYSTEM, "Observation", oid, {
            "resourceType": "Observation", "id": oid, "status": "final",
            "category": [{"coding": codings}], "code": {"text": "x"}})

    observation("o1", lab)
    observation("o2", lab)
    recording = RecordingRepository(repository)
    search = SearchService(ResourceService(recording))  # type: ignore[arg-type]

    def count() -> tuple[int | None, list[Any]]:
        recording.log.clear()
        total = search.search(SYSTEM, "Observation", [("category", "laboratory"),
                                                      ("_summary", "count")]).total
        [(_, args)] = [(s, a) for s, a in recording.log if s.startswith("SELECT count")]
        return total, list(args)

    sqlite = repository.dialect == "sqlite"
    total, args = count()
    assert total == 2 and (lab in args) == sqlite
    observation("o3", lab, "http://example.org/local")  # the code under two systems
    total, args = count()
    assert total == 3 and lab not in args
    observation("o3", lab)  # back to one system
    total, args = count()
    assert total == 3 and (lab in args) == sqlite
    observation("o4", None)  # the code without a system
    total, args = count()
    assert total == 4 and lab not in args


def test_a_sorted_page_of_common_matches_needs_no_probe(repository: Repository) -> None:
    """Sorted by date with no criterion naming one resource: the first rows of the date
    index are walked before any count probe, and they fill the page here."""
    recording, search = _recorded(repository)
    result = search.search(SYSTEM, "Encounter", [("class", "AMB"), ("_sort", "-date"),
                                                 ("_count", "1"), ("_total", "none")])
    assert [m.id for m in result.matches] == ["e2"]
    assert len(recording.log) == 1, recording.log
    assert f"LIMIT {searching.WALK_BUDGET}) w" in recording.log[0][0]
    recording.log.clear()  # a patient's rows: probed and led as before, no budgeted walk
    search.search(SYSTEM, "Encounter", [("subject", "Patient/p1"), ("_sort", "-date"),
                                        ("_count", "1"), ("_total", "none")])
    assert not [sql for sql, _ in recording.log if f"LIMIT {searching.WALK_BUDGET}) w" in sql]


def test_a_first_cheap_look_finds_a_selective_criterion_behind_a_common_one(
        repository: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """Candidates are first counted to at most _SELECTIVE rows, in rank order: the first
    below that leads, and no probe counts a common criterion to the cap."""
    recording, search = _recorded(repository)
    monkeypatch.setattr(planner, "_SELECTIVE", 2)  # the patient's 4 encounters: "common"
    result = search.search(SYSTEM, "Encounter", [("subject", "Patient/p1"), ("class", "IMP"),
                                                 ("_total", "none")])
    assert [m.id for m in result.matches] == ["e3"]
    probes = [sql for sql, _ in recording.log if sql.startswith("SELECT count")]
    assert len(probes) == 2 and all("LIMIT 2) p" in p for p in probes), probes
    (page,) = [sql for sql, _ in recording.log if not sql.startswith("SELECT count")]
    assert "FROM idx_token" in page.split("CROSS JOIN")[0], page  # class leads


def test_and_ed_ranges_carry_their_span_on_postgresql(repository: Repository) -> None:
    """PostgreSQL: a same-row group of date ranges also asks for the span the row must
    overlap (GiST index of migration 0009); SQLite has no such index and no such condition."""
    recording, search = _recorded(repository)
    result = search.search(SYSTEM, "Encounter", [("date", "ge2024-01-11"),
                                                 ("date", "lt2024-02-02"), ("_total", "none")])
    assert sorted(m.id for m in result.matches) == ["e1", "e3"]
    spans = [sql for sql, _ in recording.log if "int8range" in sql]
    assert bool(spans) == (repository.dialect == "postgresql"), recording.log


def test_ranges_are_not_probed_behind_a_small_lead(
        repository: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """A range's probe may filter many rows before counting any; behind a lead of fewer
    than _WORTH_A_RANGE_PROBE rows it is skipped (the lead costs less than the probe might)."""
    recording, search = _recorded(repository)
    monkeypatch.setattr(planner, "_SELECTIVE", 0)  # no early stop: only the new rule acts
    params = [("status", "finished"), ("date", "ge2024-02-15"), ("_total", "none")]
    assert [m.id for m in search.search(SYSTEM, "Encounter", params).matches] == ["e2"]
    probed = [sql for sql, _ in recording.log if sql.startswith("SELECT count")]
    assert len(probed) == 1 and "idx_token" in probed[0], probed
    monkeypatch.setattr(planner, "_WORTH_A_RANGE_PROBE", 0)
    recording.log.clear()
    assert [m.id for m in search.search(SYSTEM, "Encounter", params).matches] == ["e2"]
    probed = [sql for sql, _ in recording.log if sql.startswith("SELECT count")]
    assert len(probed) == 2 and "idx_date" in probed[1], probed


@pytest.mark.parametrize("count", [1, 2, 5])
def test_a_code_walk_gives_a_resource_with_the_code_twice_once(
        client: TestClient, count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Walking a system|code token's index in id order (nothing selective), a resource whose
    code appears in two codings (two index rows) comes once, on every page size."""
    monkeypatch.setattr(planner, "DEFAULT_CAP", 0)  # nothing leads: the token index is walked
    coding = {"system": "http://snomed.info/sct", "code": "38341003"}
    made = []
    for n in range(7):
        codings = [{**coding, "display": "Hypertension"}]
        if n % 2 == 0:
            codings.append({**coding, "display": f"High blood pressure {n}"})
        body = {"resourceType": "Condition", "id": f"k{n}", "code": {"coding": codings},
                "subject": {"reference": "Patient/p1"}}
        assert client.put(f"/fhir/Condition/k{n}", json=body).status_code == 201
        made.append(f"k{n}")
    seen: list[str] = []
    page = client.get(f"/fhir/Condition?code=http://snomed.info/sct|38341003"
                      f"&_count={count}&_total=none").json()
    while True:
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        following = [lk["url"] for lk in page["link"] if lk["relation"] == "next"]
        if not following:
            break
        page = client.get(following[0]).json()
    assert seen == sorted(made)


def test_one_system_code_token_in_the_default_order_is_walked_without_a_probe(
        repository: Repository) -> None:
    service = ResourceService(repository)
    coding = {"system": "http://snomed.info/sct", "code": "38341003"}
    for n in range(3):
        service.update(SYSTEM, "Condition", f"w{n}", {
            "resourceType": "Condition", "id": f"w{n}", "code": {"coding": [coding]},
            "subject": {"reference": "Patient/p1"}})
    recording = RecordingRepository(repository)
    search = SearchService(ResourceService(recording))  # type: ignore[arg-type]
    result = search.search(SYSTEM, "Condition", [("code", "http://snomed.info/sct|38341003"),
                                                 ("_count", "2"), ("_total", "none")])
    assert [m.id for m in result.matches] == ["w0", "w1"]
    assert len(recording.log) == 1 and "FROM idx_token w" in recording.log[0][0], recording.log
