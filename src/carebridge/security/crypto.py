"""Encryption at rest: resource bodies and history (and the audit ledger's copies) sealed with
AES-256-GCM under data keys, which are themselves wrapped by a master key.

- **Master key** (:class:`KeyProvider`): :class:`LocalMasterKey` reads 32 bytes from a key file
  or the ``CAREBRIDGE_MASTER_KEY`` environment variable (base64). A KMS (AWS KMS, Vault
  transit, an HSM) plugs in by implementing ``key_id``/``wrap``/``unwrap`` and naming its
  factory in ``CAREBRIDGE_KEY_PROVIDER=package.module:factory``; the master key then never
  leaves the KMS.
- **Data keys** (``sec_data_key``): random 256-bit keys, stored only wrapped. The newest active
  one seals new writes; older ones stay to open what they sealed. ``carebridge keys rotate``
  starts a new data key and, given a new master key, re-wraps every data key under it: bodies
  are not re-encrypted, and running servers keep their unwrapped keys in memory, so nothing
  stops (no downtime); servers started afterwards need the new master key.
- **Sealed value**: ``b"\\x00cbe" | key id (8 bytes) | nonce (12) | ciphertext+tag``. JSON
  never starts with a NUL byte, so sealed and clear values (written before encryption was
  turned on) tell themselves apart and both read back.

:class:`EncryptedRepository` wraps any Repository at the storage boundary: versions are sealed
as they are written, and every value read back (by ``read``/``history`` or by any SQL a
search runs through ``query``) that carries the seal is opened. The search index tables are not
encrypted: they hold what must stay searchable (see docs/security.md, "What stays in clear").

AES-GCM comes from ``cryptography``; this module only frames and routes it.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from carebridge.security.store import SecurityStore
from carebridge.storage.base import HistoryPage, HistoryQuery, Repository, Session, StoredVersion
from carebridge.storage.base import Write as StorageWrite
from carebridge.storage.wrapper import RepositoryWrapper

log = logging.getLogger(__name__)

MAGIC = b"\x00cbe"
_KID = 8
_NONCE = 12
_HEADER = len(MAGIC) + _KID + _NONCE


class KeyProvider(Protocol):
    """Wraps and unwraps data keys under a master key (the KMS plug-in point)."""

    @property
    def key_id(self) -> str: ...

    def wrap(self, data_key: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes) -> bytes: ...


class LocalMasterKey:
    """A 256-bit master key held by this process (from a file or the environment)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the master key must be 32 bytes (256 bits)")
        self._aead = AESGCM(key)
        self.key_id = "local:" + AESGCM(key).encrypt(bytes(12), b"key-id", None)[:6].hex()

    @classmethod
    def from_text(cls, text: str | bytes) -> LocalMasterKey:
        raw = text.strip() if isinstance(text, bytes) else text.strip().encode()
        if len(raw) == 32:
            return cls(raw)
        try:
            return cls(base64.b64decode(raw, validate=True))
        except (binascii.Error, ValueError):
            raise ValueError("the master key must be 32 raw bytes or their base64") from None

    def wrap(self, data_key: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, data_key, b"carebridge-data-key")

    def unwrap(self, wrapped: bytes) -> bytes:
        return self._aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], b"carebridge-data-key")


def generate_master_key(path: Path) -> None:
    """Write a new random master key (base64) readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")


def load_key_provider(key_file: str | None = None) -> KeyProvider | None:
    """The configured master key: ``CAREBRIDGE_KEY_PROVIDER`` (a KMS factory), a key file
    (``key_file`` or ``CAREBRIDGE_MASTER_KEY_FILE``), or ``CAREBRIDGE_MASTER_KEY``; None when
    none is configured (encryption off)."""
    factory = os.environ.get("CAREBRIDGE_KEY_PROVIDER")
    if factory:
        module, _, name = factory.partition(":")
        provider: KeyProvider = getattr(importlib.import_module(module), name)()
        return provider
    key_file = key_file or os.environ.get("CAREBRIDGE_MASTER_KEY_FILE")
    if key_file:
        return LocalMasterKey.from_text(Path(key_file).read_bytes())
    if os.environ.get("CAREBRIDGE_MASTER_KEY"):
        return LocalMasterKey.from_text(os.environ["CAREBRIDGE_MASTER_KEY"])
    return None


class DataKeys:
    """The data keys in ``sec_data_key``, unwrapped on first use and kept in memory."""

    def __init__(self, store: SecurityStore, provider: KeyProvider) -> None:
        self.store, self.provider = store, provider
        self._keys: dict[bytes, AESGCM] = {}
        self._active: bytes | None = None
        self._loaded = 0.0
        self._lock = threading.Lock()
        # Reloads run on a thread of their own: the caller is often inside a transaction of
        # its own connection (sealing a body in a write), and SQLite's per-thread connection
        # cannot begin another one there.
        self._reloader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="data-keys")

    def active(self) -> tuple[bytes, AESGCM]:
        if self._active is None:
            self._reload(create=True)
        elif time.monotonic() - self._loaded > 60:  # another process may have rotated
            try:
                self._reload(create=False)
            except Exception:  # the cached key still seals correctly: keep writing
                log.warning("data keys could not be reloaded; the active one stays in use",
                            exc_info=True)
                self._loaded = time.monotonic()
        assert self._active is not None
        return self._active, self._keys[self._active]

    def get(self, kid: bytes) -> AESGCM:
        if kid not in self._keys:
            self._reload(create=False)
        return self._keys[kid]

    def close(self) -> None:
        self._reloader.shutdown(wait=True)

    def _reload(self, *, create: bool) -> None:
        self._reloader.submit(self._load, create).result(timeout=30)

    def _load(self, create: bool = True) -> None:
        with self._lock:
            rows = self.store.query(
                "SELECT kid, wrapped, active FROM sec_data_key ORDER BY created DESC, kid")
            if not any(active for _, _, active in rows):
                if not create and self._active is not None:
                    return  # a rotation between its two steps: the next reload sees it
                self._create()
                rows = self.store.query(
                    "SELECT kid, wrapped, active FROM sec_data_key ORDER BY created DESC, kid")
            for kid, wrapped, _active in rows:
                key = bytes.fromhex(kid)
                if key not in self._keys:
                    self._keys[key] = AESGCM(self.provider.unwrap(bytes(wrapped)))
            self._active = next(bytes.fromhex(k) for k, _, a in rows if a)
            self._loaded = time.monotonic()

    def _create(self) -> None:
        data_key = AESGCM.generate_key(bit_length=256)
        self.store.execute(
            "INSERT INTO sec_data_key (kid, wrapped, master_id, active, created)"
            " VALUES (?, ?, ?, 1, ?)", (secrets.token_bytes(_KID).hex(),
                                        self.provider.wrap(data_key), self.provider.key_id,
                                        time.time()))

    def rotate(self, new_provider: KeyProvider | None = None) -> int:
        """Start a new data key; with ``new_provider``, re-wrap every data key under it (one
        transaction). Returns the number of data keys re-wrapped."""
        self._load()
        rewrapped = 0
        with self.store.repository.session(write=True) as session:
            rows = self.store.query("SELECT kid, wrapped FROM sec_data_key", session=session)
            if new_provider is not None:
                for kid, wrapped in rows:
                    data_key = self.provider.unwrap(bytes(wrapped))
                    self.store.execute(
                        "UPDATE sec_data_key SET wrapped = ?, master_id = ? WHERE kid = ?",
                        (new_provider.wrap(data_key), new_provider.key_id, kid),
                        session=session)
                    rewrapped += 1
                self.provider = new_provider
            self.store.execute("UPDATE sec_data_key SET active = 0 WHERE active = 1",
                               session=session)
        self._create()
        self._active = None
        self._load()
        return rewrapped


class BodyCipher:
    """Seals and opens values (AES-256-GCM, a fresh 96-bit nonce each time)."""

    def __init__(self, keys: DataKeys) -> None:
        self.keys = keys

    def seal(self, clear: bytes) -> bytes:
        kid, aead = self.keys.active()
        nonce = secrets.token_bytes(_NONCE)
        return MAGIC + kid + nonce + aead.encrypt(nonce, clear, MAGIC)

    def open(self, value: bytes) -> bytes:
        if value[:4] != MAGIC:
            return value  # written in clear (before encryption was turned on)
        kid = value[4:4 + _KID]
        nonce = value[4 + _KID:_HEADER]
        return self.keys.get(kid).decrypt(nonce, value[_HEADER:], MAGIC)

    def open_row(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        if not any(isinstance(v, bytes | memoryview) and bytes(v[:4]) == MAGIC for v in row):
            return row
        return tuple(self.open(bytes(v)) if isinstance(v, bytes | memoryview) else v
                     for v in row)


class EncryptedSession:
    """A session that seals bodies on the way in and opens them on the way out."""

    def __init__(self, inner: Session, cipher: BodyCipher) -> None:
        self.inner, self.cipher = inner, cipher

    def _open(self, version: StoredVersion | None) -> StoredVersion | None:
        if version is None or version.body is None or version.body[:4] != MAGIC:
            return version
        return replace(version, body=self.cipher.open(version.body))

    def write(self, writes: Sequence[StorageWrite]) -> None:
        self.inner.write([
            w if w.version.body is None else replace(
                w, version=replace(w.version, body=self.cipher.seal(w.version.body)))
            for w in writes])

    def read(self, resource_type: str, resource_id: str) -> StoredVersion | None:
        return self._open(self.inner.read(resource_type, resource_id))

    def read_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVersion]:
        found = self.inner.read_many(keys)
        return {k: v for k, v in ((k, self._open(v)) for k, v in found.items()) if v}

    def vread(self, resource_type: str, resource_id: str, version: int) -> StoredVersion | None:
        return self._open(self.inner.vread(resource_type, resource_id, version))

    def history(self, query: HistoryQuery) -> HistoryPage:
        page = self.inner.history(query)
        entries = [(seq, self._open(v) or v) for seq, v in page.entries]
        return HistoryPage(entries, page.total)

    def count_current(self, resource_type: str | None = None) -> dict[str, int]:
        return self.inner.count_current(resource_type)

    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return [self.cipher.open_row(row) for row in self.inner.query(sql, params)]

    def lock(self, key: str) -> None:
        self.inner.lock(key)


class EncryptedRepository(RepositoryWrapper):
    """A repository whose resource bodies are encrypted at rest (module docstring)."""

    def __init__(self, inner: Repository, provider: KeyProvider) -> None:
        super().__init__(inner)
        self.keys = DataKeys(SecurityStore(inner), provider)
        self.cipher = BodyCipher(self.keys)
        self.keys.active()  # create the first data key now, outside any write transaction

    def wrap(self, session: Session, write: bool) -> Session:
        return EncryptedSession(session, self.cipher)

    def close(self) -> None:
        self.keys.close()
        super().close()


def open_data_repository(database_url: str, key_file: str | None = None) -> Repository:
    """``open_repository``, encrypted at rest when a master key is configured: what every
    command that reads or writes resource bodies should open."""
    from carebridge.storage import open_repository

    repository = open_repository(database_url)
    provider = load_key_provider(key_file)
    if provider is None:
        return repository
    try:
        return EncryptedRepository(repository, provider)
    except Exception:
        repository.close()
        raise


def cipher_of(repository: object) -> BodyCipher | None:
    """The cipher of an encrypted repository, looking through wrappers (``.inner``)."""
    while repository is not None:
        if isinstance(repository, EncryptedRepository):
            return repository.cipher
        repository = getattr(repository, "inner", None)
    return None


def clear_session(session: Session) -> Session:
    """The session under any encryption wrapper: SQL through it sees stored bytes as they
    are (the audit ledger hashes what it stores, sealed or not)."""
    while True:
        if isinstance(session, EncryptedSession):
            return session.inner
        inner = getattr(session, "inner", None)
        if inner is None:
            return session
        session = inner
