"""SQL text shared by the backends; only the parameter mark differs (``?`` or ``%s``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from carebridge.storage.base import HistoryPage, HistoryQuery, StoredVersion, Write

VERSION_COLUMNS = "resource_type, id, version, last_updated, method, body"

# The search index tables and their value columns. Every row starts with its resource's
# number and its parameter's (``rid``, ``pid``: migrations sqlite 0011, postgresql 0012);
# carebridge.search.index makes rows of (pid, values...) and a session puts the numbers in
# front when it knows them.
INDEX_TABLES: dict[str, tuple[str, ...]] = {
    "idx_string": ("norm", "exact"),
    "idx_token": ("system", "code", "text_norm", "type_system", "type_code"),
    "idx_date": ("low", "high"),
    "idx_number": ("low", "high", "value"),
    "idx_quantity": ("system", "code", "value", "low", "high", "canon_code", "canon_value"),
    "idx_reference": ("target_type", "target_id", "version", "url", "ident_system",
                      "ident_value"),
    "idx_uri": ("value",),
    "idx_composite": ("c1_system", "c1_code", "c2_system", "c2_code", "c2_low", "c2_high",
                      "c2_canon_code", "c2_canon_value"),
}

Rows = dict[str, list[tuple[Any, ...]]]

# SQLite: an index row's rowid is rid * 2**24 + n, so a resource's rows in a table are one
# range of the table's B-tree (migration 0011).
ROW_BITS = 24
ROWS_PER_RESOURCE = 1 << ROW_BITS


def rows_of(rows: str, resource: str, sqlite: bool) -> str:
    """SQL: the index rows (alias ``rows``) of the resource ``resource`` (any alias with a
    ``rid`` column): on SQLite a range of the index table's rowids, which its B-tree finds
    (there is no index on ``rid``); on PostgreSQL the table's (rid, pid) index."""
    if sqlite:
        return (f"{rows}.k BETWEEN {resource}.rid * {ROWS_PER_RESOURCE}"
                f" AND {resource}.rid * {ROWS_PER_RESOURCE} + {ROWS_PER_RESOURCE - 1}")
    return f"{rows}.rid = {resource}.rid"


def index_insert_sql(table: str, mark: str) -> str:
    keyed = ("k",) if mark == "?" else ()
    columns = (*keyed, "rid", "pid", *INDEX_TABLES[table])
    marks = ", ".join([mark] * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


def index_delete_sql(table: str, mark: str) -> str:
    if mark == "?":
        return f"DELETE FROM {table} WHERE k BETWEEN ? AND ?"
    return f"DELETE FROM {table} WHERE rid = {mark}"


def history_sql(
    query: HistoryQuery, mark: str, since: Any
) -> tuple[str, list[Any], str | None, list[Any]]:
    """The page query and (when ``with_total``) the count query, with their parameters.

    ``since`` is ``query.since`` already converted to the backend's column type. The page is
    ordered by ``seq``, ascending when paging towards newer versions (the caller reverses it).
    """
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("resource_type", query.resource_type), ("id", query.resource_id)):
        if value is not None:
            where.append(f"{column} = {mark}")
            params.append(value)
    if query.since is not None:
        where.append(f"last_updated >= {mark}")
        params.append(since)
    total_where, total_params = list(where), list(params)
    if query.before_seq is not None:
        where.append(f"seq < {mark}")
        params.append(query.before_seq)
    if query.after_seq is not None:
        where.append(f"seq > {mark}")
        params.append(query.after_seq)
    order = "ASC" if query.after_seq is not None else "DESC"
    page = (f"SELECT seq, {VERSION_COLUMNS} FROM resource_history{_where(where)}"
            f" ORDER BY seq {order} LIMIT {mark}")
    total = None
    if query.with_total:
        total = f"SELECT count(*) FROM resource_history{_where(total_where)}"
    return page, [*params, query.count], total, total_params


def _where(conditions: list[str]) -> str:
    return (" WHERE " + " AND ".join(conditions)) if conditions else ""


def index_statements(writes: Sequence[Write], rids: Sequence[int],
                     mark: str) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The statements that bring the search index in line with ``writes`` (whose resources
    have the numbers ``rids``): delete the rows of resources that had a version before,
    insert the rows of the new versions."""
    statements: list[tuple[str, list[tuple[Any, ...]]]] = []
    sqlite = mark == "?"
    replaced: list[tuple[int, ...]] = [
        ((rid << ROW_BITS, (rid << ROW_BITS) + ROWS_PER_RESOURCE - 1) if sqlite else (rid,))
        for w, rid in zip(writes, rids, strict=True) if w.expected_version is not None]
    if replaced:
        statements.extend((index_delete_sql(table, mark), replaced) for table in INDEX_TABLES)
    collected: dict[str, list[tuple[Any, ...]]] = {}
    for w, rid in zip(writes, rids, strict=True):
        if not w.index:
            continue
        for table, rows in w.index.items():
            into = collected.setdefault(table, [])
            if len(rows) > ROWS_PER_RESOURCE:  # 16.7M values of one type in one resource
                raise ValueError(f"{w.version.resource_type}/{w.version.id} has {len(rows)}"
                                 f" {table} index rows; at most {ROWS_PER_RESOURCE} are stored")
            if sqlite:
                base = rid << ROW_BITS
                into.extend([(base + n, rid, *row) for n, row in enumerate(rows)])
            else:
                into.extend([(rid, *row) for row in rows])
    statements.extend((index_insert_sql(table, mark), rows) for table, rows in collected.items())
    return statements


class SqlSession(ABC):
    """History and counts, written once for both dialects; a backend gives the parameter
    mark, how it passes an instant, how a row becomes a version, and how it runs SQL."""

    mark: str

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def _instant(self, moment: datetime) -> Any: ...

    @abstractmethod
    def _version(self, row: Sequence[Any]) -> StoredVersion: ...

    def history(self, query: HistoryQuery) -> HistoryPage:
        since = self._instant(query.since) if query.since is not None else None
        page_sql, page_params, total_sql, total_params = history_sql(query, self.mark, since)
        rows = self.query(page_sql, page_params)
        entries = [(int(row[0]), self._version(row[1:])) for row in rows]
        if query.after_seq is not None:
            entries.reverse()
        total = None
        if total_sql is not None:
            found = self.query(total_sql, total_params)
            total = int(found[0][0]) if found else 0
        return HistoryPage(entries, total)

    def count_current(self, resource_type: str | None = None) -> dict[str, int]:
        sql = "SELECT resource_type, count(*) FROM resource WHERE NOT deleted"
        params: tuple[str, ...] = ()
        if resource_type is not None:
            sql += f" AND resource_type = {self.mark}"
            params = (resource_type,)
        rows = self.query(sql + " GROUP BY resource_type", params)
        return {row[0]: int(row[1]) for row in rows}
