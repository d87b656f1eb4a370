"""Build the ASGI application from a service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge.api import negotiation as neg
from carebridge.api.capability import capability_statement
from carebridge.api.errors import handle_error
from carebridge.api.fhir_routes import FhirRoutes
from carebridge.api.middleware import ApiSecurity, SecurityLayer
from carebridge.api.monitoring_routes import monitoring_routes
from carebridge.api.responses import fhir_json
from carebridge.api.smart import rest_security, smart_routes
from carebridge.fhir.errors import FhirError, MethodNotAllowed
from carebridge.fhir.resource import format_instant, now_instant
from carebridge.monitoring.runtime import Monitoring
from carebridge.services.resources import ResourceService

DEFAULT_MAX_BODY = 64 * 1024 * 1024


def create_api(
    service: ResourceService,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    on_shutdown: Callable[[], None] | None = None,
    security: ApiSecurity | None = None,
    monitoring: Monitoring | None = None,
) -> Starlette:
    """The ASGI application over ``service``.

    ``security`` None (the library default, used by tests and embedding) adds no
    authentication layer: every request reaches the service as an anonymous
    :class:`~carebridge.security.policy.Caller`, and the service's AccessPolicy alone decides
    (AllowAll unless the service was given another). ``carebridge serve`` always passes an
    :class:`ApiSecurity` (bearer tokens and SMART endpoints, or the loud insecure mode).
    """
    fhir = FhirRoutes(service, max_body_bytes=max_body_bytes)
    started = format_instant(now_instant())

    async def metadata(request: Request) -> Response:
        neg.check_accept(request)
        statement = capability_statement(fhir.base_url(request), started)
        if security is not None and security.authority is not None:
            statement["rest"][0]["security"] = rest_security(security.authority)
        return fhir_json(statement, pretty=neg.pretty(request))

    async def not_allowed(request: Request) -> Response:
        raise MethodNotAllowed("The CapabilityStatement is read-only")

    async def root(request: Request) -> Response:
        return RedirectResponse("/fhir/metadata")

    routes: list[BaseRoute] = [
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
        Route("/fhir/{type}/$validate", fhir.validate, methods=["POST"]),
        Route("/fhir/{type}/{id}/$validate", fhir.validate, methods=["POST"]),
        # Reads first among the instance routes: the hottest path matches early.
        Route("/fhir/{type}/{id}", fhir.read, methods=["GET"]),
        Route("/fhir/{type}/{id}/_history", fhir.history, methods=["GET"]),
        Route("/fhir/{type}/{id}/_history/{vid}", fhir.vread, methods=["GET"]),
        Route("/fhir/{type}", fhir.create, methods=["POST"]),
        Route("/fhir/{type}", fhir.search, methods=["GET"]),
        Route("/fhir/{type}", fhir.conditional_update, methods=["PUT"]),
        Route("/fhir/{type}", fhir.conditional_delete, methods=["DELETE"]),
        Route("/fhir/Patient/{id}/$everything", fhir.everything, methods=["GET", "POST"]),
        Route("/fhir/{compartment}/{id}/{type}", fhir.search, methods=["GET"]),
        Route("/fhir/{type}/{id}", fhir.update, methods=["PUT"]),
        Route("/fhir/{type}/{id}", fhir.patch, methods=["PATCH"]),
        Route("/fhir/{type}/{id}", fhir.delete, methods=["DELETE"]),
    ]
    if monitoring is not None:
        routes.extend(monitoring_routes(monitoring))
    middleware: list[Middleware] = []
    if security is not None:
        # Before the FHIR routes: /fhir/.well-known/... would otherwise match /fhir/{type}/{id}.
        routes[:0] = security.extra_routes
        if security.authority is not None:
            routes[:0] = smart_routes(security.authority)
        if security.cors_origins:
            middleware.append(Middleware(
                CORSMiddleware, allow_origins=list(security.cors_origins),
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=["authorization", "content-type", "if-match", "if-none-exist",
                               "if-none-match", "prefer"],
                expose_headers=["etag", "location", "content-location", "last-modified"]))
        middleware.append(Middleware(
            SecurityLayer, verifier=security.authority.verifier if security.authority else None,
            insecure=security.insecure, tls=security.tls,
            ledger=security.authority.ledger if security.authority else None))
    authority = security.authority if security is not None else None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if authority is not None:
            authority.start()  # the audit ledger's writer
        if monitoring is not None:
            monitoring.start()
        yield
        if monitoring is not None:
            monitoring.stop()
        if authority is not None:
            authority.close()  # flushes the audit trail before the database closes
        if on_shutdown is not None:
            on_shutdown()

    return Starlette(
        routes=routes,
        exception_handlers={
            FhirError: handle_error, HTTPException: handle_error, Exception: handle_error
        },
        lifespan=lifespan,
        middleware=middleware,
    )
