"""VXU^V04 -> Immunization (IG message map VXU_V04; segment maps RXA[Immunization],
RXR[Immunization], ORC[Immunization]; concept map CompletionStatus).

Each ORC/RXA order group is one Immunization, identified by ORC-3 (filler) or ORC-2
(placer), so a resend or an update (RXA-21 ``U``) changes the same resource and RXA-21 ``D``
marks it entered-in-error. OBX segments of the group become Observations about it.
"""

from __future__ import annotations

from urllib.parse import quote

from carebridge.ingest.hl7v2.datatypes import (
    Json,
    cwe_concept,
    date_only,
    decimal,
    dtm,
    ei_identifier,
    json_number,
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
    sending_facility,
)
from carebridge.ingest.hl7v2.observations import add_notes, observation
from carebridge.ingest.hl7v2.parsing import Message, Segment, part
from carebridge.ingest.hl7v2.results import OBSERVATION_KEY, subject_entries
from carebridge.ingest.hl7v2.vocabulary import COMPLETION_STATUS, V2_TABLE, ucum_unit

PERFORMER_FUNCTION = V2_TABLE.format(443)


def map_vxu(message: Message, lookup: Lookup) -> Mapped:
    mapped = Mapped()
    patient, encounter = subject_entries(message, mapped, lookup)
    groups = _groups(message)
    if not groups:
        raise MessageError("VXU^V04 needs at least one RXA segment", SEGMENT_SEQUENCE_ERROR,
                           "RXA", 1)
    for orc, rxa, rxr, obxs in groups:
        _immunization(message, orc, rxa, rxr, obxs, patient, encounter, mapped, lookup)
    return mapped


def _groups(message: Message
            ) -> list[tuple[Segment | None, Segment, Segment | None, list[Segment]]]:
    groups: list[tuple[Segment | None, Segment, Segment | None, list[Segment]]] = []
    orc: Segment | None = None
    for segment in message.segments:
        if segment.name == "ORC":
            orc = segment
        elif segment.name == "RXA":
            groups.append((orc, segment, None, []))
        elif segment.name == "RXR" and groups and groups[-1][2] is None:
            groups[-1] = (groups[-1][0], groups[-1][1], segment, groups[-1][3])
        elif segment.name == "OBX" and groups:
            groups[-1][3].append(segment)
    return groups


def _immunization(message: Message, orc: Segment | None, rxa: Segment, rxr: Segment | None,
                  obxs: list[Segment], subject: str, encounter: str | None,
                  mapped: Mapped, lookup: Lookup) -> None:
    vaccine = cwe_concept(rxa.first(5))
    if vaccine is None:
        raise MessageError("RXA-5 (administered code) is required", REQUIRED_FIELD_MISSING,
                           "RXA", rxa.sequence, 5)
    occurred = dtm(rxa.value(3), ("RXA", rxa.sequence, 3))
    if occurred is None:
        raise MessageError("RXA-3 (date/time start of administration) is required",
                           REQUIRED_FIELD_MISSING, "RXA", rxa.sequence, 3)
    action = rxa.value(21).upper()
    if action == "D":
        status: str | None = "entered-in-error"  # IG RXA-21: D -> entered-in-error
    else:
        completion = rxa.value(20).upper()
        status = COMPLETION_STATUS.get(completion) if completion else "completed"
        if status is None:
            raise MessageError(f"RXA-20 {completion!r} is not in HL7 table 0322",
                               TABLE_VALUE_NOT_FOUND, "RXA", rxa.sequence, 20)
    resource: Json = {"resourceType": "Immunization", "status": status,
                      "vaccineCode": vaccine, "patient": {"reference": subject},
                      "occurrenceDateTime": occurred}
    if encounter:
        resource["encounter"] = {"reference": encounter}
    identifier = None
    if orc is not None:
        for n, kind in ((3, "FILL"), (2, "PLAC")):
            identifier = ei_identifier(orc.first(n), kind, sending_facility(message))
            if identifier:
                resource["identifier"] = [identifier]
                break
    source = rxa.value(9, 1)
    if source in ("00", "01"):  # NIP001: 00 new record, 01 historical
        resource["primarySource"] = source == "00"
    amount = decimal(rxa.value(6))
    if amount is not None and amount != 999:  # 999: amount unknown (CDC IG)
        dose: Json = {"value": json_number(amount)}
        units = rxa.first(7)
        if part(units, 1):
            dose["unit"] = part(units, 2) or part(units, 1)
            code = ucum_unit(part(units, 1), part(units, 3))
            if code:
                dose.update({"system": "http://unitsofmeasure.org", "code": code})
        resource["doseQuantity"] = dose
    performer = rxa.first(10)
    if performer:
        name = " ".join(p for p in (part(performer, 3), part(performer, 2)) if p)
        resource["performer"] = [{
            "function": {"coding": [{"system": PERFORMER_FUNCTION, "code": "AP"}]},
            "actor": {"display": name or part(performer, 1)},
        }]
    if rxa.value(15):
        resource["lotNumber"] = rxa.value(15)
    expiry = date_only(rxa.value(16))
    if expiry:
        resource["expirationDate"] = expiry
    manufacturer = rxa.first(17)
    if manufacturer:
        resource["manufacturer"] = {"display": part(manufacturer, 2) or part(manufacturer, 1)}
    for element, n in (("statusReason", 18), ("reasonCode", 19)):
        concept = cwe_concept(rxa.first(n))
        if concept:
            resource[element] = [concept] if element == "reasonCode" else concept
    if action == "A" and instant_or_none(rxa.value(22)):
        resource["recorded"] = dtm(rxa.value(22))
    if rxr is not None:
        for element, n in (("route", 1), ("site", 2)):
            concept = cwe_concept(rxr.first(n))
            if concept:
                resource[element] = concept
    source_ref = Source("RXA", rxa.sequence, 5)
    if identifier is not None:
        entry = mapped.add(Entry(resource, "PUT", f"Immunization?identifier={token(identifier)}",
                                 source_ref))
        key_system = OBSERVATION_KEY + quote(identifier.get("system", ""), safe="")
        key_value = identifier["value"]
    else:
        entry = mapped.add(Entry(resource, "POST", "Immunization", source_ref))
        key_system, key_value = OBSERVATION_KEY + "immunization", f"{message.control_id}"
    values: list[str] = []
    for obx in obxs:
        value = f"{key_value}/{obx.value(1) or obx.sequence}"
        values.append(value if value not in values else f"{value}-{obx.sequence}")
    ids = known_ids(lookup, "Observation", key_system, values)
    for obx, value, rid in zip(obxs, values, ids, strict=True):
        obs = observation(obx, subject, encounter, occurred)
        add_notes(obs, message, obx)
        obs["partOf"] = [{"reference": entry.reference}]
        obs["identifier"] = [{"system": key_system, "value": value}]
        mapped.add(keyed_entry(obs, rid, Source("OBX", obx.sequence, 5)))


def instant_or_none(value: str) -> str | None:
    return dtm(value) if value.strip() else None
