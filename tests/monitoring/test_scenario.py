"""End to end: simulated patients over real MQTT to a real server; alerts arrive on the SSE
stream, none missed and none duplicated."""

from __future__ import annotations

import http.client
import queue
import random
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from tests.monitoring.support import LiveServer, Ward, wait_for

from carebridge.monitoring import simulator
from carebridge.monitoring.runtime import MonitoringSettings
from carebridge.testing import ThrowawayMosquitto


class SseClient:
    """Reads ``/monitoring/alerts/stream`` on a real socket; events go to a queue."""

    def __init__(self, port: int) -> None:
        self.events: queue.Queue[tuple[float, dict[str, object]]] = queue.Queue()
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.request("GET", "/monitoring/alerts/stream")
        self.sock = self.conn.sock
        self.reply = self.conn.getresponse()
        assert self.reply.status == 200
        assert self.reply.getheader("content-type", "").startswith("text/event-stream")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        kind = ""
        try:
            while True:
                line = self.reply.readline()
                if not line:
                    return
                if line.startswith(b"event: "):
                    kind = line[7:].strip().decode()
                elif line.startswith(b"data: ") and kind == "alert":
                    self.events.put((time.monotonic(), orjson.loads(line[6:])))
        except (OSError, ValueError, AttributeError):
            return

    def close(self) -> None:
        if self.sock is not None:  # wakes the reader thread blocked in recv
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        self.conn.close()


def _subject(flag: dict[str, object]) -> str:
    return str(flag["subject"]["reference"]).removeprefix("Patient/")  # type: ignore[index]


@pytest.mark.slow
def test_deterioration_to_alert_on_the_stream(ward: Ward,
                                              mosquitto_server: ThrowawayMosquitto) -> None:
    ward.monitoring.settings = MonitoringSettings(mqtt_url=mosquitto_server.url)
    ward.monitoring.engine.settings.offline_after = timedelta(minutes=5)  # no silence alerts
    patients = [simulator.SimulatedPatient(ward.patient_id, ward.device_id, ward.secret,
                                           "sepsis", rng=random.Random(1))]
    for scenario in ("respiratory", "stable", "stable", "sepsis"):
        patient_id = ward.add_patient()
        device_id, secret = ward.add_device(patient_id)
        patients.append(simulator.SimulatedPatient(patient_id, device_id, secret, scenario,
                                                   rng=random.Random(len(patients))))
    deteriorating = {p.patient_id for p in patients if p.scenario != "stable"}
    with LiveServer(ward.monitoring) as server:
        sse = SseClient(server.port)
        sender = simulator.MqttSender(mosquitto_server.url, "scenario-devices")
        started = time.monotonic()
        sent = simulator.run(simulator.Population(patients), sender, rate=140, duration=6,
                             onset=1, ramp=3)
        sender.close()
        assert sent > 100
        seen: dict[str, list[dict[str, object]]] = {}

        def all_high() -> bool:
            while not sse.events.empty():
                _, flag = sse.events.get()
                seen.setdefault(_subject(flag), []).append(flag)
            return deteriorating <= {p for p, flags in seen.items()
                                     if any(_band(f) in ("news2-high", "rule-threshold")
                                            for f in flags)}

        wait_for(all_high, timeout=20)
        assert time.monotonic() - started < 30
        sse.close()
    # Nobody stable was alerted; each deteriorating patient has exactly one open NEWS2 alert.
    assert set(seen) <= deteriorating
    open_news2 = [f for f in ward.search("Flag", _count="500")
                  if f["status"] == "active" and str(f["code"]["coding"][0]["code"])  # type: ignore[index]
                  .startswith("news2")]
    per_patient = [_subject(f) for f in open_news2]
    assert sorted(per_patient) == sorted(set(per_patient))  # no duplicate open alerts
    assert set(per_patient) <= deteriorating
    septic = {p.patient_id for p in patients if p.scenario == "sepsis"}
    assert septic <= set(per_patient)  # no missed alert


def _band(flag: dict[str, object]) -> str:
    return str(flag["code"]["coding"][0]["code"])  # type: ignore[index]


def test_stream_starts_with_open_alerts(ward: Ward) -> None:
    ward.monitoring.gateway.ingest(ward.device_id, {
        "t": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"), "hr": 150, "rr": 30},
        ward.secret)
    ward.settle()
    with LiveServer(ward.monitoring) as server:
        sse = SseClient(server.port)
        _, flag = sse.events.get(timeout=10)
        assert _subject(flag) == ward.patient_id and _band(flag) == "news2-medium"
        sse.close()
