"""``Patient/[id]/$everything`` (http://hl7.org/fhir/R4/patient-operation-everything.html).

The patient, every resource in the patient's compartment (the R4 CompartmentDefinition
``Patient``) and the resources those reference (``_include=*``: practitioners,
organizations, medications, locations...), as a ``searchset`` Bundle read page by page.

It is built from compartment searches, one resource type after another (the Patient first,
then the compartment's types in alphabetical order), so everything a search guarantees holds
here too: the access policy narrows each search in its SQL (a patient-context token reaches
only its own compartment, a granular scope its criteria), included resources pass through
the policy like a search's, and a type the caller may not search is left out rather than
refusing the whole operation. A patient the caller may not read answers 404, exactly like a
missing one.

Parameters (R4): ``start`` and ``end`` bound care dates: they filter the types whose ``date``
parameter is the shared clinical date (``SearchParameter/clinical-date``: Observation,
Encounter, Procedure, DiagnosticReport...), as ``date=ge[start]`` and ``date=le[end]``;
resources of other types have no care date a server can compare and are all returned.
``_since`` keeps resources changed since an instant (``_lastUpdated=ge``), ``_type`` names
the types wanted, ``_count`` the page size. Other parameters are refused (400).

Paging: the ``next`` link carries an opaque ``_cursor``: which type the page stopped in and
that type's own search cursor, so a page deep into the record costs what a deep search page
costs (keyset, not offset).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from carebridge.fhir import registry
from carebridge.fhir.errors import BadRequest, Forbidden
from carebridge.search.values import date_range
from carebridge.security.policy import Action, Caller
from carebridge.services.search import Match, SearchService

CLINICAL_DATE = "http://hl7.org/fhir/SearchParameter/clinical-date"
_ACCEPTED = frozenset({"start", "end", "_since", "_type", "_count", "_cursor"})


def patient_types() -> list[str]:
    """The Patient first, then the other types of the Patient compartment, by name."""
    definition = registry.compartment_definition("Patient")
    types = sorted(r["code"] for r in definition.get("resource", []) if r.get("param"))
    return ["Patient", *[t for t in types if t != "Patient"]]


def _has_clinical_date(resource_type: str) -> bool:
    parameter = registry.search_parameters_for(resource_type).get("date")
    return parameter is not None and parameter.get("url") == CLINICAL_DATE


def _encode(index: int, inner: str | None) -> str:
    raw = orjson.dumps([index, inner])
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode(cursor: str, types: int) -> tuple[int, str | None]:
    try:
        index, inner = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise BadRequest("Invalid _cursor; use the links the server gave", ("_cursor",)) from None
    if not isinstance(index, int) or not 0 <= index <= types or not (
            inner is None or isinstance(inner, str)):
        raise BadRequest("Invalid _cursor; use the links the server gave", ("_cursor",))
    return index, inner


@dataclass
class Page:
    entries: list[Match]
    repeat: list[tuple[str, str]]  # the parameters every link repeats
    cursor: str | None  # this page's
    next_cursor: str | None


class Everything:
    """Runs ``$everything`` for one caller and patient (see module doc)."""

    def __init__(self, search: SearchService) -> None:
        self.search = search

    def run(self, caller: Caller, patient_id: str, params: list[tuple[str, str]]) -> Page:
        """One page: its matches, then the resources they reference."""
        values: dict[str, str] = {}
        for name, value in params:
            if name not in _ACCEPTED:
                raise BadRequest(f"$everything has no parameter {name!r} (start, end, _since,"
                                 " _type, _count)", (name,))
            if name in values:
                raise BadRequest(f"$everything takes {name} once", (name,))
            values[name] = value
        for name in ("start", "end"):
            if name in values and date_range(values[name]) is None:
                raise BadRequest(f"{name} must be a FHIR date or dateTime, not {values[name]!r}",
                                 (name,))
        types = patient_types()
        if "_type" in values:
            wanted = [t.strip() for t in values["_type"].split(",") if t.strip()]
            unknown = [t for t in wanted if t not in types]
            if unknown:
                raise BadRequest(f"_type {', '.join(unknown)}: not in the Patient compartment",
                                 ("_type",))
            types = [t for t in types if t in wanted]
        count = self._count(values.get("_count"))
        # The patient must be readable by this caller: if not, 404 like a missing one.
        self.search.resources.read(caller, "Patient", patient_id)
        index, inner = _decode(values["_cursor"], len(types)) if "_cursor" in values else (0, None)
        page: list[Match] = []
        included: dict[tuple[str, str], Match] = {}
        while index < len(types) and len(page) < count:
            rtype = types[index]
            if not self._may_search(caller, rtype):
                index, inner = index + 1, None
                continue
            query = [("_count", str(count - len(page))), ("_include", "*")]
            if "_since" in values:
                query.append(("_lastUpdated", f"ge{values['_since']}"))
            if _has_clinical_date(rtype):
                if "start" in values:
                    query.append(("date", f"ge{values['start']}"))
                if "end" in values:
                    query.append(("date", f"le{values['end']}"))
            if inner is not None:
                query.append(("_cursor", inner))
            result = self.search.search(caller, rtype, query, strict=True,
                                        compartment=("Patient", patient_id))
            page.extend(result.matches)
            for match in result.included:
                included.setdefault((match.resource_type, match.id), match)
            if result.next_cursor is not None:
                inner = result.next_cursor  # the page is full inside this type
            else:
                index, inner = index + 1, None
        shown = {(m.resource_type, m.id) for m in page}
        extra = [m for key, m in included.items() if key not in shown]
        return Page(page + extra, [(k, v) for k, v in params if k != "_cursor"],
                    values.get("_cursor"), _encode(index, inner) if index < len(types) else None)

    def _count(self, raw: str | None) -> int:
        if raw is None:
            return self.search.default_count
        if not raw.isdigit() or int(raw) < 1:
            raise BadRequest(f"_count must be a positive whole number, not {raw!r}", ("_count",))
        return min(int(raw), self.search.max_count)

    def _may_search(self, caller: Caller, resource_type: str) -> bool:
        try:
            self.search.resources.policy.authorize(caller, Action.SEARCH, resource_type)
        except Forbidden:
            return False
        return True


def everything_bundle(page: Page, base: str, path: str) -> dict[str, Any]:
    """The searchset Bundle of one ``$everything`` page; ``path`` is the operation's URL."""

    def link(relation: str, cursor: str | None) -> dict[str, str]:
        params = [*page.repeat, *([("_cursor", cursor)] if cursor else [])]
        return {"relation": relation, "url": f"{path}?{urlencode(params)}" if params else path}

    links = [link("self", page.cursor)]
    if page.next_cursor is not None:
        links.append(link("next", page.next_cursor))
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links}
    entries = page.entries
    if entries:
        bundle["entry"] = [{"fullUrl": f"{base}/{m.resource_type}/{m.id}",
                            "resource": orjson.Fragment(m.body), "search": {"mode": m.mode}}
                           for m in entries]
    return bundle
