"""The CapabilityStatement at ``/fhir/metadata``: what this server really does, no more.

Search is not declared (no ``search-type`` interaction, no ``searchParam``) until it exists;
conditional interactions are declared unsupported.
"""

from __future__ import annotations

from typing import Any

from carebridge import __version__
from carebridge.fhir import registry

_TYPE_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance",
                      "history-type", "create"]


def capability_statement(base_url: str, published: str) -> dict[str, Any]:
    resources = [
        {
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "interaction": [{"code": code} for code in _TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": False,
            "conditionalRead": "full-support",
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "referencePolicy": ["literal", "local"],
        }
        for rtype in sorted(registry.resource_types())
    ]
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
                "documentation": "JSON only. Search is not available yet.",
                "resource": resources,
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "history-system"},
                ],
            }
        ],
    }
