"""The CapabilityStatement at ``/fhir/metadata``: what this server really does, no more.

Search parameters are listed per type from the vendored definitions, less those the server
cannot search (``near``, and the ones without an expression such as ``_text``/``_content``).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from carebridge import __version__
from carebridge.fhir import registry

_TYPE_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance",
                      "history-type", "create", "search-type"]


def _search_params(rtype: str) -> list[dict[str, Any]]:
    found = []
    for code, sp in sorted(registry.search_parameters_for(rtype).items()):
        if code == "near" or not sp.get("expression") or sp.get("type") == "special":
            continue
        found.append({"name": code, "definition": sp["url"], "type": sp["type"]})
    return found


def _includes(rtype: str) -> list[str]:
    return [f"{rtype}:{code}" for code, sp in sorted(registry.search_parameters_for(rtype).items())
            if sp.get("type") == "reference" and sp.get("expression")]


@cache
def _resources() -> tuple[dict[str, Any], ...]:
    references: dict[str, list[str]] = {}
    for rtype in registry.resource_types():
        for code, sp in registry.search_parameters_for(rtype).items():
            if sp.get("type") == "reference" and sp.get("expression"):
                for target in sp.get("target") or ():
                    references.setdefault(target, []).append(f"{rtype}:{code}")
    return tuple(
        {
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "interaction": [{"code": code} for code in _TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "local"],
            "searchInclude": ["*", *_includes(rtype)],
            "searchRevInclude": sorted(references.get(rtype, [])),
            "searchParam": _search_params(rtype),
            # Validation (docs/validation.md): type and instance level, mode and profile.
            "operation": [{"name": "validate", "definition":
                           "http://hl7.org/fhir/OperationDefinition/Resource-validate"},
                          *([{"name": "everything", "definition":
                              "http://hl7.org/fhir/OperationDefinition/Patient-everything"}]
                            if rtype == "Patient" else [])],
        }
        for rtype in sorted(registry.resource_types())
    )


def capability_statement(base_url: str, published: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published,
        "publisher": "carebridge",
        "kind": "instance",
        "software": {"name": "carebridge", "version": __version__},
        "implementation": {"description": "carebridge FHIR R4 server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "JSON only.",
                "resource": list(_resources()),
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "search-system"},
                    {"code": "history-system"},
                ],
                "compartment": [
                    f"http://hl7.org/fhir/CompartmentDefinition/{c.lower()}"
                    for c in ("Patient", "Encounter", "RelatedPerson", "Practitioner", "Device")
                ],
            }
        ],
    }
