"""Fixtures for the HL7 v2 tests: the processor over each storage backend, sample messages."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from carebridge.ingest.hl7v2.processor import Hl7Processor
from carebridge.services import ResourceService
from carebridge.services.validation import WriteValidation
from carebridge.storage import Repository

DATA = Path(__file__).parent / "data"


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


def python_hl7_samples() -> SimpleNamespace:
    """python-hl7's samples.py, kept as data (.py.txt: third-party code, not linted)."""
    return SimpleNamespace(**runpy.run_path(str(DATA / "python_hl7_samples.py.txt")))


@pytest.fixture
def hl7(repository: Repository) -> Hl7Processor:
    """The processor over a service that validates every write strictly (as the server's
    does), so every test also shows the mapped resources are valid R4."""
    return Hl7Processor(ResourceService(repository,
                                        validation=WriteValidation(repository, "strict")))


def stored(repository: Repository, resource_type: str) -> list[dict[str, Any]]:
    """Current, not deleted resources of a type, read straight from the store."""
    mark = "?" if repository.dialect == "sqlite" else "%s"
    with repository.session() as session:
        rows = session.query(
            f"SELECT body FROM resource WHERE resource_type = {mark} AND NOT deleted"
            " ORDER BY id", (resource_type,))
    return [orjson.loads(bytes(row[0])) for row in rows]


def versions(repository: Repository) -> int:
    with repository.session() as session:
        return int(session.query("SELECT count(*) FROM resource_history", ())[0][0])


def ack_fields(ack: bytes | str) -> dict[str, list[str]]:
    """Segments of an ACK by name -> fields (MSA-1 is ['MSA', code, ...][1])."""
    text = ack.decode() if isinstance(ack, bytes) else ack
    text = text.strip("\x0b\x1c\r")
    return {line[:3]: line.split("|") for line in text.split("\r") if line}


def feed_provenance(repository: Repository) -> list[dict[str, Any]]:
    """The Provenance resources this feed wrote (one per message), not those other parts of
    the server write (e.g. the validator's record of warnings)."""
    return [p for p in stored(repository, "Provenance")
            if p["entity"][0]["what"].get("identifier", {}).get("system")
            == "urn:carebridge:hl7v2:message"]
