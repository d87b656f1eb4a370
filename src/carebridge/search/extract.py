"""Compile SearchParameters into extractors: resource -> index values ("extract once").

An R4 expression is a union over resource types (``Patient.name | Practitioner.name``).  For
each type a parameter applies to we keep the branches that start with that type (or with
``Resource``/``DomainResource``), and compile each once: as a typed path walked on the JSON
dicts when it is one (:mod:`carebridge.search.fastpath`, all but a handful of R4 branches),
otherwise with fhirpathpy.  Composite parameters evaluate their base expression, then each
component's expression on every item found (search.html#composite).

The same values feed the SQL index tables and in-memory matching (subscriptions, alert
rules), so both agree on what a resource "has" for a parameter.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import cache
from typing import Any

from carebridge.fhir import registry
from carebridge.search.aliases import aliases, restricted
from carebridge.search.branches import (
    Branch,
    Component,
    CompositeBranch,
    ExistsNotFalseBranch,
    FhirPathBranch,
    PathBranch,
)
from carebridge.search.elements import Child, ancestry
from carebridge.search.fastpath import Step, UnknownElementError, compile_path
from carebridge.search.values import IndexValue

__all__ = [
    "Extractor",
    "compile_all",
    "compile_parameter",
    "extract",
    "extract_stored",
    "extractor_for",
    "extractors_for",
    "split_union",
    "values_of",
]

_log = logging.getLogger(__name__)
_ABSTRACT_ROOTS = ("Resource", "DomainResource")


class Extractor:
    """Extracts the index values of one SearchParameter from resources.

    ``supported`` is False for parameters that yield nothing: ``near`` (a distance search;
    the API answers 501) and those without an expression (``_text``, ``_content``,
    ``_query``).  ``problems`` lists branches that could not be compiled (none in R4).
    """

    __slots__ = (
        "_branches",
        "_needs",
        "code",
        "expression",
        "param_url",
        "problems",
        "supported",
        "type",
    )

    def __init__(
        self,
        sp: dict[str, Any],
        branches: dict[str, tuple[Branch, ...]],
        problems: tuple[str, ...],
    ) -> None:
        self.code: str = sp["code"]
        self.type: str = sp["type"]
        self.param_url: str = sp["url"]
        self.expression: str | None = sp.get("expression")
        self.supported = self.expression is not None and sp["code"] != "near"
        self.problems = problems
        self._branches = branches
        self._needs = {t: _needs(bs) for t, bs in branches.items()}

    def __repr__(self) -> str:
        return f"<Extractor {self.code} ({self.type}) for {', '.join(self._branches)}>"

    @property
    def uses_fhirpath(self) -> bool:
        """True if some branch needs fhirpathpy (not the fast path)."""
        return any(b.uses_fhirpath for bs in self._branches.values() for b in bs)

    def extract(self, resource: dict[str, Any]) -> list[IndexValue]:
        """The parameter's values in ``resource``, without duplicates, in document order."""
        resource_type = resource.get("resourceType", "")
        branches = self._branches.get(resource_type)
        if branches is None:
            resource_type = self._inherited(str(resource_type))
            branches = self._branches.get(resource_type, ())
        return _evaluate(resource, self._needs.get(resource_type), branches)

    def _inherited(self, resource_type: str) -> str:
        for base in ancestry(resource_type)[1:]:
            if base in self._branches:
                return base
        return ""


def _evaluate(
    resource: dict[str, Any], needs: frozenset[str] | None, branches: tuple[Branch, ...]
) -> list[IndexValue]:
    if needs is not None and resource.keys().isdisjoint(needs):
        return []  # none of the elements the branches start from: skip the walk
    out: list[IndexValue] = []
    for branch in branches:
        branch.evaluate(resource, resource, out)
    return list(dict.fromkeys(out)) if len(out) > 1 else out


def _needs(branches: tuple[Branch, ...]) -> frozenset[str] | None:
    keys: set[str] = set()
    for branch in branches:
        needs = branch.needs()
        if needs is None:
            return None
        keys |= needs
    return frozenset(keys)


# --------------------------------------------------------------------------------------------
# compiling


def split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression on its top-level ``|`` (not inside parentheses/strings)."""
    branches: list[str] = []
    depth, quoted, start = 0, False, 0
    for position, char in enumerate(expression):
        if char == "'":
            quoted = not quoted
        elif quoted:
            continue
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            branches.append(expression[start:position].strip())
            start = position + 1
    branches.append(expression[start:].strip())
    return [b for b in branches if b]


def _applies(branch: str, resource_type: str) -> bool:
    head = branch.lstrip("(").split(".", 1)[0].split(" ", 1)[0]
    if not head[:1].isupper():
        return True  # relative, or %resource
    return head == resource_type or head in _ABSTRACT_ROOTS


@cache
def _parameters_by_url() -> dict[str, dict[str, Any]]:
    return {sp["url"]: sp for sp in registry.search_parameters()}


def _compile_branch(
    branch: str, param_type: str, resource_type: str, focus: Child | None, problems: list[str]
) -> Branch | None:
    try:
        plan = compile_path(branch, resource_type, focus)
    except UnknownElementError as exc:
        problems.append(f"{resource_type}: {branch!r}: {exc}")
        return None
    if plan is not None:
        return PathBranch(plan, param_type)
    try:
        general = FhirPathBranch(branch, param_type)
    except Exception as exc:  # fhirpathpy raises its own parser errors
        problems.append(f"{resource_type}: {branch!r}: fhirpathpy cannot compile it: {exc}")
        return None
    return _exists_not_false(branch, resource_type, general) or general


_EXISTS_NOT_FALSE = re.compile(r"(\w+)\.(\w+)\.exists\(\) and \1\.\2 != false")


def _exists_not_false(branch: str, resource_type: str,
                      general: FhirPathBranch) -> ExistsNotFalseBranch | None:
    """The plain reading of ``X.e.exists() and X.e != false`` on the resource's own
    keys, when ``e`` is a plain element of the resource (search.branches)."""
    match = _EXISTS_NOT_FALSE.fullmatch(branch)
    if match is None or match.group(1) != resource_type:
        return None
    try:
        plan = compile_path(f"{resource_type}.{match.group(2)}", resource_type)
    except UnknownElementError:
        return None
    if plan is None or not plan.from_root or plan.resolve_types or any(
            len(leaf.steps) != 1 for leaf in plan.leaves):
        return None
    return ExistsNotFalseBranch(tuple(leaf.steps[0].key for leaf in plan.leaves), general)


def _compile_composite(
    sp: dict[str, Any], branch: str, resource_type: str, problems: list[str]
) -> Branch | None:
    try:
        base = compile_path(branch, resource_type)
    except UnknownElementError as exc:
        problems.append(f"{resource_type}: {branch!r}: {exc}")
        return None
    if base is None or base.resolve_types:
        problems.append(f"{resource_type}: composite base {branch!r} is not a plain path")
        return None
    items = []
    for leaf in base.leaves:
        components: list[Component] = []
        for component in sp.get("component", ()):
            definition = _parameters_by_url().get(component["definition"])
            if definition is None:
                problems.append(f"unknown component {component['definition']}")
                return None
            compiled = []
            for part in split_union(component["expression"]):
                one = _compile_branch(
                    part, definition["type"], resource_type, leaf.element, problems
                )
                if one is not None:
                    compiled.append(one)
            components.append((definition["code"], tuple(compiled)))
        items.append((leaf.steps, tuple(components)))
    return CompositeBranch(tuple(items))


def _compile_for(sp: dict[str, Any], resource_type: str, problems: list[str]) -> tuple[Branch, ...]:
    expression = sp.get("expression")
    if not expression or sp["code"] == "near":
        return ()
    compiled: list[Branch] = []
    for branch in split_union(expression):
        if not _applies(branch, resource_type):
            continue
        if sp["type"] == "composite":
            one = _compile_composite(sp, branch, resource_type, problems)
        else:
            one = _compile_branch(branch, sp["type"], resource_type, None, problems)
        if one is not None:
            compiled.append(one)
    return tuple(compiled)


def compile_parameter(sp: dict[str, Any], resource_type: str | None = None) -> Extractor:
    """Compile a SearchParameter for ``resource_type``, or for each of its ``base`` types.

    An Extractor compiled for an abstract base (``Resource``: ``_id``, ``_tag``, ...) serves
    every resource type derived from it.
    """
    problems: list[str] = []
    bases = [resource_type] if resource_type else list(sp.get("base", ()))
    branches = {base: _compile_for(sp, base, problems) for base in bases}
    for problem in problems:
        _log.warning("SearchParameter %s: %s", sp["url"], problem)
    return Extractor(sp, branches, tuple(problems))


@cache
def _extractors_for(resource_type: str) -> dict[str, Extractor]:
    parameters = registry.search_parameters_for(resource_type)
    return {code: compile_parameter(parameters[code], resource_type) for code in sorted(parameters)}


@cache
def _plan_for(
    resource_type: str,
) -> tuple[tuple[str, frozenset[str] | None, tuple[Branch, ...]], ...]:
    """What :func:`extract` runs for a type: (code, needs, branches) per supported parameter."""
    return tuple(
        (e.code, e._needs[resource_type], e._branches[resource_type])
        for e in _extractors_for(resource_type).values()
        if e.supported
    )


def extractors_for(resource_type: str) -> list[Extractor]:
    """The extractors of every SearchParameter of a resource type, by code (compiled once).

    Raises :class:`KeyError` for an unknown resource type.
    """
    return list(_extractors_for(resource_type).values())


def extractor_for(resource_type: str, code: str) -> Extractor:
    """The extractor of one search parameter; :class:`KeyError` if there is none."""
    try:
        return _extractors_for(resource_type)[code]
    except KeyError:
        raise KeyError(f"no SearchParameter {code!r} for {resource_type}") from None


@cache
def _stored_plan(
    resource_type: str,
) -> tuple[tuple[str, frozenset[str] | None, tuple[Branch, ...]], ...]:
    """:func:`_plan_for` less what the index does not store (``_id``; search.aliases)."""
    skipped = {"_id", *aliases(resource_type), *restricted(resource_type)}
    return tuple(entry for entry in _plan_for(resource_type) if entry[0] not in skipped)


def compile_all() -> None:
    """Compile the stored parameters of every resource type now rather than on each type's
    first write. A server does this in the background as it starts (:func:`carebridge.
    search.index.warm_up`): compiling costs ~0.3 s for the 146 types, which an ingest of
    25,000 Synthea resources into a fresh server paid on its first bundles (~15 us per
    resource of that run)."""
    for resource_type in sorted(registry.resource_types()):
        _stored_plan(resource_type)


@cache
def stored_codes(resource_type: str) -> frozenset[str]:
    """The parameters of ``resource_type`` the search index stores rows for."""
    return frozenset(entry[0] for entry in _stored_plan(resource_type))


# Resource type -> its top-level keys (in order) -> a function extracting the stored
# parameters whose branches can find something with those keys. Resources from one source (a
# mapper, an app) come with the same few key sets, so choosing the parameters costs one
# look-up instead of a set test per parameter (an Observation has 30 stored parameters; most
# find nothing), and the function is generated for that choice (:func:`_generate`).
_Extract = Callable[[dict[str, Any]], dict[str, list[IndexValue]]]
_RUNS: dict[str, dict[tuple[str, ...], _Extract]] = {}
_RUNS_PER_TYPE = 256  # key sets remembered per type (then forgotten all at once)


def _runs(resource_type: str, keys: tuple[str, ...],
          ) -> tuple[tuple[str, tuple[Branch, ...]], ...]:
    present = frozenset(keys)
    return tuple((code, branches) for code, needs, branches in _stored_plan(resource_type)
                 if needs is None or not present.isdisjoint(needs))


def _generate(runs: tuple[tuple[str, tuple[Branch, ...]], ...],
              ) -> _Extract:
    """One Python function for a list of parameters to extract: every fast-path leaf written
    out as nested loops over its steps (a key looked up, a list or one node, a where-filter,
    the converter at the end), other branches called as objects.

    It does what evaluating the branches one by one does (:func:`_evaluate`, which
    tests/search/test_extract.py compares it with, and :func:`carebridge.search.fastpath.
    follow`), without the Python calls that interpreting them took (a method call per
    branch and parameter, a loop over each branch's leaves, a list per step and per
    parameter): every write extracts, so this is on the ingest path (``index_rows`` of a
    Synthea resource 28.3 -> 23.5 us). Generated source run by ``exec``, because no library
    compiles FHIRPath to Python; it holds only names bound here and ``repr`` of JSON keys
    and literals from the R4 definitions."""
    env: dict[str, Any] = {}
    lines = ["def extract(resource):", "    out = {}"]

    def bind(value: Any) -> str:
        name = f"_{len(env)}"
        env[name] = value
        return name

    def walk(value: str, steps: tuple[Step, ...], convert: str, depth: int) -> None:
        """Lines for the nodes in ``value`` (not None: a node or a list) and the rest."""
        pad = "    " * depth
        node = f"n{depth}"
        step = steps[0]
        lines.append(f"{pad}for {node} in ({value} if type({value}) is list else ({value},)):")
        if step.where is not None:
            field, literal = step.where
            lines.append(f"{pad}    if type({node}) is not dict or {node}.get({field!r})"
                         f" != {literal!r}:")
            lines.append(f"{pad}        continue")
        else:
            lines.append(f"{pad}    if {node} is None:")
            lines.append(f"{pad}        continue")
        if len(steps) == 1:
            lines.append(f"{pad}    vals.extend({convert}({node}))")
            return
        following = f"v{depth + 1}"
        lines.append(f"{pad}    if type({node}) is dict:")
        lines.append(f"{pad}        {following} = {node}.get({steps[1].key!r})")
        lines.append(f"{pad}        if {following} is not None:")
        walk(following, steps[1:], convert, depth + 3)

    for code, branches in runs:
        lines.append("    vals = []")
        for branch in branches:
            if type(branch) is not PathBranch or branch.resolve_types or any(
                    key is None for key, _, _, _ in branch.leaves):
                lines.append(f"    {bind(branch)}.evaluate(resource, resource, vals)")
                continue
            for key, where, rest, convert in branch.leaves:
                assert key is not None
                lines.append(f"    v1 = resource.get({key!r})")
                lines.append("    if v1 is not None:")
                walk("v1", (Step(key, where), *rest), bind(convert), 2)
        lines += ["    if vals:",
                  f"        out[{code!r}] = list(dict.fromkeys(vals)) if len(vals) > 1 else vals"]
    lines.append("    return out")
    exec("\n".join(lines), env)
    function: _Extract = env["extract"]
    return function


def extract_stored(resource: dict[str, Any]) -> dict[str, list[IndexValue]]:
    """Code -> values of the parameters the search index stores rows for (those with
    values only): what :mod:`carebridge.search.index` writes."""
    resource_type = resource["resourceType"]
    known = _RUNS.get(resource_type)
    if known is None:
        known = _RUNS.setdefault(resource_type, {})
    keys = tuple(resource)
    function = known.get(keys)
    if function is None:
        if len(known) >= _RUNS_PER_TYPE:
            known.clear()
        function = known[keys] = _generate(_runs(resource_type, keys))
    return function(resource)


def extract(resource: dict[str, Any]) -> dict[str, list[IndexValue]]:
    """Code -> index values, for every supported SearchParameter of the resource's type.

    A parameter the resource has no value for maps to ``[]`` (what ``:missing`` looks at).
    """
    plan = _plan_for(resource["resourceType"])
    return {code: _evaluate(resource, needs, branches) for code, needs, branches in plan}


def values_of(resource: dict[str, Any], code: str) -> list[IndexValue]:
    """One parameter's values in a resource (for matching, and tests)."""
    return extractor_for(resource["resourceType"], code).extract(resource)
