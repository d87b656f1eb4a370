"""Mapped entries + a Provenance -> the message's transaction bundle.

The Provenance (IG segment map MSH[Provenance-Source], EVN[Provenance]) names every resource
the message created or changed as ``target`` and the archived message as its source
``entity``: a logical reference by identifier ``sender|MSH-10`` into the message archive
(the message text itself stays in the archive, which is to be encrypted at rest, rather than
in a FHIR resource anyone with read access could fetch).
"""

from __future__ import annotations

from carebridge.ingest.hl7v2.datatypes import Json, dtm
from carebridge.ingest.hl7v2.mapping import Entry, Mapped, Source
from carebridge.ingest.hl7v2.parsing import Message

MESSAGE_SYSTEM = "urn:carebridge:hl7v2:message"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
V2_EVENT = "http://terminology.hl7.org/CodeSystem/v2-0003"


def message_identifier(message: Message) -> Json:
    return {"system": MESSAGE_SYSTEM, "value": f"{message.sender}|{message.control_id}"}


def provenance(message: Message, mapped: Mapped, received_at: str) -> Json:
    header = message.header
    structure = "^".join(p for p in (message.message_code, message.trigger_event,
                                     header.value(9, 3)) if p)
    activity: Json = {"display": f"message - {structure}"}
    if message.trigger_event:
        activity = {"system": V2_EVENT, "code": message.trigger_event, **activity}
    author = message.sending_facility or message.sending_application or "unknown sender"
    resource: Json = {
        "resourceType": "Provenance",
        "target": [{"reference": e.reference} for e in mapped.entries if e.provenance_target],
        "recorded": received_at,
        "activity": {"coding": [activity]},
        "agent": [{
            "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]},
            "who": {"display": author},
        }],
        "entity": [{
            "role": "source",
            "what": {"identifier": message_identifier(message),
                     "display": f"HL7 v2 {message.message_type} {message.control_id}"
                                f" from {message.sender}"},
        }],
    }
    occurred = dtm(header.value(7))
    if occurred:
        resource["occurredDateTime"] = occurred
    return resource


def transaction_bundle(message: Message, mapped: Mapped, received_at: str) -> Json:
    entries = list(mapped.entries)
    if any(e.provenance_target for e in entries):
        entries.append(Entry(provenance(message, mapped, received_at), "POST", "Provenance",
                             Source("MSH", 1, 10), provenance_target=False))
    mapped.entries = entries
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [e.to_json() for e in entries]}
