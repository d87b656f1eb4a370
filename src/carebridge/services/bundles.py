"""Transaction and batch bundles (http://hl7.org/fhir/R4/http.html#transaction).

A transaction is all or nothing: every entry runs inside one database transaction, in the
order the spec prescribes (DELETE, POST, PUT/PATCH, GET/HEAD), with ``urn:uuid:`` and other
``fullUrl`` references rewritten to the ids the server assigns. A batch runs each entry on its
own, and each entry gets its own status.

Conditional parts (``ifNoneExist``, conditional URLs, conditional references such as
``Practitioner?identifier=...``) need search; until search lands they are refused with 501,
never silently accepted.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from typing import Any

import orjson

from carebridge.fhir.errors import (
    BadRequest,
    FhirError,
    NotImplementedYet,
)
from carebridge.fhir.resource import (
    Resource,
    check_resource,
    format_instant,
    new_id,
    rewrite_references,
)
from carebridge.security.policy import Action, Caller
from carebridge.services.resources import (
    PendingWrites,
    ResourceService,
    WriteResult,
    check_type,
)
from carebridge.storage.base import Session, StoredVersion

_METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_ACTIONS = {
    "DELETE": Action.DELETE, "POST": Action.CREATE, "PUT": Action.UPDATE,
    "PATCH": Action.PATCH, "GET": Action.READ, "HEAD": Action.READ,
}
_CONDITIONAL_REFERENCE = re.compile(r"^[A-Z][A-Za-z]+\?")
_URL = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)(?:/(?P<id>[^/?]+)(?:/_history/(?P<vid>[^/?]+))?)?$")
_RELATIVE = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]+)?$")
_ABSOLUTE = re.compile(r"^(?P<base>https?://.+/)[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")
_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


@dataclass
class Entry:
    """One checked bundle entry."""

    index: int
    method: str
    resource_type: str
    resource_id: str | None
    version_id: str | None
    resource: Resource | None
    full_url: str | None
    if_match: int | None
    patch: Any = None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


@dataclass
class Outcome:
    status: str
    version: StoredVersion | None = None
    outcome: dict[str, Any] | None = None


class BundleProcessor:
    def __init__(self, service: ResourceService, base_url: str) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")

    # ---------------------------------------------------------------- entry points

    def process(
        self, caller: Caller, bundle: Any, *, representation: bool = False
    ) -> dict[str, Any]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise BadRequest("POST to the base URL takes a Bundle", ("resourceType",))
        kind = bundle.get("type")
        if kind not in ("transaction", "batch"):
            raise BadRequest(
                f"Bundle.type must be 'transaction' or 'batch' to be processed, not {kind!r}",
                ("Bundle.type",),
            )
        raw_entries = bundle.get("entry") or []
        if not isinstance(raw_entries, list):
            raise BadRequest("Bundle.entry must be an array", ("Bundle.entry",))
        if kind == "transaction":
            self.service.policy.authorize(caller, Action.TRANSACTION, None)
            outcomes = self.transaction(caller, raw_entries)
        else:
            self.service.policy.authorize(caller, Action.BATCH, None)
            outcomes = self.batch(caller, raw_entries)
        return self._response(f"{kind}-response", outcomes, representation)

    def transaction(self, caller: Caller, raw_entries: list[Any]) -> list[Outcome]:
        entries = [self._entry(i, raw) for i, raw in enumerate(raw_entries)]
        self._check_identities(entries)
        for entry in entries:
            self.service.policy.authorize(
                caller, _ACTIONS[entry.method], entry.resource_type, entry.resource_id
            )
        references = self._assign_ids(entries)
        for entry in entries:
            self._rewrite(entry, references, unresolved_is_error=True)
        moment = self.service.clock()
        ordered = sorted(entries, key=lambda e: (_METHOD_ORDER[e.method], e.index))

        def work(session: Session, pending: PendingWrites) -> list[Outcome]:
            results: dict[int, Outcome] = {}
            for entry in ordered:
                try:
                    results[entry.index] = self._run(session, pending, entry, moment)
                except FhirError as exc:
                    raise exc.at(entry.where) from None
            return [results[i] for i in range(len(entries))]

        # Re-running the whole bundle after a lost race is safe unless an entry named the
        # version it expected: then the lost race is that entry's answer (412).
        version_aware = any(e.if_match is not None for e in entries)
        return self.service.run_write(work, retry=not version_aware,
                                      version_aware=version_aware)

    def batch(self, caller: Caller, raw_entries: list[Any]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for index, raw in enumerate(raw_entries):
            try:
                entry = self._entry(index, raw)
                self.service.policy.authorize(
                    caller, _ACTIONS[entry.method], entry.resource_type, entry.resource_id
                )
                if entry.method == "POST":
                    entry.resource_id = new_id()
                self._rewrite(entry, {}, unresolved_is_error=True)
                moment = self.service.clock()
                outcome = self.service.run_write(
                    lambda s, p, e=entry, m=moment: self._run(s, p, e, m),  # type: ignore[misc]
                    retry=entry.if_match is None,
                )
            except FhirError as exc:
                err = exc.at(f"Bundle.entry[{index}]")
                outcome = Outcome(
                    f"{exc.status} {HTTPStatus(exc.status).phrase}", outcome=err.outcome()
                )
            outcomes.append(outcome)
        return outcomes

    # ---------------------------------------------------------------- parsing

    def _entry(self, index: int, raw: Any) -> Entry:
        where = f"Bundle.entry[{index}]"
        if not isinstance(raw, dict):
            raise BadRequest("A bundle entry must be an object", (where,))
        request = raw.get("request")
        if not isinstance(request, dict):
            raise BadRequest("The entry has no request", (f"{where}.request",))
        method = request.get("method")
        if method not in _METHOD_ORDER:
            raise BadRequest(
                f"Unsupported request.method {method!r}", (f"{where}.request.method",)
            )
        url = request.get("url")
        if not isinstance(url, str) or not url:
            raise BadRequest("The entry has no request.url", (f"{where}.request.url",))
        for name in ("ifNoneExist", "ifNoneMatch", "ifModifiedSince"):
            if request.get(name):
                raise NotImplementedYet(
                    f"request.{name} (a conditional interaction) needs search, which this"
                    " server does not support yet",
                    (f"{where}.request.{name}",),
                )
        path = url.removeprefix(self.base_url + "/")
        if "?" in path:
            raise NotImplementedYet(
                f"Conditional or search URL {url!r} needs search, which this server does not"
                " support yet",
                (f"{where}.request.url",),
            )
        match = _URL.match(path)
        if not match:
            raise BadRequest(f"Cannot interpret request.url {url!r}", (f"{where}.request.url",))
        rtype, rid, vid = match["type"], match["id"], match["vid"]
        check_type(rtype)
        if method == "POST" and rid is not None:
            raise BadRequest("POST goes to the type, e.g. 'Patient'", (f"{where}.request.url",))
        if method in ("PUT", "PATCH", "DELETE") and (rid is None or vid is not None):
            raise BadRequest(
                f"{method} needs a URL of the form 'Type/id'", (f"{where}.request.url",)
            )
        if method in ("GET", "HEAD") and rid is None:
            raise NotImplementedYet(
                "Search in a bundle entry needs search, which this server does not support yet",
                (f"{where}.request.url",),
            )
        if_match = _parse_if_match(request.get("ifMatch"), f"{where}.request.ifMatch")
        resource = raw.get("resource")
        patch = None
        if method in ("POST", "PUT"):
            resource = check_resource(resource, rtype, f"{where}.resource")
        elif method == "PATCH":
            patch = _patch_from(resource, f"{where}.resource")
            resource = None
        full_url = raw.get("fullUrl")
        if full_url is not None and not isinstance(full_url, str):
            raise BadRequest("fullUrl must be a string", (f"{where}.fullUrl",))
        return Entry(index, method, rtype, rid, vid, resource, full_url, if_match, patch)

    def _check_identities(self, entries: list[Entry]) -> None:
        seen_urls: dict[str, int] = {}
        seen_targets: dict[tuple[str, str], int] = {}
        for entry in entries:
            if entry.full_url:
                if entry.full_url in seen_urls:
                    raise BadRequest(
                        f"fullUrl {entry.full_url!r} appears in entries"
                        f" {seen_urls[entry.full_url]} and {entry.index}",
                        (f"{entry.where}.fullUrl",),
                    )
                seen_urls[entry.full_url] = entry.index
            if entry.method in ("PUT", "PATCH", "DELETE") and entry.resource_id:
                key = (entry.resource_type, entry.resource_id)
                if key in seen_targets:
                    raise BadRequest(
                        f"{key[0]}/{key[1]} is changed by entries {seen_targets[key]} and"
                        f" {entry.index}; a transaction may change a resource once",
                        (f"{entry.where}.request.url",),
                    )
                seen_targets[key] = entry.index

    def _assign_ids(self, entries: list[Entry]) -> dict[str, str]:
        """New ids for POST entries; map every fullUrl to the local reference it becomes."""
        references: dict[str, str] = {}
        for entry in entries:
            if entry.method == "POST":
                entry.resource_id = new_id()
            if entry.full_url and entry.resource_id and entry.method in ("POST", "PUT"):
                references[entry.full_url] = f"{entry.resource_type}/{entry.resource_id}"
        return references

    def _rewrite(
        self, entry: Entry, references: dict[str, str], *, unresolved_is_error: bool
    ) -> None:
        """Rewrite the entry's references to the ids this bundle assigns.

        A relative reference (``Patient/123``) in an entry whose fullUrl is an absolute RESTful
        URL resolves against that URL's base, so it matches an entry whose fullUrl is
        ``<base>/Patient/123`` (http://hl7.org/fhir/R4/bundle.html#references).
        """
        if entry.resource is None:
            return
        server_base = self.base_url + "/"
        entry_base = _rest_base(entry.full_url)

        def replace(value: str) -> str | None:
            if value in references:
                return references[value]
            if entry_base and _RELATIVE.match(value) and entry_base + value in references:
                return references[entry_base + value]
            if _CONDITIONAL_REFERENCE.match(value):
                raise NotImplementedYet(
                    f"Conditional reference {value!r} needs search, which this server does not"
                    " support yet",
                    (f"{entry.where}.resource",),
                )
            if value.startswith(server_base):
                return value[len(server_base):]
            if unresolved_is_error and value.startswith("urn:uuid:"):
                raise BadRequest(
                    f"Reference {value!r} does not match the fullUrl of any entry in this bundle",
                    (f"{entry.where}.resource",),
                )
            return None

        rewrite_references(entry.resource, replace)

    # ---------------------------------------------------------------- execution

    def _run(
        self, session: Session, pending: PendingWrites, entry: Entry, moment: datetime
    ) -> Outcome:
        service = self.service
        rid = entry.resource_id
        assert rid is not None
        result: WriteResult | None
        if entry.method == "POST":
            assert entry.resource is not None
            result = service.create_in(pending, entry.resource, rid, moment)
        elif entry.method == "PUT":
            assert entry.resource is not None
            result = service.update_in(
                session, pending, entry.resource, rid, moment, entry.if_match
            )
        elif entry.method == "PATCH":
            result = service.patch_in(
                session, pending, entry.resource_type, rid, entry.patch, moment, entry.if_match
            )
        elif entry.method == "DELETE":
            result = service.delete_in(
                session, pending, entry.resource_type, rid, moment, entry.if_match
            )
            return Outcome("204 No Content", result.version if result else None)
        else:
            pending.flush(session)  # a read sees the transaction's own writes
            found = (
                service.vread_in(session, entry.resource_type, rid, entry.version_id)
                if entry.version_id
                else service.read_in(session, entry.resource_type, rid)
            )
            return Outcome("200 OK", found)
        return Outcome(_STATUS_TEXT[result.status], result.version)

    # ---------------------------------------------------------------- response

    def _response(
        self, kind: str, outcomes: list[Outcome], representation: bool
    ) -> dict[str, Any]:
        entries = []
        for outcome in outcomes:
            response: dict[str, Any] = {"status": outcome.status}
            entry: dict[str, Any] = {}
            version = outcome.version
            if version is not None:
                ref = f"{version.resource_type}/{version.id}"
                entry["fullUrl"] = f"{self.base_url}/{ref}"
                if not version.deleted:
                    response["location"] = f"{ref}/_history/{version.version}"
                response["etag"] = f'W/"{version.version}"'
                response["lastModified"] = format_instant(version.last_updated)
                if representation and version.body is not None:
                    entry["resource"] = orjson.Fragment(version.body)
            if outcome.outcome is not None:
                response["outcome"] = outcome.outcome
            entry["response"] = response
            entries.append(entry)
        return {"resourceType": "Bundle", "type": kind, "entry": entries}


def _rest_base(full_url: str | None) -> str | None:
    """``http://x.org/fhir/Patient/1`` -> ``http://x.org/fhir/``; None for urn: fullUrls."""
    match = _ABSOLUTE.match(full_url or "")
    return match["base"] if match else None


def _parse_if_match(value: Any, where: str) -> int | None:
    if value is None:
        return None
    version = parse_etag(value) if isinstance(value, str) else None
    if version is None:
        raise BadRequest(f"ifMatch {value!r} is not an ETag such as W/\"3\"", (where,))
    return version


def parse_etag(value: str) -> int | None:
    """``W/"3"`` or ``"3"`` -> 3; anything else -> None."""
    text = value.strip().removeprefix("W/").strip('"')
    return int(text) if text.isdigit() else None


def _patch_from(resource: Any, where: str) -> Any:
    """A PATCH entry carries a Binary whose data is a base64 JSON Patch document."""
    if isinstance(resource, dict) and resource.get("resourceType") == "Binary":
        if resource.get("contentType") != "application/json-patch+json":
            raise BadRequest(
                "A PATCH entry's Binary must have contentType application/json-patch+json",
                (f"{where}.contentType",),
            )
        try:
            return orjson.loads(base64.b64decode(resource.get("data", ""), validate=True))
        except (ValueError, orjson.JSONDecodeError):
            raise BadRequest("Binary.data is not base64 JSON", (f"{where}.data",)) from None
    if isinstance(resource, dict) and resource.get("resourceType") == "Parameters":
        raise NotImplementedYet("FHIRPath Patch is not supported; use JSON Patch", (where,))
    raise BadRequest("A PATCH entry needs a Binary with a JSON Patch", (where,))

