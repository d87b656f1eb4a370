"""SQLite writers take turns (storage.sqlite.WriterTurns): within a process and across
processes, a writer waits for the one holding the turn and goes as soon as it is free."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from carebridge.storage.sqlite import SqliteRepository

HOLD = """
import sys
from carebridge.storage.sqlite import SqliteRepository, WriterTurns
repo = SqliteRepository(sys.argv[1])
repo.migrate()
with repo.session(write=True) as session:  # a write that commits before the turn is held
    session.query("INSERT INTO schema_migrations VALUES (9999, 'held', 'x')", ())
# Only the turn, no SQLite transaction: SQLite alone would let another writer through.
with WriterTurns(repo.path).turn():
    print("holding", flush=True)
    sys.stdin.readline()  # until the test says go
print("released", flush=True)
"""


def _try_write(repo: SqliteRepository, done: threading.Event) -> None:
    with repo.session(write=True) as session:
        session.query("SELECT count(*) FROM schema_migrations", ())
    done.set()


def test_a_writer_in_another_process_waits_for_the_turn_then_goes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    with subprocess.Popen([sys.executable, "-c", HOLD, url], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None and holder.stdin is not None
            assert holder.stdout.readline().strip() == "holding"
            repo = SqliteRepository(url)
            done = threading.Event()
            waiter = threading.Thread(target=_try_write, args=(repo, done), daemon=True)
            waiter.start()
            assert not done.wait(0.5)  # the other process holds the turn (no SQLite lock)
            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "released"
            assert done.wait(10)  # and then this one writes
            waiter.join()
            with repo.session() as session:
                assert session.query("SELECT name FROM schema_migrations WHERE version = 9999",
                                     ())[0][0] == "held"
            repo.close()
            assert Path(f"{tmp_path}/t.db-writer").exists()
        finally:
            holder.kill()


def test_threads_of_one_process_take_turns_too(tmp_path: Path) -> None:
    repo = SqliteRepository(f"sqlite:///{tmp_path}/t.db")
    repo.migrate()
    done = threading.Event()
    with repo.session(write=True):
        waiter = threading.Thread(target=_try_write, args=(repo, done), daemon=True)
        waiter.start()
        assert not done.wait(0.3)
    assert done.wait(10)
    waiter.join()
    repo.close()
