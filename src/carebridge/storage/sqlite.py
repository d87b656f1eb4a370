"""SQLite backend: the embedded default (one file in WAL mode, no other service).

Each thread gets its own connection (sqlite3 connections are not shared across threads).
Write sessions start with ``BEGIN IMMEDIATE`` so writers queue on the database lock up front
instead of failing when a read lock would have to be upgraded. ``synchronous=FULL`` by default:
an acknowledged write survives a power cut, not only a process crash.

Writers take turns before they ask SQLite: a lock shared by the threads of a process, then an
exclusive ``flock`` on a side file (``<database>-writer``) shared by processes. SQLite's own
busy handler polls a held lock with sleeps growing to 100 ms, so a writer that lost a race
(the HL7 committer against the audit ledger's writer, an ingest process against the
monitoring engine) slept long after the lock was free; a blocked ``flock`` is woken by the
kernel the moment it is released. Readers never wait (WAL).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from carebridge.storage.base import StoredVersion, VersionConflict, Write
from carebridge.storage.migrations import migrations_for, sql_statements
from carebridge.storage.sql import VERSION_COLUMNS, SqlSession, index_statements

# Python 3.11's sqlite3 passes every parameter that is not exactly an int, float, str or
# bytearray through its adapter registry before binding it: a key tuple built, a dict miss and
# two failing attribute look-ups (__adapt__, __conform__), ~0.4 us each on this machine. Index
# rows are mostly NULLs (a token row without text or type, a reference without version, url
# or identifier) and bodies are bytes, so that was ~3 % of the instructions of an HL7 message.
# Registered adapters are found at the dict look-up: None -> None (``{}.get`` is a C
# function that returns None for any key; a lambda costs a Python frame) binds as NULL, and
# ``bytes`` returns the same bytes object. (Measured: a row with four NULLs 3.6 -> 1.9 us.)
_NOTHING: dict[None, None] = {}
_as_null: Callable[[None], None] = _NOTHING.get
sqlite3.register_adapter(type(None), _as_null)
sqlite3.register_adapter(bytes, bytes)


# Page cache of a connection that writes (SQLite's default is 2,000 KiB, ~500 pages). A
# write transaction that touches more distinct pages than its cache holds spills dirty pages
# into the WAL before it commits and reads them back when it touches them again: a group of
# 25 HL7 messages writes ~1,500 index rows at ~20 B-tree positions each, and a Synthea
# transaction bundle ~3,000. Measured on this machine (bench/hl7v2.py, 6,000 messages, two
# server processes, three alternating pairs): 396-413 -> 125-141 KiB read and 261-273 ->
# 176-184 KiB written per message, server CPU 3.7-4.3 -> 3.5-3.9 ms per message. SQLite
# allocates cache pages only as they are used, and a connection only grows this far once it
# has written; read-only connections keep the default.
WRITER_CACHE_KIB = 32768


@lru_cache(maxsize=64)  # a transaction writes many versions with the same instant
def _ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _from_ts(text: str) -> datetime:
    return datetime.fromisoformat(text)  # Python 3.11 reads the trailing Z as UTC


def _version(row: Any) -> StoredVersion:
    rtype, rid, version, updated, method, body = row
    return StoredVersion(rtype, rid, version, _from_ts(updated), method, body)


def path_from_url(url: str) -> str:
    """``sqlite:///./var/x.db`` -> ``./var/x.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``;
    ``sqlite://:memory:`` is refused (every thread would get its own empty database)."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ValueError(f"not a sqlite URL: {url}")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path or path == ":memory:" or parts.netloc == ":memory:":
        raise ValueError("sqlite URL needs a file path, e.g. sqlite:///./var/carebridge.db")
    return path


class SqliteSession(SqlSession):
    mark = "?"

    def _instant(self, moment: datetime) -> Any:
        return _ts(moment)

    def _version(self, row: Sequence[Any]) -> StoredVersion:
        return _version(row)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def read(self, resource_type: str, resource_id: str) -> StoredVersion | None:
        row = self._conn.execute(
            "SELECT resource_type, id, version, last_updated,"
            " CASE WHEN deleted THEN 'DELETE' ELSE 'PUT' END, body"
            " FROM resource WHERE resource_type = ? AND id = ?",
            (resource_type, resource_id),
        ).fetchone()
        return _version(row) if row else None

    def read_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVersion]:
        found: dict[tuple[str, str], StoredVersion] = {}
        for key in dict.fromkeys(keys):
            version = self.read(*key)
            if version is not None:
                found[key] = version
        return found

    def vread(self, resource_type: str, resource_id: str, version: int) -> StoredVersion | None:
        row = self._conn.execute(
            f"SELECT {VERSION_COLUMNS} FROM resource_history"
            " WHERE resource_type = ? AND id = ? AND version = ?",
            (resource_type, resource_id, version),
        ).fetchone()
        return _version(row) if row else None

    def write(self, writes: Sequence[Write]) -> None:
        inserts = [w.version for w in writes if w.expected_version is None]
        numbers: dict[int, int] = {}  # id(write) -> the resource's rid
        if inserts:
            # New resources are numbered in order after the highest number: this session
            # holds the database's write lock, so nobody else takes one meanwhile.
            row = self._conn.execute("SELECT max(rid) FROM resource").fetchone()
            first = int(row[0] or 0) + 1
            before = self._conn.total_changes
            self._conn.executemany(
                "INSERT INTO resource (rid, resource_type, id, version, last_updated, deleted,"
                " body) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [
                    (first + n, v.resource_type, v.id, v.version, _ts(v.last_updated),
                     v.deleted, v.body)
                    for n, v in enumerate(inserts)
                ],
            )
            if self._conn.total_changes - before != len(inserts):
                taken = self._first_existing(inserts)
                raise VersionConflict(taken.resource_type, taken.id)
            fresh = (w for w in writes if w.expected_version is None)
            numbers = {id(w): first + n for n, w in enumerate(fresh)}
        for w in writes:
            if w.expected_version is None:
                continue
            v = w.version
            found = self._conn.execute(
                "UPDATE resource SET version = ?, last_updated = ?, deleted = ?, body = ?"
                " WHERE resource_type = ? AND id = ? AND version = ? RETURNING rid",
                (v.version, _ts(v.last_updated), v.deleted, v.body,
                 v.resource_type, v.id, w.expected_version),
            ).fetchone()
            if found is None:
                raise VersionConflict(v.resource_type, v.id)
            numbers[id(w)] = int(found[0])
        self._conn.executemany(
            f"INSERT INTO resource_history ({VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (w.version.resource_type, w.version.id, w.version.version,
                 _ts(w.version.last_updated), w.version.method, w.version.body)
                for w in writes
            ],
        )
        rids = [numbers[id(w)] for w in writes]
        for statement, rows in index_statements(writes, rids, "?"):
            self._conn.executemany(statement, rows)

    def _first_existing(self, inserts: Sequence[StoredVersion]) -> StoredVersion:
        seen: set[tuple[str, str]] = set()
        for v in inserts:
            if (v.resource_type, v.id) in seen:
                return v
            seen.add((v.resource_type, v.id))
        return inserts[0]

    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def lock(self, key: str) -> None:
        """Nothing to do: a write session holds SQLite's database lock from its start."""


class WriterTurns:
    """Writers of one database file take turns (see the module doc): a thread lock, then an
    exclusive ``flock`` on ``<database>-writer`` (a blocked ``flock`` releases the GIL)."""

    def __init__(self, database_path: str) -> None:
        self.path = f"{database_path}-writer"
        self._threads = threading.Lock()
        self._fd: int | None = None

    @contextmanager
    def turn(self) -> Iterator[None]:
        with self._threads:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def busy(self) -> bool:
        """Whether another thread or process has the turn now (see Repository.write_busy)."""
        if not self._threads.acquire(blocking=False):
            return True
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            return False
        finally:
            self._threads.release()

    def close(self) -> None:
        with self._threads:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class SqliteRepository:
    dialect: Literal["sqlite"] = "sqlite"

    def __init__(self, url: str, *, synchronous: str = "FULL") -> None:
        self.url = url
        self.path = path_from_url(url)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.writers = WriterTurns(self.path)

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA foreign_keys = ON")
            # Checkpoint the WAL every 10,000 pages (~40 MB) rather than SQLite's 1,000: a
            # checkpoint runs in the committing connection while it holds the write lock,
            # and fewer, larger ones write each hot B-tree page back once instead of many
            # times (A/B on this machine: device readings over HTTP +14 %, ingest +3 %).
            conn.execute("PRAGMA wal_autocheckpoint = 10000")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[SqliteSession]:
        conn = self._connection()
        if write and not getattr(self._local, "writer", False):
            conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            self._local.writer = True
        with self.writers.turn() if write else nullcontext():
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield SqliteSession(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def write_busy(self) -> bool:
        return self.writers.busy()

    def schema_version(self) -> int:
        conn = self._connection()
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if not exists:
            return 0
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> list[str]:
        with self.writers.turn():
            return self._migrate()

    def _migrate(self) -> list[str]:
        conn = self._connection()
        applied: list[str] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            current = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
            for migration in migrations_for("sqlite"):
                if migration.version <= (current or 0):
                    continue
                for statement in sql_statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (migration.version, migration.name, _ts(datetime.now(UTC))),
                )
                applied.append(f"{migration.version:04d}_{migration.name}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return applied

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
        self.writers.close()


