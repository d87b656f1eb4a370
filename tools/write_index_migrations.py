"""Writes the migrations that key the search index by integers (sqlite 0011, postgresql
0012): the index tables rebuilt as ``(rid, pid, values...)``, their rows converted, and the
``search_param`` table of parameter numbers (carebridge.search.params), which is the R4
package's and so is written out here rather than typed.

Run once when the numbering's source changes (it does not: the package is fixed)::

    .venv/bin/python tools/write_index_migrations.py
"""

from __future__ import annotations

from pathlib import Path

from carebridge.search.params import code_range, migration_sql

FOLDER = Path(__file__).resolve().parents[1] / "src" / "carebridge" / "storage" / "migrations"

HEADER = """\
-- The search index keyed by integers (docs/search.md, "Index layout"). Every index row
-- named its resource by (resource_type, id) and its parameter by code: text keys of
-- ~100 bytes in every look-up and per-resource index entry. Now a row carries its
-- resource's number (resource.rid, never reused: a delete is a version) and the number
-- of its (type, parameter) pair (search_param.pid, fixed by the R4 package,
-- carebridge.search.params). Written by tools/write_index_migrations.py.
"""

# table -> (value columns with their SQL types per dialect)
TABLES = {
    "idx_string": ("norm TEXT{C} NOT NULL", "exact TEXT NOT NULL"),
    "idx_token": ("system TEXT", "code TEXT", "text_norm TEXT", "type_system TEXT",
                  "type_code TEXT"),
    "idx_date": ("low {INT} NOT NULL", "high {INT} NOT NULL"),
    "idx_number": ("low {REAL} NOT NULL", "high {REAL} NOT NULL", "value {REAL} NOT NULL"),
    "idx_quantity": ("system TEXT", "code TEXT", "value {REAL}", "low {REAL}", "high {REAL}",
                     "canon_code TEXT", "canon_value {REAL}"),
    "idx_reference": ("target_type TEXT", "target_id TEXT", "version TEXT", "url TEXT",
                      "ident_system TEXT", "ident_value TEXT"),
    "idx_uri": ("value TEXT NOT NULL",),
    "idx_composite": ("c1_system TEXT", "c1_code TEXT", "c2_system TEXT", "c2_code TEXT",
                      "c2_low {REAL}", "c2_high {REAL}", "c2_canon_code TEXT",
                      "c2_canon_value {REAL}"),
}

LOOKUPS = """\
CREATE INDEX idx_string_lookup ON idx_string (pid, norm, rid);
CREATE INDEX idx_token_lookup ON idx_token (pid, code, system, rid);
CREATE INDEX idx_date_low ON idx_date (pid, low, rid, high);
CREATE INDEX idx_date_high ON idx_date (pid, high, rid, low);
CREATE INDEX idx_number_lookup ON idx_number (pid, value);
CREATE INDEX idx_quantity_canon ON idx_quantity (pid, canon_code, canon_value);
CREATE INDEX idx_quantity_unit ON idx_quantity (pid, code, value);
CREATE INDEX idx_reference_lookup ON idx_reference (target_id, target_type, pid, rid);
CREATE INDEX idx_reference_url ON idx_reference (pid, url) WHERE url IS NOT NULL;
CREATE INDEX idx_uri_lookup ON idx_uri (pid, value);
CREATE INDEX idx_composite_lookup ON idx_composite (pid, c1_code, c2_code);
"""

# PostgreSQL: a resource's rows in each table by (rid, pid). Not covering (the compared
# values are read from the table row, which sits beside the resource's other rows): covering
# keys made transaction ingest ~40 us per resource dearer (Synthea bundles in process,
# 2026-12-07), for index-only per-row checks.
PG_PER_RESOURCE = dict.fromkeys(TABLES, "rid, pid")


def _columns(table: str, dialect: str) -> list[str]:
    kinds = {"INT": "INTEGER" if dialect == "sqlite" else "BIGINT",
             "REAL": "REAL" if dialect == "sqlite" else "DOUBLE PRECISION",
             "C": "" if dialect == "sqlite" else ' COLLATE "C"'}
    return [c.format(**kinds) for c in TABLES[table]]


def _names(table: str) -> list[str]:
    return [c.split()[0] for c in TABLES[table]]


def sqlite() -> str:
    out = [HEADER, """\
-- SQLite: resource gets a declared INTEGER PRIMARY KEY (an implicit rowid may change on
-- VACUUM; a declared one does not). Index tables are clustered by resource: a row's rowid
-- k is rid * 2^24 + n (n counts the resource's rows in that table), so a resource's rows
-- are one range of the table's own B-tree (found and deleted by k BETWEEN rid * 2^24 AND
-- rid * 2^24 + 2^24 - 1) and every insert appends; there is no per-resource index.

CREATE TABLE search_param (
    pid           INTEGER PRIMARY KEY,
    resource_type TEXT NOT NULL,
    code          TEXT NOT NULL,
    UNIQUE (resource_type, code)
);
""", migration_sql(), """
CREATE TABLE resource_keyed (
    rid           INTEGER PRIMARY KEY,
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    last_updated  TEXT    NOT NULL,
    deleted       INTEGER NOT NULL DEFAULT 0,
    body          BLOB,
    UNIQUE (resource_type, id)
);
INSERT INTO resource_keyed (rid, resource_type, id, version, last_updated, deleted, body)
SELECT rowid, resource_type, id, version, last_updated, deleted, body FROM resource
ORDER BY rowid;
DROP TABLE resource;
ALTER TABLE resource_keyed RENAME TO resource;
-- The default search order (by rid) within a type.
CREATE INDEX resource_type_rid ON resource (resource_type);
"""]
    for table in TABLES:
        names = ", ".join(_names(table))
        cols = ",\n    ".join(_columns(table, "sqlite"))
        out.append(f"""
CREATE TABLE {table}_keyed (
    k   INTEGER PRIMARY KEY,
    rid INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    {cols}
);
INSERT INTO {table}_keyed (k, rid, pid, {names})
SELECT r.rid * 16777216 + row_number() OVER (PARTITION BY r.rid ORDER BY i.rowid) - 1,
       r.rid, p.pid, {', '.join(f'i.{n}' for n in _names(table))}
FROM {table} i
JOIN resource r ON r.resource_type = i.resource_type AND r.id = i.id
JOIN search_param p ON p.resource_type = i.resource_type AND p.code = i.param;
DROP TABLE {table};
ALTER TABLE {table}_keyed RENAME TO {table};
""")
    out.append("\n" + LOOKUPS)
    return "".join(out)


def postgresql() -> str:
    low, high = code_range("_lastUpdated")
    out = [HEADER, """\
-- PostgreSQL: resource gets an identity column rid (numbers taken before the rows are
-- written, nextval over the sequence); index rows have a (rid, pid) index to find a
-- resource's rows and check one criterion on it.

CREATE TABLE search_param (
    pid           INTEGER PRIMARY KEY,
    resource_type TEXT NOT NULL,
    code          TEXT NOT NULL,
    UNIQUE (resource_type, code)
);
""", migration_sql(), """
ALTER TABLE resource ADD COLUMN rid BIGINT GENERATED BY DEFAULT AS IDENTITY;
ALTER TABLE resource ADD CONSTRAINT resource_rid UNIQUE (rid);
-- The default search order (by rid) within a type.
CREATE INDEX resource_type_rid ON resource (resource_type, rid);
"""]
    for table in TABLES:
        names = ", ".join(_names(table))
        cols = ",\n    ".join(_columns(table, "postgresql"))
        out.append(f"""
CREATE TABLE {table}_keyed (
    rid BIGINT  NOT NULL,
    pid INTEGER NOT NULL,
    {cols}
);
INSERT INTO {table}_keyed (rid, pid, {names})
SELECT r.rid, p.pid, {', '.join(f'i.{n}' for n in _names(table))}
FROM {table} i
JOIN resource r ON r.resource_type = i.resource_type AND r.id = i.id
JOIN search_param p ON p.resource_type = i.resource_type AND p.code = i.param;
DROP TABLE {table};
ALTER TABLE {table}_keyed RENAME TO {table};
CREATE INDEX {table}_resource ON {table} ({PG_PER_RESOURCE[table]});
""")
    out.append("\n" + LOOKUPS + f"""
-- Date rows as spans for two-sided ranges (migration 0009), without _lastUpdated's
-- (pids {low}..{high}).
CREATE INDEX idx_date_span ON idx_date USING gist (pid, int8range(low, high, '[]'))
    WHERE pid < {low} OR pid > {high};
-- The planner otherwise takes (pid, code) as independent and misestimates a common code.
CREATE STATISTICS idx_token_stats (dependencies, mcv) ON pid, code FROM idx_token;
CREATE STATISTICS idx_reference_stats (dependencies, mcv) ON pid, target_type FROM idx_reference;
""")
    return "".join(out)


def main() -> None:
    (FOLDER / "sqlite" / "0011_keyed_index.sql").write_text(sqlite(), "utf-8")
    (FOLDER / "postgresql" / "0012_keyed_index.sql").write_text(postgresql(), "utf-8")


if __name__ == "__main__":
    main()
