"""References, literal and logical, and canonicals -> :class:`ReferenceValue`.

http://hl7.org/fhir/R4/search.html#reference: a reference parameter matches ``Type/id``,
a bare id, an absolute URL, a canonical (``url|version``, search.html#versions) and, with
``:identifier``, Reference.identifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from carebridge.fhir import registry
from carebridge.search.values import IndexValue, ReferenceValue, TokenValue

__all__ = [
    "parse_reference",
    "reference_from_canonical",
    "reference_from_reference",
    "reference_from_resource",
]

_NONE: tuple[IndexValue, ...] = ()
_SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"


def parse_reference(text: str) -> ReferenceValue | None:
    """A literal reference or canonical, parsed (None for ``#contained`` references).

    ``Patient/1``, ``Patient/1/_history/2``, ``http://x.org/fhir/Patient/1``, ``urn:uuid:..``
    and canonicals ``http://x.org/ValueSet/vs|1.0`` (search.html#reference, #versions).
    """
    if not text or text.startswith("#"):
        return None  # a contained resource is not a server resource
    url, version = text, None
    if "|" in text:  # canonical with a version
        url, _, version = text.partition("|")
    parts = url.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        version = version or parts[-1]
        parts = parts[:-2]
    target_type = target_id = None
    if len(parts) >= 2 and registry.is_resource_type(parts[-2]) and parts[-1]:
        target_type, target_id = parts[-2], parts[-1]
    absolute = ":" in parts[0]  # http:, https:, urn:
    return ReferenceValue(text, target_type, target_id, version, None, url if absolute else None)


def reference_from_reference(reference: Any) -> Sequence[IndexValue]:
    if type(reference) is not dict:
        return _NONE
    literal = reference.get("reference")
    identifier = reference.get("identifier")
    token = None
    if type(identifier) is dict and (identifier.get("system") or identifier.get("value")):
        token = TokenValue(identifier.get("system"), identifier.get("value"))
    parsed = parse_reference(literal) if isinstance(literal, str) else None
    if parsed is None:
        if token is None:
            return _NONE
        parsed = ReferenceValue(None)
    # ``parsed`` is new and not hashed yet: completed in place (dataclasses.replace costs
    # more than the parsing).
    declared = reference.get("type")  # Reference.type: a resource type name or its SD url
    if parsed.target_type is None and isinstance(declared, str):
        declared = declared.removeprefix(_SD_PREFIX)
        if registry.is_resource_type(declared):
            parsed.target_type = declared
    parsed.identifier = token
    return (parsed,)


def reference_from_canonical(value: Any) -> Sequence[IndexValue]:
    if not isinstance(value, str):
        return _NONE
    parsed = parse_reference(value)
    return (parsed,) if parsed else _NONE


def reference_from_resource(resource: Any) -> Sequence[IndexValue]:
    # e.g. Bundle `composition`: the first entry's resource, for chaining into a document.
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(rtype, str) or not isinstance(rid, str):
        return _NONE
    return (ReferenceValue(f"{rtype}/{rid}", rtype, rid),)
