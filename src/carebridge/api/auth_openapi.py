"""OpenAPI 3.1 description of the non-FHIR endpoints (discovery, keys, OAuth), served at
``/oauth/openapi.json``; the FHIR API is described by its CapabilityStatement instead.
The property-based tests generate their requests from this document."""

from __future__ import annotations

from typing import Any

_TEXT: dict[str, Any] = {"type": "string"}
_FORM = "application/x-www-form-urlencoded"


def _form(*fields: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"required": True, "content": {_FORM: {"schema": {
        "type": "object", "properties": {f: _TEXT for f in fields},
        "required": list(required)}}}}


def _json(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {
        "type": "object"}}}}


_AUTHORIZE_FIELDS = ("response_type", "client_id", "redirect_uri", "scope", "state", "aud",
                     "code_challenge", "code_challenge_method", "launch")
_HTML = {"description": "an HTML page", "content": {"text/html": {"schema": _TEXT}}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "carebridge authorization server", "version": "1"},
    "paths": {
        "/.well-known/smart-configuration": {"get": {
            "operationId": "smartConfiguration",
            "responses": {"200": _json("SMART App Launch 2.0 discovery document")}}},
        "/oauth/jwks": {"get": {
            "operationId": "jwks", "responses": {"200": _json("RFC 7517 JWK Set")}}},
        "/oauth/authorize": {
            "get": {"operationId": "authorizePage",
                    "parameters": [{"name": f, "in": "query", "schema": _TEXT}
                                   for f in _AUTHORIZE_FIELDS],
                    "responses": {"200": _HTML, "302": {"description": "redirect"},
                                  "400": _HTML}},
            "post": {"operationId": "authorizeLogin",
                     "requestBody": _form(*_AUTHORIZE_FIELDS, "username", "password", "totp",
                                          "patient"),
                     "responses": {"302": {"description": "redirect with code or error"},
                                   "400": _HTML, "401": _HTML, "413": _HTML,
                                   "429": _json("rate limited")}}},
        "/oauth/token": {"post": {
            "operationId": "token",
            "requestBody": _form("grant_type", "code", "redirect_uri", "client_id",
                                 "client_secret", "code_verifier", "refresh_token", "scope",
                                 "client_assertion_type", "client_assertion"),
            "responses": {"200": _json("token response"), "400": _json("RFC 6749 error"),
                          "401": _json("client authentication failed"),
                          "413": _json("too large"), "429": _json("rate limited")}}},
        "/oauth/introspect": {"post": {
            "operationId": "introspect", "requestBody": _form("token", required=("token",)),
            "responses": {"200": _json("RFC 7662 response"), "400": _json("bad request"),
                          "401": _json("caller not authenticated"),
                          "413": _json("too large")}}},
        "/oauth/revoke": {"post": {
            "operationId": "revoke", "requestBody": _form("token", required=("token",)),
            "responses": {"200": {"description": "revoked (or unknown)"},
                          "400": _json("bad request"), "413": _json("too large"),
                          "429": _json("rate limited")}}},
        "/oauth/launch": {"post": {
            "operationId": "launch", "requestBody": _form("client_id", "patient"),
            "responses": {"200": _json("a launch handle"), "400": _json("missing field"),
                          "403": _json("not a clinician"), "413": _json("too large")}}},
    },
}
