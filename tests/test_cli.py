"""The ``carebridge`` command line: import, migrate."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import orjson
from typer.testing import CliRunner

from carebridge.cli import app
from carebridge.demo import data_dir, load_bundle
from carebridge.storage import open_repository
from carebridge.storage.migrations import migrations_for

runner = CliRunner()


def counts(url: str) -> dict[str, int]:
    repo = open_repository(url)
    try:
        with repo.session() as s:
            return s.count_current()
    finally:
        repo.close()


def test_import_folder_of_bundles(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    result = runner.invoke(app, ["import", str(data_dir()), "--database", url])
    assert result.exit_code == 0, result.output
    expected: dict[str, int] = {}
    for path in sorted(data_dir().glob("*.json.gz")):
        for entry in load_bundle(path.name)["entry"]:
            rtype = entry["resource"]["resourceType"]
            expected[rtype] = expected.get(rtype, 0) + 1
    resources = sum(expected.values())
    expected["AuditEvent"] = 5  # one per file (docs/security.md, "What is audited")
    assert counts(url) == expected
    assert "5 files loaded, 0 failed" in result.output
    assert f"{resources} resources" in result.output


def test_failed_file_loads_nothing_and_does_not_stop_the_others(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    folder = tmp_path / "in"
    folder.mkdir()
    good = load_bundle("patient-050.json.gz")
    (folder / "a-good.json").write_bytes(orjson.dumps(good))
    broken = load_bundle("patient-034.json.gz")
    broken["entry"][-1]["resource"]["notAnElement"] = 1  # the last entry fails
    (folder / "b-broken.json").write_bytes(orjson.dumps(broken))
    (folder / "c-garbage.json").write_bytes(b"{nope")
    shutil.copy(data_dir() / "hospitalInformation.json.gz", folder / "d-hospital.json.gz")
    result = runner.invoke(app, ["import", str(folder), "--database", url])
    assert result.exit_code == 1
    assert "3 files loaded" not in result.output
    assert "2 files loaded, 2 failed" in result.output
    assert "b-broken.json" in result.output and "notAnElement" in result.output
    assert "c-garbage.json" in result.output and "not valid JSON" in result.output
    expected: dict[str, int] = {}
    for entry in good["entry"] + load_bundle("hospitalInformation.json.gz")["entry"]:
        rtype = entry["resource"]["resourceType"]
        expected[rtype] = expected.get(rtype, 0) + 1
    expected["AuditEvent"] = 4  # every file, loaded or not, is on the audit trail
    assert counts(url) == expected  # nothing of the broken bundle


def test_import_ndjson_puts_resources_with_ids(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    lines = [
        {"resourceType": "Patient", "id": "p1", "gender": "female"},
        {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
         "subject": {"reference": "Patient/p1"}},
        {"resourceType": "Patient", "active": True},
    ]
    path = tmp_path / "data.ndjson.gz"
    path.write_bytes(gzip.compress(b"\n".join(orjson.dumps(x) for x in lines) + b"\n"))
    assert runner.invoke(app, ["import", str(path), "--database", url]).exit_code == 0
    assert counts(url) == {"Patient": 2, "Observation": 1, "AuditEvent": 1}
    repo = open_repository(url)
    try:
        with repo.session() as s:
            stored = s.read("Patient", "p1")
            assert stored is not None and b'"gender":"female"' in (stored.body or b"")
    finally:
        repo.close()
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(orjson.dumps(lines[0]) + b"\n{oops\n")
    result = runner.invoke(app, ["import", str(bad), "--database", url])
    assert result.exit_code == 1 and "line 2" in result.output


def test_migrate_reports_schema_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    first = runner.invoke(app, ["migrate", "--database", url])
    assert first.exit_code == 0
    names = [f"{m.version:04d}_{m.name}" for m in migrations_for("sqlite")]
    assert names[:2] == ["0001_resources", "0002_search_index"]
    assert f"applied: {', '.join(names)}" in " ".join(first.output.split())  # rich wraps
    again = runner.invoke(app, ["migrate", "--database", url])
    assert "applied" not in again.output and f"schema version {len(names)}" in again.output


def test_database_from_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/env.sqlite"
    result = runner.invoke(app, ["migrate"], env={"CAREBRIDGE_DATABASE": url})
    assert result.exit_code == 0
    assert (tmp_path / "env.sqlite").exists()
