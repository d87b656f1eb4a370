"""FHIR search over REST on both backends: every parameter type, modifier and prefix at its edges.

One small hand-made fixture set (below) is PUT with fixed ids and a fixed clock, once per backend
for the whole module; each case names a search and the exact set of ids it must match. Expected
results are worked out from http://hl7.org/fhir/R4/search.html; the comment on a case says which
rule decides it where the answer is not obvious.

Prefix rules used for dates (search.html#prefix, "the range of the search value" vs "the range of
the target value"): ``eq`` the search range contains the target range; ``gt`` the target reaches
past the end of the search range; ``lt`` it starts before the start; ``ge``/``le`` are those or
``eq``; ``sa``/``eb`` the target lies wholly after/before the search range. Numbers and
quantities compare the stored value with the search value's implicit range (search.html#number:
``100`` is ``[99.5, 100.5)``; ``gt100`` is "greater than exactly 100").
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from starlette.testclient import TestClient

from carebridge.api import create_api
from carebridge.search import planner
from carebridge.services import ResourceService
from carebridge.storage import open_repository

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
OBS_STATUS = "http://hl7.org/fhir/observation-status"
GENDER_VS = "http://hl7.org/fhir/ValueSet/administrative-gender"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
TAGS = "http://example.org/tags"
VIP_PROFILE = "http://example.org/fhir/StructureDefinition/vip-patient"


# ----------------------------------------------------------------------------- fixture set


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [coding(system, code, display)]}


def ref(target: str) -> dict[str, str]:
    return {"reference": target}


def quantity(value: float, code: str) -> dict[str, Any]:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


def identifier(system: str | None, value: str, type_code: str | None = None,
               type_text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"value": value}
    if system:
        out["system"] = system
    if type_code:
        out["type"] = concept(V2_0203, type_code)
        if type_text:
            out["type"]["text"] = type_text
    return out


def observation(oid: str, code: str, display: str, subject: str | None,
                **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Observation", "id": oid,
                            "status": extra.pop("status", "final"),
                            "code": concept(LOINC, code, display)}
    if subject is not None:
        body["subject"] = ref(subject)
    body.update(extra)
    return body


def bp(systolic: float, diastolic: float) -> list[dict[str, Any]]:
    return [
        {"code": concept(LOINC, "8480-6", "Systolic blood pressure"),
         "valueQuantity": quantity(systolic, "mm[Hg]")},
        {"code": concept(LOINC, "8462-4", "Diastolic blood pressure"),
         "valueQuantity": quantity(diastolic, "mm[Hg]")},
    ]


VITAL = [concept(CATEGORY, "vital-signs")]
LAB = [concept(CATEGORY, "laboratory")]

# (day of the fixed clock, resource); the clock sets meta.lastUpdated, for _lastUpdated cases.
FIXTURES: list[tuple[str, dict[str, Any]]] = [
    ("2024-06-01", {"resourceType": "Organization", "id": "org-parent", "name": "Gamma Group"}),
    ("2024-06-01", {"resourceType": "Organization", "id": "org1", "name": "Acme Health",
                    "partOf": ref("Organization/org-parent")}),
    ("2024-06-01", {"resourceType": "Organization", "id": "org2", "name": "Beta Clinic"}),
    ("2024-06-01", {"resourceType": "Practitioner", "id": "pr1",
                    "name": [{"family": "Smith", "given": ["Anna"]}], "gender": "female"}),
    ("2024-06-01", {"resourceType": "Practitioner", "id": "pr2",
                    "name": [{"family": "Jones", "given": ["Bob"]}]}),
    ("2024-06-02", {
        "resourceType": "Patient", "id": "p1",
        "meta": {"tag": [coding(TAGS, "vip")], "security": [coding(CONFIDENTIALITY, "R")],
                 "profile": [VIP_PROFILE], "source": "http://example.org/source/ehr#abc"},
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">"
                                               "Zoë Müller</div>"},
        "identifier": [identifier("urn:mrn", "12345", "MR", "Medical record number"),
                       identifier("urn:ssn", "999-00")],
        "active": True,
        "name": [{"family": "Müller", "given": ["Zoë"]}],
        "gender": "female", "birthDate": "1980-05-15",
        "address": [{"city": "Springfield"}],
        "managingOrganization": ref("Organization/org1"),
        "generalPractitioner": [ref("Practitioner/pr1")],
    }),
    ("2024-06-02", {
        "resourceType": "Patient", "id": "p2",
        "identifier": [identifier("urn:mrn", "67890", "MR")], "active": False,
        "name": [{"family": "Muller", "given": ["Max"]}], "gender": "male", "birthDate": "1975",
        "managingOrganization": ref("Organization/org2"),
        "generalPractitioner": [ref("Practitioner/pr2")],
    }),
    ("2024-06-02", {
        "resourceType": "Patient", "id": "p3", "meta": {"tag": [coding(TAGS, "test")]},
        "identifier": [identifier("urn:dl", "12345", "DL")],
        "name": [{"family": "Smithson", "given": ["Anna"]}], "gender": "other",
        "birthDate": "1990-01", "generalPractitioner": [ref("Practitioner/pr1")],
    }),
    ("2024-06-02", {
        "resourceType": "Patient", "id": "p4",
        "identifier": [identifier(None, "X1"), identifier(None, "A,B")],
        "name": [{"family": "Lee, Jr", "given": ["Chris"]}],
    }),
    # p5 is updated (Oldname -> Newname) and p6 deleted after loading: see `loaded`.
    ("2024-06-02", {"resourceType": "Patient", "id": "p5", "name": [{"family": "Oldname"}],
                    "gender": "male", "birthDate": "2000-02-29"}),
    ("2024-06-02", {"resourceType": "Patient", "id": "p6", "name": [{"family": "Deleted"}],
                    "gender": "female"}),
    ("2024-06-03", {"resourceType": "Encounter", "id": "e1", "status": "finished",
                    "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB"),
                    "subject": ref("Patient/p1"),
                    "period": {"start": "2024-01-10T08:00:00Z", "end": "2024-01-12T17:00:00Z"},
                    "serviceProvider": ref("Organization/org1"),
                    "participant": [{"individual": ref("Practitioner/pr1")}]}),
    ("2024-06-03", {"resourceType": "Encounter", "id": "e2", "status": "in-progress",
                    "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "IMP"),
                    "subject": ref("Patient/p2"), "period": {"start": "2024-02-01T10:00:00Z"}}),
    ("2024-06-03", {"resourceType": "Encounter", "id": "e3", "status": "finished",
                    "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "EMER"),
                    "subject": ref("Patient/p3"),
                    "period": {"start": "2023-12-31T22:00:00Z", "end": "2024-01-01T02:00:00Z"}}),
    ("2024-06-03", {"resourceType": "Encounter", "id": "e4", "status": "planned",
                    "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB"),
                    "subject": ref("Patient/p1")}),
    ("2024-06-03", observation(
        "o1", "29463-7", "Body weight", "Patient/p1", category=VITAL,
        encounter=ref("Encounter/e1"), performer=[ref("Practitioner/pr1")],
        effectiveDateTime="2024-01-10T08:30:00Z", valueQuantity=quantity(70, "kg"))),
    ("2024-06-03", observation(
        "o2", "8310-5", "Body temperature", "Patient/p1", category=VITAL, status="amended",
        effectiveDateTime="2024-01-10T09:00:00+02:00", valueQuantity=quantity(37.0, "Cel"))),
    ("2024-06-03", observation(
        "o3", "8310-5", "Body temperature", "Patient/p2", category=VITAL, status="corrected",
        effectiveDateTime="2024-01-11", valueQuantity=quantity(98.6, "[degF]"))),
    ("2024-06-03", observation(
        "o4", "2339-0", "Glucose", "Patient/p2", category=LAB,
        effectivePeriod={"start": "2024-01-12T10:00:00Z", "end": "2024-01-12T11:00:00Z"},
        valueQuantity=quantity(5.4, "mg"))),
    ("2024-06-03", observation(
        "o5", "2339-0", "Glucose", "Patient/p3", category=LAB,
        effectiveDateTime="2024-02-01", valueQuantity=quantity(0.0054, "g"))),
    ("2024-06-03", observation(
        "o6", "8867-4", "Heart rate", "Patient/p1", category=VITAL,
        effectiveDateTime="2023-12-31T23:59:59Z", valueQuantity=quantity(100, "/min"))),
    ("2024-06-03", observation(
        "o7", "8867-4", "Heart rate", "Patient/p2", category=VITAL,
        effectiveDateTime="2024", valueQuantity=quantity(100.4, "/min"))),
    ("2024-06-03", observation(
        "o8", "8867-4", "Heart rate", "Patient/p3", category=VITAL, status="preliminary",
        valueQuantity=quantity(99.5, "/min"))),
    ("2024-06-03", observation(
        "o9", "8867-4", "Heart rate", "Patient/p3", category=VITAL,
        effectiveDateTime="2024-03", valueQuantity=quantity(100.5, "/min"))),
    ("2024-06-03", observation(
        "o10", "85354-9", "Blood pressure panel", "Patient/p1", category=VITAL,
        performer=[ref("Practitioner/pr2")], effectiveDateTime="2024-01-10T08:35:00Z",
        component=bp(120, 80))),
    ("2024-06-03", observation(
        "o11", "85354-9", "Blood pressure panel", "Patient/p2", category=VITAL,
        component=bp(95, 60))),
    ("2024-06-03", observation(
        "o12", "29463-7", "Body weight", "http://other.example.org/fhir/Patient/ext1",
        valueQuantity=quantity(150, "[lb_av]"))),
    ("2024-06-03", {"resourceType": "Observation", "id": "o13", "status": "final",
                    "code": concept(LOINC, "2339-0", "Glucose"),
                    "subject": {"identifier": {"system": "urn:mrn", "value": "12345"}},
                    "valueString": "positive"}),
    ("2024-06-03", {"resourceType": "Observation", "id": "o14", "status": "final",
                    "code": {"coding": [coding("http://acme.org/codes", "HR-1")],
                             "text": "Heart rate (device)"}}),
    ("2024-06-04", {"resourceType": "Condition", "id": "c1", "subject": ref("Patient/p1"),
                    "clinicalStatus": concept(CLINICAL, "active"),
                    "code": concept(SNOMED, "44054006", "Diabetes mellitus type 2"),
                    "encounter": ref("Encounter/e1"), "onsetDateTime": "2015-03"}),
    ("2024-06-04", {"resourceType": "Condition", "id": "c2", "subject": ref("Patient/p2"),
                    "clinicalStatus": concept(CLINICAL, "relapse"),
                    "code": concept(SNOMED, "38341003", "Hypertension"),
                    "onsetDateTime": "2019"}),
    ("2024-06-04", {"resourceType": "Condition", "id": "c3", "subject": ref("Patient/p3"),
                    "clinicalStatus": concept(CLINICAL, "resolved"),
                    "code": {"coding": [coding("http://hl7.org/fhir/sid/icd-10", "E11.9")],
                             "text": "Type 2 diabetes"}}),
    ("2024-06-04", {"resourceType": "Condition", "id": "c4", "subject": ref("Patient/p1"),
                    "clinicalStatus": concept(CLINICAL, "inactive"),
                    "code": {"text": "Headache"}}),
    ("2024-06-04", {"resourceType": "RiskAssessment", "id": "ra1", "status": "final",
                    "subject": ref("Patient/p1"), "prediction": [{"probabilityDecimal": 0.25}]}),
    ("2024-06-04", {"resourceType": "RiskAssessment", "id": "ra2", "status": "final",
                    "subject": ref("Patient/p2"), "prediction": [{"probabilityDecimal": 0.3}]}),
    ("2024-06-04", {"resourceType": "RiskAssessment", "id": "ra3", "status": "final",
                    "subject": ref("Patient/p3")}),
    ("2024-06-04", {"resourceType": "RiskAssessment", "id": "ra4", "status": "final",
                    "subject": ref("Patient/p2"), "prediction": [{"probabilityDecimal": 0.35}]}),
    ("2024-06-04", {"resourceType": "ValueSet", "id": "vs1", "status": "active",
                    "url": "http://example.org/fhir/ValueSet/vitals"}),
    ("2024-06-04", {"resourceType": "ValueSet", "id": "vs2", "status": "active",
                    "url": "http://example.org/fhir/ValueSet/vitals/adult"}),
    ("2024-06-04", {"resourceType": "ValueSet", "id": "vs3", "status": "active",
                    "url": "http://example.org/fhir/ValueSet/labs"}),
    ("2024-06-04", {"resourceType": "ValueSet", "id": "vs4", "status": "active",
                    "url": "urn:oid:1.2.3.4"}),
    ("2024-06-04", {"resourceType": "ValueSet", "id": "vs5", "status": "draft"}),
    ("2024-06-04", {"resourceType": "List", "id": "list1", "status": "current", "mode": "working",
                    "title": "Ward round",
                    "entry": [{"item": ref(t)} for t in ("Patient/p1", "Patient/p3",
                                                         "Observation/o1", "Patient/p6")]}),
    ("2024-06-04", {"resourceType": "Provenance", "id": "prov1",
                    "target": [ref("Observation/o1"), ref("Observation/o2")],
                    "recorded": "2024-01-10T10:00:00Z",
                    "agent": [{"who": ref("Practitioner/pr1")}]}),
    ("2024-06-04", {"resourceType": "Provenance", "id": "prov2", "target": [ref("Patient/p2")],
                    "recorded": "2024-01-11T10:00:00Z",
                    "agent": [{"who": ref("Practitioner/pr2")}]}),
]

ALL_OBSERVATIONS = {f"o{n}" for n in range(1, 15)}
LIVE_PATIENTS = {"p1", "p2", "p3", "p4", "p5"}


class Clock:
    """The service's clock: meta.lastUpdated of each write, set by the loader."""

    def __init__(self) -> None:
        self.moment = datetime(2024, 6, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.moment += timedelta(seconds=1)
        return self.moment

    def day(self, text: str) -> None:
        start = datetime.fromisoformat(text).replace(tzinfo=UTC)
        self.moment = max(self.moment, start + timedelta(hours=8))


def _load(client: TestClient, clock: Clock) -> None:
    for day, body in FIXTURES:
        clock.day(day)
        response = client.put(f"/fhir/{body['resourceType']}/{body['id']}", json=body)
        assert response.status_code in (200, 201), response.text
    clock.day("2024-06-05")
    updated = {"resourceType": "Patient", "id": "p5", "name": [{"family": "Newname"}],
               "gender": "male", "birthDate": "2000-02-29"}
    assert client.put("/fhir/Patient/p5", json=updated).status_code == 200
    assert client.delete("/fhir/Patient/p6").status_code == 204


@pytest.fixture(scope="module", autouse=True, params=["planned", "walked"])
def plan(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every case runs under both plans of search.planner: as planned (on this small set a
    criterion always leads), and with no criterion ever leading (``cap`` 0), so the index
    walks and per-row checks that large databases use must give the same answers."""
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "walked":
            patch.setattr(planner, "DEFAULT_CAP", 0)
        yield request.param


@pytest.fixture(scope="module")
def fhir(module_database_url: str) -> Iterator[TestClient]:
    """A client over a server holding the fixture set, one per backend for the module."""
    repository = open_repository(module_database_url)
    clock = Clock()
    service = ResourceService(repository, clock=clock)
    try:
        with TestClient(create_api(service), raise_server_exceptions=False) as client:
            _load(client, clock)
            yield client
    finally:
        repository.close()


# ----------------------------------------------------------------------------- helpers


def bundle_of(client: TestClient, url: str, **kwargs: Any) -> dict[str, Any]:
    response = client.get(f"/fhir{url}" if url.startswith("?") else f"/fhir/{url}", **kwargs)
    assert response.status_code == 200, response.text
    bundle: dict[str, Any] = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return bundle


def entries(bundle: dict[str, Any], mode: str = "match") -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def keys(resources: list[dict[str, Any]]) -> list[str]:
    return [f"{r['resourceType']}/{r['id']}" for r in resources]


def found(client: TestClient, url: str) -> set[str]:
    """The ids a search matches (all on one page), checking the total agrees."""
    sep = "&" if "?" in url else "?"
    bundle = bundle_of(client, f"{url}{sep}_count=100")
    assert not [link for link in bundle["link"] if link["relation"] == "next"]
    matches = entries(bundle)
    assert bundle.get("total", len(matches)) == len(matches)
    ids = [r["id"] for r in matches]
    assert len(ids) == len(set(ids)), f"duplicates in {ids}"
    return set(ids)


def outcome_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body


def names_parameter(outcome: dict[str, Any], name: str) -> bool:
    return any(name in issue.get("diagnostics", "") or name in issue.get("expression", [])
               for issue in outcome["issue"])


def link(bundle: dict[str, Any], relation: str) -> str | None:
    for item in bundle["link"]:
        if item["relation"] == relation:
            url: str = item["url"]
            return url
    return None


def relative(url: str) -> str:
    """``http://testserver/fhir/Patient?x=1`` -> ``Patient?x=1`` (for :func:`bundle_of`)."""
    parts = urlsplit(url)
    path = parts.path.removeprefix("/fhir").removeprefix("/")
    return path + (f"?{parts.query}" if parts.query else "")


def case(url: str, *ids: str) -> Any:
    return pytest.param(url, set(ids), id=url)


def check(client: TestClient, url: str, expected: set[str]) -> None:
    assert found(client, url) == expected


# ----------------------------------------------------------------------------- string

STRING = [
    # default: starts with, case- and accent-insensitive (search.html#string)
    case("Patient?family=muller", "p1", "p2"),
    case("Patient?family=MÜLLER", "p1", "p2"),
    case("Patient?family=mül", "p1", "p2"),
    case("Patient?family=son"),  # not a prefix of Smithson
    case("Patient?given=zoe", "p1"),
    case("Patient?given=ZOË", "p1"),
    case("Patient?name=smith", "p3"),
    case("Practitioner?name=smith", "pr1"),
    case("Patient?address-city=springfield", "p1"),
    case("Patient?address=SPRING", "p1"),
    # :exact is case- and accent-sensitive, whole string
    case("Patient?family:exact=Müller", "p1"),
    case("Patient?family:exact=Muller", "p2"),
    case("Patient?family:exact=müller"),
    case("Patient?family:exact=Mülle"),
    # :contains anywhere, insensitive
    case("Patient?family:contains=ULL", "p1", "p2"),
    case("Patient?family:contains=son", "p3"),
    case("Patient?family:contains=%25"),  # a literal %, not a wildcard
    case("Patient?family:contains=_"),
    # escaped comma is part of the value; a plain comma separates OR-ed values
    case("Patient?family:exact=Lee\\, Jr", "p4"),
    case("Patient?family:exact=Lee,Jr"),
    case("Patient?family=lee\\,", "p4"),
    case("Patient?family=smithson,lee", "p3", "p4"),
    # updates replace index rows; deleted resources never match
    case("Patient?family=oldname"),
    case("Patient?family=newname", "p5"),
    case("Patient?family=deleted"),
    case("List?title=ward", "list1"),
]


@pytest.mark.parametrize(("url", "expected"), STRING)
def test_string(fhir: TestClient, url: str, expected: set[str]) -> None:
    check(fhir, url, expected)


# ----------------------------------------------------------------------------- token

TOKEN = [
    case("Patient?gender=female", "p1"),  # p6 is female but deleted
    case("Patient?gender=http://hl7.org/fhir/administrative-gender|male", "p2", "p5"),
    case("Patient?gender=|male"),  # the code has a system (the bound code system)
    case("Patient?gender=male,other", "p2", "p3", "p5"),
    # :not includes resources without a value (search.html#token)
    case("Patient?gender:not=male", "p1", "p3", "p4"),
    case(f"Patient?gender:in={GENDER_VS}", "p1", "p2", "p3", "p5"),
    case(f"Patient?gender:not-in={GENDER_VS}", "p4"),
    case("Patient?identifier=12345", "p1", "p3"),
    case("Patient?identifier=urn:mrn|12345", "p1"),
    case("Patient?identifier=urn:mrn|", "p1", "p2"),
    case("Patient?identifier=|X1", "p4"),
    case("Patient?identifier=X1", "p4"),
    case("Patient?identifier=urn:mrn|X1"),
    case("Patient?identifier=A\\,B", "p4"),
    case("Patient?identifier=A,B"),
    case(f"Patient?identifier:of-type={V2_0203}|MR|12345", "p1"),
    case(f"Patient?identifier:of-type={V2_0203}|DL|12345", "p3"),
    case(f"Patient?identifier:of-type={V2_0203}|MR|67890", "p2"),
    case(f"Patient?identifier:of-type={V2_0203}|DL|67890"),
    case("Patient?identifier:text=medical rec", "p1"),
    case("Patient?active=true", "p1"),
    case("Patient?active=false", "p2"),
    case(f"Observation?code={LOINC}|8310-5", "o2", "o3"),
    case("Observation?code=8310-5,8867-4", "o2", "o3", "o6", "o7", "o8", "o9"),
    case(f"Observation?code={LOINC}|", *sorted(ALL_OBSERVATIONS - {"o14"})),
    case(f"Observation?code:not={LOINC}|8310-5", *sorted(ALL_OBSERVATIONS - {"o2", "o3"})),
    case("Observation?code:text=heart rate (dev", "o14"),  # CodeableConcept.text
    case("Observation?code:text=BODY TEMP", "o2", "o3"),  # Coding.display
    case("Condition?code:text=diabetes mel", "c1"),
    case("Condition?code:text=type 2 diab", "c3"),
    case("Condition?code:text=headache", "c4"),
    case(f"Observation?category={CATEGORY}|laboratory", "o4", "o5"),
    # :below/:above in a vendored hierarchical code system
    case(f"Condition?clinical-status={CLINICAL}|active", "c1"),
    case(f"Condition?clinical-status:below={CLINICAL}|active", "c1", "c2"),
    case(f"Condition?clinical-status:below={CLINICAL}|inactive", "c3", "c4"),
    case(f"Condition?clinical-status:above={CLINICAL}|relapse", "c1", "c2"),
    case(f"Observation?status:below={OBS_STATUS}|amended", "o2", "o3"),
    case(f"Observation?status:above={OBS_STATUS}|corrected", "o2", "o3"),
    case("Observation?status=preliminary", "o8"),
    case("Patient?_id=p1,p3", "p1", "p3"),
    case("Patient?_id=p6"),
    case("Patient?_id:not=p1", "p2", "p3", "p4", "p5"),
    case(f"Patient?_tag={TAGS}|vip", "p1"),
    case("Patient?_tag=test", "p3"),
    case(f"Patient?_tag:not={TAGS}|vip", "p2", "p3", "p4", "p5"),
    case(f"Patient?_security={CONFIDENTIALITY}|R", "p1"),
    case(f"Patient?_security={CONFIDENTIALITY}|N"),
]


@pytest.mark.parametrize(("url", "expected"), TOKEN)
def test_token(fhir: TestClient, url: str, expected: set[str]) -> None:
    check(fhir, url, expected)


# ----------------------------------------------------------------------------- date

DATE = [
    # precision: year, month, day, second; a stored year is a whole-year range
    case("Patient?birthdate=1980", "p1"),
    case("Patient?birthdate=1980-05", "p1"),
    case("Patient?birthdate=1980-05-15", "p1"),
    case("Patient?birthdate=1980-05-16"),
    case("Patient?birthdate=1975", "p2"),
    case("Patient?birthdate=1975-06"),  # June does not contain the whole of 1975
    case("Patient?birthdate=ne1975-06", "p1", "p2", "p3", "p5"),
    case("Patient?birthdate=2000-02-29", "p5"),
    case("Patient?birthdate=lt1980-05-15", "p2"),
    case("Patient?birthdate=le1980-05-15", "p1", "p2"),
    case("Patient?birthdate=gt1980-05-15", "p3", "p5"),
    case("Patient?birthdate=ge1980-05-15", "p1", "p3", "p5"),
    case("Patient?birthdate=sa1990", "p5"),
    case("Patient?birthdate=eb1980", "p2"),
    case("Observation?date=2024-01-10T08:30:00Z", "o1"),
    case("Observation?date=2024-01-10T08:30:01Z"),
    case("Observation?date=2024-01-10T09:00:00%2B02:00", "o2"),  # the same instant as 07:00Z
    case("Observation?date=2024-01-10T07:00:00Z", "o2"),
    case("Observation?date=2024-01-10", "o1", "o2", "o10"),
    case("Observation?date=2024-01", "o1", "o2", "o3", "o4", "o10"),
    case("Observation?date=2024", "o1", "o2", "o3", "o4", "o5", "o7", "o9", "o10"),
    case("Observation?date=gt2024-01-10T08:30:00Z", "o3", "o4", "o5", "o7", "o9", "o10"),
    case("Observation?date=ge2024-01-10T08:30:00Z", "o1", "o3", "o4", "o5", "o7", "o9", "o10"),
    case("Observation?date=lt2024-01-10T08:30:00Z", "o2", "o6", "o7"),
    case("Observation?date=le2024-01-10T08:30:00Z", "o1", "o2", "o6", "o7"),
    case("Observation?date=eb2024", "o6"),
    case("Observation?date=sa2023", "o1", "o2", "o3", "o4", "o5", "o7", "o9", "o10"),
    case("Observation?date=sa2024-01-12", "o5", "o9"),  # o4 is on the 12th: not after it
    case("Observation?date=eb2024-01-12", "o1", "o2", "o3", "o6", "o10"),
    # AND of repeated parameters: a range
    case("Observation?date=ge2024-01-10&date=lt2024-01-11", "o1", "o2", "o7", "o10"),
    # Period edges: e1 2024-01-10T08:00Z..2024-01-12T17:00Z, e2 from 2024-02-01 (open),
    # e3 2023-12-31T22:00Z..2024-01-01T02:00Z (across the year), e4 no period
    case("Encounter?date=2024-01", "e1"),
    case("Encounter?date=2024", "e1"),  # e2 has no end: not contained in 2024
    case("Encounter?date=2024-01-10"),  # e1 spans three days
    case("Encounter?date=ne2024-01", "e2", "e3"),
    case("Encounter?date=gt2024-01-11", "e1", "e2"),
    case("Encounter?date=lt2024-01-11", "e1", "e3"),
    case("Encounter?date=ge2024-01-12", "e2"),  # e1 ends on the 12th: nothing after it
    case("Encounter?date=le2024-01-10", "e3"),  # e1 starts on the 10th: nothing before it
    case("Encounter?date=sa2024-01-09", "e1", "e2"),
    case("Encounter?date=sa2024-01-10", "e2"),
    case("Encounter?date=eb2024-01-13", "e1", "e3"),
    case("Encounter?date=eb2024-01-12", "e3"),
    case("Encounter?date=gt2023", "e1", "e2", "e3"),
    case("Encounter?date=lt2024", "e3"),
    case("Encounter?date=2023"),
    case("Encounter?date=gt2090", "e2"),  # an open end is ongoing
    # ap: the range widened by 10 % of its distance from now (at least months by now)
    case("Encounter?date=ap2024-01-11", "e1", "e2", "e3"),
    case("Condition?onset-date=2015", "c1"),
    case("Provenance?recorded=2024-01-10T10:00:00Z", "prov1"),
    # _lastUpdated from the fixed clock (p5 was updated on the 5th)
    case("Patient?_lastUpdated=2024-06-02", "p1", "p2", "p3", "p4"),
    case("Patient?_lastUpdated=gt2024-06-02", "p5"),
    case("Patient?_lastUpdated=lt2024-06-02"),
]


@pytest.mark.parametrize(("url", "expected"), DATE)
def test_date(fhir: TestClient, url: str, expected: set[str]) -> None:
    check(fhir, url, expected)


# ----------------------------------------------------------------------------- number

NUMBER = [
    # RiskAssessment.prediction.probability: ra1 0.25, ra2 0.3, ra4 0.35, ra3 none
    case("RiskAssessment?probability=0.3", "ra1", "ra2"),  # [0.25, 0.35)
    case("RiskAssessment?probability=0.30", "ra2"),  # [0.295, 0.305)
    case("RiskAssessment?probability=0.25", "ra1"),
    case("RiskAssessment?probability=gt0.25", "ra2", "ra4"),
    case("RiskAssessment?probability=ge0.25", "ra1", "ra2", "ra4"),
    case("RiskAssessment?probability=lt0.3", "ra1"),
    case("RiskAssessment?probability=le0.3", "ra1", "ra2"),
    case("RiskAssessment?probability=ne0.3", "ra4"),
    # sa/eb: outside the search value's implicit range, above/below it
    case("RiskAssessment?probability=sa0.3", "ra4"),
    case("RiskAssessment?probability=eb0.3"),
    case("RiskAssessment?probability=eb0.35", "ra1", "ra2"),
    case("RiskAssessment?probability=ap0.3", "ra2"),  # within 10 %
    case("RiskAssessment?probability=0.25,0.35", "ra1", "ra4"),
]


@pytest.mark.parametrize(("url", "expected"), NUMBER)
def test_number(fhir: TestClient, url: str, expected: set[str]) -> None:
    check(fhir, url, expected)


# ----------------------------------------------------------------------------- quantity

QUANTITY = [
    # heart rates o6 100, o7 100.4, o8 99.5, o9 100.5 /min; o12 150 [lb_av]
    case("Observation?value-quantity=100", "o6", "o7", "o8"),  # [99.5, 100.5)
    case("Observation?value-quantity=100.0", "o6"),  # [99.95, 100.05)
    case("Observation?value-quantity=gt100", "o7", "o9", "o12"),
    case("Observation?value-quantity=ge100", "o6", "o7", "o9", "o12"),
    case("Observation?value-quantity=lt100", "o1", "o2", "o3", "o4", "o5", "o8"),
    case("Observation?value-quantity=le100", "o1", "o2", "o3", "o4", "o5", "o6", "o8"),
    case("Observation?value-quantity=ne100", "o1", "o2", "o3", "o4", "o5", "o9", "o12"),
    case("Observation?value-quantity=sa100", "o9", "o12"),
    case("Observation?value-quantity=eb100", "o1", "o2", "o3", "o4", "o5"),
    case("Observation?value-quantity=ap100", "o3", "o6", "o7", "o8", "o9"),  # 98.6 [degF] too
    case(f"Observation?value-quantity=100|{UCUM}|/min", "o6", "o7", "o8"),
    # units: canonical UCUM, 5.4 mg = 0.0054 g, 98.6 [degF] = 37 Cel, 150 [lb_av] = 68.04 kg
    case(f"Observation?value-quantity=5.4|{UCUM}|mg", "o4", "o5"),
    case(f"Observation?value-quantity=0.0054|{UCUM}|g", "o4", "o5"),
    case(f"Observation?value-quantity=5400|{UCUM}|ug", "o4", "o5"),
    case(f"Observation?value-quantity=37|{UCUM}|Cel", "o2", "o3"),
    case(f"Observation?value-quantity=37.0|{UCUM}|Cel", "o2", "o3"),
    case(f"Observation?value-quantity=lt99|{UCUM}|[degF]", "o2", "o3"),
    case(f"Observation?value-quantity=gt99|{UCUM}|[degF]"),
    case(f"Observation?value-quantity=68|{UCUM}|kg", "o12"),
    case(f"Observation?value-quantity=70|{UCUM}|kg", "o1"),
    case(f"Observation?value-quantity=gt69|{UCUM}|kg", "o1"),
    case(f"Observation?value-quantity=150|{UCUM}|[lb_av]", "o12"),
    case(f"Observation?value-quantity=5.4|{UCUM}|mL"),  # another dimension
    case("Observation?value-quantity=5.4|http://example.org/units|mg"),  # another system
    case("Encounter?length:missing=false"),
]


@pytest.mark.parametrize(("url", "expected"), QUANTITY)
def test_quantity(fhir: TestClient, url: str, expected: set[str]) -> None:
    check(fhir, url, expected)


# ----------------------------------------------------------------------------- reference

P1_OBSERVATIONS = ("o1", "o2", "o6", "o10")

REFERENCE = [
    case("Observation?subject=Patient/p1", *P1_OBSERVATIONS),
    case("Observation?subject=p1", *P1_OBSERVATIONS),
    case("Observation?subject:Patient=p1", *P1_OBSERVATIONS),
    case("Observation?subject:Group=p1"),
    case("Observation?subject:Group=Patient/p1"),  # the modifier and the type disagree
    case("Observation?subject=Patient/p1/_history/1", *P1_OBSERVATIONS),
    case("Observation?patient=Patient/p1", *P1_OBSERVATIONS),
    case("Observation?subject=Patient/p1,Patient/p3", *P1_OBSERVATIONS, "o5", "o8", "o9"),
    case("Observation?subject=http://other.example.org/fhir/Patient/ext1", "o12"),
    case("Observation?subject:identifier=urn:mrn|12345", "o13"),
    case("Observation?subject:identifier=12345", "o13"),
    case("Observation?subject:identifier=urn:other|12345"),
    case("Observation?performer=Practitioner/pr1", "o1"),
    case("Observation?performer:Practitioner=pr2", "o10"),
    case("Observation?encounter=e1", "o1"),
    case("Encounter?service-provider=Organization/org1", "e1"),
    case("List?item=Patient/p1", "list1"),
    case("Provenance?target=Observation/o2", "prov1"),
    case("Patient?organization=org-parent"),
]


@pytest.mark.parametrize(("url", "expected"), REFERENCE)
def test_reference(fhir: TestClient, url: str, expected: set[str]) -> None:
    check(fhir, url, expected)


# ----------------------------------------------------------------------------- uri

URI = [
    case("ValueSet?url=http://example.org/fhir/ValueSet/vitals", "vs1"),
    case("ValueSet?url=http://example.org/fhir/ValueSet/VITALS"),  # uris are case-sensitive
    case("ValueSet?url=urn:oid:1.2.3.4", "vs4"),
    case("ValueSet?url:below=http://example.org/fhir/ValueSet/vitals", "vs1", "vs2"),
    case("ValueSet?url:below=http://example.org/fhir/", "vs1", "vs2", "vs3"),
    case("ValueSet?url:above=http://example.org/fhir/ValueSet/vitals/adult/v2", "vs1", "vs2"),
    case("ValueSet?url:above=http://example.org/fhir/ValueSet/labs", "vs3"),
    # parents by path segment: .../vitals is a string prefix of .../vitalsX, not its parent
    case("ValueSet?url:above=http://example.org/fhir/ValueSet/vitalsX"),
    case("ValueSet?url:above=http://example.org/fhir/ValueSet/vitals/", "vs1"),
    case("ValueSet?url:above=urn:oid:1.2.3.4", "vs4"),
    case(f"Patient?_profile={VIP_PROFILE}", "p1"),
    case("Patient?_profile:below=http://example.org/fhir/StructureDefinition/", "p1"),
    case("Patient?_source=http://example.org/source/ehr%23abc", "p1"),
]


@pytest.mark.parametrize(("url", "expected"), URI)
def test_uri(fhir: TestClient, url: str, expected: set[str]) -> None:
    check(fhir, url, expected)


# ----------------------------------------------------------------------------- composite

COMPOSITE = [
    case(f"Observation?component-code-value-quantity={LOINC}|8480-6$gt100", "o10"),
    case(f"Observation?component-code-value-quantity={LOINC}|8480-6$lt100", "o11"),
    case(f"Observation?component-code-value-quantity={LOINC}|8462-4$80", "o10"),
    # both components from the same item: 80 is o10's diastolic, not its systolic
    case(f"Observation?component-code-value-quantity={LOINC}|8480-6$80"),
    case("Observation?component-code-value-quantity=8480-6$120", "o10"),
    case(f"Observation?component-code-value-quantity={LOINC}|8480-6$120|{UCUM}|mm[Hg]", "o10"),
    # UCUM: 120 mm[Hg] is 16.0 kPa, 95 mm[Hg] 12.7 kPa; o1 weighs 70 kg, o12 150 [lb_av]
    # (68.04 kg)
    case(f"Observation?component-code-value-quantity={LOINC}|8480-6$ge15|{UCUM}|kPa", "o10"),
    case(f"Observation?component-code-value-quantity={LOINC}|8480-6$lt13|{UCUM}|kPa", "o11"),
    case(f"Observation?code-value-quantity={LOINC}|29463-7$gt68|{UCUM}|kg", "o1", "o12"),
    case(f"Observation?code-value-quantity={LOINC}|29463-7$lt69000|{UCUM}|g", "o12"),
    case(f"Observation?code-value-quantity={LOINC}|29463-7$gt69|{UCUM}|kg", "o1"),
    case(f"Observation?component-code-value-quantity={LOINC}|8480-6$gt100,"
         f"{LOINC}|8462-4$lt70", "o10", "o11"),
    case(f"Observation?code-value-quantity={LOINC}|8310-5$37", "o2"),
    case(f"Observation?code-value-quantity={LOINC}|8867-4$ge100", "o6", "o7", "o9"),
    case(f"Observation?code-value-string={LOINC}|2339-0$pos", "o13"),
]


@pytest.mark.parametrize(("url", "expected"), COMPOSITE)
def test_composite(fhir: TestClient, url: str, expected: set[str]) -> None:
    check(fhir, url, expected)


# ----------------------------------------------------------------------------- :missing

MISSING = [
    case("Patient?address:missing=true", "p2", "p3", "p4", "p5"),  # string
    case("Patient?address:missing=false", "p1"),
    case("Patient?gender:missing=true", "p4"),  # token
    case("Patient?gender:missing=false", "p1", "p2", "p3", "p5"),
    case("Patient?active:missing=true", "p3", "p4", "p5"),
    case("Patient?birthdate:missing=true", "p4"),  # date
    case("Patient?birthdate:missing=false", "p1", "p2", "p3", "p5"),
    case("RiskAssessment?probability:missing=true", "ra3"),  # number
    case("RiskAssessment?probability:missing=false", "ra1", "ra2", "ra4"),
    case("Observation?value-quantity:missing=true", "o10", "o11", "o13", "o14"),  # quantity
    case("Observation?subject:missing=true", "o14"),  # reference
    case("Observation?encounter:missing=false", "o1"),
    case("ValueSet?url:missing=true", "vs5"),  # uri
    case("ValueSet?url:missing=false", "vs1", "vs2", "vs3", "vs4"),
    case("Patient?_profile:missing=false", "p1"),
    case("Observation?component-code-value-quantity:missing=false", "o10", "o11"),  # composite
    case("Observation?component-code-value-quantity:missing=true",
         *sorted(ALL_OBSERVATIONS - {"o10", "o11"})),
]


@pytest.mark.parametrize(("url", "expected"), MISSING)
def test_missing(fhir: TestClient, url: str, expected: set[str]) -> None:
    check(fhir, url, expected)


# ----------------------------------------------------------------------------- AND / OR

COMBINED = [
    case("Patient?family=muller&gender=male", "p2"),
    case("Patient?given=anna&family=smith", "p3"),
    case("Patient?family=muller&family=mül", "p1", "p2"),
    case("Patient?family=muller&family:exact=Muller", "p2"),
    case("Patient?gender=male,female&birthdate=lt1980", "p2"),
    case("Observation?code=8867-4&value-quantity=ge100&date=2024", "o7", "o9"),
]


@pytest.mark.parametrize(("url", "expected"), COMBINED)
def test_and_or(fhir: TestClient, url: str, expected: set[str]) -> None:
    check(fhir, url, expected)


# ----------------------------------------------------------------------------- chains, _has

P2_OBSERVATIONS = ("o3", "o4", "o7", "o11")

CHAINS = [
    case("Observation?subject:Patient.organization.name=acme", *P1_OBSERVATIONS),
    case("Observation?subject:Patient.organization.partof.name=gamma", *P1_OBSERVATIONS),
    case("Observation?subject:Patient.organization.partof.name=acme"),
    case("Observation?subject.family=muller", *P1_OBSERVATIONS, *P2_OBSERVATIONS),
    case("Observation?patient.gender=male", *P2_OBSERVATIONS),
    case("Observation?subject:Patient.gender:not=male", *P1_OBSERVATIONS, "o5", "o8", "o9"),
    case("Observation?subject:Patient.family=smithson,lee", "o5", "o8", "o9"),
    case("Observation?subject:Patient._id=p1", *P1_OBSERVATIONS),
    case("Observation?subject:Patient.birthdate=1975", *P2_OBSERVATIONS),
    case("Observation?subject:Patient.identifier=urn:mrn|12345", *P1_OBSERVATIONS),
    case("Observation?subject:Patient.general-practitioner.name=jones", *P2_OBSERVATIONS),
    case("Encounter?service-provider.name=acme", "e1"),
    case("Observation?subject:Patient.family=deleted"),
    # _has: resources referred to by resources matching the inner criterion
    case("Patient?_has:Observation:patient:code=8310-5", "p1", "p2"),
    case("Patient?_has:Observation:patient:code=8310-5&gender=male", "p2"),
    case("Patient?_has:Observation:subject:value-quantity=gt100", "p2", "p3"),
    case("Organization?_has:Patient:organization:gender=female", "org1"),
    case("Patient?_has:Provenance:target:agent=Practitioner/pr2", "p2"),
    case("Patient?_has:Observation:subject:_has:Provenance:target:agent=Practitioner/pr1",
         "p1"),
    case("Patient?_has:Observation:subject:_has:Provenance:target:agent=Practitioner/pr2"),
    case("Practitioner?_has:Patient:general-practitioner:_has:Observation:subject:code=2339-0",
         "pr1", "pr2"),
    case("Patient?_has:List:item:_id=list1", "p1", "p3"),
]


@pytest.mark.parametrize(("url", "expected"), CHAINS)
def test_chains_and_has(fhir: TestClient, url: str, expected: set[str]) -> None:
    check(fhir, url, expected)


# ----------------------------------------------------------------------------- _list, _type

SPECIAL = [
    case("Patient?_list=list1", "p1", "p3"),  # p6 is in the list but deleted
    case("Observation?_list=list1", "o1"),
    case("Patient?_list=nolist"),
    case("Patient?_list=list1&gender=female", "p1"),
]


@pytest.mark.parametrize(("url", "expected"), SPECIAL)
def test_list(fhir: TestClient, url: str, expected: set[str]) -> None:
    check(fhir, url, expected)


@pytest.mark.parametrize(("url", "expected"), [
    case("?_type=Patient,Practitioner&name=anna", "Patient/p3", "Practitioner/pr1"),
    case("?_type=Patient,Observation&_id=p1,o1", "Patient/p1", "Observation/o1"),
    case("?_id=p1", "Patient/p1"),
    case("?_lastUpdated=2024-06-01", "Organization/org-parent", "Organization/org1",
         "Organization/org2", "Practitioner/pr1", "Practitioner/pr2"),
    case("?_type=Patient,Practitioner&gender=female&_sort=_id", "Patient/p1", "Practitioner/pr1"),
    case(f"?_type=Patient,Observation&_tag={TAGS}|vip", "Patient/p1"),
    case("?_id=p1,o1", "Patient/p1", "Observation/o1"),
    case("?_list=list1", "Patient/p1", "Patient/p3", "Observation/o1"),
    case("?_type=Patient,Practitioner&gender:missing=true", "Patient/p4", "Practitioner/pr2"),
    case("?_type=Patient,Practitioner&gender:not=female", "Patient/p2", "Patient/p3",
         "Patient/p4", "Patient/p5", "Practitioner/pr2"),
    case("?_type=Patient,Practitioner&_has:Observation:performer:code=29463-7",
         "Practitioner/pr1"),
    case("?_type=Patient,Practitioner&_has:Observation:subject:code=29463-7", "Patient/p1"),
])
def test_system_search(fhir: TestClient, url: str, expected: set[str]) -> None:
    bundle = bundle_of(fhir, url)
    assert set(keys(entries(bundle))) == expected
    assert bundle["total"] == len(expected)


def test_system_search_sorts_across_types(fhir: TestClient) -> None:
    bundle = bundle_of(fhir, "?_type=Patient,Practitioner&_sort=family")
    assert keys(entries(bundle)) == [
        "Practitioner/pr2", "Patient/p4", "Patient/p1", "Patient/p2", "Patient/p5",
        "Practitioner/pr1", "Patient/p3"]


def test_system_search_rejects_unknown_type(fhir: TestClient) -> None:
    outcome = outcome_of(fhir.get("/fhir?_type=Patient,Nope"), 400)
    assert names_parameter(outcome, "_type")


# ----------------------------------------------------------------------------- compartments


@pytest.mark.parametrize(("url", "expected"), [
    case("Patient/p1/Observation", *(f"Observation/{o}" for o in P1_OBSERVATIONS)),
    case("Patient/p1/Observation?code=8310-5", "Observation/o2"),
    case("Patient/p1/*", "Patient/p1", *(f"Observation/{o}" for o in P1_OBSERVATIONS),
         "Condition/c1", "Condition/c4", "Encounter/e1", "Encounter/e4",
         "RiskAssessment/ra1"),
    case("Patient/p2/Provenance", "Provenance/prov2"),
    case("Patient/p6/*"),
    case("Practitioner/pr1/Observation", "Observation/o1"),
    case("Encounter/e1/Observation", "Observation/o1"),
    case("Encounter/e1/*", "Encounter/e1", "Observation/o1", "Condition/c1"),
    case("Patient/p1/*?_type=Observation,Condition&_lastUpdated=2024-06-04", "Condition/c1",
         "Condition/c4"),
    case("Patient/p1/Organization"),  # not a type of the Patient compartment
    case("Patient/p1/Patient", "Patient/p1"),
    case("Patient/p1/Patient?gender=male"),
])
def test_compartment(fhir: TestClient, url: str, expected: set[str]) -> None:
    bundle = bundle_of(fhir, url)
    assert set(keys(entries(bundle))) == expected
    assert bundle["total"] == len(expected)


# ----------------------------------------------------------------------------- includes


@pytest.mark.parametrize(("url", "matches", "included"), [
    ("Observation?_id=o1&_include=Observation:subject", {"Observation/o1"}, {"Patient/p1"}),
    ("Observation?_id=o1&_include=Observation:subject:Group", {"Observation/o1"}, set()),
    ("Observation?_id=o1&_include=Observation:performer:Practitioner", {"Observation/o1"},
     {"Practitioner/pr1"}),
    ("Observation?_id=o1&_include=*", {"Observation/o1"},
     {"Patient/p1", "Encounter/e1", "Practitioner/pr1"}),
    ("Observation?_id=o1&_include=Observation:subject&_include=Patient:organization",
     {"Observation/o1"}, {"Patient/p1"}),  # without :iterate only from the matches
    ("Observation?_id=o1&_include=Observation:subject&_include:iterate=Patient:organization"
     "&_include:iterate=Organization:partof", {"Observation/o1"},
     {"Patient/p1", "Organization/org1", "Organization/org-parent"}),
    ("Observation?subject=p1&_include=Observation:subject",
     {f"Observation/{o}" for o in P1_OBSERVATIONS}, {"Patient/p1"}),
    ("Observation?_id=o1&_revinclude=Provenance:target", {"Observation/o1"},
     {"Provenance/prov1"}),
    ("Patient?_id=p1&_revinclude=Observation:subject&_revinclude:iterate=Provenance:target",
     {"Patient/p1"}, {*(f"Observation/{o}" for o in P1_OBSERVATIONS), "Provenance/prov1"}),
    ("List?_id=list1&_include=List:item", {"List/list1"},
     {"Patient/p1", "Patient/p3", "Observation/o1"}),  # not the deleted p6
    ("List?_id=list1&_include=List:item:Patient", {"List/list1"}, {"Patient/p1", "Patient/p3"}),
    ("Patient?_id=p2&_revinclude=*", {"Patient/p2"},
     {*(f"Observation/{o}" for o in P2_OBSERVATIONS), "Encounter/e2", "Condition/c2",
      "RiskAssessment/ra2", "RiskAssessment/ra4", "Provenance/prov2"}),
])
def test_include(fhir: TestClient, url: str, matches: set[str], included: set[str]) -> None:
    bundle = bundle_of(fhir, url)
    assert set(keys(entries(bundle))) == matches
    got = keys(entries(bundle, "include"))
    assert len(got) == len(set(got))
    assert set(got) == included
    assert bundle["total"] == len(matches)  # includes do not count


# ----------------------------------------------------------------------------- sorting


@pytest.mark.parametrize(("url", "expected"), [
    ("Patient?_sort=birthdate", ["p2", "p1", "p3", "p5", "p4"]),  # missing last
    ("Patient?_sort=-birthdate", ["p5", "p3", "p1", "p2", "p4"]),
    ("Patient?_sort=gender,-birthdate", ["p1", "p5", "p2", "p3", "p4"]),
    ("Patient?_sort=family", ["p4", "p1", "p2", "p5", "p3"]),  # ties by id
    ("Patient?_sort=-family", ["p3", "p5", "p2", "p1", "p4"]),  # ties by id, descending too
    ("Patient?_sort=-_id", ["p5", "p4", "p3", "p2", "p1"]),
    ("Patient?_sort=_lastUpdated,_id", ["p1", "p2", "p3", "p4", "p5"]),
    ("RiskAssessment?_sort=-probability", ["ra4", "ra2", "ra1", "ra3"]),
    ("RiskAssessment?_sort=probability", ["ra1", "ra2", "ra4", "ra3"]),
    ("Encounter?_sort=date", ["e3", "e1", "e2", "e4"]),
    ("Encounter?_sort=-date", ["e2", "e1", "e3", "e4"]),
    ("Observation?code=8867-4&_sort=-value-quantity", ["o9", "o7", "o6", "o8"]),
    ("Observation?subject=p1&_sort=-date", ["o10", "o1", "o2", "o6"]),
    ("ValueSet?_sort=url", ["vs3", "vs1", "vs2", "vs4", "vs5"]),
    ("Observation?_id=o1,o2,o14&_sort=subject", ["o1", "o2", "o14"]),
])
def test_sort(fhir: TestClient, url: str, expected: list[str]) -> None:
    assert [r["id"] for r in entries(bundle_of(fhir, url))] == expected


def test_sort_puts_missing_values_last_whatever_the_values(client: TestClient) -> None:
    """No stand-in value for "missing" can collide with a real one: huge numbers and text
    beyond any sentinel character still sort before resources without a value."""
    for oid, value in (("big", 1e20), ("small", -1e20), ("none", None)):
        body = observation(oid, "8867-4", "Heart rate", None)
        if value is not None:
            body["valueQuantity"] = {"value": value, "code": "/min", "system": UCUM}
        assert client.put(f"/fhir/Observation/{oid}", json=body).status_code == 201
    for pid, family in (("z", "\U0010ffff\U0010ffff"), ("a", "abc"), ("n", None)):
        patient: dict[str, Any] = {"resourceType": "Patient", "id": pid}
        if family is not None:
            patient["name"] = [{"family": family}]
        assert client.put(f"/fhir/Patient/{pid}", json=patient).status_code == 201

    def order(url: str) -> list[str]:
        return [r["id"] for r in entries(bundle_of(client, url))]

    assert order("Observation?_sort=value-quantity") == ["small", "big", "none"]
    assert order("Observation?_sort=-value-quantity") == ["big", "small", "none"]
    assert order("Patient?_sort=family") == ["a", "z", "n"]
    assert order("Patient?_sort=-family") == ["z", "a", "n"]
    assert [key for page in walk(client, "Patient?_sort=-family&_count=1") for key in page] == [
        "Patient/z", "Patient/a", "Patient/n"]


# ----------------------------------------------------------------------------- paging


def walk(client: TestClient, url: str) -> list[list[str]]:
    """Follow next links to the end, then previous links back; return the pages forwards
    and check the way back gives the same pages."""
    forward: list[list[str]] = []
    bundle = bundle_of(client, url)
    assert link(bundle, "previous") is None
    while True:
        page = keys(entries(bundle))
        assert page, "no link may lead to an empty page"
        forward.append(page)
        following = link(bundle, "next")
        if following is None:
            break
        assert len(forward) < 50
        bundle = bundle_of(client, relative(following))
    backward: list[list[str]] = [forward[-1]]
    while (preceding := link(bundle, "previous")) is not None:
        bundle = bundle_of(client, relative(preceding))
        page = keys(entries(bundle))
        assert page, "no link may lead to an empty page"
        backward.append(page)
        assert len(backward) <= len(forward)
    assert backward[::-1] == forward
    return forward


@pytest.mark.parametrize(("url", "size", "total"), [
    ("Observation?_count=4", 4, 14),
    ("Observation?_count=1", 1, 14),
    ("Observation?_count=7", 7, 14),
    ("Observation?_count=3&_sort=-date", 3, 14),  # ties and missing values across pages
    ("Patient?_count=2&_sort=birthdate", 2, 5),
    ("Patient?_count=2&_sort=family,-_id", 2, 5),
    ("Observation?_count=2&_sort=code,-value-quantity", 2, 14),
    ("?_type=Observation,Patient&_count=5", 5, 19),
    ("?_type=Observation,Patient&_count=4&_sort=-_lastUpdated", 4, 19),
    ("Patient/p1/*?_count=3", 3, 10),
    ("Observation?_count=3&code=8867-4,8310-5", 3, 6),
])
def test_paging_walks_to_the_end_and_back(fhir: TestClient, url: str, size: int,
                                         total: int) -> None:
    pages = walk(fhir, url)
    seen = [key for page in pages for key in page]
    assert len(seen) == len(set(seen)) == total
    assert all(len(page) == size for page in pages[:-1])
    assert 0 < len(pages[-1]) <= size


def test_each_page_has_its_includes(fhir: TestClient) -> None:
    pages = 0
    bundle = bundle_of(fhir, "Observation?subject=p1&_include=Observation:subject&_count=2")
    while True:
        pages += 1
        assert len(entries(bundle)) == 2
        assert keys(entries(bundle, "include")) == ["Patient/p1"]
        following = link(bundle, "next")
        if following is None:
            break
        bundle = bundle_of(fhir, relative(following))
    assert pages == 2


def test_total_on_a_later_page(fhir: TestClient) -> None:
    first = bundle_of(fhir, "Observation?_count=5")
    following = link(first, "next")
    assert following is not None
    assert "total" not in bundle_of(fhir, relative(following))  # only when asked for
    accurate = bundle_of(fhir, "Observation?_count=5&_total=accurate")
    following = link(accurate, "next")
    assert following is not None
    assert bundle_of(fhir, relative(following))["total"] == 14


def test_paging_follows_the_sort_order(fhir: TestClient) -> None:
    pages = walk(fhir, "Patient?_count=2&_sort=-birthdate")
    assert [key for page in pages for key in page] == [
        "Patient/p5", "Patient/p3", "Patient/p1", "Patient/p2", "Patient/p4"]


def test_paging_links_repeat_the_search(fhir: TestClient) -> None:
    bundle = bundle_of(fhir, "Observation?code=8867-4&_count=2")
    following = link(bundle, "next")
    assert following is not None
    params = parse_qsl(urlsplit(following).query)
    assert ("code", "8867-4") in params and ("_count", "2") in params
    second = bundle_of(fhir, relative(following))
    assert link(second, "self") == following


def test_bad_cursor_is_rejected(fhir: TestClient) -> None:
    outcome = outcome_of(fhir.get("/fhir/Observation?_cursor=nonsense"), 400)
    assert names_parameter(outcome, "_cursor")


# ----------------------------------------------------------------------------- _total, _summary


def test_total(fhir: TestClient) -> None:
    assert "total" not in bundle_of(fhir, "Observation?_total=none")
    assert bundle_of(fhir, "Observation?_total=accurate&_count=2")["total"] == 14
    assert bundle_of(fhir, "Observation?_count=2")["total"] == 14


def test_summary_count(fhir: TestClient) -> None:
    bundle = bundle_of(fhir, "Observation?code=8867-4&_summary=count")
    assert bundle["total"] == 4
    assert not entries(bundle)


def test_count_zero_gives_the_total_only(fhir: TestClient) -> None:
    bundle = bundle_of(fhir, "Observation?_count=0")
    assert bundle["total"] == 14
    assert not entries(bundle)


def _subsetted(resource: dict[str, Any]) -> bool:
    return any(t.get("code") == "SUBSETTED" for t in resource.get("meta", {}).get("tag", []))


def test_summary_true(fhir: TestClient) -> None:
    (p1,) = entries(bundle_of(fhir, "Patient?_id=p1&_summary=true"))
    assert p1["name"] and p1["gender"] == "female" and p1["identifier"]
    assert "generalPractitioner" not in p1 and "text" not in p1
    assert _subsetted(p1)


def test_summary_text(fhir: TestClient) -> None:
    (p1,) = entries(bundle_of(fhir, "Patient?_id=p1&_summary=text"))
    assert set(p1) <= {"resourceType", "id", "meta", "text"}
    assert "Müller" in p1["text"]["div"]
    (o1,) = entries(bundle_of(fhir, "Observation?_id=o1&_summary=text"))
    assert {"status", "code"} <= set(o1)  # mandatory elements stay
    assert "valueQuantity" not in o1


def test_summary_data(fhir: TestClient) -> None:
    (p1,) = entries(bundle_of(fhir, "Patient?_id=p1&_summary=data"))
    assert "text" not in p1
    assert p1["generalPractitioner"] == [{"reference": "Practitioner/pr1"}]


def test_elements(fhir: TestClient) -> None:
    (p1,) = entries(bundle_of(fhir, "Patient?_id=p1&_elements=gender,birthDate"))
    assert set(p1) - {"resourceType", "id", "meta"} == {"gender", "birthDate"}
    assert _subsetted(p1)


# ----------------------------------------------------------------------------- POST _search


def test_post_search_with_form_body(fhir: TestClient) -> None:
    response = fhir.post("/fhir/Patient/_search", data={"family": "muller", "gender": "male"})
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert keys(entries(bundle)) == ["Patient/p2"]
    self_link = link(bundle, "self")
    assert self_link is not None and "/_search" not in self_link
    assert ("family", "muller") in parse_qsl(urlsplit(self_link).query)


def test_post_search_combines_url_and_body(fhir: TestClient) -> None:
    response = fhir.post("/fhir/Patient/_search?gender=female", data={"family": "muller"})
    assert response.status_code == 200, response.text
    assert keys(entries(response.json())) == ["Patient/p1"]


def test_post_system_search(fhir: TestClient) -> None:
    response = fhir.post("/fhir/_search", data={"_type": "Patient,Practitioner",
                                                "name": "anna"})
    assert response.status_code == 200, response.text
    assert set(keys(entries(response.json()))) == {"Patient/p3", "Practitioner/pr1"}


def test_post_search_takes_only_forms(fhir: TestClient) -> None:
    response = fhir.post("/fhir/Patient/_search", content=orjson.dumps({"family": "x"}),
                         headers={"Content-Type": "application/json"})
    outcome_of(response, 415)


# ----------------------------------------------------------------------------- unknown params


def test_unknown_parameters_are_reported_and_left_out_of_the_self_link(
        fhir: TestClient) -> None:
    bundle = bundle_of(fhir, "Patient?family=muller&foo=bar&_text=x")
    assert {r["id"] for r in entries(bundle)} == {"p1", "p2"}
    (outcome,) = entries(bundle, "outcome")
    assert outcome["resourceType"] == "OperationOutcome"
    text = " ".join(issue["diagnostics"] for issue in outcome["issue"])
    assert "foo" in text and "_text" in text
    assert all(issue["severity"] in ("warning", "information") for issue in outcome["issue"])
    self_link = link(bundle, "self")
    assert self_link is not None
    params = parse_qsl(urlsplit(self_link).query)
    assert ("family", "muller") in params
    assert not [name for name, _ in params if name in ("foo", "_text")]


def test_a_parameter_not_common_to_the_types_is_ignored(fhir: TestClient) -> None:
    # gender is not a parameter of Observation: not common to the _type list
    bundle = bundle_of(fhir, "?_type=Patient,Observation&gender=male&_id=p2,o3")
    assert set(keys(entries(bundle))) == {"Patient/p2", "Observation/o3"}
    assert entries(bundle, "outcome")


@pytest.mark.parametrize("url", [
    "Patient?foo=bar",
    "Patient?family=muller&_text=x",
    "?_type=Patient,Observation&gender=male",
])
def test_strict_handling_rejects_unknown_parameters(fhir: TestClient, url: str) -> None:
    path = f"/fhir{url}" if url.startswith("?") else f"/fhir/{url}"
    response = fhir.get(path, headers={"Prefer": "handling=strict"})
    outcome = outcome_of(response, 400)
    name = "gender" if "gender" in url else ("foo" if "foo" in url else "_text")
    assert names_parameter(outcome, name)


def test_lenient_handling_is_the_default_and_can_be_asked_for(fhir: TestClient) -> None:
    response = fhir.get("/fhir/Patient?foo=bar", headers={"Prefer": "handling=lenient"})
    assert response.status_code == 200


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("url", "name"), [
    ("Patient?birthdate=2020-13-01", "birthdate"),
    ("Patient?birthdate=notadate", "birthdate"),
    ("Patient?birthdate=xx2020", "birthdate"),  # unknown prefix
    ("Patient?birthdate=2020-02-30", "birthdate"),
    ("Observation?value-quantity=zz5", "value-quantity"),
    ("Observation?value-quantity=5|a|b|c", "value-quantity"),
    ("RiskAssessment?probability=abc", "probability"),
    ("RiskAssessment?probability=NaN", "probability"),
    ("Observation?subject.nonsense=x", "subject.nonsense"),
    ("Observation?status.name=x", "status.name"),
    ("Observation?subject:Organization.name=x", "subject:Organization.name"),
    ("Patient?family:foo=x", "family:foo"),
    ("Patient?birthdate:exact=1980", "birthdate:exact"),
    ("Patient?gender:missing=maybe", "gender:missing"),
    ("Patient?identifier=a|b|c", "identifier"),
    ("Patient?identifier:of-type=|MR|12345", "identifier:of-type"),
    ("Observation?subject:Organization=x", "subject:Organization"),
    ("Observation?_include=Observation:subject:Organization", "_include"),
    (f"Patient?identifier:of-type={V2_0203}|MR", "identifier:of-type"),
    ("Observation?component-code-value-quantity=8480-6", "component-code-value-quantity"),
    ("Patient?_has:Nope:x:y=1", "_has:Nope:x:y"),
    ("Patient?_has:Observation:code:status=final", "_has:Observation:code:status"),
    ("Patient?_has:Observation:patient=final", "_has:Observation:patient"),
    ("Patient?_count=abc", "_count"),
    ("Patient?_count=-1", "_count"),
    ("Patient?_sort=nonsense", "_sort"),
    ("Observation?_sort=component-code-value-quantity", "_sort"),
    ("Patient?_include=Nope", "_include"),
    ("Patient?_include=Patient:family", "_include"),
    ("Patient?_revinclude=Observation", "_revinclude"),
    ("Patient?_total=maybe", "_total"),
    ("Patient?_summary=some", "_summary"),
    ("Patient?family=", "family"),
])
def test_malformed_values_are_rejected_naming_the_parameter(fhir: TestClient, url: str,
                                                            name: str) -> None:
    outcome = outcome_of(fhir.get(f"/fhir/{url}"), 400)
    assert names_parameter(outcome, name), outcome


def test_near_is_not_implemented(fhir: TestClient) -> None:
    outcome = outcome_of(fhir.get("/fhir/Location?near=42.25|-83.69|10|km"), 501)
    assert names_parameter(outcome, "near")


def test_reference_hierarchies_are_not_implemented(fhir: TestClient) -> None:
    outcome = outcome_of(fhir.get("/fhir/Location?partof:below=Location/l1"), 501)
    assert names_parameter(outcome, "partof:below")


def test_unknown_value_set_for_in(fhir: TestClient) -> None:
    outcome = outcome_of(fhir.get("/fhir/Patient?gender:in=http://example.org/nope"), 400)
    assert names_parameter(outcome, "gender:in")


def test_unknown_resource_type_is_404(fhir: TestClient) -> None:
    outcome_of(fhir.get("/fhir/Nope?name=x"), 404)


# ----------------------------------------------------------------------------- writes


def test_an_update_replaces_the_index_rows(client: TestClient) -> None:
    patient = {"resourceType": "Patient", "id": "u1", "name": [{"family": "Before"}],
               "birthDate": "1970", "identifier": [identifier("urn:x", "1")]}
    assert client.put("/fhir/Patient/u1", json=patient).status_code == 201
    observation_ = observation("uo1", "8867-4", "Heart rate", "Patient/u1",
                               valueQuantity=quantity(60, "/min"))
    assert client.put("/fhir/Observation/uo1", json=observation_).status_code == 201
    patient.update(name=[{"family": "After"}], birthDate="1971")
    patient.pop("identifier")
    assert client.put("/fhir/Patient/u1", json=patient).status_code == 200
    observation_["subject"] = ref("Patient/u2")
    observation_["valueQuantity"] = quantity(61, "/min")
    assert client.put("/fhir/Observation/uo1", json=observation_).status_code == 200
    assert found(client, "Patient?family=before") == set()
    assert found(client, "Patient?family=after") == {"u1"}
    assert found(client, "Patient?birthdate=1970") == set()
    assert found(client, "Patient?birthdate=1971") == {"u1"}
    assert found(client, "Patient?identifier=urn:x|1") == set()
    assert found(client, "Patient?identifier:missing=true") == {"u1"}
    assert found(client, "Observation?subject=Patient/u1") == set()
    assert found(client, "Observation?subject=Patient/u2") == {"uo1"}
    assert found(client, "Observation?value-quantity=60") == set()
    assert found(client, "Observation?value-quantity=61") == {"uo1"}
    assert found(client, "Patient?_has:Observation:subject:code=8867-4") == set()


def test_deleted_resources_never_match(client: TestClient) -> None:
    patient = {"resourceType": "Patient", "id": "d1", "name": [{"family": "Gone"}]}
    assert client.put("/fhir/Patient/d1", json=patient).status_code == 201
    obs = observation("do1", "8867-4", "Heart rate", "Patient/d1")
    assert client.put("/fhir/Observation/do1", json=obs).status_code == 201
    assert client.delete("/fhir/Observation/do1").status_code == 204
    assert client.delete("/fhir/Patient/d1").status_code == 204
    assert found(client, "Patient?family=gone") == set()
    assert found(client, "Patient?family:missing=false") == set()
    assert found(client, "Patient?gender:missing=true") == set()
    assert found(client, "Patient?_id:not=x") == set()
    assert found(client, "Observation?subject=Patient/d1") == set()
    assert found(client, "Patient?_has:Observation:subject:code=8867-4") == set()
    assert found(client, "Observation?subject:Patient.family=gone") == set()
    assert bundle_of(client, "Patient")["total"] == 0
    assert entries(bundle_of(client, "Patient/d1/*")) == []
    # a resource created again after deletion is found again
    assert client.put("/fhir/Patient/d1", json=patient).status_code == 201
    assert found(client, "Patient?family=gone") == {"d1"}


def test_absolute_reference_to_this_server_matches_relative(client: TestClient) -> None:
    client.put("/fhir/Patient/abs1", json={"resourceType": "Patient", "id": "abs1"})
    client.put("/fhir/Observation/abs-o", json={
        "resourceType": "Observation", "id": "abs-o", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": "Patient/abs1"}})
    base = "http://testserver/fhir"
    found = client.get(f"/fhir/Observation?subject={base}/Patient/abs1").json()
    assert [e["resource"]["id"] for e in found["entry"]] == ["abs-o"]


def test_quantity_in_another_unit_system_is_not_converted(client: TestClient) -> None:
    client.put("/fhir/Observation/q-other", json={
        "resourceType": "Observation", "id": "q-other", "status": "final",
        "code": {"text": "dose"},
        "valueQuantity": {"value": 5.4, "system": "http://example.org/units", "code": "mg"}})
    ucum = client.get(
        "/fhir/Observation?value-quantity=5.4|http://unitsofmeasure.org|mg&_id=q-other").json()
    assert ucum.get("entry", []) == []
    own = client.get(
        "/fhir/Observation?value-quantity=5.4|http://example.org/units|mg&_id=q-other").json()
    assert [e["resource"]["id"] for e in own["entry"]] == ["q-other"]
