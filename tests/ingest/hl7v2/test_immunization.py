"""VXU^V04 -> Immunization, expected values from the IG tables RXA[Immunization],
RXR[Immunization], ORC[Immunization] and the CompletionStatus concept map."""

from __future__ import annotations

from carebridge.ingest.hl7v2.datatypes import LOCAL_AUTHORITY
from carebridge.ingest.hl7v2.processor import Hl7Processor
from carebridge.storage import Repository

from .conftest import ack_fields, sample, stored


def test_new_administration(hl7: Hl7Processor, repository: Repository) -> None:
    ack = ack_fields(hl7.handle_frame(sample("V04-new-admin-v2.5.1.txt")))
    assert ack["MSA"][1:3] == ["AA", "NIST-IZ-AD-1.1_Send_V04_Z22"]
    [patient] = stored(repository, "Patient")
    [immunization] = stored(repository, "Immunization")
    assert immunization["status"] == "completed"                    # RXA-20 CP
    assert immunization["vaccineCode"]["coding"] == [{               # RXA-5, NDC
        "system": "http://hl7.org/fhir/sid/ndc", "code": "49281-0560-05",
        "display": "Pentacel"}]
    assert immunization["occurrenceDateTime"] == "2015-06-24"       # RXA-3
    assert immunization["patient"]["reference"] == f"Patient/{patient['id']}"
    assert immunization["doseQuantity"] == {"value": 0.5, "unit": "mL",   # RXA-6/7
                                            "system": "http://unitsofmeasure.org",
                                            "code": "mL"}
    assert immunization["primarySource"] is True                    # RXA-9 00 new record
    assert immunization["lotNumber"] == "526434"                    # RXA-15
    assert immunization["expirationDate"] == "2015-07-22"           # RXA-16
    assert immunization["manufacturer"] == {"display": "Sanofi Pasteur"}  # RXA-17
    assert immunization["performer"][0]["function"]["coding"][0]["code"] == "AP"  # RXA-10
    assert immunization["performer"][0]["actor"]["display"] == "Lily Jackson"
    assert immunization["route"]["coding"][0] == {                  # RXR-1
        "system": "http://ncimeta.nci.nih.gov", "code": "C28161", "display": "Intramuscular"}
    assert immunization["site"]["coding"][0] == {                   # RXR-2
        "system": "http://terminology.hl7.org/CodeSystem/v2-0163", "code": "RT",
        "display": "Right Thigh"}
    assert immunization["identifier"][0]["value"] == "38766"        # ORC-3 filler
    assert immunization["identifier"][0]["system"] == LOCAL_AUTHORITY + "NIST-AA-IZ-2"
    observations = stored(repository, "Observation")
    assert len(observations) == 8                                    # the OBX of the order
    assert all(o["partOf"] == [{"reference": f"Immunization/{immunization['id']}"}]
               for o in observations)


def test_multiple_administrations_and_history(hl7: Hl7Processor,
                                              repository: Repository) -> None:
    assert ack_fields(hl7.handle_frame(sample("V04-multiple-admins-v2.5.1.txt")))["MSA"][1] == "AA"
    immunizations = {i["identifier"][0]["value"]: i for i in stored(repository, "Immunization")}
    assert set(immunizations) == {"13696", "38760", "35508"}
    historical = immunizations["38760"]
    assert historical["primarySource"] is False                      # RXA-9 01 historical
    assert historical["vaccineCode"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/cvx"
    assert "doseQuantity" not in historical                          # RXA-6 999: unknown
    # The same message again (a new control id) updates, never duplicates
    again = sample("V04-multiple-admins-v2.5.1.txt").replace(b"NIST-IZ-AD-2.1_Send_V04_Z22",
                                                             b"RESENT-2")
    assert ack_fields(hl7.handle_frame(again))["MSA"][1] == "AA"
    assert len(stored(repository, "Immunization")) == 3
    assert len(stored(repository, "Patient")) == 1


def test_deleted_administration_is_entered_in_error(hl7: Hl7Processor,
                                                    repository: Repository) -> None:
    hl7.handle_frame(sample("V04-new-admin-v2.5.1.txt"))
    text = sample("V04-new-admin-v2.5.1.txt").decode()
    deleted = text.replace("NIST-IZ-AD-1.1_Send_V04_Z22", "DEL-1").replace("|CP|A", "|CP|D")
    assert ack_fields(hl7.handle_frame(deleted.encode()))["MSA"][1] == "AA"
    [immunization] = stored(repository, "Immunization")
    assert immunization["status"] == "entered-in-error"             # RXA-21 D
