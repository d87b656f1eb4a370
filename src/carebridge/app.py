"""Composition root: settings -> storage backend -> services -> ASGI application."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.applications import Starlette

from carebridge.api import create_api
from carebridge.config import Settings
from carebridge.ingest.hl7v2.listener import MllpSettings, attach_listener
from carebridge.services.resources import ResourceService
from carebridge.storage import Repository, open_repository


@dataclass
class Application:
    settings: Settings
    repository: Repository
    service: ResourceService
    asgi: Starlette


def build_application(settings: Settings) -> Application:
    repository = open_repository(settings.database_url)
    service = ResourceService(repository)
    asgi = create_api(
        service, max_body_bytes=settings.max_body_bytes, on_shutdown=repository.close
    )
    if settings.mllp_port is not None:  # HL7 v2 listener in the app's lifespan
        attach_listener(asgi, service, MllpSettings(
            settings.mllp_port, settings.host, settings.mllp_max_frame_bytes,
            settings.mllp_idle_timeout, settings.mllp_tls_cert, settings.mllp_tls_key))
    return Application(settings, repository, service, asgi)
