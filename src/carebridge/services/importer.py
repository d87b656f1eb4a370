"""Loading files into the store: FHIR bundles, single resources and NDJSON.

Each file is all or nothing: a transaction bundle runs as a transaction; a batch bundle is run
in one database transaction too (its entries still keep batch semantics: no urn:uuid links
between them), so a file that fails leaves nothing behind; NDJSON lines become one
transaction (``PUT Type/id`` for lines with an id, ``POST Type`` otherwise). Files may be
gzip-compressed (``.gz``). Folders are walked in name order, Synthea's
``hospitalInformation*`` and ``practitionerInformation*`` files first because patient
bundles refer to them.

Audit: given the audit ledger, every file records one FHIR AuditEvent (``import_event``:
DICOM 110107 Import, channel ``cli-import``) naming who ran the import (``operator``, e.g.
``cli:<OS user>``), the file, the resources loaded per type and the outcome (0 loaded, 4
refused, 8 unreadable or failed). The caller flushes the ledger (``AuditLedger.close``)
before it exits.
"""

from __future__ import annotations

import gzip
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from carebridge.fhir.errors import BadRequest, FhirError
from carebridge.security.audit import AuditLedger
from carebridge.security.audit_events import cli_operator, import_event
from carebridge.security.policy import Caller
from carebridge.services.bundles import BundleProcessor
from carebridge.services.resources import ResourceService

SUFFIXES = (".json", ".ndjson", ".json.gz", ".ndjson.gz")


@dataclass
class FileResult:
    path: Path
    ok: bool
    resources: Counter[str] = field(default_factory=Counter)
    error: str | None = None
    seconds: float = 0.0
    status: int = 200  # as an HTTP status: 4xx the content was refused, 5xx it failed

    @property
    def total(self) -> int:
        return sum(self.resources.values())


def _load_order(path: Path) -> tuple[int, str]:
    name = path.name
    first = name.startswith(("hospitalInformation", "practitionerInformation"))
    return (0 if first else 1, str(path))


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files to load: the given files, and the loadable files below the given folders."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(
                    (p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES)),
                    key=_load_order,
                )
            )
        else:
            found.append(path)
    return found


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def _ndjson_entries(data: bytes) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"line {number} is not valid JSON: {exc}") from None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise BadRequest(f"line {number} is not a FHIR resource")
        rtype = resource["resourceType"]
        rid = resource.get("id")
        request = {"method": "PUT", "url": f"{rtype}/{rid}"} if rid else {
            "method": "POST", "url": rtype}
        yield {"resource": resource, "request": request}


class Importer:
    def __init__(self, service: ResourceService, caller: Caller,
                 base_url: str = "http://localhost/fhir", *, ledger: AuditLedger | None = None,
                 operator: str | None = None) -> None:
        self.processor = BundleProcessor(service, base_url)
        self.caller = caller
        self.ledger = ledger
        self.operator = operator or cli_operator()

    def load_file(self, path: Path) -> FileResult:
        started = time.perf_counter()
        result = FileResult(path, ok=False)
        try:
            entries = self._entries(path)
            outcomes = self.processor.transaction(self.caller, entries)
            for outcome in outcomes:
                if outcome.version is not None and not outcome.version.deleted:
                    result.resources[outcome.version.resource_type] += 1
            result.ok = True
        except FhirError as exc:
            result.error, result.status = exc.message, exc.status
        except (OSError, gzip.BadGzipFile) as exc:
            result.error, result.status = f"cannot read the file: {exc}", 500
        except Exception:
            result.status = 500
            self._audit(result)  # a defect: still on the record, then raised
            raise
        result.seconds = time.perf_counter() - started
        self._audit(result)
        return result

    def _audit(self, result: FileResult) -> None:
        if self.ledger is not None:
            # The outcome, not the error text (it can quote the file's contents).
            self.ledger.record(import_event(
                self.operator, str(result.path), result.resources, status=result.status,
                detail="" if result.ok else f"not loaded ({result.status})"))

    def _entries(self, path: Path) -> list[Any]:
        data = _read(path)
        if path.name.endswith((".ndjson", ".ndjson.gz")):
            return list(_ndjson_entries(data))
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise BadRequest("not a FHIR resource")
        if document.get("resourceType") == "Bundle" and document.get("type") in (
            "transaction", "batch"
        ):
            entries = document.get("entry") or []
            if not isinstance(entries, list):
                raise BadRequest("Bundle.entry must be an array")
            return entries
        return list(_ndjson_entries(orjson.dumps(document)))
