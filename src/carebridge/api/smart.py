"""SMART discovery and key publication (SMART App Launch 2.0, "Conformance").

``/.well-known/smart-configuration`` (at the FHIR base, and at the server root for clients
that look there) lists the OAuth endpoints and the capabilities this server implements;
``/oauth/jwks`` publishes the public keys that sign access tokens (RFC 7517); the OAuth
endpoints themselves are in :mod:`carebridge.api.oauth`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge.api.auth_openapi import OPENAPI
from carebridge.api.oauth import oauth_routes
from carebridge.security.authority import Authority

CAPABILITIES = [
    "launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
    "client-confidential-asymmetric", "context-ehr-patient", "context-standalone-patient",
    "sso-openid-connect", "permission-offline", "permission-patient", "permission-user",
    "permission-v1", "permission-v2", "authorize-post",
]
SCOPES = [
    "openid", "fhirUser", "launch", "launch/patient", "offline_access", "online_access",
    "patient/*.rs", "patient/*.cruds", "user/*.rs", "user/*.cruds", "system/*.rs",
    "system/*.cruds", "patient/*.read", "user/*.read", "user/*.write", "system/*.read",
]


def smart_configuration(authority: Authority) -> dict[str, Any]:
    base = authority.base_url
    return {
        "issuer": base,
        "jwks_uri": f"{base}/oauth/jwks",
        "authorization_endpoint": f"{base}/oauth/authorize",
        "token_endpoint": f"{base}/oauth/token",
        "introspection_endpoint": f"{base}/oauth/introspect",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": CAPABILITIES,
    }


def rest_security(authority: Authority) -> dict[str, Any]:
    """``CapabilityStatement.rest.security`` for SMART clients that still read the endpoints
    there (SMART 1.0's oauth-uris extension; 2.0 keeps it as deprecated)."""
    base = authority.base_url
    uris = [{"url": "authorize", "valueUri": f"{base}/oauth/authorize"},
            {"url": "token", "valueUri": f"{base}/oauth/token"},
            {"url": "introspect", "valueUri": f"{base}/oauth/introspect"},
            {"url": "revoke", "valueUri": f"{base}/oauth/revoke"}]
    return {
        "cors": False,
        "service": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR"}]}],
        "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/"
                              "oauth-uris", "extension": uris}],
    }


def smart_routes(authority: Authority) -> list[BaseRoute]:
    async def configuration(request: Request) -> Response:
        return JSONResponse(smart_configuration(authority))

    async def jwks(request: Request) -> Response:
        return JSONResponse(authority.keys.jwks(), headers={"cache-control": "max-age=300"})

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    return [
        Route("/.well-known/smart-configuration", configuration, methods=["GET"]),
        Route("/fhir/.well-known/smart-configuration", configuration, methods=["GET"]),
        Route("/oauth/jwks", jwks, methods=["GET"]),
        Route("/oauth/openapi.json", openapi, methods=["GET"]),
        *oauth_routes(authority),
    ]
