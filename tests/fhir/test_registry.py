"""The vendored FHIR R4 definitions and their loader, carebridge.fhir.registry."""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import orjson
import pytest

from carebridge.fhir import registry

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_TGZ = REPO_ROOT / ".." / "shared" / "fhir-r4" / "hl7.fhir.r4.examples-4.0.1.tgz"
DEFINITIONS = files("carebridge.fhir") / "definitions"
SOURCE_DEFINITIONS = REPO_ROOT / "src" / "carebridge" / "fhir" / "definitions"
DATA_FILES = (
    "resources",
    "types",
    "profiles",
    "search-parameters",
    "compartments",
    "terminology",
    "operations",
)
VITAL_SIGNS = (
    "vitalsigns",
    "bp",
    "heartrate",
    "resprate",
    "oxygensat",
    "bodytemp",
    "bodyweight",
    "bodyheight",
    "bmi",
    "headcircum",
    "vitalspanel",
)


# --- resource types ------------------------------------------------------------------------


def test_there_are_146_concrete_resource_types() -> None:
    types = registry.resource_types()
    assert len(types) == 146
    assert {"Patient", "Observation", "Bundle", "Parameters", "Binary"} <= types
    assert "Resource" not in types
    assert "DomainResource" not in types


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Patient", True),
        ("MedicinalProductPharmaceutical", True),
        ("Resource", False),
        ("DomainResource", False),
        ("HumanName", False),
        ("string", False),
        ("patient", False),
        ("vitalsigns", False),
        ("", False),
    ],
)
def test_is_resource_type(name: str, expected: bool) -> None:
    assert registry.is_resource_type(name) is expected


# --- structure definitions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("Patient", "resource"),
        ("Resource", "resource"),
        ("DomainResource", "resource"),
        ("HumanName", "complex-type"),
        ("Extension", "complex-type"),
        ("Reference", "complex-type"),
        ("Meta", "complex-type"),
        ("Narrative", "complex-type"),
        ("Element", "complex-type"),
        ("BackboneElement", "complex-type"),
        ("string", "primitive-type"),
        ("xhtml", "primitive-type"),
        ("http://hl7.org/fhir/StructureDefinition/Observation", "resource"),
        ("http://hl7.org/fhir/StructureDefinition/Observation|4.0.1", "resource"),
        ("http://hl7.org/fhir/StructureDefinition/dateTime", "primitive-type"),
    ],
)
def test_structure_definition_by_type_name_or_url(key: str, kind: str) -> None:
    sd = registry.structure_definition(key)
    assert sd["resourceType"] == "StructureDefinition"
    assert sd["kind"] == kind
    assert sd["snapshot"]["element"][0]["path"] == sd["type"]


def test_every_resource_type_has_a_structure_definition() -> None:
    for name in registry.resource_types():
        sd = registry.structure_definition(name)
        assert sd["type"] == name
        assert sd["derivation"] == "specialization"
        assert sd["abstract"] is False


def test_prose_is_stripped_but_machine_data_kept() -> None:
    sd = registry.structure_definition("Observation")
    assert "text" not in sd
    assert "differential" not in sd
    assert "mapping" not in sd
    status = next(e for e in sd["snapshot"]["element"] if e["path"] == "Observation.status")
    assert "definition" not in status
    assert "comment" not in status
    assert status["min"] == 1
    assert status["max"] == "1"
    assert status["isModifier"] is True
    assert status["isSummary"] is True
    assert status["type"] == [{"code": "code"}]
    assert status["binding"] == {
        "strength": "required",
        "valueSet": "http://hl7.org/fhir/ValueSet/observation-status|4.0.1",
    }
    ele1 = next(c for c in status["constraint"] if c["key"] == "ele-1")
    assert ele1["expression"] == "hasValue() or (children().count() > id.count())"
    assert "xpath" not in ele1


@pytest.mark.parametrize("profile", VITAL_SIGNS)
def test_vital_signs_profiles_resolve(profile: str) -> None:
    url = f"http://hl7.org/fhir/StructureDefinition/{profile}"
    sd = registry.structure_definition(url)
    assert sd["url"] == url
    assert sd["type"] == "Observation"
    assert sd["derivation"] == "constraint"
    assert url in registry.profiles()


def test_profiles_hold_core_constraints_but_no_extension_definitions() -> None:
    profiles = registry.profiles()
    assert len(profiles) == 46
    assert "http://hl7.org/fhir/StructureDefinition/SimpleQuantity" in profiles
    assert "http://hl7.org/fhir/StructureDefinition/lipidprofile" in profiles
    assert all(sd["derivation"] == "constraint" for sd in profiles.values())
    assert all(sd["type"] != "Extension" for sd in profiles.values())
    with pytest.raises(KeyError):
        registry.structure_definition("http://hl7.org/fhir/StructureDefinition/patient-birthTime")


def test_profiles_returns_a_copy() -> None:
    registry.profiles().clear()
    assert registry.profiles()


@pytest.mark.parametrize(
    "key",
    [
        "Patients",
        "patient",
        "heartrate",  # a profile's id, not a type name
        "http://hl7.org/fhir/StructureDefinition/Nope",
        "Definition",  # logical models are not vendored
    ],
)
def test_unknown_structure_definition_raises_key_error(key: str) -> None:
    with pytest.raises(KeyError):
        registry.structure_definition(key)


# --- JSON property names -------------------------------------------------------------------


def test_patient_top_level_elements() -> None:
    names = registry.top_level_elements("Patient")
    assert {
        "resourceType",
        "id",
        "_id",
        "meta",
        "text",
        "contained",
        "extension",
        "modifierExtension",
        "birthDate",
        "_birthDate",
        "gender",
        "_gender",
        "deceasedBoolean",
        "_deceasedBoolean",
        "deceasedDateTime",
        "_deceasedDateTime",
        "multipleBirthBoolean",
        "multipleBirthInteger",
        "name",
        "link",
    } <= names
    assert "deceased[x]" not in names
    assert "deceased" not in names
    # complex-typed elements have no `_x` sibling
    assert "_name" not in names
    assert "_meta" not in names
    assert "_contained" not in names
    # nested paths are not top level
    assert "family" not in names
    assert "contact.name" not in names
    assert len(names) == 37


def test_observation_top_level_choices() -> None:
    names = registry.top_level_elements("Observation")
    assert {
        "effectiveDateTime",
        "effectivePeriod",
        "effectiveTiming",
        "effectiveInstant",
        "valueQuantity",
        "valueCodeableConcept",
        "valueString",
        "_valueString",
        "valueBoolean",
        "valueInteger",
        "valueRange",
        "valueRatio",
        "valueSampledData",
        "valueTime",
        "valueDateTime",
        "valuePeriod",
    } <= names
    assert "_valueQuantity" not in names
    assert "value[x]" not in names


def test_bundle_is_a_resource_without_narrative() -> None:
    names = registry.top_level_elements("Bundle")
    assert {"resourceType", "id", "meta", "type", "_type", "entry", "total"} <= names
    assert "text" not in names
    assert "extension" not in names


def test_observation_summary_elements() -> None:
    names = registry.summary_elements("Observation")
    assert {
        "resourceType",
        "id",
        "meta",
        "code",
        "status",
        "_status",
        "subject",
        "valueQuantity",
        "effectiveDateTime",
        "_effectiveDateTime",
        "issued",
    } <= names
    assert "note" not in names
    assert "text" not in names
    assert "interpretation" not in names
    assert "referenceRange" not in names
    assert names <= registry.top_level_elements("Observation")


def test_patient_summary_elements() -> None:
    names = registry.summary_elements("Patient")
    assert {"birthDate", "_birthDate", "gender", "name", "deceasedBoolean", "active"} <= names
    assert {"photo", "contact", "communication", "maritalStatus"}.isdisjoint(names)


def test_mandatory_elements() -> None:
    assert registry.mandatory_elements("Observation") == {"status", "code"}
    assert registry.mandatory_elements("Patient") == frozenset()
    assert registry.mandatory_elements("Bundle") == {"type"}
    # a mandatory choice lists every allowed name (one of them must be present)
    assert registry.mandatory_elements("MedicationRequest") == {
        "status",
        "intent",
        "subject",
        "medicationCodeableConcept",
        "medicationReference",
    }


@pytest.mark.parametrize(
    "function",
    [registry.top_level_elements, registry.summary_elements, registry.mandatory_elements],
)
def test_element_functions_reject_non_resource_types(
    function: Callable[[str], frozenset[str]],
) -> None:
    for name in ("HumanName", "Patients", "string"):
        with pytest.raises(KeyError):
            function(name)


# --- search parameters ---------------------------------------------------------------------


def test_search_parameters_are_the_core_set() -> None:
    params = registry.search_parameters()
    assert len(params) == 1375
    urls = [p["url"] for p in params]
    assert len(set(urls)) == len(urls)
    assert all(p["resourceType"] == "SearchParameter" for p in params)
    assert all("description" not in p and "text" not in p for p in params)
    # examples from the package are not vendored
    assert "http://hl7.org/fhir/SearchParameter/example" not in urls


def test_search_parameters_for_observation() -> None:
    params = registry.search_parameters_for("Observation")
    code = params["code"]
    assert code["type"] == "token"
    assert "Observation.code" in code["expression"]
    assert params["subject"]["type"] == "reference"
    assert params["date"]["type"] == "date"
    assert params["value-quantity"]["type"] == "quantity"
    assert params["code-value-quantity"]["type"] == "composite"
    for common in ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"):
        assert params[common]["base"] == ["Resource"], common
    assert params["_id"]["type"] == "token"
    assert params["_lastUpdated"]["type"] == "date"
    assert {"_text", "_content"} <= params.keys()
    assert "birthdate" not in params
    assert len(params) == 47


def test_search_parameters_for_patient_and_bundle() -> None:
    patient = registry.search_parameters_for("Patient")
    assert {"birthdate", "family", "identifier", "name", "gender", "_id", "_text"} <= patient.keys()
    assert "Patient.birthDate" in patient["birthdate"]["expression"]
    bundle = registry.search_parameters_for("Bundle")
    assert {"identifier", "type", "_id", "_lastUpdated"} <= bundle.keys()
    assert "_text" not in bundle  # Bundle is not a DomainResource


def test_every_resource_type_has_search_parameters() -> None:
    for name in registry.resource_types():
        assert "_id" in registry.search_parameters_for(name), name


def test_search_parameters_for_returns_a_copy() -> None:
    registry.search_parameters_for("Patient").clear()
    assert "_id" in registry.search_parameters_for("Patient")


def test_search_parameters_for_unknown_type() -> None:
    with pytest.raises(KeyError):
        registry.search_parameters_for("Nope")


# --- compartments --------------------------------------------------------------------------


def test_patient_compartment() -> None:
    compartment = registry.compartment_definition("Patient")
    assert compartment["url"] == "http://hl7.org/fhir/CompartmentDefinition/patient"
    members = {r["code"]: r.get("param", []) for r in compartment["resource"]}
    assert members["Observation"] == ["subject", "performer"]
    assert members["Patient"] == ["link"]
    assert "Parameters" not in members


@pytest.mark.parametrize(
    "code", ["Patient", "Encounter", "RelatedPerson", "Practitioner", "Device"]
)
def test_all_compartments_present(code: str) -> None:
    compartment = registry.compartment_definition(code)
    assert compartment["code"] == code
    assert "example" not in compartment["url"]


def test_unknown_compartment() -> None:
    with pytest.raises(KeyError):
        registry.compartment_definition("Observation")


# --- terminology ---------------------------------------------------------------------------


def test_required_binding_value_set_and_its_code_system() -> None:
    vs = registry.value_set("http://hl7.org/fhir/ValueSet/administrative-gender")
    assert registry.value_set("http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1") is vs
    system = vs["compose"]["include"][0]["system"]
    assert system == "http://hl7.org/fhir/administrative-gender"
    cs = registry.code_system(system)
    codes = {c["code"] for c in cs["concept"]}
    assert codes == {"male", "female", "other", "unknown"}
    assert all("definition" not in c for c in cs["concept"])


def test_every_required_binding_resolves() -> None:
    """All required bindings resolve, except one LOINC answer list absent from the package."""
    missing = set()
    sds = [registry.structure_definition(t) for t in registry.resource_types()]
    sds += list(registry.profiles().values())
    for sd in sds:
        for element in sd["snapshot"]["element"]:
            binding = element.get("binding", {})
            if binding.get("strength") == "required":
                try:
                    registry.value_set(binding["valueSet"])
                except KeyError:
                    missing.add(binding["valueSet"])
    assert missing == {"http://loinc.org/vs/LL379-9|4.0.1"}


def test_code_system_hierarchy_is_kept() -> None:
    cs = registry.code_system("http://hl7.org/fhir/observation-status|4.0.1")
    amended = next(c for c in cs["concept"] if c["code"] == "amended")
    assert {c["code"] for c in amended["concept"]} == {"corrected"}


def test_unknown_terminology() -> None:
    with pytest.raises(KeyError):
        registry.value_set("http://loinc.org/vs/LL379-9")
    with pytest.raises(KeyError):
        registry.code_system("http://loinc.org")
    with pytest.raises(KeyError):
        # a preferred (not required) binding: not vendored
        registry.value_set("http://hl7.org/fhir/ValueSet/observation-codes")


# --- operations ----------------------------------------------------------------------------


def test_operation_definitions() -> None:
    everything = registry.operation_definition("Patient-everything")
    assert everything["code"] == "everything"
    assert everything["resource"] == ["Patient"]
    url = "http://hl7.org/fhir/OperationDefinition/Resource-validate"
    assert registry.operation_definition(url)["code"] == "validate"
    assert registry.operation_definition(url + "|4.0.1")["code"] == "validate"
    with pytest.raises(KeyError):
        registry.operation_definition("everything")


# --- the data files ------------------------------------------------------------------------


def test_data_files_are_small_and_carry_their_source() -> None:
    total = 0
    for stem in DATA_FILES:
        data = (DEFINITIONS / f"{stem}.json.gz").read_bytes()
        total += len(data)
        document = orjson.loads(gzip.decompress(data))
        assert document["source"]["package"] == "hl7.fhir.r4.examples"
        assert document["source"]["version"] == "4.0.1"
        assert document["entries"]
    assert total < 3_000_000
    assert not (DEFINITIONS / "__init__.py").is_file()  # package data, not a package


@pytest.mark.skipif(
    not PACKAGE_TGZ.is_file(),
    reason=f"the official FHIR R4 package is not at {PACKAGE_TGZ} (only needed to rebuild)",
)
def test_build_is_reproducible(tmp_path: Path) -> None:
    """Rebuilding from the official package gives byte-identical files."""
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tools" / "build_definitions.py"),
            str(PACKAGE_TGZ),
            "--out",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"{stem}.json.gz" for stem in DATA_FILES] + ["README.md"])
    for name in names:
        assert (tmp_path / name).read_bytes() == (SOURCE_DEFINITIONS / name).read_bytes(), name
