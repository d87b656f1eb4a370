"""Helpers shared by the monitoring tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from carebridge.monitoring.runtime import Monitoring
from carebridge.security.policy import SYSTEM
from carebridge.services.resources import ResourceService


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
