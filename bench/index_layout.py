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

Run::

    .venv/bin/python bench/index_layout.py [--rounds 3] [--data ../shared/data/synthea-r4]
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    files = sorted(args.data.glob("patient-*.json"))
    if not files:
        raise SystemExit(f"no patient-*.json bundles in {args.data}")
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
