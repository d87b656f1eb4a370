"""Every example instance in the official R4 package validates with no errors, except the few
that are known to break their own specification, each listed with its reason and checked to
fail for exactly that reason.

The package is ``../shared/fhir-r4/hl7.fhir.r4.examples-4.0.1.tgz``; conformance resources
(StructureDefinition, SearchParameter, ValueSet, CodeSystem) are the definitions themselves
and are left out. The large bundles of definitions the package also carries (all resources,
profiles, extensions, data elements, value sets) take most of the time: they run in a
separate test marked slow.
"""

from __future__ import annotations

import tarfile
from functools import cache
from typing import Any

import orjson
import pytest
from tests.conftest import SHARED_DATA

from carebridge.fhir.validation import Validator

PACKAGE = SHARED_DATA.parent / "fhir-r4" / "hl7.fhir.r4.examples-4.0.1.tgz"
DEFINITIONS = ("StructureDefinition-", "SearchParameter-", "ValueSet-", "CodeSystem-")
DEFINITION_BUNDLES = frozenset({
    "Bundle-resources.json", "Bundle-dataelements.json", "Bundle-extensions.json",
    "Bundle-profiles-others.json", "Bundle-types.json", "Bundle-valuesets.json",
    "Bundle-v2-valuesets.json", "Bundle-v3-valuesets.json", "Bundle-valueset-expansions.json",
    "Bundle-searchParams.json", "Bundle-terminologies.json", "Bundle-conceptmaps.json",
    "ig-r4.json", "ImplementationGuide-fhir.json",
})

# file -> (issue code, a FHIRPath every error starts with, text every error contains, why)
KNOWN_INVALID: dict[str, tuple[str, str, str, str]] = {
    "ActivityDefinition-blood-tubes-supply.json": (
        "invariant", "ActivityDefinition.text.div", "txt-2",
        "the narrative div holds only whitespace (txt-2)"),
    "ActivityDefinition-heart-valve-replacement.json": (
        "invariant", "ActivityDefinition.text.div", "txt-2",
        "the narrative div holds only whitespace (txt-2)"),
    "EventDefinition-example.json": (
        "invariant", "EventDefinition.text.div", "txt-2",
        "the narrative div holds only whitespace (txt-2)"),
    "Questionnaire-zika-virus-exposure-assessment.json": (
        "invariant", "Questionnaire.text.div", "txt-2",
        "the narrative div holds only whitespace (txt-2)"),
    "Questionnaire-qs1.json": (
        "required", "Questionnaire.item", "linkId is required",
        "nested items have no linkId (Questionnaire.item.linkId is 1..1)"),
    "Bundle-10bb101f-a121-4264-a920-67be9cb82c74.json": (
        "invalid", "Bundle.entry[2].fullUrl", "must end with",
        "fullUrl .../Patient/pat12 on an entry whose Patient has id pat2"),
    "Bundle-3a0707d3-549e-4467-b8b8-5a2ab3800efe.json": (
        "invalid", "Bundle.entry[3].fullUrl", "must end with",
        "fullUrl .../Patient/pat12 on an entry whose Patient has id pat2"),
    "Bundle-lri-example.json": (
        "invalid", "Bundle.entry[", "must end with",
        "fullUrls that name other ids than the entries' resources"),
    "DeviceMetric-example.json": (
        "value", "DeviceMetric.parent.reference", "may only refer to Device",
        "DeviceMetric.parent refers to a DeviceDefinition; R4 allows Device only"),
    "DeviceUseStatement-example.json": (
        "value", "DeviceUseStatement.reasonReference[0].reference", "may only refer to",
        "reasonReference to a Procedure, not among the allowed targets"),
    "MedicationRequest-medrx0301.json": (
        "value", "MedicationRequest.dispenseRequest.performer.reference",
        "may only refer to Organization",
        "dispenseRequest.performer refers to a Practitioner; R4 allows Organization only"),
    "Observation-clinical-gender.json": (
        "value", "Observation.performer[0].reference", "may only refer to",
        "Observation.performer refers to an Encounter"),
    "Bundle-dataelements.json": (
        "invariant", "Bundle", "bdl-7",
        "the same fullUrl appears on several entries without versions (bdl-7)"),
    "ig-r4.json": (
        "", "ImplementationGuide", "",
        "a manifest-only ImplementationGuide: no name or status (both 1..1), and a "
        "SearchParameter id longer than 64 characters"),
    "ImplementationGuide-fhir.json": (
        "", "ImplementationGuide", "",
        "the same manifest-only ImplementationGuide as ig-r4.json"),
}


@cache
def examples() -> tuple[tuple[str, dict[str, Any]], ...]:
    assert PACKAGE.is_file(), f"{PACKAGE} is needed by this test"
    found = []
    with tarfile.open(PACKAGE, mode="r|gz") as tar:
        for member in tar:
            name = member.name.removeprefix("package/")
            if (not member.isfile() or not name.endswith(".json") or name == "package.json"
                    or name.startswith(DEFINITIONS)):
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            found.append((name, orjson.loads(handle.read())))
    return tuple(found)


VALIDATOR = Validator()


def check(name: str, resource: dict[str, Any]) -> str | None:
    """None if the example is as expected, else what is wrong."""
    errors = [i for i in VALIDATOR.validate(resource) if i.severity in ("error", "fatal")]
    known = KNOWN_INVALID.get(name)
    if known is None:
        if errors:
            return f"{name}: " + "; ".join(f"{i.code} {i.expression}: {i.diagnostics}"
                                           for i in errors[:5])
        return None
    code, where, text, why = known
    if not errors:
        return f"{name} is listed as invalid ({why}) but has no errors"
    for issue in errors:
        if (code and issue.code != code) or not issue.expression[0].startswith(where) or (
                text not in issue.diagnostics):
            return f"{name} fails for another reason than {why!r}: {issue}"
    return None


def test_the_package_holds_the_official_examples() -> None:
    names = [name for name, _ in examples()]
    assert len(names) > 700
    assert "Observation-blood-pressure.json" in names and "Observation-heart-rate.json" in names
    assert set(KNOWN_INVALID) <= set(names)


def test_official_examples_meant_to_be_valid_have_no_errors() -> None:
    problems = [p for name, resource in examples() if name not in DEFINITION_BUNDLES
                if (p := check(name, resource)) is not None]
    assert problems == []


@pytest.mark.slow
def test_official_definition_bundles_have_no_errors() -> None:
    problems = [p for name, resource in examples() if name in DEFINITION_BUNDLES
                if (p := check(name, resource)) is not None]
    assert problems == []
