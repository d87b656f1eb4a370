"""The one place where errors become HTTP responses.

:class:`~carebridge.fhir.errors.FhirError` keeps its status; Starlette's routing errors (404 for
an unknown path, 405 for a method the path does not take) and anything unexpected (500) become
OperationOutcomes too, so a client never gets an HTML or plain-text error.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from carebridge.api.responses import fhir_json
from carebridge.fhir.errors import (
    FhirError,
    Issue,
    MethodNotAllowed,
    NotFound,
    operation_outcome,
)

log = logging.getLogger(__name__)


def error_response(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            exc = NotFound("No such path on this FHIR server", code="not-found")
        elif exc.status_code == 405:
            exc = MethodNotAllowed("The path does not support this HTTP method")
        else:
            outcome = operation_outcome([Issue("error", "processing", str(exc.detail))])
            return fhir_json(outcome, status=exc.status_code)
    if isinstance(exc, FhirError):
        return fhir_json(exc.outcome(), status=exc.status, headers=exc.headers)
    log.error("unexpected error", exc_info=exc)
    outcome = operation_outcome(
        [Issue("fatal", "exception", "Internal server error; the request was not completed")]
    )
    return fhir_json(outcome, status=500)


async def handle_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)
