"""Personal monitoring rules, stored as FHIR ``Basic`` resources, and their pure evaluation.

A rule is a ``Basic`` whose ``code`` is from carebridge's monitoring-rule code system and
whose ``subject`` is the Patient it watches (or a CarePlan: the rule then watches the plan's
subject). Its parameters sit in one complex extension (docs/monitoring.md has examples)::

    Basic.code      threshold | trend | no-data | news2-spo2-scale-2 | news2 (enrol only)
    extension[url=.../monitoring-rule].extension:
      code        valueCoding   the LOINC vital sign watched
      comparator  valueCode     < <= > >=          (threshold)
      value       valueDecimal  the threshold, or the change for a trend (+2: a rise of 2)
      duration    valueDuration how long the condition must hold (threshold), the trend
                                window, or the silence that counts as no data (UCUM s/min/h/d)
      priority    valueCode     PL | PM | PH (flag-priority; default PM)
      title       valueString   what clinicians see on the alert

``Basic`` was chosen over PlanDefinition/ActivityDefinition because a rule here is a small
record of parameters, not a workflow definition; it stays searchable (``Basic?subject=``) and
editable through the ordinary REST API, with history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from carebridge.monitoring.codes import RULE_CODE, RULE_EXT
from carebridge.monitoring.vitals import SPO2, SPO2_PULSE_OX

KINDS = ("threshold", "trend", "no-data", "news2-spo2-scale-2", "news2")
_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "wk": 604800}
_COMPARATORS = {"<", "<=", ">", ">="}


class RuleError(ValueError):
    """A Basic resource that claims to be a rule but cannot be one; ``expression`` is the
    FHIRPath of the element at fault."""

    def __init__(self, message: str, expression: str = "Basic") -> None:
        super().__init__(message)
        self.expression = expression


@dataclass(frozen=True, slots=True)
class Rule:
    rule_id: str
    kind: str
    subject: str  # "Patient/x" or "CarePlan/y"
    code: str | None = None
    comparator: str | None = None
    value: float | None = None
    duration: timedelta = timedelta(0)
    priority: str = "PM"
    title: str = ""

    @property
    def alert_key(self) -> str:
        return f"rule:{self.rule_id}"


def normal_code(code: str) -> str:
    """Both LOINC SpO2 codes watch the same saturation."""
    return SPO2 if code == SPO2_PULSE_OX else code


def rule_from_basic(resource: dict[str, Any]) -> Rule | None:
    """The rule a Basic resource holds; None if it is not a monitoring rule."""
    codings = (resource.get("code") or {}).get("coding", [])
    kind = next((c.get("code") for c in codings if c.get("system") == RULE_CODE), None)
    if kind is None:
        return None
    if kind not in KINDS:
        place = next(i for i, c in enumerate(codings) if c.get("system") == RULE_CODE)
        raise RuleError(f"unknown rule kind {kind!r}; use one of {KINDS}",
                        f"Basic.code.coding[{place}].code")
    subject = (resource.get("subject") or {}).get("reference")
    if not isinstance(subject, str) or not subject.startswith(("Patient/", "CarePlan/")):
        raise RuleError("a rule's subject is a Patient or a CarePlan", "Basic.subject")
    parts: dict[str, Any] = {}
    places: dict[str, str] = {}
    where = "Basic.extension"
    for i, ext in enumerate(resource.get("extension") or []):
        if ext.get("url") == RULE_EXT:
            where = f"Basic.extension[{i}]"
            for j, part in enumerate(ext.get("extension") or []):
                key, value = next(((k, v) for k, v in part.items() if k.startswith("value")),
                                  ("value", None))
                parts[part.get("url")] = value
                places[part.get("url")] = f"{where}.extension[{j}].{key}"

    def at(name: str) -> str:
        return places.get(name, where)

    code = (parts.get("code") or {}).get("code") if isinstance(parts.get("code"), dict) else None
    comparator = parts.get("comparator")
    value = parts.get("value")
    try:
        duration = _duration(parts.get("duration"))
    except RuleError as exc:
        raise RuleError(str(exc), at("duration")) from None
    if kind not in ("news2-spo2-scale-2", "news2") and not isinstance(code, str):
        raise RuleError("the rule needs a code (valueCoding of the vital sign)", at("code"))
    if kind == "threshold" and comparator not in _COMPARATORS:
        raise RuleError(f"a threshold needs a comparator in {sorted(_COMPARATORS)}",
                        at("comparator"))
    if kind in ("threshold", "trend") and not isinstance(value, int | float):
        raise RuleError("the rule needs a value (valueDecimal)", at("value"))
    if kind in ("trend", "no-data") and duration <= timedelta(0):
        raise RuleError("the rule needs a duration (valueDuration)", at("duration"))
    priority = parts.get("priority") or "PM"
    if priority not in ("PL", "PM", "PH"):
        raise RuleError("priority is PL, PM or PH", at("priority"))
    return Rule(str(resource.get("id")), kind, subject,
                normal_code(code) if isinstance(code, str) else None, comparator,
                float(value) if isinstance(value, int | float) else None, duration, priority,
                str(parts.get("title") or f"{kind} {code or ''}".strip()))


def _duration(value: Any) -> timedelta:
    if not isinstance(value, dict):
        return timedelta(0)
    amount, unit = value.get("value"), value.get("code") or value.get("unit")
    if not isinstance(amount, int | float) or unit not in _UNITS:
        raise RuleError(f"duration needs a value and a UCUM unit in {sorted(_UNITS)}")
    return timedelta(seconds=float(amount) * _UNITS[unit])


def _meets(value: float, comparator: str, limit: float) -> bool:
    return {"<": value < limit, "<=": value <= limit, ">": value > limit,
            ">=": value >= limit}[comparator]


Reading = tuple[datetime, float, str]  # effective, value, Observation id


def threshold_held(readings: Sequence[Reading], comparator: str, limit: float,
                   duration: timedelta) -> Reading | None:
    """The reading that completes "value <comparator> limit for ``duration``": every reading
    from the start of the current run to the latest meets the condition, and the run spans at
    least ``duration``. ``readings`` ascending by time. None when it does not hold."""
    if not readings or not _meets(readings[-1][1], comparator, limit):
        return None
    start = readings[-1]
    for reading in reversed(readings):
        if not _meets(reading[1], comparator, limit):
            break
        start = reading
    latest = readings[-1]
    return latest if latest[0] - start[0] >= duration else None


def trend_reached(readings: Sequence[Reading], change: float,
                  window: timedelta) -> Reading | None:
    """The latest reading when it differs from an earlier one within ``window`` by at least
    ``change`` (a rise when positive, a fall when negative), e.g. weight up 2 kg in 48 h."""
    if len(readings) < 2:
        return None
    latest = readings[-1]
    earlier = [r for r in readings[:-1] if latest[0] - r[0] <= window]
    if not earlier:
        return None
    if change >= 0:
        return latest if latest[1] - min(r[1] for r in earlier) >= change else None
    return latest if latest[1] - max(r[1] for r in earlier) <= change else None


def no_data(last: datetime | None, since: datetime, now: datetime,
            duration: timedelta) -> bool:
    """True when nothing arrived for ``duration``: counted from the last reading, or from
    ``since`` (when the rule began) if there was none."""
    return now - (last or since) >= duration
