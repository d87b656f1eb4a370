"""Measurement for a design decision: what the search-index rows of an ingest cost to write
in the product's SQLite layout, against two compact layouts not (yet) in the product.

Issue 3's ingest target (indexing adds at most 40 % to the transaction ingest) is not met:
indexing adds ~+100 % (``bench/search.py``, first section). Most of that is writing ~10 index
rows per resource into B-trees, each row a table entry plus two or three index entries keyed
by text: ``(resource_type, param, value..., id)`` for look-ups and ``(resource_type, id,
param, ...)`` to find a resource's rows. This file prices the alternative before anyone
rewrites the search SQL for it.

The same rows (``index_rows`` of every resource in the Synthea bundles, ids assigned as the
server assigns them) are inserted one transaction per bundle, in the product's WAL mode with
``synchronous=FULL``, its writer cache and no checkpoints (the WAL's size then counts the
pages each layout dirties), into:

- **current**: the product's tables and indexes (its migrations);
- **compact**: the same tables keyed by integers: ``rid`` (a resource's number, as a rowid
  of the resource table would give it), ``pid`` (one number per resource type and
  parameter: 169 here) and code systems replaced by numbers from a dictionary (618 here);
  the same look-up and per-resource indexes over those;
- **compact-rowid**: as compact, without the per-resource indexes: each row's rowid is
  ``rid << 16 | n`` (n counts the resource's rows in that table), so the table B-tree itself
  finds a resource's rows (``rowid BETWEEN rid << 16 AND rid << 16 | 65535``) and every
  insert appends.

Printed per layout: microseconds per resource and per row (best of ``--rounds``, all rounds
listed) and WAL frames per resource. The floor is the current layout: the figure that counts
is the ratio. Only the writing is measured (extraction is ``bench/search.py``'s
``index_rows()`` line); search SQL over the compact layouts is not written.

``--end-to-end`` measures the compact-rowid layout's write path in the real server instead:
HTTP transaction ingest of the same bundles (as ``bench/search.py``'s ingest A/B) into the
product as it is, into a server whose SQLite sessions write compact-rowid rows instead of the
product's (a monkeypatch of ``SqliteSession.write`` in that server process; searches are not
rewritten, so that server could not answer them), and with no index rows at all (the floor).
Printed: resources/s of each and what each layout adds to the no-index time.

Run::

    .venv/bin/python bench/index_layout.py [--rounds 3] [--data ../shared/data/synthea-r4]
    .venv/bin/python bench/index_layout.py --end-to-end [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from carebridge.fhir.resource import new_id, now_instant, with_meta
from carebridge.search.index import index_rows
from carebridge.storage.sql import index_insert_sql
from carebridge.storage.sqlite import WRITER_CACHE_KIB, SqliteRepository

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "synthea-r4"

Rows = dict[str, list[tuple[Any, ...]]]

# Where a row's values (after resource_type, id, param) hold a code system.
SYSTEM_COLUMNS = {"idx_token": (0, 3), "idx_quantity": (0,), "idx_composite": (0, 2),
                  "idx_reference": (4,)}

COMPACT_SCHEMA = """
CREATE TABLE c_string (rid INTEGER, pid INTEGER, norm TEXT, exact TEXT);
CREATE INDEX c_string_r ON c_string (rid, pid);
CREATE INDEX c_string_l ON c_string (pid, norm, rid);
CREATE TABLE c_token (rid INTEGER, pid INTEGER, system INTEGER, code TEXT, text_norm TEXT,
                      type_system INTEGER, type_code TEXT);
CREATE INDEX c_token_r ON c_token (rid, pid, code, system);
CREATE INDEX c_token_l ON c_token (pid, code, system, rid);
CREATE TABLE c_date (rid INTEGER, pid INTEGER, low INTEGER, high INTEGER);
CREATE INDEX c_date_r ON c_date (rid, pid, low, high);
CREATE INDEX c_date_low ON c_date (pid, low, rid, high);
CREATE INDEX c_date_high ON c_date (pid, high, rid, low);
CREATE TABLE c_number (rid INTEGER, pid INTEGER, low REAL, high REAL, value REAL);
CREATE INDEX c_number_r ON c_number (rid, pid);
CREATE INDEX c_number_l ON c_number (pid, value);
CREATE TABLE c_quantity (rid INTEGER, pid INTEGER, system INTEGER, code TEXT, value REAL,
                         low REAL, high REAL, canon_code TEXT, canon_value REAL);
CREATE INDEX c_quantity_r ON c_quantity (rid, pid);
CREATE INDEX c_quantity_l1 ON c_quantity (pid, canon_code, canon_value);
CREATE INDEX c_quantity_l2 ON c_quantity (pid, code, value);
CREATE TABLE c_reference (rid INTEGER, pid INTEGER, target_type TEXT, target_id TEXT,
                          version TEXT, url TEXT, ident_system INTEGER, ident_value TEXT);
CREATE INDEX c_reference_r ON c_reference (rid, pid, target_type, target_id);
CREATE INDEX c_reference_l ON c_reference (target_id, target_type, pid, rid);
CREATE INDEX c_reference_url ON c_reference (pid, url) WHERE url IS NOT NULL;
CREATE TABLE c_uri (rid INTEGER, pid INTEGER, value TEXT);
CREATE INDEX c_uri_r ON c_uri (rid, pid);
CREATE INDEX c_uri_l ON c_uri (pid, value);
CREATE TABLE c_composite (rid INTEGER, pid INTEGER, c1_system INTEGER, c1_code TEXT,
                          c2_system INTEGER, c2_code TEXT, c2_low REAL, c2_high REAL,
                          c2_canon_code TEXT, c2_canon_value REAL);
CREATE INDEX c_composite_r ON c_composite (rid, pid);
CREATE INDEX c_composite_l ON c_composite (pid, c1_code, c2_code);
"""

# No per-resource indexes; the rowid (first column) says whose row it is.
ROWID_SCHEMA = "\n".join(
    line for line in COMPACT_SCHEMA.splitlines() if not re.search(r"_r ON", line)
).replace("(rid INTEGER, pid", "(k INTEGER PRIMARY KEY, rid INTEGER, pid")


def bundle_rows(files: Sequence[Path]) -> tuple[list[Rows], int]:
    """Each bundle's index rows, as the server would make them; and the resource count."""
    moment = now_instant()
    out: list[Rows] = []
    resources = 0
    for path in files:
        rows: Rows = {}
        for entry in orjson.loads(path.read_bytes()).get("entry") or []:
            resources += 1
            stored = with_meta(entry["resource"], new_id(), 1, moment)
            for table, found in index_rows(stored).items():
                rows.setdefault(table, []).extend(found)
        out.append(rows)
    return out, resources


class Numbering:
    """The dictionaries a compact layout would keep: resource, parameter and system numbers."""

    def __init__(self) -> None:
        self.params: dict[tuple[str, str], int] = {}
        self.systems: dict[str, int] = {}
        self.resources: dict[tuple[str, str], int] = {}

    def row(self, table: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
        resource_type, resource_id, param, *values = row
        for at in SYSTEM_COLUMNS.get(table, ()):
            if values[at] is not None:
                values[at] = self.systems.setdefault(values[at], len(self.systems) + 1)
        rid = self.resources.setdefault((resource_type, resource_id), len(self.resources) + 1)
        pid = self.params.setdefault((resource_type, param), len(self.params) + 1)
        return (rid, pid, *values)


def rowid_keyed(rows: Rows) -> Rows:
    out: Rows = {}
    for table, found in rows.items():
        seen: dict[int, int] = {}
        keyed = []
        for row in found:
            n = seen.get(row[0], 0)
            seen[row[0]] = n + 1
            keyed.append(((row[0] << 16) | n, *row))
        out[table] = keyed
    return out


def insert_all(layout: str, bundles: list[Rows], workdir: Path) -> tuple[float, int]:
    """Seconds inserting (one transaction per bundle) and WAL bytes written."""
    path = workdir / f"{layout}.db"
    if layout == "current":
        SqliteRepository(f"sqlite:///{path}").migrate()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode = WAL", "synchronous = FULL",
                       f"cache_size = -{WRITER_CACHE_KIB}", "wal_autocheckpoint = 0"):
            conn.execute(f"PRAGMA {pragma}")
        if layout != "current":
            conn.executescript(COMPACT_SCHEMA if layout == "compact" else ROWID_SCHEMA)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        seconds = 0.0
        for rows in bundles:
            started = time.perf_counter()
            conn.execute("BEGIN")
            for table, found in rows.items():
                if layout == "current":
                    sql = index_insert_sql(table, "?")
                else:
                    sql = (f"INSERT INTO c_{table[4:]} VALUES"
                           f" ({', '.join(['?'] * len(found[0]))})")
                for at in range(0, len(found), 300):
                    conn.executemany(sql, found[at:at + 300])
            conn.execute("COMMIT")
            seconds += time.perf_counter() - started
        return seconds, os.path.getsize(f"{path}-wal")
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


# ---------------------------------------------------------------------------- end to end


def _compact_write_path() -> None:
    """In a ``--serve`` process: SQLite sessions store compact-rowid rows (the product's
    resource rows unchanged; a resource's number is the rowid its insert gets)."""
    from carebridge.storage.base import Write
    from carebridge.storage.sqlite import SqliteSession

    product_write = SqliteSession.write
    params: dict[tuple[str, str], int] = {}
    ready: set[int] = set()

    def write(self: SqliteSession, writes: list[Write]) -> None:
        conn: sqlite3.Connection = self._conn
        if id(conn) not in ready:
            # (DDL joins the write transaction: no executescript, which would commit it)
            for statement in ROWID_SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS")
                                 .replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS"))
            ready.add(id(conn))
        last = conn.execute("SELECT coalesce(max(rowid), 0) FROM resource").fetchone()[0]
        product_write(self, [Write(w.version, w.expected_version) for w in writes])
        collected: Rows = {}
        for w in writes:
            if not w.index:
                continue
            if w.expected_version is None:
                last += 1  # rowids of new rows: one more than the largest, in insert order
                rid = last
            else:
                rid = conn.execute("SELECT rowid FROM resource WHERE resource_type = ? AND"
                                   " id = ?", (w.version.resource_type, w.version.id)
                                   ).fetchone()[0]
                for table in INDEX_NAMES:
                    conn.execute(f"DELETE FROM c_{table} WHERE k BETWEEN ? AND ?",
                                 (rid << 16, (rid << 16) | 65535))
            for table, found in w.index.items():
                out = collected.setdefault(table, [])
                key = rid << 16
                for row in found:
                    pid = params.setdefault((row[0], row[2]), len(params) + 1)
                    out.append((key, rid, pid, *row[3:]))
                    key += 1
        for table, found in collected.items():
            conn.executemany(f"INSERT INTO c_{table[4:]} VALUES"
                             f" ({', '.join(['?'] * len(found[0]))})", found)

    SqliteSession.write = write  # type: ignore[method-assign]


INDEX_NAMES = ("string", "token", "date", "number", "quantity", "reference", "uri",
               "composite")


def serve(database_url: str, host: str, port: int, variant: str) -> None:
    """The ``--serve`` process: ``bench/search.py``'s server with the product's index rows,
    compact-rowid ones, or none."""
    from search import serve as search_serve

    if variant == "compact":
        _compact_write_path()
    search_serve(database_url, host, port, no_index=variant == "none")


def end_to_end(files: Sequence[Path], rounds: int) -> None:
    from carebridge.testing import ServerProcess
    from search import _post_bundles  # this directory's search benchmark: the same client

    raws = [path.read_bytes() for path in files]
    resources = sum(len(orjson.loads(raw).get("entry") or []) for raw in raws)
    seconds: dict[str, list[float]] = {"product": [], "compact": [], "none": []}
    with tempfile.TemporaryDirectory(prefix="carebridge-bench-layout-") as tmp:
        for round_ in range(rounds):
            order = list(seconds) if round_ % 2 == 0 else list(reversed(seconds))
            for variant in order:
                path = Path(tmp) / f"{variant}-{round_}.db"
                program = (sys.executable, str(Path(__file__).resolve()), "--serve", variant)
                with ServerProcess(f"sqlite:///{path}", program=program) as server:
                    seconds[variant].append(_post_bundles(server.base_url, raws))
                check = sqlite3.connect(path)
                try:  # each variant wrote what it should, and only that
                    written = {table: check.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                               for table in ("idx_token", "c_token") if check.execute(
                                   "SELECT 1 FROM sqlite_master WHERE name = ?", (table,)
                               ).fetchone()}
                finally:
                    check.close()
                wanted = {"product": "idx_token", "compact": "c_token"}.get(variant)
                if any(bool(n) != (table == wanted) for table, n in written.items()):
                    raise SystemExit(f"{variant}: unexpected index rows {written}")
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
    floor = statistics.median(seconds["none"])
    print(f"HTTP transaction ingest of {len(files)} bundles ({resources} resources), median of"
          f" {rounds} alternating rounds:")
    for variant, label in (("none", "no index rows (floor)"), ("product", "product layout"),
                           ("compact", "compact-rowid layout")):
        took = statistics.median(seconds[variant])
        rounds_text = ", ".join(f"{x:.2f}" for x in seconds[variant])
        print(f"  {label:22s} {resources / took:7,.0f} resources/s; indexing adds"
              f" {took / floor - 1:+7.1%}  (rounds: {rounds_text} s)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":  # ServerProcess adds its own options
        serve_args = argparse.ArgumentParser()
        serve_args.add_argument("--serve", choices=("product", "compact", "none"))
        serve_args.add_argument("--database")
        serve_args.add_argument("--host")
        serve_args.add_argument("--port", type=int)
        known, _ = serve_args.parse_known_args()
        serve(known.database, known.host, known.port, known.serve)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--end-to-end", action="store_true",
                        help="HTTP ingest with each layout's write path (see above)")
    args = parser.parse_args()
    files = sorted(args.data.glob("patient-*.json"))
    if not files:
        raise SystemExit(f"no patient-*.json bundles in {args.data}")
    if args.end_to_end:
        end_to_end(files, args.rounds)
        return
    current, resources = bundle_rows(files)
    numbering = Numbering()
    compact = [{t: [numbering.row(t, r) for r in found] for t, found in rows.items()}
               for rows in current]
    layouts = {"current": current, "compact": compact,
               "compact-rowid": [rowid_keyed(rows) for rows in compact]}
    count = sum(len(found) for rows in current for found in rows.values())
    print(f"{len(files)} bundles, {resources} resources, {count} index rows"
          f" ({count / resources:.2f} per resource); {len(numbering.params)} parameters,"
          f" {len(numbering.systems)} systems numbered", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in layouts}
    wal: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="carebridge-bench-layout-") as tmp:
        for _ in range(args.rounds):  # interleaved, so that all see the same machine
            for name, bundles in layouts.items():
                took, wal[name] = insert_all(name, bundles, Path(tmp))
                seconds[name].append(took)
    floor = min(seconds["current"])
    for name in layouts:
        best = min(seconds[name])
        print(f"  {name:14s} {best / resources * 1e6:6.1f} us per resource,"
              f" {best / count * 1e6:5.2f} us per row, {wal[name] / 4120 / resources:4.2f} WAL"
              f" frames per resource; {best / floor:4.2f}x the current layout"
              f"  (rounds: {', '.join(f'{s:.2f}' for s in seconds[name])} s)")


if __name__ == "__main__":
    main()
