"""Optimistic work: compute a transaction's writes from a read snapshot, then commit them only
if every read still gives the same answer under the write lock.

The expensive part of a write (mapping, validation, index extraction) depends on the database
only through what it reads. :class:`RecordingSession` runs that work in a read transaction and
keeps each read with its result in a :class:`ReadSet`; the work's writes stay in memory. Later,
inside the write transaction, :meth:`ReadSet.holds` runs the same reads again (and takes the
same transaction locks, in the same order): if every answer is equal, the work would have
produced the same writes there, so they can be stored as they are. If any answer differs
(another writer changed what the work looked at), the caller runs the work again under the
lock. This is the read-set validation of optimistic concurrency control (Kung and Robinson,
1981), done per unit of work rather than per row.

Written here rather than taken from a library: it sits on this project's own ``Session``
protocol, and the check is a replay of a handful of calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from carebridge.storage.base import HistoryPage, HistoryQuery, Session, StoredVersion, Write


class WriteDuringSpeculation(Exception):
    """The work tried to write to the database while only reading was allowed: it has to
    run under the write lock."""


@dataclass
class ReadSet:
    """The reads made by one unit of work, in order, with what each returned."""

    calls: list[tuple[str, tuple[Any, ...], Any]] = field(default_factory=list)

    def holds(self, session: Session) -> bool:
        """Whether every read gives the same answer in ``session`` (taking the recorded
        locks again on the way)."""
        for method, args, result in self.calls:
            if method == "lock":
                session.lock(*args)
                continue
            if getattr(session, method)(*args) != result:
                return False
        return True


class RecordingSession:
    """A read-only view of ``inner`` that records every read into ``reads``.

    Locks are recorded, not taken: they are taken when the reads are checked under the write
    lock, which is where they protect anything. A write raises
    :class:`WriteDuringSpeculation`."""

    def __init__(self, inner: Session, reads: ReadSet) -> None:
        self.inner = inner
        self.reads = reads

    def _record(self, method: str, args: tuple[Any, ...], result: Any) -> Any:
        self.reads.calls.append((method, args, result))
        return result

    def read(self, resource_type: str, resource_id: str) -> StoredVersion | None:
        args = (resource_type, resource_id)
        return self._record("read", args, self.inner.read(*args))  # type: ignore[no-any-return]

    def read_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVersion]:
        args = (tuple(keys),)
        return self._record("read_many", args, self.inner.read_many(*args))  # type: ignore[no-any-return]

    def vread(self, resource_type: str, resource_id: str, version: int) -> StoredVersion | None:
        args = (resource_type, resource_id, version)
        return self._record("vread", args, self.inner.vread(*args))  # type: ignore[no-any-return]

    def history(self, query: HistoryQuery) -> HistoryPage:
        return self._record("history", (query,), self.inner.history(query))  # type: ignore[no-any-return]

    def count_current(self, resource_type: str | None = None) -> dict[str, int]:
        return self._record("count_current", (resource_type,),  # type: ignore[no-any-return]
                            self.inner.count_current(resource_type))

    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        args = (sql, tuple(params))
        return self._record("query", args, self.inner.query(*args))  # type: ignore[no-any-return]

    def lock(self, key: str) -> None:
        self.reads.calls.append(("lock", (key,), None))

    def write(self, writes: Sequence[Write]) -> None:
        raise WriteDuringSpeculation(f"{len(writes)} write(s) while speculating")
