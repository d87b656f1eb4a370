"""The catalogue of broken resources: each is reported with the right code and expression,
and the valid resources they were made from have no errors (and no warnings)."""

from __future__ import annotations

import pytest
from tests.fhir.validation.catalogue import CASES, VALID, Case

from carebridge.fhir.errors import Issue
from carebridge.fhir.validation import Validator
from carebridge.quality.rules import check_quality

VALIDATOR = Validator()


def issues_of(resource: dict[str, object]) -> list[Issue]:
    """What the write path reports: the validator's issues and the data-quality rules'."""
    return VALIDATOR.validate(resource) + check_quality(resource)


def test_the_catalogue_has_at_least_60_cases_of_every_kind() -> None:
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)
    kinds = {c.code for c in CASES}
    assert kinds >= {"structure", "value", "required", "code-invalid", "invariant", "invalid",
                     "business-rule"}


@pytest.mark.parametrize("resource", VALID, ids=lambda r: str(r["resourceType"]))
def test_the_valid_originals_have_no_issues(resource: dict[str, object]) -> None:
    assert [i for i in issues_of(resource) if i.severity != "information"] == []


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_broken_resource_is_reported_precisely(case: Case) -> None:
    issues = issues_of(case.resource)
    found = [(i.severity, i.code, i.expression) for i in issues]
    assert (case.severity, case.code, (case.expression,)) in found, (
        f"expected {case.severity} {case.code} at {case.expression}, got "
        + "; ".join(f"{i.severity} {i.code} {i.expression}: {i.diagnostics}" for i in issues))
    if case.severity == "warning":
        # A warning-only case must not be refused.
        assert not [i for i in issues if i.severity == "error"], issues
    for issue in issues:
        assert issue.diagnostics and issue.expression, issue
