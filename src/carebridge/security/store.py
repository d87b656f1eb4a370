"""A thin helper over ``repository.session()`` for the security tables.

SQL is written once with ``?`` placeholders and turned into ``%s`` for PostgreSQL; each call is
its own short transaction unless a session is passed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from carebridge.storage.base import Repository, Session


def now() -> float:
    return time.time()


class SecurityStore:
    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self.postgres = repository.dialect == "postgresql"

    def sql(self, text: str) -> str:
        return text.replace("?", "%s") if self.postgres else text

    def query(self, text: str, params: Sequence[Any] = (), *,
              session: Session | None = None, write: bool = False) -> list[tuple[Any, ...]]:
        if session is not None:
            return session.query(self.sql(text), params)
        with self.repository.session(write=write) as own:
            return own.query(self.sql(text), params)

    def execute(self, text: str, params: Sequence[Any] = (), *,
                session: Session | None = None) -> int:
        """Run one INSERT/UPDATE/DELETE; returns the number of rows it touched. (``RETURNING``
        is added so that the session's fetch works on both databases.)"""
        return len(self.query(text + " RETURNING 1", params, session=session, write=True))

    @staticmethod
    def flag(value: bool) -> int:
        """A flag column's value (INTEGER 0/1 in both dialects' security tables)."""
        return int(value)
