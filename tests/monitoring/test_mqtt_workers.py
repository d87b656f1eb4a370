"""``carebridge serve --mqtt-workers N`` / ``carebridge mqtt-worker``: more processes that
ingest MQTT readings into the same store (monitoring/workers.py), with a real Mosquitto."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from tests.monitoring.support import wait_for

from carebridge.ingest.devices.credentials import DeviceCredentials
from carebridge.security.audit import verify_ledger
from carebridge.security.authority import Authority
from carebridge.security.crypto import open_data_repository
from carebridge.security.policy import SYSTEM
from carebridge.services.resources import ResourceService
from carebridge.services.search import SearchService
from carebridge.testing import ServerProcess, ThrowawayMosquitto
from carebridge.testing.procfs import alive, child_pids


def _provision(database_url: str) -> tuple[str, str, str]:
    repository = open_data_repository(database_url)
    try:
        service = ResourceService(repository)
        patient = service.create(SYSTEM, "Patient", {"resourceType": "Patient"}).version.id
        device = service.create(SYSTEM, "Device", {
            "resourceType": "Device", "status": "active",
            "patient": {"reference": f"Patient/{patient}"}}).version.id
        secret = DeviceCredentials(repository).issue(device)
    finally:
        repository.close()
    return patient, device, secret


def _search(database_url: str, resource_type: str, **params: str) -> list[dict[str, Any]]:
    repository = open_data_repository(database_url)
    try:
        found = SearchService(ResourceService(repository)).search(
            SYSTEM, resource_type, [*params.items(), ("_count", "200")])
        return [orjson.loads(m.body) for m in found.matches]
    finally:
        repository.close()


def _publish(broker: ThrowawayMosquitto, device: str, secret: str, count: int) -> None:
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5)
    sender.connect(broker.host, broker.port)
    sender.loop_start()
    try:
        start = datetime.now(UTC) - timedelta(minutes=5)
        for n in range(count):
            moment = (start + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            payload = [{"t": moment, "hr": 70 + n, "secret": secret}]
            sender.publish(f"carebridge/devices/{device}/observations", orjson.dumps(payload),
                           qos=1).wait_for_publish(10)
    finally:
        sender.loop_stop()
        sender.disconnect()


def test_a_worker_process_stores_and_audits_mqtt_readings(
        database_url: str, mosquitto_server: ThrowawayMosquitto) -> None:
    patient, device, secret = _provision(database_url)
    env = {**os.environ, "CAREBRIDGE_MQTT_CLIENT_ID": f"worker-test-{uuid.uuid4().hex[:8]}"}
    with subprocess.Popen(
            [sys.executable, "-m", "carebridge", "mqtt-worker", "--database", database_url,
             "--mqtt", mosquitto_server.url, "--index", "0"], env=env,
            stdout=subprocess.PIPE, text=True) as worker:
        try:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "mqtt-worker 0 ready"  # subscribed
            _publish(mosquitto_server, device, secret, 5)
            stored = wait_for(lambda: len(found := _search(
                database_url, "Observation", subject=f"Patient/{patient}",
                code="http://loinc.org|8867-4")) == 5 and found, 30)
            assert {o["device"]["reference"] for o in stored} == {f"Device/{device}"}
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0  # a clean stop: MQTT session ended, ledger flushed
    events = _search(database_url, "AuditEvent", subtype="device-mqtt")
    assert events and all(e["outcome"] == "0" for e in events)
    assert sum(int(d["valueString"]) for e in events for d in e["entity"][0]["detail"]
               if d["type"] == "stored") == 5
    repository = open_data_repository(database_url)
    try:
        assert verify_ledger(repository, Authority.open(repository, "http://x").keys).ok
    finally:
        repository.close()


def test_serve_starts_and_stops_its_mqtt_workers(tmp_path: Path,
                                                 mosquitto_server: ThrowawayMosquitto) -> None:
    database_url = f"sqlite:///{tmp_path}/w.db"
    patient, device, secret = _provision(database_url)
    os.environ.setdefault("CAREBRIDGE_MQTT_CLIENT_ID", f"serve-test-{uuid.uuid4().hex[:8]}")
    with ServerProcess(database_url, extra_args=("--mqtt", mosquitto_server.url,
                                                 "--mqtt-workers", "2")) as server:
        workers = wait_for(lambda: [c for c in child_pids(server.pid) if b"mqtt-worker" in
                                 Path(f"/proc/{c}/cmdline").read_bytes()])
        assert len(workers) == 2  # the server's own MQTT client shares the load with them
        _publish(mosquitto_server, device, secret, 12)
        wait_for(lambda: len(_search(database_url, "Observation", subject=f"Patient/{patient}",
                                  code="http://loinc.org|8867-4")) == 12)
        # scored by the server's engine whichever process stored the readings
        wait_for(lambda: _search(database_url, "Observation", subject=f"Patient/{patient}",
                              code="http://snomed.info/sct|1104051000000101"))
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(
            f"/proc/{pid}/stat").read_bytes().split(b")")[1][:3]  # gone (or a zombie)


def test_mqtt_workers_stop_when_the_server_is_killed(tmp_path: Path,
                                                    mosquitto_server: ThrowawayMosquitto,
                                                    ) -> None:
    """A server killed outright (SIGKILL) does not leave its MQTT ingest workers running."""
    database_url = f"sqlite:///{tmp_path}/o.db"
    os.environ.setdefault("CAREBRIDGE_MQTT_CLIENT_ID", f"serve-test-{uuid.uuid4().hex[:8]}")
    server = ServerProcess(database_url, extra_args=("--mqtt", mosquitto_server.url,
                                                     "--mqtt-workers", "1")).start()
    try:
        [worker] = wait_for(lambda: child_pids(server.pid))
        assert alive(worker)
        os.kill(server.pid, signal.SIGKILL)
        wait_for(lambda: not alive(worker), timeout=20)
    finally:
        server.stop()
