"""The device gateway: one way in for readings, whatever carried them (HTTP or MQTT).

``prepare`` authenticates the device, parses the payload (a FHIR Observation, a Bundle of
them, or the compact JSON form), fills ``subject`` and ``device`` from the Device resource and
checks each reading against the vital-signs profile. ``submit`` hands the prepared readings to
the committer thread, which stores the readings of many submissions in one database
transaction (group commit) through the service layer and resolves each submission's future
only after that commit: HTTP answers and MQTT acknowledgements are sent after the commit.

Duplicates: a reading's Observation id is derived from (device, code, effective instant), so
a redelivered reading finds its id already stored and is dropped. The check and the insert
run in one transaction, and the resource primary key settles a race between two workers
(the loser's transaction is retried and then sees the reading as a duplicate).

Audit: with a ``ledger`` (the server's, unless ``--insecure-dev``), every batch a device
sends (readings or a heartbeat, over HTTP or MQTT) records one FHIR AuditEvent
(``device_event``): agent the device identity, entities its Device and patient, the counts
of readings received, stored and dropped as duplicates, and the outcome: refused (4) when
``prepare`` turns it down, 0 once committed, 8 if storing failed. Accepted batches are
recorded by the committer thread right after their commit, by appending to the ledger's
in-memory queue (no database work on the commit path). The HTTP routes tell the security
middleware (``carebridge.audited`` in the ASGI scope) that the gateway records them, so
each request is recorded once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from carebridge.events.bus import ResourceChanged
from carebridge.events.sqltext import run
from carebridge.fhir.errors import BadRequest, FhirError, NotFound, Unauthorized, Unprocessable
from carebridge.fhir.resource import Resource, check_resource
from carebridge.ingest.devices.credentials import DeviceCredentials
from carebridge.monitoring import alerts, fleet
from carebridge.monitoring.vitals import check_vital_sign, compact_observations, reading_id
from carebridge.security.audit import AuditLedger
from carebridge.security.audit_events import device_event
from carebridge.security.policy import Action, Caller
from carebridge.services.resources import PendingWrites, ResourceService
from carebridge.storage.base import Session, Write

log = logging.getLogger(__name__)

MAX_CLOCK_SKEW = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class DeviceBinding:
    device_id: str
    patient_id: str


@dataclass
class PreparedReadings:
    device_id: str
    observations: list[Resource]  # each with its id set
    battery: float | None = None
    signal: float | None = None
    kind: str = "readings"  # or "heartbeat" (for the audit trail, as are the next two)
    channel: str = "direct"  # http, mqtt, or direct (in-process callers)
    address: str | None = None


@dataclass
class IngestResult:
    device_id: str
    stored: list[str] = field(default_factory=list)  # Observation ids written now
    duplicates: list[str] = field(default_factory=list)  # ids that were already stored


def device_caller(device_id: str) -> Caller:
    """The least-privilege identity a device's readings are written under: the ``device``
    role, and SMART v2 scopes for exactly what the gateway does (read its Device, create
    Observations)."""
    return Caller(f"device:{device_id}", roles=frozenset({"device"}),
                  scopes=frozenset({"system/Device.r", "system/Observation.c"}))


class DeviceGateway:
    def __init__(self, service: ResourceService, credentials: DeviceCredentials, *,
                 max_batch: int = 1000, max_wait: float = 0.005,
                 require_credentials: bool = True, ledger: AuditLedger | None = None) -> None:
        self.service = service
        self.ledger = ledger  # set by the composition root when the server audits
        self.credentials = credentials
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.require_credentials = require_credentials
        self._bindings: dict[str, DeviceBinding] = {}
        self._queue: queue.Queue[tuple[PreparedReadings, Future[IngestResult]] | None] = (
            queue.Queue())
        self._thread: threading.Thread | None = None
        service.events.subscribe(self._forget_devices)

    # ------------------------------------------------------------------ preparing

    def _forget_devices(self, events: Any) -> None:
        for event in events:
            if isinstance(event, ResourceChanged) and event.resource_type == "Device":
                self._bindings.pop(event.resource_id, None)

    def binding(self, device_id: str) -> DeviceBinding:
        found = self._bindings.get(device_id)
        if found is not None:
            return found
        device = self.service.read(device_caller(device_id), "Device", device_id)
        assert device.body is not None
        reference = (orjson.loads(device.body).get("patient") or {}).get("reference", "")
        if not isinstance(reference, str) or not reference.startswith("Patient/"):
            raise Unprocessable(f"Device/{device_id} is not bound to a patient (Device.patient)",
                                ("Device.patient",))
        found = DeviceBinding(device_id, reference.removeprefix("Patient/"))
        self._bindings[device_id] = found
        return found

    def prepare(self, device_id: str, payload: bytes | Any, secret: str | None, *,
                channel: str = "direct", address: str | None = None) -> PreparedReadings:
        """Authenticate, parse, fill and check; raises a FhirError naming what is wrong
        (and records the refusal in the audit trail)."""
        try:
            prepared = self._prepare(device_id, payload, secret)
        except Exception as exc:
            self.refused(device_id, exc, channel=channel, address=address)
            raise
        prepared.channel, prepared.address = channel, address
        return prepared

    def _prepare(self, device_id: str, payload: bytes | Any,
                 secret: str | None) -> PreparedReadings:
        self._authenticate(device_id, secret)
        try:
            binding = self.binding(device_id)
        except NotFound:
            raise NotFound(f"Device/{device_id} is not known") from None
        data = payload
        if isinstance(payload, bytes | bytearray):
            try:
                data = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"The reading is not valid JSON: {exc}") from None
        observations, where, battery, signal = _observations_in(data)
        self.service.policy.authorize(device_caller(device_id), Action.CREATE, "Observation")
        now = self.service.clock()
        prepared = PreparedReadings(device_id, [], battery, signal)
        for observation, place in zip(observations, where, strict=True):
            checked = check_resource(observation, "Observation", place)
            prepared.observations.append(_fill(checked, binding, place, now))
        return prepared

    # ------------------------------------------------------------------ committing

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="device-gateway", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def submit(self, prepared: PreparedReadings) -> Future[IngestResult]:
        """Queue for the next group commit; the future resolves after the commit."""
        future: Future[IngestResult] = Future()
        if self._thread is None:
            self.start()
        self._queue.put((prepared, future))
        return future

    def ingest(self, device_id: str, payload: bytes | Any, secret: str | None) -> IngestResult:
        return self.submit(self.prepare(device_id, payload, secret)).result()

    def _authenticate(self, device_id: str, secret: str | None) -> None:
        if self.require_credentials and not self.credentials.verify(device_id, secret):
            raise Unauthorized(f"Bad or missing credential for Device/{device_id}",
                               code="login")

    def prepare_heartbeat(self, device_id: str, secret: str | None,
                          battery: float | None = None, signal: float | None = None, *,
                          channel: str = "direct",
                          address: str | None = None) -> PreparedReadings:
        """Authenticate a sign of life (a refusal is recorded in the audit trail)."""
        try:
            self._authenticate(device_id, secret)
            self.binding(device_id)
        except Exception as exc:
            self.refused(device_id, exc, channel=channel, address=address, kind="heartbeat")
            raise
        return PreparedReadings(device_id, [], battery, signal, "heartbeat", channel, address)

    def heartbeat(self, device_id: str, secret: str | None, battery: float | None = None,
                  signal: float | None = None, *, channel: str = "direct",
                  address: str | None = None) -> None:
        """A sign of life without readings (battery and signal when reported)."""
        self.submit(self.prepare_heartbeat(device_id, secret, battery, signal,
                                           channel=channel, address=address)).result()

    # ------------------------------------------------------------------ audit

    def refused(self, device_id: str, error: BaseException, *, channel: str,
                address: str | None = None, kind: str = "readings") -> None:
        """Record a batch turned down before it was queued (bad credential, unknown
        device, invalid reading, unreadable or oversized payload)."""
        if self.ledger is None:
            return
        status = error.status if isinstance(error, FhirError) else 500
        binding = self._bindings.get(device_id)
        self.ledger.record(device_event(
            device_caller(device_id), device_id, binding.patient_id if binding else None,
            channel=channel, kind=kind, status=status, address=address))

    def _audit(self, prepared: PreparedReadings, result: IngestResult | None,
               error: BaseException | None = None) -> None:
        if self.ledger is None:
            return
        binding = self._bindings.get(prepared.device_id)
        status = 200 if error is None else (
            error.status if isinstance(error, FhirError) else 500)
        self.ledger.record(device_event(
            device_caller(prepared.device_id), prepared.device_id,
            binding.patient_id if binding else None, channel=prepared.channel,
            kind=prepared.kind, status=status, readings=len(prepared.observations),
            stored=len(result.stored) if result else 0,
            duplicates=len(result.duplicates) if result else 0, address=prepared.address))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            size = len(item[0].observations)
            deadline = time.monotonic() + self.max_wait  # no timer thread per commit
            stopping = False
            while size < self.max_batch:
                try:
                    more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
                size += len(more[0].observations)
            self._commit(batch)
            if stopping:
                return

    def _commit(self, batch: list[tuple[PreparedReadings, Future[IngestResult]]]) -> None:
        try:
            results = self.store([prepared for prepared, _ in batch])
        except Exception as exc:  # one bad submission must not fail the others: one by one
            if len(batch) == 1:
                self._audit(batch[0][0], None, exc)
                batch[0][1].set_exception(exc)
                return
            for one in batch:
                self._commit([one])
            return
        for (prepared, future), result in zip(batch, results, strict=True):
            self._audit(prepared, result)  # queued before anyone hears of the commit
            future.set_result(result)

    def store(self, submissions: list[PreparedReadings]) -> list[IngestResult]:
        """Store the readings of ``submissions`` in one transaction (duplicates dropped).

        Each reading is validated and its index rows extracted *before* the transaction
        (``stage`` needs no session), so the database's write lock is held only for the
        duplicate check and the inserts; several ingest processes can then do their CPU
        work side by side."""
        moment = self.service.clock()
        staged = PendingWrites()
        groups: dict[str, list[Write]] = {}
        for prepared in submissions:
            for observation in prepared.observations:
                if observation["id"] in groups:
                    continue
                first = len(staged.writes)
                self.service.stage(staged, observation, "Observation", observation["id"], 1,
                                   "POST", moment, None)
                groups[observation["id"]] = staged.writes[first:]  # with any Provenance
        return self.service.run_write(
            lambda session, pending: self._store_in(session, pending, submissions, groups,
                                                    staged, moment), retry=True)

    def _store_in(self, session: Session, pending: PendingWrites,
                  submissions: list[PreparedReadings], groups: dict[str, list[Write]],
                  staged: PendingWrites, moment: datetime) -> list[IngestResult]:
        dialect = self.service.repository.dialect
        existing = _stored_ids(session, dialect, list(groups))
        seen: set[str] = set()
        results = []
        health: dict[str, tuple[float | None, float | None]] = {}
        for prepared in submissions:
            result = IngestResult(prepared.device_id)
            for observation in prepared.observations:
                oid = observation["id"]
                if oid in existing or oid in seen:
                    result.duplicates.append(oid)
                    continue
                seen.add(oid)
                pending.writes.extend(groups[oid])
                if ("Observation", oid) in staged.issues:
                    pending.issues[("Observation", oid)] = staged.issues[("Observation", oid)]
                result.stored.append(oid)
            battery, signal = health.get(prepared.device_id, (None, None))
            health[prepared.device_id] = (
                prepared.battery if prepared.battery is not None else battery,
                prepared.signal if prepared.signal is not None else signal)
            results.append(result)
        for device_id, (battery, signal) in health.items():  # once per device per commit
            back = fleet.record_seen(session, dialect, device_id, moment, battery, signal)
            if back:  # the device reports again: its silence alert is over
                alerts.resolve_condition(
                    self.service, session, pending, self.binding(device_id).patient_id,
                    f"device-silent:{device_id}", "system", moment)
        return results


def _stored_ids(session: Session, dialect: str, ids: list[str]) -> set[str]:
    """Which of ``ids`` are already stored Observations (one query per 500 ids)."""
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        marks = ", ".join("?" for _ in part)
        rows = run(session, dialect, "SELECT id FROM resource WHERE resource_type ="
                   f" 'Observation' AND id IN ({marks})", part)
        found.update(str(row[0]) for row in rows)
    return found


def _observations_in(data: Any) -> tuple[list[Resource], list[str], float | None, float | None]:
    """The Observations of a payload, where each came from, and any battery/signal."""
    if isinstance(data, dict) and data.get("resourceType") == "Observation":
        return [data], ["Observation"], None, None
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        found, where = [], []
        for index, entry in enumerate(data.get("entry") or []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
                raise Unprocessable("Every entry of a readings Bundle must be an Observation",
                                    (f"Bundle.entry[{index}].resource",))
            found.append(resource)
            where.append(f"Bundle.entry[{index}].resource")
        return found, where, None, None
    readings = data if isinstance(data, list) else [data]
    found, where = [], []
    battery = signal = None
    for index, reading in enumerate(readings):
        if not isinstance(reading, dict) or "resourceType" in reading:
            raise Unprocessable(
                "A payload is an Observation, a Bundle of them, or compact readings",
                (f"[{index}]",))
        try:
            made = compact_observations(reading)
        except FhirError as exc:
            raise exc.at(f"[{index}]") from None
        found.extend(made)
        where.extend(f"[{index}]" for _ in made)
        battery = _optional_number(reading.get("battery"), battery)
        signal = _optional_number(reading.get("signal"), signal)
    return found, where, battery, signal


def _optional_number(value: Any, default: float | None) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


def _fill(observation: Resource, binding: DeviceBinding, where: str, now: datetime) -> Resource:
    """Bind the reading to the device's patient and give it its deduplicating id."""
    subject = f"Patient/{binding.patient_id}"
    given = (observation.get("subject") or {}).get("reference")
    if given is not None and given != subject:
        raise Unprocessable(
            f"Device/{binding.device_id} belongs to {subject}, not {given}",
            (f"{where}.subject",))
    device = f"Device/{binding.device_id}"
    given = (observation.get("device") or {}).get("reference")
    if given is not None and given != device:
        raise Unprocessable(f"The reading names {given}, but came from {device}",
                            (f"{where}.device",))
    filled = dict(observation)
    filled["subject"] = {"reference": subject}
    filled["device"] = {"reference": device}
    code, effective = check_vital_sign(filled, where)
    if effective - now > MAX_CLOCK_SKEW:
        raise Unprocessable(
            f"effective time {effective.isoformat()} is in the future (device clock skew?)",
            (f"{where}.effectiveDateTime",))
    filled["id"] = reading_id(binding.device_id, code, effective)
    return filled
