"""Simulated patients and their devices, for the demo, tests and the benchmark.

Each patient has a device that sends a set of vital signs per tick (compact form): heart rate,
respiration rate, SpO2, temperature, blood pressure and body weight. Most are stable with
physiological noise; scripted ones deteriorate after ``onset`` seconds over ``ramp`` seconds:

- ``sepsis``: pulse, respiration rate and temperature climb, systolic pressure falls;
- ``respiratory``: SpO2 falls and respiration rate climbs, then supplemental oxygen starts;
- ``heart-failure``: body weight rises 3 kg (fluid), a trend rule's classic case.

Flaky devices misbehave as real ones do: gaps (silent for a while), battery drain, duplicate
messages and clock skew. Readings go over HTTP (``POST /devices/{id}/observations``) or MQTT.
"""

from __future__ import annotations

import http.client
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from carebridge.monitoring.codes import RULE_CODE, RULE_EXT
from carebridge.security.policy import SYSTEM
from carebridge.services.resources import ResourceService

SCENARIOS = ("stable", "sepsis", "respiratory", "heart-failure")
FLAWS = ("gaps", "battery", "duplicates", "skew")


@dataclass
class SimulatedPatient:
    patient_id: str
    device_id: str
    secret: str
    scenario: str = "stable"
    flaws: tuple[str, ...] = ()
    seed: int = 0
    battery: float = 100.0
    base_weight: float = 78.0
    rng: random.Random = field(default_factory=random.Random)

    def vitals(self, elapsed: float, onset: float, ramp: float) -> dict[str, Any]:
        """One compact reading at ``elapsed`` seconds into the run."""
        x = 0.0 if elapsed < onset else min(1.0, (elapsed - onset) / ramp)
        noise = self.rng.gauss
        hr, rr, spo2, temp, sbp = 72.0, 15.0, 97.0, 36.8, 124.0
        weight = self.base_weight
        reading: dict[str, Any] = {}
        if self.scenario == "sepsis":
            hr, rr, temp = 72 + 58 * x, 15 + 12 * x, 36.8 + 2.6 * x
            sbp, spo2 = 124 - 38 * x, 97 - 4 * x
        elif self.scenario == "respiratory":
            spo2, rr, hr = 97 - 12 * x, 15 + 15 * x, 72 + 25 * x
            if x > 0.6:
                reading["o2flow"] = 4
        elif self.scenario == "heart-failure":
            weight += 3.0 * x
        reading.update({
            "hr": round(hr + noise(0, 1.5)), "rr": round(rr + noise(0, 0.7)),
            "spo2": min(100, round(spo2 + noise(0, 0.6))),
            "temp": round(temp + noise(0, 0.08), 1), "sbp": round(sbp + noise(0, 3)),
            "dbp": round(78 + noise(0, 2)), "weight": round(weight + noise(0, 0.05), 1),
        })
        if "battery" in self.flaws:
            self.battery = max(0.0, self.battery - 0.5)
        reading["battery"] = round(self.battery)
        reading["signal"] = round(-65 + noise(0, 5))
        return reading


@dataclass
class Population:
    patients: list[SimulatedPatient]

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.patients:
            out[p.scenario] = out.get(p.scenario, 0) + 1
        return out


def provision(service: ResourceService, issue_secret: Callable[[str], str], count: int, *,
              scripted: float = 0.3, flaky: float = 0.2, seed: int = 7,
              ward: str = "Virtual ward") -> Population:
    """Create ``count`` patients, each with a bound device and its credential; a share of them
    scripted to deteriorate, a share with flaky devices. Heart-failure patients get the trend
    rule "weight up 2 kg within 48 h"; respiratory ones "SpO2 < 90 % for 1 minute"."""
    rng = random.Random(seed)
    patients = []
    for index in range(count):
        name = {"family": f"Simulated-{index + 1:04d}", "given": ["Pat"]}
        patient_id = service.create(SYSTEM, "Patient", {
            "resourceType": "Patient", "name": [name]}).version.id
        device_id = service.create(SYSTEM, "Device", {
            "resourceType": "Device", "status": "active",
            "deviceName": [{"name": f"Vitals patch {index + 1:04d}", "type": "user-friendly-name"}],
            "patient": {"reference": f"Patient/{patient_id}"},
            "location": {"display": ward}}).version.id
        scenario = "stable"
        if rng.random() < scripted:
            scenario = SCENARIOS[1 + index % 3]
        flaws = tuple(f for f in FLAWS if rng.random() < flaky / 2) if rng.random() < flaky else ()
        patient = SimulatedPatient(patient_id, device_id, issue_secret(device_id), scenario,
                                   flaws, seed + index, rng=random.Random(seed + index))
        _rules_for(service, patient)
        patients.append(patient)
    return Population(patients)


def _duration(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}


def _rules_for(service: ResourceService, patient: SimulatedPatient) -> None:
    def basic(kind: str, code: str, title: str, **parts: Any) -> dict[str, Any]:
        ext = [{"url": "code", "valueCoding": {"system": "http://loinc.org", "code": code}},
               {"url": "title", "valueString": title}]
        ext += [{"url": k, v[0]: v[1]} for k, v in parts.items()]
        return {"resourceType": "Basic", "code": {"coding": [{"system": RULE_CODE, "code": kind}]},
                "subject": {"reference": f"Patient/{patient.patient_id}"},
                "extension": [{"url": RULE_EXT, "extension": ext}]}

    if patient.scenario == "heart-failure":
        service.create(SYSTEM, "Basic", basic(
            "trend", "29463-7", "Weight up 2 kg within 48 hours (heart failure)",
            value=("valueDecimal", 2), duration=("valueDuration", _duration(48, "h")),
            priority=("valueCode", "PM")))
    if patient.scenario == "respiratory":
        service.create(SYSTEM, "Basic", basic(
            "threshold", "59408-5", "SpO2 below 90 % for 1 minute", comparator=("valueCode", "<"),
            value=("valueDecimal", 90), duration=("valueDuration", _duration(1, "min")),
            priority=("valueCode", "PH")))


class HttpSender:
    """POSTs compact readings to ``/devices/{id}/observations`` over one keep-alive connection."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            self._local.conn = conn
        return conn

    def send(self, patient: SimulatedPatient, payload: Any) -> int:
        body = orjson.dumps(payload)
        headers = {"Authorization": f"Bearer {patient.secret}",
                   "Content-Type": "application/json"}
        for attempt in range(2):
            conn = self._conn()
            try:
                conn.request("POST", f"/devices/{patient.device_id}/observations", body, headers)
                reply = conn.getresponse()
                reply.read()
                return reply.status
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        return 0

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


class MqttSender:
    def __init__(self, url: str, client_id: str = "carebridge-simulator") -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from carebridge.ingest.devices.mqtt import broker_address

        host, port = broker_address(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(host, port)
        self.client.loop_start()
        self._last: mqtt.MQTTMessageInfo | None = None

    def send(self, patient: SimulatedPatient, payload: Any) -> int:
        if isinstance(payload, dict):
            payload = {**payload, "secret": patient.secret}
        elif isinstance(payload, list) and payload:
            payload = [{**payload[0], "secret": patient.secret}, *payload[1:]]
        self._last = self.client.publish(f"carebridge/devices/{patient.device_id}/observations",
                                         orjson.dumps(payload), qos=1)
        return 202

    def close(self) -> None:
        """Disconnect once the broker has acknowledged everything published."""
        if self._last is not None:
            self._last.wait_for_publish(60)
        deadline = time.monotonic() + 60
        while self.client.want_write() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.client.disconnect()
        self.client.loop_stop()


READINGS_PER_SET = 7  # hr, rr, spo2, temp, bp panel, weight, (o2 sometimes)


Tick = tuple[float, SimulatedPatient, Any]


def ticks(population: Population, rate: float, duration: float, *, onset: float = 20.0,
          ramp: float = 60.0, start: datetime | None = None) -> Iterator[Tick]:
    """(when to send, patient, payload) at ``rate`` readings/s, round-robin over patients."""
    sets_per_second = max(rate / READINGS_PER_SET, 0.01)
    origin = start or datetime.now(UTC)
    n, index = 0, 0
    while n / sets_per_second < duration:
        elapsed = n / sets_per_second
        patient = population.patients[index % len(population.patients)]
        index += 1
        n += 1
        if "gaps" in patient.flaws and int(elapsed / 30) % 4 == 3:
            continue  # silent one period in four
        moment = origin + timedelta(seconds=elapsed)
        if "skew" in patient.flaws:
            moment += timedelta(minutes=15 if math.sin(elapsed) > 0.9 else 2)
        reading = {"t": moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                   **patient.vitals(elapsed, onset, ramp)}
        yield elapsed, patient, reading
        if "duplicates" in patient.flaws and n % 5 == 0:
            yield elapsed, patient, reading


class Sender(Protocol):
    def send(self, patient: SimulatedPatient, payload: Any) -> int: ...

    def close(self) -> None: ...


def run(population: Population, sender: Sender, rate: float, duration: float,
        *, onset: float = 20.0, ramp: float = 60.0,
        on_send: Callable[[SimulatedPatient, Any, int], None] | None = None) -> int:
    """Send readings in real time; returns how many payloads were sent."""
    began = time.monotonic()
    sent = 0
    for elapsed, patient, reading in ticks(population, rate, duration, onset=onset, ramp=ramp):
        delay = began + elapsed - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        status = sender.send(patient, reading)
        sent += 1
        if on_send is not None:
            on_send(patient, reading, status)
    return sent
