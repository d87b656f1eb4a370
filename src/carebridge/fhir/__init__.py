"""FHIR R4 building blocks: resources, errors and the vendored definitions registry."""
