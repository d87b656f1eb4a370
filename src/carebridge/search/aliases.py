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

*Twins*: a few parameters share another's expression outright (``phonetic`` of Patient,
Practitioner, Person and RelatedPerson is ``<type>.name``, as ``name`` is). Neither the
spec nor this server gives ``phonetic`` a matching of its own (the spec leaves the
algorithm to the server), so its rows would be ``name``'s again: about four per person. A
search on it reads ``name``'s rows (:func:`twins`, also from the definitions).
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
    by_path: dict[str, str] = {}  # the first code in sorted order, as twins() keeps
    for code, path in sorted(paths.items()):
        if ".where(" not in path:
            by_path.setdefault(path, code)
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


@cache
def twins(resource_type: str) -> dict[str, tuple[str, ...]]:
    """Parameter -> (the parameter of the same type and the very same expression whose rows
    answer it,), for the twins of a type (see the module doc). Of each set of twins, the
    one named after the element keeps its rows (CodeSystem ``url`` over ``system``,
    Coverage ``beneficiary`` over ``patient``), else the first in sorted order."""
    parameters = registry.search_parameters_for(resource_type)
    sets: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for code, sp in sorted(parameters.items()):
        branches = tuple(sorted(_branches(sp, resource_type)))
        if not code.startswith("_") and sp["type"] != "composite" and branches:
            sets.setdefault((str(sp["type"]), branches), []).append(code)
    found: dict[str, tuple[str, ...]] = {}
    for (_, branches), codes in sets.items():
        named = [c for c in codes if all(b.rsplit(".", 1)[-1] == c for b in branches)]
        keeper = (named or codes)[0]
        found.update({code: (keeper,) for code in codes if code != keeper})
    return found


@cache
def aliases(resource_type: str) -> dict[str, tuple[str, ...]]:
    """Every parameter of ``resource_type`` whose rows are the union of others' rows (the
    hand-checked table and the twins) -> those others."""
    return {**twins(resource_type), **ALIASES.get(resource_type, {})}


def is_alias(resource_type: str, code: str) -> bool:
    """True when ``code``'s rows are not stored for ``resource_type``."""
    return code in aliases(resource_type) or code in restricted(resource_type)


def stored_as(code: str, resource_types: Iterable[str]) -> tuple[str, ...]:
    """The parameter codes whose index rows answer ``code`` for these types."""
    found: dict[str, None] = {}
    for rtype in resource_types:
        for name in aliases(rtype).get(code, (code,)):
            found[name] = None
    return tuple(found) or (code,)
