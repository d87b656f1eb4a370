"""MQTT ingest against a real Mosquitto broker with real paho clients."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from tests.monitoring.support import Ward, minutes_ago, wait_for

from carebridge.ingest.devices.mqtt import MqttIngest
from carebridge.testing import ThrowawayMosquitto


class Device:
    """A device's MQTT client (MQTT 5, QoS 1)."""

    def __init__(self, broker: ThrowawayMosquitto, name: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name,
                                  protocol=mqtt.MQTTv5)
        self.rejections: queue.Queue[dict[str, object]] = queue.Queue()
        self.client.on_message = lambda c, u, m: self.rejections.put(orjson.loads(m.payload))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, device_id: str, payload: object, secret: str | None = None) -> None:
        props = None
        if secret is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = ("authorization", f"Bearer {secret}")
        info = self.client.publish(f"carebridge/devices/{device_id}/observations",
                                   orjson.dumps(payload), qos=1, properties=props)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def workers(ward: Ward, mosquitto_server: ThrowawayMosquitto) -> Iterator[list[MqttIngest]]:
    started = [MqttIngest(ward.monitoring.gateway, mosquitto_server.url,
                          client_id=f"test-ingest-{ward.device_id[:8]}-{n}") for n in range(2)]
    for worker in started:
        worker.start()
        assert worker.connected.wait(10)
    yield started
    for worker in started:
        worker.stop()


@pytest.fixture
def device(mosquitto_server: ThrowawayMosquitto) -> Iterator[Device]:
    client = Device(mosquitto_server, "device-under-test")
    yield client
    client.close()


def count(ward: Ward, code: str) -> int:
    return len(ward.search("Observation", code=code, subject=f"Patient/{ward.patient_id}"))


def test_readings_over_mqtt_shared_by_workers(ward: Ward, workers: list[MqttIngest],
                                              device: Device) -> None:
    readings = [{"t": minutes_ago(60 - i / 2), "hr": 60 + i % 30} for i in range(60)]
    for reading in readings:
        device.publish(ward.device_id, reading, ward.secret)
    wait_for(lambda: count(ward, "8867-4") == 60)
    assert all(worker.received > 0 for worker in workers)  # the broker shared the load
    assert sum(worker.received for worker in workers) == 60


def test_redelivered_and_repeated_messages_store_once(ward: Ward, workers: list[MqttIngest],
                                                      device: Device) -> None:
    reading = {"t": minutes_ago(1), "rr": 19, "secret": ward.secret}  # secret in compact form
    for _ in range(5):
        device.publish(ward.device_id, reading)
    wait_for(lambda: sum(w.received for w in workers) == 5)
    wait_for(lambda: count(ward, "9279-1") == 1)
    assert count(ward, "9279-1") == 1


def test_bad_messages_are_rejected_with_reason(ward: Ward, workers: list[MqttIngest],
                                               device: Device) -> None:
    device.client.subscribe(f"carebridge/devices/{ward.device_id}/rejections", qos=1)
    device.publish(ward.device_id, {"t": minutes_ago(1), "spo2": 97}, "wrong-secret")
    rejection = device.rejections.get(timeout=10)
    assert rejection["status"] == 401
    device.publish(ward.device_id, {"t": minutes_ago(1), "spo2": 197}, ward.secret)
    rejection = device.rejections.get(timeout=10)
    assert rejection["status"] == 422
    issue = rejection["outcome"]["issue"][0]  # type: ignore[index]
    assert issue["expression"] == ["[0].valueQuantity.value"]
    assert orjson.loads(rejection["payload"])["spo2"] == 197  # type: ignore[arg-type]
    assert count(ward, "59408-5") == 0
