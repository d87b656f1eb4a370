"""ValueSet membership for bindings, from the ValueSets and CodeSystems vendored with the
definitions (http://hl7.org/fhir/R4/valueset.html#compositions).

A ValueSet is expanded once into the (system, code) pairs it enumerates. Systems the package
does not carry (LOINC, SNOMED CT, UCUM, BCP-47...) or that are included by a filter we do not
evaluate are *open*: any code of them is accepted, because we cannot tell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from carebridge.fhir import registry


@dataclass(slots=True)
class Expansion:
    url: str
    codes: set[tuple[str, str]] = field(default_factory=set)
    bare_codes: set[str] = field(default_factory=set)
    open_systems: set[str] = field(default_factory=set)
    known: bool = True  # False: the ValueSet itself is not vendored
    _systems: frozenset[str] | None = None

    @property
    def systems(self) -> frozenset[str]:
        """The code systems the value set draws from (computed once)."""
        if self._systems is None:
            self._systems = frozenset({s for s, _ in self.codes} | self.open_systems)
        return self._systems

    def has(self, system: str | None, code: str) -> bool | None:
        """True/False when we can tell; None when the system is open (unknown to us)."""
        if not self.known:
            return None
        if system is None:
            if code in self.bare_codes:
                return True
            return None if self.open_systems else False
        if (system, code) in self.codes:
            return True
        if system in self.open_systems:
            return None
        return False

    def examples(self, limit: int = 8) -> str:
        listed = sorted(self.bare_codes)
        shown = ", ".join(listed[:limit]) + (", ..." if len(listed) > limit else "")
        return shown


def _concepts(concepts: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    out: list[tuple[str, list[dict[str, Any]]]] = []
    for concept in concepts:
        out.append((concept["code"], concept.get("concept", [])))
        out.extend(_concepts(concept.get("concept", [])))
    return out


@cache
def _code_system(url: str) -> tuple[frozenset[str], bool, dict[str, frozenset[str]]]:
    """(codes, complete, descendants by code) of a vendored CodeSystem."""
    cs = registry.code_system(url)
    pairs = _concepts(cs.get("concept", []))
    descendants: dict[str, frozenset[str]] = {}
    for code, children in pairs:
        descendants[code] = frozenset(c for c, _ in _concepts(children))
    complete = cs.get("content", "complete") == "complete"
    return frozenset(c for c, _ in pairs), complete, descendants


def _include(part: dict[str, Any], into: Expansion) -> None:
    for nested in part.get("valueSet", ()):
        other = expand(nested)
        into.codes |= other.codes
        into.bare_codes |= other.bare_codes
        into.open_systems |= other.open_systems
        if not other.known:
            into.known = False
    system = part.get("system")
    if system is None:
        return
    system = system.split("|", 1)[0]
    if "concept" in part:
        for concept in part["concept"]:
            into.codes.add((system, concept["code"]))
            into.bare_codes.add(concept["code"])
        return
    try:
        codes, complete, descendants = _code_system(system)
    except KeyError:
        into.open_systems.add(system)
        return
    selected: set[str] | None = set(codes)
    for flt in part.get("filter", ()):
        op, value = flt.get("op"), flt.get("value", "")
        if flt.get("property") == "concept" and op in ("is-a", "descendent-of") and selected:
            under = set(descendants.get(value, ()))
            if op == "is-a" and value in codes:
                under.add(value)
            selected &= under
        else:
            selected = None
            break
    if selected is None or not complete:
        into.open_systems.add(system)
    if selected:
        into.codes |= {(system, c) for c in selected}
        into.bare_codes |= selected


@cache
def expand(url: str) -> Expansion:
    """The codes of a ValueSet (``|version`` ignored)."""
    url = url.split("|", 1)[0]
    out = Expansion(url)
    try:
        vs = registry.value_set(url)
    except KeyError:
        out.known = False
        return out
    compose = vs.get("compose", {})
    for part in compose.get("include", ()):
        _include(part, out)
    excluded = Expansion(url)
    for part in compose.get("exclude", ()):
        _include(part, excluded)
    out.codes -= excluded.codes
    out.bare_codes -= excluded.bare_codes - {c for _, c in out.codes}
    for contained in vs.get("expansion", {}).get("contains", ()):
        if "code" in contained:
            out.codes.add((contained.get("system", ""), contained["code"]))
            out.bare_codes.add(contained["code"])
    return out
