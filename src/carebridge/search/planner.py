"""Choose how a search runs: which criterion leads, and whether to walk an index in order.

The SQL generator can express a search in several equivalent shapes; which one is fast depends
on how many resources each criterion matches, which neither the query nor (for SQLite) the
database's statistics tell. So the planner asks: each candidate criterion is counted with a
bounded probe (``count(*)`` over at most ``cap`` index rows, an index range scan that stops
early), cheapest-looking first, and the probing stops as soon as one criterion is clearly
selective. Then:

* a criterion that matches fewer than ``cap`` rows *leads*: its distinct ids are the outer loop
  of the join, every other criterion is checked per row with a correlated ``EXISTS``, and the
  page is sorted from those few rows;
* when no criterion is that selective, the page comes from walking an index in the requested
  order (the resource table's key for the default order, the parameter's date index for
  ``_sort`` on a date) and checking every criterion per row, stopping at the page's end: the
  cost follows the page size divided by the criteria's combined selectivity, not the number
  of matches.

This is the access-path choice a cost-based optimizer makes (Selinger et al., 1979), reduced to
the two shapes FHIR search needs; it is written here because SQLite plans an ``IN (subquery)``
per criterion by building each list in full, and neither database can know that the rows of
one FHIR parameter are few for this value and many for another.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from carebridge.fhir import registry
from carebridge.search.aliases import aliases
from carebridge.search.compiler import Compiler
from carebridge.search.extract import split_union
from carebridge.search.fastpath import UnknownElementError, compile_path
from carebridge.search.query import Criterion

Run = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]

# Probing stops once a criterion matches fewer rows than this: leading with it costs a few
# milliseconds whatever the others would have said.
_SELECTIVE = 300
# Ranges: dates, numbers, quantities
_RANGE_TYPES = frozenset({"date", "number", "quantity"})
# Ranges are probed only while the best lead so far has at least this many rows.
_WORTH_A_RANGE_PROBE = 2_000
# Leading from a criterion costs one join probe per matching row plus a sort; walking an index
# costs a few probes per row walked. Up to this many matches, leading wins in practice.
DEFAULT_CAP = 10_000
# A count with no selective criterion probes again up to this many rows (services.search).
COUNT_CAP = 80_000
# A page sorted by a date, with no criterion naming one resource, first walks this many rows
# of the date index in order (services.search): common matches fill the page at once, and
# a walk that does not costs about what a probe does.
WALK_BUDGET = 1_000


@dataclass(frozen=True, slots=True)
class Lead:
    """The criteria that lead (indexes into the query's criteria: one, or several AND-ed
    ranges on one single-valued parameter, met by the same index row) and their probed
    count (``cap`` or more when nothing was selective: then nothing leads)."""

    covers: tuple[int, ...]
    rows: int

    @property
    def index(self) -> int | None:
        return self.covers[0] if self.covers else None


_CAST = re.compile(r"\.(as|ofType)\(\w+\)$")


@cache
def _cardinality(resource_type: str) -> dict[str, str]:
    elements = registry.structure_definition(resource_type)["snapshot"]["element"]
    return {e["path"]: str(e.get("max", "*")) for e in elements}


@cache
def single_valued(resource_type: str, code: str) -> bool:
    """Whether a parameter gives a resource at most one value: its expression's branches for
    the type all name one element path whose every step has ``max`` 1 (``Encounter.period``,
    ``Observation.effective``), so AND-ed ranges on it must hold for the same index row."""
    return _single_path(resource_type, code) is not None


# Element types whose one value is one index row (a CodeableConcept is a row per coding and
# one for its text, a HumanName or an Address a row per part).
_ONE_ROW_TYPES = frozenset({
    "boolean", "code", "string", "id", "uri", "url", "canonical", "oid", "uuid", "markdown",
    "integer", "positiveInt", "unsignedInt", "decimal", "date", "dateTime", "instant",
    "Period", "Reference", "Quantity", "Age", "Duration", "Money", "Count", "Distance",
    "SimpleQuantity", "Coding", "Identifier", "ContactPoint",
})


@cache
def one_row_each(resource_type: str, code: str) -> bool:
    """Whether a resource has at most one index row for a parameter: one element path of
    ``max`` 1 (:func:`single_valued`) whose type gives one value. A count driven by such a
    parameter need not make its ids distinct."""
    path = _single_path(resource_type, code)
    if path is None or code in aliases(resource_type):
        return False
    try:
        plan = compile_path(path, resource_type)
    except UnknownElementError:
        return False
    return (plan is not None and len(plan.leaves) == 1 and not plan.resolve_types
            and plan.leaves[0].element.type in _ONE_ROW_TYPES)


def _single_path(resource_type: str, code: str) -> str | None:
    definition = registry.search_parameters_for(resource_type).get(code)
    if definition is None or not definition.get("expression"):
        return None
    paths = set()
    for branch in split_union(definition["expression"]):
        branch = branch.strip()
        if branch.startswith("(") and branch.endswith(")"):
            branch = branch[1:-1].strip()
        branch = _CAST.sub("", branch)
        if branch.split(".", 1)[0] == resource_type:
            paths.add(branch)
    if len(paths) != 1:
        return None
    whole = paths.pop()
    steps = whole.split(".")
    if not all(re.fullmatch(r"[A-Za-z]+", step) for step in steps):
        return None
    maxima = _cardinality(resource_type)
    for n in range(2, len(steps) + 1):
        path = ".".join(steps[:n])
        found = maxima.get(path, maxima.get(path + "[x]"))
        if found != "1":
            return None
    return whole


def _ranges(types: tuple[str, ...], criteria: Sequence[Criterion]) -> list[tuple[int, ...]]:
    """Groups of two or more AND-ed one-value criteria on the same single-valued date
    parameter (``date=ge2018-01-01&date=lt2018-02-01``): one bounded range together."""
    if len(types) != 1:
        return []
    groups: dict[str, list[int]] = {}
    for n, c in enumerate(criteria):
        if (c.type == "date" and c.modifier is None and c.chain is None and c.has is None
                and len(c.values) == 1 and c.values[0].prefix != "ne"):
            groups.setdefault(c.code, []).append(n)
    return [tuple(ns) for code, ns in groups.items()
            if len(ns) > 1 and single_valued(types[0], code)]


def rank(criterion: Criterion) -> int:
    """How selective a criterion usually is, from its form alone (lower: more selective);
    orders the probes and breaks ties between equal counts."""
    if criterion.modifier in ("not", "not-in", "missing"):
        return 99  # never leads: it matches what lacks a value
    if criterion.code == "_id" and criterion.chain is None:
        return 0
    if (criterion.code == "identifier" and criterion.type == "token" and criterion.chain is None
            and criterion.modifier is None and criterion.values
            and all(v.system and v.code for v in criterion.values)):
        return 0  # system|value: a business key names one resource (no count probe needed)
    if criterion.type == "reference" and criterion.chain is None and criterion.has is None:
        return 1  # a reference to one resource: a patient's rows
    if criterion.code == "identifier" or criterion.modifier in ("identifier", "exact"):
        return 1
    if criterion.type == "token" and criterion.modifier is None and all(
            v.system for v in criterion.values):
        return 2
    if criterion.chain is not None or criterion.has is not None:
        return 3
    if criterion.type in ("string", "uri", "token", "composite"):
        return 4
    return 5  # dates, numbers, quantities: ranges


def _unitless(criterion: Criterion) -> bool:
    """A quantity criterion some of whose values have no unit (``value-quantity=gt100``)."""
    return criterion.type == "quantity" and criterion.chain is None and any(
        v.code is None for v in criterion.values)


def choose_lead(run: Run, mark: str, types: tuple[str, ...], criteria: Sequence[Criterion],
                cap: int | None = None) -> Lead:
    """Probe the candidate criteria (most promising first) and pick the one to lead with."""
    cap = DEFAULT_CAP if cap is None else cap
    candidates: list[tuple[int, tuple[int, ...]]] = [
        (rank(criteria[group[0]]) - 1, group) for group in _ranges(types, criteria)]
    candidates += [(rank(c), (n,)) for n, c in enumerate(criteria) if rank(c) < 99]
    candidates.sort()
    if candidates and candidates[0][0] == 0:
        group = candidates[0][1]
        return Lead(group, len(criteria[group[0]].values))

    def count(group: tuple[int, ...], limit: int) -> int:
        compiler = Compiler(mark)
        ids = compiler.ids(types, *(criteria[n] for n in group))
        return int(run(*compiler.finish(f"SELECT count(*) FROM ({ids} LIMIT {limit}) p"))[0][0])

    # First a cheap look (at most _SELECTIVE rows each) at the candidates that are not
    # ranges (a range's probe may filter many rows before it counts one: a wide date range
    # whose other end the index cannot bound, a quantity without a unit), in rank order: a
    # chain on a rare name behind a common code is found without counting the code's rows
    # to the cap.
    if len(candidates) > 1 and 0 < _SELECTIVE < cap:
        for _order, group in candidates:
            if criteria[group[0]].type in _RANGE_TYPES:
                continue
            found = count(group, _SELECTIVE)
            if found < _SELECTIVE:
                return Lead(group, found)
    best: Lead = Lead((), cap)
    for _order, group in candidates:
        if best.rows < _WORTH_A_RANGE_PROBE and criteria[group[0]].type in _RANGE_TYPES:
            # A range's probe may filter many index rows before it counts any (a wide date
            # range whose other end the index cannot bound, a quantity without a unit):
            # tens of milliseconds to perhaps save the few a lead of this size costs.
            continue
        if len(candidates) > 1 and _unitless(criteria[group[0]]):
            # No look-up index bounds a quantity without a unit (both start with a unit
            # before the value): its probe reads the parameter's rows one by one (glucose
            # > 100 among 400,000 quantities at 1M resources: ~20 ms per probe), and
            # another criterion leads or walks anyway.
            continue
        # Counting past the best so far cannot make this criterion the better lead: a
        # patient with thousands of rows would otherwise have each later probe count to
        # ``cap`` (10,000 index rows, tens of milliseconds on a large database).
        found = count(group, best.rows)
        if found < best.rows:
            best = Lead(group, found)
        if found < _SELECTIVE:
            break
    return best
