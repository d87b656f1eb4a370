"""Everything monitoring runs, wired once: the device gateway, the engine, the alert stream,
the Subscription delivery worker and (with ``--mqtt``) the MQTT ingest workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from carebridge.events.delivery import DeliveryWorker
from carebridge.ingest.devices.credentials import DeviceCredentials
from carebridge.ingest.devices.gateway import DeviceGateway
from carebridge.monitoring.alerts import AlertDesk
from carebridge.monitoring.engine import EngineSettings, MonitoringEngine
from carebridge.monitoring.stream import AlertStream
from carebridge.services.resources import ResourceService


@dataclass(frozen=True, slots=True)
class MonitoringSettings:
    mqtt_url: str | None = None
    mqtt_workers: int = 1
    news2_window: timedelta = timedelta(hours=1)
    offline_after: timedelta = timedelta(minutes=5)
    sweep_every: float = 5.0
    require_device_credentials: bool = True
    engine_batch: int = 2000


@dataclass
class Monitoring:
    service: ResourceService
    settings: MonitoringSettings = field(default_factory=MonitoringSettings)

    def __post_init__(self) -> None:
        s = self.settings
        self.credentials = DeviceCredentials(self.service.repository)
        self.gateway = DeviceGateway(self.service, self.credentials,
                                     require_credentials=s.require_device_credentials)
        self.engine = MonitoringEngine(self.service, EngineSettings(
            window=s.news2_window, batch=s.engine_batch, offline_after=s.offline_after,
            sweep_every=s.sweep_every))
        self.delivery = DeliveryWorker(self.service.repository, self.service.clock)
        # Woken by the engine when it queued notifications (other processes' are found by
        # the worker's poll), not after every commit.
        self.engine.on_queued = self.delivery.wake
        self.stream = AlertStream(self.service)
        self.desk = AlertDesk(self.service)
        self._mqtt: list[object] = []

    def start(self) -> None:
        self.gateway.start()
        self.engine.start()
        self.delivery.start()
        if self.settings.mqtt_url:
            from carebridge.ingest.devices.mqtt import MqttIngest, client_prefix

            prefix = client_prefix()
            for index in range(self.settings.mqtt_workers):
                worker = MqttIngest(self.gateway, self.settings.mqtt_url,
                                    client_id=f"{prefix}-{index}")
                worker.start()
                self._mqtt.append(worker)

    def stop(self) -> None:
        from carebridge.ingest.devices.mqtt import MqttIngest

        for worker in self._mqtt:
            assert isinstance(worker, MqttIngest)
            worker.stop()
        self._mqtt.clear()
        self.gateway.stop()
        self.engine.stop()
        self.delivery.stop()
