"""SQL text shared by the backends; only the parameter mark differs (``?`` or ``%s``)."""

from __future__ import annotations

from typing import Any

from carebridge.storage.base import HistoryQuery

VERSION_COLUMNS = "resource_type, id, version, last_updated, method, body"


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
