"""ADT -> Patient and Encounter, expected values worked out from the v2-to-FHIR IG tables
(PID[Patient], PV1[Encounter], CX/XPN/XAD/XTN[...], Event[EncounterStatus],
PatientClass[EncounterClass], AdministrativeSex)."""

from __future__ import annotations

from typing import Any

from carebridge.ingest.hl7v2.datatypes import LOCAL_AUTHORITY
from carebridge.ingest.hl7v2.processor import Hl7Processor
from carebridge.storage import Repository

from .conftest import ack_fields, sample, stored, versions

VHIS = LOCAL_AUTHORITY + "VHIS"


def send(hl7: Hl7Processor, data: bytes) -> dict[str, list[str]]:
    return ack_fields(hl7.handle_frame(data))


def one(repository: Repository, resource_type: str) -> dict[str, Any]:
    found = stored(repository, resource_type)
    assert len(found) == 1, found
    return found[0]


def test_a01_sample_patient_per_pid_table(hl7: Hl7Processor, repository: Repository) -> None:
    ack = send(hl7, sample("A01-Simple-Admit-VHIS-1-v2.3.1.txt"))
    assert ack["MSA"][1:3] == ["AA", "MSG015410771930-19"]
    patient = one(repository, "Patient")
    ids = {(i.get("system"), i["value"]): i for i in patient["identifier"]}
    # PID-2, PID-3 (2 repetitions), PID-4: CX without CX.4 -> MSH-4 (VHIS) as authority;
    # CX.4 'VHIS' -> the same system, assigner display; CX.5 -> type (table 0203)
    assert set(ids) == {(VHIS, "MPI08"), (VHIS, "AdmitPat1"), (VHIS, "MAMar1502"),
                        (VHIS, "ALT0000030"), ("http://hl7.org/fhir/sid/us-ssn", "SSN08")}
    assert ids[(VHIS, "AdmitPat1")]["type"]["coding"][0]["code"] == "MR"
    assert ids[(VHIS, "MAMar1502")]["type"]["coding"][0]["code"] == "MA"
    assert ids[(VHIS, "AdmitPat1")]["assigner"] == {"display": "VHIS"}
    # XPN: 1 family, 2 given[1], 3 given[2], 4 suffix, 5 prefix, 6 degree -> suffix
    assert patient["name"] == [{"family": "Winson", "given": ["Patient1", "Middle0030"],
                                "prefix": ["Mr"], "suffix": ["S", "Dr."]}]
    assert patient["gender"] == "male"                     # AdministrativeSex M
    assert patient["birthDate"] == "1987-01-06"             # PID-7 (DTM > 8 -> birthTime)
    assert patient["_birthDate"]["extension"][0]["valueDateTime"] == "1987-01-06T10:33:00Z"
    assert patient["address"] == [{"line": ["Boulevard", "U"], "city": "New Jersey",
                                   "state": "WA", "postalCode": "789-1211",
                                   "country": "United States"}]
    # PID-13 home (XTN.2 not valued -> "home"), PID-14 business -> "work"
    assert patient["telecom"] == [
        {"system": "phone", "value": "124-5478-9874", "use": "home"},
        {"system": "phone", "value": "124-5478-9875", "use": "work"}]
    assert patient["maritalStatus"]["coding"][0]["code"] == "M"
    assert patient["extension"] == [{
        "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
        "valueString": "LNMom"}]
    assert patient["multipleBirthBoolean"] is True          # PID-24 'Y'


def test_a01_sample_encounter_per_pv1_table(hl7: Hl7Processor,
                                            repository: Repository) -> None:
    send(hl7, sample("A01-Simple-Admit-VHIS-1-v2.3.1.txt"))
    patient = one(repository, "Patient")
    encounter = one(repository, "Encounter")
    assert encounter["identifier"][0]["value"] == "VN_AdmitPat1"      # PV1-19
    assert encounter["identifier"][0]["type"]["coding"][0]["code"] == "VN"
    assert encounter["class"]["code"] == "EMER"                      # PatientClass E
    assert encounter["status"] == "finished"                         # PV1-45 valued
    assert encounter["period"] == {"start": "2012-12-01T06:30:43Z",  # PV1-44
                                   "end": "2015-02-18T15:40:38Z"}    # PV1-45
    assert encounter["subject"]["reference"] == f"Patient/{patient['id']}"
    codes = [p["type"][0]["coding"][0]["code"] for p in encounter["participant"]]
    assert codes == ["ATND", "REF", "CON", "ADM"]                    # PV1-7, 8, 9, 17
    assert encounter["serviceType"]["coding"][0]["code"] == "MED"    # PV1-10
    assert encounter["location"][0]["location"]["identifier"]["value"] == "ICU^Room198^1001"


def adt(event: str, control: str, extra_pv1: str = "", location: str = "W1^101^A",
        name: str = "Lane^Lois", patient_class: str = "I", evn_time: str = "") -> bytes:
    pv1 = ["PV1", "1", patient_class, location] + [""] * 15 + ["V100^^^GH^VN"]
    text = "\r".join([
        f"MSH|^~\\&|ADM|GH|CB|CB|20240301080000||ADT^{event}^ADT_A01|{control}|P|2.5.1",
        f"EVN|{event}|{evn_time or '20240301080000'}",
        f"PID|1||P77^^^GH^MR||{name}||19800202|F",
        "|".join(pv1) + extra_pv1,
    ])
    return text.encode()


def test_events_drive_encounter_status_and_location_history(
        hl7: Hl7Processor, repository: Repository) -> None:
    assert send(hl7, adt("A01", "E1", evn_time="20240301080000"))["MSA"][1] == "AA"
    encounter = one(repository, "Encounter")
    assert encounter["status"] == "in-progress"                       # A01
    assert encounter["period"]["start"] == "2024-03-01T08:00:00Z"
    assert [loc["status"] for loc in encounter["location"]] == ["active"]

    send(hl7, adt("A02", "E2", location="ICU^7^B", evn_time="20240302090000"))  # transfer
    encounter = one(repository, "Encounter")
    assert encounter["status"] == "in-progress"
    history = [(loc["location"]["identifier"]["value"], loc["status"], loc.get("period"))
               for loc in encounter["location"]]
    assert history == [
        ("W1^101^A", "completed", {"start": "2024-03-01T08:00:00Z",
                                   "end": "2024-03-02T09:00:00Z"}),
        ("ICU^7^B", "active", {"start": "2024-03-02T09:00:00Z"})]

    send(hl7, adt("A03", "E3", location="ICU^7^B", evn_time="20240305100000"))  # discharge
    encounter = one(repository, "Encounter")
    assert encounter["status"] == "finished"
    assert encounter["period"]["end"] == "2024-03-05T10:00:00Z"
    assert [loc["status"] for loc in encounter["location"]] == ["completed", "completed"]
    assert [h["status"] for h in encounter["statusHistory"]] == ["in-progress"]

    send(hl7, adt("A13", "E4", location="ICU^7^B", evn_time="20240305110000"))  # cancel disch.
    encounter = one(repository, "Encounter")
    assert encounter["status"] == "in-progress"
    assert "end" not in encounter["period"]
    assert encounter["location"][-1]["status"] == "active"
    assert [h["status"] for h in encounter["statusHistory"]] == ["in-progress", "finished"]

    ack = send(hl7, adt("A11", "E5", location="ICU^7^B", evn_time="20240305120000"))
    assert ack["MSA"][1] == "AA", ack
    assert one(repository, "Encounter")["status"] == "cancelled"
    assert len(stored(repository, "Patient")) == 1   # one patient through all events


def test_a08_updates_the_patient_and_keeps_the_encounter_status(
        hl7: Hl7Processor, repository: Repository) -> None:
    send(hl7, adt("A01", "U1"))
    send(hl7, adt("A08", "U2", name="Lane^Lois^Joanne"))
    patient = one(repository, "Patient")
    assert patient["name"][0]["given"] == ["Lois", "Joanne"]
    assert patient["meta"]["versionId"] == "2"
    assert one(repository, "Encounter")["status"] == "in-progress"


def test_a04_registers_a_planned_visit(hl7: Hl7Processor, repository: Repository) -> None:
    send(hl7, adt("A04", "R1", patient_class="O"))
    encounter = one(repository, "Encounter")
    assert encounter["status"] == "planned"             # Event[EncounterStatus] A04
    assert encounter["class"]["code"] == "AMB"          # PatientClass O


def test_a40_merge_links_both_and_deletes_nothing(hl7: Hl7Processor,
                                                  repository: Repository) -> None:
    prior = (b"MSH|^~\\&|REDOX|RDX|||20190504180000||ADT^A04|PRE-1|T|2.3\r"
             b"EVN|A04|20190504180000\rPID|||53700^^^MR||Bixby^Tim||20080106|M")
    assert send(hl7, prior)["MSA"][1] == "AA"
    merged_id = one(repository, "Patient")["id"]
    ack = send(hl7, sample("A40-REDOX-A40-2-v2.3.txt"))
    assert ack["MSA"][1:3] == ["AA", "1270314131"]
    patients = {p["id"]: p for p in stored(repository, "Patient")}
    assert len(patients) == 2                                  # nothing deleted
    merged = patients.pop(merged_id)
    survivor = next(iter(patients.values()))
    assert merged["active"] is False
    assert merged["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"},
                               "type": "replaced-by"}]
    assert survivor["link"] == [{"other": {"reference": f"Patient/{merged_id}"},
                                 "type": "replaces"}]
    assert survivor["name"][0]["family"] == "Bixby"
    # A later update of the survivor keeps its merge link
    update = (b"MSH|^~\\&|REDOX|RDX|||20190505||ADT^A08|UPD-1|T|2.3\rEVN|A08|20190505\r"
              b"PID|||0000000001^^^MR||Bixby^Timothy^P||20080106|M")
    send(hl7, update)
    survivor = next(p for p in stored(repository, "Patient") if p["id"] != merged_id)
    assert survivor["link"][0]["type"] == "replaces"


def test_a40_for_an_unknown_patient_is_rejected_with_mrg1(hl7: Hl7Processor,
                                                         repository: Repository) -> None:
    before = versions(repository)
    ack = send(hl7, sample("A40-REDOX-A40-2-v2.3.txt"))
    assert ack["MSA"][1] == "AE"
    assert ack["ERR"][2] == "MRG^1^1^1"
    assert ack["ERR"][3].startswith("204^")                   # unknown key identifier
    assert versions(repository) == before                     # nothing partly written
    queued = hl7.store.errors()
    assert [(e.control_id, e.location) for e in queued] == [("1270314131", "MRG[1]-1")]


def test_repeated_feed_updates_never_duplicates(hl7: Hl7Processor,
                                                repository: Repository) -> None:
    for n, name in enumerate(["Lane^Lois", "Lane^Lois", "Lane-Kent^Lois"]):
        assert send(hl7, adt("A08", f"F{n}", name=name))["MSA"][1] == "AA"
    patient = one(repository, "Patient")
    assert patient["name"][0]["family"] == "Lane-Kent"
    assert patient["meta"]["versionId"] == "2"  # the identical second message changed nothing


def test_concurrent_updates_of_one_patient_are_all_accepted(
        hl7: Hl7Processor, repository: Repository) -> None:
    # Two senders update the same patient and visit at once (on PostgreSQL two transactions
    # really race: a refined resource changed under a message makes its group run again).
    import threading

    other = Hl7Processor(hl7.service)
    codes: list[str] = []

    def sender(processor: Hl7Processor, prefix: str) -> None:
        for n in range(8):
            name = f"Lane^Lois{prefix}{n}"
            codes.append(send(processor, adt("A08", f"{prefix}{n}", name=name))["MSA"][1])

    send(hl7, adt("A01", "START"))
    threads = [threading.Thread(target=sender, args=(p, x)) for p, x in ((hl7, "A"),
                                                                       (other, "B"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert codes == ["AA"] * 16
    assert len(stored(repository, "Patient")) == 1
    assert len(stored(repository, "Encounter")) == 1
    assert hl7.store.count_archived() == 17


def test_next_of_kin_become_patient_contacts(hl7: Hl7Processor,
                                             repository: Repository) -> None:
    assert send(hl7, sample("A08-Update-Patient-v2.3.txt"))["MSA"][1] == "AA"
    patient = one(repository, "Patient")
    # NK1|1|Bond^Lady^T|Spouse^Spouse|007 Soho Lane^^Cary^NC^27511|(919)007-0007^^PH^^^919^...
    assert patient["contact"] == [{
        "relationship": [{"coding": [{"code": "Spouse", "display": "Spouse"}]}],  # NK1-3
        "name": {"family": "Bond", "given": ["Lady", "T"]},                        # NK1-2
        "telecom": [{"system": "phone", "value": "(919)007-0007"}],                # NK1-5
        "address": {"line": ["007 Soho Lane"], "city": "Cary", "state": "NC",      # NK1-4
                    "postalCode": "27511"}}]


def test_identifiers_with_search_delimiters_match_only_themselves(
        hl7: Hl7Processor, repository: Repository) -> None:
    r"""PID-3 values are escaped in the conditional URLs (FHIR search escaping): ``P1,P2``
    is one identifier, not "P1 or P2"; ``Q$1``, ``R|1`` and ``S\1`` are not composite,
    system or escape syntax. (In the HL7 text, ``|`` and ``\`` are the escapes ``\F\`` and
    ``\E\``.)"""
    ids = {"P1": "P1", "P1,P2": "P1,P2", "Q$1": "Q$1", "R\\F\\1": "R|1", "S\\E\\1": "S\\1",
           "P2": "P2"}
    for round_, name in enumerate(("Lane^Lois", "Other^Ann")):  # then each updates its own
        for n, pid in enumerate(ids):
            message = adt("A08", f"E{round_}{n}", name=name).replace(
                b"P77^^^GH^MR", pid.encode() + b"^^^GH^MR")
            assert send(hl7, message)["MSA"][1] == "AA", pid
    patients = stored(repository, "Patient")
    assert sorted(p["identifier"][0]["value"] for p in patients) == sorted(ids.values())
    assert {p["name"][0]["family"] for p in patients} == {"Other"}
    assert {p["meta"]["versionId"] for p in patients} == {"2"}
