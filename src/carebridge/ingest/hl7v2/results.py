"""ORU^R01 -> DiagnosticReport + Observations (IG message map ORU_R01; segment maps
OBR[DiagnosticReport], OBX[Observation], PID[Patient], PV1[Encounter]).

Results do not own demographics: the Patient is created from PID only when PID-3 matches no
one (conditional create), never overwritten by a lab feed; likewise the Encounter (PV1-19).
The DiagnosticReport is identified by the filler order number (OBR-3, else ORC-3, else the
placer's OBR-2/ORC-2) and each Observation by that order, OBX-3 and OBX-4 (or OBX-21), so a
corrected result (OBX-11 ``C``) updates the Observation it corrects.
"""

from __future__ import annotations

from urllib.parse import quote

from carebridge.ingest.hl7v2.datatypes import (
    Json,
    cwe_concept,
    cx_identifier,
    dtm,
    ei_identifier,
    instant,
    token,
)
from carebridge.ingest.hl7v2.errors import (
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    TABLE_VALUE_NOT_FOUND,
    MessageError,
)
from carebridge.ingest.hl7v2.mapping import (
    Entry,
    Lookup,
    Mapped,
    Source,
    keyed_entry,
    known_ids,
    patient_key,
    sending_facility,
)
from carebridge.ingest.hl7v2.observations import add_notes, observation
from carebridge.ingest.hl7v2.parsing import Message, Segment
from carebridge.ingest.hl7v2.patient import patient_resource
from carebridge.ingest.hl7v2.vocabulary import PATIENT_CLASS, REPORT_STATUS, V2_TABLE

OBSERVATION_KEY = "urn:carebridge:hl7v2:observation:"


def subject_entries(message: Message, mapped: Mapped,
                    lookup: Lookup) -> tuple[str, str | None]:
    """References to the Patient (and the Encounter when PV1-19 is valued): the stored
    ones when known (looked up in the message's transaction; only their ids are needed),
    else new ones created from PID/PV1 by conditional create (If-None-Exist), so a
    concurrent creator is not duplicated."""
    pid = message.require("PID")
    key = patient_key(message, pid)
    known = lookup.find_id("Patient", key.criteria)
    if known is not None:
        patient = f"Patient/{known}"
    else:
        patient = mapped.add(Entry(patient_resource(message, pid), "POST", "Patient",
                                   Source("PID", pid.sequence, 3),
                                   if_none_exist=key.criteria)).reference
    pv1 = message.first("PV1")
    if pv1 is None or not pv1.first(19):
        return patient, None
    visit = cx_identifier(pv1.first(19), sending_facility(message))
    assert visit is not None
    criteria = f"identifier={token(visit)}"
    visit_known = lookup.find_id("Encounter", criteria)
    if visit_known is not None:
        return patient, f"Encounter/{visit_known}"
    system, code, display = PATIENT_CLASS.get(pv1.value(2).upper(), PATIENT_CLASS["U"])
    encounter = mapped.add(Entry(
        {"resourceType": "Encounter", "identifier": [visit], "status": "unknown",
         "class": {"system": system, "code": code, "display": display},
         "subject": {"reference": patient}},
        "POST", "Encounter", Source("PV1", pv1.sequence, 19), if_none_exist=criteria))
    return patient, encounter.reference


def map_oru(message: Message, lookup: Lookup) -> Mapped:
    mapped = Mapped()
    patient, encounter = subject_entries(message, mapped, lookup)
    groups = _order_groups(message)
    if not groups:
        raise MessageError("ORU^R01 needs at least one OBR segment", SEGMENT_SEQUENCE_ERROR,
                           "OBR", 1)
    for orc, obr, obxs in groups:
        _report(message, orc, obr, obxs, patient, encounter, mapped, lookup)
    return mapped


def _order_groups(message: Message) -> list[tuple[Segment | None, Segment, list[Segment]]]:
    groups: list[tuple[Segment | None, Segment, list[Segment]]] = []
    orc: Segment | None = None
    for segment in message.segments:
        if segment.name == "ORC":
            orc = segment
        elif segment.name == "OBR":
            groups.append((orc, segment, []))
            orc = None
        elif segment.name == "OBX":
            if not groups:
                continue  # patient-level OBX before any order: not part of a report
            groups[-1][2].append(segment)
    return groups


def order_identifier(message: Message, orc: Segment | None, obr: Segment) -> Json:
    """Filler order number (OBR-3/ORC-3, type FILL), else placer (OBR-2/ORC-2, PLAC)."""
    authority = sending_facility(message)
    for segment, n, kind in ((obr, 3, "FILL"), (orc, 3, "FILL"), (obr, 2, "PLAC"),
                             (orc, 2, "PLAC")):
        if segment is not None and segment.first(n):
            found = ei_identifier(segment.first(n), kind, authority)
            if found:
                return found
    raise MessageError("OBR-3 (filler order number) or OBR-2 (placer order number) is"
                       " required to identify the report", REQUIRED_FIELD_MISSING, "OBR",
                       obr.sequence, 3)


def _report(message: Message, orc: Segment | None, obr: Segment, obxs: list[Segment],
            subject: str, encounter: str | None, mapped: Mapped, lookup: Lookup) -> None:
    identifier = order_identifier(message, orc, obr)
    code = cwe_concept(obr.first(4))
    if code is None:
        raise MessageError("OBR-4 (universal service identifier) is required",
                           REQUIRED_FIELD_MISSING, "OBR", obr.sequence, 4)
    status_code = obr.value(25).upper()
    status = REPORT_STATUS.get(status_code) if status_code else "final"
    if status is None:
        raise MessageError(f"OBR-25 {status_code!r} is not in HL7 table 0123",
                           TABLE_VALUE_NOT_FOUND, "OBR", obr.sequence, 25)
    observed = dtm(obr.value(7), ("OBR", obr.sequence, 7))
    report: Json = {"resourceType": "DiagnosticReport", "identifier": [identifier],
                    "status": status, "code": code, "subject": {"reference": subject}}
    if encounter:
        report["encounter"] = {"reference": encounter}
    end = dtm(obr.value(8))
    if observed and end:
        report["effectivePeriod"] = {"start": observed, "end": end}
    elif observed:
        report["effectiveDateTime"] = observed
    issued = instant(obr.value(22))
    if issued:
        report["issued"] = issued
    section = obr.value(24)
    if section:
        report["category"] = [{"coding": [{"system": V2_TABLE.format(74), "code": section}]}]
    results = []
    seen: set[str] = set()
    # Observation identity: <order system> in the system, <order number>/<OBX key> as value.
    system = OBSERVATION_KEY + quote(identifier.get("system", ""), safe="")
    resources = []
    for obx in obxs:
        resource = observation(obx, subject, encounter, observed)
        add_notes(resource, message, obx)
        key = _observation_key(obx, seen)
        resource["identifier"] = [{"system": system, "value": f"{identifier['value']}/{key}"}]
        if not resource.get("category"):
            resource["category"] = [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "laboratory", "display": "Laboratory"}]}]
        resources.append((obx, resource))
    ids = known_ids(lookup, "Observation", system,
                    [r["identifier"][0]["value"] for _, r in resources])
    for (obx, resource), rid in zip(resources, ids, strict=True):
        entry = mapped.add(keyed_entry(resource, rid, Source("OBX", obx.sequence, 5)))
        results.append({"reference": entry.reference})
    if results:
        report["result"] = results
    mapped.add(Entry(report, "PUT", f"DiagnosticReport?identifier={token(identifier)}",
                     Source("OBR", obr.sequence, 3)))


def _observation_key(obx: Segment, seen: set[str]) -> str:
    """OBX-21 when sent; else OBX-3 code + OBX-4 sub-id, with OBX-1 when that repeats."""
    explicit = obx.value(21)
    key = explicit or "-".join(p for p in (obx.value(3, 1) or obx.value(3, 2),
                                            obx.value(4)) if p)
    if key in seen:
        key = f"{key}-{obx.value(1) or obx.sequence}"
    seen.add(key)
    return key
