"""Parameter numbers: the integer that names a (resource type, search parameter) pair in
every index row (``pid``), instead of two text columns.

Index rows are keyed by integers (migrations sqlite 0011, postgresql 0012): the resource's
number (``rid``, from the ``resource`` table) and this one. A key of two small integers
compares in a few instructions and packs ~4 times as many entries into a B-tree page as
``('Observation', 'code', ...)`` did, which halved what writing the rows costs
(``bench/index_layout.py``; docs/search.md, "Index layout").

The numbers are not stored state but a function of the official R4 package: every pair of a
concrete resource type and a parameter that applies to it (``registry.search_parameters_for``,
``_id`` and the other Resource-level ones included), sorted by code and then type, numbered
from 1. The package does not change, so neither do the numbers; sorting by code first keeps
the pairs of one code together (all ``_lastUpdated`` pairs are one range, which
PostgreSQL's partial GiST index on dates excludes). The migration that introduced them
writes the same table into the database (``search_param``) for hand-written SQL and tools;
``tests/search/test_params.py`` checks the two agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from carebridge.fhir import registry


@cache
def numbering() -> dict[tuple[str, str], int]:
    """(resource type, code) -> pid, for every pair the R4 package defines."""
    pairs = sorted(
        ((code, rtype) for rtype in registry.resource_types()
         for code in registry.search_parameters_for(rtype)),
    )
    return {(rtype, code): n for n, (code, rtype) in enumerate(pairs, start=1)}


@cache
def pids_of(resource_type: str) -> dict[str, int]:
    """code -> pid for one resource type (the write path's look-up)."""
    return {code: pid for (rtype, code), pid in numbering().items() if rtype == resource_type}


def pid(resource_type: str, code: str) -> int:
    """The number of ``code`` on ``resource_type``; KeyError when it does not apply."""
    return numbering()[(resource_type, code)]


@cache
def types_of(code: str) -> tuple[str, ...]:
    """Every resource type ``code`` applies to, sorted."""
    return tuple(sorted(t for t, c in numbering() if c == code))


def pids(code: str, resource_types: Iterable[str]) -> list[int]:
    """The numbers of ``code`` on those of ``resource_types`` it applies to (in order);
    every type that has it when ``resource_types`` is empty."""
    types = tuple(resource_types) or types_of(code)
    return [n for n in (numbering().get((t, code)) for t in types) if n is not None]


@cache
def code_range(code: str) -> tuple[int, int]:
    """The lowest and highest pid of ``code`` (contiguous: see the module doc)."""
    found = pids(code, ())
    return found[0], found[-1]


def migration_sql() -> str:
    """The ``search_param`` rows as one INSERT (tools/write_index_migrations.py)."""
    rows = ",\n".join(f"({n}, '{rtype}', '{code}')"
                      for (rtype, code), n in sorted(numbering().items(), key=lambda p: p[1]))
    return f"INSERT INTO search_param (pid, resource_type, code) VALUES\n{rows};\n"
