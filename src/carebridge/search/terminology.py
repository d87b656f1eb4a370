"""Code sets for the token modifiers ``:in``, ``:not-in``, ``:above`` and ``:below``, from the
ValueSets and CodeSystems vendored with the R4 definitions (no terminology server)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

from carebridge.fhir import registry
from carebridge.fhir.errors import BadRequest, NotImplementedYet


def _concepts(concepts: list[dict[str, Any]], ancestors: tuple[str, ...] = ()
              ) -> Iterator[tuple[str, tuple[str, ...]]]:
    for concept in concepts:
        code = concept.get("code")
        if isinstance(code, str):
            yield code, ancestors
            yield from _concepts(concept.get("concept") or [], (*ancestors, code))


@cache
def _hierarchy(system: str) -> dict[str, tuple[str, ...]]:
    """code -> its ancestors, for a vendored CodeSystem."""
    try:
        found = registry.code_system(system)
    except KeyError:
        return {}
    return dict(_concepts(found.get("concept") or []))


@cache
def expand(url: str) -> frozenset[tuple[str, str]]:
    """The (system, code) pairs of a vendored ValueSet (compose.include, concept lists or
    whole code systems, nested value sets); raise if it cannot be expanded here."""
    try:
        value_set = registry.value_set(url)
    except KeyError:
        raise BadRequest(f"Unknown value set {url!r}: only the FHIR R4 value sets are "
                         "available for :in/:not-in") from None
    codes: set[tuple[str, str]] = set()
    compose = value_set.get("compose") or {}
    for include in compose.get("include") or []:
        codes |= _include(include, url)
    for exclude in compose.get("exclude") or []:
        codes -= _include(exclude, url)
    for item in (value_set.get("expansion") or {}).get("contains") or []:
        if item.get("system") and item.get("code"):
            codes.add((item["system"], item["code"]))
    return frozenset(codes)


def _include(include: dict[str, Any], url: str) -> set[tuple[str, str]]:
    system = include.get("system")
    found: set[tuple[str, str]] = set()
    if include.get("filter"):
        raise NotImplementedYet(f"Value set {url!r} uses filters, which :in cannot expand yet")
    if system and include.get("concept"):
        found |= {(system, c["code"]) for c in include["concept"] if c.get("code")}
    elif system:
        codes = _hierarchy(system)
        if not codes:
            raise NotImplementedYet(f"Value set {url!r} includes all of {system!r}, which is "
                                    "not available here")
        found |= {(system, code) for code in codes}
    for nested in include.get("valueSet") or []:
        found |= set(expand(nested))
    return found


def below(system: str | None, code: str) -> set[str]:
    """``code`` and its descendants (subsumption within a vendored CodeSystem)."""
    if system is None:
        return {code}
    hierarchy = _hierarchy(system)
    return {code} | {c for c, parents in hierarchy.items() if code in parents}


def above(system: str | None, code: str) -> set[str]:
    """``code`` and its ancestors."""
    if system is None:
        return {code}
    return {code, *_hierarchy(system).get(code, ())}
