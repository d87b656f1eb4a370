"""The resource use cases: create, read, vread, update, patch, delete, history.

Methods that write have two forms: the public one opens its own database transaction (with a
retry when a concurrent writer wins a race that the caller did not ask to detect), and the
``*_in`` form works inside a session the caller holds, so a transaction bundle can run many of
them in one database transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import jsonpatch
import orjson

from carebridge.events.bus import EventBus, InProcessEventBus, ResourceChanged
from carebridge.fhir import registry
from carebridge.fhir.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    Issue,
    NotFound,
    PreconditionFailed,
    Unprocessable,
    operation_outcome,
)
from carebridge.fhir.resource import (
    Resource,
    check_id,
    check_resource,
    new_id,
    now_instant,
    parse_json,
    with_meta,
)
from carebridge.search.index import index_rows
from carebridge.security.narrowing import references_patient
from carebridge.security.policy import AccessPolicy, Action, AllowAll, Caller, Restriction
from carebridge.services.validation import WriteValidation
from carebridge.storage.base import (
    HistoryPage,
    HistoryQuery,
    Method,
    Repository,
    Session,
    StoredVersion,
    VersionConflict,
    Write,
)

T = TypeVar("T")

_RETRIES = 5


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The stored version a write produced (or left in place) and its HTTP-level status."""

    version: StoredVersion
    status: int  # 201 created, 200 updated/unchanged, 204 deleted/nothing to delete
    changed: bool = True
    issues: tuple[Issue, ...] = ()  # validation warnings (errors reject the write)

    def outcome(self) -> dict[str, Any] | None:
        """The warnings as an OperationOutcome, or None when there are none."""
        return operation_outcome(list(self.issues)) if self.issues else None


@dataclass
class PendingWrites:
    """Writes collected inside one session, stored together and announced after commit."""

    writes: list[Write] = field(default_factory=list)
    flushed: int = 0
    issues: dict[tuple[str, str], tuple[Issue, ...]] = field(default_factory=dict)
    # The session the work reads in, for look-ups that only inform a warning (the
    # duplicate-patient rule): they run there, on the connection and page cache the work
    # already uses, instead of in another thread; None: they take a session of their own.
    reader: Session | None = None

    def issues_of(self, version: StoredVersion) -> tuple[Issue, ...]:
        return self.issues.get((version.resource_type, version.id), ())

    def flush(self, session: Session) -> None:
        """Store what is not stored yet, so later reads in this transaction see it."""
        if self.flushed < len(self.writes):
            session.write(self.writes[self.flushed:])
            self.flushed = len(self.writes)

    def events(self) -> list[ResourceChanged]:
        return [
            ResourceChanged(w.version.resource_type, w.version.id, w.version.version,
                            w.version.method)
            for w in self.writes
        ]


def check_type(resource_type: str) -> str:
    """Resource types named in a URL: unknown ones are 404 (the path does not exist)."""
    if not registry.is_resource_type(resource_type):
        raise NotFound(f"Unknown resource type {resource_type!r}", code="not-supported")
    return resource_type


class ResourceService:
    def __init__(
        self,
        repository: Repository,
        *,
        policy: AccessPolicy | None = None,
        events: EventBus | None = None,
        clock: Callable[[], datetime] = now_instant,
        validation: WriteValidation | None = None,
    ) -> None:
        self.repository = repository
        self.policy: AccessPolicy = policy or AllowAll()
        self.events: EventBus = events or InProcessEventBus()
        self.clock = clock
        self.validation = validation or WriteValidation(repository)

    # ----------------------------------------------------------------- plumbing

    def run_write(self, work: Callable[[Session, PendingWrites], T], *, retry: bool,
                  version_aware: bool = False) -> T:
        """Run ``work`` in one write transaction, store what it collected, commit, publish.

        With ``retry`` a :class:`VersionConflict` (another writer won) re-runs the work on
        fresh data; without it the conflict is the caller's answer: 412 when the caller named
        the version it expected (``If-Match``), else 409.
        """
        for attempt in range(_RETRIES):
            pending = PendingWrites()
            try:
                with self.repository.session(write=True) as session:
                    pending.reader = session
                    result = work(session, pending)
                    pending.flush(session)
                    self.validation.record(session, pending.writes, pending.issues)
            except VersionConflict as exc:
                if retry and attempt < _RETRIES - 1:
                    continue
                error = PreconditionFailed if version_aware else Conflict
                raise error(
                    f"{exc.resource_type}/{exc.resource_id} was changed by a concurrent"
                    " request; read it again and retry"
                ) from None
            self.events.publish(pending.events())
            return result
        raise AssertionError("unreachable")

    def stage(
        self,
        pending: PendingWrites,
        resource: Resource | None,
        resource_type: str,
        resource_id: str,
        version: int,
        method: Method,
        moment: datetime,
        expected_version: int | None,
        *,
        validate: bool = True,
    ) -> StoredVersion:
        """Queue a new version (``resource`` None: a deletion) with its search index rows.

        Every version is validated here (services/validation.py): errors raise, warnings are
        returned with the write and recorded with the version when it is stored.
        """
        body = None
        index = None
        warnings: list[Issue] = []
        if resource is not None:
            stored = with_meta(resource, resource_id, version, moment)
            if validate:
                warnings = self.validation.check(stored, pending.reader)
            body = orjson.dumps(stored)
            index = index_rows(stored)
        new = StoredVersion(resource_type, resource_id, version, moment, method, body)
        pending.writes.append(Write(new, expected_version, index))
        self.validation.stored(resource_type, resource)
        if warnings:
            pending.issues[(resource_type, resource_id)] = tuple(warnings)
        return new

    def parse(self, body: bytes | Resource, resource_type: str | None) -> Resource:
        data = parse_json(body) if isinstance(body, bytes | bytearray) else body
        return check_resource(data, resource_type)

    # ----------------------------------------------------------------- reads

    def read(self, caller: Caller, resource_type: str, resource_id: str) -> StoredVersion:
        check_type(resource_type)
        restriction = self.policy.authorize(caller, Action.READ, resource_type, resource_id)
        with self.repository.session() as session:
            if restriction is not None:
                self.admit(session, restriction, resource_type, resource_id)
            return self.read_in(session, resource_type, resource_id)

    def admit(self, session: Session, restriction: Restriction, resource_type: str,
              resource_id: str) -> None:
        """A restricted caller reaches a resource only inside its restriction (patient
        compartment, granular criteria); outside it looks exactly like a missing one."""
        from carebridge.services.search import SearchService  # search imports this module

        if not SearchService(self).admits(session, resource_type, resource_id, restriction):
            raise NotFound(f"{resource_type}/{resource_id} is not known")

    def admit_write(self, restriction: Restriction | None, resource: Resource) -> None:
        """What a restricted caller writes must land inside its patient's compartment."""
        if restriction is None:
            return
        if restriction.criteria or restriction.patient is None or not references_patient(
                resource, restriction.patient):
            raise Forbidden("The access token does not permit writing this resource")

    def read_in(self, session: Session, resource_type: str, resource_id: str) -> StoredVersion:
        current = session.read(resource_type, resource_id)
        if current is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        if current.deleted:
            raise Gone(
                f"{resource_type}/{resource_id} was deleted (version {current.version})",
                headers={"ETag": f'W/"{current.version}"'},
            )
        return current

    def vread(
        self, caller: Caller, resource_type: str, resource_id: str, version: str
    ) -> StoredVersion:
        check_type(resource_type)
        restriction = self.policy.authorize(caller, Action.VREAD, resource_type, resource_id)
        with self.repository.session() as session:
            if restriction is not None:
                self.admit(session, restriction, resource_type, resource_id)
            return self.vread_in(session, resource_type, resource_id, version)

    def vread_in(
        self, session: Session, resource_type: str, resource_id: str, version: str
    ) -> StoredVersion:
        if not version.isdigit():
            raise NotFound(f"{resource_type}/{resource_id} has no version {version!r}")
        found = session.vread(resource_type, resource_id, int(version))
        if found is None:
            raise NotFound(f"{resource_type}/{resource_id} has no version {version}")
        if found.deleted:
            raise Gone(f"Version {version} of {resource_type}/{resource_id} is a deletion")
        return found

    def history(
        self,
        caller: Caller,
        resource_type: str | None,
        resource_id: str | None,
        *,
        since: datetime | None = None,
        before_seq: int | None = None,
        after_seq: int | None = None,
        count: int = 50,
        with_total: bool = True,
    ) -> HistoryPage:
        if resource_type is not None:
            check_type(resource_type)
        restriction = self.policy.authorize(caller, Action.HISTORY, resource_type, resource_id)
        if restriction is not None and (resource_type is None or resource_id is None):
            raise Forbidden("This access token reads history one resource at a time")
        with self.repository.session() as session:
            if restriction is not None and resource_type is not None and resource_id:
                self.admit(session, restriction, resource_type, resource_id)
            if (
                resource_type is not None
                and resource_id is not None
                and session.read(resource_type, resource_id) is None
            ):
                raise NotFound(f"{resource_type}/{resource_id} is not known")
            return session.history(HistoryQuery(
                resource_type, resource_id, since, before_seq, after_seq, count, with_total
            ))

    # ----------------------------------------------------------------- writes

    def create(self, caller: Caller, resource_type: str, body: bytes | Resource) -> WriteResult:
        check_type(resource_type)
        resource = self.parse(body, resource_type)
        self.admit_write(self.policy.authorize(caller, Action.CREATE, resource_type), resource)
        moment = self.clock()
        return self.run_write(
            lambda s, p: self.create_in(p, resource, new_id(), moment), retry=True
        )

    def create_in(
        self, pending: PendingWrites, resource: Resource, resource_id: str, moment: datetime
    ) -> WriteResult:
        """Create with a server-assigned id (any id in the body is ignored, as R4 requires)."""
        version = self.stage(
            pending, resource, resource["resourceType"], resource_id, 1, "POST", moment, None
        )
        return WriteResult(version, 201, issues=pending.issues_of(version))

    def update(
        self,
        caller: Caller,
        resource_type: str,
        resource_id: str,
        body: bytes | Resource,
        *,
        if_match: int | None = None,
    ) -> WriteResult:
        check_type(resource_type)
        check_id(resource_id)
        resource = self.parse(body, resource_type)
        restriction = self.policy.authorize(caller, Action.UPDATE, resource_type, resource_id)
        self.admit_write(restriction, resource)

        def work(s: Session, p: PendingWrites) -> WriteResult:
            if restriction is not None and s.read(resource_type, resource_id) is not None:
                self.admit(s, restriction, resource_type, resource_id)
            return self.update_in(s, p, resource, resource_id, self.clock(), if_match)

        return self.run_write(work, retry=if_match is None, version_aware=if_match is not None)

    def update_in(
        self,
        session: Session,
        pending: PendingWrites,
        resource: Resource,
        resource_id: str,
        moment: datetime,
        if_match: int | None = None,
        method: Method = "PUT",
    ) -> WriteResult:
        """Update, or create with the client's id (update-as-create)."""
        resource_type = resource["resourceType"]
        body_id = resource.get("id")
        if body_id is None:
            raise BadRequest("The resource in an update must have an id", ("id",))
        if body_id != resource_id:
            raise BadRequest(
                f"The id in the body ({body_id!r}) does not match the id in the URL"
                f" ({resource_id!r})",
                ("id",),
            )
        check_id(resource_id)
        current = session.read(resource_type, resource_id)
        if if_match is not None and (current is None or current.version != if_match):
            have = "does not exist" if current is None else f"is at version {current.version}"
            raise PreconditionFailed(
                f"If-Match asked for version {if_match} of {resource_type}/{resource_id},"
                f" which {have}"
            )
        if current is None:
            version = self.stage(
                pending, resource, resource_type, resource_id, 1, method, moment, None
            )
            return WriteResult(version, 201, issues=pending.issues_of(version))
        if not current.deleted and current.body is not None and _same_content(
            current.body, resource
        ):
            return WriteResult(current, 200, changed=False)
        version = self.stage(
            pending, resource, resource_type, resource_id, current.version + 1, method, moment,
            current.version,
        )
        return WriteResult(version, 201 if current.deleted else 200,
                           issues=pending.issues_of(version))

    def patch(
        self,
        caller: Caller,
        resource_type: str,
        resource_id: str,
        operations: bytes | list[Any],
        *,
        if_match: int | None = None,
    ) -> WriteResult:
        check_type(resource_type)
        ops = parse_json(operations, "JSON Patch") if isinstance(operations, bytes) else operations
        if self.policy.authorize(caller, Action.PATCH, resource_type, resource_id) is not None:
            # A patch could move a resource into another patient's record unseen: a
            # restricted caller sends the whole resource (update), which is checked.
            raise Forbidden("This access token changes resources by update, not patch")
        return self.run_write(
            lambda s, p: self.patch_in(
                s, p, resource_type, resource_id, ops, self.clock(), if_match
            ),
            retry=if_match is None, version_aware=if_match is not None,
        )

    def patch_in(
        self,
        session: Session,
        pending: PendingWrites,
        resource_type: str,
        resource_id: str,
        operations: Any,
        moment: datetime,
        if_match: int | None = None,
    ) -> WriteResult:
        """RFC 6902 JSON Patch (http://hl7.org/fhir/R4/http.html#patch)."""
        if not isinstance(operations, list) or not all(isinstance(o, dict) for o in operations):
            raise BadRequest("A JSON Patch document must be an array of operation objects")
        current = self.read_in(session, resource_type, resource_id)
        if if_match is not None and current.version != if_match:
            raise PreconditionFailed(
                f"If-Match asked for version {if_match} of {resource_type}/{resource_id},"
                f" which is at version {current.version}"
            )
        assert current.body is not None
        document = orjson.loads(current.body)
        try:
            patched = jsonpatch.apply_patch(document, operations)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise Unprocessable(f"The JSON Patch cannot be applied: {exc}") from None
        except (TypeError, ValueError, KeyError) as exc:
            raise BadRequest(f"Malformed JSON Patch: {exc}") from None
        if not isinstance(patched, dict) or patched.get("resourceType") != resource_type:
            raise Unprocessable("A patch may not change the resourceType", ("resourceType",))
        if patched.get("id") != resource_id:
            raise Unprocessable("A patch may not change the id", ("id",))
        check_resource(patched, resource_type)
        return self.update_in(
            session, pending, patched, resource_id, moment, current.version, method="PATCH"
        )

    def delete(
        self,
        caller: Caller,
        resource_type: str,
        resource_id: str,
        *,
        if_match: int | None = None,
    ) -> WriteResult | None:
        check_type(resource_type)
        restriction = self.policy.authorize(caller, Action.DELETE, resource_type, resource_id)

        def work(s: Session, p: PendingWrites) -> WriteResult | None:
            if restriction is not None:
                self.admit(s, restriction, resource_type, resource_id)
            return self.delete_in(s, p, resource_type, resource_id, self.clock(), if_match)

        return self.run_write(work, retry=if_match is None, version_aware=if_match is not None)

    def delete_in(
        self,
        session: Session,
        pending: PendingWrites,
        resource_type: str,
        resource_id: str,
        moment: datetime,
        if_match: int | None = None,
    ) -> WriteResult | None:
        """Delete, keeping every version. Deleting what does not exist (or is already
        deleted) succeeds with nothing to do (http://hl7.org/fhir/R4/http.html#delete)."""
        current = session.read(resource_type, resource_id)
        if if_match is not None and (current is None or current.version != if_match):
            raise PreconditionFailed(
                f"If-Match asked for version {if_match} of {resource_type}/{resource_id}"
            )
        if current is None or current.deleted:
            return None
        version = self.stage(
            pending, None, resource_type, resource_id, current.version + 1, "DELETE", moment,
            current.version,
        )
        return WriteResult(version, 204)

    def count(self, caller: Caller, resource_type: str | None = None) -> dict[str, int]:
        if self.policy.authorize(caller, Action.SEARCH, resource_type) is not None:
            raise Forbidden("This access token cannot count the whole store")
        with self.repository.session() as session:
            return session.count_current(resource_type)


def _same_content(stored: bytes, resource: Resource) -> bool:
    """True when ``resource`` equals the stored body apart from server-owned meta."""
    old = orjson.loads(stored)
    return _strip_server_meta(old) == _strip_server_meta(resource)


def _strip_server_meta(resource: Resource) -> Resource:
    out = dict(resource)
    meta = dict(out.get("meta") or {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    if meta:
        out["meta"] = meta
    else:
        out.pop("meta", None)
    return out
