"""Device readings through the gateway: filling, validation, duplicates, credentials."""

from __future__ import annotations

import threading

import pytest
from tests.monitoring.support import Ward, minutes_ago

from carebridge.fhir.errors import NotFound, Unauthorized, Unprocessable
from carebridge.security.policy import SYSTEM


def test_compact_reading_becomes_vital_sign_observations(ward: Ward) -> None:
    when = minutes_ago(1)
    result = ward.monitoring.gateway.ingest(
        ward.device_id, {"t": when, "hr": 72, "sbp": 121, "dbp": 79, "spo2": 97}, ward.secret)
    assert len(result.stored) == 3 and not result.duplicates
    stored = {o["code"]["coding"][0]["code"]: o for o in ward.search(
        "Observation", subject=f"Patient/{ward.patient_id}")}
    assert set(stored) == {"8867-4", "85354-9", "59408-5"}
    heart = stored["8867-4"]
    assert heart["subject"] == {"reference": f"Patient/{ward.patient_id}"}
    assert heart["device"] == {"reference": f"Device/{ward.device_id}"}
    assert heart["category"][0]["coding"][0]["code"] == "vital-signs"
    assert heart["valueQuantity"] == {"value": 72.0, "unit": "/min",
                                      "system": "http://unitsofmeasure.org", "code": "/min"}
    assert heart["effectiveDateTime"] == when
    parts = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"]
             for c in stored["85354-9"]["component"]}
    assert parts == {"8480-6": 121.0, "8462-4": 79.0}


def test_fhir_bundle_payload(ward: Ward) -> None:
    obs = {"resourceType": "Observation", "status": "final",
           "category": [{"coding": [{"system":
                                     "http://terminology.hl7.org/CodeSystem/observation-category",
                                     "code": "vital-signs"}]}],
           "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
           "effectiveDateTime": minutes_ago(2),
           "valueQuantity": {"value": 38.4, "unit": "C", "system": "http://unitsofmeasure.org",
                             "code": "Cel"}}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": obs}]}
    result = ward.monitoring.gateway.ingest(ward.device_id, bundle, ward.secret)
    assert len(result.stored) == 1


def test_exact_duplicates_are_dropped(ward: Ward) -> None:
    reading = {"t": minutes_ago(3), "rr": 18}
    first = ward.monitoring.gateway.ingest(ward.device_id, reading, ward.secret)
    again = ward.monitoring.gateway.ingest(ward.device_id, reading, ward.secret)
    assert len(first.stored) == 1 and again.duplicates == first.stored and not again.stored
    # Same instant written another way (offset instead of Z) is the same reading.
    assert len(ward.search("Observation", code="9279-1")) == 1


def test_concurrent_duplicates_store_once(ward: Ward) -> None:
    """Two gateways (as two ingest workers would) race with the same reading."""
    from carebridge.ingest.devices.gateway import DeviceGateway

    other = DeviceGateway(ward.service, ward.monitoring.credentials, max_wait=0)
    reading = {"t": minutes_ago(4), "temp": 37.2}
    outcomes: list[int] = []

    def send(gateway: DeviceGateway) -> None:
        outcomes.append(len(gateway.ingest(ward.device_id, reading, ward.secret).stored))

    threads = [threading.Thread(target=send, args=(g,))
               for g in (ward.monitoring.gateway, other) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.stop()
    assert sorted(outcomes) == [0, 0, 0, 0, 0, 1]
    assert len(ward.search("Observation", code="8310-5")) == 1


@pytest.mark.parametrize(("reading", "expression"), [
    ({"t": "2026-11-30T10:00:00Z", "hr": "fast"}, "[0].hr"),
    ({"hr": 70}, "[0].t"),
    ({"t": "2026-11-30T10:00:00Z", "sbp": 120}, "[0].sbp"),
    ({"t": "2026-11-30T10:00:00Z", "spo2": 140}, "[0].valueQuantity.value"),
    ({"t": "2026-11-30T10:00:00Z", "glucose": 5}, "[0].glucose"),
])
def test_bad_compact_readings_are_rejected_with_the_place(ward: Ward, reading: dict[str, object],
                                                          expression: str) -> None:
    with pytest.raises(Unprocessable) as caught:
        ward.monitoring.gateway.prepare(ward.device_id, reading, ward.secret)
    assert caught.value.expression == (expression,)


def test_wrong_unit_names_the_element(ward: Ward) -> None:
    obs = {"resourceType": "Observation", "status": "final",
           "category": [{"coding": [{"system":
                                     "http://terminology.hl7.org/CodeSystem/observation-category",
                                     "code": "vital-signs"}]}],
           "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
           "effectiveDateTime": minutes_ago(1),
           "valueQuantity": {"value": 180, "system": "http://unitsofmeasure.org",
                             "code": "[lb_av]"}}
    with pytest.raises(Unprocessable) as caught:
        ward.monitoring.gateway.prepare(ward.device_id, obs, ward.secret)
    assert caught.value.expression == ("Observation.valueQuantity.code",)
    assert "kg" in caught.value.message


def test_reading_for_another_patient_is_refused(ward: Ward) -> None:
    other = ward.add_patient()
    obs = {"resourceType": "Observation", "status": "final",
           "category": [{"coding": [{"system":
                                     "http://terminology.hl7.org/CodeSystem/observation-category",
                                     "code": "vital-signs"}]}],
           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
           "subject": {"reference": f"Patient/{other}"},
           "effectiveDateTime": minutes_ago(1),
           "valueQuantity": {"value": 60, "system": "http://unitsofmeasure.org", "code": "/min"}}
    with pytest.raises(Unprocessable) as caught:
        ward.monitoring.gateway.prepare(ward.device_id, obs, ward.secret)
    assert caught.value.expression == ("Observation.subject",)


def test_credentials(ward: Ward) -> None:
    with pytest.raises(Unauthorized):
        ward.monitoring.gateway.prepare(ward.device_id, {"t": minutes_ago(1), "hr": 70}, None)
    with pytest.raises(Unauthorized):
        ward.monitoring.gateway.prepare(ward.device_id, {"t": minutes_ago(1), "hr": 70}, "guess")
    other_device, _ = ward.add_device()
    with pytest.raises(Unauthorized):  # one device's secret does not open another
        ward.monitoring.gateway.prepare(other_device, {"t": minutes_ago(1), "hr": 70},
                                        ward.secret)
    with pytest.raises((Unauthorized, NotFound)):
        ward.monitoring.gateway.prepare("no-such-device", {"t": minutes_ago(1)}, ward.secret)
    assert ward.service.count(SYSTEM, "Observation").get("Observation", 0) == 0


def test_future_readings_are_clock_skew(ward: Ward) -> None:
    with pytest.raises(Unprocessable) as caught:
        ward.monitoring.gateway.prepare(ward.device_id, {"t": minutes_ago(-30), "hr": 70},
                                        ward.secret)
    assert "clock skew" in caught.value.message


def test_blood_pressure_component_errors_name_their_place(ward: Ward) -> None:
    from carebridge.monitoring.vitals import compact_observations

    [panel] = compact_observations({"t": minutes_ago(1), "sbp": 120, "dbp": 80})
    panel["component"].reverse()  # diastolic first
    panel["component"][1]["valueQuantity"]["code"] = "mmHg"  # systolic, now at [1]
    with pytest.raises(Unprocessable) as caught:
        ward.monitoring.gateway.prepare(ward.device_id, panel, ward.secret)
    assert caught.value.expression == ("Observation.component[1].valueQuantity.code",)


def test_reissued_secret_is_seen_by_another_process(ward: Ward) -> None:
    from carebridge.ingest.devices.credentials import DeviceCredentials

    here = DeviceCredentials(ward.service.repository, cache_seconds=0)
    other_process = DeviceCredentials(ward.service.repository)
    assert here.verify(ward.device_id, ward.secret)
    new = other_process.issue(ward.device_id)
    assert here.verify(ward.device_id, new)
    assert not here.verify(ward.device_id, ward.secret)  # the replaced secret is refused
    assert not here.verify(ward.device_id, "x" + new)


def test_reading_ids_are_deterministic_and_ordered_by_the_reading_time() -> None:
    from datetime import UTC, datetime, timedelta

    from carebridge.fhir.resource import ID_PATTERN
    from carebridge.monitoring.vitals import reading_id

    at = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    first = reading_id("dev-1", "8867-4", at)
    assert first == reading_id("dev-1", "8867-4", at.astimezone())  # same instant, any zone
    assert ID_PATTERN.fullmatch(first) and len(first) == 40
    assert first != reading_id("dev-2", "8867-4", at) != reading_id("dev-1", "9279-1", at)
    later = [reading_id("dev-9", "8867-4", at + timedelta(seconds=s)) for s in range(1, 50)]
    assert sorted(later) == later and first < later[0]
