"""Snapshots for uploaded profiles that carry only a differential.

A minimal snapshot generator (http://hl7.org/fhir/R4/profiling.html#snapshot): start from the
base definition's snapshot, expand a complex datatype where the differential constrains its
children, copy the sliced element (with its children) for each new slice, and overlay each
differential element on its counterpart (constraints are added, other properties replace the
base's). Enough for profiles that constrain cardinality, types, fixed values, patterns,
bindings, invariants and value-based slices.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

from carebridge.fhir import registry
from carebridge.fhir.errors import Unprocessable


class ProfileLookup(Protocol):
    def base_definition(self, url: str) -> dict[str, Any] | None: ...


_KEEP = frozenset({"id", "path"})


def complete_snapshot(sd: dict[str, Any], lookup: ProfileLookup) -> None:
    """Add a snapshot to a StructureDefinition that has a differential only (in place)."""
    if "snapshot" in sd or not isinstance(sd.get("differential"), dict):
        return
    base_url = sd.get("baseDefinition")
    base = lookup.base_definition(base_url) if isinstance(base_url, str) else None
    if base is None or "snapshot" not in base:
        raise Unprocessable(f"Cannot build the snapshot: the base definition {base_url!r} is "
                            "not known to this server", ("StructureDefinition.baseDefinition",),
                            code="not-found")
    elements: list[dict[str, Any]] = copy.deepcopy(base["snapshot"]["element"])
    for n, diff in enumerate(sd["differential"].get("element") or ()):
        element_id = diff.get("id") or diff.get("path")
        if not isinstance(element_id, str):
            continue
        element_id = _resolve_choices(elements, element_id)
        target = _find(elements, element_id) or _make(elements, element_id)
        if target is None:
            raise Unprocessable(
                f"Cannot build the snapshot: differential element {element_id!r} matches no "
                "element of the base definition",
                (f"StructureDefinition.differential.element[{n}]",), code="structure")
        for key, value in diff.items():
            if key in _KEEP:
                continue
            if key == "constraint":
                known = {c.get("key") for c in target.get("constraint", ())}
                target["constraint"] = [*target.get("constraint", ()),
                                        *(c for c in value if c.get("key") not in known)]
            else:
                target[key] = copy.deepcopy(value)
    for element in elements:
        # The vendored core definitions leave out prose (fhir/definitions/README.md); a
        # snapshot must carry it (sdf-3, eld-18), so point at the published base instead.
        if "definition" not in element:
            element["definition"] = element.get("short") or (
                f"As in the base definition {base_url}")
        if element.get("isModifier") and "isModifierReason" not in element:
            element["isModifierReason"] = f"As in the base definition {base_url}"
    sd["snapshot"] = {"element": elements}


def _resolve_choices(elements: list[dict[str, Any]], element_id: str) -> str:
    """``Observation.valueQuantity.value`` -> ``Observation.value[x]:valueQuantity.value`` (or
    ``Observation.value[x].value``), the id form snapshots use for a typed choice."""
    known = {e.get("id", e.get("path")) for e in elements}
    parts = element_id.split(".")
    current = parts[0]
    for segment in parts[1:]:
        candidate = f"{current}.{segment}"
        if candidate not in known and "[x]" not in segment:
            name = segment.split(":", 1)[0]
            for other in known:
                if not isinstance(other, str) or not other.startswith(current + "."):
                    continue
                rest = other[len(current) + 1:]
                if "." in rest or not rest.endswith("[x]"):
                    continue
                stem = rest[:-3]
                if name.startswith(stem) and name[len(stem):][:1].isupper():
                    typed = f"{current}.{stem}[x]:{name}"
                    candidate = typed if typed in known else f"{current}.{stem}[x]"
                    break
        current = candidate
    return current


def _find(elements: list[dict[str, Any]], element_id: str) -> dict[str, Any] | None:
    for element in elements:
        if element.get("id", element.get("path")) == element_id:
            return element
    return None


def _descendants(elements: list[dict[str, Any]], element_id: str) -> tuple[int, int]:
    """(index of the element, index after its last descendant or slice)."""
    start = next(i for i, e in enumerate(elements) if e.get("id") == element_id)
    end = start + 1
    while end < len(elements) and elements[end].get("id", "").startswith(
            (element_id + ".", element_id + ":")):
        end += 1
    return start, end


def _make(elements: list[dict[str, Any]], element_id: str) -> dict[str, Any] | None:
    parent_id, _, last = element_id.rpartition(".")
    if ":" in last:  # a new slice: copy the sliced element and its children
        name, _, slice_name = last.partition(":")
        sliced_id = f"{parent_id}.{name}" if parent_id else name
        if _find(elements, sliced_id) is None and _make(elements, sliced_id) is None:
            return None
        start, end = _descendants(elements, sliced_id)
        copies = copy.deepcopy([e for e in elements[start:end]
                                if ":" not in e["id"][len(sliced_id):]])
        for element in copies:
            element["id"] = element_id + element["id"][len(sliced_id):]
        copies[0]["sliceName"] = slice_name
        copies[0].pop("slicing", None)
        elements[end:end] = copies
        return copies[0]
    if not parent_id:
        return None
    parent = _find(elements, parent_id) or _make(elements, parent_id)
    if parent is None or len(parent.get("type", ())) != 1:
        return None
    type_code = parent["type"][0]["code"]
    try:
        type_sd = registry.structure_definition(type_code)
    except KeyError:
        return None
    start, end = _descendants(elements, parent_id)
    if end > start + 1 and any(e["id"].startswith(parent_id + ".") for e in elements[start:end]):
        return None  # already expanded, and the element is not there
    children = copy.deepcopy(type_sd["snapshot"]["element"][1:])
    path = parent["path"]
    for child in children:
        suffix = child["path"][len(type_code):]
        child["id"] = parent_id + suffix
        child["path"] = path + suffix
    elements[start + 1:start + 1] = children
    return _find(elements, element_id)
