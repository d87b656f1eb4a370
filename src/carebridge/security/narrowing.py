"""Search narrowing: the caller's restrictions, per resource type, for one search.

The search service asks :meth:`Narrowing.for_search` for the restriction of each type it
searches (refusals raise :class:`~carebridge.fhir.errors.Forbidden` before any SQL runs), adds
the patient-compartment condition and any granular-scope criteria to the query it compiles, and
asks :meth:`Narrowing.includable` which types an ``_include``/``_revinclude`` may bring in
(types the caller may not read are never fetched; patient-bound types are fetched through the
same compartment condition). Nothing is filtered out of results after the query ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from carebridge.fhir.errors import Forbidden
from carebridge.fhir.resource import Resource
from carebridge.search.extract import values_of
from carebridge.search.values import ReferenceValue
from carebridge.security.policy import (
    AccessPolicy,
    Action,
    Caller,
    Restriction,
    patient_compartment_params,
)


@dataclass
class Narrowing:
    policy: AccessPolicy
    caller: Caller
    patient: str | None = None
    #: types confined to ``patient``'s compartment in this search
    bound_types: set[str] = field(default_factory=set)
    criteria: tuple[tuple[str, str], ...] = ()
    _include_cache: dict[str, Restriction | bool | None] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.patient is not None or bool(self.criteria)

    def for_search(self, resource_types: tuple[str, ...] | tuple[None]) -> None:
        """Authorize a search over these types (None: every type) and collect the narrowing."""
        criteria: set[tuple[tuple[str, str], ...]] = set()
        for rtype in resource_types:
            restriction = self.policy.authorize(self.caller, Action.SEARCH, rtype)
            if restriction is None:
                continue
            if restriction.patient is not None and rtype is not None:
                self.patient = restriction.patient
                self.bound_types.add(rtype)
            if restriction.criteria:
                criteria.add(restriction.criteria)
        if criteria:
            if len(resource_types) != 1:
                raise Forbidden("A token with granular scopes searches one resource type at a time")
            self.criteria = next(iter(criteria))

    def includable(self, resource_type: str) -> Restriction | bool | None:
        """False: never include this type; None: include freely; a Restriction: include
        through its patient compartment (criteria-bound types are not included)."""
        if resource_type not in self._include_cache:
            try:
                answer: Restriction | bool | None = self.policy.authorize(
                    self.caller, Action.READ, resource_type)
            except Forbidden:
                answer = False
            if isinstance(answer, Restriction) and answer.criteria:
                answer = False
            self._include_cache[resource_type] = answer
        return self._include_cache[resource_type]


def references_patient(resource: Resource, patient: str) -> bool:
    """Whether a resource (about to be written) is in ``patient``'s compartment."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return False
    if rtype == "Patient" and resource.get("id") == patient:
        return True
    for code in patient_compartment_params(rtype):
        for value in values_of(resource, code):
            if (isinstance(value, ReferenceValue) and value.target_type == "Patient"
                    and value.target_id == patient):
                return True
    return False
