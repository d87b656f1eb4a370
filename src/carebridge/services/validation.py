"""Validation on every write, and the ``$validate`` operation.

:class:`WriteValidation` is what :class:`~carebridge.services.resources.ResourceService` calls
for each version it stores (REST, transactions, batches, import, HL7 v2, devices: they all
stage writes through the service). Modes (setting ``validation``, env
``CAREBRIDGE_VALIDATION``):

* ``strict`` (default): errors reject the write with 422 and the OperationOutcome.
* ``warn``: errors are downgraded to warnings, for bulk loads of legacy data.
* ``off``: nothing is checked beyond the top-level shape.

Warnings (extensible bindings, data-quality rules, downgraded errors) are returned with the
write (``Prefer: return=OperationOutcome``, or a bundle entry's ``response.outcome``) and kept
with the version they belong to in the ``validation_issue`` table, in the same database
transaction: one row per (type, id, version) holding the OperationOutcome. A table rather than
Provenance resources, so the warnings neither change the resources a client stored nor add
resources of their own to searches, counts and exports. They are read back with
:meth:`WriteValidation.recorded` and counted by ``carebridge quality report``.

Profiles named in ``meta.profile`` that are not core are looked up among the
StructureDefinitions stored on this server (by ``url``), compiled and cached per version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import orjson

from carebridge.fhir.errors import BadRequest, Issue, operation_outcome
from carebridge.fhir.resource import format_instant
from carebridge.fhir.validation import Validator, raise_for_errors
from carebridge.fhir.validation.snapshot import complete_snapshot
from carebridge.quality.report import duplicates_of
from carebridge.quality.rules import check_quality
from carebridge.storage.base import Repository, Session, Write

if TYPE_CHECKING:
    from carebridge.security.policy import Caller
    from carebridge.services.resources import ResourceService

MODES = ("strict", "warn", "off")
PROFILE_TTL = 10.0
LOOKUP_TIMEOUT = 10.0  # seconds for a look-up in the reader thread (pool may be exhausted)

log = logging.getLogger(__name__)


class WriteValidation:
    def __init__(self, repository: Repository | None = None, mode: str = "strict") -> None:
        if mode not in MODES:
            raise ValueError(f"validation mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.repository = repository
        self.mode = mode
        self.validator = Validator(profile_source=self.stored_profile)
        # url -> (valid until, StructureDefinition or None); misses are cached too, since
        # data may name profiles this server never heard of on every resource (US Core).
        self._lookups: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="profiles")
        self._search: Any = None

    def warm_up(self) -> threading.Thread:
        """Compile the core definitions in the background (about a second), so the first
        writes a server takes do not pay for it."""
        thread = threading.Thread(target=self.validator.compile_core, name="validator-warm-up",
                                  daemon=True)
        thread.start()
        return thread

    # ------------------------------------------------------------------ writes

    def check(self, resource: dict[str, Any], reader: Session | None = None) -> list[Issue]:
        """Validate a resource about to be stored: raise on errors (strict), return the
        warnings to keep with it. ``reader``: the session the write's work reads in, where
        the duplicate-patient look-up runs (see :meth:`duplicates`)."""
        if self.mode == "off":
            return []
        if resource.get("resourceType") == "StructureDefinition":
            complete_snapshot(resource, self.validator)
        issues = self.validator.validate(resource)
        if resource.get("resourceType") == "Basic":
            issues += _monitoring_rule(resource)
        if self.mode == "strict":
            raise_for_errors(issues)
        issues += check_quality(resource)
        if resource.get("resourceType") == "Patient":
            issues += self.duplicates(resource, reader)
        kept = []
        for issue in issues:
            if issue.severity in ("error", "fatal"):  # warn mode: recorded, not refused
                issue = Issue("warning", issue.code, f"(accepted in warn-only mode) "
                              f"{issue.diagnostics}", issue.expression)
            if issue.severity == "warning":
                kept.append(issue)
        return kept

    def duplicates(self, patient: dict[str, Any], reader: Session | None = None) -> list[Issue]:
        """``duplicate-patient`` warnings: stored Patients with the same normalised name and
        birth date that share an identifier or an address (quality/report.py has the rule).

        On SQLite, looked up in ``reader`` when the write has one (its transaction, or the
        read snapshot an HL7 message is worked out in): same thread, same connection and page
        cache. The validation's reader thread cost an HL7 feed's committer ~600 us of waiting
        per Patient write (that thread's connection re-reads its pages after every commit of
        another), against ~130 us in place. Elsewhere (PostgreSQL, or no session) like
        profiles, in the reader thread, from committed data: a failed statement aborts a
        PostgreSQL transaction, and a warning we cannot compute must not fail the write."""
        if self.repository is None or not isinstance(patient.get("birthDate"), str):
            return []
        families = sorted({n["family"] for n in patient.get("name") or ()
                           if isinstance(n, dict) and isinstance(n.get("family"), str)})
        if not families or not _anchored(patient):
            return []  # the rule needs a shared identifier or address: nothing can match
        try:
            if reader is not None and self._dialect() == "sqlite":
                candidates = self._patients_in(reader, patient["birthDate"], families)
            else:
                candidates = self._reader.submit(self._patients_like, patient["birthDate"],
                                                 families).result(timeout=LOOKUP_TIMEOUT)
        except Exception:  # a warning we cannot compute must not fail a write
            log.warning("duplicate-patient look-up failed; the write goes on without it",
                        exc_info=True)
            return []
        return [Issue("warning", "business-rule",
                      f"duplicate-patient: likely the same person as {other}: {why}",
                      ("Patient",))
                for other, why in duplicates_of(patient, candidates)]

    def _patients_like(self, birth_date: str, families: list[str]) -> list[dict[str, Any]]:
        """:meth:`_patients_in` a read session of its own."""
        assert self.repository is not None
        with self.repository.session() as session:
            return self._patients_in(session, birth_date, families)

    def _patients_in(self, session: Session, birth_date: str,
                     families: list[str]) -> list[dict[str, Any]]:
        """Stored Patients with this birth date and one of these family names (normalised as
        the string index has them; at most 50 per name); the rule itself (the same folded
        name, a shared identifier or address) is applied to what they find. Straight from
        the index tables, both index-only look-ups with no search planning: this runs inside
        every Patient write."""
        from carebridge.events.sqltext import run
        from carebridge.search.index import index_rows
        from carebridge.search.params import pid
        from carebridge.search.values import normalize_string
        from carebridge.storage.sql import rows_of

        birthdate = pid("Patient", "birthdate")
        dates = [row for row in index_rows({"resourceType": "Patient", "id": "-",
                                            "birthDate": birth_date}).get("idx_date", ())
                 if row[0] == birthdate]
        if not dates:
            return []
        low, high = dates[0][1], dates[0][2]
        dialect = self._dialect()
        ids: dict[str, None] = {}
        for family in families[:3]:
            norm = normalize_string(family)
            rows = run(session, dialect,
                       "SELECT r.id FROM idx_string s CROSS JOIN resource r"
                       " WHERE s.pid = ? AND s.norm = ? AND EXISTS"
                       " (SELECT 1 FROM idx_date d WHERE d.pid = ? AND d.low = ? AND d.high = ?"
                       f" AND {rows_of('d', 's', dialect == 'sqlite')}) AND r.rid = s.rid"
                       " LIMIT 50",
                       (pid("Patient", "family"), norm, birthdate, low, high))
            ids.update((str(row[0]), None) for row in rows)
        found = session.read_many([("Patient", rid) for rid in ids]) if ids else {}
        return [orjson.loads(v.body) for v in found.values() if v.body]

    def stored(self, resource_type: str, resource: dict[str, Any] | None) -> None:
        """Forget a cached profile when its StructureDefinition changes."""
        if resource_type == "StructureDefinition" and resource is not None:
            url = resource.get("url")
            if isinstance(url, str):
                self.validator.forget(url)
                self._lookups.pop(url.split("|", 1)[0], None)

    def record(self, session: Session, writes: Sequence[Write],
               issues: Mapping[tuple[str, str], tuple[Issue, ...]]) -> None:
        """Keep the warnings of the versions just stored (same database transaction)."""
        if not issues:
            return
        mark = "?" if self._dialect() == "sqlite" else "%s"
        sql = (f"INSERT INTO validation_issue (resource_type, id, version, recorded, issues, "
               f"outcome) VALUES ({mark}, {mark}, {mark}, {mark}, {mark}, {mark}) "
               f"RETURNING version")
        for write in writes:
            version = write.version
            found = issues.get((version.resource_type, version.id))
            if not found or version.deleted:
                continue
            moment: Any = version.last_updated
            if mark == "?":
                moment = format_instant(moment)
            session.query(sql, (version.resource_type, version.id, version.version, moment,
                                len(found), orjson.dumps(operation_outcome(list(found)))))

    def recorded(self, resource_type: str, resource_id: str) -> list[tuple[int, dict[str, Any]]]:
        """(version, OperationOutcome) of the warnings kept for a resource, oldest first."""
        if self.repository is None:
            return []
        mark = "?" if self._dialect() == "sqlite" else "%s"
        with self.repository.session() as session:
            rows = session.query(
                f"SELECT version, outcome FROM validation_issue WHERE resource_type = {mark} "
                f"AND id = {mark} ORDER BY version", (resource_type, resource_id))
        return [(int(v), orjson.loads(bytes(o))) for v, o in rows]

    def _searcher(self) -> Any:
        """A SearchService over the repository (profile look-ups: no caller, no policy)."""
        if self._search is None:
            from carebridge.services.resources import ResourceService
            from carebridge.services.search import SearchService

            service = ResourceService(self.repository,  # type: ignore[arg-type]
                                      validation=WriteValidation(None))
            self._search = SearchService(service)
        return self._search

    def _dialect(self) -> str:
        return self.repository.dialect if self.repository is not None else "sqlite"

    # ------------------------------------------------------------------ profiles

    def stored_profile(self, url: str) -> dict[str, Any] | None:
        """The current StructureDefinition with this canonical url on this server.

        Looked up in a thread of its own: a write transaction may be open on this thread's
        connection, and the profile must come from committed data anyway. Other processes'
        uploads are seen within ``PROFILE_TTL`` seconds.
        """
        if self.repository is None:
            return None
        now = time.monotonic()
        hit = self._lookups.get(url)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            found = self._reader.submit(self._lookup, url).result(timeout=LOOKUP_TIMEOUT)
        except Exception:  # reported as an unknown profile, not a 500
            log.warning("profile look-up of %s failed", url, exc_info=True)
            return None
        self._lookups[url] = (now + PROFILE_TTL, found)
        return found

    def _lookup(self, url: str) -> dict[str, Any] | None:
        assert self.repository is not None
        from carebridge.search.query import parse_query

        query = parse_query("StructureDefinition", [("url", url), ("_count", "1")])
        with self.repository.session() as session:
            result = self._searcher().run(session, query, None)
        if not result.matches:
            return None
        found: dict[str, Any] = orjson.loads(result.matches[0].body)
        return found


# ---------------------------------------------------------------------- $validate


def validate_operation(service: ResourceService, caller: Caller, resource_type: str,
                       body: Any, resource_id: str | None = None,
                       mode: str | None = None, profile: str | None = None) -> dict[str, Any]:
    """``$validate`` (http://hl7.org/fhir/R4/resource-operation-validate.html): always an
    OperationOutcome; the caller's HTTP status is 200 whatever the issues."""
    from carebridge.security.policy import Action

    resource, mode, profile = _parameters(body, mode, profile)
    if mode not in (None, "create", "update", "delete"):
        raise BadRequest(f"mode must be create, update or delete, not {mode!r}", ("mode",))
    service.policy.authorize(caller, Action.READ, resource_type, resource_id)
    issues: list[Issue] = []
    if mode == "delete":
        if resource_id is None:
            raise BadRequest("mode=delete validates an existing resource: use "
                             f"{resource_type}/[id]/$validate", ("mode",))
        service.read(caller, resource_type, resource_id)  # 404/410 when there is none
        issues.append(Issue("information", "informational",
                            f"{resource_type}/{resource_id} may be deleted: this server keeps"
                            " no referential integrity rules that would prevent it"))
        return operation_outcome(issues)
    if resource is None:
        if resource_id is None:
            raise BadRequest("$validate needs a resource in the body (or a Parameters "
                             "resource with a 'resource' parameter)")
        stored = service.read(caller, resource_type, resource_id)
        assert stored.body is not None
        resource = orjson.loads(stored.body)
    if not isinstance(resource, dict):
        raise BadRequest("The resource to validate must be a JSON object")
    if resource.get("resourceType") != resource_type:
        issues.append(Issue("error", "invalid", f"The resource is a "
                            f"{resource.get('resourceType')!r}, not a {resource_type}",
                            ("resourceType",)))
    if mode == "update" and resource_id is not None and resource.get("id") != resource_id:
        issues.append(Issue("error", "invalid", f"For an update the resource id must be "
                            f"{resource_id!r}, found {resource.get('id')!r}",
                            (f"{resource_type}.id",)))
    checker = service.validation
    issues += checker.validator.validate(resource, profiles=[profile] if profile else [])
    issues += check_quality(resource)
    if not any(i.severity in ("error", "fatal") for i in issues):
        issues.insert(0, Issue("information", "informational",
                               "No errors: the resource is valid" + (
                                   f" against {profile}" if profile else "")))
    return operation_outcome(issues)


def _parameters(body: Any, mode: str | None,
                profile: str | None) -> tuple[Any, str | None, str | None]:
    """The resource, mode and profile, from a Parameters body or a bare resource."""
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        resource = None
        for parameter in body.get("parameter") or ():
            if not isinstance(parameter, dict):
                continue
            name = parameter.get("name")
            if name == "resource":
                resource = parameter.get("resource")
            elif name == "mode":
                mode = parameter.get("valueCode", mode)
            elif name == "profile":
                profile = parameter.get("valueUri") or parameter.get("valueCanonical") or profile
        return resource, mode, profile
    return body, mode, profile


def _monitoring_rule(basic: dict[str, Any]) -> list[Issue]:
    """A Basic that claims to be a monitoring rule must be one the engine can run (a rule it
    cannot read would otherwise be stored and silently never fire)."""
    from carebridge.monitoring.rules import RuleError, rule_from_basic

    try:
        rule_from_basic(basic)
    except RuleError as exc:
        return [Issue("error", "business-rule", f"Not a usable monitoring rule: {exc}",
                      (exc.expression,))]
    return []


def _anchored(patient: dict[str, Any]) -> bool:
    """Whether ``patient`` has what quality.report's rule needs to call another record the
    same person: an identifier value, or an address with a line."""
    return any(isinstance(i, dict) and isinstance(i.get("value"), str)
               for i in patient.get("identifier") or ()) or any(
        isinstance(a, dict) and a.get("line") for a in patient.get("address") or ())
