"""What a message maps to: transaction bundle entries, built by the per-message mappers.

A message becomes ONE FHIR transaction bundle (HL7 v2-to-FHIR IG, "MSH[Bundle]"), run through
the service layer's bundle processor so it commits atomically with validation, authorization
and audit. Resources that outlive a message are matched by business identifiers, never by
server ids: Patient by PID-3 (with assigning authority), Encounter by PV1-19 (visit number),
DiagnosticReport by the filler/placer order number, Observation by order + OBX, Immunization
by ORC-3/ORC-2. Where a message refines a resource another message made (location and status
history, Patient.link after a merge), the mapper reads the current version first through a
:class:`Lookup` and writes it back with ``ifMatch``: a concurrent change gives 412 and the
message is mapped again on fresh data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from carebridge.ingest.hl7v2.datatypes import Json, cx_identifier, token
from carebridge.ingest.hl7v2.errors import REQUIRED_FIELD_MISSING, MessageError
from carebridge.ingest.hl7v2.parsing import Composite, Message, Segment


@dataclass(frozen=True, slots=True)
class Current:
    """The stored current version of a resource a mapper refines."""

    id: str
    version: int
    resource: Json


class Lookup(Protocol):
    def find(self, resource_type: str, criteria: str) -> Current | None:
        """The one resource matching ``criteria`` (a search query string), or None."""
        ...


@dataclass
class Source:
    """Where an entry came from, so a FHIR error names the segment in the ERR segment."""

    segment: str
    sequence: int
    field: int | None = None


@dataclass
class Entry:
    resource: Json
    method: str  # POST | PUT
    url: str
    source: Source
    full_url: str = field(default_factory=lambda: f"urn:uuid:{uuid.uuid4()}")
    if_none_exist: str | None = None
    if_match: int | None = None
    provenance_target: bool = True  # created or changed by this message

    def to_json(self) -> Json:
        request: Json = {"method": self.method, "url": self.url}
        if self.if_none_exist:
            request["ifNoneExist"] = self.if_none_exist
        if self.if_match is not None:
            request["ifMatch"] = f'W/"{self.if_match}"'
        return {"fullUrl": self.full_url, "resource": self.resource, "request": request}

    @property
    def reference(self) -> str:
        return self.full_url


@dataclass
class Mapped:
    """The entries one message produced, in the order they were mapped."""

    entries: list[Entry] = field(default_factory=list)

    def add(self, entry: Entry) -> Entry:
        self.entries.append(entry)
        return entry


def upsert(resource_type: str, resource: Json, criteria: str, current: Current | None,
           source: Source) -> Entry:
    """Write ``resource`` as the resource ``criteria`` selects: by id with ifMatch when it
    was read first, else a conditional update (created when nothing matches)."""
    if current is not None:
        return Entry({**resource, "id": current.id}, "PUT",
                     f"{resource_type}/{current.id}", source, if_match=current.version)
    return Entry(resource, "PUT", f"{resource_type}?{criteria}", source)


def keyed_id(resource_type: str, identifier: Json) -> str:
    """A stable server id derived from a business identifier (UUID v5), for resources only
    HL7 feeds create (Observations): ``PUT Type/<id>`` then updates the same resource on a
    resend or correction without a search per resource."""
    name = f"{resource_type}|{identifier.get('system', '')}|{identifier['value']}"
    return str(uuid.uuid5(_KEYED_NAMESPACE, name))


_KEYED_NAMESPACE = uuid.UUID("5b0f2d1e-7c1a-4f9e-9a43-8f1c2b6d0e47")


def require(segment: Segment, n: int, name: str) -> Composite:
    value = segment.first(n)
    if not value:
        raise MessageError(f"{segment.name}-{n} ({name}) is required", REQUIRED_FIELD_MISSING,
                           segment.name, segment.sequence, n)
    return value


def sending_facility(message: Message) -> Composite:
    """MSH-4 as an HD: the default assigning authority of identifiers that name none."""
    return message.header.first(4) or message.header.first(3)


@dataclass(frozen=True, slots=True)
class PatientKey:
    identifier: Json
    criteria: str  # identifier=system|value


def patient_key(message: Message, pid: Segment) -> PatientKey:
    """The PID-3 repetition that identifies the patient: the medical record number (CX.5
    'MR') when there is one, else the first; it must be valued (PID-3 is R in v2.5.1)."""
    reps = pid.repetitions(3)
    if not reps:
        raise MessageError("PID-3 (patient identifier list) is required", REQUIRED_FIELD_MISSING,
                           "PID", pid.sequence, 3)
    chosen = next((r for r in reps if len(r) > 4 and r[4] and r[4][0] == "MR"), reps[0])
    identifier = cx_identifier(chosen, sending_facility(message))
    if identifier is None:
        raise MessageError("PID-3 has no ID number (CX.1)", REQUIRED_FIELD_MISSING, "PID",
                           pid.sequence, 3)
    return PatientKey(identifier, f"identifier={token(identifier)}")


Mapper = Callable[[Message, Lookup], Mapped]


def merge_identifiers(new: list[Json], old: list[Any]) -> list[Json]:
    """Identifiers the message sends, then those other feeds added (kept, not dropped)."""
    seen = {(i.get("system"), i.get("value")) for i in new}
    kept = [i for i in old if isinstance(i, dict) and (i.get("system"), i.get("value"))
            not in seen]
    return [*new, *kept]
