"""Transaction and batch bundles (http://hl7.org/fhir/R4/http.html#transaction).

A transaction is all or nothing: every entry runs inside one database transaction, in the
order the spec prescribes (DELETE, POST, PUT/PATCH, GET/HEAD), with ``urn:uuid:`` and other
``fullUrl`` references rewritten to the ids the server assigns. A batch runs each entry on its
own, and each entry gets its own status.

Conditional parts (``ifNoneExist``, conditional URLs ``Type?criteria``, conditional
references such as ``Practitioner?identifier=...``) are resolved by search inside the same
database transaction: first the identities of conditional entries (under the conditional
lock, see :mod:`carebridge.services.conditional`), then conditional references, then the
entries run. Until then, references to those entries stand as placeholders, so each attempt
works on fresh copies and a retried transaction resolves everything again.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import orjson

from carebridge.fhir.errors import (
    BadRequest,
    FhirError,
    Forbidden,
    NotFound,
    NotImplementedYet,
)
from carebridge.fhir.resource import (
    Resource,
    check_resource,
    format_instant,
    new_id,
    rewrite_references,
)
from carebridge.security.policy import Action, Caller, Restriction
from carebridge.services.conditional import ConditionalWrites
from carebridge.services.resources import PendingWrites, ResourceService, WriteResult, check_type
from carebridge.services.search import SearchService, search_bundle
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


def _unrestricted(restriction: Restriction | None) -> None:
    """Bundle entries run unnarrowed (conditional parts search the whole store), so a caller
    confined to a compartment or to granular criteria uses the REST interactions instead."""
    if restriction is not None:
        raise Forbidden("This access token does not permit this entry in a bundle; use the"
                        " REST interaction")


def _placeholder(n: int) -> str:
    """A stand-in reference, shaped like a urn:uuid so every rewrite pass offers it."""
    return f"urn:uuid:00000000-cb00-4000-8000-{n:012d}"


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
    criteria: str | None = None  # conditional URL (PUT/PATCH/DELETE) or search (GET)
    if_none_exist: str | None = None
    placeholder: str | None = None  # stands for this entry's final reference
    pending_refs: bool = False  # its resource holds placeholders
    existing: StoredVersion | None = None  # a conditional create that found its match

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"

    @property
    def conditional(self) -> bool:
        return self.if_none_exist is not None or (
            self.criteria is not None and self.method != "GET")


@dataclass
class Outcome:
    status: str
    version: StoredVersion | None = None
    outcome: dict[str, Any] | None = None
    resource: dict[str, Any] | None = None


class BundleProcessor:
    def __init__(self, service: ResourceService, base_url: str) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.search = SearchService(service)
        self.conditional = ConditionalWrites(service, self.search)

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
            _unrestricted(self.service.policy.authorize(
                caller, _ACTIONS[entry.method], entry.resource_type, entry.resource_id
            ))
        return self._execute(entries, intra_bundle=True)

    def batch(self, caller: Caller, raw_entries: list[Any]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for index, raw in enumerate(raw_entries):
            try:
                entry = self._entry(index, raw)
                _unrestricted(self.service.policy.authorize(
                    caller, _ACTIONS[entry.method], entry.resource_type, entry.resource_id
                ))
                outcome = self._execute([entry], intra_bundle=False)[0]
            except FhirError as exc:
                err = exc if exc.message.startswith("Bundle.entry[") else exc.at(
                    f"Bundle.entry[{index}]")
                outcome = Outcome(
                    f"{exc.status} {HTTPStatus(exc.status).phrase}", outcome=err.outcome()
                )
            outcomes.append(outcome)
        return outcomes

    def _execute(self, entries: list[Entry], *, intra_bundle: bool) -> list[Outcome]:
        """Run entries in one database transaction (the whole bundle, or one batch entry)."""
        references = self._assign_ids(entries, intra_bundle)
        conditional_refs: list[str] = []
        for entry in entries:
            self._rewrite(entry, references, conditional_refs)
        moment = self.service.clock()
        ordered = sorted(entries, key=lambda e: (_METHOD_ORDER[e.method], e.index))

        def work(session: Session, pending: PendingWrites) -> list[Outcome]:
            resolved: dict[str, str] = {}
            for entry in entries:
                try:
                    self._resolve_entry(session, pending, entry, resolved)
                except FhirError as exc:
                    raise exc.at(entry.where) from None
            for n, reference in enumerate(conditional_refs):
                resolved[_placeholder(-n - 1)] = self.conditional.resolve_reference(
                    session, pending, reference)
            results: dict[int, Outcome] = {}
            for entry in ordered:
                try:
                    results[entry.index] = self._run(session, pending, entry, moment,
                                                     resolved)
                except FhirError as exc:
                    raise exc.at(entry.where) from None
            return [results[e.index] for e in entries]

        # Re-running after a lost race is safe unless an entry named the version it
        # expected: then the lost race is that entry's answer (412).
        version_aware = any(e.if_match is not None for e in entries)
        return self.service.run_write(work, retry=not version_aware,
                                      version_aware=version_aware)

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
        for name in ("ifNoneMatch", "ifModifiedSince"):
            if request.get(name):
                raise NotImplementedYet(f"request.{name} is not supported in bundles",
                                        (f"{where}.request.{name}",))
        path = url.removeprefix(self.base_url + "/")
        path, _, criteria = path.partition("?")
        match = _URL.match(path)
        if not match:
            raise BadRequest(f"Cannot interpret request.url {url!r}", (f"{where}.request.url",))
        rtype, rid, vid = match["type"], match["id"], match["vid"]
        check_type(rtype)
        if criteria and (rid is not None or method == "POST"):
            raise BadRequest(f"request.url {url!r}: criteria go with the type only, and not"
                             " with POST (use ifNoneExist)", (f"{where}.request.url",))
        if method == "POST" and rid is not None:
            raise BadRequest("POST goes to the type, e.g. 'Patient'", (f"{where}.request.url",))
        if method in ("PUT", "PATCH", "DELETE") and not criteria and (
            rid is None or vid is not None
        ):
            raise BadRequest(
                f"{method} needs a URL of the form 'Type/id' or 'Type?criteria'",
                (f"{where}.request.url",),
            )
        if_match = _parse_if_match(request.get("ifMatch"), f"{where}.request.ifMatch")
        if_none_exist = request.get("ifNoneExist")
        if if_none_exist is not None and (method != "POST" or not isinstance(if_none_exist, str)):
            raise BadRequest("ifNoneExist goes with POST and is a query string",
                             (f"{where}.request.ifNoneExist",))
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
        return Entry(index, method, rtype, rid, vid, resource, full_url, if_match, patch,
                     criteria or None, if_none_exist or None)

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
            if entry.method in ("PUT", "PATCH", "DELETE"):
                key = (entry.resource_type, entry.resource_id or "?" + (entry.criteria or ""))
                if key in seen_targets:
                    raise BadRequest(
                        f"{key[0]}/{key[1]} is changed by entries {seen_targets[key]} and"
                        f" {entry.index}; a transaction may change a resource once",
                        (f"{entry.where}.request.url",),
                    )
                seen_targets[key] = entry.index

    def _assign_ids(self, entries: list[Entry], intra_bundle: bool) -> dict[str, str]:
        """New ids for POST entries; map every fullUrl to the reference it becomes (a
        placeholder for conditional entries, whose identity a search decides)."""
        references: dict[str, str] = {}
        for entry in entries:
            if entry.method == "POST":
                entry.resource_id = new_id()
            if entry.conditional and entry.method in ("POST", "PUT"):
                entry.placeholder = _placeholder(entry.index)
                target = entry.placeholder
            else:
                target = f"{entry.resource_type}/{entry.resource_id}"
            if intra_bundle and entry.full_url and entry.method in ("POST", "PUT"):
                references[entry.full_url] = target
        return references

    def _rewrite(self, entry: Entry, references: dict[str, str],
                 conditional_refs: list[str]) -> None:
        """Rewrite the entry's references to the ids this bundle assigns.

        A relative reference (``Patient/123``) in an entry whose fullUrl is an absolute RESTful
        URL resolves against that URL's base, so it matches an entry whose fullUrl is
        ``<base>/Patient/123`` (http://hl7.org/fhir/R4/bundle.html#references). Conditional
        references become placeholders, resolved by search inside the transaction.
        """
        if entry.resource is None:
            return
        server_base = self.base_url + "/"
        entry_base = _rest_base(entry.full_url)

        def replace(value: str) -> str | None:
            found = references.get(value)
            if found is None and entry_base and _RELATIVE.match(value):
                found = references.get(entry_base + value)
            if found is None and _CONDITIONAL_REFERENCE.match(value):
                if value not in conditional_refs:
                    conditional_refs.append(value)
                found = _placeholder(-conditional_refs.index(value) - 1)
            if found is not None:
                if found.startswith("urn:uuid:00000000-cb00-"):
                    entry.pending_refs = True
                return found
            if value.startswith(server_base):
                return value[len(server_base):]
            if value.startswith("urn:uuid:"):
                raise BadRequest(
                    f"Reference {value!r} does not match the fullUrl of any entry in this bundle",
                    (f"{entry.where}.resource",),
                )
            return None

        rewrite_references(entry.resource, replace)

    # ---------------------------------------------------------------- execution

    def _resolve_entry(self, session: Session, pending: PendingWrites, entry: Entry,
                       resolved: dict[str, str]) -> None:
        """Decide the identity of a conditional entry by search (under the conditional lock)."""
        if not entry.conditional:
            return
        cw = self.conditional
        rtype = entry.resource_type
        criteria = entry.if_none_exist or entry.criteria or ""
        found = cw._one(cw.matches(session, pending, rtype, criteria), rtype, criteria)
        entry.existing = None
        if entry.method == "POST":
            if found is not None:
                entry.existing = session.read(rtype, found)
                entry.resource_id = found
        elif entry.method == "PUT":
            assert entry.resource is not None
            body_id = entry.resource.get("id")
            if found is not None and body_id is not None and body_id != found:
                raise BadRequest(f"The body's id {body_id!r} is not the id of the resource "
                                 f"the criteria select ({found!r})", ("resource.id",))
            entry.resource_id = found or body_id or entry.resource_id or new_id()
        elif entry.method == "PATCH":
            if found is None:
                raise NotFound(f"No {rtype} matches {criteria!r}")
            entry.resource_id = found
        else:  # DELETE
            entry.resource_id = found
        if entry.placeholder is not None:
            resolved[entry.placeholder] = f"{rtype}/{entry.resource_id}"

    def _effective(self, entry: Entry, resolved: dict[str, str]) -> Resource:
        assert entry.resource is not None
        if not entry.pending_refs:
            return entry.resource
        # The placeholders are whole JSON strings of our own making, so they are replaced in
        # the serialised resource (a copy, like the walk of every element it replaces).
        raw = orjson.dumps(entry.resource)
        for placeholder, target in resolved.items():
            quoted = b'"' + placeholder.encode("ascii") + b'"'
            if quoted in raw:
                raw = raw.replace(quoted, orjson.dumps(target))
        copy: Resource = orjson.loads(raw)
        return copy

    def _run(
        self, session: Session, pending: PendingWrites, entry: Entry, moment: datetime,
        resolved: dict[str, str],
    ) -> Outcome:
        service = self.service
        rid = entry.resource_id
        result: WriteResult | None
        if entry.method == "POST":
            if entry.existing is not None:
                return Outcome("200 OK", entry.existing)
            assert rid is not None
            result = service.create_in(pending, self._effective(entry, resolved), rid, moment)
        elif entry.method == "PUT":
            assert rid is not None
            resource = self._effective(entry, resolved)
            if entry.conditional:  # the search chose the id
                resource = {**resource, "id": rid}
            result = service.update_in(session, pending, resource, rid, moment, entry.if_match)
        elif entry.method == "PATCH":
            assert rid is not None
            result = service.patch_in(
                session, pending, entry.resource_type, rid, entry.patch, moment, entry.if_match
            )
        elif entry.method == "DELETE":
            if rid is None:
                return Outcome("204 No Content")
            result = service.delete_in(
                session, pending, entry.resource_type, rid, moment, entry.if_match
            )
            return Outcome("204 No Content", result.version if result else None)
        else:
            pending.flush(session)  # a read sees the transaction's own writes
            if entry.criteria is not None or rid is None:
                return self._search(session, entry)
            found = (
                service.vread_in(session, entry.resource_type, rid, entry.version_id)
                if entry.version_id
                else service.read_in(session, entry.resource_type, rid)
            )
            return Outcome("200 OK", found)
        # Validation warnings ride along as the entry's response.outcome.
        return Outcome(_STATUS_TEXT[result.status], result.version, result.outcome())

    def _search(self, session: Session, entry: Entry) -> Outcome:
        from carebridge.search.query import parse_query

        params = parse_qsl(entry.criteria or "", keep_blank_values=True)
        query = parse_query(entry.resource_type, params)
        result = self.search.run(session, query, None)
        path = f"{self.base_url}/{entry.resource_type}"
        return Outcome("200 OK", resource=search_bundle(result, self.base_url, path))

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
            if outcome.resource is not None:
                entry["resource"] = outcome.resource
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
