"""Use cases. Every way in (REST, bundles, CLI import, later HL7 v2 and devices) calls these,
so validation, authorization, persistence, audit and events happen in one order, in one place:
validate -> authorize -> persist -> audit -> publish."""

from carebridge.services.resources import ResourceService, WriteResult

__all__ = ["ResourceService", "WriteResult"]
