"""Search parameters whose values are exactly the union of other parameters' values.

R4 defines Observation's ``combo-*`` parameters as the union of a parameter on the Observation
and the same on its components (``combo-code`` is ``Observation.code | Observation.component
.code``, the expressions of ``code`` and ``component-code``). Storing their index rows would
repeat rows already stored (about a sixth of all index rows of typical data), so they are not
stored, and a search on one reads the rows of the parameters it unites. The table is checked
against the official expressions by ``tests/search/test_aliases.py``.

*Restricted* aliases: R4 defines many reference parameters as another parameter of the same
type narrowed to one target type, e.g. Observation ``patient`` is
``Observation.subject.where(resolve() is Patient)`` beside ``subject`` =
``Observation.subject`` (47 such pairs: ``patient`` of clinical types, Encounter
``practitioner``, Appointment ``actor`` narrowings...). Their rows would repeat the other
parameter's rows whose target is that type (a reference row for almost every clinical
resource), so they are not stored either: a search on one reads the other's rows with
``target_type`` = the type. Found from the definitions themselves (:func:`restricted`).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from carebridge.fhir import registry

# resource type -> parameter -> the parameters whose rows answer it
ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "Observation": {
        "combo-code": ("code", "component-code"),
        "combo-code-value-concept": ("code-value-concept", "component-code-value-concept"),
        "combo-code-value-quantity": ("code-value-quantity", "component-code-value-quantity"),
        "combo-data-absent-reason": ("data-absent-reason", "component-data-absent-reason"),
        "combo-value-concept": ("value-concept", "component-value-concept"),
        "combo-value-quantity": ("value-quantity", "component-value-quantity"),
    },
}


@cache
def restricted(resource_type: str) -> dict[str, tuple[str, str]]:
    """Parameter -> (the parameter whose rows answer it, the target type they must have), for
    the restricted aliases of a type (see the module doc)."""
    parameters = registry.search_parameters_for(resource_type)
    paths: dict[str, str] = {}
    for code, sp in parameters.items():
        branches = _branches(sp, resource_type)
        if sp["type"] == "reference" and len(branches) == 1:
            paths[code] = branches[0]
    by_path = {path: code for code, path in sorted(paths.items()) if ".where(" not in path}
    found: dict[str, tuple[str, str]] = {}
    for code, path in paths.items():
        base, marker, rest = path.partition(".where(resolve() is ")
        target = rest[:-1] if rest.endswith(")") else ""
        if marker and target.isidentifier() and base in by_path:
            found[code] = (by_path[base], target)
    return found


def _branches(sp: dict[str, object], resource_type: str) -> list[str]:
    from carebridge.search.extract import split_union

    expression = sp.get("expression")
    if not isinstance(expression, str):
        return []
    return [b for b in split_union(expression) if b.startswith(resource_type + ".")]


def is_alias(resource_type: str, code: str) -> bool:
    """True when ``code``'s rows are not stored for ``resource_type``."""
    return code in ALIASES.get(resource_type, {}) or code in restricted(resource_type)


def stored_as(code: str, resource_types: Iterable[str]) -> tuple[str, ...]:
    """The parameter codes whose index rows answer ``code`` for these types."""
    found: dict[str, None] = {}
    for rtype in resource_types:
        for name in ALIASES.get(rtype, {}).get(code, (code,)):
            found[name] = None
    return tuple(found) or (code,)
