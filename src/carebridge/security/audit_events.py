"""FHIR R4 AuditEvents for what happens at the server (http://hl7.org/fhir/R4/auditevent.html).

Every way in records one (docs/security.md, "Audit ledger"). Codes, from the R4 value sets
audit-event-type and audit-event-sub-type (DICOM PS3.16 CID 400/403 plus FHIR's own):

=======================  ============================  ======================================
way in                   ``type``                      ``subtype``
=======================  ============================  ======================================
FHIR REST, bundles,      ``rest`` (audit-event-type)   the restful interaction
search
login, token issue       DCM ``110114`` User           ``urn:carebridge:auth`` kind
                         Authentication
HL7 v2 over MLLP         DCM ``110107`` Import         channel ``hl7v2-mllp``; the message
                                                       code (v2 table 0076) and trigger event
                                                       (table 0003), e.g. ``ORU`` + ``R01``
device readings          DCM ``110107`` Import         channel ``device-http``/``device-mqtt``
(HTTP, MQTT)                                           and ``readings`` or ``heartbeat``
CLI import               DCM ``110107`` Import         channel ``cli-import``
user, client and key     DCM ``110113`` Security       DCM ``110137`` User Security Attributes
administration (CLI)     Alert                         Changed (users), ``110129`` Security
                                                       Configuration (clients, keys)
=======================  ============================  ======================================

Why Import (DICOM PS3.15 A.5.3.5, "Data Import": data entering the system from outside the
organisation's control, action ``C``): an HL7 v2 feed, a device or a file is exactly that, and
unlike ``rest`` it says no FHIR interaction was asked for; the channel subtype
(``urn:carebridge:channel``) tells the ways in apart. Which FHIR interactions an import ran is
in the resources' Provenance, not here.

``action`` C/R/U/D/E; ``outcome`` 0 success, 4 minor failure (refused, not found, a message
answered AE/AR for its content), 8 serious failure (server error, HL7 condition 207
"application internal error"); ``purposeOfEvent`` v3-ActReason. Agents: the user or system
identity that asked (``hl7v2:<MSH-3>``, ``device:<id>``, ``cli:<OS user>``), with its network
address, and the client application on whose behalf.
"""

from __future__ import annotations

import base64
import getpass
import os
from collections.abc import Mapping
from typing import Any

from carebridge.fhir.resource import format_instant, new_id, now_instant
from carebridge.security.policy import Caller
from carebridge.security.roles import PURPOSE_SYSTEM, default_purpose

_REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
         "display": "RESTful Operation"}
_LOGIN = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114",
          "display": "User Authentication"}
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_IMPORT = {"system": _DCM, "code": "110107", "display": "Import"}
_SECURITY_ALERT = {"system": _DCM, "code": "110113", "display": "Security Alert"}
USER_SECURITY_CHANGED = {"system": _DCM, "code": "110137",
                         "display": "User Security Attributes Changed"}
SECURITY_CONFIGURATION = {"system": _DCM, "code": "110129", "display": "Security Configuration"}
CHANNEL = "urn:carebridge:channel"
_V2_MESSAGE_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0076"
_V2_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0003"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_PERSON = {"system": _ENTITY_TYPE, "code": "1", "display": "Person"}
_SYSTEM_OBJECT = {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"}
_PATIENT_ROLE = {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"}
_RESOURCE_ROLE = {"system": _OBJECT_ROLE, "code": "4", "display": "Domain Resource"}
_SECURITY_USER = {"system": _OBJECT_ROLE, "code": "11", "display": "Security User Entity"}
_SECURITY_RESOURCE = {"system": _OBJECT_ROLE, "code": "13", "display": "Security Resource"}
#: HL7 table 0357 condition 207 "application internal error": the server failed, not the input
_V2_INTERNAL_ERROR = "207"
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_ACTION = {"read": "R", "vread": "R", "history-instance": "R", "history-type": "R",
           "history-system": "R", "search-type": "E", "search-system": "E", "search": "E",
           "create": "C", "update": "U", "patch": "U", "delete": "D", "transaction": "E",
           "batch": "E", "operation": "E", "login": "E", "token": "E"}


def outcome_of(status: int) -> str:
    return "0" if status < 400 else ("4" if status < 500 else "8")


def _agents(subject: str | None, client_id: str | None, address: str | None,
            fhir_user: str | None, roles: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    who: dict[str, Any] = {"identifier": {"system": "urn:carebridge:user",
                                          "value": subject or "anonymous"}}
    if fhir_user:
        who["reference"] = fhir_user
    agent: dict[str, Any] = {"who": who, "requestor": True}
    if roles:
        agent["role"] = [{"text": role} for role in sorted(roles)]
    if address:
        agent["network"] = {"address": address, "type": "2"}  # 2 = IP address
    agents = [agent]
    if client_id:
        agents.append({"who": {"identifier": {"system": "urn:carebridge:client",
                                              "value": client_id}},
                       "requestor": False,
                       "type": {"text": "client application"}})
    return agents


def rest_event(interaction: str, status: int, caller: Caller | None, *, address: str | None,
               resource_type: str | None, resource_id: str | None, query: str = "",
               patient: str | None = None, detail: str = "") -> dict[str, Any]:
    """One FHIR interaction: who, on behalf of which client, what, when, from where, outcome."""
    event: dict[str, Any] = {
        "resourceType": "AuditEvent", "id": new_id(), "type": _REST,
        "subtype": [{"system": _INTERACTION, "code": interaction}],
        "action": _ACTION.get(interaction, "E"),
        "recorded": format_instant(now_instant()),
        "outcome": outcome_of(status),
    }
    if status >= 400 or detail:
        event["outcomeDesc"] = detail or f"HTTP {status}"
    if caller is not None and caller.purpose:
        event["purposeOfEvent"] = purpose_of_event(caller.purpose)
    event["agent"] = _agents(
        caller.subject if caller else None, caller.client_id if caller else None, address,
        caller.fhir_user if caller else None, caller.roles if caller else frozenset())
    event["source"] = {"observer": {"display": "carebridge FHIR server"}}
    entities: list[dict[str, Any]] = []
    if resource_type:
        what = f"{resource_type}/{resource_id}" if resource_id else resource_type
        entity: dict[str, Any] = {"what": {"reference": what} if resource_id else {
            "display": what}}
        if query:
            entity["query"] = base64.b64encode(query.encode()).decode()
        entities.append(entity)
    elif query:
        entities.append({"query": base64.b64encode(query.encode()).decode()})
    if patient:
        entities.append({"what": {"reference": f"Patient/{patient}"},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/"
                                  "object-role", "code": "1", "display": "Patient"}})
    if entities:
        event["entity"] = entities
    return event


def login_event(kind: str, outcome: str, subject: str | None, client_id: str | None,
                detail: str, address: str | None = None) -> dict[str, Any]:
    """A login attempt or a token issue (success or failure, with the reason)."""
    event: dict[str, Any] = {
        "resourceType": "AuditEvent", "id": new_id(), "type": _LOGIN,
        "subtype": [{"system": "urn:carebridge:auth", "code": kind}],
        "action": "E", "recorded": format_instant(now_instant()), "outcome": outcome,
        "outcomeDesc": detail,
        "agent": _agents(subject, client_id, address, None),
        "source": {"observer": {"display": "carebridge authorization server"}},
    }
    return event


# ------------------------------------------------------------------ the other ways in


def cli_operator() -> str:
    """Who runs a CLI command: ``cli:<OS user>`` (the numeric uid when the name is unknown)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no passwd entry and no LOGNAME/USER (some containers)
        return f"cli:uid-{os.getuid()}"


def _event(event_type: dict[str, str], subtype: list[dict[str, str]], action: str,
           outcome: str, detail: str, agents: list[dict[str, Any]], observer: str,
           entities: list[dict[str, Any]], purpose: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "resourceType": "AuditEvent", "id": new_id(), "type": event_type, "subtype": subtype,
        "action": action, "recorded": format_instant(now_instant()), "outcome": outcome,
    }
    if detail:
        event["outcomeDesc"] = detail
    if purpose:
        event["purposeOfEvent"] = purpose_of_event(purpose)
    event["agent"] = agents
    event["source"] = {"observer": {"display": observer}}
    if entities:
        event["entity"] = entities
    return event


def purpose_of_event(code: str) -> list[dict[str, Any]]:
    """``AuditEvent.purposeOfEvent`` for a v3-ActReason purpose of use code."""
    return [{"coding": [{"system": PURPOSE_SYSTEM, "code": code}]}]


def _channel(code: str) -> dict[str, str]:
    return {"system": CHANNEL, "code": code}


def _details(values: Mapping[str, object]) -> list[dict[str, str]]:
    return [{"type": name, "valueString": str(value)} for name, value in values.items()]


def hl7v2_outcome(ack_code: str, condition: str = "") -> str:
    """AA -> 0; AE/AR -> 4 (the message was refused for what it says), or 8 when the
    condition (HL7 table 0357) is 207, the server's own failure."""
    if ack_code in ("AA", "CA"):
        return "0"
    return "8" if condition == _V2_INTERNAL_ERROR else "4"


def hl7v2_event(caller: Caller, *, address: str | None, message_code: str,
                trigger_event: str, control_id: str, ack_code: str, condition: str = "",
                location: str = "", duplicate: bool = False,
                provenance_id: str | None = None, error_id: int | None = None,
                operator: str | None = None) -> dict[str, Any]:
    """One HL7 v2 message taken over MLLP: the feed identity and its peer address, the
    message (MSH-9, MSH-10) and, when accepted, the Provenance it produced.

    ``condition``/``location``: the ERR of an AE/AR (never the reason text, which can
    quote patient data: that stays in the sealed error queue, ``error_id``).
    ``operator``: a queued message run again by hand (``carebridge hl7 replay``): who did it
    is the requestor, channel ``hl7v2-replay``; the feed stays an agent."""
    subtype = [_channel("hl7v2-replay" if operator else "hl7v2-mllp")]
    if message_code:
        subtype.append({"system": _V2_MESSAGE_TYPE, "code": message_code})
    if trigger_event:
        subtype.append({"system": _V2_EVENT_TYPE, "code": trigger_event})
    if duplicate:
        detail = f"{ack_code}: resend of an accepted message, answered from the archive"
    elif ack_code == "AA":
        detail = ""
    else:
        detail = " ".join(part for part in (ack_code, condition, location) if part)
        if error_id is not None:
            detail += f" (HL7 v2 error queue #{error_id})"
    message_type = f"{message_code}^{trigger_event}" if trigger_event else message_code
    message: dict[str, Any] = {
        "what": {"identifier": {"system": "urn:carebridge:hl7v2:control-id",
                                "value": control_id or "(unknown)"}},
        "type": _SYSTEM_OBJECT,
        "detail": _details({"MSH-9": message_type or "(unreadable)", "MSH-10": control_id,
                            "MSA-1": ack_code}),
    }
    entities = [message]
    if provenance_id:
        entities.append({"what": {"reference": f"Provenance/{provenance_id}"},
                         "type": _SYSTEM_OBJECT, "role": _RESOURCE_ROLE})
    agents = _agents(caller.subject, None, address, None, caller.roles)
    if operator:
        agents[0]["requestor"] = False
        agents.insert(0, {"who": {"identifier": {"system": "urn:carebridge:user",
                                                 "value": operator}}, "requestor": True})
    return _event(_IMPORT, subtype, "C", hl7v2_outcome(ack_code, condition), detail, agents,
                  "carebridge hl7 replay" if operator else "carebridge HL7 v2 listener",
                  entities, "RECORDMGT" if operator else default_purpose(caller.roles))


def device_event(caller: Caller, device_id: str, patient_id: str | None, *, channel: str,
                 kind: str, status: int, readings: int = 0, stored: int = 0,
                 duplicates: int = 0, address: str | None = None,
                 detail: str = "") -> dict[str, Any]:
    """One batch from a device (``kind`` readings or heartbeat) over ``channel``
    (``http``/``mqtt``): the device identity, its Device and patient, counts, outcome."""
    entities: list[dict[str, Any]] = [{
        "what": {"reference": f"Device/{device_id}"}, "type": _SYSTEM_OBJECT,
        "role": _RESOURCE_ROLE,
        "detail": _details({"readings": readings, "stored": stored,
                            "duplicates": duplicates}),
    }]
    if patient_id:
        entities.append({"what": {"reference": f"Patient/{patient_id}"}, "type": _PERSON,
                         "role": _PATIENT_ROLE})
    if status >= 400 and not detail:
        detail = f"refused ({status})" if status < 500 else f"failed ({status})"
    return _event(_IMPORT, [_channel(f"device-{channel}"), {"system": CHANNEL, "code": kind}],
                  "C", outcome_of(status), detail,
                  _agents(caller.subject, None, address, None, caller.roles),
                  "carebridge device gateway", entities, default_purpose(caller.roles))


def import_event(operator: str, source: str, resources: Mapping[str, int], *, status: int,
                 detail: str = "") -> dict[str, Any]:
    """One file (a bundle, a resource or NDJSON) loaded by ``carebridge import``: who ran
    it, which file, how many resources of each type, outcome."""
    entity: dict[str, Any] = {"type": _SYSTEM_OBJECT, "name": source}
    if resources:
        entity["detail"] = _details(dict(sorted(resources.items())))
    return _event(_IMPORT, [_channel("cli-import")], "C", outcome_of(status), detail,
                  _agents(operator, None, None, None), "carebridge command line", [entity],
                  "RECORDMGT")


def admin_event(change: dict[str, str], action: str, operator: str, target: str, *,
                target_kind: str, ok: bool, detail: str = "") -> dict[str, Any]:
    """A security administration command (user add/disable/reset-mfa, client add, keys
    rotate): who ran it, what it changed (``target_kind`` user, client or key), outcome."""
    systems = {"user": "urn:carebridge:user", "client": "urn:carebridge:client",
               "key": "urn:carebridge:key"}
    entity = {"what": {"identifier": {"system": systems[target_kind], "value": target}},
              "type": _PERSON if target_kind == "user" else _SYSTEM_OBJECT,
              "role": _SECURITY_USER if target_kind != "key" else _SECURITY_RESOURCE}
    return _event(_SECURITY_ALERT, [change], action, "0" if ok else "4", detail,
                  _agents(operator, None, None, None), "carebridge command line", [entity],
                  "SYSADMN")
