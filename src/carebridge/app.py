"""Composition root: settings -> storage backend -> services -> ASGI application."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from starlette.applications import Starlette

from carebridge.api import create_api
from carebridge.api.middleware import ApiSecurity
from carebridge.config import Settings
from carebridge.events.outbox import OutboxRepository
from carebridge.ingest.hl7v2.listener import MllpSettings, attach_listener
from carebridge.monitoring.runtime import Monitoring, MonitoringSettings
from carebridge.monitoring.workers import attach_workers
from carebridge.search import index
from carebridge.security.authority import Authority
from carebridge.security.crypto import cipher_of, open_data_repository
from carebridge.security.policy import AccessPolicy, AllowAll, SmartPolicy
from carebridge.security.tokens import ExternalIssuer
from carebridge.services.resources import ResourceService
from carebridge.services.validation import WriteValidation
from carebridge.storage import Repository

log = logging.getLogger("carebridge.security")


class InsecureRefused(Exception):
    """``--insecure-dev`` was asked for on an address other hosts can reach."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Application:
    settings: Settings
    repository: Repository
    service: ResourceService
    asgi: Starlette
    authority: Authority | None = None
    monitoring: Monitoring | None = None


@dataclass
class Stores:
    """What every process of a deployment opens the same way: the (encrypted, outbox)
    repository, the access policy, the Authority (tokens, audit ledger; None with
    ``--insecure-dev``) and the validating resource service."""

    repository: Repository
    authority: Authority | None
    policy: AccessPolicy
    service: ResourceService


def build_stores(settings: Settings) -> Stores:
    # Resource bodies and history are encrypted at rest when a master key is configured
    # (security.crypto); every write also fills the transactional outbox the monitoring
    # engine consumes.
    stored = open_data_repository(settings.database_url, settings.master_key_file)
    if cipher_of(stored) is None:
        log.warning("ENCRYPTION AT REST IS OFF: set CAREBRIDGE_MASTER_KEY_FILE (docs/security.md)")
    repository: Repository = OutboxRepository(stored)
    authority: Authority | None = None
    policy: AccessPolicy
    if settings.insecure_dev:
        log.warning("AUTHENTICATION IS OFF (--insecure-dev): every request may do anything")
        policy = AllowAll()
    else:
        external: tuple[ExternalIssuer, ...] = ()
        if settings.oidc_issuer and settings.oidc_jwks_url:
            external = (ExternalIssuer(settings.oidc_issuer, settings.oidc_jwks_url,
                                       settings.oidc_audience or settings.base_url + "/fhir"),)
        authority = Authority.open(repository, settings.base_url, external=external)
        policy = SmartPolicy()
    validation = WriteValidation(repository, settings.validation)
    validation.warm_up()
    index.warm_up()
    service = ResourceService(repository, policy=policy, validation=validation)
    return Stores(repository, authority, policy, service)


def mllp_settings(settings: Settings) -> MllpSettings:
    """The MLLP listener of a server or of one of its ``--mllp-workers``."""
    assert settings.mllp_port is not None
    return MllpSettings(settings.mllp_port, settings.host, settings.mllp_max_frame_bytes,
                        settings.mllp_idle_timeout, settings.mllp_tls_cert,
                        settings.mllp_tls_key, reuse_port=settings.mllp_workers > 0)


def build_application(settings: Settings) -> Application:
    if settings.insecure_dev and not is_loopback(settings.host):
        raise InsecureRefused(
            f"--insecure-dev turns authentication off and is only allowed on a loopback"
            f" address, not {settings.host!r}")
    stores = build_stores(settings)
    repository, authority, service = stores.repository, stores.authority, stores.service
    security = (ApiSecurity(insecure=True) if authority is None else
                ApiSecurity(authority=authority, tls=bool(settings.tls_cert),
                            cors_origins=settings.cors_origins))
    monitoring = None
    if settings.monitoring:
        monitoring = Monitoring(service, MonitoringSettings(mqtt_url=settings.mqtt_url))
        if authority is not None:  # device batches are audited (HTTP and MQTT alike)
            monitoring.gateway.ledger = authority.ledger
    asgi = create_api(
        service, max_body_bytes=settings.max_body_bytes, on_shutdown=repository.close,
        security=security, monitoring=monitoring,
    )
    if settings.mllp_port is not None:  # HL7 v2 listener in the app's lifespan
        attach_listener(asgi, service, mllp_settings(settings),
                        ledger=authority.ledger if authority else None)  # audited unless dev
        if settings.mllp_workers:  # more processes listening on the same port
            from carebridge.ingest.hl7v2.workers import attach_mllp_workers

            attach_mllp_workers(asgi, settings, settings.mllp_workers)
    if settings.mqtt_workers and settings.mqtt_url and settings.monitoring:
        attach_workers(asgi, settings, settings.mqtt_workers)  # more MQTT ingest processes
    return Application(settings, repository, service, asgi, authority, monitoring)
