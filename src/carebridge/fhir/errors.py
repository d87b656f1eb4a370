"""The one error type of carebridge's FHIR core, and its documented hierarchy.

Every failure that a client should see is raised as a :class:`FhirError`; it carries the HTTP
status and the ``OperationOutcome`` issues. The API turns it into a response in exactly one place
(``carebridge.api.errors``), so no layer below HTTP ever builds a response itself.

Hierarchy (status in brackets; issue codes from http://hl7.org/fhir/R4/valueset-issue-type.html)::

    FhirError
    ├── BadRequest [400]              invalid JSON, unknown element, malformed parameter
    ├── Unauthorized [401]            no or bad credentials
    ├── Forbidden [403]               credentials that do not allow the action
    ├── NotFound [404]                unknown resource, version or resource type
    ├── MethodNotAllowed [405]        interaction not defined on this path
    ├── NotAcceptable [406]           Accept/_format asks for something other than JSON
    ├── Conflict [409]                concurrent change of the same resource
    ├── Gone [410]                    resource was deleted
    ├── PreconditionFailed [412]      If-Match with a stale version; ambiguous condition
    ├── PayloadTooLarge [413]         body over the configured limit
    ├── UnsupportedMediaType [415]    body in a format other than FHIR JSON
    ├── Unprocessable [422]           violates a profile or a business rule
    └── NotImplementedYet [501]       a part of FHIR this server does not do (yet)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Issue:
    """One ``OperationOutcome.issue``."""

    severity: str  # fatal | error | warning | information
    code: str  # from the issue-type value set
    diagnostics: str
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def information(message: str) -> dict[str, Any]:
    return operation_outcome([Issue("information", "informational", message)])


@dataclass
class FhirError(Exception):
    """An error with an HTTP status and OperationOutcome issues."""

    message: str
    expression: tuple[str, ...] = ()
    code: str = ""
    extra_issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "exception"

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def issues(self) -> list[Issue]:
        first = Issue("error", self.code or self.default_code, self.message, self.expression)
        return [first, *self.extra_issues]

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)

    def at(self, prefix: str) -> FhirError:
        """Re-anchor this error under ``prefix`` (e.g. ``Bundle.entry[3]``)."""
        exprs = tuple(prefix + ("." + e if e else "") for e in self.expression) or (prefix,)
        return type(self)(
            f"{prefix}: {self.message}", exprs, self.code, self.extra_issues, self.headers
        )


class BadRequest(FhirError):
    status = 400
    default_code = "invalid"


class Unauthorized(FhirError):
    status = 401
    default_code = "login"


class Forbidden(FhirError):
    status = 403
    default_code = "forbidden"


class NotFound(FhirError):
    status = 404
    default_code = "not-found"


class MethodNotAllowed(FhirError):
    status = 405
    default_code = "not-supported"


class NotAcceptable(FhirError):
    status = 406
    default_code = "not-supported"


class Conflict(FhirError):
    status = 409
    default_code = "conflict"


class Gone(FhirError):
    status = 410
    default_code = "deleted"


class PreconditionFailed(FhirError):
    status = 412
    default_code = "conflict"


class PayloadTooLarge(FhirError):
    status = 413
    default_code = "too-costly"


class UnsupportedMediaType(FhirError):
    status = 415
    default_code = "not-supported"


class Unprocessable(FhirError):
    status = 422
    default_code = "processing"


class NotImplementedYet(FhirError):
    status = 501
    default_code = "not-supported"
