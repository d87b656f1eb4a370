"""The Repository contract, run against every backend."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from carebridge.storage import Repository, StoredVersion, VersionConflict, open_repository
from carebridge.storage.base import HistoryQuery, Write
from carebridge.storage.migrations import migrations_for
from carebridge.testing.writers import write_session_elsewhere

T0 = datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)


def version(rid: str, n: int, method: str = "PUT", body: bytes | None = b"{}",
            at: datetime = T0) -> StoredVersion:
    return StoredVersion("Patient", rid, n, at, method, body)  # type: ignore[arg-type]


def test_write_then_read_current_and_every_version(repository: Repository) -> None:
    with repository.session(write=True) as s:
        s.write([Write(version("a", 1, "POST", b'{"v":1}'), None)])
    with repository.session(write=True) as s:
        s.write([Write(version("a", 2, "PUT", b'{"v":2}', T0 + timedelta(seconds=1)), 1)])
    with repository.session() as s:
        current = s.read("Patient", "a")
        assert current is not None
        assert (current.version, current.body, current.deleted) == (2, b'{"v":2}', False)
        assert current.last_updated == T0 + timedelta(seconds=1)
        first = s.vread("Patient", "a", 1)
        assert first is not None and first.body == b'{"v":1}' and first.method == "POST"
        assert s.vread("Patient", "a", 3) is None
        assert s.read("Patient", "missing") is None
        assert s.read("Observation", "a") is None


def test_create_of_existing_id_conflicts_and_writes_nothing(repository: Repository) -> None:
    with repository.session(write=True) as s:
        s.write([Write(version("a", 1, "POST"), None)])
    with pytest.raises(VersionConflict), repository.session(write=True) as s:
        s.write([Write(version("b", 1, "POST"), None), Write(version("a", 1, "POST"), None)])
    with repository.session() as s:
        assert s.read("Patient", "b") is None  # rolled back with the conflict
        assert s.history(HistoryQuery("Patient", count=10, with_total=True)).total == 1


def test_update_from_a_stale_version_conflicts(repository: Repository) -> None:
    with repository.session(write=True) as s:
        s.write([Write(version("a", 1, "POST"), None)])
        s.write([Write(version("a", 2), 1)])
    with pytest.raises(VersionConflict), repository.session(write=True) as s:
        s.write([Write(version("a", 2), 1)])


def test_deletion_is_a_version(repository: Repository) -> None:
    with repository.session(write=True) as s:
        s.write([Write(version("a", 1, "POST"), None)])
        s.write([Write(version("a", 2, "DELETE", None), 1)])
    with repository.session() as s:
        current = s.read("Patient", "a")
        assert current is not None and current.deleted and current.body is None
        assert s.count_current() == {}
        page = s.history(HistoryQuery("Patient", "a"))
        assert [v.method for _, v in page.entries] == ["DELETE", "POST"]


def test_history_pages_newest_first_with_cursors_and_since(repository: Repository) -> None:
    with repository.session(write=True) as s:
        for i in range(7):
            s.write([Write(version(f"p{i}", 1, "POST", at=T0 + timedelta(minutes=i)), None)])
        s.write([Write(StoredVersion("Observation", "o", 1, T0, "POST", b"{}"), None)])
    with repository.session() as s:
        def page(**kw: Any) -> list[str]:
            query = HistoryQuery("Patient", **({"count": 3} | kw))
            return [v.id for _, v in s.history(query).entries]

        first = s.history(HistoryQuery("Patient", count=3, with_total=True))
        assert [v.id for _, v in first.entries] == ["p6", "p5", "p4"]
        assert first.total == 7
        last_seq = first.entries[-1][0]
        assert page(before_seq=last_seq) == ["p3", "p2", "p1"]
        assert page(after_seq=last_seq) == ["p6", "p5"]
        assert page(since=T0 + timedelta(minutes=5), count=10) == ["p6", "p5"]
        everything = s.history(HistoryQuery(count=100, with_total=True))
        assert everything.total == 8


def test_read_many(repository: Repository) -> None:
    with repository.session(write=True) as s:
        s.write([Write(version("a", 1, "POST"), None), Write(version("b", 1, "POST"), None)])
    with repository.session() as s:
        found = s.read_many([("Patient", "a"), ("Patient", "zzz"), ("Patient", "b")])
        assert sorted(found) == [("Patient", "a"), ("Patient", "b")]


def test_concurrent_updates_never_lose_one(repository: Repository) -> None:
    """Eight threads each read-modify-write the same resource 10 times, retrying on
    conflict: every write must be a distinct version."""
    with repository.session(write=True) as s:
        s.write([Write(version("c", 1, "POST"), None)])
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(10):
                while True:
                    try:
                        with repository.session(write=True) as s:
                            cur = s.read("Patient", "c")
                            assert cur is not None
                            s.write([Write(version("c", cur.version + 1), cur.version)])
                        break
                    except VersionConflict:
                        continue
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with repository.session() as s:
        current = s.read("Patient", "c")
        assert current is not None and current.version == 81
        page = s.history(HistoryQuery("Patient", "c", count=1000))
        assert sorted(v.version for _, v in page.entries) == list(range(1, 82))


def test_write_busy_says_whether_a_writer_would_wait(repository: Repository) -> None:
    """SQLite has one writer at a time, across threads and processes; PostgreSQL writers
    never wait for each other as a whole."""
    assert not repository.write_busy()
    with write_session_elsewhere(repository):
        assert repository.write_busy() == (repository.dialect == "sqlite")
    assert not repository.write_busy()
    if repository.dialect != "sqlite":
        return
    code = ("import sys, time\n"
            "from carebridge.storage import open_repository\n"
            "with open_repository(sys.argv[1]).session(write=True):\n"
            "    print('holding', flush=True)\n"
            "    time.sleep(30)\n")
    other = subprocess.Popen([sys.executable, "-c", code, repository.url],
                             stdout=subprocess.PIPE, text=True)
    try:  # another process takes the turn and keeps it until killed
        assert other.stdout is not None and other.stdout.readline() == "holding\n"
        assert repository.write_busy()
    finally:
        other.kill()
        other.communicate(timeout=10)
    assert not repository.write_busy()  # the kernel let go of the dead process's lock


def test_migrations_are_recorded_and_idempotent(database_url: str) -> None:
    repo = open_repository(database_url, migrate=False)
    try:
        assert repo.schema_version() == 0
        applied = repo.migrate()
        assert applied == [f"{m.version:04d}_{m.name}" for m in migrations_for(repo.dialect)]
        assert repo.migrate() == []
        assert repo.schema_version() == len(applied)
    finally:
        repo.close()


def test_sqlite_file_is_in_wal_mode(tmp_path: object) -> None:
    import sqlite3

    path = f"{tmp_path}/w.db"
    repo = open_repository(f"sqlite:///{path}")
    repo.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unsupported_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        open_repository("mysql://x")
    with pytest.raises(ValueError, match="file path"):
        open_repository("sqlite://:memory:")
