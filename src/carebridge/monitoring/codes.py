"""Code systems and extension URLs of the monitoring module.

Standard ones first (FHIR R4 core, SNOMED CT, HL7 terminology); carebridge's own live under
one base URL and are described in docs/monitoring.md.
"""

from __future__ import annotations

from datetime import datetime

from carebridge.events.sqltext import instant_text

SNOMED = "http://snomed.info/sct"
NEWS2_TOTAL = "1104051000000101"  # SNOMED CT (UK): NEWS2 total score
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
FLAG_PRIORITY_EXT = "http://hl7.org/fhir/StructureDefinition/flag-priority"
FLAG_PRIORITY_CODES = "http://hl7.org/fhir/flag-priority-code"  # PN, PL, PM, PH
FLAG_DETAIL_EXT = "http://hl7.org/fhir/StructureDefinition/flag-detail"

BASE = "https://carebridge.dev/fhir"
NEWS2_RISK = f"{BASE}/CodeSystem/news2-risk"
NEWS2_PARAMETER = f"{BASE}/CodeSystem/news2-parameter"
ALERT_CODE = f"{BASE}/CodeSystem/monitoring-alert"
ALERT_STATE_EXT = f"{BASE}/StructureDefinition/alert-state"
ALERT_EVENT_EXT = f"{BASE}/StructureDefinition/alert-event"
RULE_CODE = f"{BASE}/CodeSystem/monitoring-rule"
RULE_EXT = f"{BASE}/StructureDefinition/monitoring-rule"

__all__ = ["from_text", "instant_text"]


def from_text(text: str) -> datetime:
    return datetime.fromisoformat(text)
