"""FHIR R4 AuditEvents for what happens at the server (http://hl7.org/fhir/R4/auditevent.html).

Codes: ``type`` is ``rest`` (audit-event-type) for FHIR interactions and DICOM ``110114`` (User
Authentication) for logins and token issues; ``subtype`` the FHIR restful interaction;
``action`` C/R/U/D/E; ``outcome`` 0 success, 4 minor failure (refused, not found), 8 serious
failure (server error); ``purposeOfEvent`` v3-ActReason. Agents: the user (or system) who asked,
with their network address, and the client application on whose behalf.
"""

from __future__ import annotations

import base64
from typing import Any

from carebridge.fhir.resource import format_instant, new_id, now_instant
from carebridge.security.policy import Caller

_REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
         "display": "RESTful Operation"}
_LOGIN = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114",
          "display": "User Authentication"}
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
        event["purposeOfEvent"] = [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
            "code": caller.purpose}]}]
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
