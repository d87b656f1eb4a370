"""Responses in FHIR JSON. Stored resources are sent as the bytes we stored."""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import format_datetime
from typing import Any

import orjson
from starlette.responses import Response

from carebridge.storage.base import StoredVersion

FHIR_JSON = "application/fhir+json; charset=utf-8"


def fhir_json(
    content: Any,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    *,
    pretty: bool = False,
) -> Response:
    if isinstance(content, bytes):
        body = content
        if pretty:
            body = orjson.dumps(orjson.loads(content), option=orjson.OPT_INDENT_2)
    else:
        body = orjson.dumps(content, option=orjson.OPT_INDENT_2 if pretty else 0)
    return Response(body, status_code=status, headers=headers, media_type=FHIR_JSON)


def version_headers(version: StoredVersion) -> dict[str, str]:
    return {
        "ETag": f'W/"{version.version}"',
        "Last-Modified": format_datetime(version.last_updated, usegmt=True),
    }
