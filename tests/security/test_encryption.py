"""Point 6: encryption at rest. Bodies and history are sealed with AES-256-GCM under wrapped
data keys; only the documented search index holds patient data in clear."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from cryptography.exceptions import InvalidTag

from carebridge.security.audit_events import rest_event
from carebridge.security.authority import Authority
from carebridge.security.crypto import MAGIC, EncryptedRepository, LocalMasterKey
from carebridge.security.policy import SYSTEM
from carebridge.services import ResourceService
from carebridge.services.search import SearchService
from carebridge.storage import Repository, open_repository

NAME = "Quibblethwaite"
MRN = "MRN-99887766"
#: Where patient data may appear in clear: the search index (docs/security.md).
INDEX_TABLES = ("idx_",)


def _patient() -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": NAME, "given": ["Ada"]}],
            "identifier": [{"system": "urn:mrn", "value": MRN}], "birthDate": "1970-01-02"}


@pytest.fixture
def master() -> LocalMasterKey:
    return LocalMasterKey(secrets.token_bytes(32))


@pytest.fixture
def encrypted(database_url: str, master: LocalMasterKey) -> Iterator[EncryptedRepository]:
    repo = EncryptedRepository(open_repository(database_url), master)
    try:
        yield repo
    finally:
        repo.close()


def _tables(repo: Repository) -> list[str]:
    with repo.session() as s:
        if repo.dialect == "sqlite":
            rows = s.query("SELECT name FROM sqlite_master WHERE type = 'table'", ())
        else:
            rows = s.query("SELECT table_name FROM information_schema.tables WHERE"
                           " table_schema = current_schema()", ())
    return [r[0] for r in rows]


def _clear_hits(plain: Repository, needles: list[str]) -> dict[str, int]:
    """Cells holding a needle in clear, per table outside the search index (read with a plain,
    unencrypting connection: what someone with the database files sees)."""
    hits: dict[str, int] = {}
    for table in _tables(plain):
        if table.startswith(INDEX_TABLES):
            continue
        with plain.session() as s:
            rows = s.query(f"SELECT * FROM {table}", ())
        for row in rows:
            for value in row:
                raw = bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
                for needle in needles:
                    if needle.encode() in raw or base64.b64encode(needle.encode()) in raw:
                        hits[table] = hits.get(table, 0) + 1
    return hits


def test_no_patient_data_in_clear_outside_the_index(encrypted: EncryptedRepository,
                                                    database_url: str) -> None:
    service = ResourceService(encrypted)
    pid = service.create(SYSTEM, "Patient", _patient()).version.id
    service.update(SYSTEM, "Patient", pid, {**_patient(), "id": pid, "gender": "female"})
    authority = Authority.open(encrypted, "http://x")
    authority.ledger.record(rest_event("search-type", 200, SYSTEM, address="1.2.3.4",
                                       resource_type="Patient", resource_id=None,
                                       query=f"name={NAME}&identifier={MRN}"))
    authority.ledger.flush()
    # it all reads back, and search still finds it (through the index)
    assert service.read(SYSTEM, "Patient", pid).body is not None
    assert NAME.encode() in (service.read(SYSTEM, "Patient", pid).body or b"")
    found = SearchService(service).search(SYSTEM, "Patient", [("family", NAME)])
    assert [m.id for m in found.matches] == [pid]
    assert NAME.encode() in found.matches[0].body
    history = service.history(SYSTEM, "Patient", pid)
    assert all(NAME.encode() in (v.body or b"") for _, v in history.entries)
    plain = open_repository(database_url)
    try:
        assert _clear_hits(plain, [NAME, MRN]) == {}
        with plain.session() as s:
            stored = s.query("SELECT body FROM resource WHERE id = "
                             + ("?" if plain.dialect == "sqlite" else "%s"), (pid,))
            keys = s.query("SELECT private_jwk FROM sec_signing_key", ())
        assert bytes(stored[0][0]).startswith(MAGIC)
        assert all(b'"d"' not in base64.b64decode(k[0]) for k in keys)  # private keys sealed
        # ... and the index does hold what search needs: the documented trade-off
        with plain.session() as s:
            norms = [r[0] for r in s.query("SELECT norm FROM idx_string", ())]
        assert any(NAME.lower() in (n or "") for n in norms)
    finally:
        plain.close()
    report = authority_report(encrypted)
    assert report


def authority_report(repo: Repository) -> bool:
    from carebridge.security.audit import verify_ledger

    return verify_ledger(repo, Authority.open(repo, "http://x").keys).ok


def test_clear_bodies_from_before_still_read(database_url: str,
                                             master: LocalMasterKey) -> None:
    plain = open_repository(database_url)
    pid = ResourceService(plain).create(SYSTEM, "Patient", _patient()).version.id
    plain.close()
    repo = EncryptedRepository(open_repository(database_url), master)
    try:
        assert NAME.encode() in (ResourceService(repo).read(SYSTEM, "Patient", pid).body or b"")
    finally:
        repo.close()


def test_rotation_and_rewrap_without_reencrypting(database_url: str,
                                                  master: LocalMasterKey) -> None:
    repo = EncryptedRepository(open_repository(database_url), master)
    service = ResourceService(repo)
    first = service.create(SYSTEM, "Patient", _patient()).version.id
    old_kid, _ = repo.keys.active()
    new_master = LocalMasterKey(secrets.token_bytes(32))
    assert repo.keys.rotate(new_master) == 1
    assert repo.keys.active()[0] != old_kid
    second = service.create(SYSTEM, "Patient", _patient()).version.id
    assert service.read(SYSTEM, "Patient", first).body  # the running process keeps working
    repo.close()
    fresh = EncryptedRepository(open_repository(database_url), new_master)
    try:
        for pid in (first, second):
            assert NAME.encode() in (ResourceService(fresh).read(SYSTEM, "Patient", pid).body
                                     or b"")
    finally:
        fresh.close()
    with pytest.raises(InvalidTag):  # the old master key no longer opens the data keys
        EncryptedRepository(open_repository(database_url), master).close()


def test_a_wrong_master_key_opens_nothing(database_url: str, master: LocalMasterKey) -> None:
    repo = EncryptedRepository(open_repository(database_url), master)
    ResourceService(repo).create(SYSTEM, "Patient", _patient())
    repo.close()
    with pytest.raises(InvalidTag):
        EncryptedRepository(open_repository(database_url), LocalMasterKey(bytes(32)))


def test_master_key_text_forms() -> None:
    raw = secrets.token_bytes(32)
    assert LocalMasterKey.from_text(base64.b64encode(raw)).key_id == LocalMasterKey(raw).key_id
    with pytest.raises(ValueError, match="32"):
        LocalMasterKey.from_text("c2hvcnQ=")


def test_totp_seeds_are_sealed(encrypted: EncryptedRepository) -> None:
    import pyotp

    from carebridge.security.store import SecurityStore

    users = Authority.open(encrypted, "http://x").users
    secret = users.add("house", "correct horse battery", {"physician"})
    assert secret
    stored = SecurityStore(encrypted.inner).query(
        "SELECT totp_secret FROM sec_user WHERE username = 'house'")[0][0]
    assert stored.startswith("sealed:") and secret not in stored
    assert users.authenticate("house", "correct horse battery", pyotp.TOTP(secret).now())


def test_keys_reload_inside_a_write_and_a_read(database_url: str,
                                               master: LocalMasterKey) -> None:
    """Data keys are reloaded a minute after the last load (another process may have rotated
    them), and a reload can fall due while the caller is inside a transaction: sealing a body
    in a write, or opening one sealed under a key this process has not seen in a read. On
    SQLite a reload there once failed ("cannot start a transaction within a transaction"),
    and every write failed after the server's first minute."""
    repo = EncryptedRepository(open_repository(database_url), master)
    other = EncryptedRepository(open_repository(database_url), master)  # another process
    try:
        service = ResourceService(repo)
        service.create(SYSTEM, "Patient", _patient())
        repo.keys._loaded -= 120  # a minute and more since the last load
        created = service.create(SYSTEM, "Patient", _patient())  # sealed inside the write
        assert repo.keys._loaded > 0 and time.monotonic() - repo.keys._loaded < 60
        other.keys.rotate()  # a key the first process does not know yet
        rotated = ResourceService(other).create(SYSTEM, "Patient", _patient())
        with repo.session() as session:  # opened inside a read transaction
            found = session.read("Patient", rotated.version.id)
        assert found is not None and orjson.loads(found.body)["name"] == _patient()["name"]
        repo.keys._loaded -= 120
        assert service.read(SYSTEM, "Patient", created.version.id).id == (
            created.version.id)
        assert repo.keys.active()[0] == other.keys.active()[0]  # the rotation was seen
    finally:
        other.close()
        repo.close()
