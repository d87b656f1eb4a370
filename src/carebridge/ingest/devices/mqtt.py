"""MQTT ingest worker (paho-mqtt, MQTT 5, QoS 1).

Topics (``{deviceId}`` is the Device's FHIR id)::

    carebridge/devices/{deviceId}/observations   an Observation, a Bundle of them, or compact JSON
    carebridge/devices/{deviceId}/heartbeat      {"battery": 80, "signal": -70} (both optional)
    carebridge/devices/{deviceId}/rejections     published by us: why a message was refused

Workers subscribe through the shared subscription ``$share/carebridge/...`` so the broker
spreads messages over all of them. The PUBACK of a message is sent (paho ``manual_ack``) only
after the gateway's commit that stored its readings; a worker that dies before that leaves
the message unacknowledged and the broker delivers it again, which the gateway's durable
dedup makes harmless. A refused message is acknowledged (sending it again cannot help) and
its reason published on the rejections topic, with the original payload.

Brokers bound the messages they queue per subscriber (Mosquitto ``max_queued_messages``,
default 1000, beyond which QoS 1 messages are dropped); size it for the bursts expected
while workers are busy or restarting (0 = unbounded).

Each worker's client id must be stable across restarts (its session is resumed) and unique
among live workers: ``carebridge-{hostname}-{n}`` by default, ``CAREBRIDGE_MQTT_CLIENT_ID``
to choose the prefix (e.g. when several servers share a host).

The shared-subscription group is ``carebridge`` unless ``CAREBRIDGE_MQTT_GROUP`` names
another: deployments on one broker with different groups each receive every reading (say,
a staging server beside production). A worker that stopped without ending its session stays
in its group until the session expires (60 s) and the broker queues its share for it, which
a restart with the same client id takes up; a server started with a new client id meanwhile
(as tests do) does not.

The device credential travels as an MQTT 5 user property ``authorization: Bearer <secret>``
or, for the compact form, as a ``"secret"`` member of the (first) reading.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from carebridge.fhir.errors import BadRequest, FhirError
from carebridge.ingest.devices.gateway import DeviceGateway, IngestResult, PreparedReadings

log = logging.getLogger(__name__)

GROUP = "carebridge"  # default shared-subscription group (CAREBRIDGE_MQTT_GROUP)
OBSERVATIONS = "carebridge/devices/+/observations"
HEARTBEAT = "carebridge/devices/+/heartbeat"


def client_prefix() -> str:
    """The prefix of this host's worker client ids (see the module doc)."""
    return os.environ.get("CAREBRIDGE_MQTT_CLIENT_ID") or f"carebridge-{socket.gethostname()}"


def group_name() -> str:
    """The shared-subscription group of this deployment's workers (see the module doc)."""
    return os.environ.get("CAREBRIDGE_MQTT_GROUP") or GROUP


def broker_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise ValueError(f"expected mqtt://host:port, got {url!r}")
    return parts.hostname, parts.port or 1883


def credential(message: mqtt.MQTTMessage, data: Any) -> str | None:
    props = getattr(message, "properties", None)
    for name, value in getattr(props, "UserProperty", None) or []:
        if name.lower() == "authorization" and value.lower().startswith("bearer "):
            return str(value[7:].strip())
    first = data[0] if isinstance(data, list) and data else data
    if isinstance(first, dict) and isinstance(first.get("secret"), str):
        return str(first["secret"])
    return None


class MqttIngest:
    def __init__(self, gateway: DeviceGateway, url: str, *, client_id: str,
                 group: str | None = None, receive_maximum: int = 1000) -> None:
        self.gateway = gateway
        self.host, self.port = broker_address(url)
        self.group = group or group_name()
        self.receive_maximum = receive_maximum
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        # Set once the broker has granted the subscriptions (SUBACK), not at CONNACK: a
        # reading published in between would find no subscriber and be dropped.
        self.connected = threading.Event()
        self.received = 0
        self.in_flight = 0
        self._lock = threading.Lock()

    def _count(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # Unacknowledged messages survive a reconnect of this worker (same client id) for a
        # minute; a worker that vanishes is dropped from the shared group after that.
        props.SessionExpiryInterval = 60
        # Up to this many unacknowledged messages in flight to us (MQTT 5 Receive Maximum):
        # they are acknowledged after their group commit, so this bounds the commit size.
        props.ReceiveMaximum = self.receive_maximum
        self.client.connect(self.host, self.port, keepalive=30, clean_start=False,
                            properties=props)
        self.client.loop_start()

    def stop(self, drain: float = 10.0) -> None:
        """Stop taking messages, wait until those taken are committed and acknowledged,
        then end the session (expiry 0) so the broker stops queueing for this worker."""
        self.client.unsubscribe([f"$share/{self.group}/{OBSERVATIONS}",
                                 f"$share/{self.group}/{HEARTBEAT}"])
        deadline = time.monotonic() + drain
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        self.client.disconnect(properties=props)
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        client.subscribe([(f"$share/{self.group}/{OBSERVATIONS}", 1),
                          (f"$share/{self.group}/{HEARTBEAT}", 1)])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: list[Any], properties: Any) -> None:
        if reason_codes and not any(code.is_failure for code in reason_codes):
            self.connected.set()
        else:
            log.error("MQTT subscription refused: %s", reason_codes)

    def _on_message(self, client: mqtt.Client, userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        self.received += 1
        parts = message.topic.split("/")
        if len(parts) != 4 or parts[:2] != ["carebridge", "devices"]:
            client.ack(message.mid, message.qos)
            return
        device_id, kind = parts[2], parts[3]
        try:
            try:
                data = orjson.loads(message.payload)
            except orjson.JSONDecodeError as exc:
                error = BadRequest(f"The message is not valid JSON: {exc}")
                self.gateway.refused(device_id, error, channel="mqtt",
                                     kind="heartbeat" if kind == "heartbeat" else "readings")
                raise error from None
            secret = credential(message, data)
            if kind == "heartbeat":
                prepared = self._heartbeat(device_id, data, secret)
            else:  # the gateway records refusals in the audit trail
                prepared = self.gateway.prepare(device_id, data, secret, channel="mqtt")
        except FhirError as exc:
            self._reject(device_id, message, exc)
            client.ack(message.mid, message.qos)
            return
        self._submit(prepared, message)

    def _heartbeat(self, device_id: str, data: Any, secret: str | None) -> PreparedReadings:
        data = data if isinstance(data, dict) else {}

        def number(key: str) -> float | None:
            value = data.get(key)
            return float(value) if isinstance(value, int | float) else None

        return self.gateway.prepare_heartbeat(device_id, secret, number("battery"),
                                              number("signal"), channel="mqtt")

    def _submit(self, prepared: PreparedReadings, message: mqtt.MQTTMessage) -> None:
        self._count(1)
        future = self.gateway.submit(prepared)

        def done(result: Future[IngestResult]) -> None:
            error = result.exception()
            if error is None:
                self.client.ack(message.mid, message.qos)  # after the commit
                self._count(-1)
            elif isinstance(error, FhirError):
                self._reject(prepared.device_id, message, error)
                self.client.ack(message.mid, message.qos)
                self._count(-1)
            else:
                self._count(-1)  # storage trouble: stay unacknowledged, retry shortly
                log.warning("storing readings of Device/%s failed (%s); retrying",
                            prepared.device_id, error)
                threading.Timer(1.0, self._submit, (prepared, message)).start()

        future.add_done_callback(done)

    def _reject(self, device_id: str, message: mqtt.MQTTMessage, error: FhirError) -> None:
        report = {"topic": message.topic, "status": error.status, "outcome": error.outcome(),
                  "payload": message.payload.decode("utf-8", "replace"),
                  "at": time.time()}
        self.client.publish(f"carebridge/devices/{device_id}/rejections", orjson.dumps(report),
                            qos=1)
