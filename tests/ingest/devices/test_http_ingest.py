"""POST /devices/{deviceId}/observations and the monitoring endpoints over HTTP."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient
from tests.monitoring.support import Ward, minutes_ago, wait_for

from carebridge.api import create_api


@pytest.fixture
def http(ward: Ward) -> Iterator[TestClient]:
    app = create_api(ward.service, monitoring=ward.monitoring)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_post_readings_with_bearer_then_duplicate(ward: Ward, http: TestClient) -> None:
    url = f"/devices/{ward.device_id}/observations"
    batch = [{"t": minutes_ago(2), "hr": 71, "rr": 15}, {"t": minutes_ago(1), "hr": 73}]
    reply = http.post(url, json=batch, headers={"Authorization": f"Bearer {ward.secret}"})
    assert reply.status_code == 201
    bundle = reply.json()
    assert bundle["type"] == "batch-response"
    assert [e["response"]["status"] for e in bundle["entry"]] == ["201 Created"] * 3
    again = http.post(url, json=batch, headers={"Authorization": f"Bearer {ward.secret}"})
    assert again.status_code == 200
    assert [e["response"]["status"] for e in again.json()["entry"]] == ["200 OK"] * 3
    location = bundle["entry"][0]["response"]["location"].split("/_history")[0]
    stored = http.get(f"/fhir/{location}").json()
    assert stored["device"] == {"reference": f"Device/{ward.device_id}"}


def test_basic_auth_and_refusals(ward: Ward, http: TestClient) -> None:
    url = f"/devices/{ward.device_id}/observations"
    basic = base64.b64encode(f"{ward.device_id}:{ward.secret}".encode()).decode()
    ok = http.post(url, json={"t": minutes_ago(1), "temp": 36.9},
                   headers={"Authorization": f"Basic {basic}"})
    assert ok.status_code == 201
    missing = http.post(url, json={"t": minutes_ago(1), "temp": 36.9})
    assert missing.status_code == 401
    assert missing.json()["resourceType"] == "OperationOutcome"
    bad = http.post(url, json={"t": minutes_ago(1), "temp": 366},
                    headers={"Authorization": f"Bearer {ward.secret}"})
    assert bad.status_code == 422
    issue = bad.json()["issue"][0]
    assert issue["expression"] == ["[0].valueQuantity.value"]
    assert "plausible" in issue["diagnostics"]
    garbage = http.post(url, content=b"{not json",
                        headers={"Authorization": f"Bearer {ward.secret}"})
    assert garbage.status_code == 400


def test_credential_alerts_and_fleet_endpoints(ward: Ward, http: TestClient) -> None:
    issued = http.post(f"/monitoring/devices/{ward.device_id}/$credential")
    assert issued.status_code == 201
    secret = issued.json()["parameter"][1]["valueString"]
    url = f"/devices/{ward.device_id}/observations"
    old = http.post(url, json={"t": minutes_ago(1), "hr": 70},
                    headers={"Authorization": f"Bearer {ward.secret}"})
    assert old.status_code == 401  # the new secret replaced the old one
    sent = http.post(url, json={"t": minutes_ago(1), "hr": 150, "rr": 28},
                     headers={"Authorization": f"Bearer {secret}"})
    assert sent.status_code == 201
    # The app's lifespan runs the engine thread: wait for it (within a second) to alert.
    [entry] = wait_for(lambda: http.get("/monitoring/alerts").json().get("entry"))  # type: ignore[misc]
    flag_id = entry["resource"]["id"]
    assert entry["resource"]["code"]["coding"][0]["code"] == "news2-medium"  # 3 + 3 = 6
    ack = http.post(f"/monitoring/alerts/{flag_id}/$acknowledge")
    assert ack.status_code == 200
    resolved = http.post(f"/monitoring/alerts/{flag_id}/$resolve")
    assert resolved.json()["status"] == "inactive"
    assert http.get("/monitoring/alerts").json()["total"] == 0
    assert http.post("/monitoring/alerts/nope/$resolve").status_code == 404
    heartbeat = http.post(f"/devices/{ward.device_id}/heartbeat", json={"battery": 55},
                          headers={"Authorization": f"Bearer {secret}"})
    assert heartbeat.status_code == 204
    fleet = http.get("/monitoring/devices", params={"since": "2020-01-01"}).json()
    [device] = fleet["devices"]
    assert device["device"] == f"Device/{ward.device_id}" and device["battery"] == 55.0
    assert device["status"] == "online"
