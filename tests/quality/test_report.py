"""``carebridge quality report``: issues across the store by type, rule and severity, and
likely duplicate patients; on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from tests.fhir.validation.catalogue import HEART_RATE, PATIENT, broken
from typer.testing import CliRunner

from carebridge.cli import app
from carebridge.quality.report import build_report, duplicates_of, likely_duplicates
from carebridge.security.policy import SYSTEM
from carebridge.services.resources import ResourceService
from carebridge.services.validation import WriteValidation
from carebridge.storage import open_repository
from carebridge.storage.base import Repository

TWIN = broken(PATIENT, id="p2", name=[{"family": "SMITH", "given": ["Ánn"]}])


def load(repository: Repository) -> None:
    """Legacy data in warn-only mode: two records of one patient, a bad gender, a fever."""
    service = ResourceService(repository, validation=WriteValidation(repository, "warn"))
    service.update(SYSTEM, "Patient", "p1", PATIENT)
    service.update(SYSTEM, "Patient", "p2", TWIN)
    service.update(SYSTEM, "Patient", "p3", broken(PATIENT, id="p3", gender="F",
                                                   identifier=[{"value": "other"}]))
    service.create(SYSTEM, "Observation", HEART_RATE)
    service.create(SYSTEM, "Observation", broken(HEART_RATE, valueQuantity__value=400))


def test_report_counts_issues_by_type_rule_and_severity(repository: Repository) -> None:
    load(repository)
    report = build_report(repository)
    assert report.resources == 5
    assert report.by_type == {"Patient": 3, "Observation": 2}
    assert report.counts == {
        ("Patient", "code-invalid", "error"): 1,
        ("Observation", "vital-implausible", "warning"): 1,
        ("Patient", "duplicate-patient", "warning"): 1,
    }
    assert report.examples["code-invalid"][0].reference == "Patient/p3"
    assert report.examples["code-invalid"][0].expression == "Patient.gender"
    assert report.duplicates == [("Patient/p1", "Patient/p2",
                                  "same name (smith, ann), birth date 1980-05-01 and "
                                  "identifier http://hospital.example.org/mrn|12345")]
    # What the writes recorded: the twin (a duplicate when written), the downgraded error
    # and the implausible heart rate.
    assert report.recorded == {"Patient": 2, "Observation": 1}


def test_duplicates_need_name_birth_date_and_a_shared_identifier_or_address() -> None:
    other_birth = broken(TWIN, birthDate="1980-05-02")
    other_ids = broken(TWIN, identifier=[{"system": "http://x", "value": "1"}])
    same_address = broken(other_ids, address=[{"line": ["1 Main St"], "postalCode": "12345"}])
    first = broken(PATIENT, address=[{"line": ["1 MAIN ST."], "postalCode": "12345"}])
    assert likely_duplicates([PATIENT, other_birth]) == []
    assert likely_duplicates([PATIENT, other_ids]) == []
    assert [why.rsplit(" and ", 1)[1] for _, _, why in
            likely_duplicates([first, same_address])] == ["address"]


def test_a_new_patient_is_checked_against_its_candidates_only() -> None:
    """duplicates_of gives the pairs of likely_duplicates that involve the new patient,
    and never pairs two candidates with each other."""
    twin = broken(TWIN, id="p2")
    twin_too = broken(TWIN, id="p9")  # p2 ~ p9, but neither is the new patient
    stranger = broken(TWIN, id="p4", identifier=[{"system": "http://x", "value": "1"}])
    found = duplicates_of(PATIENT, [twin, twin_too, stranger, PATIENT])
    assert [ref for ref, _ in found] == ["Patient/p2", "Patient/p9"]
    whole = {(a, b): why for a, b, why in likely_duplicates([PATIENT, twin, twin_too, stranger])}
    assert dict(found)["Patient/p2"] == whole[("Patient/p1", "Patient/p2")]
    assert ("Patient/p2", "Patient/p9") in whole  # which the one-patient check leaves out
    assert duplicates_of(broken(PATIENT, birthDate=None), [twin]) == []


def test_the_command_prints_the_summary(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    repository = open_repository(url)
    try:
        load(repository)
    finally:
        repository.close()
    result = CliRunner().invoke(app, ["quality", "report", "--database", url])
    assert result.exit_code == 0, result.output
    assert "5 resources checked" in result.output
    assert "vital-implausible" in result.output and "duplicate-patient" in result.output
    assert "1 error, 2 warning" in result.output
    assert "Patient/p1 ~ Patient/p2" in result.output
