"""End to end: a FHIR client library nobody here wrote searches a real server.

A ``carebridge serve`` process runs per backend (SQLite in a temporary file, PostgreSQL in a
fresh database of the session's throwaway server). fhirpy's ``SyncFHIRClient`` creates a small
data set once per server (3 Organizations, 4 Patients, 21 Observations) and then searches it
with fhirpy's own search API, which builds every query string itself:

* ``search(subject=...)``, token ``code=system|code``, quantity and date prefixes
  (``date__ge=...`` becomes ``date=ge...``; a datetime value becomes ``...T..Z``),
* chains (``subject__Patient__name`` becomes ``subject:Patient.name``) and ``_has``,
* ``include`` / ``revinclude`` (``_include=Observation:subject``, ``:iterate``),
* ``sort``, ``limit`` (``_count``), ``count()`` (which sends ``_count=0&_totalMethod=count``,
  not ``_summary=count``: the server answers with ``total`` and reports the unknown
  ``_totalMethod`` as an ignored parameter), ``first()``, ``get()``,
* ``fetch_all()``, which follows the ``next`` links the server hands out until there is none.

Every test only reads, so each asserts the exact ids it expects from the data set.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, ResourceNotFound
from fhirpy.base.searchset import Raw

from carebridge.testing import ServerProcess

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
HEART_RATE = "8867-4"
BODY_WEIGHT = "29463-7"
FIRST_DAY = datetime(2023, 1, 1, 8, 0, tzinfo=UTC)
N_OBSERVATIONS = 21


# ------------------------------------------------------------------------------ server, client


@pytest.fixture(scope="module")
def server(module_database_url: str) -> Iterator[ServerProcess]:
    url = module_database_url
    with ServerProcess(url) as process:
        yield process


class RequestLog:
    """Every request fhirpy sends and the status it got (a ``requests`` response hook)."""

    def __init__(self) -> None:
        self.responses: list[requests.Response] = []

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.responses.append(response)

    def clear(self) -> None:
        self.responses.clear()

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.responses]

    @property
    def last_query(self) -> list[tuple[str, str]]:
        """The decoded query string of the last request, as the server received it."""
        return parse_qsl(urlsplit(self.responses[-1].url).query, keep_blank_values=True)


@pytest.fixture
def log() -> RequestLog:
    return RequestLog()


@pytest.fixture
def fhir(server: ServerProcess, log: RequestLog) -> SyncFHIRClient:
    return SyncFHIRClient(
        server.base_url, requests_config={"timeout": 30, "hooks": {"response": [log]}}
    )


# ------------------------------------------------------------------------------ the data set


@dataclass(frozen=True)
class Obs:
    id: str
    n: int  # 0..20; the Observation is on day n + 1 of January 2023, at 08:00Z
    patient: str  # key in Data.patients
    code: str
    value: float
    when: datetime


@dataclass
class Data:
    orgs: dict[str, str]  # key -> id
    patients: dict[str, str]  # key -> id
    patient_org: dict[str, str]  # patient key -> org key
    observations: list[Obs]

    def obs(self, **where: Any) -> set[str]:
        """Ids of the observations whose fields equal ``where`` (all of them without)."""
        return {o.id for o in self.observations
                if all(getattr(o, k) == v for k, v in where.items())}

    def obs_if(self, keep: Any) -> set[str]:
        return {o.id for o in self.observations if keep(o)}

    def pid(self, *keys: str) -> set[str]:
        return {self.patients[k] for k in keys}


PATIENTS = {
    # key: (family, given, organization, birthDate)
    "alice": ("Lindqvist", "Alice", "north", "1970-03-01"),
    "bob": ("Okafor", "Bob", "north", "1982-07-15"),
    "carol": ("Lindqvist-Brown", "Carol", "south", "1991-11-30"),
    "dave": ("Moreau", "Dave", "south", "2001-05-05"),  # has no observations
}
ORGANIZATIONS = {"north": "Northwind Clinic", "south": "Southside Hospital",
                 "east": "Eastgate Practice"}  # east manages nobody
WITH_OBSERVATIONS = ("alice", "bob", "carol")


def _observation_plan(n: int) -> tuple[str, str, float, datetime]:
    """Observation n: patients take turns; heart rates and weights alternate per round of 3,
    so each patient has 4 heart rates (60 + n /min) and 3 weights (70 + n kg)."""
    patient = WITH_OBSERVATIONS[n % 3]
    code = HEART_RATE if (n // 3) % 2 == 0 else BODY_WEIGHT
    value = float(60 + n) if code == HEART_RATE else float(70 + n)
    return patient, code, value, FIRST_DAY + timedelta(days=n)


@pytest.fixture(scope="module")
def data(server: ServerProcess) -> Data:
    """The data set, created once per server through fhirpy (no test writes anything)."""
    client = SyncFHIRClient(server.base_url, requests_config={"timeout": 30})
    orgs = {}
    for key, name in ORGANIZATIONS.items():
        org = client.resource("Organization", name=name, active=True,
                              identifier=[{"system": "urn:test:org", "value": key}])
        org.save()
        orgs[key] = org.id
    patients, patient_org = {}, {}
    for key, (family, given, org_key, birth) in PATIENTS.items():
        patient = client.resource(
            "Patient", name=[{"family": family, "given": [given]}], birthDate=birth,
            managingOrganization={"reference": f"Organization/{orgs[org_key]}"})
        patient.save()
        patients[key], patient_org[key] = patient.id, org_key
    observations = []
    for n in range(N_OBSERVATIONS):
        key, code, value, when = _observation_plan(n)
        unit = ("/min", "/min") if code == HEART_RATE else ("kg", "kg")
        obs = client.resource(
            "Observation", status="final",
            code={"coding": [{"system": LOINC, "code": code}]},
            subject={"reference": f"Patient/{patients[key]}"},
            effectiveDateTime=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            valueQuantity={"value": value, "unit": unit[0], "system": UCUM, "code": unit[1]})
        obs.save()
        observations.append(Obs(obs.id, n, key, code, value, when))
    return Data(orgs, patients, patient_org, observations)


def ids(resources: list[Any]) -> list[str]:
    return [r.id for r in resources]


def id_set(resources: list[Any]) -> set[str]:
    found = ids(resources)
    assert len(found) == len(set(found)), f"a resource came back twice: {found}"
    return set(found)


def by_date(data: Data, chosen: set[str], *, descending: bool = False) -> list[str]:
    ordered = sorted((o for o in data.observations if o.id in chosen), key=lambda o: o.when,
                     reverse=descending)
    return [o.id for o in ordered]


def split_entries(bundle: Any) -> dict[str, list[tuple[str, str]]]:
    """(type, id) of a searchset's entries by search.mode (match / include / outcome)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        out.setdefault(entry["search"]["mode"], []).append(
            (resource["resourceType"], resource.get("id", "")))
    return out


# ------------------------------------------------------------------------------ plain criteria


def test_search_by_subject(fhir: SyncFHIRClient, data: Data, log: RequestLog) -> None:
    alice = fhir.reference("Patient", data.patients["alice"])
    observations = fhir.resources("Observation")

    # fhirpy turns a reference (or resource) value into "Patient/<id>"
    assert id_set(observations.search(subject=alice).limit(100).fetch()) == data.obs(
        patient="alice")
    assert ("subject", f"Patient/{alice.id}") in log.last_query
    assert id_set(observations.search(subject=f"Patient/{data.patients['bob']}")
                  .limit(100).fetch()) == data.obs(patient="bob")
    # "patient" is subject restricted to Patient; a bare id works there
    assert id_set(observations.search(patient=data.patients["carol"]).limit(100).fetch()) == (
        data.obs(patient="carol"))
    # the patient without observations, and several subjects OR-ed with a comma
    assert observations.search(subject=f"Patient/{data.patients['dave']}").fetch() == []
    both = f"Patient/{data.patients['alice']},Patient/{data.patients['carol']}"
    assert id_set(observations.search(subject=both).limit(100).fetch()) == (
        data.obs(patient="alice") | data.obs(patient="carol"))
    # Patients by their managing organization (Patient.organization)
    north = fhir.reference("Organization", data.orgs["north"])
    assert id_set(fhir.resources("Patient").search(organization=north).fetch()) == data.pid(
        "alice", "bob")


def test_search_by_token_code(fhir: SyncFHIRClient, data: Data, log: RequestLog) -> None:
    observations = fhir.resources("Observation").limit(100)

    heart = observations.search(code=f"{LOINC}|{HEART_RATE}").fetch()
    assert ("code", f"{LOINC}|{HEART_RATE}") in log.last_query
    assert id_set(heart) == data.obs(code=HEART_RATE)
    assert len(heart) == 12
    assert id_set(observations.search(code=BODY_WEIGHT).fetch()) == data.obs(code=BODY_WEIGHT)
    assert observations.search(code=f"http://snomed.info/sct|{HEART_RATE}").fetch() == []
    either = f"{LOINC}|{HEART_RATE},{LOINC}|{BODY_WEIGHT}"
    assert id_set(observations.search(code=either).fetch()) == data.obs()
    # AND across parameters
    bob_weights = observations.search(code=f"{LOINC}|{BODY_WEIGHT}",
                                      subject=f"Patient/{data.patients['bob']}").fetch()
    assert id_set(bob_weights) == data.obs(code=BODY_WEIGHT, patient="bob")
    # :not
    assert id_set(observations.search(code__not=f"{LOINC}|{HEART_RATE}").fetch()) == (
        data.obs(code=BODY_WEIGHT))


def test_search_by_date_with_prefixes(fhir: SyncFHIRClient, data: Data,
                                      log: RequestLog) -> None:
    observations = fhir.resources("Observation").limit(100)

    # day n + 1 of January holds observation n
    assert id_set(observations.search(date__ge="2023-01-15").fetch()) == data.obs_if(
        lambda o: o.n >= 14)
    assert ("date", "ge2023-01-15") in log.last_query
    assert id_set(observations.search(date__lt="2023-01-03").fetch()) == data.obs_if(
        lambda o: o.n <= 1)
    # two prefixes on one parameter are AND-ed: [Jan 5, Jan 8)
    window = observations.search(date__ge="2023-01-05", date__lt="2023-01-08").fetch()
    assert [v for k, v in log.last_query if k == "date"] == ["ge2023-01-05", "lt2023-01-08"]
    assert id_set(window) == data.obs_if(lambda o: 4 <= o.n <= 6)
    # no prefix: the day's range
    assert id_set(observations.search(date="2023-01-10").fetch()) == data.obs(n=9)
    # a datetime becomes an instant; Jan 20 08:00Z itself is not greater
    later = observations.search(date__gt=datetime(2023, 1, 20, 8, 0, tzinfo=UTC)).fetch()
    assert ("date", "gt2023-01-20T08:00:00Z") in log.last_query
    assert id_set(later) == data.obs(n=20)
    assert id_set(observations.search(date__le=date(2023, 1, 2)).fetch()) == data.obs_if(
        lambda o: o.n <= 1)
    # a month, and a prefix passed raw
    assert id_set(observations.search(date="2023-01").fetch()) == data.obs()
    assert observations.search(date="2023-02").fetch() == []
    assert id_set(observations.search(Raw(date="sa2023-01-19")).fetch()) == data.obs_if(
        lambda o: o.n >= 19)
    # with other criteria
    alice_late = observations.search(subject=f"Patient/{data.patients['alice']}",
                                     date__ge="2023-01-10").fetch()
    assert id_set(alice_late) == data.obs_if(lambda o: o.patient == "alice" and o.n >= 9)


def test_search_by_quantity_with_prefixes(fhir: SyncFHIRClient, data: Data,
                                          log: RequestLog) -> None:
    observations = fhir.resources("Observation").limit(100)

    above = observations.search(value_quantity__gt=85).fetch()
    assert ("value-quantity", "gt85") in log.last_query
    assert id_set(above) == data.obs_if(lambda o: o.value > 85)
    kilos = observations.search(value_quantity__ge=f"80|{UCUM}|kg").fetch()
    assert id_set(kilos) == data.obs_if(lambda o: o.code == BODY_WEIGHT and o.value >= 80)
    # no prefix: the value's implicit range [65.5, 66.5), in the unit given
    assert id_set(observations.search(value_quantity=f"66|{UCUM}|/min").fetch()) == data.obs(
        code=HEART_RATE, value=66.0)
    assert observations.search(value_quantity=f"66|{UCUM}|kg").fetch() == []


# ------------------------------------------------------------------------------ chains, _has


def test_chained_search_on_the_subject(fhir: SyncFHIRClient, data: Data,
                                       log: RequestLog) -> None:
    observations = fhir.resources("Observation").limit(100)

    # string search matches the start of a name: Lindqvist and Lindqvist-Brown
    lindqvists = observations.search(subject__Patient__name="Lindqvist").fetch()
    assert ("subject:Patient.name", "Lindqvist") in log.last_query
    assert id_set(lindqvists) == data.obs(patient="alice") | data.obs(patient="carol")
    exact = observations.search(subject__Patient__name__exact="Lindqvist").fetch()
    assert ("subject:Patient.name:exact", "Lindqvist") in log.last_query
    assert id_set(exact) == data.obs(patient="alice")
    raw = observations.search(Raw(**{"subject:Patient.name": "okafor"})).fetch()
    assert id_set(raw) == data.obs(patient="bob")
    # two links: Observation -> Patient -> Organization
    south = observations.search(subject__Patient__organization__name="Southside").fetch()
    assert ("subject:Patient.organization.name", "Southside") in log.last_query
    assert id_set(south) == data.obs(patient="carol")
    # a chain with a prefixed value and another criterion
    born_late = observations.search(subject__Patient__birthdate__ge="1980",
                                    code=f"{LOINC}|{HEART_RATE}").fetch()
    assert ("subject:Patient.birthdate", "ge1980") in log.last_query
    assert id_set(born_late) == data.obs_if(
        lambda o: o.patient in ("bob", "carol") and o.code == HEART_RATE)
    assert observations.search(subject__Patient__name="Nobody").fetch() == []


def test_reverse_chain_has(fhir: SyncFHIRClient, data: Data, log: RequestLog) -> None:
    patients = fhir.resources("Patient").limit(100)

    weighed = patients.has("Observation", "subject", code=f"{LOINC}|{BODY_WEIGHT}").fetch()
    assert ("_has:Observation:subject:code", f"{LOINC}|{BODY_WEIGHT}") in log.last_query
    assert id_set(weighed) == data.pid("alice", "bob", "carol")
    heavy = patients.has("Observation", "subject", value_quantity__gt=85).fetch()
    assert id_set(heavy) == {data.patients[o.patient] for o in data.observations
                             if o.value > 85}
    # Organizations that manage a patient who has an observation after Jan 20 (carol's)
    orgs = fhir.resources("Organization").search(
        Raw(**{"_has:Patient:organization:_has:Observation:subject:date": "gt2023-01-20"}))
    assert id_set(orgs.fetch()) == {data.orgs["south"]}
    assert data.obs_if(lambda o: o.n >= 20) == data.obs(patient="carol", n=20)


# ------------------------------------------------------------------------------ includes


def test_include_adds_each_subject_once(fhir: SyncFHIRClient, data: Data,
                                        log: RequestLog) -> None:
    searchset = (fhir.resources("Observation").search(code=f"{LOINC}|{HEART_RATE}")
                 .include("Observation", "subject").limit(100))
    bundle = searchset.fetch_raw()
    assert ("_include", "Observation:subject") in log.last_query

    entries = split_entries(bundle)
    assert set(entries) == {"match", "include"}
    assert sorted(entries["match"]) == sorted(
        ("Observation", i) for i in data.obs(code=HEART_RATE))
    assert sorted(entries["include"]) == sorted(
        ("Patient", data.patients[k]) for k in WITH_OBSERVATIONS)
    assert bundle["total"] == 12  # total counts matches only
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["fullUrl"].endswith(f"/{resource['resourceType']}/{resource.id}")
    # fetch() keeps only the searched type
    assert id_set(searchset.fetch()) == data.obs(code=HEART_RATE)

    # with the target type named, and iterating on to the patients' organizations
    deep = (fhir.resources("Observation").search(subject=f"Patient/{data.patients['carol']}")
            .include("Observation", "subject", "Patient")
            .include("Patient", "organization", iterate=True).limit(100).fetch_raw())
    assert ("_include:iterate", "Patient:organization") in log.last_query
    entries = split_entries(deep)
    assert {i for _, i in entries["match"]} == data.obs(patient="carol")
    assert sorted(entries["include"]) == sorted(
        [("Patient", data.patients["carol"]), ("Organization", data.orgs["south"])])

    # no match, nothing included
    assert split_entries(fhir.resources("Observation").search(code="none")
                         .include("Observation", "subject").fetch_raw()) == {}


def test_revinclude_adds_the_resources_pointing_back(fhir: SyncFHIRClient, data: Data,
                                                     log: RequestLog) -> None:
    bundle = (fhir.resources("Patient").search(organization=f"Organization/{data.orgs['north']}")
              .revinclude("Observation", "subject").limit(100).fetch_raw())
    assert ("_revinclude", "Observation:subject") in log.last_query
    entries = split_entries(bundle)
    assert sorted(entries["match"]) == sorted(("Patient", i) for i in data.pid("alice", "bob"))
    assert sorted(entries["include"]) == sorted(
        ("Observation", i) for i in data.obs(patient="alice") | data.obs(patient="bob"))
    assert bundle["total"] == 2

    orgs = fhir.resources("Organization").revinclude("Patient", "organization").fetch_raw()
    entries = split_entries(orgs)
    assert sorted(entries["match"]) == sorted(("Organization", i) for i in data.orgs.values())
    assert sorted(entries["include"]) == sorted(("Patient", i) for i in data.patients.values())


# ------------------------------------------------------------------------------ sort, limit


def test_sort_by_date_both_ways(fhir: SyncFHIRClient, data: Data, log: RequestLog) -> None:
    alice = fhir.resources("Observation").search(subject=f"Patient/{data.patients['alice']}")
    mine = data.obs(patient="alice")

    assert ids(alice.sort("-date").fetch()) == by_date(data, mine, descending=True)
    assert ("_sort", "-date") in log.last_query
    assert ids(alice.sort("date").fetch()) == by_date(data, mine)
    # two keys: the code first (29463-7 < 8867-4 as strings), newest first within a code
    both = alice.sort("code", "-date").fetch()
    assert ("_sort", "code,-date") in log.last_query
    weights = by_date(data, data.obs(patient="alice", code=BODY_WEIGHT), descending=True)
    beats = by_date(data, data.obs(patient="alice", code=HEART_RATE), descending=True)
    assert ids(both) == weights + beats
    # a string sort on patients
    families = fhir.resources("Patient").sort("family").fetch()
    assert ids(families) == [data.patients[k] for k in ("alice", "carol", "dave", "bob")]


def test_limit_first_and_get(fhir: SyncFHIRClient, data: Data, log: RequestLog) -> None:
    observations = fhir.resources("Observation")
    everything = by_date(data, data.obs())

    assert ids(observations.sort("date").limit(3).fetch()) == everything[:3]
    assert ("_count", "3") in log.last_query
    latest = observations.sort("-date").first()
    assert ("_count", "1") in log.last_query
    assert latest is not None
    assert latest.id == everything[-1]
    assert latest["valueQuantity"]["value"] == data.observations[-1].value
    assert observations.search(code="no-such-code").first() is None

    bob = fhir.resources("Patient").search(name="Okafor").get()
    assert bob.id == data.patients["bob"]
    with pytest.raises(MultipleResourcesFound):
        fhir.resources("Patient").search(name="Lindqvist").get()
    with pytest.raises(ResourceNotFound):
        fhir.resources("Patient").search(name="Nobody").get()


def test_count_and_total(fhir: SyncFHIRClient, data: Data, log: RequestLog) -> None:
    observations = fhir.resources("Observation")

    assert observations.search(code=f"{LOINC}|{HEART_RATE}").count() == 12
    assert ("_count", "0") in log.last_query  # fhirpy's count(): _count=0&_totalMethod=count
    # what count() gets: the total, no match, and a warning that _totalMethod was ignored
    raw = (observations.search(code=f"{LOINC}|{HEART_RATE}")
           .clone(override=True, _count=0, _totalMethod="count").fetch_raw())
    assert raw["total"] == 12
    assert split_entries(raw) == {"outcome": [("OperationOutcome", "")]}
    assert "_totalMethod" in str(raw["entry"][0]["resource"]["issue"])
    assert observations.count() == N_OBSERVATIONS
    assert observations.search(subject=f"Patient/{data.patients['dave']}").count() == 0
    assert fhir.resources("Patient").search(name="Lindqvist").count() == 2

    summary = observations.search(_summary="count", code=BODY_WEIGHT).fetch_raw()
    assert ("_summary", "count") in log.last_query
    assert summary["total"] == 9
    assert "match" not in split_entries(summary)

    accurate = observations.search(_total="accurate").limit(2).fetch_raw()
    assert accurate["total"] == N_OBSERVATIONS
    assert len(split_entries(accurate)["match"]) == 2
    assert "total" not in observations.search(_total="none").limit(2).fetch_raw()


# ------------------------------------------------------------------------------ paging


def _cursor_pages(log: RequestLog) -> list[str]:
    return [url for url in log.urls if "_cursor=" in url]


def test_fetch_all_follows_next_links_each_resource_once(
    fhir: SyncFHIRClient, data: Data, log: RequestLog
) -> None:
    observations = fhir.resources("Observation")

    log.clear()
    in_date_order = observations.sort("date").limit(4).fetch_all()
    assert ids(in_date_order) == by_date(data, data.obs())  # 21 in order, each once
    assert len(log.urls) == 6  # 4 + 4 + 4 + 4 + 4 + 1: the last page has no next link
    assert len(_cursor_pages(log)) == 5
    assert all(r.status_code == 200 for r in log.responses)

    # the server's default order (no _sort), a page size that divides the total exactly
    log.clear()
    unsorted = observations.limit(7).fetch_all()
    assert len(unsorted) == N_OBSERVATIONS
    assert id_set(unsorted) == data.obs()
    assert len(log.urls) == 3  # a full last page carries no next link

    # a filtered search, newest first, with the includes the client drops
    log.clear()
    heart = (observations.search(code=f"{LOINC}|{HEART_RATE}").include("Observation", "subject")
             .sort("-date").limit(5).fetch_all())
    assert ids(heart) == by_date(data, data.obs(code=HEART_RATE), descending=True)
    assert len(log.urls) == 3
    # the next links keep every parameter of the search
    for url in _cursor_pages(log):
        query = parse_qsl(urlsplit(url).query)
        assert ("code", f"{LOINC}|{HEART_RATE}") in query
        assert ("_include", "Observation:subject") in query
        assert ("_sort", "-date") in query
        assert ("_count", "5") in query

    # iterating the search set is the same walk
    assert [o.id for o in observations.sort("date").limit(4)] == ids(in_date_order)


def _link(bundle: Any, relation: str) -> str | None:
    urls = [link["url"] for link in bundle.get("link", []) if link["relation"] == relation]
    assert len(urls) <= 1, f"several {relation!r} links: {urls}"
    return urls[0] if urls else None


def test_pages_carry_their_own_includes_and_previous_links(
    fhir: SyncFHIRClient, data: Data, server: ServerProcess
) -> None:
    searchset = (fhir.resources("Observation").include("Observation", "subject")
                 .sort("date").limit(6))
    pages = [searchset.fetch_raw()]
    while (url := _link(pages[-1], "next")) is not None:
        assert len(pages) < 20, "the next links do not end"
        assert url.startswith(server.base_url + "/Observation?")
        pages.append(fhir.execute(url, method="get"))

    assert len(pages) == 4
    matches = [split_entries(page)["match"] for page in pages]
    assert [len(m) for m in matches] == [6, 6, 6, 3]
    assert [i for m in matches for _, i in m] == by_date(data, data.obs())
    by_id = {o.id: o for o in data.observations}
    for page, page_matches in zip(pages, matches, strict=True):
        subjects = {("Patient", data.patients[by_id[i].patient]) for _, i in page_matches}
        assert sorted(split_entries(page)["include"]) == sorted(subjects)

    # previous from page 3 gives page 2 back; page 1 has no previous link
    assert _link(pages[0], "previous") is None
    previous = _link(pages[2], "previous")
    assert previous is not None
    back = fhir.execute(previous, method="get")
    assert split_entries(back)["match"] == matches[1]
    assert sorted(split_entries(back)["include"]) == sorted(split_entries(pages[1])["include"])
    nxt = _link(back, "next")
    assert nxt is not None
    assert split_entries(fhir.execute(nxt, method="get"))["match"] == matches[2]
