"""Benchmark: remote-monitoring ingest with NEWS2 scoring and rules, and alert latency.

What is measured (one run; server, broker, database and load generator on one machine):

1. **Sustained readings per second, scored.** A fresh database with ``--patients`` simulated
   patients (each a Patient, a bound Device with its credential, and for a third of them a
   personal rule), then the real server in its own process (this file's ``serve`` mode: the
   product's API, device gateway, MQTT workers and monitoring engine, no user auth). The load
   generator sends ``--readings`` readings as fast as the server takes them:
   - HTTP: compact payloads of 5 reading sets (30 readings) per ``POST /devices/{id}/observations``
     over 6 keep-alive connections;
   - MQTT: one reading set (6 readings) per QoS 1 message, published to the real Mosquitto.
   Readings are taken within the last minutes (inside the NEWS2 window, so each one is
   scored). The clock stops when the last reading is stored *and* scored: no reading is
   left in the outbox, so every reading has been projected, every NEWS2 recomputed and
   stored, rules evaluated and alerts raised. Figures: readings / elapsed, and the server's CPU time
   (user + system, all threads, from /proc) per reading, which load from other programs on
   the machine disturbs much less than the rate.

   *Floor:* the same readings, same transport, same gateway (validation, dedup, group commit),
   with monitoring off: no outbox, no engine -- storing the same Observations without scoring.
   The target is >= 2,000 readings/s scored on SQLite and >= 0.5 of the floor.

   ``--ingest-workers N`` adds N server processes that only ingest (the same gateway, MQTT
   shared subscription and HTTP routes, writing the outbox); the main process also ingests
   (MQTT only with the workers if ``--main-without-mqtt``) and runs the one engine and the
   alert stream. HTTP load is spread over all processes.

2. **Alert latency at 1,000 readings/s.** With scoring on, background devices publish over MQTT
   at ``--latency-rate`` readings/s for ``--latency-seconds``; meanwhile, 5 times a second, a
   probe patient (fresh, no open alert) publishes a high-risk reading set. An SSE client on
   ``/monitoring/alerts/stream`` records when that patient's Flag arrives. Figure: p50/p99 of
   publish -> alert on the stream. Target p99 < 500 ms.

Run::

    .venv/bin/python bench/monitoring.py                     # SQLite, 30,000 readings
    .venv/bin/python bench/monitoring.py --backend postgresql --readings 20000
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import queue
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from carebridge.events.outbox import OutboxRepository
from carebridge.ingest.devices.credentials import DeviceCredentials
from carebridge.monitoring import simulator
from carebridge.services.resources import ResourceService
from carebridge.storage import open_repository
from carebridge.testing import ServerProcess, ThrowawayMosquitto, ThrowawayPostgres
from carebridge.testing.procfs import cpu_seconds

SET = 6  # readings per compact set: hr, rr, spo2, temp, weight, blood-pressure panel
HTTP_SETS_PER_POST = 5
HTTP_CONNECTIONS = 6


# ------------------------------------------------------------------------------- server side

def serve(argv: list[str]) -> None:
    """``bench/monitoring.py serve --scoring on|off|ingest --mqtt URL --database D --host H
    --port P``; ``ingest``: readings go to the outbox for another process's engine."""
    import uvicorn

    from carebridge.api import create_api
    from carebridge.ingest.devices.mqtt import MqttIngest
    from carebridge.monitoring.runtime import Monitoring, MonitoringSettings

    parser = argparse.ArgumentParser()
    for option in ("--database", "--host", "--port", "--mqtt", "--scoring"):
        parser.add_argument(option)
    args = parser.parse_args(argv)
    scoring = args.scoring == "on"
    inner = open_repository(args.database)
    repository = OutboxRepository(inner) if args.scoring in ("on", "ingest") else inner
    service = ResourceService(repository)
    monitoring = Monitoring(service, MonitoringSettings(mqtt_url=args.mqtt or None))
    os.environ["CAREBRIDGE_MQTT_CLIENT_ID"] = f"bench-{args.scoring}-{os.getpid()}"
    if scoring:
        app = create_api(service, monitoring=monitoring, on_shutdown=repository.close)
    else:  # the floor (or an ingest-only worker): the same gateway and MQTT workers
        from starlette.routing import Route

        from carebridge.api.monitoring_routes import monitoring_routes

        ingest = MqttIngest(monitoring.gateway, args.mqtt,
                            client_id=f"bench-floor-{os.getpid()}") if args.mqtt else None

        def shutdown() -> None:  # leave the shared group, or the broker keeps feeding us
            if ingest is not None:
                ingest.stop()
            monitoring.gateway.stop()
            repository.close()

        app = create_api(service, on_shutdown=shutdown)
        app.router.routes.extend(r for r in monitoring_routes(monitoring)
                                 if isinstance(r, Route) and r.path.startswith("/devices/"))
        monitoring.gateway.start()
        if ingest is not None:
            ingest.start()
    uvicorn.run(app, host=args.host, port=int(args.port), log_level="warning", access_log=False)


# ------------------------------------------------------------------------------- load side

def provision(database_url: str, patients: int) -> simulator.Population:
    repository = OutboxRepository(open_repository(database_url))
    try:
        service = ResourceService(repository)
        population = simulator.provision(service, DeviceCredentials(repository).issue, patients,
                                         scripted=0.3, flaky=0.0, seed=11)
        with repository.session(write=True) as session:  # provisioning is not the benchmark
            session.query("DELETE FROM event_outbox RETURNING 1", ())
        return population
    finally:
        repository.close()


def reading_sets(population: simulator.Population, count: int,
                 start: datetime) -> list[tuple[simulator.SimulatedPatient, dict[str, Any]]]:
    """``count`` sets round-robin over the patients, each device's one second apart."""
    out = []
    for n in range(count):
        patient = population.patients[n % len(population.patients)]
        moment = start + timedelta(seconds=n // len(population.patients))
        reading = {"t": moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                   **patient.vitals(n / 100, onset=60, ramp=120)}
        reading.pop("o2flow", None)
        reading.pop("battery", None)
        reading.pop("signal", None)
        out.append((patient, reading))
    return out


def count_stored(database_url: str) -> tuple[int, int]:
    """(vital-sign Observations, their outbox rows left) read straight from the database."""
    repo = open_repository(database_url, migrate=False)
    try:
        with repo.session() as session:
            mark = "?" if repo.dialect == "sqlite" else "%s"
            readings = session.query(
                f"SELECT count(*) FROM resource WHERE resource_type = {mark} AND id LIKE {mark}",
                ("Observation", "r%"))[0][0]
            # The readings' own outbox rows: gone once their pass (scores, rules, alerts)
            # committed. Rows that lead to nothing (the engine's own NEWS2 Observations)
            # are claimed later, together (monitoring.engine: defer_idle).
            outbox = session.query(
                f"SELECT count(*) FROM event_outbox WHERE resource_type = {mark}"
                f" AND resource_id LIKE {mark}", ("Observation", "r%"))[0][0]
        return int(readings), int(outbox)
    finally:
        repo.close()


def send_http(ports: list[int],
              batches: list[tuple[simulator.SimulatedPatient, list[Any]]]) -> None:
    work: queue.Queue[tuple[simulator.SimulatedPatient, list[Any]] | None] = queue.Queue()
    for item in batches:
        work.put(item)
    failures: list[int] = []

    def client(port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            try:
                item = work.get_nowait()
            except queue.Empty:
                break
            patient, payload = item  # type: ignore[misc]
            conn.request("POST", f"/devices/{patient.device_id}/observations",
                         orjson.dumps(payload),
                         {"Authorization": f"Bearer {patient.secret}",
                          "Content-Type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            if reply.status != 201:
                failures.append(reply.status)
        conn.close()

    threads = [threading.Thread(target=client, args=(ports[n % len(ports)],))
               for n in range(HTTP_CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"{len(failures)} HTTP posts failed, e.g. {failures[:3]}")


def send_mqtt(url: str, sets: list[tuple[simulator.SimulatedPatient, dict[str, Any]]],
              rate: float | None = None) -> None:
    sender = simulator.MqttSender(url, f"bench-load-{os.getpid()}-{random.random():.6f}")
    began = time.monotonic()
    for n, (patient, reading) in enumerate(sets):
        if rate is not None:
            delay = began + n * SET / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        sender.send(patient, reading)
    sender.close()


@contextlib.contextmanager
def servers(args: argparse.Namespace, broker: ThrowawayMosquitto, database_url: str,
            scoring: bool) -> Iterator[list[ServerProcess]]:
    """The server, and ``--ingest-workers`` more processes that only ingest (MQTT shared
    subscription, HTTP): the main one runs the engine and the alert stream for all."""
    def program(role: str, mqtt: str) -> tuple[str, ...]:
        return (sys.executable, __file__, "serve", "--scoring", role, "--mqtt", mqtt)

    with contextlib.ExitStack() as stack:
        main_mqtt = "" if args.main_without_mqtt else broker.url
        running = [stack.enter_context(ServerProcess(database_url, program=program(
            "on" if scoring else "off", main_mqtt)))]
        for _ in range(args.ingest_workers):
            running.append(stack.enter_context(ServerProcess(
                database_url, program=program("ingest" if scoring else "off", broker.url))))
        yield running


def throughput(args: argparse.Namespace, broker: ThrowawayMosquitto, transport: str,
               scoring: bool, database_url: str) -> tuple[float, float]:
    """(readings per second, server CPU milliseconds per reading)."""
    population = provision(database_url, args.patients)
    # Readings must fall inside the NEWS2 window (1 h) when the engine sees them, or they
    # are history only (not scored): the last set is taken a minute before the run starts.
    count = args.readings // SET
    span = timedelta(seconds=count // len(population.patients) + 60)
    sets = reading_sets(population, count, datetime.now(UTC) - span)
    expected = len(sets) * SET
    with servers(args, broker, database_url, scoring) as running:
        cpu_before = [cpu_seconds(server.pid) for server in running]
        started = time.monotonic()
        if transport == "http":
            by_patient: dict[str, list[tuple[simulator.SimulatedPatient, dict[str, Any]]]] = {}
            for patient, reading in sets:
                by_patient.setdefault(patient.device_id, []).append((patient, reading))
            batches = []
            for items in by_patient.values():
                for i in range(0, len(items), HTTP_SETS_PER_POST):
                    chunk = items[i:i + HTTP_SETS_PER_POST]
                    batches.append((chunk[0][0], [r for _, r in chunk]))
            send_http([server.port for server in running], batches)
        else:
            send_mqtt(broker.url, sets)
        while True:
            stored, outbox = count_stored(database_url)
            if stored >= expected and (not scoring or outbox == 0):
                break
            if time.monotonic() - started > 600:
                raise RuntimeError(f"only {stored}/{expected} stored, {outbox} in the outbox")
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        cpu = sum(cpu_seconds(server.pid) - before
                  for server, before in zip(running, cpu_before, strict=True))
    return expected / elapsed, cpu * 1000 / expected


class Sse:
    def __init__(self, port: int) -> None:
        self.arrivals: dict[str, float] = {}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.conn.request("GET", "/monitoring/alerts/stream")
        self.sock = self.conn.sock
        self.reply = self.conn.getresponse()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                line = self.reply.readline()
                if not line:
                    return
                if line.startswith(b"data: "):
                    flag = orjson.loads(line[6:])
                    patient = flag["subject"]["reference"].removeprefix("Patient/")
                    self.arrivals.setdefault(patient, time.monotonic())
        except (OSError, ValueError, AttributeError):
            return

    def close(self) -> None:
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)


def latency(args: argparse.Namespace, broker: ThrowawayMosquitto,
            database_url: str) -> list[float]:
    probes = int(args.latency_seconds * 5)
    population = provision(database_url, args.patients + probes)
    background = simulator.Population(population.patients[:args.patients])
    for p in background.patients:
        p.scenario = "stable"
    probe_patients = population.patients[args.patients:]
    now = datetime.now(UTC)
    sets = reading_sets(background, int(args.latency_rate * args.latency_seconds / SET),
                        now - timedelta(minutes=30))
    with servers(args, broker, database_url, True) as running:
        sse = Sse(running[0].port)
        time.sleep(0.5)
        sent: dict[str, float] = {}
        load = threading.Thread(target=send_mqtt, args=(broker.url, sets, args.latency_rate))
        load.start()
        sender = simulator.MqttSender(broker.url, "bench-probes")
        began = time.monotonic()
        for n, patient in enumerate(probe_patients):
            delay = began + n / 5 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            high = {"t": (datetime.now(UTC) - timedelta(seconds=1)).strftime(
                "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", "hr": 135, "rr": 27, "spo2": 90,
                "temp": 39.4, "sbp": 88, "dbp": 50}
            sent[patient.patient_id] = time.monotonic()
            sender.send(patient, high)
        load.join()
        deadline = time.monotonic() + 180  # a saturated server drains its backlog first
        while len(sse.arrivals.keys() & sent.keys()) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        sender.close()
        sse.close()
    missing = [p for p in sent if p not in sse.arrivals]
    if missing:
        print(f"    {len(missing)} of {len(sent)} probe alerts did not arrive within 180 s")
    return sorted((sse.arrivals[p] - t) * 1000 for p, t in sent.items() if p in sse.arrivals)


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--readings", type=int, default=30000)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--latency-rate", type=float, default=1000.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--transports", default="http,mqtt")
    parser.add_argument("--ingest-workers", type=int, default=0,
                        help="more server processes that only ingest (the main one scores)")
    parser.add_argument("--main-without-mqtt", action="store_true",
                        help="with --ingest-workers: MQTT readings go to the workers only")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="carebridge-bench-monitoring-"))
    postgres = ThrowawayPostgres(durable=True).start() if args.backend == "postgresql" else None
    counter = iter(range(100))

    def fresh() -> str:
        n = next(counter)
        if postgres is not None:
            return postgres.create_database(f"bench_mon_{n}")
        return f"sqlite:///{workdir}/run{n}.db"

    # Bursts of thousands of messages: let the broker queue them all (docs/monitoring.md).
    broker = ThrowawayMosquitto(extra_config=["max_queued_messages 0"]).start()
    try:
        print(f"monitoring benchmark: {args.backend}, {args.readings} readings,"
              f" {args.patients} patients, {os.cpu_count()} cores,"
              f" {1 + args.ingest_workers} server process(es)")
        rows = []
        for transport in [t for t in args.transports.split(",") if t]:
            floor, floor_cpu = throughput(args, broker, transport, False, fresh())
            scored, scored_cpu = throughput(args, broker, transport, True, fresh())
            rows.append((transport, scored, floor))
            print(f"  {transport:4}: scored {scored:8,.0f} readings/s | floor (store only)"
                  f" {floor:8,.0f} readings/s | ratio {scored / floor:.2f}"
                  f"  (targets >= 2,000/s on SQLite, >= 0.5)", flush=True)
            print(f"        server CPU per reading: scored {scored_cpu:.3f} ms |"
                  f" floor {floor_cpu:.3f} ms", flush=True)
        if not args.skip_latency:
            lat = latency(args, broker, fresh())
            print(f"  alert latency at {args.latency_rate:,.0f} readings/s over MQTT:"
                  f" p50 {percentile(lat, 0.5):.0f} ms, p99 {percentile(lat, 0.99):.0f} ms,"
                  f" max {lat[-1]:.0f} ms ({len(lat)} probes; target p99 < 500 ms)")
            print(f"    mean {statistics.mean(lat):.0f} ms")
    finally:
        broker.stop()
        if postgres is not None:
            postgres.stop()


if __name__ == "__main__":
    main()
