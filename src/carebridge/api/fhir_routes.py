"""FHIR REST interactions at ``/fhir`` (http://hl7.org/fhir/R4/http.html).

Each handler: check the format, read parameters, call the service in a worker thread (the
service and storage are synchronous), shape the HTTP answer. Errors propagate as exceptions to
:mod:`carebridge.api.errors`.

Reads by id and version on SQLite are the exception: they run on the event loop. Such a read
is a primary-key look-up in the server's own process (~40 us of work), while handing it to a
worker thread and back cost ~170 us on this 2-core machine (two cross-thread wake-ups and GIL
hand-offs; a bare hop ~90-100 us): GET by id went from 0.21 to 0.04 ms in process. Everything
whose cost depends on the data (searches, history, writes) and every PostgreSQL call (which
waits on the network, when the loop should serve others) keeps the worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from carebridge.api import negotiation as neg
from carebridge.api.responses import fhir_json, version_headers
from carebridge.fhir.errors import (
    BadRequest,
    NotFound,
    NotImplementedYet,
    UnsupportedMediaType,
    information,
)
from carebridge.fhir.resource import format_instant, parse_instant, parse_json
from carebridge.fhir.subsetting import select_elements, summarize
from carebridge.security.policy import Caller
from carebridge.services.bundles import BundleProcessor
from carebridge.services.conditional import ConditionalWrites
from carebridge.services.everything import Everything, everything_bundle
from carebridge.services.resources import ResourceService, WriteResult, check_type
from carebridge.services.search import SearchService, search_bundle
from carebridge.services.validation import validate_operation
from carebridge.storage.base import HistoryPage, StoredVersion

_COMPARTMENTS = {"Patient", "Encounter", "RelatedPerson", "Practitioner", "Device"}
_METHOD_STATUS = {"POST": "201 Created", "PUT": "200 OK", "PATCH": "200 OK",
                  "DELETE": "204 No Content"}


class FhirRoutes:
    def __init__(self, service: ResourceService, *, max_body_bytes: int,
                 default_count: int = 50, max_count: int = 1000) -> None:
        self.service = service
        self.search_service = SearchService(service, max_count=max_count)
        self.conditional = ConditionalWrites(service, self.search_service)
        self.max_body_bytes = max_body_bytes
        self.default_count = default_count
        self.max_count = max_count
        self.inline_reads = service.repository.dialect == "sqlite"  # see the module doc

    # ------------------------------------------------------------ helpers

    @staticmethod
    def base_url(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}/fhir"

    @staticmethod
    def caller(request: Request) -> Caller:
        caller = request.scope.get("carebridge.caller")
        if isinstance(caller, Caller):
            return caller
        client = request.client
        return Caller("anonymous", remote_addr=client.host if client else None)

    def _resource_response(
        self, request: Request, version: StoredVersion, status: int = 200,
        extra: dict[str, str] | None = None,
    ) -> Response:
        headers = version_headers(version)
        if extra:
            headers.update(extra)
        assert version.body is not None
        mode = neg.summary_mode(request)
        elements = request.query_params.get("_elements")
        pretty = neg.pretty(request)
        if mode == "count":
            raise BadRequest("_summary=count applies to searches, not reads", ("_summary",))
        if mode not in (None, "false") or elements:
            resource = orjson.loads(version.body)
            if mode not in (None, "false"):
                resource = summarize(resource, mode)
            if elements:
                resource = select_elements(resource, elements.split(","))
            return fhir_json(resource, status, headers, pretty=pretty)
        return fhir_json(version.body, status, headers, pretty=pretty)

    def _write_response(self, request: Request, result: WriteResult) -> Response:
        version = result.version
        location = (f"{self.base_url(request)}/{version.resource_type}/{version.id}"
                    f"/_history/{version.version}")
        headers = version_headers(version)
        if result.status == 201:
            headers["Location"] = location
        else:
            headers["Content-Location"] = location
        preference = neg.prefer(request).return_
        if preference == "minimal":
            return Response(status_code=result.status, headers=headers)
        if preference == "OperationOutcome":
            verb = "created" if result.status == 201 else (
                "updated" if result.changed else "unchanged (same content)")
            message = f"{version.resource_type}/{version.id} {verb}, version {version.version}"
            outcome = information(message)
            outcome["issue"] += [issue.to_json() for issue in result.issues]  # warnings
            return fhir_json(outcome, result.status, headers, pretty=neg.pretty(request))
        return self._resource_response(request, version, result.status, headers)

    async def validate(self, request: Request) -> Response:
        """``$validate`` at type and instance level
        (http://hl7.org/fhir/R4/resource-operation-validate.html): 200 with an
        OperationOutcome listing every issue; ``mode`` and ``profile`` from the query or a
        Parameters body."""
        neg.check_accept(request)
        p = request.path_params
        check_type(p["type"])
        raw = await neg.read_body(request, self.max_body_bytes)
        body = parse_json(raw) if raw.strip() else None
        q = request.query_params
        outcome = await run_in_threadpool(
            validate_operation, self.service, self.caller(request), p["type"], body,
            p.get("id"), q.get("mode"), q.get("profile"))
        return fhir_json(outcome, pretty=neg.pretty(request))

    async def everything(self, request: Request) -> Response:
        """``Patient/[id]/$everything`` (services/everything.py): GET with query parameters,
        or POST with a Parameters resource (or a form)."""
        neg.check_accept(request)
        params = [(k, v) for k, v in request.query_params.multi_items()
                  if k not in ("_format", "_pretty")]
        if request.method == "POST":
            raw = await neg.read_body_raw(request, self.max_body_bytes)
            if raw.strip():
                params += _operation_parameters(parse_json(raw))
        page = await run_in_threadpool(
            Everything(self.search_service).run, self.caller(request),
            request.path_params["id"], params)
        base = self.base_url(request)
        path = f"{base}{request.url.path.removeprefix('/fhir')}"
        return fhir_json(everything_bundle(page, base, path), pretty=neg.pretty(request))

    # ------------------------------------------------------------ instance level

    async def _read(self, read: Callable[..., StoredVersion], *args: Any) -> StoredVersion:
        if self.inline_reads:
            return read(*args)
        return await run_in_threadpool(read, *args)

    async def read(self, request: Request) -> Response:
        neg.check_accept(request)
        rtype, rid = request.path_params["type"], request.path_params["id"]
        version = await self._read(self.service.read, self.caller(request), rtype, rid)
        if neg.not_modified(request, version.version, version.last_updated):
            return Response(status_code=304, headers=version_headers(version))
        return self._resource_response(request, version)

    async def vread(self, request: Request) -> Response:
        neg.check_accept(request)
        p = request.path_params
        version = await self._read(
            self.service.vread, self.caller(request), p["type"], p["id"], p["vid"])
        return self._resource_response(request, version)

    async def create(self, request: Request) -> Response:
        neg.check_accept(request)
        body = await neg.read_body(request, self.max_body_bytes)
        rtype = request.path_params["type"]
        criteria = request.headers.get("if-none-exist")
        if criteria:
            result = await run_in_threadpool(
                self.conditional.create, self.caller(request), rtype, body, criteria)
        else:
            result = await run_in_threadpool(
                self.service.create, self.caller(request), rtype, body)
        return self._write_response(request, result)

    async def update(self, request: Request) -> Response:
        neg.check_accept(request)
        body = await neg.read_body(request, self.max_body_bytes)
        p = request.path_params
        result = await run_in_threadpool(
            lambda: self.service.update(self.caller(request), p["type"], p["id"], body,
                                        if_match=neg.if_match(request)))
        return self._write_response(request, result)

    async def patch(self, request: Request) -> Response:
        neg.check_accept(request)
        body = await neg.read_body(request, self.max_body_bytes, patch=True)
        p = request.path_params
        result = await run_in_threadpool(
            lambda: self.service.patch(self.caller(request), p["type"], p["id"], body,
                                       if_match=neg.if_match(request)))
        return self._write_response(request, result)

    async def conditional_update(self, request: Request) -> Response:
        """``PUT /fhir/Type?criteria`` (http://hl7.org/fhir/R4/http.html#cond-update)."""
        neg.check_accept(request)
        body = await neg.read_body(request, self.max_body_bytes)
        criteria = self._criteria(request)
        result = await run_in_threadpool(
            self.conditional.update, self.caller(request), request.path_params["type"],
            criteria, body)
        return self._write_response(request, result)

    async def conditional_delete(self, request: Request) -> Response:
        """``DELETE /fhir/Type?criteria``: one match is deleted, several answer 412."""
        neg.check_accept(request)
        rtype = request.path_params["type"]
        criteria = self._criteria(request)
        result = await run_in_threadpool(
            self.conditional.delete, self.caller(request), rtype, criteria)
        headers = version_headers(result.version) if result else {}
        return Response(status_code=204, headers=headers)

    @staticmethod
    def _criteria(request: Request) -> str:
        params = [(k, v) for k, v in request.query_params.multi_items()
                  if k not in ("_format", "_pretty")]
        if not params:
            raise BadRequest("A conditional update or delete needs search criteria in the URL")
        return urlencode(params)

    async def delete(self, request: Request) -> Response:
        neg.check_accept(request)
        p = request.path_params
        result = await run_in_threadpool(
            lambda: self.service.delete(self.caller(request), p["type"], p["id"],
                                        if_match=neg.if_match(request)))
        headers = version_headers(result.version) if result else {}
        if neg.prefer(request).return_ == "OperationOutcome":
            text = (f"{p['type']}/{p['id']} deleted" if result
                    else f"{p['type']}/{p['id']} did not exist or was already deleted")
            return fhir_json(information(text), 200, headers)
        return Response(status_code=204, headers=headers)

    async def search(self, request: Request) -> Response:
        """Type, system and compartment search; GET, or POST to ``_search`` with a form."""
        neg.check_accept(request)
        p = request.path_params
        params = list(request.query_params.multi_items())
        if request.method == "POST":
            ctype = request.headers.get("content-type", "").split(";")[0].strip()
            if ctype not in ("application/x-www-form-urlencoded", ""):
                raise UnsupportedMediaType(
                    "POST _search takes application/x-www-form-urlencoded parameters")
            body = await neg.read_body_raw(request, self.max_body_bytes)
            params += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        # A reference to this server written absolutely is the same as the relative one.
        own = self.base_url(request) + "/"
        params = [(k, v.replace(own, "")) for k, v in params if k not in ("_format", "_pretty")]
        compartment = None
        rtype: str | None = p.get("type")
        if "compartment" in p:
            compartment = (p["compartment"], p["id"])
            check_type(p["compartment"])
            if p["compartment"] not in _COMPARTMENTS:
                raise NotFound(f"{p['compartment']} is not a compartment")
            rtype = None if p["type"] == "*" else p["type"]
        strict = neg.prefer(request).handling == "strict"
        result = await run_in_threadpool(
            lambda: self.search_service.search(self.caller(request), rtype, params,
                                               strict=strict, compartment=compartment))
        base = self.base_url(request)
        path = f"{base}{request.url.path.removeprefix('/fhir').removesuffix('/_search')}"
        return fhir_json(search_bundle(result, base, path), pretty=neg.pretty(request))

    # ------------------------------------------------------------ bundles

    async def bundle(self, request: Request) -> Response:
        neg.check_accept(request)
        body = await neg.read_body(request, self.max_body_bytes)
        bundle = parse_json(body)
        processor = BundleProcessor(self.service, self.base_url(request))
        representation = neg.prefer(request).return_ == "representation" and (
            "return=representation" in request.headers.get("prefer", ""))
        response = await run_in_threadpool(
            lambda: processor.process(self.caller(request), bundle,
                                      representation=representation))
        return fhir_json(response, pretty=neg.pretty(request))

    # ------------------------------------------------------------ history

    async def history(self, request: Request) -> Response:
        neg.check_accept(request)
        rtype = request.path_params.get("type")
        rid = request.path_params.get("id")
        q = request.query_params
        for unsupported in ("_at", "_list"):
            if unsupported in q:
                raise NotImplementedYet(f"{unsupported} is not supported on _history",
                                        (unsupported,))
        since = parse_instant(q["_since"]) if "_since" in q else None
        count = neg.count(request, self.default_count, self.max_count)
        before, after = _cursor(q.get("_cursor"))
        page: HistoryPage = await run_in_threadpool(
            lambda: self.service.history(
                self.caller(request), rtype, rid, since=since, before_seq=before,
                after_seq=after, count=count + 1, with_total=True))
        base = self.base_url(request)
        path = "/".join(x for x in (base, rtype, rid, "_history") if x)
        bundle = history_bundle(page, base, path, since, count, before, after)
        return fhir_json(bundle, pretty=neg.pretty(request))


def _cursor(raw: str | None) -> tuple[int | None, int | None]:
    if raw is None:
        return None, None
    kind, _, seq = raw.partition(":")
    if kind not in ("before", "after") or not seq.isdigit():
        raise BadRequest(f"Invalid _cursor {raw!r}; use the links the server gave",
                         ("_cursor",))
    return (int(seq), None) if kind == "before" else (None, int(seq))


def history_bundle(
    page: HistoryPage, base: str, path: str, since: datetime | None, count: int,
    before: int | None, after: int | None,
) -> dict[str, Any]:
    """A ``history`` Bundle, newest first, with keyset ``next``/``previous`` links.

    ``page`` holds up to ``count + 1`` rows (see below).
    """
    params: dict[str, str] = {"_count": str(count)}
    if since is not None:
        params["_since"] = format_instant(since)

    def link(relation: str, cursor: str | None) -> dict[str, str]:
        query = dict(params)
        if cursor is not None:
            query["_cursor"] = cursor
        return {"relation": relation, "url": f"{path}?{urlencode(query)}"}

    cursor_now = f"before:{before}" if before is not None else (
        f"after:{after}" if after is not None else None)
    # The page was fetched with one row more than asked for: that row says whether there is
    # more in the direction of travel, so no link ever leads to an empty page.
    rows = page.entries
    more = len(rows) > count
    if more:
        rows = rows[1:] if after is not None else rows[:-1]
    links = [link("self", cursor_now), link("first", None)]
    if rows:
        older = more if after is None else True
        newer = before is not None or (after is not None and more)
        if older:
            links.append(link("next", f"before:{rows[-1][0]}"))
        if newer:
            links.append(link("previous", f"after:{rows[0][0]}"))
    entries = []
    for _, version in rows:
        ref = f"{version.resource_type}/{version.id}"
        entry: dict[str, Any] = {"fullUrl": f"{base}/{ref}"}
        if version.body is not None:
            entry["resource"] = orjson.Fragment(version.body)
        entry["request"] = {
            "method": "POST" if version.method == "POST" else version.method,
            "url": version.resource_type if version.method == "POST" else ref,
        }
        entry["response"] = {
            "status": _METHOD_STATUS[version.method],
            "etag": f'W/"{version.version}"',
            "lastModified": format_instant(version.last_updated),
        }
        entries.append(entry)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history"}
    if page.total is not None:
        bundle["total"] = page.total
    bundle["link"] = links
    if entries:  # FHIR JSON arrays are never empty
        bundle["entry"] = entries
    return bundle


def _operation_parameters(body: Any) -> list[tuple[str, str]]:
    """A Parameters resource's primitive parameters as (name, value) pairs."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("The body of an operation is a Parameters resource", ("resourceType",))
    pairs = []
    for n, parameter in enumerate(body.get("parameter") or []):
        values = [v for k, v in (parameter or {}).items() if k.startswith("value")]
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str) or (
                len(values) != 1 or isinstance(values[0], dict | list)):
            raise BadRequest("Each parameter needs a name and one primitive value[x]",
                             (f"Parameters.parameter[{n}]",))
        value = values[0]
        pairs.append((parameter["name"], str(value).lower() if isinstance(value, bool)
                      else str(value)))
    return pairs
