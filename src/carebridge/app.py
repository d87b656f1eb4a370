"""Composition root: settings -> storage backend -> services -> ASGI application."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.applications import Starlette

from carebridge.api import create_api
from carebridge.config import Settings
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
    return Application(settings, repository, service, asgi)
