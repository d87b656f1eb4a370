"""ORU^R01 -> DiagnosticReport + Observations, expected values from the IG tables
OBR[DiagnosticReport], OBX[Observation], CWE[CodeableConcept], and the concept maps
InterpretationCodes, ObservationResultStatusCodesInterpretation, ResultStatus."""

from __future__ import annotations

from typing import Any

from carebridge.ingest.hl7v2.datatypes import LOCAL_AUTHORITY
from carebridge.ingest.hl7v2.processor import Hl7Processor
from carebridge.monitoring.scoring import readings_of
from carebridge.storage import Repository

from .conftest import ack_fields, feed_provenance, sample, stored, versions

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def by_code(observations: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["code"]["coding"][0]["code"]: o for o in observations}


def test_nist_oru_sample(hl7: Hl7Processor, repository: Repository) -> None:
    ack = ack_fields(hl7.handle_frame(sample("R01-Basic-NG-ExampleMessage-v2.5.1.txt")))
    assert ack["MSA"][1:3] == ["AA", "NIST-LOI_5.0_1.1-NG"]
    [patient] = stored(repository, "Patient")
    assert patient["identifier"][0]["system"] == LOCAL_AUTHORITY + "NIST%20MPI"
    assert patient["identifier"][0]["value"] == "PATID5421"
    [report] = stored(repository, "DiagnosticReport")
    # OBR-3 filler order number -> identifier type FILL (EI namespace as authority)
    assert report["identifier"] == [{
        "system": LOCAL_AUTHORITY + "NIST%20Lab%20Filler", "value": "R-511",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                             "code": "FILL"}]}}]
    assert report["code"] == {"coding": [{"code": "1000",
                                          "display": "Hepatitis A B C Panel"}]}  # 99USL local
    assert report["effectiveDateTime"] == "2012-06-28T07:01:00Z"   # OBR-7
    assert report["status"] == "final"
    assert report["subject"]["reference"] == f"Patient/{patient['id']}"
    observations = stored(repository, "Observation")
    assert sorted(r["reference"] for r in report["result"]) == sorted(
        f"Observation/{o['id']}" for o in observations)
    obs = by_code(observations)
    assert set(obs) == {"22314-9", "20575-7", "22316-4"}
    cwe = obs["22314-9"]
    # OBX-3 CWE: triplet 1 (LN -> loinc.org, CWE.7 version), triplet 2 (local 'L')
    assert cwe["code"]["coding"] == [
        {"system": LOINC, "version": "2.52", "code": "22314-9",
         "display": "Hepatitis A virus IgM Ab [Presence] in Serum"},
        {"code": "HAVM", "display": "Hepatitis A IgM antibodies (IgM anti-HAV)"}]
    # OBX-2 CWE -> valueCodeableConcept; SCT -> snomed.info/sct; CWE.9 -> text
    value = cwe["valueCodeableConcept"]
    assert value["coding"][0] == {"system": "http://snomed.info/sct", "version": "201509USEd",
                                  "code": "260385009", "display": "Negative (qualifier value)"}
    assert value["text"] == "Negative (qualifier value)"
    assert cwe["referenceRange"] == [{"text": "Negative"}]            # OBX-7
    assert cwe["interpretation"][0]["coding"][0] == {
        "system": INTERPRETATION, "code": "N", "display": "Normal"}   # OBX-8
    assert cwe["status"] == "final"                                  # OBX-11 F
    assert cwe["effectiveDateTime"] == "2015-09-25"                  # OBX-14
    nm = obs["22316-4"]
    assert nm["valueQuantity"] == {"value": 0.7, "unit": "international unit per milliliter",
                                   "system": UCUM, "code": "[IU]/mL"}
    assert nm["referenceRange"] == [{"high": {"value": 0.5,
                                              "unit": "international unit per milliliter",
                                              "system": UCUM, "code": "[IU]/mL"},
                                     "text": "<0.50 IU/mL"}]
    assert nm["interpretation"][0]["coding"][0]["code"] == "H"
    assert nm["category"][0]["coding"][0]["code"] == "laboratory"
    [provenance] = feed_provenance(repository)
    targets = {t["reference"] for t in provenance["target"]}
    assert f"DiagnosticReport/{report['id']}" in targets
    assert {f"Observation/{o['id']}" for o in observations} <= targets
    assert provenance["entity"][0]["what"]["identifier"]["value"] == (
        "NIST Test Lab APP|NIST Lab Facility|NIST-LOI_5.0_1.1-NG")


def test_lab_panel_units_and_status(hl7: Hl7Processor, repository: Repository) -> None:
    ack = ack_fields(hl7.handle_frame(sample("R01-Lab-Panel-Various-Blood-Tests-v2.3.1.txt")))
    assert ack["MSA"][1] == "AA"
    [report] = stored(repository, "DiagnosticReport")
    assert report["status"] == "preliminary"                 # OBR-25 P (ResultStatus)
    obs = stored(repository, "Observation")
    assert len(obs) == 32
    codes = by_code(obs)
    assert codes["2823-3"]["valueQuantity"]["code"] == "meq/L"        # 'mEq/L' -> UCUM
    assert codes["789-8"]["valueQuantity"]["code"] == "10*12/L"      # already UCUM
    assert codes["6301-6"]["valueQuantity"]["code"] == "{INR}"
    assert codes["76485-2"]["referenceRange"][0]["low"]["value"] == 70  # '70-109'
    assert codes["76485-2"]["referenceRange"][0]["high"]["code"] == "nmol/L"
    assert codes["2000-8"]["valueString"] == "109"        # ED: the text as sent


def oru(control: str, obx: list[str], status: str = "F") -> bytes:
    lines = [f"MSH|^~\\&|MON|WARD7|CB|CB|20240401101500||ORU^R01^ORU_R01|{control}|P|2.5.1",
             "PID|1||M55^^^GH^MR||Vega^Ana||19500505|F",
             "OBR|1||VS-9^MON|85353-1^Vital signs^LN|||20240401101000" + "|" * 18 + status]
    lines += [f"OBX|{n}|{line}" for n, line in enumerate(obx, 1)]
    return "\r".join(lines).encode()


VITALS = [
    "NM|8867-4^Heart rate^LN||88|bpm|60-100|N|||F",
    "NM|59408-5^SpO2^LN||93|%|94-100|L|||F",
    "NM|8310-5^Body temperature^LN||101.3|degF||H|||F",
    "NM|8480-6^Systolic BP^LN||142|mm[Hg]^mmHg^UCUM|90-140|H|||F",
    "NM|9279-1^Respiratory rate^LN||22||12-20|H|||F",
]


def test_vital_signs_are_vital_sign_observations(hl7: Hl7Processor,
                                                 repository: Repository) -> None:
    assert ack_fields(hl7.handle_frame(oru("V1", VITALS)))["MSA"][1] == "AA"
    obs = by_code(stored(repository, "Observation"))
    # 101.3 [degF] -> (101.3 - 32) * 5/9 = 38.5 Cel, the one unit NEWS2 scores
    for code, ucum, value in (("8867-4", "/min", 88), ("59408-5", "%", 93),
                              ("8310-5", "Cel", 38.5), ("8480-6", "mm[Hg]", 142),
                              ("9279-1", "/min", 22)):
        o = obs[code]
        assert o["category"][0]["coding"][0] == {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs", "display": "Vital Signs"}
        assert o["valueQuantity"]["system"] == UCUM
        assert o["valueQuantity"]["code"] == ucum
        assert o["valueQuantity"]["value"] == value
        assert o["effectiveDateTime"] == "2024-04-01T10:10:00Z"   # OBR-7 when OBX-14 empty
    assert obs["59408-5"]["interpretation"][0]["coding"][0]["code"] == "L"
    assert obs["8310-5"]["note"] == [{"text": "Sent as 101.3 [degF] (OBX-5/OBX-6)."}]
    # Remote monitoring reads every one of them as a reading it can score (NEWS2; it files
    # pulse-oximetry SpO2 under the arterial SpO2 code)
    readings = {r.code: r.value for o in obs.values() for r in readings_of(o)}
    assert readings == {"8867-4": 88, "2708-6": 93, "8310-5": 38.5, "8480-6": 142,
                        "9279-1": 22}


def test_vital_sign_with_a_unit_ucum_cannot_express_is_refused(
        hl7: Hl7Processor, repository: Repository) -> None:
    before = versions(repository)
    bad = [VITALS[0], "NM|8310-5^Body temperature^LN||37|furlongs||N|||F"]
    ack = ack_fields(hl7.handle_frame(oru("V2", bad)))
    assert ack["MSA"][1] == "AE"
    assert ack["ERR"][2] == "OBX^2^6^1"                  # the second OBX, field 6
    assert ack["ERR"][3].startswith("102^")
    assert versions(repository) == before               # not even the good OBX was stored


def test_value_types(hl7: Hl7Processor, repository: Repository) -> None:
    lines = [
        "SN|1000-1^A^LN||<^5|mg/dL|||||F",
        "SN|1000-2^B^LN||^1^:^128||||||F",
        "SN|1000-3^C^LN||^10^-^20|mg/dL|||||F",
        "ST|1000-4^D^LN||positive||||||F",
        "TX|1000-5^E^LN||line one~line two||||||F",
        "DT|1000-6^F^LN||20240315||||||F",
        "TS|1000-7^G^LN||202403151230+0100||||||F",
        "CE|1000-8^H^LN||POS^Positive^HL70078||||||F",
        "NM|1000-9^I^LN||||||||X",
    ]
    assert ack_fields(hl7.handle_frame(oru("T1", lines)))["MSA"][1] == "AA"
    obs = by_code(stored(repository, "Observation"))
    assert obs["1000-1"]["valueQuantity"] == {"value": 5, "unit": "mg/dL", "system": UCUM,
                                             "code": "mg/dL", "comparator": "<"}
    assert obs["1000-2"]["valueRatio"] == {"numerator": {"value": 1},
                                           "denominator": {"value": 128}}
    assert obs["1000-3"]["valueRange"]["low"]["value"] == 10
    assert obs["1000-3"]["valueRange"]["high"]["value"] == 20
    assert obs["1000-4"]["valueString"] == "positive"
    assert obs["1000-5"]["valueString"] == "line one\nline two"
    assert obs["1000-6"]["valueDateTime"] == "2024-03-15"
    assert obs["1000-7"]["valueDateTime"] == "2024-03-15T12:30:00+01:00"
    assert obs["1000-8"]["valueCodeableConcept"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0078", "code": "POS",
        "display": "Positive"}
    assert obs["1000-9"]["status"] == "cancelled"       # OBX-11 X
    assert "value" not in "".join(obs["1000-9"])


def test_bad_numeric_value_names_obx5(hl7: Hl7Processor, repository: Repository) -> None:
    ack = ack_fields(hl7.handle_frame(oru("T2", ["NM|2345-7^Glucose^LN||high|mg/dL||||||F"])))
    assert ack["MSA"][1] == "AE"
    assert ack["ERR"][2] == "OBX^1^5^1"
    assert ack["ERR"][3].startswith("102^")
    assert stored(repository, "Observation") == []


def test_corrected_result_updates_the_same_observation(hl7: Hl7Processor,
                                                       repository: Repository) -> None:
    hl7.handle_frame(oru("C1", ["NM|2345-7^Glucose^LN||95|mg/dL|70-99|N|||F"]))
    hl7.handle_frame(oru("C2", ["NM|2345-7^Glucose^LN||105|mg/dL|70-99|H|||C"], status="C"))
    [obs] = stored(repository, "Observation")
    assert obs["status"] == "corrected" and obs["valueQuantity"]["value"] == 105
    assert obs["meta"]["versionId"] == "2"
    [report] = stored(repository, "DiagnosticReport")
    assert report["status"] == "corrected"
    assert len(stored(repository, "Patient")) == 1


def test_results_do_not_overwrite_demographics(hl7: Hl7Processor,
                                               repository: Repository) -> None:
    adt = (b"MSH|^~\\&|ADM|WARD7|CB|CB|20240401||ADT^A04|D1|P|2.5.1\rEVN|A04|20240401\r"
           b"PID|1||M55^^^GH^MR||Vega^Ana^Maria||19500505|F|||1 Calle^^Sevilla")
    hl7.handle_frame(adt)
    hl7.handle_frame(oru("D2", VITALS[:1]))
    [patient] = stored(repository, "Patient")
    assert patient["name"][0]["given"] == ["Ana", "Maria"]
    assert patient["address"][0]["city"] == "Sevilla"
    assert patient["meta"]["versionId"] == "1"


def test_notes_after_an_obx_become_observation_notes(hl7: Hl7Processor,
                                                     repository: Repository) -> None:
    message = oru("N1", ["NM|2345-7^Glucose^LN||95|mg/dL|70-99|N|||F"]).decode()
    message += "\rNTE|1|L|Fasting sample.~Drawn at 07:00.\rNTE|2|L|Repeat in 3 months."
    assert ack_fields(hl7.handle_frame(message.encode()))["MSA"][1] == "AA"
    [obs] = stored(repository, "Observation")
    assert obs["note"] == [{"text": "Fasting sample.\nDrawn at 07:00."},   # NTE-3 repeats
                           {"text": "Repeat in 3 months."}]
