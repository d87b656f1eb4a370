"""Fixtures for the monitoring tests: a service whose repository fills the outbox, the
monitoring runtime over it (threads started only where a test asks), a patient and its device."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from tests.monitoring.support import Ward

from carebridge.events.outbox import OutboxRepository
from carebridge.monitoring.runtime import Monitoring, MonitoringSettings
from carebridge.security.policy import SYSTEM
from carebridge.services.resources import ResourceService
from carebridge.storage import open_repository


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
