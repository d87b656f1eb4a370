"""Benchmark: what writing the search-index rows of an ingest costs in the product's
integer-keyed layout, against the text-keyed layout it replaced.

Until migrations sqlite 0011 / postgresql 0012, every index row named its resource and its
parameter by text: ``(resource_type, id, param, values...)``, with look-up indexes
``(resource_type, param, value..., id)`` and per-resource indexes ``(resource_type, id,
param, ...)``. Now a row is ``(k, rid, pid, values...)``: the resource's number, the number
of its (type, parameter) pair (``carebridge.search.params``), and on SQLite the rowid
``k = rid * 2**24 + n``, which finds a resource's rows without a per-resource index; the
look-up indexes start with ``pid``. This file measures the write side of that change.

The same rows (``index_rows`` of every resource in the Synthea bundles, ids assigned as the
server assigns them) are inserted one transaction per bundle, in the product's WAL mode with
``synchronous=FULL``, its writer cache and no checkpoints (the WAL's size then counts the
pages each layout dirties), into:

- **text** (before; the floor): the index tables and indexes of the old migrations (sqlite
  0002, 0006, 0009), written out below as ``TEXT_SCHEMA``; each row is the product's row
  with its ``pid`` turned back into (resource type, code) (``params.numbering()``) and the
  resource's id in front;
- **product** (now): the product's own migrations and insert statements
  (``storage.sql.index_statements``): rows ``(k, rid, pid, values...)``, resources numbered
  1, 2, ... in bundle order, as ``SqliteSession.write`` numbers them.

Only index rows are written (no resource rows, in either layout) and only the writing is
timed; extracting the rows is ``bench/search.py``'s ``index_rows()`` line. Printed per
layout: microseconds per resource and per row (best of ``--rounds``, all rounds listed) and
WAL frames per resource; then the ratio product/text, the figure that counts. What the
layout changes end to end (HTTP ingest with indexing on and off) is ``bench/search.py``'s
ingest part.

Run::

    .venv/bin/python bench/index_layout.py [--rounds 3] [--data ../shared/data/synthea-r4]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from carebridge.fhir.resource import new_id, now_instant, with_meta
from carebridge.search.index import index_rows
from carebridge.search.params import numbering
from carebridge.storage.base import StoredVersion, Write
from carebridge.storage.sql import INDEX_TABLES, index_statements
from carebridge.storage.sqlite import WRITER_CACHE_KIB, SqliteRepository

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "synthea-r4"

# One bundle's statements: (INSERT ..., its rows) per index table, as the session runs them.
Statements = list[tuple[str, list[tuple[Any, ...]]]]

# The text-keyed index as sqlite migrations 0002, 0006 and 0009 left it (0008 and 0010 only
# deleted rows): implicit rowids, a per-resource index and look-up indexes on every table.
TEXT_SCHEMA = """
CREATE TABLE idx_string (resource_type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
                         norm TEXT NOT NULL, exact TEXT NOT NULL);
CREATE INDEX idx_string_resource ON idx_string (resource_type, id, param);
CREATE INDEX idx_string_lookup ON idx_string (resource_type, param, norm, id);

CREATE TABLE idx_token (resource_type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
                        system TEXT, code TEXT, text_norm TEXT, type_system TEXT,
                        type_code TEXT);
CREATE INDEX idx_token_lookup ON idx_token (resource_type, param, code, system, id);
CREATE INDEX idx_token_resource ON idx_token (resource_type, id, param, code, system);

CREATE TABLE idx_date (resource_type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
                       low INTEGER NOT NULL, high INTEGER NOT NULL);
CREATE INDEX idx_date_low ON idx_date (resource_type, param, low, id, high);
CREATE INDEX idx_date_high ON idx_date (resource_type, param, high, id, low);
CREATE INDEX idx_date_resource ON idx_date (resource_type, id, param, low, high);

CREATE TABLE idx_number (resource_type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
                         low REAL NOT NULL, high REAL NOT NULL, value REAL NOT NULL);
CREATE INDEX idx_number_resource ON idx_number (resource_type, id, param);
CREATE INDEX idx_number_lookup1 ON idx_number (resource_type, param, value);

CREATE TABLE idx_quantity (resource_type TEXT NOT NULL, id TEXT NOT NULL,
                           param TEXT NOT NULL, system TEXT, code TEXT, value REAL, low REAL,
                           high REAL, canon_code TEXT, canon_value REAL);
CREATE INDEX idx_quantity_resource ON idx_quantity (resource_type, id, param);
CREATE INDEX idx_quantity_lookup1 ON idx_quantity (resource_type, param, canon_code,
                                                   canon_value);
CREATE INDEX idx_quantity_lookup2 ON idx_quantity (resource_type, param, code, value);

CREATE TABLE idx_reference (resource_type TEXT NOT NULL, id TEXT NOT NULL,
                            param TEXT NOT NULL, target_type TEXT, target_id TEXT,
                            version TEXT, url TEXT, ident_system TEXT, ident_value TEXT);
CREATE INDEX idx_reference_lookup ON idx_reference (target_id, target_type, param,
                                                    resource_type, id);
CREATE INDEX idx_reference_resource ON idx_reference (resource_type, id, param, target_type,
                                                      target_id);
CREATE INDEX idx_reference_url ON idx_reference (resource_type, param, url)
    WHERE url IS NOT NULL;

CREATE TABLE idx_uri (resource_type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
                      value TEXT NOT NULL);
CREATE INDEX idx_uri_resource ON idx_uri (resource_type, id, param);
CREATE INDEX idx_uri_lookup1 ON idx_uri (resource_type, param, value);

CREATE TABLE idx_composite (resource_type TEXT NOT NULL, id TEXT NOT NULL,
                            param TEXT NOT NULL, c1_system TEXT, c1_code TEXT,
                            c2_system TEXT, c2_code TEXT, c2_low REAL, c2_high REAL,
                            c2_canon_code TEXT, c2_canon_value REAL);
CREATE INDEX idx_composite_resource ON idx_composite (resource_type, id, param);
CREATE INDEX idx_composite_lookup1 ON idx_composite (resource_type, param, c1_code, c2_code);
"""

LAYOUTS = ("text", "product")


def text_insert_sql(table: str) -> str:
    """The old product's insert (storage.sql.index_insert_sql before migration 0011)."""
    columns = ("resource_type", "id", "param", *INDEX_TABLES[table])
    return (f"INSERT INTO {table} ({', '.join(columns)})"
            f" VALUES ({', '.join(['?'] * len(columns))})")


def bundle_statements(files: Sequence[Path]) -> tuple[dict[str, list[Statements]], int, int]:
    """Each layout's statements per bundle (the same rows), the resource and row counts."""
    moment = now_instant()
    names = {pid: pair for pair, pid in numbering().items()}
    text_sql = {table: text_insert_sql(table) for table in INDEX_TABLES}
    out: dict[str, list[Statements]] = {layout: [] for layout in LAYOUTS}
    resources = rows = 0
    rid = 0
    for path in files:
        writes: list[Write] = []
        text: dict[str, list[tuple[Any, ...]]] = {}
        for entry in orjson.loads(path.read_bytes()).get("entry") or []:
            stored = with_meta(entry["resource"], new_id(), 1, moment)
            found = index_rows(stored)
            version = StoredVersion(stored["resourceType"], stored["id"], 1, moment, "POST",
                                    orjson.dumps(stored))
            writes.append(Write(version, None, found))
            for table, table_rows in found.items():
                into = text.setdefault(table, [])
                for pid, *values in table_rows:
                    resource_type, code = names[pid]
                    into.append((resource_type, stored["id"], code, *values))
                rows += len(table_rows)
        rids = range(rid + 1, rid + 1 + len(writes))
        rid += len(writes)
        resources += len(writes)
        out["product"].append(index_statements(writes, rids, "?"))
        out["text"].append([(text_sql[table], found_rows) for table, found_rows in text.items()])
    return out, resources, rows


def insert_all(layout: str, bundles: list[Statements], workdir: Path) -> tuple[float, int, int]:
    """Seconds inserting (one transaction per bundle), WAL frames written, index rows stored."""
    path = workdir / f"{layout}.db"
    if layout == "product":
        SqliteRepository(f"sqlite:///{path}").migrate()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode = WAL", "synchronous = FULL",
                       f"cache_size = -{WRITER_CACHE_KIB}", "wal_autocheckpoint = 0"):
            conn.execute(f"PRAGMA {pragma}")
        if layout == "text":
            conn.executescript(TEXT_SCHEMA)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        seconds = 0.0
        for statements in bundles:
            started = time.perf_counter()
            conn.execute("BEGIN")
            for sql, rows in statements:
                conn.executemany(sql, rows)
            conn.execute("COMMIT")
            seconds += time.perf_counter() - started
        frames = (os.path.getsize(f"{path}-wal") - 32) // (page_size + 24)
        stored = sum(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                     for table in INDEX_TABLES)
        return seconds, frames, stored
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    files = sorted(args.data.glob("patient-*.json"))
    if not files:
        raise SystemExit(f"no patient-*.json bundles in {args.data}")
    layouts, resources, count = bundle_statements(files)
    print(f"{len(files)} bundles, {resources} resources, {count} index rows"
          f" ({count / resources:.2f} per resource)", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    frames: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="carebridge-bench-layout-") as tmp:
        for round_ in range(args.rounds):  # interleaved, alternating which goes first
            for name in LAYOUTS if round_ % 2 == 0 else reversed(LAYOUTS):
                took, frames[name], stored = insert_all(name, layouts[name], Path(tmp))
                if stored != count:
                    raise SystemExit(f"{name}: {stored} index rows stored, not {count}")
                seconds[name].append(took)
    for name, label in (("text", "text (before)"), ("product", "product (now)")):
        best = min(seconds[name])
        print(f"  {label:14s} {best / resources * 1e6:6.1f} us per resource,"
              f" {best / count * 1e6:5.2f} us per row, {frames[name] / resources:4.2f} WAL"
              f" frames per resource  (rounds: {', '.join(f'{s:.2f}' for s in seconds[name])} s)")
    print(f"  product/text: {min(seconds['product']) / min(seconds['text']):4.2f}x the time,"
          f" {frames['product'] / frames['text']:4.2f}x the WAL frames")


if __name__ == "__main__":
    main()
