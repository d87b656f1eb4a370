"""Helpers shared by the monitoring tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from carebridge.events.outbox import OutboxRepository
from carebridge.monitoring.runtime import Monitoring, MonitoringSettings
from carebridge.security.policy import SYSTEM
from carebridge.services.resources import ResourceService
from carebridge.storage import open_repository


@dataclass
class Ward:
    monitoring: Monitoring
    service: ResourceService
    patient_id: str
    device_id: str
    secret: str

    def add_device(self, patient_id: str | None = None, ward: str = "Ward 7") -> tuple[str, str]:
        device = {"resourceType": "Device", "status": "active",
                  "patient": {"reference": f"Patient/{patient_id or self.patient_id}"},
                  "location": {"display": ward}}
        device_id = self.service.create(SYSTEM, "Device", device).version.id
        return device_id, self.monitoring.credentials.issue(device_id)

    def add_patient(self) -> str:
        return self.service.create(SYSTEM, "Patient", {"resourceType": "Patient"}).version.id

    def settle(self) -> None:
        """Run the engine until the outbox is empty (what its thread does when woken)."""
        while self.monitoring.engine.process_once():
            pass

    def search(self, resource_type: str, **params: str) -> list[dict[str, object]]:
        from carebridge.services.search import SearchService

        found = SearchService(self.service).search(
            SYSTEM, resource_type, [*params.items(), ("_count", "500")])
        return [orjson.loads(m.body) for m in found.matches]


def minutes_ago(minutes: float) -> str:
    moment = datetime.now(UTC) - timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class LiveServer:
    """The ASGI app with monitoring on a real uvicorn server in a thread (real sockets)."""

    def __init__(self, monitoring: Monitoring) -> None:
        import socket

        import uvicorn

        from carebridge.api import create_api

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))  # the port is ours: no race for a free one
        self.port = int(self.socket.getsockname()[1])
        app = create_api(monitoring.service, monitoring=monitoring)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.socket.close()


def wait_for(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def ward(database_url: str) -> Iterator[Ward]:
    repository = OutboxRepository(open_repository(database_url))
    service = ResourceService(repository)
    monitoring = Monitoring(service, MonitoringSettings(offline_after=timedelta(seconds=1)))
    patient_id = service.create(SYSTEM, "Patient", {"resourceType": "Patient"}).version.id
    w = Ward(monitoring, service, patient_id, "", "")
    w.device_id, w.secret = w.add_device()
    w.settle()
    try:
        yield w
    finally:
        monitoring.stop()
        repository.close()
