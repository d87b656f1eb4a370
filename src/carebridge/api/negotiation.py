"""Reading FHIR requests: formats, bodies, Prefer, If-Match, common parameters.

carebridge speaks FHIR JSON only (http://hl7.org/fhir/R4/http.html#mime-type). An XML request
body gets 415 and a request for an XML response gets 406, each with an OperationOutcome.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

from starlette.requests import Request

from carebridge.fhir.errors import (
    BadRequest,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from carebridge.fhir.subsetting import SUMMARY_MODES

_JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir"}
_ACCEPTABLE = _JSON_TYPES | {"*/*", "application/*"}
_FORMAT_JSON = {"json", *_JSON_TYPES}
_FORMAT_XML = {"xml", "text/xml", "application/xml", "application/fhir+xml", "application/xml+fhir"}
PATCH_JSON = "application/json-patch+json"


@dataclass(frozen=True, slots=True)
class Prefer:
    """The ``Prefer`` header: ``return=`` and ``handling=``."""

    return_: str = "representation"
    handling: str = "lenient"


def _media_types(header: str) -> list[str]:
    return [part.split(";")[0].strip().lower() for part in header.split(",") if part.strip()]


def check_accept(request: Request) -> None:
    fmt = request.query_params.get("_format")
    if fmt is not None:
        value = fmt.strip().lower().split(";")[0]
        if value in _FORMAT_XML:
            raise NotAcceptable("This server supports JSON only; _format=xml is not available",
                                ("_format",))
        if value not in _FORMAT_JSON:
            raise NotAcceptable(f"Unsupported _format {fmt!r}; use json", ("_format",))
        return
    accept = request.headers.get("accept")
    if not accept:
        return
    types = _media_types(accept)
    if not any(t in _ACCEPTABLE or t.endswith("+json") for t in types):
        raise NotAcceptable(
            f"This server answers in application/fhir+json only, not {accept!r}"
        )


async def read_body(request: Request, max_bytes: int, *, patch: bool = False) -> bytes:
    """The request body, after checking its media type and size (before reading it all)."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";")[0].strip().lower()
    allowed = {PATCH_JSON} if patch else _JSON_TYPES
    if media and media not in allowed:
        if patch and media in _JSON_TYPES | {"application/fhir+json"}:
            raise UnsupportedMediaType(
                f"PATCH takes a JSON Patch document ({PATCH_JSON}), not {media}"
            )
        kind = "JSON Patch" if patch else "FHIR JSON"
        raise UnsupportedMediaType(f"This server accepts {kind} only, not {media!r}")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(f"The body ({length} bytes) is over the limit of {max_bytes} bytes")
    return await read_body_raw(request, max_bytes)


async def read_body_raw(request: Request, max_bytes: int) -> bytes:
    """The body whatever its media type, within the size limit."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"The body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def prefer(request: Request) -> Prefer:
    header = request.headers.get("prefer", "")
    values: dict[str, str] = {}
    for part in re.split(r"[,;]", header):
        if "=" in part:
            key, _, value = part.strip().partition("=")
            values[key.strip().lower()] = value.strip().strip('"')
    ret = values.get("return", "representation")
    if ret not in ("minimal", "representation", "OperationOutcome"):
        ret = "representation"
    handling = values.get("handling", "lenient")
    return Prefer(ret, handling if handling in ("strict", "lenient") else "lenient")


def if_match(request: Request) -> int | None:
    header = request.headers.get("if-match")
    if header is None:
        return None
    text = header.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise BadRequest(f"If-Match {header!r} is not a version ETag such as W/\"3\"",
                         ("If-Match",))
    return int(text)


def not_modified(request: Request, version: int, last_updated: datetime) -> bool:
    """Conditional read (http://hl7.org/fhir/R4/http.html#cread): If-None-Match wins over
    If-Modified-Since, as in RFC 9110 section 13.2.2."""
    none_match = request.headers.get("if-none-match")
    if none_match is not None:
        tags = {t.strip().removeprefix("W/").strip('"') for t in none_match.split(",")}
        return "*" in tags or str(version) in tags
    since = request.headers.get("if-modified-since")
    if since is not None:
        try:
            moment = parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
        if moment.tzinfo is None:
            return False
        return last_updated.replace(microsecond=0) <= moment
    return False


def pretty(request: Request) -> bool:
    return request.query_params.get("_pretty", "false").lower() == "true"


def summary_mode(request: Request) -> str | None:
    mode = request.query_params.get("_summary")
    if mode is not None and mode not in SUMMARY_MODES:
        raise BadRequest(f"_summary must be one of {', '.join(SUMMARY_MODES)}", ("_summary",))
    return mode


def count(request: Request, default: int, maximum: int) -> int:
    raw = request.query_params.get("_count")
    if raw is None:
        return default
    if not raw.isdigit():
        raise BadRequest(f"_count must be a non-negative integer, not {raw!r}", ("_count",))
    return min(int(raw), maximum)
