"""Access policy: the single decision point the service layer asks before it touches storage.

:meth:`AccessPolicy.authorize` either refuses (raises :class:`~carebridge.fhir.errors.Forbidden`)
or answers with the :class:`Restriction` the service must add to what it reads: the patient
compartment a patient-context token is confined to, and the search criteria of a granular
SMART v2 scope (``patient/Observation.rs?category=laboratory``). The service narrows its query
with them (HAPI's search-narrowing idea, STYLE.md point 8); nothing is filtered afterwards.
``None`` means unrestricted.

Two policies: :class:`AllowAll` (the library default for embedding and for the insecure
development server) and :class:`SmartPolicy` (scopes intersected with roles, see
:mod:`carebridge.security.roles`), which ``carebridge serve`` uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Protocol

from carebridge.fhir import registry
from carebridge.fhir.errors import Forbidden
from carebridge.security import roles as R
from carebridge.security.scopes import ScopeGrant, parse_scopes


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


# SMART v2 interaction letters (scopes-and-launch-context.html#scopes-for-requesting-fhir-resources)
_OPERATION = {
    Action.READ: "r", Action.VREAD: "r", Action.HISTORY: "r", Action.SEARCH: "s",
    Action.CREATE: "c", Action.UPDATE: "u", Action.PATCH: "u", Action.DELETE: "d",
}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the identity every service call carries.

    ``subject`` is the user (or client, for backend services) the token was issued to;
    ``patient`` the patient context of a SMART launch, or the Patient a patient user is linked
    to; ``purpose`` a purpose-of-use code for the audit trail.
    """

    subject: str
    client_id: str | None = None
    roles: frozenset[str] = field(default_factory=frozenset)
    scopes: frozenset[str] = field(default_factory=frozenset)
    remote_addr: str | None = None
    patient: str | None = None
    fhir_user: str | None = None
    purpose: str | None = None
    token_id: str | None = None


SYSTEM = Caller("system", roles=frozenset({R.SYSTEM_ROLE}))
ANONYMOUS = Caller("anonymous")


@dataclass(frozen=True, slots=True)
class Restriction:
    """What a caller may see of a type: one patient's compartment and/or search criteria
    that every matching resource must also meet (a granular scope's query)."""

    patient: str | None = None
    criteria: tuple[tuple[str, str], ...] = ()


class AccessPolicy(Protocol):
    def authorize(
        self,
        caller: Caller,
        action: Action,
        resource_type: str | None,
        resource_id: str | None = None,
    ) -> Restriction | None:
        """Return None (unrestricted) or the narrowing to apply; raise
        :class:`carebridge.fhir.errors.Forbidden` when the action is not allowed at all."""
        ...


_WRITES = frozenset({Action.CREATE, Action.UPDATE, Action.PATCH, Action.DELETE})


class AllowAll:
    """Permits every action but writing AuditEvents: for embedding the library, the CLI's
    import and ``serve --insecure-dev``."""

    def authorize(
        self,
        caller: Caller,
        action: Action,
        resource_type: str | None,
        resource_id: str | None = None,
    ) -> Restriction | None:
        if resource_type == R.AUDIT_TYPE and action in _WRITES:
            raise Forbidden("AuditEvents are written by the server's audit ledger only")
        return None


class SmartPolicy:
    """SMART scopes intersected with roles (see the module docstring)."""

    def authorize(
        self,
        caller: Caller,
        action: Action,
        resource_type: str | None,
        resource_id: str | None = None,
    ) -> Restriction | None:
        decision = _decide(caller, action, resource_type)
        if isinstance(decision, str):
            raise Forbidden(decision)
        return decision


def patient_compartment_params(resource_type: str) -> tuple[str, ...]:
    """The search parameters that put a resource of this type in a Patient's compartment
    (http://hl7.org/fhir/R4/compartmentdefinition-patient.html); () when none do."""
    return _compartment_params().get(resource_type, ())


@lru_cache(maxsize=1)
def _compartment_params() -> dict[str, tuple[str, ...]]:
    definition = registry.compartment_definition("Patient")
    return {r["code"]: tuple(r["param"]) for r in definition.get("resource", []) if r.get("param")}


def _denied(operation: str, resource_type: str | None) -> str:
    # The same words for every refusal: they say what the token lacks, never what exists.
    return (f"The access token does not permit '{operation}' on"
            f" {resource_type or 'all resource types'}")


@lru_cache(maxsize=65536)
def _decide(caller: Caller, action: Action, resource_type: str | None) -> Restriction | str | None:
    """The decision for (caller, action, type), cached: a token makes the same few calls."""
    operation = _OPERATION.get(action)
    if operation is None:  # transaction, batch, capabilities: each entry is checked itself
        return None if caller.subject != "anonymous" else _denied(action.value, resource_type)
    if resource_type == R.AUDIT_TYPE and operation not in "rs":
        return "AuditEvents are written by the server's audit ledger only"
    if not R.role_allows(caller.roles, resource_type, operation):
        return _denied(operation, resource_type)
    if R.SYSTEM_ROLE in caller.roles and caller.client_id is None:
        return None  # the server itself (CLI import): roles are its only limit
    grants = [g for g in parse_scopes(caller.scopes) if g.covers(resource_type, operation)]
    if not grants:
        return _denied(operation, resource_type)
    if action is Action.HISTORY and resource_type is None:
        grants = [g for g in grants if g.context != "patient"]
    return _narrowest_needed(caller, grants, resource_type, operation)


def _narrowest_needed(caller: Caller, grants: list[ScopeGrant], resource_type: str | None,
                      operation: str) -> Restriction | str | None:
    """The least restrictive of the matching grants (scopes add up), as a Restriction."""
    patient_bound = R.PATIENT in caller.roles
    best: Restriction | str | None = _denied(operation, resource_type)
    for grant in sorted(grants, key=lambda g: (len(g.criteria), g.context == "patient")):
        needs_patient = patient_bound or grant.context == "patient"
        if needs_patient:
            if caller.patient is None:
                continue  # a patient scope without a patient context grants nothing
            if resource_type is None:
                continue  # a whole-server read cannot be confined to one compartment here
            if not patient_compartment_params(resource_type) and resource_type != "Patient":
                # Not patient data (Practitioner, Organization, Medication...): readable,
                # never writable, from a patient context.
                if operation not in "rs":
                    continue
                return Restriction(None, grant.criteria) if grant.criteria else None
            return Restriction(caller.patient, grant.criteria)
        return Restriction(None, grant.criteria) if grant.criteria else None
    return best
