"""SQLite connection settings made for speed: the sqlite3 adapters storage.sqlite registers
(None and bytes) bind exactly what sqlite3 bound without them (NULL and BLOB, also through
executemany and in comparisons), and a connection that writes has the larger page cache."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import carebridge.storage.sqlite  # noqa: F401  (registers the adapters)


def test_none_binds_as_null_and_bytes_as_the_same_blob() -> None:
    assert sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)] is not None
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (k INTEGER, a, b)")
    body = b"\x00{\"resourceType\":\"Patient\"}\xff"
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(1, None, body), (2, "x", None)])
    conn.execute("INSERT INTO t VALUES (?, ?, ?)", (3, None, b""))
    rows = conn.execute("SELECT k, typeof(a), a IS NULL, typeof(b), b FROM t ORDER BY k")
    assert rows.fetchall() == [
        (1, "null", 1, "blob", body),
        (2, "text", 0, "null", None),
        (3, "null", 1, "blob", b""),
    ]
    # A NULL parameter compares as SQL NULL does (never equal), a blob by its bytes.
    assert conn.execute("SELECT count(*) FROM t WHERE a = ?", (None,)).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM t WHERE a IS ?", (None,)).fetchone() == (2,)
    assert conn.execute("SELECT k FROM t WHERE b = ?", (body,)).fetchall() == [(1,)]


def test_a_writing_connection_gets_the_larger_page_cache(tmp_path: Path) -> None:
    from carebridge.storage.sqlite import WRITER_CACHE_KIB, SqliteRepository

    repo = SqliteRepository(f"sqlite:///{tmp_path / 'cache.db'}")
    repo.migrate()
    sizes: dict[str, int] = {}

    def reader() -> None:
        with repo.session() as s:
            sizes["reader"] = s.query("PRAGMA cache_size", [])[0][0]

    thread = threading.Thread(target=reader)
    thread.start()
    thread.join()
    with repo.session(write=True) as s:
        sizes["writer"] = s.query("PRAGMA cache_size", [])[0][0]
    repo.close()
    # SQLite's default (-2000 KiB) for a connection that only reads; a writer's is larger so a
    # group commit's pages stay in memory instead of spilling into the WAL mid-transaction.
    assert sizes == {"reader": -2000, "writer": -WRITER_CACHE_KIB}
