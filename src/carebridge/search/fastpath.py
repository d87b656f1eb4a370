"""The fast path: SearchParameter expressions that are typed paths, walked on plain dicts.

Nearly every R4 expression branch is a path with a few well-known decorations::

    Patient.name.family
    (Observation.value as Quantity)            Observation.value.as(Quantity)
    (Observation.value as CodeableConcept).text
    Observation.subject.where(resolve() is Patient)
    Patient.telecom.where(system='email')
    %resource.referenceSeq.chromosome          (in composite components)

:func:`compile_path` turns such a branch into a :class:`PathPlan` - the JSON keys to follow,
each final element with its FHIR type (from the StructureDefinitions, so ``value[x]`` as
Quantity is the key ``valueQuantity``) - or returns None when the branch needs a FHIRPath
engine.  :meth:`PathPlan.walk` then costs a few dict lookups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from carebridge.search.elements import Child, children

__all__ = ["Leaf", "PathPlan", "Step", "UnknownElementError", "compile_path", "follow", "walk",
           "where_equal"]

_SEGMENT = re.compile(
    r"(?:as|ofType)\((?P<cast>[A-Za-z]+)\)"
    r"|where\(resolve\(\)\s+is\s+(?P<resolve>[A-Za-z]+)\)"
    r"|where\((?P<field>[a-z][A-Za-z]*)\s*=\s*'(?P<literal>[^'\\]*)'\)"
    r"|(?P<name>%?[A-Za-z][A-Za-z0-9]*)"
)
_PAREN_CAST = re.compile(r"\((?P<path>[^()]+) as (?P<cast>[A-Za-z]+)\)(?:\.(?P<rest>.+))?")
_ROOTS = frozenset({"Resource", "DomainResource"})


class UnknownElementError(LookupError):
    """A path names an element (or a cast a type) the R4 model does not have there."""


@dataclass(frozen=True, slots=True)
class Step:
    key: str
    where: tuple[str, str] | None = None  # keep dict items whose field equals the literal


@dataclass(frozen=True, slots=True)
class Leaf:
    """A final element: the steps from the start node to it, and its type."""

    steps: tuple[Step, ...]
    element: Child


@dataclass(frozen=True, slots=True)
class PathPlan:
    leaves: tuple[Leaf, ...]
    from_root: bool  # starts at the resource (a type name or %resource), not the focus
    resolve_types: frozenset[str]  # `.where(resolve() is T)`: keep references to these


def walk(start: Any, steps: tuple[Step, ...]) -> list[Any]:
    """The values reached from ``start`` by following ``steps`` (lists flattened)."""
    return follow([start], steps)


def follow(current: list[Any], steps: tuple[Step, ...]) -> list[Any]:
    """:func:`walk` from several nodes at once."""
    for step in steps:
        found: list[Any] = []
        key = step.key
        for item in current:
            if type(item) is not dict:
                continue
            value = item.get(key)
            if value is None:
                continue
            if type(value) is list:
                found.extend(value if None not in value else [v for v in value if v is not None])
            else:
                found.append(value)
        if step.where is not None:
            found = where_equal(found, step.where)
        if not found:
            return found
        current = found
    return current


def where_equal(nodes: list[Any], where: tuple[str, str]) -> list[Any]:
    """The dict nodes whose ``field`` equals the literal (``.where(field='literal')``); a
    function of its own so that its callers, on every extraction, need no closure cell."""
    field, literal = where
    return [v for v in nodes if type(v) is dict and v.get(field) == literal]


def _same_type(fhir_type: str, cast: str) -> bool:
    # FHIRPath type names: `as(DateTime)` is written for FHIR `dateTime` in R4 expressions.
    return fhir_type == cast or fhir_type[:1].upper() + fhir_type[1:] == cast[:1].upper() + cast[1:]


def _segments(path: str) -> list[re.Match[str]] | None:
    found: list[re.Match[str]] = []
    position = 0
    while position < len(path):
        match = _SEGMENT.match(path, position)
        if match is None:
            return None
        found.append(match)
        position = match.end()
        if position < len(path):
            if path[position] != ".":
                return None
            position += 1
            if position == len(path):
                return None
    return found


def compile_path(branch: str, resource_type: str, focus: Child | None = None) -> PathPlan | None:
    """Compile one branch (no top-level ``|``) for the fast path, or None if it can't be.

    A branch starting with ``resource_type``, ``Resource``, ``DomainResource`` or
    ``%resource`` starts at the resource; any other starts at ``focus`` (an item of a
    composite's base expression), or at the resource if there is no focus.  Raises
    :class:`UnknownElementError` if a name is not an element of the R4 model there.
    """
    branch = branch.strip()
    cast_match = _PAREN_CAST.fullmatch(branch)
    if cast_match:
        rest = cast_match["rest"]
        branch = f"{cast_match['path']}.as({cast_match['cast']})" + (f".{rest}" if rest else "")
    segments = _segments(branch)
    if not segments:
        return None
    first = segments[0]["name"]
    from_root = first is not None and (first in _ROOTS or first in {resource_type, "%resource"})
    if from_root:
        segments = segments[1:]
    root = Child("", resource_type, (resource_type, resource_type))
    routes = [Leaf((), root if from_root or focus is None else focus)]
    resolve_types: set[str] = set()
    for position, segment in enumerate(segments):
        if resolve_types:
            return None  # resolve() filters only at the end
        if segment["name"] is not None:
            name = segment["name"]
            routes = [
                Leaf((*route.steps, Step(child.key)), child)
                for route in routes
                for child in children(route.element.context, name)
            ]
        elif segment["cast"] is not None:
            routes = [r for r in routes if _same_type(r.element.type, segment["cast"])]
        elif segment["resolve"] is not None:
            resolve_types.add(segment["resolve"])
        else:
            if position == 0 or any(not r.steps or r.steps[-1].where for r in routes):
                return None
            where = (segment["field"], segment["literal"])
            routes = [
                Leaf((*r.steps[:-1], Step(r.steps[-1].key, where)), r.element) for r in routes
            ]
        if not routes:
            raise UnknownElementError(f"no element {segment[0]!r} there in R4")
    return PathPlan(tuple(routes), from_root, frozenset(resolve_types))
