"""Typed navigation of FHIR elements, from the vendored StructureDefinitions.

A search parameter expression names elements (``Observation.component.value``); to turn what
it finds into index values we must know each element's FHIR type, and the JSON property that
carries it (``valueQuantity`` for a choice ``value[x]``).  :func:`children` answers that for
one step, given where we stand: a :data:`Context` is the StructureDefinition to look in and
the element path inside it (a datatype stands at its own root, a BackboneElement inside its
resource).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from carebridge.fhir import registry

__all__ = ["Child", "Context", "ancestry", "children", "root_context"]

Context = tuple[str, str]  # (StructureDefinition type name, element path within it)

_SYSTEM_PREFIX = "http://hl7.org/fhirpath/System."
_FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
_INLINE_TYPES = frozenset({"BackboneElement", "Element"})


@dataclass(frozen=True, slots=True)
class Child:
    """One way an element appears in JSON: its property name and FHIR type."""

    key: str
    type: str
    context: Context
    implicit_system: str | None = None  # of a `code` bound to a one-system value set


def root_context(type_name: str) -> Context:
    return (type_name, type_name)


@cache
def _elements(structure: str) -> dict[str, dict[str, Any]]:
    sd = registry.structure_definition(structure)
    return {e["path"]: e for e in sd["snapshot"]["element"]}


def _type_code(type_ref: dict[str, Any]) -> str:
    code = str(type_ref["code"])
    if code.startswith(_SYSTEM_PREFIX):
        for ext in type_ref.get("extension", ()):
            if ext.get("url") == _FHIR_TYPE_EXT and "valueUrl" in ext:
                return str(ext["valueUrl"])
        return code.removeprefix(_SYSTEM_PREFIX).lower()
    return code


@cache
def _value_set_system(url: str) -> str | None:
    """The code system of a value set that draws on exactly one, whole or in part."""
    try:
        compose = registry.value_set(url).get("compose", {})
    except KeyError:
        return None
    systems = {inc.get("system") for inc in compose.get("include", ())}
    if len(systems) != 1 or any("valueSet" in inc for inc in compose.get("include", ())):
        return None
    system = systems.pop()
    return str(system) if system else None


def _implicit_system(element: dict[str, Any]) -> str | None:
    # search.html#token: for a `code` "the system is implicit", given by its binding.
    binding = element.get("binding", {})
    if binding.get("strength") != "required" or "valueSet" not in binding:
        return None
    return _value_set_system(str(binding["valueSet"]))


@cache
def children(context: Context, name: str) -> tuple[Child, ...]:
    """The JSON properties (with types) of child ``name`` of the element at ``context``.

    A choice element yields one Child per allowed type.  Unknown names yield ``()``.
    """
    structure, path = context
    try:
        elements = _elements(structure)
    except KeyError:
        return ()
    child_path = f"{path}.{name}"
    choice = child_path not in elements
    if choice:
        child_path += "[x]"
    element = elements.get(child_path)
    if element is not None and "contentReference" in element:
        # e.g. Questionnaire.item.item -> "#Questionnaire.item": same element, same types
        child_path = str(element["contentReference"]).split("#", 1)[-1]
        element = elements.get(child_path)
    if element is None:
        return ()
    found: list[Child] = []
    for type_ref in element.get("type", ()):
        fhir_type = _type_code(type_ref)
        key = name + fhir_type[:1].upper() + fhir_type[1:] if choice else name
        inner: Context = (
            (structure, child_path) if fhir_type in _INLINE_TYPES else root_context(fhir_type)
        )
        system = _implicit_system(element) if fhir_type == "code" else None
        found.append(Child(key, fhir_type, inner, system))
    return tuple(found)


@cache
def ancestry(type_name: str) -> tuple[str, ...]:
    """The type and its bases: (Patient, DomainResource, Resource); () if unknown."""
    chain: list[str] = []
    try:
        sd = registry.structure_definition(type_name)
    except KeyError:
        return ()
    while True:
        chain.append(str(sd["type"]))
        base = sd.get("baseDefinition")
        if not base:
            return tuple(chain)
        sd = registry.structure_definition(base)
