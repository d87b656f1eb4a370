"""A repository that adds behaviour to another one's sessions (encryption, the outbox, ...).

Subclasses implement :meth:`wrap`; everything else is the wrapped repository's. Wrappers nest
(``inner`` is itself a repository), so each concern stays one small class.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Literal

from carebridge.storage.base import Repository, Session


class RepositoryWrapper:
    """Delegates to ``inner``; sessions pass through :meth:`wrap`."""

    def __init__(self, inner: Repository) -> None:
        self.inner = inner

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def dialect(self) -> Literal["sqlite", "postgresql"]:
        return self.inner.dialect

    def migrate(self) -> list[str]:
        return self.inner.migrate()

    def schema_version(self) -> int:
        return self.inner.schema_version()

    def session(self, *, write: bool = False) -> AbstractContextManager[Session]:
        return self._session(write)

    def write_busy(self) -> bool:
        return self.inner.write_busy()

    @contextmanager
    def _session(self, write: bool) -> Iterator[Session]:
        with self.inner.session(write=write) as session:
            yield self.wrap(session, write)

    def wrap(self, session: Session, write: bool) -> Session:
        """The session callers get for ``session`` (the inner one, unchanged, here)."""
        return session

    def close(self) -> None:
        self.inner.close()
