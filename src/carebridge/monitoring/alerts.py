"""Alerts as FHIR ``Flag`` resources (http://hl7.org/fhir/R4/flag.html).

One alert stands for one *condition* of one patient: the NEWS2 band (``news2``), a personal
rule (``rule:<Basic id>``) or a silent device (``device-silent:<Device id>``). While an alert
for a condition is open no second one is raised (``mon_alert`` has a unique index over open
alerts per patient and condition, so even two workers cannot both open one); a higher rank
escalates the open Flag instead (new version: code, priority, state back to open).

Each Flag carries: ``status`` active while open, inactive once resolved; ``code`` for the rule
or band; the core ``flag-priority`` extension (PL/PM/PH); the core ``flag-detail`` extension
pointing at the triggering resource (the NEWS2 Observation or the reading); and carebridge's
``alert-state`` (open | acknowledged | resolved) with an ``alert-event`` per acknowledgement or
resolution (who and when). Every change is a new version, so ``_history`` is the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from carebridge.events.sqltext import run
from carebridge.fhir.errors import Conflict, Forbidden, NotFound
from carebridge.fhir.resource import Resource, format_instant, new_id
from carebridge.monitoring.codes import (
    ALERT_CODE,
    ALERT_EVENT_EXT,
    ALERT_STATE_EXT,
    FLAG_CATEGORY,
    FLAG_DETAIL_EXT,
    FLAG_PRIORITY_CODES,
    FLAG_PRIORITY_EXT,
    instant_text,
)
from carebridge.security.policy import Action, Caller
from carebridge.services.resources import PendingWrites, ResourceService
from carebridge.storage.base import Session

PRIORITY_NAMES = {"PL": "Low priority", "PM": "Medium priority", "PH": "High priority"}


@dataclass(frozen=True, slots=True)
class AlertCondition:
    patient_id: str
    key: str  # news2 | rule:<id> | device-silent:<id>
    rank: int  # higher is worse; a higher rank escalates an open alert
    code: str
    display: str
    priority: str  # PL | PM | PH
    detail: str | None  # "Observation/<id>" that triggered it
    category: str = "clinical"


def _flag(condition: AlertCondition, flag_id: str, moment: datetime) -> Resource:
    extension: list[dict[str, Any]] = [
        {"url": FLAG_PRIORITY_EXT, "valueCodeableConcept": {"coding": [{
            "system": FLAG_PRIORITY_CODES, "code": condition.priority,
            "display": PRIORITY_NAMES[condition.priority]}]}},
        {"url": ALERT_STATE_EXT, "valueCode": "open"},
    ]
    if condition.detail:
        extension.append({"url": FLAG_DETAIL_EXT,
                          "valueReference": {"reference": condition.detail}})
    return {
        "resourceType": "Flag",
        "id": flag_id,
        "extension": extension,
        "status": "active",
        "category": [{"coding": [{"system": FLAG_CATEGORY, "code": condition.category}]}],
        "code": {"coding": [{"system": ALERT_CODE, "code": condition.code,
                             "display": condition.display}], "text": condition.display},
        "subject": {"reference": f"Patient/{condition.patient_id}"},
        "period": {"start": format_instant(moment)},
    }


def raise_alert(service: ResourceService, session: Session, pending: PendingWrites,
                condition: AlertCondition, moment: datetime) -> str:
    """Open, escalate or leave the alert for ``condition``; returns what happened
    (``opened``, ``escalated`` or ``open``)."""
    dialect = service.repository.dialect
    rows = run(session, dialect,
               "SELECT flag_id, rank FROM mon_alert WHERE patient_id = ? AND condition_key = ?"
               " AND state <> 'resolved'", (condition.patient_id, condition.key))
    if not rows:
        flag_id = new_id()
        run(session, dialect,
            "INSERT INTO mon_alert (flag_id, patient_id, condition_key, rank, state, opened)"
            " VALUES (?, ?, ?, ?, 'open', ?) RETURNING 1",
            (flag_id, condition.patient_id, condition.key, condition.rank, instant_text(moment)))
        service.stage(pending, _flag(condition, flag_id, moment), "Flag", flag_id, 1, "POST",
                      moment, None)
        return "opened"
    flag_id, rank = rows[0][0], int(rows[0][1])
    if condition.rank <= rank:
        return "open"
    current = service.read_in(session, "Flag", flag_id)
    assert current.body is not None
    old = orjson.loads(current.body)
    new = _flag(condition, flag_id, moment)
    new["period"] = old.get("period", new["period"])
    new["extension"].extend(e for e in old.get("extension", []) if e.get("url") == ALERT_EVENT_EXT)
    new["extension"].append(_event("escalated", "system", moment))
    run(session, dialect,
        "UPDATE mon_alert SET rank = ?, state = 'open' WHERE flag_id = ? RETURNING 1",
        (condition.rank, flag_id))
    service.stage(pending, new, "Flag", flag_id, current.version + 1, "PUT", moment,
                  current.version)
    return "escalated"


def _event(kind: str, who: str, moment: datetime) -> dict[str, Any]:
    return {"url": ALERT_EVENT_EXT, "extension": [
        {"url": "type", "valueCode": kind},
        {"url": "who", "valueString": who},
        {"url": "when", "valueDateTime": format_instant(moment)},
    ]}


def change_state(service: ResourceService, session: Session, pending: PendingWrites,
                 flag_id: str, state: str, who: str, moment: datetime) -> Resource:
    """Acknowledge or resolve an alert, recording who and when in a new Flag version."""
    dialect = service.repository.dialect
    rows = run(session, dialect, "SELECT state FROM mon_alert WHERE flag_id = ?", (flag_id,))
    if not rows:
        raise NotFound(f"Flag/{flag_id} is not a monitoring alert")
    if rows[0][0] == "resolved":
        raise Conflict(f"Flag/{flag_id} is already resolved")
    current = service.read_in(session, "Flag", flag_id)
    assert current.body is not None
    flag: Resource = orjson.loads(current.body)
    flag["extension"] = [
        {"url": ALERT_STATE_EXT, "valueCode": state} if e.get("url") == ALERT_STATE_EXT else e
        for e in flag.get("extension", [])]
    flag["extension"].append(_event(state, who, moment))
    if state == "resolved":
        flag["status"] = "inactive"
        flag.setdefault("period", {})["end"] = format_instant(moment)
    run(session, dialect, "UPDATE mon_alert SET state = ? WHERE flag_id = ? RETURNING 1",
        (state, flag_id))
    service.stage(pending, flag, "Flag", flag_id, current.version + 1, "PUT", moment,
                  current.version)
    return flag


def resolve_condition(service: ResourceService, session: Session, pending: PendingWrites,
                      patient_id: str, key: str, who: str, moment: datetime) -> bool:
    rows = run(session, service.repository.dialect,
               "SELECT flag_id FROM mon_alert WHERE patient_id = ? AND condition_key = ?"
               " AND state <> 'resolved'", (patient_id, key))
    for (flag_id,) in rows:
        change_state(service, session, pending, flag_id, "resolved", who, moment)
    return bool(rows)


class AlertDesk:
    """Acknowledge and resolve, the clinician's side of alerts (through the service layer)."""

    def __init__(self, service: ResourceService) -> None:
        self.service = service

    def acknowledge(self, caller: Caller, flag_id: str) -> Resource:
        return self._change(caller, flag_id, "acknowledged")

    def resolve(self, caller: Caller, flag_id: str) -> Resource:
        return self._change(caller, flag_id, "resolved")

    def _unrestricted(self, caller: Caller, action: Action, flag_id: str | None = None) -> None:
        """The alert desk is for care teams with unrestricted access to Flags; a caller
        narrowed to one patient (or by criteria) uses the FHIR API, which narrows."""
        if self.service.policy.authorize(caller, action, "Flag", flag_id) is not None:
            raise Forbidden("The monitoring alert desk needs access to all Flags")

    def _change(self, caller: Caller, flag_id: str, state: str) -> Resource:
        self._unrestricted(caller, Action.UPDATE, flag_id)
        moment = self.service.clock()

        def work(session: Session, pending: PendingWrites) -> Resource:
            return change_state(self.service, session, pending, flag_id, state, caller.subject,
                                moment)

        return self.service.run_write(work, retry=True)

    def open_alerts(self, caller: Caller) -> list[bytes]:
        self._unrestricted(caller, Action.SEARCH)
        dialect = self.service.repository.dialect
        with self.service.repository.session() as session:
            rows = run(session, dialect,
                       "SELECT flag_id FROM mon_alert WHERE state <> 'resolved' ORDER BY opened")
            found = session.read_many([("Flag", row[0]) for row in rows])
        return [found[("Flag", row[0])].body or b"" for row in rows if ("Flag", row[0]) in found]
