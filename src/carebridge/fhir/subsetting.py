"""``_summary`` and ``_elements`` (http://hl7.org/fhir/R4/search.html#summary, #elements).

Subsetted resources carry the ``SUBSETTED`` security tag so nobody mistakes them for the whole
resource.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from carebridge.fhir import registry
from carebridge.fhir.errors import BadRequest

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
SUMMARY_MODES = ("true", "false", "text", "data", "count")
_ALWAYS = frozenset({"resourceType", "id", "meta"})


def summarize(resource: dict[str, Any], mode: str) -> dict[str, Any]:
    """Apply ``_summary=mode`` to one resource."""
    if mode == "false":
        return resource
    rtype = resource["resourceType"]
    if mode == "true":
        keep = registry.summary_elements(rtype)
        out = {k: v for k, v in resource.items() if k in keep}
    elif mode == "text":
        keep = _ALWAYS | {"text"} | registry.mandatory_elements(rtype)
        out = {k: v for k, v in resource.items() if k in keep}
    elif mode == "data":
        out = {k: v for k, v in resource.items() if k != "text"}
    else:
        raise BadRequest(f"_summary={mode} is not valid here", ("_summary",))
    return _tag_subsetted(out)


def select_elements(resource: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Apply ``_elements``: the named top-level elements plus the mandatory ones.

    A choice element may be named by its base (``value`` keeps ``valueQuantity``).
    """
    rtype = resource["resourceType"]
    wanted = {n.strip() for n in names if n.strip()}
    for name in wanted:
        if "." in name:
            raise BadRequest(
                f"_elements takes top-level element names; {name!r} is a path", ("_elements",)
            )
    keep = _ALWAYS | registry.mandatory_elements(rtype)

    def kept(key: str) -> bool:
        base = key[1:] if key.startswith("_") else key
        if base in keep or base in wanted:
            return True
        return any(base.startswith(n) and base[len(n):][:1].isupper() for n in wanted)

    return _tag_subsetted({k: v for k, v in resource.items() if kept(k)})


def _tag_subsetted(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    out = {"resourceType": resource["resourceType"]}
    if "id" in resource:
        out["id"] = resource["id"]
    out["meta"] = meta
    out.update((k, v) for k, v in resource.items() if k not in out)
    return out
