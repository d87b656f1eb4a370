"""FHIR R4 Subscription, rest-hook channel (http://hl7.org/fhir/R4/subscription.html).

The criteria are decided when the write commits (inside the engine's outbox transaction) and
only the delivery is queued (:mod:`carebridge.events.delivery`), so no notification is lost
across a restart. Matching is in memory for the common case -- every parameter a plain token
(``Flag?subject=Patient/1``, ``Observation?code=http://loinc.org|8867-4``) or a reference
(``subject=Patient/1``) -- using the same extractor that fills the search index ("extract
once, match twice"); anything else runs the search compiler on ``_id`` plus the criteria.

Delivery (R4 rest-hook): an empty ``channel.payload`` means a POST with no body to the
endpoint; with a payload, the resource is PUT to ``{endpoint}/{type}/{id}``. ``channel.header``
lines are sent with each call. Deleted resources send nothing (the criteria apply to the new
content). Subscriptions with status ``requested`` or ``active`` are live.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson

from carebridge.events.bus import ResourceChanged
from carebridge.events.delivery import enqueue
from carebridge.fhir.errors import FhirError
from carebridge.fhir.resource import Resource
from carebridge.search.extract import values_of
from carebridge.search.values import ReferenceValue, TokenValue
from carebridge.security.policy import SYSTEM
from carebridge.services.resources import PendingWrites, ResourceService
from carebridge.storage.base import Session, StoredVersion

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LiveSubscription:
    subscription_id: str
    resource_type: str
    params: tuple[tuple[str, str], ...]
    endpoint: str
    payload: str | None
    headers: tuple[str, ...]


def parse_subscription(resource: Resource) -> LiveSubscription | None:
    if resource.get("status") not in ("requested", "active"):
        return None
    channel = resource.get("channel") or {}
    if channel.get("type") != "rest-hook" or not channel.get("endpoint"):
        return None
    criteria = str(resource.get("criteria") or "")
    rtype, _, query = criteria.partition("?")
    if not rtype:
        return None
    return LiveSubscription(str(resource["id"]), rtype, tuple(parse_qsl(query)),
                            str(channel["endpoint"]).rstrip("/"), channel.get("payload") or None,
                            tuple(str(h) for h in channel.get("header") or []))


def _token_matches(values: Sequence[Any], wanted: str) -> bool:
    system, bar, code = wanted.rpartition("|")
    for value in values:
        if isinstance(value, TokenValue) and value.code == code and (
                not bar or (value.system or "") == system):
            return True
    return False


def _reference_matches(values: Sequence[Any], wanted: str) -> bool:
    rtype, _, rid = wanted.rpartition("/")
    return any(isinstance(v, ReferenceValue) and v.target_id == rid
               and (not rtype or v.target_type == rtype) for v in values)


def matches_in_memory(resource: Resource, params: Sequence[tuple[str, str]]) -> bool | None:
    """True/False when every parameter is a plain token or reference; None otherwise."""
    for name, raw in params:
        if ":" in name or name.startswith("_") or "," in raw:
            return None
        try:
            values = values_of(resource, name)
        except KeyError:
            return None  # not a parameter of this type: the search compiler reports it
        kinds = {type(v) for v in values}
        if kinds <= {TokenValue}:
            ok = _token_matches(values, raw)
        elif kinds <= {ReferenceValue}:
            ok = _reference_matches(values, raw)
        else:
            return None
        if not ok:
            return False
    return True


class SubscriptionMatcher:
    def __init__(self, service: ResourceService) -> None:
        self.service = service
        self._live: list[LiveSubscription] | None = None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self._live)

    def invalidate(self) -> None:
        with self._lock:
            self._live = None

    def refresh(self) -> None:
        """Load the live subscriptions (outside any write transaction)."""
        if self._live is not None:
            return
        from carebridge.services.search import SearchService

        found = SearchService(self.service).search(
            SYSTEM, "Subscription", [("status", "requested,active"), ("_count", "1000")])
        live = [s for s in (parse_subscription(orjson.loads(m.body)) for m in found.matches)
                if s is not None]
        with self._lock:
            self._live = live

    def enqueue(self, session: Session, changed: Sequence[ResourceChanged],
                bodies: Mapping[tuple[str, str], StoredVersion], moment: datetime) -> int:
        """Queue a notification per (subscription, matching change); returns how many."""
        queued = 0
        for change in changed:
            if change.method == "DELETE":
                continue
            current = bodies.get((change.resource_type, change.resource_id))
            if current is None or current.body is None or current.version != change.version:
                continue  # a later version follows in the outbox and is judged on its own
            resource: Resource | None = None
            for sub in self._live or []:
                if sub.resource_type != change.resource_type:
                    continue
                resource = resource or orjson.loads(current.body)
                if self._matches(session, sub, resource):
                    self._queue(session, sub, change, current.body, moment)
                    queued += 1
        return queued

    def activate(self, pending: PendingWrites, changed: Sequence[ResourceChanged],
                 bodies: Mapping[tuple[str, str], StoredVersion], moment: datetime) -> None:
        """R4: the server sets a ``requested`` Subscription it can serve to ``active``."""
        for change in changed:
            current = bodies.get(("Subscription", change.resource_id))
            if change.resource_type != "Subscription" or current is None or not current.body:
                continue
            resource = orjson.loads(current.body)
            if resource.get("status") == "requested" and parse_subscription(resource):
                resource["status"] = "active"
                self.service.stage(pending, resource, "Subscription", change.resource_id,
                                   current.version + 1, "PUT", moment, current.version)
                self.invalidate()

    def _matches(self, session: Session, sub: LiveSubscription, resource: Resource) -> bool:
        decided = matches_in_memory(resource, sub.params)
        if decided is not None:
            return decided
        from carebridge.services.search import SearchService

        criteria = "&".join(f"{k}={v}" for k, v in (("_id", resource["id"]), *sub.params))
        try:
            return bool(SearchService(self.service).match_ids(
                session, sub.resource_type, criteria, limit=1))
        except FhirError as exc:
            log.warning("Subscription/%s criteria cannot be evaluated: %s",
                        sub.subscription_id, exc)
            return False

    def _queue(self, session: Session, sub: LiveSubscription, change: ResourceChanged,
               body: bytes, moment: datetime) -> None:
        dialect = self.service.repository.dialect
        if sub.payload:
            enqueue(session, dialect, sub.subscription_id, "PUT",
                    f"{sub.endpoint}/{change.resource_type}/{change.resource_id}", sub.headers,
                    sub.payload, body, moment)
        else:
            enqueue(session, dialect, sub.subscription_id, "POST", sub.endpoint, sub.headers,
                    None, None, moment)
