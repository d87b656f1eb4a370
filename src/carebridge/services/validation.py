"""Validation on every write, and the ``$validate`` operation.

:class:`WriteValidation` is what :class:`~carebridge.services.resources.ResourceService` calls
for each version it stores (REST, transactions, batches, import, HL7 v2, devices: they all
stage writes through the service). Modes (setting ``validation``, env
``CAREBRIDGE_VALIDATION``):

* ``strict`` (default): errors reject the write with 422 and the OperationOutcome.
* ``warn``: errors are downgraded to warnings, for bulk loads of legacy data.
* ``off``: nothing is checked beyond the top-level shape.

Warnings (extensible bindings, data-quality rules, downgraded errors) are returned with the
write and kept with the resource in a ``Provenance`` (target: the exact version; a contained
``OperationOutcome`` holds the issues), so they can be read back and counted later
(``GET /fhir/Provenance?target=Observation/123`` and ``carebridge quality report``).

Profiles named in ``meta.profile`` that are not core are looked up among the
StructureDefinitions stored on this server (by ``url``), compiled and cached per version.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from carebridge.fhir.errors import BadRequest, Issue, operation_outcome
from carebridge.fhir.resource import format_instant, new_id
from carebridge.fhir.validation import Validator, raise_for_errors
from carebridge.fhir.validation.snapshot import complete_snapshot
from carebridge.quality.rules import check_quality
from carebridge.storage.base import Repository, StoredVersion

if TYPE_CHECKING:
    from carebridge.security.policy import Caller
    from carebridge.services.resources import ResourceService

MODES = ("strict", "warn", "off")
PROFILE_TTL = 10.0
VALIDATOR_AGENT = "carebridge validator"
_ACTIVITY = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
_METHOD_ACTIVITY = {"POST": "CREATE", "PUT": "UPDATE", "PATCH": "UPDATE"}


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

    # ------------------------------------------------------------------ writes

    def check(self, resource: dict[str, Any]) -> list[Issue]:
        """Validate a resource about to be stored: raise on errors (strict), return the
        warnings to keep with it."""
        if self.mode == "off":
            return []
        if resource.get("resourceType") == "StructureDefinition":
            complete_snapshot(resource, self.validator)
        issues = self.validator.validate(resource)
        if self.mode == "strict":
            raise_for_errors(issues)
        issues += check_quality(resource)
        kept = []
        for issue in issues:
            if issue.severity in ("error", "fatal"):  # warn mode: recorded, not refused
                issue = Issue("warning", issue.code, f"(accepted in warn-only mode) "
                              f"{issue.diagnostics}", issue.expression)
            if issue.severity == "warning":
                kept.append(issue)
        return kept

    def stored(self, resource_type: str, resource: dict[str, Any] | None) -> None:
        """Forget a cached profile when its StructureDefinition changes."""
        if resource_type == "StructureDefinition" and resource is not None:
            url = resource.get("url")
            if isinstance(url, str):
                self.validator.forget(url)
                self._lookups.pop(url.split("|", 1)[0], None)

    @staticmethod
    def provenance(version: StoredVersion, issues: Iterable[Issue],
                   moment: datetime) -> dict[str, Any]:
        """A Provenance that keeps the warnings of one stored version."""
        outcome = operation_outcome(list(issues))
        outcome["id"] = "validation"
        activity = _METHOD_ACTIVITY.get(version.method, "UPDATE")
        return {
            "resourceType": "Provenance",
            "id": new_id(),
            "contained": [outcome],
            "target": [{"reference": f"{version.resource_type}/{version.id}/_history/"
                                     f"{version.version}"}],
            "recorded": format_instant(moment),
            "activity": {"coding": [{"system": _ACTIVITY, "code": activity}]},
            "agent": [{"who": {"display": VALIDATOR_AGENT}}],
            "entity": [{"role": "source", "what": {"reference": "#validation"}}],
        }

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
        found = self._reader.submit(self._lookup, url).result()
        self._lookups[url] = (now + PROFILE_TTL, found)
        return found

    def _lookup(self, url: str) -> dict[str, Any] | None:
        assert self.repository is not None
        from carebridge.search.query import parse_query

        query = parse_query("StructureDefinition", [("url", url), ("_count", "1")])
        with self.repository.session() as session:
            result = _searcher(self.repository).run(session, query, None)
        if not result.matches:
            return None
        found: dict[str, Any] = orjson.loads(result.matches[0].body)
        return found


_SEARCHERS: dict[int, Any] = {}


def _searcher(repository: Repository) -> Any:
    """A SearchService over the repository (for profile look-ups; no caller, no policy)."""
    from carebridge.services.resources import ResourceService
    from carebridge.services.search import SearchService

    found = _SEARCHERS.get(id(repository))
    if found is None:
        found = SearchService(ResourceService(repository, validation=WriteValidation(None)))
        _SEARCHERS[id(repository)] = found
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
