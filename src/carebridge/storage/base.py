"""The storage protocol every backend implements, and the values it passes around.

A :class:`Repository` hands out :class:`Session` objects; a session is one database
transaction (commit on normal exit, rollback on an exception). Backends keep every version of
every resource: the ``resource`` table holds the current version of each resource, the
``resource_history`` table every version, in write order (``seq``).

Concurrency contract (the service layer relies on it, and the storage tests check it):
:meth:`Session.write` with ``expected_version=None`` creates the resource and fails with
:class:`VersionConflict` if it exists; with ``expected_version=n`` it replaces version ``n``
and fails with :class:`VersionConflict` if the current version is no longer ``n``. So two
writers that read the same version can never both succeed: there is no lost update.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

Method = Literal["POST", "PUT", "PATCH", "DELETE"]


class VersionConflict(Exception):
    """Another writer changed the resource since it was read."""

    def __init__(self, resource_type: str, resource_id: str) -> None:
        super().__init__(f"{resource_type}/{resource_id} was changed by another writer")
        self.resource_type = resource_type
        self.resource_id = resource_id


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One version of one resource as stored. ``body`` is None for a deletion."""

    resource_type: str
    id: str
    version: int
    last_updated: datetime
    method: Method
    body: bytes | None

    @property
    def deleted(self) -> bool:
        return self.method == "DELETE"


@dataclass(frozen=True, slots=True)
class Write:
    """A new version to store; ``expected_version`` is the version it replaces (None: new).

    ``index`` holds the version's search index rows (see ``carebridge.search.index``); they
    replace the resource's previous rows. A deletion has none.
    """

    version: StoredVersion
    expected_version: int | None
    index: dict[str, list[tuple[Any, ...]]] | None = None  # search index rows by table


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Which versions to list: all, one type's, or one resource's; ``since`` an instant;
    ``before_seq``/``after_seq`` page by the ``seq`` cursor (newer/older pages)."""

    resource_type: str | None = None
    resource_id: str | None = None
    since: datetime | None = None
    before_seq: int | None = None
    after_seq: int | None = None
    count: int = 50
    with_total: bool = False


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Versions newest first, with the ``seq`` cursor of each for keyset paging."""

    entries: list[tuple[int, StoredVersion]]
    total: int | None


class Session(Protocol):
    """One database transaction."""

    def read(self, resource_type: str, resource_id: str) -> StoredVersion | None:
        """The current version (possibly a deletion), or None if never stored."""
        ...

    def read_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVersion]:
        """Current versions of several resources, by (type, id); absent keys are left out."""
        ...

    def vread(self, resource_type: str, resource_id: str, version: int) -> StoredVersion | None:
        ...

    def write(self, writes: Sequence[Write]) -> None:
        """Store new versions (see the module docstring for the conflict contract)."""
        ...

    def history(self, query: HistoryQuery) -> HistoryPage:
        """Versions, newest first (see :class:`HistoryQuery`)."""
        ...

    def count_current(self, resource_type: str | None = None) -> dict[str, int]:
        """Number of current, not deleted resources per type."""
        ...

    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run SQL generated for this backend's dialect (the search compiler's way in)."""
        ...

    def lock(self, key: str) -> None:
        """Hold a transaction-scoped lock named ``key`` until this session ends, so writers
        that decide by a search (conditional create) cannot both act on the same answer."""
        ...


class Repository(Protocol):
    """A resource store. Thread-safe: sessions may be opened from any thread."""

    @property
    def url(self) -> str: ...

    @property
    def dialect(self) -> Literal["sqlite", "postgresql"]: ...

    def migrate(self) -> list[str]:
        """Apply pending schema migrations; returns the names applied."""
        ...

    def schema_version(self) -> int: ...

    def session(self, *, write: bool = False) -> AbstractContextManager[Session]:
        """Open a transaction; ``write=True`` when it will write (SQLite takes the write lock
        at the start, so two writers never deadlock upgrading their locks)."""
        ...

    def write_busy(self) -> bool:
        """Whether a write session opened now would wait for another writer (a hint, true
        at the moment of asking): SQLite's one writer at a time; PostgreSQL never."""
        ...

    def close(self) -> None: ...
