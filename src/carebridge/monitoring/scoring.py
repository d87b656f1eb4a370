"""From committed Observations to readings, and from readings to a stored NEWS2 score.

Any committed vital-sign Observation counts, whatever way it came in (device gateway, REST,
HL7 v2 ORU): ``readings_of`` projects it into ``mon_reading`` rows (one per LOINC code, the
blood-pressure panel giving systolic and diastolic). ``news2_for`` scores a patient from each
parameter's latest reading within the window, and ``news2_observation`` is the Observation
stored for it (SNOMED CT 1104051000000101, a component per parameter with its sub-score,
missing parameters as components with a dataAbsentReason, ``derivedFrom`` the readings and
the chart 4 risk band as ``interpretation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from carebridge.events.sqltext import run
from carebridge.fhir.resource import Resource, format_instant
from carebridge.monitoring.codes import (
    DATA_ABSENT,
    NEWS2_PARAMETER,
    NEWS2_RISK,
    NEWS2_TOTAL,
    OBSERVATION_CATEGORY,
    SNOMED,
    from_text,
    instant_text,
)
from carebridge.monitoring.news2 import Consciousness, News2Result, Parameter, news2_score
from carebridge.monitoring.rules import normal_code
from carebridge.monitoring.vitals import (
    BP_PANEL,
    DIASTOLIC,
    SYSTOLIC,
    VITAL_SIGNS,
    effective_instant,
    loinc_codes,
)
from carebridge.storage.base import Session

# NEWS2 parameter -> the LOINC code whose latest reading scores it.
NEWS2_CODES = {
    Parameter.RESPIRATION_RATE: "9279-1",
    Parameter.SPO2: "2708-6",
    Parameter.SYSTOLIC_BP: SYSTOLIC,
    Parameter.PULSE: "8867-4",
    Parameter.TEMPERATURE: "8310-5",
}
FIO2, O2_FLOW = "3150-0", "3151-8"
# Level of consciousness (ACVPU) is an assessment, not a device number. It is taken from an
# Observation coded as the NHS NEWS2 FHIR guidance codes it (SNOMED CT UK 1104441000000107,
# https://nhsconnect.github.io/FHIR-NEWS2/news2_acvpu_guidance.html) or as LOINC 67775-7
# "Level of responsiveness", whose valueCodeableConcept is one of the SNOMED CT findings of the
# CareConnect ACVPU value set. It is kept in mon_reading under the SNOMED code, the value
# being the position in ACVPU order (0 alert ... 4 unresponsive).
ACVPU = "1104441000000107"
ACVPU_LOINC = "67775-7"
ACVPU_ORDER = tuple(Consciousness)
ACVPU_ANSWERS = {
    "248234008": Consciousness.ALERT,  # Mentally alert
    "130987000": Consciousness.CONFUSION,  # Acute confusion (new confusion)
    "300202002": Consciousness.VOICE,  # Responds to voice
    "255373000": Consciousness.VOICE,  # Verbal (IHE mPSC AVPU value set)
    "450847001": Consciousness.PAIN,  # Responds to pain
    "422768004": Consciousness.UNRESPONSIVE,  # Unresponsive
}
SCORED_ORDER = (*NEWS2_CODES.values(), ACVPU, FIO2, O2_FLOW)
SCORED_CODES = frozenset(SCORED_ORDER)
_FINAL = ("final", "amended", "corrected", "preliminary")
_LABELS = {
    Parameter.RESPIRATION_RATE: "Respiration rate", Parameter.SPO2: "SpO2",
    Parameter.AIR_OR_OXYGEN: "Air or oxygen", Parameter.SYSTOLIC_BP: "Systolic blood pressure",
    Parameter.PULSE: "Pulse", Parameter.CONSCIOUSNESS: "Consciousness",
    Parameter.TEMPERATURE: "Temperature",
}
RISK_TEXT = {"low": "Low clinical risk (NEWS2 0-4)",
             "low-medium": "Low-medium clinical risk (a 3 in a single parameter)",
             "medium": "Medium clinical risk (NEWS2 5-6)", "high": "High clinical risk (NEWS2 7+)"}


@dataclass(frozen=True, slots=True)
class ReadingRow:
    patient_id: str
    code: str
    effective: datetime
    value: float
    observation_id: str

    def row(self) -> tuple[Any, ...]:
        return (self.patient_id, self.code, instant_text(self.effective), self.value,
                self.observation_id)


def _quantity_value(quantity: Any, code: str) -> float | None:
    if not isinstance(quantity, dict) or quantity.get("code") != VITAL_SIGNS[code].unit:
        return None
    value = quantity.get("value")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _codes(concept: Any, system: str) -> list[str]:
    if not isinstance(concept, dict):
        return []
    return [str(c["code"]) for c in concept.get("coding") or []
            if isinstance(c, dict) and c.get("system") == system and isinstance(c.get("code"), str)]


def acvpu_level(observation: Resource) -> Consciousness | None:
    """The ACVPU level an Observation records, if it is a level-of-consciousness one."""
    if ACVPU not in _codes(observation.get("code"), SNOMED) and (
            ACVPU_LOINC not in loinc_codes(observation.get("code"))):
        return None
    for answer in _codes(observation.get("valueCodeableConcept"), SNOMED):
        if answer in ACVPU_ANSWERS:
            return ACVPU_ANSWERS[answer]
    return None


def readings_of(observation: Resource) -> list[ReadingRow]:
    """The vital-sign readings in a committed Observation (none if it holds none we use)."""
    if observation.get("status") not in _FINAL:
        return []
    subject = (observation.get("subject") or {}).get("reference")
    if not isinstance(subject, str) or not subject.startswith("Patient/"):
        return []
    patient = subject.removeprefix("Patient/")
    codes = loinc_codes(observation.get("code"))
    try:
        effective = effective_instant(observation, "Observation")
    except Exception:
        return []
    oid = str(observation.get("id"))
    out: list[ReadingRow] = []
    level = acvpu_level(observation)
    if level is not None:
        return [ReadingRow(patient, ACVPU, effective, float(ACVPU_ORDER.index(level)), oid)]
    if BP_PANEL in codes:
        for component in observation.get("component") or []:
            for code in loinc_codes(component.get("code")):
                if code in (SYSTOLIC, DIASTOLIC):
                    value = _quantity_value(component.get("valueQuantity"), code)
                    if value is not None:
                        out.append(ReadingRow(patient, code, effective, value, oid))
        return out
    for code in codes:
        if code in VITAL_SIGNS:
            value = _quantity_value(observation.get("valueQuantity"), code)
            if value is not None:
                out.append(ReadingRow(patient, normal_code(code), effective, value, oid))
            break
    return out


@dataclass(frozen=True, slots=True)
class News2Score:
    patient_id: str
    result: News2Result
    effective: datetime
    derived_from: tuple[str, ...]


def latest_readings(session: Session, dialect: str, patient_id: str, until: datetime,
                    window: timedelta,
                    codes: Sequence[str] = SCORED_ORDER) -> dict[str, tuple[float, datetime, str]]:
    """Each code's latest reading in (until - window, until]: one index probe per code
    (``mon_reading_latest`` is ordered by patient, code, effective)."""
    low, high = instant_text(until - window), instant_text(until)
    parts, params = [], []
    for n, code in enumerate(codes):
        parts.append("SELECT * FROM (SELECT code, value, effective, observation_id FROM"
                     " mon_reading WHERE patient_id = ? AND code = ? AND effective > ? AND"
                     f" effective <= ? ORDER BY effective DESC LIMIT 1) AS latest{n}")
        params += [patient_id, code, low, high]
    rows = run(session, dialect, " UNION ALL ".join(parts), params)
    return {r[0]: (float(r[1]), from_text(r[2]), str(r[3])) for r in rows}


def news2_for(session: Session, dialect: str, patient_id: str, until: datetime,
              window: timedelta, hypercapnic: bool,
              pending: Sequence[ReadingRow] = ()) -> News2Score:
    """The score from each parameter's latest reading in (until - window, until], taken
    from ``mon_reading`` and ``pending`` (this patient's readings not stored yet)."""
    latest = latest_readings(session, dialect, patient_id, until, window)
    low = until - window
    for r in pending:
        if r.code in SCORED_CODES and low < r.effective <= until and (
                r.code not in latest or r.effective > latest[r.code][1]):
            latest[r.code] = (r.value, r.effective, r.observation_id)

    def value(code: str) -> float | None:
        found = latest.get(code)
        return found[0] if found else None

    fio2, flow = latest.get(FIO2), latest.get(O2_FLOW)
    on_oxygen: bool | None = None
    if fio2 is not None or flow is not None:
        # Room air is 21 % oxygen; any flow means supplemental oxygen.
        on_oxygen = bool((fio2 is not None and fio2[0] > 21) or (flow is not None and flow[0] > 0))
    result = news2_score(
        respiration_rate=value(NEWS2_CODES[Parameter.RESPIRATION_RATE]),
        spo2=value(NEWS2_CODES[Parameter.SPO2]), on_oxygen=on_oxygen,
        systolic_bp=value(SYSTOLIC), pulse=value(NEWS2_CODES[Parameter.PULSE]),
        consciousness=_level(value(ACVPU)),
        temperature=value(NEWS2_CODES[Parameter.TEMPERATURE]),
        hypercapnic_respiratory_failure=hypercapnic)
    used = [latest[c] for c in SCORED_ORDER if c in latest]
    effective = max((u[1] for u in used), default=until)
    derived = tuple(dict.fromkeys(u[2] for u in used))
    return News2Score(patient_id, result, effective, derived)


def _level(ordinal: float | None) -> Consciousness | None:
    if ordinal is None or not 0 <= int(ordinal) < len(ACVPU_ORDER):
        return None
    return ACVPU_ORDER[int(ordinal)]


def news2_observation(score: News2Score, issued: datetime) -> Resource:
    result = score.result
    components: list[dict[str, Any]] = []
    for parameter in Parameter:
        code = {"coding": [{"system": NEWS2_PARAMETER, "code": parameter.value,
                            "display": _LABELS[parameter]}]}
        if parameter in result.sub_scores:
            components.append({"code": code, "valueInteger": result.sub_scores[parameter]})
        else:
            components.append({"code": code, "dataAbsentReason": {"coding": [
                {"system": DATA_ABSENT, "code": "unknown"}],
                "text": "no reading within the scoring window"}})
    notes = []
    if result.missing:
        notes.append("Missing parameters (not scored): "
                     + ", ".join(_LABELS[p] for p in result.missing)
                     + ". The band is what the present parameters imply; it can only rise.")
    if result.oxygen_assumed:
        notes.append("No inhaled-oxygen reading: scored as air.")
    if result.spo2_scale == 2:
        notes.append("SpO2 scale 2 (hypercapnic respiratory failure).")
    observation: Resource = {
        "resourceType": "Observation",
        "status": "final" if result.complete else "preliminary",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "survey"}]}],
        "code": {"coding": [{"system": SNOMED, "code": NEWS2_TOTAL,
                             "display": "National Early Warning Score 2 total score"}],
                 "text": "NEWS2"},
        "subject": {"reference": f"Patient/{score.patient_id}"},
        "effectiveDateTime": format_instant(score.effective),
        "issued": format_instant(issued),
        "valueInteger": result.total,
        "interpretation": [{"coding": [{"system": NEWS2_RISK, "code": result.risk.value,
                                        "display": RISK_TEXT[result.risk.value]}],
                            "text": RISK_TEXT[result.risk.value]}],
        "derivedFrom": [{"reference": f"Observation/{oid}"} for oid in score.derived_from],
        "component": components,
    }
    if notes:
        observation["note"] = [{"text": text} for text in notes]
    return observation
