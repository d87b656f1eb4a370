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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from carebridge.search.compiler import Compiler
from carebridge.search.query import Criterion

Run = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]

# Probing stops once a criterion matches fewer rows than this: leading with it costs a few
# milliseconds whatever the others would have said.
_SELECTIVE = 300
# Leading from a criterion costs one join probe per matching row plus a sort; walking an index
# costs a few probes per row walked. Up to this many matches, leading wins in practice.
DEFAULT_CAP = 4000


@dataclass(frozen=True, slots=True)
class Lead:
    """The criterion that leads (index into the query's criteria) and its probed count
    (``cap`` or more when no criterion was selective: then nothing leads)."""

    index: int | None
    rows: int


def rank(criterion: Criterion) -> int:
    """How selective a criterion usually is, from its form alone (lower: more selective);
    orders the probes and breaks ties between equal counts."""
    if criterion.modifier in ("not", "not-in", "missing"):
        return 99  # never leads: it matches what lacks a value
    if criterion.code == "_id" and criterion.chain is None:
        return 0
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


def choose_lead(run: Run, mark: str, types: tuple[str, ...], criteria: Sequence[Criterion],
                cap: int | None = None) -> Lead:
    """Probe the candidate criteria (most promising first) and pick the one to lead with."""
    cap = DEFAULT_CAP if cap is None else cap
    candidates = sorted((rank(c), n) for n, c in enumerate(criteria) if rank(c) < 99)
    best: Lead = Lead(None, cap)
    for order, n in candidates:
        if order == 0:
            return Lead(n, len(criteria[n].values))
        compiler = Compiler(mark)
        probe = f"SELECT count(*) FROM ({compiler.ids(types, criteria[n])} LIMIT {cap}) p"
        found = int(run(*compiler.finish(probe))[0][0])
        if found < best.rows:
            best = Lead(n, found)
        if found < _SELECTIVE:
            break
    return best
