"""Conditional interactions: create (If-None-Exist), update and delete by search criteria
(http://hl7.org/fhir/R4/http.html#ccreate), alone or inside a transaction.

The search and the write happen in one database transaction. Before searching, the
transaction takes a lock named after the resource type and the normalised criteria, so two
concurrent conditional creates with the same criteria serialise: the second one's search runs
after the first commits and finds its resource (PostgreSQL; SQLite write transactions are
serialised anyway). Criteria that differ in form but select the same resources are not
covered by the lock; the spec leaves that case to the client.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import parse_qsl, urlencode

from carebridge.fhir.errors import BadRequest, Forbidden, PreconditionFailed
from carebridge.fhir.resource import Resource, check_id, new_id
from carebridge.security.policy import Action, Caller, Restriction
from carebridge.services.resources import PendingWrites, ResourceService, WriteResult, check_type
from carebridge.services.search import SearchService
from carebridge.storage.base import Session


def normalise(criteria: str) -> str:
    return urlencode(sorted(parse_qsl(criteria.lstrip("?"), keep_blank_values=True)))


class ConditionalWrites:
    def __init__(self, resources: ResourceService, search: SearchService) -> None:
        self.resources = resources
        self.search = search

    def matches(self, session: Session, pending: PendingWrites, resource_type: str,
                criteria: str) -> list[str]:
        """Ids (at most 2) matching ``criteria``, seeing this transaction's own writes."""
        session.lock(f"{resource_type}?{normalise(criteria)}")
        pending.flush(session)
        return self.search.match_ids(session, resource_type, criteria.lstrip("?"), limit=2)

    def _one(self, ids: list[str], resource_type: str, criteria: str) -> str | None:
        if len(ids) > 1:
            raise PreconditionFailed(
                f"The criteria {resource_type}?{criteria} match more than one resource")
        return ids[0] if ids else None

    # ---------------------------------------------------------------- create

    def create(self, caller: Caller, resource_type: str, body: bytes,
               criteria: str) -> WriteResult:
        check_type(resource_type)
        resource = self.resources.parse(body, resource_type)
        _unrestricted(self.resources.policy.authorize(caller, Action.CREATE, resource_type))
        moment = self.resources.clock()
        return self.resources.run_write(
            lambda s, p: self.create_in(s, p, resource, criteria, new_id(), moment), retry=True)

    def create_in(self, session: Session, pending: PendingWrites, resource: Resource,
                  criteria: str, resource_id: str, moment: datetime) -> WriteResult:
        rtype = resource["resourceType"]
        existing = self._one(self.matches(session, pending, rtype, criteria), rtype, criteria)
        if existing is not None:
            current = session.read(rtype, existing)
            assert current is not None
            return WriteResult(current, 200, changed=False)
        return self.resources.create_in(pending, resource, resource_id, moment)

    # ---------------------------------------------------------------- update

    def update(self, caller: Caller, resource_type: str, criteria: str,
               body: bytes) -> WriteResult:
        check_type(resource_type)
        resource = self.resources.parse(body, resource_type)
        _unrestricted(self.resources.policy.authorize(caller, Action.UPDATE, resource_type))
        return self.resources.run_write(
            lambda s, p: self.update_in(s, p, resource, criteria, self.resources.clock()),
            retry=True)

    def update_in(self, session: Session, pending: PendingWrites, resource: Resource,
                  criteria: str, moment: datetime) -> WriteResult:
        """No match: create (with the body's id, or a new one); one match: update it (a
        body id, if given, must be that one); several: 412."""
        rtype = resource["resourceType"]
        target = self._one(self.matches(session, pending, rtype, criteria), rtype, criteria)
        body_id = resource.get("id")
        if target is None:
            rid = check_id(body_id) if body_id is not None else new_id()
            return self.resources.update_in(session, pending, {**resource, "id": rid}, rid,
                                            moment)
        if body_id is not None and body_id != target:
            raise BadRequest(f"The body's id {body_id!r} is not the id of the resource the "
                             f"criteria select ({target!r})", ("id",))
        return self.resources.update_in(session, pending, {**resource, "id": target}, target,
                                        moment)

    # ---------------------------------------------------------------- delete

    def delete(self, caller: Caller, resource_type: str, criteria: str) -> WriteResult | None:
        check_type(resource_type)
        _unrestricted(self.resources.policy.authorize(caller, Action.DELETE, resource_type))
        return self.resources.run_write(
            lambda s, p: self.delete_in(s, p, resource_type, criteria, self.resources.clock()),
            retry=True)

    def delete_in(self, session: Session, pending: PendingWrites, resource_type: str,
                  criteria: str, moment: datetime) -> WriteResult | None:
        target = self._one(self.matches(session, pending, resource_type, criteria),
                           resource_type, criteria)
        if target is None:
            return None
        return self.resources.delete_in(session, pending, resource_type, target, moment)

    def resolve_reference(self, session: Session, pending: PendingWrites,
                          reference: str) -> str:
        """``Type?criteria`` -> ``Type/id`` (exactly one match, else 412/404-like 412)."""
        rtype, _, criteria = reference.partition("?")
        check_type(rtype)
        ids = self.matches(session, pending, rtype, criteria)
        if len(ids) != 1:
            found = "no resource" if not ids else "more than one resource"
            raise PreconditionFailed(f"Conditional reference {reference!r} matches {found}")
        return f"{rtype}/{ids[0]}"


def _unrestricted(restriction: Restriction | None) -> None:
    """Conditional criteria are searched over the whole store: a caller confined to one
    compartment or to granular criteria uses the plain interactions instead."""
    if restriction is not None:
        raise Forbidden("This access token does not permit conditional interactions")
