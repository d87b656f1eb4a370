"""ASGI adapters: HTTP in, service calls, HTTP out. No FHIR logic lives here."""

from carebridge.api.app import create_api

__all__ = ["create_api"]
