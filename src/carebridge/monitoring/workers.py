"""Extra MQTT ingest processes: ``carebridge serve --mqtt --mqtt-workers N``.

One Python process runs Python code on one core at a time, and storing a device reading
(validation, search index, history, outbox) costs most of what a core has at the rates
wards produce. ``--mqtt-workers N`` starts N more processes (``carebridge mqtt-worker``,
children of the server) that each run a device gateway and an MQTT client in the same
shared subscription as the server's own (``$share/carebridge/...``): the broker spreads
the messages over all of them. They store readings exactly as the server does (same
validation, credentials, durable dedup, outbox, audit), and the server's monitoring engine
scores them from the outbox, so NEWS2, rules, alerts and the SSE stream stay in one place.

On SQLite the processes take turns for the one write lock (``storage.sqlite.WriterTurns``);
what runs in parallel is everything before it. Workers are stopped (SIGTERM, then their
MQTT sessions end cleanly) before the server's own shutdown; one that dies is not restarted
here (its unacknowledged messages go to the others: QoS 1 with PUBACK after commit).
"""

from __future__ import annotations

import logging
import signal
import threading

from starlette.applications import Starlette

from carebridge.config import Settings
from carebridge.processes import (
    ORPHAN_CHECK,
    ChildProcesses,
    attach_children,
    orphaned,
    serving,
)

log = logging.getLogger(__name__)


def run_worker(settings: Settings, index: int) -> None:
    """Run one ingest process until SIGTERM/SIGINT (``carebridge mqtt-worker``)."""
    from carebridge.app import build_stores
    from carebridge.ingest.devices.credentials import DeviceCredentials
    from carebridge.ingest.devices.gateway import DeviceGateway
    from carebridge.ingest.devices.mqtt import MqttIngest, client_prefix

    if not settings.mqtt_url:
        raise ValueError("an MQTT ingest worker needs --mqtt")
    stores = build_stores(settings)
    gateway = DeviceGateway(stores.service, DeviceCredentials(stores.repository),
                            ledger=stores.authority.ledger if stores.authority else None)
    ingest = MqttIngest(gateway, settings.mqtt_url, client_id=f"{client_prefix()}-w{index}")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with serving(stores):
        gateway.start()
        ingest.start()
        try:
            for _ in range(60):  # until subscribed: the broker then sends this process its share
                if ingest.connected.wait(ORPHAN_CHECK):
                    print(f"mqtt-worker {index} ready", flush=True)
                    break
                if stop.is_set() or orphaned():
                    break
            while not stop.wait(ORPHAN_CHECK) and not orphaned():
                pass
        finally:
            ingest.stop()  # leave the shared group first, so the broker feeds the others
            gateway.stop()


class WorkerProcesses(ChildProcesses):
    """The server's ``--mqtt-workers``: started with the application, stopped before it."""

    kind = "MQTT ingest worker"
    subcommand = "mqtt-worker"

    def options(self) -> list[str]:
        assert self.settings.mqtt_url is not None
        return ["--mqtt", self.settings.mqtt_url]

    def environment(self) -> dict[str, str]:
        from carebridge.ingest.devices.mqtt import client_prefix

        env = super().environment()
        env["CAREBRIDGE_MQTT_CLIENT_ID"] = client_prefix()
        return env


def attach_workers(asgi: Starlette, settings: Settings, count: int) -> ChildProcesses:
    """Run :class:`WorkerProcesses` inside ``asgi``'s lifespan."""
    return attach_children(asgi, WorkerProcesses(settings, count))
