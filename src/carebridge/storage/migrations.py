"""Versioned schema migrations: numbered SQL files per dialect, applied in order, once.

Files live in ``migrations/<dialect>/NNNN_name.sql``; the applied ones are recorded in
``schema_migrations``. Each file runs in its own transaction together with its record, so a
failed migration leaves the schema as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations_for(dialect: str) -> list[Migration]:
    folder = files("carebridge.storage") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{dialect} migrations are not numbered 1..n: {versions}")
    return found


def sql_statements(script: str) -> list[str]:
    """Split a migration script on ``;`` at line ends (our scripts keep to that form)."""
    text = "\n".join(line for line in script.splitlines() if not line.strip().startswith("--"))
    return [part.strip() for part in re.split(r";\s*\n", text + "\n") if part.strip()]
