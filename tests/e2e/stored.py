"""What the end-to-end tests read back from a loaded store (shared by the Synthea tests)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import psycopg

from carebridge.storage.sqlite import path_from_url

Key = tuple[str, str]


def current_resources(database_url: str) -> dict[Key, tuple[int, bytes]]:
    """Every current, not deleted resource straight from the ``resource`` table."""
    query = "SELECT resource_type, id, version, body FROM resource WHERE NOT deleted"
    rows: list[Any]
    if database_url.startswith("sqlite:"):
        with closing(sqlite3.connect(path_from_url(database_url))) as conn:
            rows = conn.execute(query).fetchall()
    else:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(query).fetchall()
    return {(rtype, rid): (version, bytes(body)) for rtype, rid, version, body in rows}


def references(node: Any) -> Iterator[str]:
    """Every ``reference`` string inside a resource (contained resources included)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            elif isinstance(value, dict | list):
                yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def urn_uuid_strings(node: Any) -> Iterator[str]:
    """Any string value at all that still starts with ``urn:uuid:``."""
    if isinstance(node, dict):
        for value in node.values():
            yield from urn_uuid_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from urn_uuid_strings(value)
    elif isinstance(node, str) and node.startswith("urn:uuid:"):
        yield node


def rewritten(node: Any, assigned: dict[str, str]) -> Any:
    """What the server should store: ``node`` with each fullUrl reference replaced."""
    if isinstance(node, dict):
        return {k: rewritten(v, assigned) for k, v in node.items()}
    if isinstance(node, list):
        return [rewritten(v, assigned) for v in node]
    if isinstance(node, str):
        return assigned.get(node, node)
    return node


def without_server_fields(resource: dict[str, Any]) -> dict[str, Any]:
    out = dict(resource)
    out.pop("id", None)
    meta = {k: v for k, v in (out.pop("meta", None) or {}).items()
            if k not in ("versionId", "lastUpdated")}
    if meta:
        out["meta"] = meta
    return out
