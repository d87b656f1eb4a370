"""Access policy: the single decision point the service layer asks before it touches storage.

Until SMART scopes and roles land, :class:`AllowAll` permits everything; the point of having
the protocol now is that every way in already passes through :meth:`AccessPolicy.authorize`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Action(StrEnum):
    READ = "read"
    VREAD = "vread"
    HISTORY = "history"
    CREATE = "create"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    SEARCH = "search"
    TRANSACTION = "transaction"
    BATCH = "batch"
    CAPABILITIES = "capabilities"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the identity every service call carries."""

    subject: str
    client_id: str | None = None
    roles: frozenset[str] = field(default_factory=frozenset)
    scopes: frozenset[str] = field(default_factory=frozenset)
    remote_addr: str | None = None


SYSTEM = Caller("system", roles=frozenset({"system"}))
ANONYMOUS = Caller("anonymous")


class AccessPolicy(Protocol):
    def authorize(
        self,
        caller: Caller,
        action: Action,
        resource_type: str | None,
        resource_id: str | None = None,
    ) -> None:
        """Return if allowed; raise :class:`carebridge.fhir.errors.Forbidden` otherwise."""
        ...


class AllowAll:
    """Permits every action (the default until the security issue lands)."""

    def authorize(
        self,
        caller: Caller,
        action: Action,
        resource_type: str | None,
        resource_id: str | None = None,
    ) -> None:
        return None
