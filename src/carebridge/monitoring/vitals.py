"""Vital-sign readings from devices: the codes and units we take, the compact JSON form, and
the checks of the FHIR R4 vital-signs profile (http://hl7.org/fhir/R4/observation-vitalsigns.html).

The profile asks for ``status``, ``category`` vital-signs, a LOINC ``code``, ``subject``,
``effective[x]`` and, for a number, a ``valueQuantity`` in UCUM. Device readings are held to
the table below (LOINC code -> UCUM unit); the server fills ``subject`` and ``device`` from
the Device resource, so a device cannot write into another patient's record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from carebridge.fhir.errors import FhirError, Unprocessable
from carebridge.fhir.resource import Resource, parse_instant

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
VITAL_SIGNS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"

BP_PANEL = "85354-9"
SYSTOLIC = "8480-6"
DIASTOLIC = "8462-4"
SPO2 = "2708-6"
SPO2_PULSE_OX = "59408-5"


@dataclass(frozen=True, slots=True)
class VitalSign:
    code: str
    display: str
    unit: str  # UCUM code
    low: float  # plausible range: a reading outside it is a device fault, not a patient
    high: float


VITAL_SIGNS: dict[str, VitalSign] = {v.code: v for v in (
    VitalSign("9279-1", "Respiratory rate", "/min", 0, 120),
    VitalSign("8867-4", "Heart rate", "/min", 0, 350),
    VitalSign(SPO2, "Oxygen saturation in Arterial blood", "%", 0, 100),
    VitalSign(SPO2_PULSE_OX, "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 0,
              100),
    VitalSign("8310-5", "Body temperature", "Cel", 20, 46),
    VitalSign(SYSTOLIC, "Systolic blood pressure", "mm[Hg]", 0, 350),
    VitalSign(DIASTOLIC, "Diastolic blood pressure", "mm[Hg]", 0, 300),
    VitalSign("29463-7", "Body weight", "kg", 0.2, 700),
    VitalSign("3150-0", "Inhaled oxygen concentration", "%", 0, 100),
    VitalSign("3151-8", "Inhaled oxygen flow rate", "L/min", 0, 80),
)}
# Codes a device may send as a whole Observation (the BP parts come inside the panel).
DEVICE_CODES = frozenset(VITAL_SIGNS) - {SYSTOLIC, DIASTOLIC} | {BP_PANEL}

# Compact form keys (docs/monitoring.md) -> LOINC code.
COMPACT_KEYS = {
    "rr": "9279-1", "hr": "8867-4", "spo2": SPO2_PULSE_OX, "temp": "8310-5",
    "weight": "29463-7", "fio2": "3150-0", "o2flow": "3151-8",
}
COMPACT_OTHER = {"t", "sbp", "dbp", "battery", "signal", "secret"}


def reading_id(device_id: str, code: str, effective: datetime) -> str:
    """The Observation id of a device reading: the same (device, code, instant) always gives
    the same id, so a redelivered reading is recognised by the resource key itself.

    ``r``, the reading's instant in milliseconds (12 hex digits), then 27 hex digits of the
    SHA-256 of the key: readings arrive roughly in time order, so their ids land near the
    right edge of every id-keyed B-tree (like server-assigned UUIDv7 ids) instead of on a
    random page each."""
    moment = effective.astimezone(UTC)
    key = f"{device_id}|{code}|{moment.isoformat()}"
    millis = max(0, int(moment.timestamp() * 1000)) & 0xFFFF_FFFF_FFFF
    return f"r{millis:012x}{hashlib.sha256(key.encode()).hexdigest()[:27]}"


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _coding(code: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code, "display": VITAL_SIGNS[code].display
                        if code in VITAL_SIGNS else "Blood pressure panel"}]}


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unprocessable(f"{where} must be a number", (where,))
    return float(value)


def compact_observations(reading: dict[str, Any]) -> list[Resource]:
    """Observations from one compact reading ``{"t": instant, "hr": 72, "sbp": 120, ...}``."""
    unknown = set(reading) - set(COMPACT_KEYS) - COMPACT_OTHER
    if unknown:
        raise Unprocessable(f"Unknown key(s) {sorted(unknown)} in a compact reading",
                            tuple(sorted(unknown)))
    when = reading.get("t")
    if not isinstance(when, str):
        raise Unprocessable("A compact reading needs \"t\", the instant it was measured", ("t",))
    out: list[Resource] = []
    for key, code in COMPACT_KEYS.items():
        if key in reading:
            value = _number(reading[key], key)
            out.append(_observation(code, when, {"valueQuantity": _quantity(
                value, VITAL_SIGNS[code].unit)}))
    if "sbp" in reading or "dbp" in reading:
        if "sbp" not in reading or "dbp" not in reading:
            raise Unprocessable("Blood pressure needs both sbp and dbp", ("sbp",))
        components = [
            {"code": _coding(SYSTOLIC),
             "valueQuantity": _quantity(_number(reading["sbp"], "sbp"), "mm[Hg]")},
            {"code": _coding(DIASTOLIC),
             "valueQuantity": _quantity(_number(reading["dbp"], "dbp"), "mm[Hg]")},
        ]
        out.append(_observation(BP_PANEL, when, {"component": components}))
    return out


def _observation(code: str, when: str, value: dict[str, Any]) -> Resource:
    return {
        "resourceType": "Observation",
        "meta": {"profile": [VITAL_SIGNS_PROFILE]},
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": "vital-signs"}]}],
        "code": _coding(code),
        "effectiveDateTime": when,
        **value,
    }


def loinc_codes(concept: Any) -> list[str]:
    if not isinstance(concept, dict):
        return []
    return [str(c["code"]) for c in concept.get("coding") or []
            if isinstance(c, dict) and c.get("system") == LOINC and isinstance(c.get("code"), str)]


def primary_code(observation: Resource) -> str | None:
    """The first LOINC code of ``Observation.code`` that is one we take from devices."""
    for code in loinc_codes(observation.get("code")):
        if code in DEVICE_CODES:
            return code
    return None


def effective_instant(observation: Resource, where: str) -> datetime:
    value = observation.get("effectiveDateTime")
    if value is None and isinstance(observation.get("effectivePeriod"), dict):
        value = observation["effectivePeriod"].get("start")
    if not isinstance(value, str):
        raise Unprocessable("A vital-signs reading needs effectiveDateTime",
                            (f"{where}.effective",))
    try:
        return parse_instant(value)
    except FhirError:
        raise Unprocessable(f"{value!r} is not a valid dateTime",
                            (f"{where}.effectiveDateTime",)) from None


def _check_quantity(quantity: Any, code: str, where: str) -> None:
    sign = VITAL_SIGNS[code]
    if not isinstance(quantity, dict):
        raise Unprocessable(f"{sign.display} needs a valueQuantity", (f"{where}.valueQuantity",))
    if quantity.get("system") != UCUM or quantity.get("code") != sign.unit:
        raise Unprocessable(
            f"{sign.display} ({code}) must be in UCUM {sign.unit!r}, got system"
            f" {quantity.get('system')!r} code {quantity.get('code')!r}",
            (f"{where}.valueQuantity.code",))
    value = _number(quantity.get("value"), f"{where}.valueQuantity.value")
    if not sign.low <= value <= sign.high:
        raise Unprocessable(
            f"{sign.display} {value} {sign.unit} is outside the plausible range"
            f" {sign.low}-{sign.high}", (f"{where}.valueQuantity.value",))


def check_vital_sign(observation: Resource, where: str = "Observation") -> tuple[str, datetime]:
    """Check a device reading against the vital-signs profile and our code/unit table;
    returns its code and effective instant. Raises Unprocessable naming the element."""
    if observation.get("resourceType") != "Observation":
        raise Unprocessable("A device reading must be an Observation", (f"{where}.resourceType",))
    if observation.get("status") not in ("final", "amended", "corrected", "preliminary"):
        raise Unprocessable("status must be final, amended, corrected or preliminary",
                            (f"{where}.status",))
    categories = observation.get("category") or []
    if not any(c.get("system") == CATEGORY_SYSTEM and c.get("code") == "vital-signs"
               for cat in categories if isinstance(cat, dict)
               for c in cat.get("coding") or [] if isinstance(c, dict)):
        raise Unprocessable("category must include vital-signs", (f"{where}.category",))
    code = primary_code(observation)
    if code is None:
        raise Unprocessable(
            f"code must be one of the LOINC vital signs {sorted(DEVICE_CODES)}",
            (f"{where}.code",))
    effective = effective_instant(observation, where)
    if code == BP_PANEL:
        parts = {c: index for index, comp in enumerate(observation.get("component") or [])
                 if isinstance(comp, dict)
                 for c in loinc_codes(comp.get("code")) if c in (SYSTOLIC, DIASTOLIC)}
        for part in (SYSTOLIC, DIASTOLIC):
            if part not in parts:
                raise Unprocessable(f"A blood pressure panel needs a {part} component",
                                    (f"{where}.component",))
            index = parts[part]
            _check_quantity(observation["component"][index].get("valueQuantity"), part,
                            f"{where}.component[{index}]")
    else:
        _check_quantity(observation.get("valueQuantity"), code, where)
    return code, effective
