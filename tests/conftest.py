"""Shared pytest fixtures."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from carebridge.api import create_api
from carebridge.services import ResourceService
from carebridge.storage import Repository, open_repository
from carebridge.testing import ServiceUnavailable, ThrowawayMosquitto, ThrowawayPostgres

# --------------------------------------------------------------------------------------------
# Throwaway services (carebridge.testing.services).
#
# One private PostgreSQL and one private Mosquitto per test session, on free loopback ports,
# started from the installed binaries (apt-get installs them when missing and we are root).
# A test that needs a service and cannot get one FAILS: it is never skipped.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL server started once per session; connect to ``postgres_server.url``."""
    server = ThrowawayPostgres()
    try:
        server.start()
    except ServiceUnavailable as exc:
        pytest.fail(f"cannot start the throwaway PostgreSQL server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mosquitto_server() -> Iterator[ThrowawayMosquitto]:
    """A Mosquitto broker started once per session; see ``.host``, ``.port``, ``.url``."""
    broker = ThrowawayMosquitto()
    try:
        broker.start()
    except ServiceUnavailable as exc:
        pytest.fail(f"cannot start the throwaway Mosquitto broker: {exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


# ------------------------------------------------------------------ end of throwaway services

# --------------------------------------------------------------------------------------------
# Storage backends. Tests that take ``database_url``, ``repository``, ``service`` or ``client``
# run once per backend: SQLite in a temporary file, PostgreSQL in a fresh database of the
# session's throwaway server.
# --------------------------------------------------------------------------------------------

_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/carebridge.db"
    server: ThrowawayPostgres = request.getfixturevalue("postgres_server")
    return server.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="module", params=_BACKENDS)
def module_database_url(request: pytest.FixtureRequest,
                        tmp_path_factory: pytest.TempPathFactory) -> str:
    """Like ``database_url``, but one database per test module (for costly fixture data)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db')}/carebridge.db"
    server: ThrowawayPostgres = request.getfixturevalue("postgres_server")
    return server.create_database(f"m_{uuid.uuid4().hex[:16]}")


def backend_of(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite:") else "postgresql"


@pytest.fixture
def repository(database_url: str) -> Iterator[Repository]:
    repo = open_repository(database_url)
    try:
        yield repo
    finally:
        repo.close()


@pytest.fixture
def service(repository: Repository) -> ResourceService:
    return ResourceService(repository)


@pytest.fixture
def client(service: ResourceService) -> Iterator[TestClient]:
    with TestClient(create_api(service), raise_server_exceptions=False) as test_client:
        yield test_client


SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"
