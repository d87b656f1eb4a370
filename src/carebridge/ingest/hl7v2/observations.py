"""OBX -> Observation (IG segment map OBX[Observation]; concept maps InterpretationCodes,
ObservationResultStatusCodesInterpretation).

Values by OBX-2: NM -> valueQuantity (OBX-6 units mapped to UCUM); SN -> valueQuantity with
comparator, valueRange (``-``), valueRatio (``:``/``/``) or valueString (IG SN rows);
ST/TX/FT -> valueString (repetitions joined by line breaks); CWE/CE/CNE/CF/IS ->
valueCodeableConcept; DT/DTM/TS -> valueDateTime; TM -> valueTime; NR -> valueRange.

Vital signs: an OBX whose LOINC code is one of the FHIR R4 vital signs
(http://hl7.org/fhir/R4/observation-vitalsigns.html) becomes a vital-signs Observation:
category ``vital-signs`` and its value in the UCUM unit the profile names, so remote
monitoring (NEWS2) can score it. A vital sign whose unit cannot be read as UCUM is an error
(AE), not a silently unscorable value.
"""

from __future__ import annotations

import re
from decimal import Decimal

from carebridge.ingest.hl7v2.datatypes import (
    Json,
    compact,
    cwe_concept,
    decimal,
    dtm,
    json_number,
    quantity,
)
from carebridge.ingest.hl7v2.errors import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    MessageError,
)
from carebridge.ingest.hl7v2.parsing import Composite, Message, Segment, part
from carebridge.ingest.hl7v2.vocabulary import (
    ABNORMAL_FLAGS,
    INTERPRETATION,
    LOINC,
    OBSERVATION_STATUS,
    UCUM,
)

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"

# LOINC vital signs of the R4 vital signs profile -> the UCUM units it allows (first: default)
VITAL_SIGNS: dict[str, tuple[str, ...]] = {
    "8867-4": ("/min",),              # heart rate
    "9279-1": ("/min",),              # respiratory rate
    "2708-6": ("%",),                 # oxygen saturation in arterial blood
    "59408-5": ("%",),                # oxygen saturation by pulse oximetry
    "8310-5": ("Cel", "[degF]"),      # body temperature
    "8480-6": ("mm[Hg]",),            # systolic blood pressure
    "8462-4": ("mm[Hg]",),            # diastolic blood pressure
    "8478-0": ("mm[Hg]",),            # mean blood pressure
    "29463-7": ("kg", "g", "[lb_av]", "[oz_av]"),  # body weight
    "8302-2": ("cm", "[in_i]"),       # body height
    "9843-4": ("cm", "[in_i]"),       # head circumference
    "39156-5": ("kg/m2",),            # body mass index
    # Not in the R4 vital signs profile, but read by NEWS2 (supplemental oxygen):
    "3150-0": ("%",),                 # inhaled oxygen concentration
    "3151-8": ("L/min",),             # inhaled oxygen flow rate
}


def is_vital_sign(code: Json | None) -> str | None:
    for coding in (code or {}).get("coding", []):
        if coding.get("system") == LOINC and coding.get("code") in VITAL_SIGNS:
            return str(coding["code"])
    return None


def observation(obx: Segment, subject: str, encounter: str | None,
                default_time: str | None) -> Json:
    """One OBX as an Observation (identity and category are the caller's business)."""
    code = cwe_concept(obx.first(3))
    if code is None:
        raise MessageError("OBX-3 (observation identifier) is required", REQUIRED_FIELD_MISSING,
                           "OBX", obx.sequence, 3)
    status_code = obx.value(11).upper()
    status = OBSERVATION_STATUS.get(status_code) if status_code else "final"
    if status is None:
        raise MessageError(f"OBX-11 {status_code!r} is not in HL7 table 0085",
                           TABLE_VALUE_NOT_FOUND, "OBX", obx.sequence, 11)
    resource: Json = {"resourceType": "Observation", "status": status, "code": code,
                      "subject": {"reference": subject}}
    if encounter:
        resource["encounter"] = {"reference": encounter}
    effective = dtm(obx.value(14), ("OBX", obx.sequence, 14)) or default_time
    if effective:
        resource["effectiveDateTime"] = effective
    vital = is_vital_sign(code)
    value = _value(obx, vital)
    if value is not None:
        sent = value.get("valueQuantity", {}).pop("_sent", None)
        if sent:  # converted to the vital sign's preferred unit: say what was sent
            resource["note"] = [{"text": f"Sent as {sent} (OBX-5/OBX-6)."}]
        resource.update(value)
    elif status != "cancelled":
        reason = "not-asked" if status_code == "N" else "unknown"
        resource["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": reason}]}
    flags = [f for f in obx.repetitions(8) if part(f, 1)]
    if flags:
        resource["interpretation"] = [_interpretation(f, obx) for f in flags]
    reference_range = _reference_range(obx.value(7), obx.first(6), vital)
    if reference_range:
        resource["referenceRange"] = [reference_range]
    for element, n in (("method", 17), ("bodySite", 20)):
        concept = cwe_concept(obx.first(n))
        if concept:
            resource[element] = concept
    category = "vital-signs" if vital else None
    if category:
        resource["category"] = [{"coding": [{"system": CATEGORY, "code": category,
                                             "display": "Vital Signs"}]}]
    return resource


def add_notes(resource: Json, message: Message, obx: Segment) -> None:
    """NTE segments right after an OBX -> Observation.note (IG NTE[Observation]: NTE-3)."""
    notes = []
    for segment in message.segments[obx.position + 1:]:
        if segment.name != "NTE":
            break
        text = "\n".join(part(rep, 1) for rep in segment.repetitions(3))
        if text.strip():
            notes.append({"text": text})
    if notes:
        resource["note"] = [*resource.get("note", []), *notes]


def _interpretation(flag: Composite, obx: Segment) -> Json:
    code = part(flag, 1).strip()
    display = ABNORMAL_FLAGS.get(code)
    if display is None:
        raise MessageError(f"OBX-8 {code!r} is not in HL7 table 0078", TABLE_VALUE_NOT_FOUND,
                           "OBX", obx.sequence, 8)
    return {"coding": [{"system": INTERPRETATION, "code": code, "display": display}]}


def _value(obx: Segment, vital: str | None) -> Json | None:
    kind = obx.value(2).upper()
    reps = obx.repetitions(5)
    if not reps:
        return None
    first = reps[0]
    where = ("OBX", obx.sequence, 5)
    if kind == "NM":
        number = decimal(part(first, 1))
        if number is None:
            raise MessageError(f"OBX-5 {part(first, 1)!r} is not a number (OBX-2 is NM)",
                               DATA_TYPE_ERROR, *where)
        return {"valueQuantity": _vital_quantity(number, obx, vital)}
    if kind == "SN":
        return _structured_numeric(first, obx, vital)
    if kind in ("ST", "TX", "FT"):
        return {"valueString": "\n".join("^".join(c[0] if c else "" for c in r).rstrip("^")
                                         for r in reps)}
    if kind in ("CWE", "CE", "CNE", "CF", "IS", "ID"):
        concept = cwe_concept(first)
        return {"valueCodeableConcept": concept} if concept else None
    if kind in ("DT", "DTM", "TS"):
        return {"valueDateTime": dtm(part(first, 1), where)}
    if kind == "TM":
        text = part(first, 1)
        if len(text) < 4 or not text[:4].isdigit():
            raise MessageError(f"OBX-5 {text!r} is not a time (HHMM[SS])", DATA_TYPE_ERROR,
                               *where)
        return {"valueTime": f"{text[:2]}:{text[2:4]}:{text[4:6] or '00'}"}
    if kind == "NR":
        return {"valueRange": compact({"low": _bound(part(first, 1), obx),
                                       "high": _bound(part(first, 2), obx)})}
    if not kind:
        raise MessageError("OBX-2 (value type) is required when OBX-5 is valued",
                           REQUIRED_FIELD_MISSING, "OBX", obx.sequence, 2)
    # Other types (ED, RP, ...): the text as sent (IG default row: valueString).
    return {"valueString": "^".join(c[0] if c else "" for c in first).rstrip("^")}


def _bound(text: str, obx: Segment) -> Json | None:
    number = decimal(text)
    return quantity(number, obx.first(6)) if number is not None else None


def _structured_numeric(sn: Composite, obx: Segment, vital: str | None) -> Json:
    """SN: comparator^num1^separator/suffix^num2 (IG SN[Quantity]/[Range]/[Ratio])."""
    comparator, num1, separator, num2 = (part(sn, i).strip() for i in (1, 2, 3, 4))
    first = decimal(num1)
    where = ("OBX", obx.sequence, 5)
    if comparator == "<>" or separator == "+" or (first is None and num1):
        return {"valueString": " ".join(p for p in (comparator, num1, separator, num2) if p)}
    if first is None:
        raise MessageError(f"OBX-5 {'^'.join(c[0] if c else '' for c in sn)!r} is not a"
                           " structured numeric", DATA_TYPE_ERROR, *where)
    second = decimal(num2)
    if separator in (":", "/") and second is not None:
        return {"valueRatio": {"numerator": {"value": json_number(first)},
                               "denominator": {"value": json_number(second)}}}
    if separator == "-" and second is not None:
        units = obx.first(6)
        return {"valueRange": {"low": quantity(first, units), "high": quantity(second, units)}}
    value = _vital_quantity(first, obx, vital)
    if comparator in ("<", "<=", ">", ">="):
        value["comparator"] = comparator
    return {"valueQuantity": value}


def _vital_quantity(number: Decimal, obx: Segment, vital: str | None) -> Json:
    units = obx.first(6)
    value = quantity(number, units)
    if vital is None:
        return value
    allowed = VITAL_SIGNS[vital]
    if not part(units, 1) and len(allowed) == 1:
        # No unit sent, but the code allows only one: it is that unit (e.g. /min, %).
        return {"value": value["value"], "unit": allowed[0], "system": UCUM,
                "code": allowed[0]}
    code = value.get("code")
    if code not in allowed:
        raise MessageError(
            f"OBX-6 unit {part(units, 1)!r} of vital sign {vital} is not one of the UCUM units"
            f" {', '.join(allowed)}", DATA_TYPE_ERROR, "OBX", obx.sequence, 6)
    convert = TO_PREFERRED.get(str(code))
    if convert is None:
        return value
    # One unit per vital sign, the one scoring (NEWS2: Celsius) and trends use; exact
    # factors (UCUM: [degF] = 5/9 K offset 32, [lb_av] = 0.45359237 kg, [in_i] = 2.54 cm).
    preferred, factor = convert
    converted = (number - 32) * factor if code == "[degF]" else number * factor
    rounded = converted.quantize(Decimal("0.01")).normalize()
    return {"value": json_number(rounded), "unit": preferred, "system": UCUM,
            "code": preferred, "_sent": f"{json_number(number)} {code}"}


TO_PREFERRED: dict[str, tuple[str, Decimal]] = {
    "[degF]": ("Cel", Decimal(5) / Decimal(9)),
    "[lb_av]": ("kg", Decimal("0.45359237")),
    "[oz_av]": ("kg", Decimal("0.028349523125")),
    "g": ("kg", Decimal("0.001")),
    "[in_i]": ("cm", Decimal("2.54")),
}


_RANGE = re.compile(r"^\s*(?:(?P<cmp>[<>]=?)\s*(?P<bound>[+-]?\d+(?:\.\d+)?)"
                    r"|(?P<low>[+-]?\d+(?:\.\d+)?)\s*-\s*(?P<high>[+-]?\d+(?:\.\d+)?))"
                    r"\s*(?P<unit>[^\d\s].*)?$")


def _reference_range(text: str, units: Composite, vital: str | None) -> Json | None:
    """OBX-7 (HL7 v2.5.1 7.4.2.7: 'lower-upper', '> lower', '< upper', else text) ->
    referenceRange with low/high in the OBX-6 units, and the text as sent."""
    text = text.strip()
    if not text:
        return None
    match = _RANGE.match(text)
    if match is None:
        return {"text": text}
    out: Json = {}
    if match["cmp"]:
        bound = decimal(match["bound"])
        assert bound is not None
        out["high" if match["cmp"].startswith("<") else "low"] = quantity(bound, units)
    else:
        low, high = decimal(match["low"]), decimal(match["high"])
        assert low is not None and high is not None
        out["low"], out["high"] = quantity(low, units), quantity(high, units)
    out["text"] = text
    return out
