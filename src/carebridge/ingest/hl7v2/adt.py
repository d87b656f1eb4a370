"""ADT -> Patient and Encounter (IG message maps ADT_A01/A02/A05/A11; segment maps
PID[Patient], PV1[Encounter]; concept maps Event[EncounterStatus], PatientClass[...]).

Events and what they do to the Encounter found by PV1-19 (visit number):

- A01 admit, A04 register, A05 pre-admit: create or update; status from the event.
- A02 transfer: the active location becomes ``completed`` (period end = event time) and
  PV1-3 the new ``active`` one, so Encounter.location is the location history.
- A03 discharge: ``finished``, period.end = PV1-45 or the event time, location completed.
- A11 cancel admit: ``cancelled``. A13 cancel discharge: ``in-progress`` again, end removed.
- A08 update, A31 update person: Patient refreshed; an existing Encounter keeps its status.
- A40 merge: see :func:`map_merge`.

Each status change appends the previous status to Encounter.statusHistory.
"""

from __future__ import annotations

from typing import Any

from carebridge.ingest.hl7v2.datatypes import (
    Json,
    cwe_concept,
    cx_identifier,
    dtm,
    token,
)
from carebridge.ingest.hl7v2.errors import (
    REQUIRED_FIELD_MISSING,
    UNKNOWN_KEY_IDENTIFIER,
    MessageError,
)
from carebridge.ingest.hl7v2.mapping import (
    Entry,
    Lookup,
    Mapped,
    Source,
    patient_key,
    require,
    sending_facility,
    upsert,
)
from carebridge.ingest.hl7v2.parsing import Message, Segment
from carebridge.ingest.hl7v2.patient import location_reference, patient_resource, refine_patient
from carebridge.ingest.hl7v2.vocabulary import (
    EVENT_ENCOUNTER_STATUS,
    PATIENT_CLASS,
    PATIENT_CLASS_STATUS,
    V2_TABLE,
)

ENCOUNTER_EVENTS = {"A01", "A02", "A03", "A04", "A05", "A08", "A11", "A13"}
PATIENT_EVENTS = {"A28", "A31"}  # person information only
VISIT_REQUIRED = {"A02", "A03", "A11", "A13"}  # they refer to a visit that must be named
PARTICIPANT = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


def event_time(message: Message) -> str | None:
    """EVN-6 (event occurred), else EVN-2 (recorded), else MSH-7."""
    evn = message.first("EVN")
    for value in ((evn.value(6), evn.value(2)) if evn else ()):
        if value:
            return dtm(value)
    return dtm(message.header.value(7))


def map_adt(message: Message, lookup: Lookup) -> Mapped:
    event = message.trigger_event or (message.first("EVN").value(1)  # type: ignore[union-attr]
                                      if message.first("EVN") else "")
    if event == "A40":
        return map_merge(message, lookup)
    pid = message.require("PID")
    mapped = Mapped()
    key = patient_key(message, pid)
    current = lookup.find("Patient", key.criteria)
    patient = refine_patient(patient_resource(message, pid), current)
    patient_entry = mapped.add(upsert("Patient", patient, key.criteria, current,
                                      Source("PID", pid.sequence)))
    pv1 = message.first("PV1")
    if event in ENCOUNTER_EVENTS and pv1 is not None and _has_visit(pv1, event):
        mapped.add(_encounter(message, pv1, event, patient_entry, lookup))
    return mapped


def _has_visit(pv1: Segment, event: str) -> bool:
    if pv1.first(19):
        return True
    if event in VISIT_REQUIRED:
        raise MessageError(f"PV1-19 (visit number) is required for {event}: it names the"
                           " encounter the event changes", REQUIRED_FIELD_MISSING, "PV1",
                           pv1.sequence, 19)
    # A visit without a number cannot be found again; it is still recorded once.
    return any(pv1.first(n) for n in (2, 3, 44))


def _encounter(message: Message, pv1: Segment, event: str, patient: Entry,
               lookup: Lookup) -> Entry:
    when = event_time(message)
    visit = cx_identifier(pv1.first(19), sending_facility(message))
    current = None
    criteria = ""
    if visit is not None:
        visit["type"] = {"coding": [{"system": V2_TABLE.format(203), "code": "VN"}],
                         "text": "visit number"}
        criteria = f"identifier={token(visit)}"
        current = lookup.find("Encounter", criteria)
    old: Json = current.resource if current else {}
    patient_class = pv1.value(2).upper()
    system, code, display = PATIENT_CLASS.get(patient_class, PATIENT_CLASS["U"])
    encounter: Json = {
        "resourceType": "Encounter",
        "identifier": [visit] if visit else [],
        "status": _status(event, pv1, patient_class, old),
        "class": {"system": system, "code": code, "display": display},
        "subject": {"reference": patient.reference},
    }
    for element, n in (("type", 4), ("serviceType", 10)):
        concept = cwe_concept(pv1.first(n))
        if concept:
            encounter[element] = [concept] if element == "type" else concept
    participants = [p for p in (_participant(pv1, n, c, d) for n, c, d in (
        (7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"),
        (17, "ADM", "admitter"))) if p]
    if participants:
        encounter["participant"] = participants
    period = dict(old.get("period", {}))
    start = dtm(pv1.value(44)) or (when if event in ("A01", "A04") else None)
    if start:
        period["start"] = start
    end = dtm(pv1.value(45)) or (when if event == "A03" else None)
    if end:
        period["end"] = end
    if event == "A13":
        period.pop("end", None)
    period = _period(period.get("start"), period.get("end"))
    if period:
        encounter["period"] = period
    locations = _locations(old.get("location", []), pv1, event, when)
    if locations:
        encounter["location"] = locations
    history = list(old.get("statusHistory", []))
    if old and old.get("status") != encounter["status"]:
        history.append({"status": old["status"],
                        "period": _closed(history, old, when)})
    if history:
        encounter["statusHistory"] = history
    source = Source("PV1", pv1.sequence, 19)
    if not criteria:
        return Entry(_clean(encounter), "POST", "Encounter", source)
    return upsert("Encounter", _clean(encounter), criteria, current, source)


def _status(event: str, pv1: Segment, patient_class: str, old: Json) -> str:
    if pv1.value(45) and event not in ("A11", "A13"):
        return "finished"  # IG PV1[Encounter]: PV1-45 valued -> finished
    if event == "A08" and old.get("status"):
        return str(old["status"])
    status = EVENT_ENCOUNTER_STATUS.get(event)
    if status is None or status == "unknown":
        status = PATIENT_CLASS_STATUS.get(patient_class, "in-progress")
    return status


def _closed(history: list[Any], old: Json, when: str | None) -> Json:
    start = history[-1]["period"].get("end") if history else old.get("period", {}).get("start")
    return _period(start or when, when)


def _period(start: str | None, end: str | None) -> Json:
    """A Period; a start after the end (events that arrive out of order) is left out, as
    R4 per-1 requires start <= end."""
    if start and end and _instant_key(start) > _instant_key(end):
        start = None
    return {k: v for k, v in (("start", start), ("end", end)) if v}


def _instant_key(value: str) -> str:
    return value.replace("Z", "+00:00")


def _locations(old: list[Any], pv1: Segment, event: str, when: str | None) -> list[Json]:
    """Location history: the PV1-3 location active, earlier ones completed (with an end)."""
    locations = [dict(loc) for loc in old if isinstance(loc, dict)]
    here = location_reference(pv1.first(3))
    finishing = event == "A03" or bool(pv1.value(45))
    if here is not None:
        same = [loc for loc in locations if loc.get("location") == here]
        if not same:
            for loc in locations:
                if loc.get("status") in ("active", "planned"):
                    loc["status"] = "completed"
                    if when:
                        loc["period"] = _period(loc.get("period", {}).get("start"), when)
            status = "planned" if pv1.value(2).upper() == "P" or event == "A05" else "active"
            entry: Json = {"location": here, "status": status}
            if when:
                entry["period"] = {"start": when}
            locations.append(entry)
        elif event == "A13":
            same[-1]["status"] = "active"
            same[-1].get("period", {}).pop("end", None)
    if finishing:
        for loc in locations:
            if loc.get("status") == "active":
                loc["status"] = "completed"
                if when:
                    loc["period"] = _period(loc.get("period", {}).get("start"), when)
    prior = location_reference(pv1.first(6))  # PV1-6 prior location (IG: completed)
    if prior is not None and not any(loc.get("location") == prior for loc in locations):
        locations.insert(0, {"location": prior, "status": "completed"})
    return locations


def _participant(pv1: Segment, n: int, code: str, display: str) -> Json | None:
    xcn = pv1.first(n)
    if not xcn:
        return None
    name = " ".join(p for p in (_at(xcn, 6), _at(xcn, 3), _at(xcn, 4), _at(xcn, 2)) if p)
    individual: Json = {"display": name or _at(xcn, 1)}
    if _at(xcn, 1):
        individual["identifier"] = {"value": _at(xcn, 1)}
    return {"type": [{"coding": [{"system": PARTICIPANT, "code": code, "display": display}]}],
            "individual": individual}


def _at(composite: list[list[str]], n: int) -> str:
    return composite[n - 1][0] if n <= len(composite) and composite[n - 1] else ""


def _clean(resource: Json) -> Json:
    return {k: v for k, v in resource.items() if v not in (None, "", [], {})}


def map_merge(message: Message, lookup: Lookup) -> Mapped:
    """A40 merge patient (HL7 v2.5.1 3.3.40): PID-3 survives, MRG-1 is merged into it.

    The survivor gets ``link`` type ``replaces`` to the merged Patient; the merged one becomes
    ``active: false`` with ``link`` ``replaced-by`` the survivor. Nothing is deleted.
    """
    pid = message.require("PID")
    mrg = message.require("MRG")
    key = patient_key(message, pid)
    merged_id = cx_identifier(require(mrg, 1, "prior patient identifier list"),
                              sending_facility(message))
    assert merged_id is not None
    merged_criteria = f"identifier={token(merged_id)}"
    merged = lookup.find("Patient", merged_criteria)
    if merged is None:
        raise MessageError(f"MRG-1 {merged_id['value']!r} names no known patient",
                           UNKNOWN_KEY_IDENTIFIER, "MRG", mrg.sequence, 1)
    survivor = lookup.find("Patient", key.criteria)
    if survivor is not None and survivor.id == merged.id:
        raise MessageError("PID-3 and MRG-1 name the same patient", UNKNOWN_KEY_IDENTIFIER,
                           "MRG", mrg.sequence, 1)
    mapped = Mapped()
    patient = refine_patient(patient_resource(message, pid), survivor)
    links = [link for link in patient.get("link", [])
             if link.get("other", {}).get("reference") != f"Patient/{merged.id}"]
    links.append({"other": {"reference": f"Patient/{merged.id}"}, "type": "replaces"})
    patient["link"] = links
    patient["active"] = True
    survivor_entry = mapped.add(upsert("Patient", patient, key.criteria, survivor,
                                       Source("PID", pid.sequence, 3)))
    old = dict(merged.resource)
    for server_owned in ("meta", "text"):
        old.pop(server_owned, None)
    old_links = [link for link in old.get("link", []) if link.get("type") != "replaced-by"]
    old["link"] = [*old_links, {"other": {"reference": survivor_entry.reference},
                                "type": "replaced-by"}]
    old["active"] = False
    mapped.add(upsert("Patient", old, merged_criteria, merged, Source("MRG", mrg.sequence, 1)))
    return mapped
