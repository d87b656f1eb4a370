"""Personal rules stored as Basic resources: thresholds with a duration, trends, no data."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from tests.monitoring.support import Ward, minutes_ago

from carebridge.monitoring.codes import RULE_CODE, RULE_EXT
from carebridge.monitoring.rules import (
    RuleError,
    no_data,
    rule_from_basic,
    threshold_held,
    trend_reached,
)
from carebridge.security.policy import SYSTEM

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def at(minutes: float, value: float) -> tuple[datetime, float, str]:
    return (T0 + timedelta(minutes=minutes), value, f"o{minutes}")


def test_threshold_needs_the_whole_duration() -> None:
    five = timedelta(minutes=5)
    below = [at(m, 88) for m in range(6)]  # 0..5 min, all < 90
    assert threshold_held(below, "<", 90, five) == below[-1]
    assert threshold_held(below[:5], "<", 90, five) is None  # only 4 minutes so far
    broken = [at(0, 88), at(1, 88), at(2, 91), at(3, 88), at(4, 88), at(5, 88)]
    assert threshold_held(broken, "<", 90, five) is None  # the run restarted at minute 3
    assert threshold_held([at(0, 90)], "<", 90, timedelta(0)) is None  # 90 is not < 90
    assert threshold_held([at(0, 90)], "<=", 90, timedelta(0)) == at(0, 90)


def test_trend_rise_and_fall() -> None:
    window = timedelta(hours=48)
    weights = [at(0, 80.0), at(24 * 60, 81.0), at(47 * 60, 82.0)]
    assert trend_reached(weights, 2.0, window) == weights[-1]
    assert trend_reached(weights[:2], 2.0, window) is None
    late = [at(0, 80.0), at(49 * 60, 82.5)]  # the low reading is outside 48 h
    assert trend_reached(late, 2.0, window) is None
    assert trend_reached([at(0, 100.0), at(60, 97.0)], -3.0, window) == at(60, 97.0)


def test_no_data() -> None:
    six_hours = timedelta(hours=6)
    assert no_data(None, T0, T0 + six_hours, six_hours)
    assert not no_data(T0 + timedelta(hours=1), T0, T0 + six_hours, six_hours)


def rule(kind: str, subject: str, **parts: object) -> dict[str, object]:
    extension = []
    for url, value in parts.items():
        key = {"code": "valueCoding", "comparator": "valueCode", "value": "valueDecimal",
               "duration": "valueDuration", "priority": "valueCode",
               "title": "valueString"}[url]
        extension.append({"url": url, key: value})
    return {"resourceType": "Basic", "code": {"coding": [{"system": RULE_CODE, "code": kind}]},
            "subject": {"reference": subject}, "extension": [{"url": RULE_EXT,
                                                              "extension": extension}]}


SPO2_RULE = dict(code={"system": "http://loinc.org", "code": "59408-5"}, comparator="<",
                 value=90, duration={"value": 5, "system": "http://unitsofmeasure.org",
                                     "code": "min"}, priority="PH",
                 title="SpO2 below 90 % for 5 minutes")


def test_rule_parsing_errors() -> None:
    with pytest.raises(RuleError):
        rule_from_basic(rule("threshold", "Patient/1", code={"code": "59408-5"}))
    with pytest.raises(RuleError):
        rule_from_basic(rule("trend", "Patient/1", code={"code": "29463-7"}, value=2))
    assert rule_from_basic({"resourceType": "Basic", "code": {"text": "x"}}) is None
    parsed = rule_from_basic({**rule("threshold", "Patient/1", **SPO2_RULE), "id": "r1"})
    assert parsed is not None and parsed.code == "2708-6"  # both SpO2 codes are one
    assert parsed.duration == timedelta(minutes=5)


def rule_flags(ward: Ward, code: str) -> list[dict[str, object]]:
    return [f for f in ward.search("Flag", subject=f"Patient/{ward.patient_id}")
            if f["code"]["coding"][0]["code"] == code]  # type: ignore[index]


def test_threshold_rule_end_to_end(ward: Ward) -> None:
    ward.service.create(SYSTEM, "Basic", rule("threshold", f"Patient/{ward.patient_id}",
                                              **SPO2_RULE))
    ward.settle()
    gateway = ward.monitoring.gateway
    gateway.ingest(ward.device_id, [{"t": minutes_ago(m), "spo2": 88} for m in (9, 8, 7, 6)],
                   ward.secret)
    ward.settle()
    assert rule_flags(ward, "rule-threshold") == []  # 3 minutes below 90 so far
    gateway.ingest(ward.device_id, [{"t": minutes_ago(m), "spo2": 87} for m in (5, 4)],
                   ward.secret)
    ward.settle()
    [flag] = rule_flags(ward, "rule-threshold")
    assert flag["code"]["text"] == "SpO2 below 90 % for 5 minutes"  # type: ignore[index]
    gateway.ingest(ward.device_id, {"t": minutes_ago(3), "spo2": 86}, ward.secret)
    ward.settle()
    assert len(rule_flags(ward, "rule-threshold")) == 1  # no duplicate while open


def test_care_plan_trend_rule(ward: Ward) -> None:
    plan = ward.service.create(SYSTEM, "CarePlan", {
        "resourceType": "CarePlan", "status": "active", "intent": "plan",
        "subject": {"reference": f"Patient/{ward.patient_id}"}}).version.id
    ward.service.create(SYSTEM, "Basic", rule(
        "trend", f"CarePlan/{plan}", code={"system": "http://loinc.org", "code": "29463-7"},
        value=2, duration={"value": 48, "system": "http://unitsofmeasure.org", "code": "h"},
        title="Weight up 2 kg in 48 h"))
    ward.settle()
    ward.monitoring.gateway.ingest(ward.device_id, [
        {"t": minutes_ago(47 * 60), "weight": 80.0},
        {"t": minutes_ago(24 * 60), "weight": 81.0}], ward.secret)
    ward.settle()
    assert rule_flags(ward, "rule-trend") == []
    ward.monitoring.gateway.ingest(ward.device_id, {"t": minutes_ago(1), "weight": 82.1},
                                   ward.secret)
    ward.settle()
    assert len(rule_flags(ward, "rule-trend")) == 1


def test_no_data_rule(ward: Ward) -> None:
    ward.service.create(SYSTEM, "Basic", rule(
        "no-data", f"Patient/{ward.patient_id}",
        code={"system": "http://loinc.org", "code": "29463-7"},
        duration={"value": 1, "system": "http://unitsofmeasure.org", "code": "s"},
        title="No weight today"))
    ward.settle()
    time.sleep(1.1)
    ward.monitoring.engine.sweep()
    ward.settle()
    assert len(rule_flags(ward, "rule-no-data")) == 1


def test_rules_are_edited_through_the_fhir_api(ward: Ward) -> None:
    """Rules are FHIR Basic resources on the REST API: a rule the engine could not run is
    refused with 422 naming the element; a PUT that changes a threshold takes effect."""
    import http.client

    import orjson
    from tests.monitoring.support import LiveServer

    def call(method: str, path: str, body: object) -> tuple[int, dict[str, object]]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request(method, path, orjson.dumps(body),
                     {"Content-Type": "application/fhir+json"})
        reply = conn.getresponse()
        data = reply.read()
        conn.close()
        return reply.status, orjson.loads(data) if data else {}

    with LiveServer(ward.monitoring) as server:
        bad = rule("threshold", f"Patient/{ward.patient_id}",
                   **{**SPO2_RULE, "comparator": "~"})
        status, outcome = call("POST", "/fhir/Basic", bad)
        assert status == 422
        [issue] = outcome["issue"]  # type: ignore[misc]
        assert issue["code"] == "business-rule"
        assert issue["expression"] == ["Basic.extension[0].extension[1].valueCode"]
        assert "comparator" in issue["diagnostics"]
        status, outcome = call("POST", "/fhir/Basic", rule(
            "threshold", f"Patient/{ward.patient_id}", **{**SPO2_RULE, "value": 80}))
        assert status == 201
        ward.settle()
        ward.monitoring.gateway.ingest(ward.device_id, [
            {"t": minutes_ago(m), "spo2": 88} for m in (12, 10, 8, 6)], ward.secret)
        ward.settle()
        assert rule_flags(ward, "rule-threshold") == []  # 88 is not below 80
        edited = {**outcome, **rule("threshold", f"Patient/{ward.patient_id}", **SPO2_RULE)}
        status, _ = call("PUT", f"/fhir/Basic/{outcome['id']}", edited)
        assert status == 200
        ward.settle()
        ward.monitoring.gateway.ingest(ward.device_id, {"t": minutes_ago(4), "spo2": 88},
                                       ward.secret)
        ward.settle()
        [flag] = rule_flags(ward, "rule-threshold")  # 88 < 90 for 8 minutes now
        assert flag["status"] == "active"
