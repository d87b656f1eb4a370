"""The ``carebridge`` command: serve, migrate, import, demo."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from carebridge.app import InsecureRefused, build_application
from carebridge.config import Settings
from carebridge.demo import data_dir, demo_master_key
from carebridge.ingest.hl7v2.commands import hl7_app
from carebridge.runtime import settle as settle_gc
from carebridge.security import logfilter
from carebridge.security.commands import (
    audit_app,
    cli_ledger,
    client_app,
    demo_credentials,
    keys_app,
    user_app,
)
from carebridge.security.crypto import open_data_repository
from carebridge.security.policy import SYSTEM
from carebridge.services.importer import FileResult, Importer, expand_paths
from carebridge.services.resources import ResourceService
from carebridge.services.validation import MODES, WriteValidation
from carebridge.storage import open_repository
from carebridge.storage.base import HistoryQuery
from carebridge.storage.factory import DEFAULT_DATABASE_URL

app = typer.Typer(help="carebridge: FHIR R4 health data platform", no_args_is_help=True,
                  add_completion=False)
console = Console()
app.add_typer(hl7_app, name="hl7")
app.add_typer(user_app, name="user")
app.add_typer(client_app, name="client")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")

Database = Annotated[
    str, typer.Option("--database", "-d", envvar="CAREBRIDGE_DATABASE",
                      help="sqlite:///path or postgresql://user@host:port/db")
]
Host = Annotated[str, typer.Option(envvar="CAREBRIDGE_HOST", help="address to listen on")]
Port = Annotated[int, typer.Option(envvar="CAREBRIDGE_PORT", help="port to listen on")]
MllpPort = Annotated[int | None, typer.Option(
    envvar="CAREBRIDGE_MLLP_PORT", help="HL7 v2 MLLP port (off unless set; docs/hl7v2.md)")]


def _serve(settings: Settings) -> None:
    if os.environ.get("CAREBRIDGE_INSECURE_DEV") == "1" and not settings.insecure_dev:
        # Set by carebridge.testing.ServerProcess for programs that build their own Settings
        # (benchmarks); still loopback only and announced like the option.
        settings = dataclasses.replace(settings, insecure_dev=True)
    try:
        application = build_application(settings)
    except InsecureRefused as exc:
        console.print(f"[bold red]refused:[/] {exc}")
        raise typer.Exit(2) from None
    scheme = "https" if settings.tls_cert else "http"
    console.print(
        f"[bold green]carebridge[/] FHIR R4 at {scheme}://{settings.host}:{settings.port}/fhir"
        f"  (database: {_redact(settings.database_url)})"
    )
    if settings.mqtt_url:
        console.print(f"  MQTT device ingest from {settings.mqtt_url}"
                      + (f" ({settings.mqtt_workers} more ingest processes)"
                         if settings.mqtt_workers else ""))
    if settings.mllp_port is not None:
        console.print(f"  HL7 v2 over MLLP{' with TLS' if settings.mllp_tls_cert else ''} at"
                      f" {settings.host}:{settings.mllp_port}"
                      + (f" ({settings.mllp_workers} more MLLP processes)"
                         if settings.mllp_workers else ""))
        if settings.tls_cert and not settings.mllp_tls_cert:
            console.print("[bold yellow]  MLLP is in clear text (--mllp-plaintext)[/]")
    if settings.insecure_dev:
        console.print("[bold white on red] INSECURE DEVELOPMENT MODE: authentication and "
                      "access control are OFF. Loopback only; never use with real data. [/]")
    else:
        console.print(f"  authentication required; SMART configuration at "
                      f"{settings.base_url}/fhir/.well-known/smart-configuration")
    settle_gc()  # the application is built: its long-lived heap leaves the collector
    uvicorn.run(application.asgi, host=settings.host, port=settings.port, log_level="warning",
                access_log=False, ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key)


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}" if ":" in creds else url
    return url


InsecureDev = Annotated[bool, typer.Option(
    "--insecure-dev", envvar="CAREBRIDGE_INSECURE_DEV",
    help="turn authentication OFF (loopback addresses only; development)")]
PublicUrl = Annotated[str | None, typer.Option(
    envvar="CAREBRIDGE_PUBLIC_URL", help="the URL clients reach this server at (token issuer)")]
TlsCert = Annotated[str | None, typer.Option(envvar="CAREBRIDGE_TLS_CERT",
                                             help="PEM certificate: serve HTTPS")]
TlsKey = Annotated[str | None, typer.Option(envvar="CAREBRIDGE_TLS_KEY",
                                            help="PEM private key of --tls-cert")]
CorsOrigin = Annotated[list[str] | None, typer.Option(
    "--cors-origin", help="a browser origin allowed to call the API (repeatable)")]

MllpTlsCert = Annotated[str | None, typer.Option(
    envvar="CAREBRIDGE_MLLP_TLS_CERT",
    help="PEM certificate for MLLP over TLS (default: --tls-cert, when given)")]
MllpTlsKey = Annotated[str | None, typer.Option(
    envvar="CAREBRIDGE_MLLP_TLS_KEY", help="PEM private key of --mllp-tls-cert")]
MllpPlaintext = Annotated[bool, typer.Option(
    "--mllp-plaintext", envvar="CAREBRIDGE_MLLP_PLAINTEXT",
    help="MLLP without TLS even with --tls-cert (legacy senders on a trusted network)")]

Mqtt = Annotated[str | None, typer.Option(
    "--mqtt", envvar="CAREBRIDGE_MQTT", help="MQTT broker for device readings, mqtt://host:port")]
MqttWorkers = Annotated[int, typer.Option(
    "--mqtt-workers", envvar="CAREBRIDGE_MQTT_WORKERS", min=0,
    help="more processes that only ingest MQTT readings (one per spare core; "
         "docs/monitoring.md)")]

MllpWorkers = Annotated[int, typer.Option(
    "--mllp-workers", envvar="CAREBRIDGE_MLLP_WORKERS", min=0,
    help="more processes listening on the MLLP port (one per spare core; docs/hl7v2.md)")]


ValidationMode = Annotated[str, typer.Option(
    "--validation", envvar="CAREBRIDGE_VALIDATION",
    help="strict: reject invalid resources (default); warn: store them and keep the errors "
         "as warnings; off: check only the top-level shape (docs/validation.md)")]


def _validation_mode(mode: str) -> str:
    if mode not in MODES:
        raise typer.BadParameter(f"use one of {', '.join(MODES)}", param_hint="--validation")
    return mode


def security_settings(insecure_dev: bool = False, public_url: str | None = None,
                      tls_cert: str | None = None, tls_key: str | None = None,
                      cors_origin: list[str] | None = None) -> dict[str, Any]:
    return {"insecure_dev": insecure_dev, "public_url": public_url, "tls_cert": tls_cert,
            "tls_key": tls_key, "cors_origins": tuple(cors_origin or ()),
            "master_key_file": os.environ.get("CAREBRIDGE_MASTER_KEY_FILE"),
            "oidc_issuer": os.environ.get("CAREBRIDGE_OIDC_ISSUER"),
            "oidc_jwks_url": os.environ.get("CAREBRIDGE_OIDC_JWKS_URL"),
            "oidc_audience": os.environ.get("CAREBRIDGE_OIDC_AUDIENCE")}


@app.command()
def serve(database: Database = DEFAULT_DATABASE_URL, host: Host = "127.0.0.1",
          mllp_port: MllpPort = None,
          port: Port = 8080, insecure_dev: InsecureDev = False, public_url: PublicUrl = None,
          validation: ValidationMode = "strict",
          tls_cert: TlsCert = None, tls_key: TlsKey = None,
          cors_origin: CorsOrigin = None, mqtt: Mqtt = None,
          mllp_tls_cert: MllpTlsCert = None, mllp_tls_key: MllpTlsKey = None,
          mllp_plaintext: MllpPlaintext = False, mqtt_workers: MqttWorkers = 0,
          mllp_workers: MllpWorkers = 0) -> None:
    """Run the FHIR server (bearer tokens required; see docs/security.md).

    With a certificate (--tls-cert), HTTP and MLLP both use TLS; --mllp-tls-cert gives MLLP
    its own, and --mllp-plaintext keeps MLLP in clear for senders that cannot do TLS."""
    if mllp_tls_cert is None and not mllp_plaintext:
        mllp_tls_cert, mllp_tls_key = tls_cert, tls_key
    elif mllp_plaintext:
        if mllp_tls_cert is not None:
            raise typer.BadParameter("--mllp-plaintext contradicts --mllp-tls-cert",
                                     param_hint="--mllp-plaintext")
        mllp_tls_key = None
    if mqtt_workers and not mqtt:
        raise typer.BadParameter("needs --mqtt", param_hint="--mqtt-workers")
    if mllp_workers and mllp_port is None:
        raise typer.BadParameter("needs --mllp-port", param_hint="--mllp-workers")
    _serve(Settings(validation=_validation_mode(validation), mqtt_workers=mqtt_workers,
                    mllp_workers=mllp_workers,
                    mllp_port=mllp_port, mqtt_url=mqtt, mllp_tls_cert=mllp_tls_cert,
                    mllp_tls_key=mllp_tls_key,
                    database_url=database, host=host, port=port, **security_settings(
        insecure_dev, public_url, tls_cert, tls_key, cors_origin)))


@app.command("mqtt-worker", hidden=True)
def mqtt_worker(database: Database = DEFAULT_DATABASE_URL, mqtt: Mqtt = None,
                index: Annotated[int, typer.Option(min=0)] = 0,
                validation: ValidationMode = "strict",
                insecure_dev: InsecureDev = False) -> None:
    """One MQTT ingest process (``serve --mqtt-workers`` starts these; monitoring/workers.py)."""
    from carebridge.monitoring.workers import run_worker

    if not mqtt:
        raise typer.BadParameter("needs --mqtt", param_hint="--mqtt")
    run_worker(Settings(database_url=database, mqtt_url=mqtt,
                        validation=_validation_mode(validation),
                        **security_settings(insecure_dev)), index)


@app.command("mllp-worker", hidden=True)
def mllp_worker(database: Database = DEFAULT_DATABASE_URL, host: Host = "127.0.0.1",
                mllp_port: MllpPort = None, index: Annotated[int, typer.Option(min=0)] = 0,
                validation: ValidationMode = "strict",
                mllp_tls_cert: MllpTlsCert = None, mllp_tls_key: MllpTlsKey = None,
                insecure_dev: InsecureDev = False) -> None:
    """One more MLLP process (``serve --mllp-workers`` starts these; ingest/hl7v2/workers.py)."""
    from carebridge.ingest.hl7v2.workers import run_worker

    if mllp_port is None:
        raise typer.BadParameter("needs --mllp-port", param_hint="--mllp-port")
    # mllp_workers=1: this process shares the port with others (SO_REUSEPORT).
    run_worker(Settings(database_url=database, host=host, mllp_port=mllp_port,
                        mllp_workers=1, mllp_tls_cert=mllp_tls_cert, mllp_tls_key=mllp_tls_key,
                        validation=_validation_mode(validation),
                        **security_settings(insecure_dev)), index)


@app.command()
def migrate(database: Database = DEFAULT_DATABASE_URL) -> None:
    """Apply pending schema migrations and exit."""
    repo = open_repository(database, migrate=False)
    try:
        applied = repo.migrate()
        version = repo.schema_version()
    finally:
        repo.close()
    if applied:
        console.print(f"applied: {', '.join(applied)}")
    console.print(f"schema version {version}")


def import_paths(database: str, paths: list[Path], quiet: bool = False,
                 validation: str = "strict") -> list[FileResult]:
    repo = open_data_repository(database)  # encrypted at rest when a master key is set
    ledger = cli_ledger(repo)  # one AuditEvent per file, written before we return
    try:
        service = ResourceService(repo, validation=WriteValidation(repo, validation))
        importer = Importer(service, SYSTEM, ledger=ledger)
        files_to_load = expand_paths(paths)
        results: list[FileResult] = []
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, disable=quiet) as progress:
            task = progress.add_task("importing", total=len(files_to_load))
            for path in files_to_load:
                progress.update(task, description=f"importing {path.name}")
                result = importer.load_file(path)
                results.append(result)
                if not quiet:
                    mark = "[green]ok[/]" if result.ok else f"[red]failed[/]: {result.error}"
                    progress.console.print(
                        f"{path}: {mark} ({result.total} resources, {result.seconds:.2f} s)")
                progress.advance(task)
        return results
    finally:
        try:
            ledger.close()
        finally:
            repo.close()


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(exists=True, help="files or folders")],
    database: Database = DEFAULT_DATABASE_URL,
    validation: ValidationMode = "strict",
) -> None:
    """Load transaction/batch bundles, resources or NDJSON files (or folders of them).

    Each file loads all or nothing; a failed file does not stop the others. Exits 1 if any
    file failed.
    """
    started = time.perf_counter()
    results = import_paths(database, paths, validation=_validation_mode(validation))
    loaded = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    by_type: dict[str, int] = {}
    for r in loaded:
        for rtype, n in r.resources.items():
            by_type[rtype] = by_type.get(rtype, 0) + n
    table = Table(title="import summary")
    table.add_column("resource type")
    table.add_column("count", justify="right")
    for rtype, n in sorted(by_type.items()):
        table.add_row(rtype, str(n))
    console.print(table)
    total = sum(by_type.values())
    seconds = time.perf_counter() - started
    console.print(f"{len(loaded)} files loaded, {len(failed)} failed, {total} resources"
                  f" in {seconds:.1f} s")
    for r in failed:
        console.print(f"[red]failed[/] {r.path}: {r.error}")
    if failed:
        raise typer.Exit(1)


@app.command()
def demo(database: Database = DEFAULT_DATABASE_URL, host: Host = "127.0.0.1",
         mllp_port: MllpPort = 2575,
         port: Port = 8080,
         patients: Annotated[int, typer.Option(help="simulated monitored patients")] = 12,
         rate: Annotated[float, typer.Option(help="simulated readings per second")] = 20.0,
         ) -> None:
    """Load the sample patients (once) and run the server, encrypted at rest."""
    key = demo_master_key(database)
    console.print("Encryption at rest: on, master key "
                  + (f"{key} (demo only; keep real keys off the database host)" if key
                     else "from the environment"))
    repo = open_data_repository(database)  # sealed bodies read when a key is set
    try:
        service = ResourceService(repo)
        have = service.count(SYSTEM, "Patient").get("Patient", 0)
    finally:
        repo.close()
    if not have:
        results = import_paths(database, [data_dir()])
        if not all(r.ok for r in results):
            raise typer.Exit(1)
    repo = open_data_repository(database)  # sealed bodies read when a key is set
    try:
        with repo.session() as session:
            page = session.history(HistoryQuery("Patient", count=5))
    finally:
        repo.close()
    console.print("Sample patients:")
    for _, version in page.entries:
        console.print(f"  http://{host}:{port}/fhir/Patient/{version.id}")
    if page.entries:
        demo_credentials(database, f"http://{host}:{port}", page.entries[0][1].id)
    _start_demo_simulation(database, patients, rate)
    _serve(Settings(mllp_port=mllp_port, database_url=database, host=host, port=port,
                    master_key_file=os.environ.get("CAREBRIDGE_MASTER_KEY_FILE")))


def _start_demo_simulation(database: str, patients: int, rate: float) -> None:
    """Remote monitoring in the demo: simulated patients stream vitals through the device
    gateway; every 10 s a table shows each one's NEWS2 and open alerts."""
    from carebridge.monitoring.live import Simulation, start_in_background

    def show(rows: list[dict[str, Any]]) -> None:
        table = Table(title="remote monitoring (simulated)")
        for column in ("patient", "scenario", "device flaws", "NEWS2", "band", "open alerts"):
            table.add_column(column)
        for r in rows:
            # the end of the id: server ids (UUID v7) of one load share their first digits
            table.add_row(r["patient"][-12:], r["scenario"], r["flaws"],
                          "" if r["news2"] is None else str(r["news2"]), r["band"] or "",
                          r["alerts"])
        console.print(table)

    console.print(f"Simulating {patients} monitored patients at {rate:g} readings/s; alerts"
                  " stream at /monitoring/alerts/stream")
    start_in_background(Simulation(database, None, None, patients, rate, 24 * 3600.0), show)


@app.command()
def simulate(
    database: Database = DEFAULT_DATABASE_URL,
    patients: Annotated[int, typer.Option(help="simulated patients (each with a device)")] = 10,
    rate: Annotated[float, typer.Option(help="readings per second, all devices")] = 20.0,
    duration: Annotated[float, typer.Option(help="seconds to run")] = 600.0,
    url: Annotated[str | None, typer.Option(
        help="server to POST readings to, e.g. http://127.0.0.1:8080 (default: in-process"
             " through the device gateway)")] = None,
    mqtt: Mqtt = None,
    onset: Annotated[float, typer.Option(help="seconds before scripted deteriorations")] = 20.0,
) -> None:
    """Stream simulated vital signs (scripted deteriorations, flaky devices) over HTTP, MQTT
    or in-process. Patients, devices and their credentials are created in the database first."""
    from carebridge.monitoring.live import Simulation

    simulation = Simulation(database, url, mqtt, patients, rate, duration, onset)
    population = simulation.provision()
    console.print(f"{patients} simulated patients: {population.summary()}")
    sent = simulation.stream(population)
    console.print(f"sent {sent} reading sets")


devices_app = typer.Typer(help="device fleet health", no_args_is_help=True)
app.add_typer(devices_app, name="devices")


@devices_app.command("report")
def devices_report(
    database: Database = DEFAULT_DATABASE_URL,
    since: Annotated[str, typer.Option(help="start of the window (FHIR instant or date)")] = "",
) -> None:
    """Availability per device and per ward since --since (default: the last 24 hours)."""
    from datetime import timedelta

    from carebridge.fhir.resource import now_instant, parse_instant
    from carebridge.monitoring.report import fleet_report

    repo = open_data_repository(database)  # sealed bodies read when a key is set
    try:
        until = now_instant()
        start = parse_instant(since) if since else until - timedelta(days=1)
        report = fleet_report(ResourceService(repo), start, until)
    finally:
        repo.close()
    table = Table(title=f"devices {report['since']} .. {report['until']}")
    for column in ("device", "patient", "ward", "status", "last seen", "battery", "available"):
        table.add_column(column)
    for d in report["devices"]:
        table.add_row(d["device"], d["patient"] or "", d["ward"], d["status"],
                      d["lastSeen"] or "",
                      "" if d["battery"] is None else f"{d['battery']:.0f} %",
                      f"{d['availability']:.1%}")
    console.print(table)
    wards = Table(title="wards")
    for column in ("ward", "devices", "available"):
        wards.add_column(column)
    for w in report["wards"]:
        wards.add_row(w["ward"], str(w["devices"]), f"{w['availability']:.1%}")
    console.print(wards)


quality = typer.Typer(help="Data quality across the store", no_args_is_help=True)
app.add_typer(quality, name="quality")


@quality.command("report")
def quality_report(database: Database = DEFAULT_DATABASE_URL,
                   limit: Annotated[int, typer.Option(help="examples listed per rule")] = 3,
                   ) -> None:
    """Validate and check every current resource; summarise the issues by resource type,
    rule and severity (docs/validation.md)."""
    from carebridge.quality.report import build_report, render_report

    repo = open_data_repository(database)  # sealed bodies read when a key is set
    try:
        report = build_report(repo)
    finally:
        repo.close()
    render_report(report, console, limit)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    logfilter.install()  # no exception messages or tracebacks (possible PHI) in the logs
    app()
