"""Data-quality rules beyond the schema, reported as warnings (never rejecting a write).

* ``vital-implausible``: a vital sign outside the range any living patient can have.
* ``vital-unit``: a vital sign's unit that is not UCUM, not a unit we recognise, or not of the
  dimension its LOINC code measures (e.g. body weight in cm).
* ``bp-order``: a diastolic pressure above the systolic one in the same panel.
* ``future-date``: a clinical event dated after now (more than a day ahead, for clock skew).

The vital-sign codes and their UCUM units are those of the FHIR R4 vital signs profiles
(http://hl7.org/fhir/R4/observation-vitalsigns.html). The plausibility bounds are deliberately
wide, set beyond recorded human extremes (e.g. body temperature survived from 13.7 to 46.5 Cel;
heart rates beyond 300/min are not sustained), so that a warning points at a typo or a unit
mix-up, not at a sick patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from carebridge.fhir.errors import Issue
from carebridge.search.ucum import canonical_float, canonical_unit, same_dimension

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"


@dataclass(frozen=True, slots=True)
class VitalSign:
    name: str
    unit: str  # the profile's unit
    low: float  # plausible bounds, in `unit`
    high: float


# LOINC code -> what the vital signs profiles require, and plausible bounds.
VITAL_SIGNS: dict[str, VitalSign] = {
    "8867-4": VitalSign("heart rate", "/min", 10, 300),
    "9279-1": VitalSign("respiratory rate", "/min", 2, 100),
    "8310-5": VitalSign("body temperature", "Cel", 13, 47),
    "2708-6": VitalSign("oxygen saturation", "%", 20, 100),
    "59408-5": VitalSign("oxygen saturation by pulse oximetry", "%", 20, 100),
    "8480-6": VitalSign("systolic blood pressure", "mm[Hg]", 30, 320),
    "8462-4": VitalSign("diastolic blood pressure", "mm[Hg]", 10, 250),
    "8302-2": VitalSign("body height", "cm", 20, 275),
    "29463-7": VitalSign("body weight", "kg", 0.2, 650),
    "39156-5": VitalSign("body mass index", "kg/m2", 5, 250),
    "9843-4": VitalSign("head circumference", "cm", 15, 90),
}

# Elements that record when something happened (not plans): a future value is suspicious.
EVENT_DATES: dict[str, tuple[str, ...]] = {
    "Patient": ("birthDate",),
    "Observation": ("effectiveDateTime", "effectiveInstant", "issued"),
    "Condition": ("onsetDateTime", "recordedDate", "abatementDateTime"),
    "Procedure": ("performedDateTime",),
    "Immunization": ("occurrenceDateTime", "recorded"),
    "DiagnosticReport": ("effectiveDateTime", "issued"),
    "AllergyIntolerance": ("onsetDateTime", "recordedDate"),
    "MedicationRequest": ("authoredOn",),
    "Encounter": (),
}

_SKEW = timedelta(days=1)


def check_quality(resource: dict[str, Any], now: datetime | None = None) -> list[Issue]:
    """Data-quality warnings for one resource (expressions rooted at its type)."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return []
    issues: list[Issue] = []
    if rtype == "Observation":
        _observation(resource, issues)
    _future_dates(resource, rtype, now or datetime.now(UTC), issues)
    return issues


def _items(value: Any) -> list[Any]:
    """A JSON array's items; nothing for anything else (the validator reports bad shapes)."""
    return value if isinstance(value, list) else []


def _loinc_codes(concept: Any) -> list[str]:
    if not isinstance(concept, dict):
        return []
    return [c["code"] for c in _items(concept.get("coding")) if isinstance(c, dict)
            and c.get("system") == LOINC and isinstance(c.get("code"), str)]


def _observation(resource: dict[str, Any], issues: list[Issue]) -> None:
    for code in _loinc_codes(resource.get("code")):
        vital = VITAL_SIGNS.get(code)
        if vital is not None:
            _vital(vital, code, resource.get("valueQuantity"), "Observation.valueQuantity",
                   issues)
    values: dict[str, float] = {}
    for i, component in enumerate(_items(resource.get("component"))):
        if not isinstance(component, dict):
            continue
        for code in _loinc_codes(component.get("code")):
            vital = VITAL_SIGNS.get(code)
            if vital is None:
                continue
            quantity = component.get("valueQuantity")
            where = f"Observation.component[{i}].valueQuantity"
            value = _vital(vital, code, quantity, where, issues)
            if value is not None:
                values[code] = value
    systolic, diastolic = values.get("8480-6"), values.get("8462-4")
    if systolic is not None and diastolic is not None and diastolic > systolic:
        issues.append(Issue(
            "warning", "business-rule",
            f"bp-order: the diastolic pressure ({diastolic:g}) is above the systolic "
            f"({systolic:g}); are the two components swapped?", ("Observation.component",)))


def _vital(vital: VitalSign, code: str, quantity: Any, where: str,
           issues: list[Issue]) -> float | None:
    """Check unit and plausibility; the value in the profile's unit when comparable."""
    if not isinstance(quantity, dict):
        return None
    value = quantity.get("value")
    unit = quantity.get("code")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if quantity.get("system") != UCUM or not isinstance(unit, str):
        issues.append(Issue(
            "warning", "business-rule",
            f"vital-unit: {vital.name} (LOINC {code}) should carry a UCUM unit "
            f"(system {UCUM}, code {vital.unit!r})", (f"{where}.system",)))
        return None
    if canonical_unit(unit) is None:
        issues.append(Issue(
            "warning", "business-rule",
            f"vital-unit: {unit!r} is not a UCUM unit we recognise for {vital.name} "
            f"(LOINC {code}); expected {vital.unit!r}", (f"{where}.code",)))
        return None
    if not same_dimension(unit, vital.unit):
        issues.append(Issue(
            "warning", "business-rule",
            f"vital-unit: {unit!r} does not measure {vital.name} (LOINC {code}); expected a "
            f"unit like {vital.unit!r}", (f"{where}.code",)))
        return None
    converted = _convert(float(value), unit, vital.unit)
    if converted is None:
        return None
    if not vital.low <= converted <= vital.high:
        issues.append(Issue(
            "warning", "business-rule",
            f"vital-implausible: {vital.name} of {value:g} {unit} is physiologically "
            f"implausible (plausible: {vital.low:g}-{vital.high:g} {vital.unit}); check the "
            "value and its unit", (f"{where}.value",)))
    return converted


def _convert(value: float, unit: str, target: str) -> float | None:
    if unit == target:
        return value
    source = canonical_float(value, unit)
    one = canonical_float(1.0, target)
    zero = canonical_float(0.0, target)
    if source is None or one is None or zero is None or one[0] == zero[0]:
        return None
    # Linear units (temperatures have an offset): value = zero + x * (one - zero).
    return (source[0] - zero[0]) / (one[0] - zero[0])


def _future_dates(resource: dict[str, Any], rtype: str, now: datetime,
                  issues: list[Issue]) -> None:
    names = list(EVENT_DATES.get(rtype, ()))
    period = resource.get("period") if rtype == "Encounter" else None
    candidates: list[tuple[Any, str]] = [(resource.get(n), f"{rtype}.{n}") for n in names]
    if isinstance(period, dict):
        candidates.append((period.get("start"), f"{rtype}.period.start"))
    for value, where in candidates:
        if not isinstance(value, str):
            continue
        moment = _earliest(value)
        if moment is not None and moment > now + _SKEW:
            issues.append(Issue(
                "warning", "business-rule",
                f"future-date: {value} is in the future; {where.split('.', 1)[1]} records "
                "something that has happened", (where,)))


def _earliest(value: str) -> datetime | None:
    """The start of a FHIR date/dateTime/instant (partial dates start at their beginning)."""
    try:
        if len(value) == 4:
            return datetime(int(value), 1, 1, tzinfo=UTC)
        if len(value) == 7:
            return datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=UTC)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
