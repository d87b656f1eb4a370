"""Device fleet health and FHIR Subscription rest-hook delivery from the durable queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from tests.monitoring.support import Ward, minutes_ago

from carebridge.events.delivery import DeliveryWorker, backoff
from carebridge.monitoring.report import fleet_report
from carebridge.security.policy import SYSTEM
from carebridge.testing import free_port


def silent_flags(ward: Ward) -> list[dict[str, object]]:
    return [f for f in ward.search("Flag", subject=f"Patient/{ward.patient_id}")
            if f["code"]["coding"][0]["code"] == "device-silent"]  # type: ignore[index]


def test_device_goes_silent_and_comes_back(ward: Ward) -> None:
    gateway = ward.monitoring.gateway
    gateway.ingest(ward.device_id, {"t": minutes_ago(0.1), "hr": 70, "battery": 80,
                                    "signal": -60}, ward.secret)
    ward.settle()
    report = fleet_report(ward.service, ward.service.clock() - timedelta(minutes=1),
                          ward.service.clock())
    [row] = report["devices"]
    assert (row["status"], row["battery"], row["ward"]) == ("online", 80.0, "Ward 7")
    time.sleep(1.2)  # offline_after is 1 s in this fixture
    ward.monitoring.engine.sweep()
    ward.settle()
    [flag] = silent_flags(ward)
    assert flag["status"] == "active"
    assert flag["category"][0]["coding"][0]["code"] == "equipment"  # type: ignore[index]
    ward.monitoring.engine.sweep()  # still silent: no second alert
    assert len(silent_flags(ward)) == 1
    gateway.heartbeat(ward.device_id, ward.secret, battery=10)
    [flag] = silent_flags(ward)
    assert flag["status"] == "inactive"  # back: the silence alert resolves itself
    report = fleet_report(ward.service, ward.service.clock() - timedelta(seconds=10),
                          ward.service.clock())
    [row] = report["devices"]
    assert row["status"] == "degraded"  # battery 10 % < 15 %
    [period] = row["downtime"]
    assert period["end"] is not None
    assert 0.0 < row["availability"] < 1.0
    [ward_row] = report["wards"]
    assert ward_row == {"ward": "Ward 7", "devices": 1, "availability": row["availability"]}


def test_availability_arithmetic() -> None:
    from datetime import UTC, datetime

    from carebridge.monitoring.fleet import availability

    t0 = datetime(2026, 11, 30, tzinfo=UTC)
    hour = timedelta(hours=1)
    assert availability([], t0, t0 + hour) == 1.0
    assert availability([(t0 + hour / 4, t0 + hour / 2)], t0, t0 + hour) == 0.75
    assert availability([(t0 - hour, None)], t0, t0 + hour) == 0.0


class Receiver:
    """A real HTTP endpoint that records calls; ``fail`` answers 500 while > 0."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes, str | None]] = []
        self.fail = 0
        self.port = free_port()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                if receiver.fail > 0:
                    receiver.fail -= 1
                    self.send_response(500)
                else:
                    receiver.calls.append((self.command, self.path, body,
                                           self.headers.get("x-token")))
                    self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            do_PUT = do_POST = _handle

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def subscribe(ward: Ward, port: int, payload: str | None = "application/fhir+json") -> str:
    channel: dict[str, object] = {"type": "rest-hook",
                                  "endpoint": f"http://127.0.0.1:{port}/hook",
                                  "header": ["X-Token: s3cret"]}
    if payload:
        channel["payload"] = payload
    sub = {"resourceType": "Subscription", "status": "requested", "reason": "alerts",
           "criteria": f"Flag?subject=Patient/{ward.patient_id}", "channel": channel}
    subscription_id = ward.service.create(SYSTEM, "Subscription", sub).version.id
    ward.settle()
    [stored] = ward.search("Subscription", _id=subscription_id)
    assert stored["status"] == "active"  # R4: the server activates what it can serve
    return subscription_id


def test_rest_hook_delivers_matching_flags_with_retries(ward: Ward, receiver: Receiver) -> None:
    subscribe(ward, receiver.port)
    receiver.fail = 2
    ward.monitoring.gateway.ingest(ward.device_id, {"t": minutes_ago(1), "hr": 140}, ward.secret)
    ward.settle()
    worker = DeliveryWorker(ward.service.repository, ward.service.clock)
    worker.deliver_due()  # 500: kept, retried after back-off
    assert receiver.calls == [] and worker.pending()[0][1:3] == ("pending", 1)
    worker.clock = lambda: ward.service.clock() + timedelta(minutes=10)
    worker.deliver_due()  # 500 again: attempt 2, next in 2 s
    assert receiver.calls == [] and worker.pending()[0][1:3] == ("pending", 2)
    worker.clock = lambda: ward.service.clock() + timedelta(minutes=20)
    worker.deliver_due()
    [(method, path, body, token)] = receiver.calls
    flag = orjson.loads(body)
    assert method == "PUT" and path == f"/hook/Flag/{flag['id']}" and token == "s3cret"
    assert flag["resourceType"] == "Flag" and flag["status"] == "active"
    assert worker.pending() == []


def test_non_matching_changes_are_not_sent(ward: Ward, receiver: Receiver) -> None:
    subscribe(ward, receiver.port, payload=None)
    ward.monitoring.gateway.ingest(ward.device_id, {"t": minutes_ago(1), "hr": 70}, ward.secret)
    ward.settle()  # NEWS2 0: no Flag, nothing to send
    worker = DeliveryWorker(ward.service.repository, ward.service.clock)
    assert worker.deliver_due() == 0


def test_queued_notification_survives_restart(database_url: str, receiver: Receiver) -> None:
    from carebridge.events.outbox import OutboxRepository
    from carebridge.monitoring.runtime import Monitoring
    from carebridge.services.resources import ResourceService
    from carebridge.storage import open_repository

    down = free_port()  # nothing listens here yet
    repository = OutboxRepository(open_repository(database_url))
    service = ResourceService(repository)
    monitoring = Monitoring(service)
    ward = Ward(monitoring, service, service.create(SYSTEM, "Patient", {
        "resourceType": "Patient"}).version.id, "", "")
    ward.device_id, ward.secret = ward.add_device()
    subscribe(ward, down, payload=None)
    monitoring.gateway.ingest(ward.device_id, {"t": minutes_ago(1), "hr": 140}, ward.secret)
    ward.settle()
    DeliveryWorker(repository, service.clock).deliver_due()  # connection refused: kept
    monitoring.gateway.stop()
    repository.close()  # the server stops with the notification undelivered

    repository = OutboxRepository(open_repository(database_url))
    later = DeliveryWorker(repository, lambda: service.clock() + timedelta(minutes=10))
    [(_, status, attempts, _endpoint)] = later.pending()
    assert (status, attempts) == ("pending", 1)
    with repository.session(write=True) as session:  # the receiver now listens elsewhere
        session.query(("UPDATE delivery_queue SET endpoint = ? RETURNING 1" if
                       repository.dialect == "sqlite" else
                       "UPDATE delivery_queue SET endpoint = %s RETURNING 1"),
                      (f"http://127.0.0.1:{receiver.port}/hook",))
    later.deliver_due()
    assert [(m, p, b) for m, p, b, _ in receiver.calls] == [("POST", "/hook", b"")]
    assert later.pending() == []
    repository.close()


def test_backoff_grows_and_caps() -> None:
    assert [backoff(n).total_seconds() for n in (1, 2, 3, 10, 30)] == [1, 2, 4, 300, 300]


def test_the_delivery_worker_is_woken_by_queued_notifications_only(
        ward: Ward, receiver: Receiver) -> None:
    """The engine wakes the delivery worker after a commit that queued notifications; other
    commits (readings, scores, resources no Subscription matches) leave it asleep."""
    assert ward.monitoring.engine.on_queued == ward.monitoring.delivery.wake
    woken: list[int] = []
    ward.monitoring.engine.on_queued = lambda: woken.append(1)
    subscribe(ward, receiver.port)
    ward.monitoring.gateway.ingest(ward.device_id, {"t": minutes_ago(2), "hr": 70}, ward.secret)
    ward.settle()  # NEWS2 0: no Flag, nothing queued
    assert woken == []
    ward.monitoring.gateway.ingest(ward.device_id, {"t": minutes_ago(1), "hr": 140}, ward.secret)
    ward.settle()  # a Flag the Subscription matches
    assert woken and DeliveryWorker(ward.service.repository, ward.service.clock).pending()
