"""Reading the current version of a resource a message refines (see ``mapping``), inside the
database transaction that will write the message's bundle, so what a mapper reads is what
the bundle replaces (and earlier messages of the same group commit are seen)."""

from __future__ import annotations

import orjson

from carebridge.ingest.hl7v2.errors import DUPLICATE_KEY_IDENTIFIER, MessageError
from carebridge.ingest.hl7v2.mapping import Current
from carebridge.security.policy import AccessPolicy, Action, Caller
from carebridge.services.search import SearchService
from carebridge.storage.base import Session


class SessionLookup:
    """A :class:`carebridge.ingest.hl7v2.mapping.Lookup` in an open session, authorized as
    a search by the caller, like any other read."""

    def __init__(self, session: Session, search: SearchService, policy: AccessPolicy,
                 caller: Caller) -> None:
        self.session = session
        self.search = search
        self.policy = policy
        self.caller = caller

    def find(self, resource_type: str, criteria: str) -> Current | None:
        found = self.find_id(resource_type, criteria)
        if found is None:
            return None
        version = self.session.read(resource_type, found)
        if version is None or version.body is None:
            return None
        return Current(version.id, version.version, orjson.loads(version.body))

    def find_id(self, resource_type: str, criteria: str) -> str | None:
        self.policy.authorize(self.caller, Action.SEARCH, resource_type)
        ids = self.search.match_ids(self.session, resource_type, criteria, limit=2)
        if len(ids) > 1:
            raise MessageError(f"{resource_type}?{criteria} matches more than one resource",
                               DUPLICATE_KEY_IDENTIFIER)
        return ids[0] if ids else None

    def identified(self, resource_type: str, system: str, values: list[str]) -> dict[str, str]:
        self.policy.authorize(self.caller, Action.SEARCH, resource_type)
        found = self.search.ids_by_token(self.session, resource_type, "identifier", system,
                                         values)
        for value, ids in found.items():
            if len(ids) > 1:
                raise MessageError(f"{resource_type}?identifier={system}|{value} matches more"
                                   " than one resource", DUPLICATE_KEY_IDENTIFIER)
        return {value: ids[0] for value, ids in found.items()}
