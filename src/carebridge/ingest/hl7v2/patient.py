"""PID -> Patient (IG segment map PID[Patient]) and PV1-3/PL -> location references."""

from __future__ import annotations

from carebridge.ingest.hl7v2.datatypes import (
    Json,
    compact,
    cwe_concept,
    cx_identifier,
    date_only,
    dtm,
    xad_address,
    xpn_name,
    xtn_contact,
)
from carebridge.ingest.hl7v2.errors import TABLE_VALUE_NOT_FOUND, MessageError
from carebridge.ingest.hl7v2.mapping import Current, merge_identifiers, sending_facility
from carebridge.ingest.hl7v2.parsing import Composite, Message, Segment, part
from carebridge.ingest.hl7v2.vocabulary import ADMINISTRATIVE_SEX, MARITAL_STATUS

MARITAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
BIRTH_TIME = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
MOTHERS_MAIDEN_NAME = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"


def patient_resource(message: Message, pid: Segment) -> Json:
    """The Patient as this PID describes it (IG PID[Patient], field by field)."""
    authority = sending_facility(message)
    identifiers = [i for i in (cx_identifier(cx, authority)
                               for n in (2, 3, 4) for cx in pid.repetitions(n)) if i]
    ssn = pid.value(19)
    if ssn:  # PID-19: identifier[4], type SS (US)
        identifiers.append({"system": "http://hl7.org/fhir/sid/us-ssn", "value": ssn,
                            "type": {"coding": [{
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "SS"}]}})
    names = [n for n in (xpn_name(x) for n in (5, 9) for x in pid.repetitions(n)) if n]
    patient: Json = {"resourceType": "Patient", "identifier": _unique(identifiers)}
    if names:
        patient["name"] = names
    sex = pid.value(8)
    if sex:
        gender = ADMINISTRATIVE_SEX.get(sex.upper())
        if gender is None:
            raise MessageError(f"PID-8 {sex!r} is not in HL7 table 0001 (F, M, O, U, A, N)",
                               TABLE_VALUE_NOT_FOUND, "PID", pid.sequence, 8)
        patient["gender"] = gender
    birth = pid.value(7)
    if birth:
        when = dtm(birth, ("PID", pid.sequence, 7))
        patient["birthDate"] = date_only(birth)
        if when and "T" in when:  # IG: IF PID-7 LENGTH GREATER THAN 8 -> patient-birthTime
            patient["_birthDate"] = {"extension": [{"url": BIRTH_TIME, "valueDateTime": when}]}
    addresses = [a for a in (xad_address(x) for x in pid.repetitions(11)) if a]
    if addresses:
        patient["address"] = addresses
    telecom = [t for t in (
        *(xtn_contact(x, "home") for x in pid.repetitions(13)),
        *(xtn_contact(x, "work") for x in pid.repetitions(14)),
        *(xtn_contact(x) for x in pid.repetitions(40)),
    ) if t]
    if telecom:
        patient["telecom"] = telecom
    marital = pid.value(16)
    if marital:
        code = MARITAL_STATUS.get(marital.upper())
        patient["maritalStatus"] = (
            {"coding": [{"system": MARITAL_SYSTEM, "code": code}]} if code
            else cwe_concept(pid.first(16)))
    language = cwe_concept(pid.first(15))
    if language:
        patient["communication"] = [{"language": language}]
    related = contacts(message)
    if related:
        patient["contact"] = related
    mothers = pid.value(6)
    if mothers:
        patient["extension"] = [{"url": MOTHERS_MAIDEN_NAME, "valueString": mothers}]
    death = pid.value(29)
    if death:
        patient["deceasedDateTime"] = dtm(death, ("PID", pid.sequence, 29))
    elif pid.value(30) in ("Y", "N"):
        patient["deceasedBoolean"] = pid.value(30) == "Y"
    if pid.value(25).isdigit():
        patient["multipleBirthInteger"] = int(pid.value(25))
    elif pid.value(24) in ("Y", "N"):
        patient["multipleBirthBoolean"] = pid.value(24) == "Y"
    return patient


def contacts(message: Message) -> list[Json]:
    """NK1 -> Patient.contact (IG NK1[Patient]): name, relationships (NK1-3, NK1-7),
    address, telecom (NK1-6 business: work), period, gender."""
    out = []
    for nk1 in message.all("NK1"):
        relationship = [c for c in (cwe_concept(nk1.first(3)), cwe_concept(nk1.first(7))) if c]
        telecom = [t for t in (*(xtn_contact(x) for x in nk1.repetitions(5)),
                               *(xtn_contact(x, "work") for x in nk1.repetitions(6))) if t]
        contact = compact({
            "relationship": relationship,
            "name": xpn_name(nk1.first(2)),
            "telecom": telecom,
            "address": xad_address(nk1.first(4)),
            "gender": ADMINISTRATIVE_SEX.get(nk1.value(15).upper()),
            "period": compact({"start": dtm(nk1.value(8)), "end": dtm(nk1.value(9))}),
        })
        if contact and {"name", "telecom", "address"} & set(contact):  # R4 pat-1
            out.append(contact)
    return out


def refine_patient(new: Json, current: Current | None) -> Json:
    """Keep what other messages established: identifiers from other feeds, and the merge
    state an A40 set (``active`` false and ``link``), which a later A08 must not undo."""
    if current is None:
        return new
    old = current.resource
    out = {**new, "identifier": merge_identifiers(new.get("identifier", []),
                                                  old.get("identifier", []))}
    for kept in ("link", "active", "generalPractitioner", "managingOrganization"):
        if kept in old and kept not in out:
            out[kept] = old[kept]
    return out


def _unique(identifiers: list[Json]) -> list[Json]:
    seen: set[tuple[str | None, str | None]] = set()
    out = []
    for identifier in identifiers:
        key = (identifier.get("system"), identifier.get("value"))
        if key not in seen:
            seen.add(key)
            out.append(identifier)
    return out


def location_reference(pl: Composite) -> Json | None:
    """PL (point of care^room^bed^facility^status^type^building^floor) -> a logical Location
    reference: identifier and display, without creating Location resources."""
    parts = [("point of care", part(pl, 1)), ("room", part(pl, 2)), ("bed", part(pl, 3)),
             ("building", part(pl, 7)), ("floor", part(pl, 8))]
    valued = [(name, value) for name, value in parts if value]
    if not valued:
        return None
    facility = part(pl, 4)
    value = "^".join(part(pl, i) for i in (1, 2, 3)).rstrip("^")
    system = "urn:carebridge:hl7v2:location" + (f":{facility}" if facility else "")
    display = ", ".join(f"{name} {value}" for name, value in valued)
    return compact({"identifier": {"system": system.replace(" ", "%20"), "value": value},
                    "display": display})
