"""Pick the storage backend from a database URL."""

from __future__ import annotations

from carebridge.storage.base import Repository

DEFAULT_DATABASE_URL = "sqlite:///./var/carebridge.db"


def open_repository(url: str = DEFAULT_DATABASE_URL, *, migrate: bool = True) -> Repository:
    """Open ``sqlite:///path`` or ``postgresql://...`` and apply pending migrations."""
    repo: Repository
    if url.startswith("sqlite:"):
        from carebridge.storage.sqlite import SqliteRepository

        repo = SqliteRepository(url)
    elif url.startswith(("postgresql:", "postgres:")):
        from carebridge.storage.postgresql import PostgresRepository

        repo = PostgresRepository(url)
    else:
        raise ValueError(f"unsupported database URL {url!r}: use sqlite:///... or postgresql://...")
    if migrate:
        repo.migrate()
    return repo
