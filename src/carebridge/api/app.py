"""Build the ASGI application from a service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from carebridge.api import negotiation as neg
from carebridge.api.capability import capability_statement
from carebridge.api.errors import handle_error
from carebridge.api.fhir_routes import FhirRoutes
from carebridge.api.responses import fhir_json
from carebridge.fhir.errors import FhirError, MethodNotAllowed
from carebridge.fhir.resource import format_instant, now_instant
from carebridge.services.resources import ResourceService

DEFAULT_MAX_BODY = 64 * 1024 * 1024


def create_api(
    service: ResourceService,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    on_shutdown: Callable[[], None] | None = None,
) -> Starlette:
    fhir = FhirRoutes(service, max_body_bytes=max_body_bytes)
    started = format_instant(now_instant())

    async def metadata(request: Request) -> Response:
        neg.check_accept(request)
        statement = capability_statement(fhir.base_url(request), started)
        return fhir_json(statement, pretty=neg.pretty(request))

    async def not_allowed(request: Request) -> Response:
        raise MethodNotAllowed("The CapabilityStatement is read-only")

    async def root(request: Request) -> Response:
        return RedirectResponse("/fhir/metadata")

    routes = [
        Route("/", root, methods=["GET"]),
        Route("/fhir", fhir.bundle, methods=["POST"]),
        Route("/fhir/", fhir.bundle, methods=["POST"]),
        Route("/fhir", fhir.search, methods=["GET"]),
        Route("/fhir/_search", fhir.search, methods=["POST"]),
        Route("/fhir/metadata", metadata, methods=["GET"]),
        Route("/fhir/metadata", not_allowed, methods=["POST", "PUT", "PATCH", "DELETE"]),
        Route("/fhir/_history", fhir.history, methods=["GET"]),
        Route("/fhir/{type}/_history", fhir.history, methods=["GET"]),
        Route("/fhir/{type}/_search", fhir.search, methods=["POST"]),
        # Reads first among the instance routes: the hottest path matches early.
        Route("/fhir/{type}/{id}", fhir.read, methods=["GET"]),
        Route("/fhir/{type}/{id}/_history", fhir.history, methods=["GET"]),
        Route("/fhir/{type}/{id}/_history/{vid}", fhir.vread, methods=["GET"]),
        Route("/fhir/{type}", fhir.create, methods=["POST"]),
        Route("/fhir/{type}", fhir.search, methods=["GET"]),
        Route("/fhir/{type}", fhir.conditional_update, methods=["PUT"]),
        Route("/fhir/{type}", fhir.conditional_delete, methods=["DELETE"]),
        Route("/fhir/{compartment}/{id}/{type}", fhir.search, methods=["GET"]),
        Route("/fhir/{type}/{id}", fhir.update, methods=["PUT"]),
        Route("/fhir/{type}/{id}", fhir.patch, methods=["PATCH"]),
        Route("/fhir/{type}/{id}", fhir.delete, methods=["DELETE"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            on_shutdown()

    return Starlette(
        routes=routes,
        exception_handlers={
            FhirError: handle_error, HTTPException: handle_error, Exception: handle_error
        },
        lifespan=lifespan,
    )
