"""Fixtures for the security tests: a secured application over each storage backend."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from argon2 import PasswordHasher
from starlette.testclient import TestClient

from carebridge.api import create_api
from carebridge.api.middleware import ApiSecurity
from carebridge.security.authority import Authority
from carebridge.security.policy import SmartPolicy
from carebridge.services import ResourceService
from carebridge.storage import Repository

BASE = "http://testserver"
#: Argon2id with cheap parameters: tests only (production keeps argon2-cffi's defaults).
CHEAP_ARGON2 = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


@dataclass
class Secured:
    client: TestClient
    authority: Authority
    service: ResourceService

    def token(self, scope: str, roles: set[str], *, patient: str | None = None,
              subject: str = "dr-who", client_id: str = "test-app") -> str:
        return self.authority.issuer.issue(
            subject=subject, client_id=client_id, scope=scope, roles=frozenset(roles),
            patient=patient).token

    def headers(self, scope: str, roles: set[str], **kw: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(scope, roles, **kw)}"}  # type: ignore[arg-type]


@pytest.fixture
def secured(repository: Repository) -> Iterator[Secured]:
    authority = Authority.open(repository, BASE, hasher=CHEAP_ARGON2)
    service = ResourceService(repository, policy=SmartPolicy())
    app = create_api(service, security=ApiSecurity(authority=authority))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Secured(client, authority, service)
