"""Storage: one :class:`Repository` protocol, SQLite (embedded default) and PostgreSQL backends.

``open_repository(url)`` picks the backend from the database URL.
"""

from carebridge.storage.base import (
    HistoryPage,
    Repository,
    Session,
    StoredVersion,
    VersionConflict,
)
from carebridge.storage.factory import open_repository

__all__ = [
    "HistoryPage",
    "Repository",
    "Session",
    "StoredVersion",
    "VersionConflict",
    "open_repository",
]
