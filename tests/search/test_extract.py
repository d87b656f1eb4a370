"""Index value extraction (carebridge.search): what each SearchParameter yields for a resource.

Expected values are worked out from http://hl7.org/fhir/R4/search.html (parameter types,
implicit ranges) and the R4 SearchParameter expressions.
"""

from __future__ import annotations

import importlib
import logging
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from carebridge.demo import load_bundle
from carebridge.fhir import registry
from carebridge.search import (
    CompositeValue,
    DateValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    compile_parameter,
    date_range,
    extract,
    extractor_for,
    extractors_for,
    implicit_range,
    normalize_string,
    parse_reference,
    values_of,
)
from carebridge.search.extract import extract_stored, split_union, stored_codes

# The module (the package exports a function of the same name).
extract_module = importlib.import_module("carebridge.search.extract")
REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_TGZ = REPO_ROOT / ".." / "shared" / "fhir-r4" / "hl7.fhir.r4.examples-4.0.1.tgz"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def utc(
    year: int, month: int, dom: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime:
    return datetime(year, month, dom, hour, minute, second, micro, tzinfo=UTC)


def day(year: int, month: int, dom: int) -> DateValue:
    return DateValue(utc(year, month, dom), utc(year, month, dom, 23, 59, 59, 999999))


def string(value: str) -> StringValue:
    return StringValue(value, normalize_string(value))


# --- Patient --------------------------------------------------------------------------------

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {
        "lastUpdated": "2024-03-01T10:00:00Z",
        "tag": [{"system": "http://example.org/tags", "code": "demo"}],
        "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],
    },
    "identifier": [
        {
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                ],
                "text": "Medical Record Number",
            },
            "system": "http://hospital.example.org/mrn",
            "value": "12345",
        },
        {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-22-1962"},
    ],
    "active": True,
    "name": [
        {
            "use": "official",
            "family": "Müller",
            "given": ["Zoë", "Anne"],
            "prefix": ["Dr."],
        },
        {"use": "nickname", "text": "Zo"},
    ],
    "telecom": [
        {"system": "phone", "value": "555-0100", "use": "home"},
        {"system": "email", "value": "zoe@example.org"},
    ],
    "gender": "female",
    "birthDate": "1974-12-25",
    "address": [
        {
            "line": ["534 Erewhon St"],
            "city": "PleasantVille",
            "state": "Vic",
            "postalCode": "3999",
            "country": "AU",
        }
    ],
    "generalPractitioner": [{"reference": "Practitioner/gp1"}],
    "managingOrganization": {"reference": "Organization/org1"},
}


def test_patient_names() -> None:
    assert values_of(PATIENT, "family") == [string("Müller")]
    assert values_of(PATIENT, "given") == [string("Zoë"), string("Anne")]
    # `name` searches family, given, prefix, suffix and text, each a separate value
    assert values_of(PATIENT, "name") == [
        string("Müller"),
        string("Zoë"),
        string("Anne"),
        string("Dr."),
        string("Zo"),
    ]
    assert string("Müller").normalized == "muller"
    assert string("Zoë").normalized == "zoe"


def test_patient_birthdate_is_the_whole_day() -> None:
    assert values_of(PATIENT, "birthdate") == [day(1974, 12, 25)]


def test_patient_gender_is_a_code_with_its_implicit_system() -> None:
    # search.html#token: for a `code` the system is implicit, from its required binding
    assert values_of(PATIENT, "gender") == [
        TokenValue("http://hl7.org/fhir/administrative-gender", "female")
    ]


def test_patient_identifier_keeps_its_type_for_of_type() -> None:
    assert values_of(PATIENT, "identifier") == [
        TokenValue(
            "http://hospital.example.org/mrn",
            "12345",
            "Medical Record Number",
            "http://terminology.hl7.org/CodeSystem/v2-0203",
            "MR",
        ),
        TokenValue("http://hl7.org/fhir/sid/us-ssn", "999-22-1962"),
    ]


def test_patient_address() -> None:
    assert values_of(PATIENT, "address-city") == [string("PleasantVille")]
    assert values_of(PATIENT, "address-city")[0] == StringValue("PleasantVille", "pleasantville")
    assert values_of(PATIENT, "address-postalcode") == [string("3999")]
    assert values_of(PATIENT, "address") == [
        string("534 Erewhon St"),
        string("PleasantVille"),
        string("Vic"),
        string("3999"),
        string("AU"),
    ]


def test_patient_telecom() -> None:
    assert values_of(PATIENT, "telecom") == [
        TokenValue("phone", "555-0100"),
        TokenValue("email", "zoe@example.org"),
    ]
    assert values_of(PATIENT, "phone") == [TokenValue("phone", "555-0100")]  # where(system=..)
    assert values_of(PATIENT, "email") == [TokenValue("email", "zoe@example.org")]


def test_token_from_boolean() -> None:
    assert values_of(PATIENT, "active") == [TokenValue(None, "true")]
    assert values_of({**PATIENT, "active": False}, "active") == [TokenValue(None, "false")]


def test_deceased_is_read_from_its_keys_as_fhirpath_reads_it() -> None:
    # `Patient.deceased.exists() and Patient.deceased != false`: not a path; its plain
    # reading on deceasedBoolean/deceasedDateTime (search.branches.ExistsNotFalseBranch)
    # must say what fhirpathpy says, and leave to it what it cannot settle.
    from carebridge.search.branches import ExistsNotFalseBranch, FhirPathBranch

    assert not extractor_for("Patient", "deceased").uses_fhirpath
    assert values_of(PATIENT, "deceased") == [TokenValue(None, "false")]
    dead = {**PATIENT, "deceasedDateTime": "2020-01-01"}
    assert values_of(dead, "deceased") == [TokenValue(None, "true")]
    assert values_of({**PATIENT, "deceasedBoolean": False}, "deceased") == [
        TokenValue(None, "false")
    ]
    expression = "Patient.deceased.exists() and Patient.deceased != false"
    general = FhirPathBranch(expression, "token")
    plain = ExistsNotFalseBranch(("deceasedBoolean", "deceasedDateTime"), general)
    cases = [{}, {"deceasedBoolean": True}, {"deceasedBoolean": False},
             {"deceasedDateTime": "2019"}, {"deceasedDateTime": "2019-03-04T05:06:07Z"},
             {"_deceasedBoolean": {"extension": [{"url": "http://x", "valueCode": "y"}]}},
             {"deceasedBoolean": True, "_deceasedBoolean": {"id": "a"}},
             {"deceasedBoolean": False, "deceasedDateTime": "2019"}]
    patients = [{**PATIENT, **case} for case in cases]
    if PACKAGE_TGZ.is_file():
        patients += [r for r in _official_examples() if r["resourceType"] == "Patient"]
    assert len(patients) >= 8
    for patient in patients:
        by_fhirpath: list[Any] = []
        by_keys: list[Any] = []
        general.evaluate(patient, patient, by_fhirpath)
        plain.evaluate(patient, patient, by_keys)
        assert by_keys == by_fhirpath, patient
        assert by_keys in ([TokenValue(None, "true")], [TokenValue(None, "false")])


def test_resource_level_parameters() -> None:
    assert values_of(PATIENT, "_id") == [TokenValue(None, "p1")]
    assert values_of(PATIENT, "_lastUpdated") == [
        DateValue(utc(2024, 3, 1, 10, 0, 0), utc(2024, 3, 1, 10, 0, 0, 999999))
    ]
    assert values_of(PATIENT, "_tag") == [TokenValue("http://example.org/tags", "demo")]
    assert values_of(PATIENT, "_profile") == [
        UriValue("http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient")
    ]
    assert values_of(PATIENT, "_security") == []


def test_extract_maps_every_supported_code() -> None:
    index = extract(PATIENT)
    supported = {e.code for e in extractors_for("Patient") if e.supported}
    assert set(index) == supported
    assert "_text" not in index  # no expression: nothing to extract
    assert index["general-practitioner"] == [
        ReferenceValue("Practitioner/gp1", "Practitioner", "gp1")
    ]
    assert index["death-date"] == []


# --- Observation ----------------------------------------------------------------------------

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "bp",
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                }
            ]
        }
    ],
    "code": {
        "coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}],
        "text": "Blood pressure",
    },
    "subject": {"reference": "Patient/p1"},
    "encounter": {"reference": "Encounter/e1"},
    "effectiveDateTime": "2024-03-01T09:30:00+01:00",
    "performer": [{"reference": "Practitioner/gp1"}, {"reference": "Patient/p1"}],
    "component": [
        {
            "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
            "valueQuantity": {"value": 80.5, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        },
    ],
}


def test_observation_code_keeps_text_for_the_text_modifier() -> None:
    assert values_of(OBSERVATION, "code") == [
        TokenValue(LOINC, "85354-9", "Blood pressure panel"),
        TokenValue(None, None, "Blood pressure"),
    ]


def test_observation_value_quantity_with_implicit_range() -> None:
    weight = {
        **OBSERVATION,
        "component": [],
        "valueQuantity": {"value": 72.5, "unit": "kg", "system": UCUM, "code": "kg"},
    }
    assert values_of(weight, "value-quantity") == [
        QuantityValue(Decimal("72.5"), Decimal("72.45"), Decimal("72.55"), UCUM, "kg", "kg")
    ]
    # the value is a Quantity, so the concept/string/date value parameters find nothing
    assert values_of(weight, "value-concept") == []
    assert values_of(weight, "value-date") == []


def test_observation_date_from_effective_datetime_in_utc() -> None:
    # 09:30 at +01:00 is 08:30 UTC; precision seconds -> the whole second
    assert values_of(OBSERVATION, "date") == [
        DateValue(utc(2024, 3, 1, 8, 30, 0), utc(2024, 3, 1, 8, 30, 0, 999999))
    ]


def test_observation_date_from_effective_period() -> None:
    observation = {**OBSERVATION}
    del observation["effectiveDateTime"]
    observation["effectivePeriod"] = {"start": "2024-03-01", "end": "2024-03"}
    # start at the beginning of its day, end at the end of its month
    assert values_of(observation, "date") == [
        DateValue(utc(2024, 3, 1), utc(2024, 3, 31, 23, 59, 59, 999999))
    ]
    observation["effectivePeriod"] = {"start": "2024-03-01"}  # still ongoing
    assert values_of(observation, "date") == [
        DateValue(utc(2024, 3, 1), datetime.max.replace(tzinfo=UTC))
    ]


def test_patient_parameter_keeps_only_patient_references() -> None:
    patient_ref = ReferenceValue("Patient/p1", "Patient", "p1")
    assert values_of(OBSERVATION, "subject") == [patient_ref]
    assert values_of(OBSERVATION, "patient") == [patient_ref]
    group_subject = {**OBSERVATION, "subject": {"reference": "Group/g1"}}
    assert values_of(group_subject, "subject") == [ReferenceValue("Group/g1", "Group", "g1")]
    assert values_of(group_subject, "patient") == []  # `where(resolve() is Patient)`
    assert values_of(OBSERVATION, "performer") == [
        ReferenceValue("Practitioner/gp1", "Practitioner", "gp1"),
        patient_ref,
    ]


def test_component_code_value_quantity_is_one_composite_per_component() -> None:
    assert values_of(OBSERVATION, "component-code-value-quantity") == [
        CompositeValue(
            (
                ("component-code", (TokenValue(LOINC, "8480-6"),)),
                (
                    "component-value-quantity",
                    (
                        QuantityValue(
                            Decimal(120),
                            Decimal("119.5"),
                            Decimal("120.5"),
                            UCUM,
                            "mm[Hg]",
                            "mmHg",
                        ),
                    ),
                ),
            )
        ),
        CompositeValue(
            (
                ("component-code", (TokenValue(LOINC, "8462-4"),)),
                (
                    "component-value-quantity",
                    (
                        QuantityValue(
                            Decimal("80.5"),
                            Decimal("80.45"),
                            Decimal("80.55"),
                            UCUM,
                            "mm[Hg]",
                            "mmHg",
                        ),
                    ),
                ),
            )
        ),
    ]
    # the panel itself has no value: code-value-quantity (base `Observation`) yields nothing
    assert values_of(OBSERVATION, "code-value-quantity") == []
    # combo-*: the Observation and each component
    combo = values_of(OBSERVATION, "combo-code-value-quantity")
    assert [c.component("combo-code") for c in combo if isinstance(c, CompositeValue)] == [
        (TokenValue(LOINC, "8480-6"),),
        (TokenValue(LOINC, "8462-4"),),
    ]


def test_composite_component_from_the_resource_root() -> None:
    # chromosome-variant-coordinate: `%resource.referenceSeq.chromosome`, `start`, `end`
    sequence = {
        "resourceType": "MolecularSequence",
        "coordinateSystem": 0,
        "referenceSeq": {"chromosome": {"coding": [{"code": "1"}]}},
        "variant": [{"start": 128273724, "end": 128273725}],
    }
    [value] = values_of(sequence, "chromosome-variant-coordinate")
    assert isinstance(value, CompositeValue)
    assert value.component("chromosome") == (TokenValue(None, "1"),)
    assert value.component("variant-start") == (
        NumberValue(Decimal(128273724), Decimal("128273723.5"), Decimal("128273724.5")),
    )


# --- value types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2013", utc(2013, 1, 1), utc(2013, 12, 31, 23, 59, 59, 999999)),
        ("2013-01", utc(2013, 1, 1), utc(2013, 1, 31, 23, 59, 59, 999999)),
        ("2012-02", utc(2012, 2, 1), utc(2012, 2, 29, 23, 59, 59, 999999)),  # leap year
        ("2013-01-14", utc(2013, 1, 14), utc(2013, 1, 14, 23, 59, 59, 999999)),
        (
            "2013-01-14T10:00:00+10:00",
            utc(2013, 1, 14, 0, 0, 0),
            utc(2013, 1, 14, 0, 0, 0, 999999),
        ),
        (
            "2013-01-14T23:30:05-05:00",
            utc(2013, 1, 15, 4, 30, 5),
            utc(2013, 1, 15, 4, 30, 5, 999999),
        ),
        (
            "2013-01-14T10:00:00.25Z",
            utc(2013, 1, 14, 10, 0, 0, 250000),
            utc(2013, 1, 14, 10, 0, 0, 259999),
        ),
    ],
)
def test_date_precision_ranges(text: str, start: datetime, end: datetime) -> None:
    assert date_range(text) == (start, end)


@pytest.mark.parametrize("text", ["", "2013-13", "2013-02-30", "yesterday", "2013-1-1"])
def test_unreadable_dates_are_none(text: str) -> None:
    assert date_range(text) is None


@pytest.mark.parametrize(
    ("number", "low", "high"),
    [
        ("100", "99.5", "100.5"),  # search.html#number: 100 means [99.5, 100.5)
        ("100.00", "99.995", "100.005"),
        ("0.1", "0.05", "0.15"),
        ("1e2", "50", "150"),  # one significant figure
    ],
)
def test_implicit_ranges(number: str, low: str, high: str) -> None:
    assert implicit_range(Decimal(number)) == (Decimal(low), Decimal(high))


def test_number_parameter() -> None:
    assessment = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "prediction": [{"probabilityDecimal": 0.02}, {"probabilityRange": {"low": {"value": 1}}}],
    }
    assert values_of(assessment, "probability") == [
        NumberValue(Decimal("0.02"), Decimal("0.015"), Decimal("0.025"))
    ]


def test_quantity_from_money_range_and_age() -> None:
    invoice = {
        "resourceType": "Invoice",
        "status": "issued",
        "totalNet": {"value": 40, "currency": "EUR"},
    }
    assert values_of(invoice, "totalnet") == [
        QuantityValue(
            Decimal(40), Decimal("39.5"), Decimal("40.5"), "urn:iso:std:iso:4217", "EUR", None
        )
    ]
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/p1"},
        "onsetRange": {"low": {"value": 40, "unit": "a"}, "high": {"value": 50, "unit": "a"}},
    }
    assert values_of(condition, "onset-age") == [
        QuantityValue(None, Decimal(40), Decimal(50), None, None, "a")
    ]
    condition = {**condition, "onsetAge": {"value": 42, "system": UCUM, "code": "a"}}
    del condition["onsetRange"]
    assert values_of(condition, "onset-age") == [
        QuantityValue(Decimal(42), Decimal("41.5"), Decimal("42.5"), UCUM, "a", None)
    ]
    assert values_of(condition, "onset-date") == []  # an Age is no date


def test_quantity_comparator_opens_the_range() -> None:
    below = {
        **OBSERVATION,
        "component": [],
        "valueQuantity": {"value": 5, "comparator": "<", "system": UCUM, "code": "mg"},
    }
    assert values_of(below, "value-quantity") == [
        QuantityValue(Decimal(5), None, Decimal(5), UCUM, "mg", None)
    ]


def test_timing_dates_are_events_and_bounds() -> None:
    timing = {
        "event": ["2024-05-01"],
        "repeat": {"boundsPeriod": {"start": "2024-05-02", "end": "2024-05-03"}},
    }
    observation = {**OBSERVATION, "effectiveTiming": timing}
    del observation["effectiveDateTime"]
    assert values_of(observation, "date") == [
        day(2024, 5, 1),
        DateValue(utc(2024, 5, 2), utc(2024, 5, 3, 23, 59, 59, 999999)),
    ]
    request = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "aspirin"},
        "dosageInstruction": [{"timing": timing}],
    }
    # MedicationRequest `date` is `dosageInstruction.timing.event`: the events only
    assert values_of(request, "date") == [day(2024, 5, 1)]
    assert values_of(request, "medication") == []  # a CodeableConcept, not a Reference
    assert values_of(request, "code") == [TokenValue(None, None, "aspirin")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Patient/123", ReferenceValue("Patient/123", "Patient", "123")),
        (
            "Patient/123/_history/4",
            ReferenceValue("Patient/123/_history/4", "Patient", "123", "4"),
        ),
        (
            "http://example.org/fhir/Patient/123",
            ReferenceValue(
                "http://example.org/fhir/Patient/123",
                "Patient",
                "123",
                url="http://example.org/fhir/Patient/123",
            ),
        ),
        (
            "http://hl7.org/fhir/ValueSet/example|4.0.1",
            ReferenceValue(
                "http://hl7.org/fhir/ValueSet/example|4.0.1",
                "ValueSet",
                "example",
                "4.0.1",
                url="http://hl7.org/fhir/ValueSet/example",
            ),
        ),
        (
            "urn:uuid:5a6bf0f8-9a16-4a8e-8b2f-1b0d2f3f4c51",
            ReferenceValue(
                "urn:uuid:5a6bf0f8-9a16-4a8e-8b2f-1b0d2f3f4c51",
                url="urn:uuid:5a6bf0f8-9a16-4a8e-8b2f-1b0d2f3f4c51",
            ),
        ),
        (
            "http://example.org/questionnaires/q1",
            ReferenceValue(
                "http://example.org/questionnaires/q1", url="http://example.org/questionnaires/q1"
            ),
        ),
        ("#contained", None),
    ],
)
def test_reference_forms(text: str, expected: ReferenceValue | None) -> None:
    assert parse_reference(text) == expected


def test_reference_identifier_type_and_contained() -> None:
    observation = {
        **OBSERVATION,
        "subject": {
            "type": "Patient",
            "identifier": {"system": "http://hospital.example.org/mrn", "value": "12345"},
        },
        "performer": [{"reference": "#perf"}],
        "contained": [{"resourceType": "Practitioner", "id": "perf"}],
    }
    identified = ReferenceValue(
        None,
        "Patient",
        identifier=TokenValue("http://hospital.example.org/mrn", "12345"),
    )
    assert values_of(observation, "subject") == [identified]
    assert values_of(observation, "patient") == [identified]  # Reference.type says Patient
    assert values_of(observation, "performer") == []  # contained: not a server resource


def test_canonical_reference_parameter() -> None:
    questionnaire = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": "http://example.org/Questionnaire/phq9|2.0",
    }
    assert values_of(questionnaire, "questionnaire") == [
        ReferenceValue(
            "http://example.org/Questionnaire/phq9|2.0",
            "Questionnaire",
            "phq9",
            "2.0",
            url="http://example.org/Questionnaire/phq9",
        )
    ]


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("Müller", "muller"),
        ("  JOSÉ   María\tdel Carmen ", "jose maria del carmen"),
        ("Ǆemal", "dzemal"),  # NFKD splits the ligature
        ("Straße", "strasse"),  # casefold, not just lower
        ("Ångström", "angstrom"),
    ],
)
def test_string_normalization(text: str, normalized: str) -> None:
    assert normalize_string(text) == normalized


def test_values_are_hashable_and_deduplicated() -> None:
    observation = {**OBSERVATION, "performer": [{"reference": "Patient/p1"}] * 3}
    assert values_of(observation, "performer") == [ReferenceValue("Patient/p1", "Patient", "p1")]
    assert len({TokenValue("a", "b"), TokenValue("a", "b")}) == 1


# --- every SearchParameter, every example ---------------------------------------------------


def test_union_is_split_at_the_top_level_only() -> None:
    assert split_union("A.b | (A.c as Quantity) | A.d.where(x='p|q')") == [
        "A.b",
        "(A.c as Quantity)",
        "A.d.where(x='p|q')",
    ]


def test_every_search_parameter_compiles_for_each_base_type() -> None:
    parameters = registry.search_parameters()
    assert len(parameters) == 1375
    fhirpath = []
    for sp in parameters:
        for base in sp["base"]:
            extractor = compile_parameter(sp, base)
            assert extractor.problems == (), (sp["url"], base)
            no_expression = "expression" not in sp
            assert extractor.supported is not (no_expression or sp["code"] == "near"), sp["url"]
            if extractor.uses_fhirpath:
                fhirpath.append((sp["code"], base))
    # all but two branches take a fast path (Patient deceased: ExistsNotFalseBranch)
    assert sorted(fhirpath) == [
        ("composition", "Bundle"),
        ("message", "Bundle"),
    ]


def test_near_is_not_supported() -> None:
    near = extractor_for("Location", "near")
    assert not near.supported
    location = {"resourceType": "Location", "position": {"longitude": 1.0, "latitude": 2.0}}
    assert near.extract(location) == []
    assert "near" not in extract(location)


def test_one_extractor_serves_all_its_base_types() -> None:
    [tag] = [sp for sp in registry.search_parameters() if sp["code"] == "_tag"]
    extractor = compile_parameter(tag)  # base Resource: serves Patient, Bundle, ...
    tagged = {"meta": {"tag": [{"code": "x"}]}}
    expected = [TokenValue(None, "x")]
    assert extractor.extract({"resourceType": "Patient", **tagged}) == expected
    assert extractor.extract({"resourceType": "Bundle", "type": "batch", **tagged}) == expected
    [name] = [sp for sp in registry.search_parameters() if sp["url"].endswith("/individual-family")]
    family = compile_parameter(name)
    assert family.extract({"resourceType": "Practitioner", "name": [{"family": "Ng"}]}) == [
        string("Ng")
    ]
    assert family.extract({"resourceType": "Observation"}) == []


def _official_examples() -> Iterator[dict[str, Any]]:
    with tarfile.open(PACKAGE_TGZ) as package:
        for member in package:
            if not member.name.endswith(".json") or member.name.endswith("package.json"):
                continue
            stream = package.extractfile(member)
            assert stream is not None
            resource = orjson.loads(stream.read())
            stack = [resource]
            while stack:  # the resources inside bundles too
                current = stack.pop()
                yield current
                if current["resourceType"] == "Bundle":
                    stack.extend(e["resource"] for e in current.get("entry", ()) if "resource" in e)


@pytest.mark.slow
@pytest.mark.skipif(
    not PACKAGE_TGZ.is_file(), reason=f"the official FHIR R4 package is not at {PACKAGE_TGZ}"
)
def test_every_official_example_extracts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="carebridge.search")
    count = 0
    for resource in _official_examples():
        extract(resource)
        count += 1
    assert count > 5000
    assert caplog.records == []  # fhirpathpy never failed either


def _stored_the_long_way(resource: dict[str, Any]) -> dict[str, Any]:
    """What extract_stored must give: every parameter evaluated, the stored ones with values."""
    kept = stored_codes(resource["resourceType"])
    return {code: values for code, values in extract(resource).items()
            if values and code in kept}


@pytest.mark.slow
@pytest.mark.skipif(
    not PACKAGE_TGZ.is_file(), reason=f"the official FHIR R4 package is not at {PACKAGE_TGZ}"
)
def test_parameters_chosen_per_key_set_find_what_all_of_them_find() -> None:
    # extract_stored runs only the parameters whose paths start at one of the resource's
    # top-level keys, worked out once per key set: it must miss nothing.
    checked = 0
    for resource in _official_examples():
        resource = {"id": "x", **resource}
        assert extract_stored(resource) == _stored_the_long_way(resource), resource["id"]
        checked += 1
    assert checked > 5000


def test_key_sets_are_remembered_per_type_in_any_order_and_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract_module, "_RUNS", {})
    monkeypatch.setattr(extract_module, "_RUNS_PER_TYPE", 3)
    observation = {"resourceType": "Observation", "id": "o", "status": "final",
                   "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
                   "valueQuantity": {"value": 72, "unit": "/min", "system": UCUM,
                                     "code": "/min"}}
    reordered = dict(reversed(list(observation.items())))
    bare = {"resourceType": "Observation", "id": "o", "status": "final",
            "code": observation["code"]}
    first = extract_stored(observation)
    assert "value-quantity" in first and "code" in first
    assert extract_stored(reordered) == first  # another key order: its own entry, same values
    assert "value-quantity" not in extract_stored(bare)  # fewer keys: fewer parameters run
    assert len(extract_module._RUNS["Observation"]) == 3
    patient = {"resourceType": "Patient", "id": "p", "gender": "male"}
    assert extract_stored(patient) == _stored_the_long_way(patient)
    assert len(extract_module._RUNS["Patient"]) == 1  # kept per type
    extract_stored({**observation, "issued": "2024-01-01T00:00:00Z"})
    assert len(extract_module._RUNS["Observation"]) == 1  # full: forgotten, then this one
    assert extract_stored(observation) == first


def test_a_synthea_bundle_extracts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="carebridge.search")
    bundle = load_bundle("patient-034.json.gz")
    for entry in bundle["entry"]:
        resource = entry["resource"]
        index = extract(resource)
        assert index["_id"] == [TokenValue(None, resource["id"])]
        assert extract_stored(resource) == _stored_the_long_way(resource)
        if resource["resourceType"] == "Observation":
            assert index["code"], resource["id"]
            assert index["date"], resource["id"]
            assert index["status"] == [
                TokenValue("http://hl7.org/fhir/observation-status", resource["status"])
            ]
    assert caplog.records == []


def test_warm_up_compiles_every_resource_type_before_any_write() -> None:
    extract_module = importlib.import_module("carebridge.search.extract")
    extract_module._stored_plan.cache_clear()
    from carebridge.search.index import warm_up

    warm_up().join(timeout=60)
    info = extract_module._stored_plan.cache_info()
    assert info.currsize == len(registry.resource_types()) == 146
    # A write after the warm-up finds its type's plan compiled (keys in an order no other
    # test uses, so its extraction function is generated now, from that plan).
    before = extract_module._stored_plan.cache_info().hits
    extract_stored({"status": "final", "id": "warm", "resourceType": "Observation"})
    assert extract_module._stored_plan.cache_info().hits > before
