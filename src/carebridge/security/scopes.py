"""SMART on FHIR scopes, v1 and v2 (SMART App Launch 2.0, "Scopes and Launch Context").

Grammar handled here::

    v2: ( patient | user | system ) "/" ( Type | "*" ) "." [c][r][u][d][s] [ "?" query ]
    v1: ( patient | user | system ) "/" ( Type | "*" ) "." ( read | write | "*" )

v1 ``read`` means v2 ``rs``, ``write`` means ``cud`` and ``*`` means ``cruds`` (the spec's
table of v1 to v2 equivalents). A v2 suffix must list its letters in the order c, r, u, d, s;
anything else is not a clinical scope and is ignored (OAuth servers ignore scopes they do not
grant rather than fail). Written by hand: the grammar is five lines and no library here parses
it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl

_V2 = re.compile(r"^(patient|user|system)/([A-Z][A-Za-z]+|\*)\.(c?r?u?d?s?)(?:\?(.+))?$")
_V1 = re.compile(r"^(patient|user|system)/([A-Z][A-Za-z]+|\*)\.(read|write|\*)$")
_V1_OPS = {"read": "rs", "write": "cud", "*": "cruds"}

#: The scopes that ask for context or identity rather than data.
CONTEXT_SCOPES = frozenset({
    "openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
    "offline_access", "online_access",
})


@dataclass(frozen=True, slots=True)
class ScopeGrant:
    """One clinical scope: the context it applies in, the type (``*`` for all), the
    interactions (letters of ``cruds``) and, for granular v2 scopes, search criteria."""

    context: str  # patient | user | system
    resource_type: str
    operations: frozenset[str]
    criteria: tuple[tuple[str, str], ...] = ()

    def covers(self, resource_type: str | None, operation: str) -> bool:
        if operation not in self.operations:
            return False
        return self.resource_type == "*" or self.resource_type == resource_type


def parse_scope(scope: str) -> ScopeGrant | None:
    """The grant a scope string stands for, or None when it is not a clinical scope."""
    match = _V2.match(scope)
    if match and match.group(3):
        context, rtype, ops, query = match.groups()
        criteria = tuple(sorted(parse_qsl(query or "", keep_blank_values=False)))
        return ScopeGrant(context, rtype, frozenset(ops), criteria)
    match = _V1.match(scope)
    if match:
        context, rtype, kind = match.groups()
        return ScopeGrant(context, rtype, frozenset(_V1_OPS[kind]))
    return None


@lru_cache(maxsize=4096)
def parse_scopes(scopes: frozenset[str]) -> tuple[ScopeGrant, ...]:
    """Every clinical grant in a set of scopes (cached: the same token's scopes recur)."""
    grants = (parse_scope(s) for s in sorted(scopes))
    return tuple(g for g in grants if g is not None)


def split_scope(scope: str | None) -> frozenset[str]:
    """An OAuth ``scope`` parameter (space-delimited, RFC 6749 section 3.3) as a set."""
    return frozenset(s for s in (scope or "").split(" ") if s)


def within(requested: frozenset[str], allowed: frozenset[str]) -> frozenset[str]:
    """The requested scopes a client may have: those listed for it, and clinical scopes
    narrower than one listed (``patient/Observation.rs`` under ``patient/*.cruds``)."""
    allowed_grants = parse_scopes(allowed)
    granted = set()
    for scope in requested:
        if scope in allowed:
            granted.add(scope)
            continue
        grant = parse_scope(scope)
        if grant is None:
            continue
        for limit in allowed_grants:
            if (limit.context == grant.context
                    and limit.resource_type in ("*", grant.resource_type)
                    and grant.operations <= limit.operations
                    and set(limit.criteria) <= set(grant.criteria)):
                granted.add(scope)
                break
    return frozenset(granted)
