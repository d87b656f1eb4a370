"""What ``carebridge simulate`` and ``carebridge demo`` run: provision simulated patients in
the database, stream their readings to a running server, and summarise NEWS2 and alerts."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from carebridge.events.outbox import OutboxRepository
from carebridge.fhir.errors import FhirError
from carebridge.ingest.devices.credentials import DeviceCredentials
from carebridge.monitoring import simulator
from carebridge.monitoring.codes import NEWS2_TOTAL, SNOMED
from carebridge.security.crypto import open_data_repository
from carebridge.security.policy import SYSTEM
from carebridge.services.resources import ResourceService
from carebridge.services.search import SearchService


class DirectSender:
    """Readings through the device gateway in this process (no network, same checks): what
    ``demo`` uses, so the demo needs no broker and no user token."""

    def __init__(self, database_url: str) -> None:
        from carebridge.ingest.devices.gateway import DeviceGateway

        self.repository = OutboxRepository(open_data_repository(database_url))
        service = ResourceService(self.repository)
        self.gateway = DeviceGateway(service, DeviceCredentials(self.repository))

    def send(self, patient: simulator.SimulatedPatient, payload: Any) -> int:
        try:
            self.gateway.ingest(patient.device_id, payload, patient.secret)
        except FhirError as exc:
            return exc.status
        return 201

    def close(self) -> None:
        self.gateway.stop()
        self.repository.close()


@dataclass
class Simulation:
    database_url: str
    server_url: str | None = "http://127.0.0.1:8080"
    mqtt_url: str | None = None
    patients: int = 10
    rate: float = 20.0  # readings per second
    duration: float = 600.0
    onset: float = 20.0
    ramp: float = 60.0

    def provision(self) -> simulator.Population:
        repository = OutboxRepository(open_data_repository(self.database_url))
        try:
            service = ResourceService(repository)
            credentials = DeviceCredentials(repository)
            return simulator.provision(service, credentials.issue, self.patients)
        finally:
            repository.close()

    def sender(self) -> simulator.HttpSender | simulator.MqttSender | DirectSender:
        if self.server_url is None and self.mqtt_url is None:
            return DirectSender(self.database_url)
        if self.mqtt_url:
            return simulator.MqttSender(self.mqtt_url)
        assert self.server_url is not None
        return simulator.HttpSender(self.server_url)

    def stream(self, population: simulator.Population,
               on_send: Callable[[simulator.SimulatedPatient, Any, int], None] | None = None,
               ) -> int:
        sender = self.sender()
        try:
            return simulator.run(population, sender, self.rate, self.duration, onset=self.onset,
                                 ramp=self.ramp, on_send=on_send)
        finally:
            sender.close()


def wait_for_server(url: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/fhir/metadata", timeout=2):
                return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    return False


def ward_summary(database_url: str, population: simulator.Population) -> list[dict[str, Any]]:
    """Per simulated patient: scenario, latest NEWS2 and band, open alerts."""
    repository = open_data_repository(database_url)
    try:
        service = ResourceService(repository)
        search = SearchService(service)
        rows = []
        for p in population.patients:
            scores = search.search(SYSTEM, "Observation", [
                ("subject", f"Patient/{p.patient_id}"), ("code", f"{SNOMED}|{NEWS2_TOTAL}"),
                ("_sort", "-_lastUpdated"), ("_count", "1")]).matches
            flags = search.search(SYSTEM, "Flag", [("subject", f"Patient/{p.patient_id}"),
                                                  ("_count", "50")]).matches
            score = orjson.loads(scores[0].body) if scores else None
            open_flags = [orjson.loads(f.body) for f in flags]
            open_flags = [f for f in open_flags if f.get("status") == "active"]
            rows.append({
                "patient": p.patient_id, "scenario": p.scenario, "flaws": ",".join(p.flaws),
                "news2": score.get("valueInteger") if score else None,
                "band": score["interpretation"][0]["coding"][0]["code"] if score else None,
                "alerts": "; ".join(f["code"]["text"] for f in open_flags),
            })
        return rows
    finally:
        repository.close()


def start_in_background(simulation: Simulation, report: Callable[[list[dict[str, Any]]], None],
                        every: float = 10.0) -> threading.Thread:
    """For ``demo``: wait for the server, provision, stream, and report the ward regularly."""

    def work() -> None:
        if simulation.server_url is not None and not wait_for_server(simulation.server_url):
            return
        population = simulation.provision()
        streamer = threading.Thread(target=simulation.stream, args=(population,), daemon=True)
        streamer.start()
        while streamer.is_alive():
            streamer.join(every)
            report(ward_summary(simulation.database_url, population))

    thread = threading.Thread(target=work, name="demo-simulator", daemon=True)
    thread.start()
    return thread
