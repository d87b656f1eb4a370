"""Data-quality rules at their edges: plausibility bounds, units by dimension, future dates."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from carebridge.quality.rules import VITAL_SIGNS, check_quality

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
UCUM = "http://unitsofmeasure.org"


def vital(code: str, value: float, unit: str) -> dict[str, object]:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": value, "system": UCUM, "code": unit}}


def rules(resource: dict[str, object]) -> list[tuple[str, str]]:
    return [(i.diagnostics.split(":", 1)[0], i.expression[0])
            for i in check_quality(resource, NOW)]


@pytest.mark.parametrize(("code", "low", "high"), [
    (code, v.low, v.high) for code, v in VITAL_SIGNS.items()])
def test_bounds_are_inclusive_and_checked_in_the_profile_unit(code: str, low: float,
                                                              high: float) -> None:
    unit = VITAL_SIGNS[code].unit
    assert rules(vital(code, low, unit)) == []
    assert rules(vital(code, high, unit)) == []
    where = "Observation.valueQuantity.value"
    assert rules(vital(code, high * 1.01 + 0.01, unit)) == [("vital-implausible", where)]
    assert rules(vital(code, low * 0.99 - 0.01, unit)) == [("vital-implausible", where)]


def test_units_convert_before_the_bounds_apply() -> None:
    # 98.6 [degF] is 37 Cel; 140 [degF] is 60 Cel (implausible).
    assert rules(vital("8310-5", 98.6, "[degF]")) == []
    assert rules(vital("8310-5", 140, "[degF]")) == [
        ("vital-implausible", "Observation.valueQuantity.value")]
    assert rules(vital("29463-7", 154, "[lb_av]")) == []  # 70 kg
    assert rules(vital("8302-2", 1.8, "m")) == []


def test_the_issue_examples_heart_rate_400_and_temperature_60() -> None:
    assert rules(vital("8867-4", 400, "/min")) == [
        ("vital-implausible", "Observation.valueQuantity.value")]
    assert rules(vital("8310-5", 60, "Cel")) == [
        ("vital-implausible", "Observation.valueQuantity.value")]


def test_units_of_the_wrong_dimension_or_unknown_or_not_ucum() -> None:
    assert rules(vital("29463-7", 70, "cm")) == [("vital-unit", "Observation.valueQuantity.code")]
    assert rules(vital("8867-4", 72, "beats")) == [
        ("vital-unit", "Observation.valueQuantity.code")]
    not_ucum = vital("8867-4", 72, "/min")
    not_ucum["valueQuantity"]["system"] = "http://example.org"  # type: ignore[index]
    assert rules(not_ucum) == [("vital-unit", "Observation.valueQuantity.system")]


def test_blood_pressure_components_and_their_order() -> None:
    def panel(systolic: float, diastolic: float) -> dict[str, object]:
        return {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
                "component": [
                    {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                     "valueQuantity": {"value": systolic, "system": UCUM, "code": "mm[Hg]"}},
                    {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                     "valueQuantity": {"value": diastolic, "system": UCUM, "code": "mm[Hg]"}}]}
    assert rules(panel(120, 80)) == []
    assert rules(panel(80, 120)) == [("bp-order", "Observation.component")]
    assert rules(panel(400, 80)) == [
        ("vital-implausible", "Observation.component[0].valueQuantity.value")]


def test_future_dates_beyond_a_day_of_clock_skew() -> None:
    patient = {"resourceType": "Patient", "birthDate": "2026-06-02"}
    assert rules(patient) == []  # tomorrow: within the skew
    patient["birthDate"] = "2026-06-03"
    assert rules(patient) == [("future-date", "Patient.birthDate")]
    patient["birthDate"] = "2027"
    assert rules(patient) == [("future-date", "Patient.birthDate")]
    encounter = {"resourceType": "Encounter", "period": {"start": "2030-01-01T00:00:00Z"}}
    assert rules(encounter) == [("future-date", "Encounter.period.start")]
    planned = {"resourceType": "MedicationRequest", "authoredOn": "2026-05-31"}
    assert rules(planned) == []


def test_warnings_only() -> None:
    issues = check_quality(vital("8867-4", 400, "/min"), NOW)
    assert {i.severity for i in issues} == {"warning"}
    assert {i.code for i in issues} == {"business-rule"}
