"""The compiled forms of one expression branch: how each evaluates against a resource.

``PathBranch`` walks typed JSON keys (the fast path), ``FhirPathBranch`` runs fhirpathpy,
``CompositeBranch`` evaluates a composite parameter's components on each base item.  All
append index values to an output list; ``needs`` tells which top-level keys a resource must
have for the branch to find anything, so absent parameters cost one set test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from typing import Any, Protocol

from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models as fhirpath_models

from carebridge.search.convert import Converter, convert_untyped, converter
from carebridge.search.fastpath import PathPlan, Step, follow, walk, where_equal
from carebridge.search.values import CompositeValue, IndexValue, ReferenceValue

__all__ = ["Branch", "Component", "CompositeBranch", "ExistsNotFalseBranch", "FhirPathBranch",
           "PathBranch"]

_log = logging.getLogger(__name__)


class Branch(Protocol):
    uses_fhirpath: bool

    def needs(self) -> frozenset[str] | None:
        """Top-level keys of which the resource must have one to yield anything (None: ?)."""

    def evaluate(self, focus: Any, resource: dict[str, Any], out: list[IndexValue]) -> None: ...


class PathBranch:
    """A fast-path branch: walk typed JSON keys, convert each element by its FHIR type."""

    __slots__ = ("from_root", "leaves", "resolve_types")
    uses_fhirpath = False

    def __init__(self, plan: PathPlan, param_type: str) -> None:
        self.from_root = plan.from_root
        self.resolve_types = plan.resolve_types
        leaves: list[_Leaf] = []
        for leaf in plan.leaves:  # an element the parameter type cannot read is skipped
            convert = converter(param_type, leaf.element.type, leaf.element.implicit_system)
            if convert is not None:
                steps = leaf.steps
                first = steps[0] if steps else None
                leaves.append((first.key if first else None, first.where if first else None,
                               steps[1:], convert))
        self.leaves = tuple(leaves)

    def needs(self) -> frozenset[str] | None:
        return self.first_keys() if self.from_root else None

    def first_keys(self) -> frozenset[str] | None:
        """The first key of each path (None if a path is empty: the start node itself)."""
        if any(key is None for key, _, _, _ in self.leaves):
            return None
        return frozenset(key for key, _, _, _ in self.leaves if key is not None)

    def evaluate(self, focus: Any, resource: dict[str, Any], out: list[IndexValue]) -> None:
        start = resource if self.from_root else focus
        found: list[IndexValue] = [] if self.resolve_types else out
        # The first step is taken here (most paths find nothing there: a choice element's
        # other types, an optional element), the rest by fastpath.follow. It repeats a few
        # lines of follow on purpose: calling follow for every leaf instead cost +7.5 % of
        # index_rows' instructions (valgrind, stop 16).
        for key, where, rest, convert in self.leaves:
            if key is None:
                nodes = [start]
            else:
                if type(start) is not dict:
                    continue
                value = start.get(key)
                if value is None:
                    continue
                if type(value) is list:
                    nodes = value if None not in value else [v for v in value if v is not None]
                else:
                    nodes = [value]
                if where is not None:
                    nodes = where_equal(nodes, where)
                if rest and nodes:
                    nodes = follow(nodes, rest)
            for node in nodes:
                found.extend(convert(node))
        if self.resolve_types:  # `.where(resolve() is Patient)`: the type of the target
            out.extend(_resolving_to(found, self.resolve_types))


def _resolving_to(values: list[IndexValue], types: frozenset[str]) -> list[IndexValue]:
    # (a comprehension in evaluate would cost it a closure cell on every call, 3.11)
    return [v for v in values if type(v) is ReferenceValue and v.target_type in types]


# One path of a PathBranch: its first key and that step's where-filter (None for the start
# node itself), the steps after it, and the converter of the element reached.
_Leaf = tuple[str | None, tuple[str, str] | None, tuple[Step, ...], Converter]


class FhirPathBranch:
    """A branch the fast path cannot take, evaluated by fhirpathpy (compiled once)."""

    __slots__ = ("expression", "function", "param_type")
    uses_fhirpath = True

    def __init__(self, expression: str, param_type: str) -> None:
        self.expression = expression
        self.param_type = param_type
        self.function: Callable[..., list[Any]] = _fhirpath(expression)

    def needs(self) -> frozenset[str] | None:
        return None

    def evaluate(self, focus: Any, resource: dict[str, Any], out: list[IndexValue]) -> None:
        try:
            results = self.function(focus, {"resource": resource, "rootResource": resource})
        except Exception:  # an engine bug must not fail a write; the value is just not indexed
            _log.warning("FHIRPath failed: %s", self.expression, exc_info=True)
            return
        for value in results:
            out.extend(convert_untyped(self.param_type, value))


class ExistsNotFalseBranch:
    """``X.e.exists() and X.e != false`` (R4's Patient ``deceased``, on every Patient write),
    evaluated on the JSON keys of ``e`` instead of by fhirpathpy, which took a third of a
    Patient's extraction. Anything the plain reading cannot settle exactly (a focus other
    than the resource, several values, a primitive's ``_e`` extension part) goes to
    fhirpathpy; tests/search/test_extract.py checks both agree."""

    __slots__ = ("fallback", "keys", "param_type")
    uses_fhirpath = False

    def __init__(self, keys: tuple[str, ...], fallback: FhirPathBranch) -> None:
        self.keys = keys  # the element's JSON keys (deceasedBoolean, deceasedDateTime)
        self.fallback = fallback
        self.param_type = fallback.param_type

    def needs(self) -> frozenset[str] | None:
        return None  # absent, it is false: every resource has a value

    def evaluate(self, focus: Any, resource: dict[str, Any], out: list[IndexValue]) -> None:
        values = [resource[key] for key in self.keys if key in resource]
        if (focus is not resource or len(values) > 1
                or any("_" + key in resource for key in self.keys)
                or any(isinstance(v, list | dict) for v in values)):
            self.fallback.evaluate(focus, resource, out)
            return
        out.extend(convert_untyped(self.param_type, bool(values) and values[0] is not False))


class CompositeBranch:
    """Base items, then per item each component's values (all must be present)."""

    __slots__ = ("items",)
    uses_fhirpath = False

    def __init__(self, items: tuple[tuple[tuple[Step, ...], tuple[Component, ...]], ...]):
        self.items = items

    def needs(self) -> frozenset[str] | None:
        keys: set[str] = set()
        for steps, components in self.items:
            if steps:
                keys.add(steps[0].key)
                continue
            # The base is the resource itself: its last component (the value, in R4) must
            # be there, and all its paths start at the resource.
            last = [
                b.first_keys() if isinstance(b, PathBranch) else None for b in components[-1][1]
            ]
            if not last or any(k is None for k in last):
                return None
            keys.update(*(k for k in last if k is not None))
        return frozenset(keys)

    def evaluate(self, focus: Any, resource: dict[str, Any], out: list[IndexValue]) -> None:
        for steps, components in self.items:
            for item in walk(resource, steps):
                # Last component first: in R4 it is the value, the one most often absent.
                parts: list[tuple[str, tuple[IndexValue, ...]]] = []
                for code, branches in reversed(components):
                    values: list[IndexValue] = []
                    for branch in branches:
                        branch.evaluate(item, resource, values)
                    if not values:
                        break
                    parts.append((code, tuple(dict.fromkeys(values))))
                else:
                    parts.reverse()
                    out.append(CompositeValue(tuple(parts)))


Component = tuple[str, tuple[Branch, ...]]


@cache
def _fhirpath(expression: str) -> Callable[..., list[Any]]:
    function: Callable[..., list[Any]] = fhirpath_compile(expression, fhirpath_models["r4"])
    return function
