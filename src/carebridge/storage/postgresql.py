"""PostgreSQL backend (production): psycopg 3 with a connection pool.

Writes rely on the row-level semantics of READ COMMITTED: ``UPDATE ... WHERE version = n``
re-checks the condition after waiting for a concurrent writer, so the loser sees zero rows and
raises :class:`VersionConflict`; an ``INSERT ... ON CONFLICT DO NOTHING`` that meets a
concurrent create of the same id likewise inserts nothing. Migrations hold an advisory lock so
several server processes starting together apply each migration once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from psycopg_pool import ConnectionPool

from carebridge.storage.base import StoredVersion, VersionConflict, Write
from carebridge.storage.migrations import migrations_for, sql_statements
from carebridge.storage.sql import VERSION_COLUMNS, SqlSession, index_statements

_COPY_THRESHOLD = 50  # rows; below this executemany costs less than setting up COPY
_MIGRATION_LOCK = 0x0CA4EB41D6E  # arbitrary constant: "carebridge migrations"


def _version(row: Any) -> StoredVersion:
    rtype, rid, version, updated, method, body = row
    body = bytes(body) if body is not None else None
    return StoredVersion(rtype, rid, version, updated.astimezone(UTC), method, body)


class PostgresSession(SqlSession):
    mark = "%s"

    def _instant(self, moment: datetime) -> Any:
        return moment

    def _version(self, row: Sequence[Any]) -> StoredVersion:
        return _version(row)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def read(self, resource_type: str, resource_id: str) -> StoredVersion | None:
        row = self._conn.execute(
            "SELECT resource_type, id, version, last_updated,"
            " CASE WHEN deleted THEN 'DELETE' ELSE 'PUT' END, body"
            " FROM resource WHERE resource_type = %s AND id = %s",
            (resource_type, resource_id),
        ).fetchone()
        return _version(row) if row else None

    def read_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVersion]:
        if not keys:
            return {}
        types = [k[0] for k in keys]
        ids = [k[1] for k in keys]
        rows = self._conn.execute(
            "SELECT r.resource_type, r.id, r.version, r.last_updated,"
            " CASE WHEN r.deleted THEN 'DELETE' ELSE 'PUT' END, r.body"
            " FROM resource r JOIN unnest(%s::text[], %s::text[]) AS k(t, i)"
            " ON r.resource_type = k.t AND r.id = k.i",
            (types, ids),
        ).fetchall()
        return {(row[0], row[1]): _version(row) for row in rows}

    def vread(self, resource_type: str, resource_id: str, version: int) -> StoredVersion | None:
        row = self._conn.execute(
            f"SELECT {VERSION_COLUMNS} FROM resource_history"
            " WHERE resource_type = %s AND id = %s AND version = %s",
            (resource_type, resource_id, version),
        ).fetchone()
        return _version(row) if row else None

    def write(self, writes: Sequence[Write]) -> None:
        inserts = [w.version for w in writes if w.expected_version is None]
        updates = [w for w in writes if w.expected_version is not None]
        with self._conn.cursor() as cur:
            taken_rids: list[int] = []
            if inserts:
                # Numbers for the new resources in one round trip (the identity column's
                # sequence), so that their index rows can be written with them.
                cur.execute("SELECT nextval(pg_get_serial_sequence('resource', 'rid'))"
                            " FROM generate_series(1, %s)", (len(inserts),))
                taken_rids = [int(r[0]) for r in cur.fetchall()]
                cur.executemany(
                    "INSERT INTO resource"
                    " (rid, resource_type, id, version, last_updated, deleted, body)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [
                        (rid, v.resource_type, v.id, v.version, v.last_updated, v.deleted,
                         v.body)
                        for rid, v in zip(taken_rids, inserts, strict=True)
                    ],
                )
                if cur.rowcount != len(inserts):
                    existing = self.read_many([(v.resource_type, v.id) for v in inserts])
                    taken = next(iter(existing.values()), inserts[0])
                    raise VersionConflict(taken.resource_type, taken.id)
            fresh = [w for w in writes if w.expected_version is None]
            numbers = {id(w): rid for w, rid in zip(fresh, taken_rids, strict=True)}
            for w in updates:
                v = w.version
                cur.execute(
                    "UPDATE resource SET version = %s, last_updated = %s, deleted = %s,"
                    " body = %s WHERE resource_type = %s AND id = %s AND version = %s"
                    " RETURNING rid",
                    (v.version, v.last_updated, v.deleted, v.body,
                     v.resource_type, v.id, w.expected_version),
                )
                found = cur.fetchone()
                if found is None:
                    raise VersionConflict(v.resource_type, v.id)
                numbers[id(w)] = int(found[0])
            cur.executemany(
                f"INSERT INTO resource_history ({VERSION_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                [
                    (w.version.resource_type, w.version.id, w.version.version,
                     w.version.last_updated, w.version.method, w.version.body)
                    for w in writes
                ],
            )
            rids = [numbers[id(w)] for w in writes]
            for statement, rows in index_statements(writes, rids, "%s"):
                if statement.startswith("INSERT INTO ") and len(rows) > _COPY_THRESHOLD:
                    # COPY moves many rows several times faster than executemany.
                    table, _, columns = statement[12:].partition(" (")
                    copy_sql = f"COPY {table} ({columns.split(')')[0]}) FROM STDIN"
                    with cur.copy(copy_sql.encode()) as copy:
                        for row in rows:
                            copy.write_row(row)
                else:
                    cur.executemany(statement.encode(), rows)

    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        # Never prepared: a plan cached while a table was small (say, empty at the start of a
        # bulk load) would be kept as the table grows; search SQL is planned per execution.
        return self._conn.execute(sql.encode(), params, prepare=False).fetchall()

    def lock(self, key: str) -> None:
        self._conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))


class PostgresRepository:
    dialect: Literal["postgresql"] = "postgresql"

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 20) -> None:
        self.url = url
        # JIT compilation off for this server's sessions: its statements are short index
        # look-ups, and a plan estimated as costly (a keyset page deep in a large table) was
        # compiled first, adding ~30 ms to a 5 ms query (PostgreSQL's jit_above_cost).
        self._pool = ConnectionPool(
            url, min_size=min_size, max_size=max_size, open=True,
            kwargs={"autocommit": True, "options": "-c jit=off"}, name="carebridge",
        )
        self._pool.wait(timeout=30)

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[PostgresSession]:
        # Connections are in autocommit mode: a read-only session's statements each run on
        # their own (one round trip for a read by id instead of BEGIN, SELECT, COMMIT); a write
        # session is one explicit transaction.
        with self._pool.connection() as conn:
            if write:
                with conn.transaction():
                    yield PostgresSession(conn)
            else:
                yield PostgresSession(conn)

    def write_busy(self) -> bool:
        """Writers never wait for each other as a whole here (row locks only)."""
        return False

    def schema_version(self) -> int:
        with self._pool.connection() as conn:
            exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
            if not exists or exists[0] is None:
                return 0
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
            return int(row[0] or 0) if row else 0

    def migrate(self) -> list[str]:
        applied: list[str] = []
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL)"
            )
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
            current = int(row[0] or 0) if row else 0
            for migration in migrations_for("postgresql"):
                if migration.version <= current:
                    continue
                with conn.transaction():
                    for statement in sql_statements(migration.sql):
                        conn.execute(statement.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                        (migration.version, migration.name, datetime.now(UTC)),
                    )
                applied.append(f"{migration.version:04d}_{migration.name}")
        return applied

    def close(self) -> None:
        self._pool.close()
