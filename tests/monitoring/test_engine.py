"""From committed readings to NEWS2 Observations and alerts (Flags), whatever way they came in."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.monitoring.support import Ward, minutes_ago

from carebridge.fhir.errors import Conflict
from carebridge.security.policy import SYSTEM, Caller
from carebridge.services.resources import ResourceService

NURSE = Caller("Practitioner/nurse-1", roles=frozenset({"nurse"}))


def news2_scores(ward: Ward) -> list[dict[str, object]]:
    found = ward.search("Observation", code="http://snomed.info/sct|1104051000000101",
                        subject=f"Patient/{ward.patient_id}")
    return sorted(found, key=lambda o: str(o["issued"]) + str(o["meta"]["lastUpdated"]))  # type: ignore[index]


def flags(ward: Ward) -> list[dict[str, object]]:
    return ward.search("Flag", subject=f"Patient/{ward.patient_id}")


def send(ward: Ward, **values: object) -> None:
    ward.monitoring.gateway.ingest(ward.device_id, {"t": minutes_ago(1), **values}, ward.secret)
    ward.settle()


def test_news2_observation_from_device_readings(ward: Ward) -> None:
    # RR 22 (2), SpO2 95 (1), SBP 105 (1), pulse 95 (1), temp 38.3 (1), no O2 reading (air, 0):
    # total 6, medium; consciousness is missing and listed.
    send(ward, rr=22, spo2=95, sbp=105, dbp=70, hr=95, temp=38.3)
    [score] = news2_scores(ward)
    assert score["valueInteger"] == 6
    assert score["interpretation"][0]["coding"][0]["code"] == "medium"  # type: ignore[index]
    assert score["status"] == "preliminary"  # a parameter is missing
    subs = {c["code"]["coding"][0]["code"]: c.get("valueInteger")  # type: ignore[index,union-attr]
            for c in score["component"]}  # type: ignore[union-attr]
    assert subs == {"respiration-rate": 2, "spo2": 1, "air-or-oxygen": 0, "systolic-bp": 1,
                    "pulse": 1, "consciousness": None, "temperature": 1}
    absent = [c for c in score["component"] if "dataAbsentReason" in c]  # type: ignore[union-attr]
    assert [c["code"]["coding"][0]["code"] for c in absent] == ["consciousness"]
    assert len(score["derivedFrom"]) == 5  # type: ignore[arg-type]


def test_each_parameter_latest_within_window(ward: Ward) -> None:
    # An old (2 h) low SBP falls out of the 1 h window; the latest pulse counts, not the first.
    ward.monitoring.gateway.ingest(ward.device_id, [
        {"t": minutes_ago(120), "sbp": 85, "dbp": 50},
        {"t": minutes_ago(10), "hr": 135},
        {"t": minutes_ago(5), "hr": 80},
    ], ward.secret)
    ward.settle()
    latest = news2_scores(ward)[-1]
    subs = {c["code"]["coding"][0]["code"]: c.get("valueInteger")  # type: ignore[index,union-attr]
            for c in latest["component"]}  # type: ignore[union-attr]
    assert subs["pulse"] == 0 and subs["systolic-bp"] is None
    assert latest["valueInteger"] == 0


def test_oxygen_reading_scores_two(ward: Ward) -> None:
    send(ward, hr=70, o2flow=2)
    latest = news2_scores(ward)[-1]
    assert latest["valueInteger"] == 2


def test_rest_observations_are_scored_too(ward: Ward) -> None:
    """Not only device ingest: any committed vital-sign Observation (REST, HL7 v2) counts."""
    obs = {"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
           "subject": {"reference": f"Patient/{ward.patient_id}"},
           "effectiveDateTime": minutes_ago(2),
           "valueQuantity": {"value": 140, "unit": "/min", "system": "http://unitsofmeasure.org",
                             "code": "/min"}}
    ward.service.create(SYSTEM, "Observation", obs)
    ward.settle()
    [score] = news2_scores(ward)
    assert score["valueInteger"] == 3
    assert score["interpretation"][0]["coding"][0]["code"] == "low-medium"  # type: ignore[index]
    [flag] = flags(ward)
    assert flag["code"]["coding"][0]["code"] == "news2-low-medium"  # type: ignore[index]


def _priority(flag: dict[str, object]) -> str:
    for ext in flag["extension"]:  # type: ignore[attr-defined]
        if ext["url"] == "http://hl7.org/fhir/StructureDefinition/flag-priority":
            return str(ext["valueCodeableConcept"]["coding"][0]["code"])
    raise AssertionError("no flag-priority")


def _state(flag: dict[str, object]) -> str:
    for ext in flag["extension"]:  # type: ignore[attr-defined]
        if ext["url"].endswith("/alert-state"):
            return str(ext["valueCode"])
    raise AssertionError("no alert-state")


def test_alert_no_duplicates_escalation_ack_resolve(ward: Ward) -> None:
    send(ward, rr=22, spo2=95, sbp=105, dbp=70, hr=95, temp=38.3)  # 6: medium
    [flag] = flags(ward)
    assert flag["status"] == "active" and _priority(flag) == "PM"
    assert flag["subject"] == {"reference": f"Patient/{ward.patient_id}"}
    detail = [e for e in flag["extension"]  # type: ignore[attr-defined]
              if e["url"] == "http://hl7.org/fhir/StructureDefinition/flag-detail"]
    assert detail[0]["valueReference"]["reference"].startswith("Observation/")
    send(ward, rr=21, hr=96)  # still medium: no second alert, no new version
    [same] = flags(ward)
    assert same["id"] == flag["id"] and same["meta"]["versionId"] == "1"  # type: ignore[index]
    desk = ward.monitoring.desk
    desk.acknowledge(NURSE, str(flag["id"]))
    send(ward, rr=26, hr=132)  # RR 3 + pulse 3 + ...: high -> the open alert escalates
    [escalated] = flags(ward)
    assert escalated["id"] == flag["id"]
    assert _priority(escalated) == "PH" and _state(escalated) == "open"
    assert escalated["code"]["coding"][0]["code"] == "news2-high"  # type: ignore[index]
    resolved = desk.resolve(NURSE, str(flag["id"]))
    assert resolved["status"] == "inactive" and "end" in resolved["period"]
    events = [{x["url"]: next(v for k, v in x.items() if k.startswith("value"))
               for x in e["extension"]} for e in resolved["extension"]
              if e["url"].endswith("/alert-event")]
    assert [(e["type"], e["who"]) for e in events] == [
        ("acknowledged", "Practitioner/nurse-1"), ("escalated", "system"),
        ("resolved", "Practitioner/nurse-1")]
    history = ward.service.history(SYSTEM, "Flag", str(flag["id"]))
    assert len(history.entries) == 4  # opened, acknowledged, escalated, resolved
    with pytest.raises(Conflict):
        desk.resolve(NURSE, str(flag["id"]))
    # After resolution, a still-high score opens a new alert.
    send(ward, rr=27)
    assert len([f for f in flags(ward) if f["status"] == "active"]) == 1


def test_low_band_raises_no_alert(ward: Ward) -> None:
    send(ward, rr=16, spo2=97, sbp=120, dbp=80, hr=70, temp=37.0)
    assert news2_scores(ward)[-1]["valueInteger"] == 0
    assert flags(ward) == []


def test_outbox_survives_a_crash_before_scoring(database_url: str) -> None:
    """Readings committed while no engine ran are scored by the next engine to start."""
    from carebridge.events.outbox import OutboxRepository
    from carebridge.monitoring.runtime import Monitoring
    from carebridge.storage import open_repository

    repository = OutboxRepository(open_repository(database_url))
    service = ResourceService(repository)
    first = Monitoring(service)
    patient = service.create(SYSTEM, "Patient", {"resourceType": "Patient"}).version.id
    device = service.create(SYSTEM, "Device", {"resourceType": "Device",
                                               "patient": {"reference": f"Patient/{patient}"}})
    secret = first.credentials.issue(device.version.id)
    first.gateway.ingest(device.version.id, {"t": minutes_ago(1), "hr": 140}, secret)
    first.gateway.stop()
    repository.close()  # "crash": nothing scored yet

    repository = OutboxRepository(open_repository(database_url))
    service = ResourceService(repository)
    second = Monitoring(service)
    while second.engine.process_once():
        pass
    from carebridge.services.search import SearchService

    found = SearchService(service).search(SYSTEM, "Flag", [("subject", f"Patient/{patient}")])
    assert len(found.matches) == 1
    repository.close()


def test_alert_desk_refuses_patient_scoped_callers(database_url: str) -> None:
    from carebridge.events.outbox import OutboxRepository
    from carebridge.fhir.errors import Forbidden
    from carebridge.monitoring.alerts import AlertDesk
    from carebridge.security.policy import SmartPolicy
    from carebridge.storage import open_repository

    repository = OutboxRepository(open_repository(database_url))
    try:
        desk = AlertDesk(ResourceService(repository, policy=SmartPolicy()))
        patient_app = Caller("Patient/1", client_id="app", roles=frozenset({"patient"}),
                             scopes=frozenset({"patient/*.rs"}), patient="1")
        with pytest.raises(Forbidden):
            desk.open_alerts(patient_app)
        with pytest.raises(Forbidden):
            desk.acknowledge(patient_app, "any")
        staff = Caller("Practitioner/1", client_id="app", roles=frozenset({"nurse"}),
                       scopes=frozenset({"user/*.cruds"}))
        assert desk.open_alerts(staff) == []
    finally:
        repository.close()


def _oru(control: str, minutes: float, obx: list[str]) -> bytes:
    stamp = (datetime.now(UTC) - timedelta(minutes=minutes)).strftime("%Y%m%d%H%M%S+0000")
    lines = [f"MSH|^~\\&|MON|WARD7|CB|CB|{stamp}||ORU^R01^ORU_R01|{control}|P|2.5.1",
             "PID|1||M77^^^GH^MR||Vega^Ana||19500505|F",
             f"OBR|1||VS-{control}^MON|85353-1^Vital signs^LN|||" + stamp + "|" * 18 + "F"]
    lines += [f"OBX|{n}|{line}" for n, line in enumerate(obx, 1)]
    return "\r".join(lines).encode()


def test_hl7_oru_vitals_of_a_monitored_patient_are_scored(ward: Ward) -> None:
    """HL7 v2 ORU vitals (issue 6's way in) reach NEWS2 through the same outbox, once the
    patient is under monitoring (here enrolled by a ``news2`` rule)."""
    from carebridge.ingest.hl7v2.processor import Hl7Processor
    from carebridge.monitoring.codes import RULE_CODE

    hl7 = Hl7Processor(ward.service)
    assert b"|AA|" in hl7.handle_frame(_oru("V1", 3, ["NM|8867-4^Heart rate^LN||80|/min|||||F"]))
    ward.settle()
    news2 = "http://snomed.info/sct|1104051000000101"
    assert ward.search("Observation", code=news2,
                       subject=f"Patient/{ward.patient_id}") == []
    [patient] = [p for p in ward.search("Patient") if p["id"] != ward.patient_id]
    assert ward.search("Observation", code=news2, subject=f"Patient/{patient['id']}") == []
    ward.service.create(SYSTEM, "Basic", {
        "resourceType": "Basic", "code": {"coding": [{"system": RULE_CODE, "code": "news2"}]},
        "subject": {"reference": f"Patient/{patient['id']}"}})
    ward.settle()
    reply = hl7.handle_frame(_oru("V2", 2, ["NM|8867-4^Heart rate^LN||135|/min|||||F",
                                            "NM|9279-1^Respiratory rate^LN||26|/min|||||F"]))
    assert b"|AA|" in reply
    ward.settle()
    [score] = ward.search("Observation", code=news2, subject=f"Patient/{patient['id']}")
    assert score["valueInteger"] == 6  # pulse 135: 3, respiration 26: 3
    assert score["interpretation"][0]["coding"][0]["code"] == "medium"  # type: ignore[index]


def test_old_readings_fill_history_but_raise_nothing(ward: Ward) -> None:
    ward.monitoring.gateway.ingest(ward.device_id, {"t": minutes_ago(6 * 60), "hr": 150},
                                   ward.secret)
    ward.settle()
    assert news2_scores(ward) == [] and flags(ward) == []


def test_rows_taken_by_another_engine_between_judging_and_storing(ward: Ward) -> None:
    """A pass judges its batch without the write lock; if another engine claims those rows
    first, the pass judges what it claims itself: every reading is scored once, one alert."""
    from carebridge.monitoring.engine import Judgement, MonitoringEngine

    other = MonitoringEngine(ward.service)

    class Overtaken(MonitoringEngine):
        overtaken = False

        def _judge(self, *args: Any, **kwargs: Any) -> Judgement:
            verdict = super()._judge(*args, **kwargs)
            if not self.overtaken:  # the other engine commits the same batch meanwhile
                self.overtaken = True
                done: list[int] = []
                racer = threading.Thread(target=lambda: done.append(other.process_once()))
                racer.start()
                racer.join()
                assert done and done[0] > 0
            return verdict

    engine = Overtaken(ward.service)
    ward.monitoring.gateway.ingest(ward.device_id, {"t": minutes_ago(1), "hr": 140, "rr": 26},
                                   ward.secret)
    while engine.process_once():
        pass
    assert engine.overtaken
    [score] = news2_scores(ward)  # stored by the other engine only
    assert score["valueInteger"] == 6
    [flag] = flags(ward)
    assert flag["code"]["coding"][0]["code"] == "news2-medium"  # type: ignore[index]
    with ward.service.repository.session() as session:
        assert session.query("SELECT count(*) FROM mon_reading", ())[0][0] == 2
        assert session.query("SELECT count(*) FROM event_outbox", ())[0][0] == 0


def test_a_batch_scores_with_readings_not_stored_yet(ward: Ward) -> None:
    """Readings of the same batch count as the latest (they reach mon_reading only when the
    batch is stored): two sets in one batch, the later values score."""
    ward.monitoring.gateway.ingest(ward.device_id, [
        {"t": minutes_ago(3), "hr": 140, "rr": 26},
        {"t": minutes_ago(2), "hr": 70, "rr": 16}], ward.secret)
    ward.settle()
    [score] = news2_scores(ward)
    assert score["valueInteger"] == 0 and flags(ward) == []


def _outbox(ward: Ward) -> list[tuple[str, str]]:
    with ward.service.repository.session() as session:
        rows = session.query("SELECT resource_type, resource_id FROM event_outbox ORDER BY id",
                             ())
    return [(str(r[0]), str(r[1])) for r in rows]


def test_rows_that_lead_to_nothing_are_claimed_later_together_on_sqlite(ward: Ward) -> None:
    """SQLite has one write lock for every way in: a write that concerns no monitored
    patient (and no Subscription) is claimed later with others, not by a commit of its own;
    a reading of a monitored patient is still scored at once and takes them along."""
    engine = ward.monitoring.engine
    engine.settings.defer_idle = 0.0
    engine.process_once()  # the ward's own Patient and Device: claimed now
    assert _outbox(ward) == []
    engine.settings.defer_idle = 3600.0  # only a reading (or the size limit) claims them
    unmonitored = ward.add_patient()
    ward.settle()
    sqlite = ward.service.repository.dialect == "sqlite"
    assert (_outbox(ward) == [("Patient", unmonitored)]) is sqlite
    assert engine.process_once() == 0  # judged once, not again
    send(ward, hr=140, rr=26)
    ward.settle()
    assert news2_scores(ward)  # scored at once
    left = _outbox(ward)
    assert ("Patient", unmonitored) not in left  # claimed with the reading's batch
    assert all(rtype in ("Observation", "Flag") for rtype, _ in left)  # its own outputs
    engine.settings.defer_idle = 0.0
    engine.process_once()
    assert _outbox(ward) == []


def _acvpu(ward: Ward, system: str, code: str, answer: str, minutes: float = 2) -> str:
    created = ward.service.create(SYSTEM, "Observation", {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{ward.patient_id}"},
        "effectiveDateTime": minutes_ago(minutes),
        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct",
                                             "code": answer}]}})
    ward.settle()
    return f"Observation/{created.version.id}"


def _score_from(ward: Ward, reference: str) -> dict[str, object]:
    """The NEWS2 Observation derived from the given reading."""
    [score] = [s for s in news2_scores(ward)
               if {"reference": reference} in s["derivedFrom"]]  # type: ignore[operator]
    return score


def _subs(score: dict[str, object]) -> dict[str, object]:
    return {c["code"]["coding"][0]["code"]: c.get("valueInteger")  # type: ignore[index,union-attr]
            for c in score["component"]}  # type: ignore[union-attr]


@pytest.mark.parametrize(("answer", "points"), [
    ("248234008", 0),  # mentally alert
    ("130987000", 3),  # acute (new) confusion
    ("300202002", 3),  # responds to voice
    ("450847001", 3),  # responds to pain
    ("422768004", 3),  # unresponsive
])
def test_acvpu_assessment_scores_consciousness(ward: Ward, answer: str, points: int) -> None:
    """A level-of-consciousness Observation coded as the NHS NEWS2 guidance codes it is the
    consciousness parameter: no longer listed missing, and a 3 raises low-medium."""
    send(ward, rr=16, spo2=97, sbp=120, dbp=80, hr=70, temp=37.0)  # all 0
    # Scored as of the assessment's time, so it is made after the device readings.
    latest = _score_from(ward, _acvpu(ward, "http://snomed.info/sct", "1104441000000107",
                                      answer, minutes=0.5))
    assert _subs(latest)["consciousness"] == points
    assert latest["valueInteger"] == points
    assert latest["status"] == "final"  # every parameter present
    assert not [c for c in latest["component"] if "dataAbsentReason" in c]  # type: ignore[union-attr]
    assert latest["interpretation"][0]["coding"][0]["code"] == (  # type: ignore[index]
        "low-medium" if points == 3 else "low")
    assert len(latest["derivedFrom"]) == 6  # type: ignore[arg-type]


def test_acvpu_as_loinc_level_of_responsiveness_and_latest_wins(ward: Ward) -> None:
    pain = _acvpu(ward, "http://loinc.org", "67775-7", "450847001", minutes=10)  # P
    assert _subs(_score_from(ward, pain))["consciousness"] == 3
    alert = _acvpu(ward, "http://loinc.org", "67775-7", "248234008", minutes=1)  # A, later
    assert _subs(_score_from(ward, alert))["consciousness"] == 0
    # An answer outside the ACVPU findings is not a level: nothing scored from it.
    before = len(news2_scores(ward))
    _acvpu(ward, "http://loinc.org", "67775-7", "404684003", minutes=0.5)
    assert len(news2_scores(ward)) == before


def test_hl7_oru_acvpu_is_scored(ward: Ward) -> None:
    """An eObs system sending ACVPU over HL7 v2 (OBX CWE with SNOMED CT codes) scores it."""
    from carebridge.ingest.hl7v2.processor import Hl7Processor
    from carebridge.monitoring.codes import RULE_CODE

    hl7 = Hl7Processor(ward.service)
    assert b"|AA|" in hl7.handle_frame(_oru("C1", 3, ["NM|8867-4^Heart rate^LN||80|/min|||||F"]))
    ward.settle()
    [patient] = [p for p in ward.search("Patient") if p["id"] != ward.patient_id]
    ward.service.create(SYSTEM, "Basic", {
        "resourceType": "Basic", "code": {"coding": [{"system": RULE_CODE, "code": "news2"}]},
        "subject": {"reference": f"Patient/{patient['id']}"}})
    ward.settle()
    reply = hl7.handle_frame(_oru("C2", 2, [
        "CWE|1104441000000107^ACVPU scale^SCT||300202002^Responds to voice^SCT||||||F"]))
    assert b"|AA|" in reply
    ward.settle()
    news2 = "http://snomed.info/sct|1104051000000101"
    [score] = ward.search("Observation", code=news2, subject=f"Patient/{patient['id']}")
    consciousness = [c for c in score["component"]  # type: ignore[union-attr]
                     if c["code"]["coding"][0]["code"] == "consciousness"]
    assert consciousness[0]["valueInteger"] == 3


def test_device_bound_in_the_same_batch_as_its_first_readings(ward: Ward) -> None:
    """A Device and its first readings committed before the engine runs land in one batch:
    the new binding counts for those readings (they are scored, not skipped)."""
    patient = ward.add_patient()
    device_id, secret = ward.add_device(patient)  # no settle: the engine has not seen it
    ward.monitoring.gateway.ingest(device_id, {"t": minutes_ago(1), "hr": 135}, secret)
    ward.settle()
    scores = ward.search("Observation", code="http://snomed.info/sct|1104051000000101",
                         subject=f"Patient/{patient}")
    assert [s["valueInteger"] for s in scores] == [3]


def test_only_monitored_patients_observations_are_read(ward: Ward) -> None:
    """The engine picks the Observations of monitored patients from their subject index rows
    before reading any body (a feed's results for everybody else are not parsed)."""
    from carebridge.monitoring.engine import _of_patients

    other = ward.add_patient()
    ids = {}
    for patient in (ward.patient_id, other):
        ids[patient] = ward.service.create(SYSTEM, "Observation", {
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": minutes_ago(1),
            "valueQuantity": {"value": 80, "unit": "/min", "system": "http://unitsofmeasure.org",
                              "code": "/min"}}).version.id
    repository = ward.service.repository
    with repository.session() as session:
        both = [ids[ward.patient_id], ids[other], "missing"]
        assert _of_patients(session, repository.dialect, both,
                            frozenset({ward.patient_id})) == [ids[ward.patient_id]]
        assert _of_patients(session, repository.dialect, both, frozenset()) == []
