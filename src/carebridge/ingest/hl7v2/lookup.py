"""Reading the current version of a resource a message refines (see ``mapping``)."""

from __future__ import annotations

import orjson

from carebridge.ingest.hl7v2.errors import DUPLICATE_KEY_IDENTIFIER, MessageError
from carebridge.ingest.hl7v2.mapping import Current
from carebridge.security.policy import Action, Caller
from carebridge.services.resources import ResourceService
from carebridge.services.search import SearchService


class StoreLookup:
    def __init__(self, search: SearchService) -> None:
        self.search = search

    def bound(self, caller: Caller, service: ResourceService) -> BoundLookup:
        return BoundLookup(self.search, caller, service)


class BoundLookup:
    """A :class:`carebridge.ingest.hl7v2.mapping.Lookup` for one caller (authorized as a
    search by that caller, like any other read)."""

    def __init__(self, search: SearchService, caller: Caller, service: ResourceService) -> None:
        self.search = search
        self.caller = caller
        self.service = service

    def find(self, resource_type: str, criteria: str) -> Current | None:
        self.service.policy.authorize(self.caller, Action.SEARCH, resource_type)
        with self.service.repository.session() as session:
            ids = self.search.match_ids(session, resource_type, criteria, limit=2)
            if len(ids) > 1:
                raise MessageError(f"{resource_type}?{criteria} matches more than one"
                                   " resource", DUPLICATE_KEY_IDENTIFIER)
            if not ids:
                return None
            version = session.read(resource_type, ids[0])
        if version is None or version.body is None:
            return None
        return Current(version.id, version.version, orjson.loads(version.body))
