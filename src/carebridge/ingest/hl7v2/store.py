"""The message archive and the error queue (tables of migration 0003_hl7v2).

The archive row of an accepted message is written inside the same database transaction as
the resources the message produced (see :mod:`carebridge.ingest.hl7v2.processor`), so "stored"
and "archived" cannot disagree, and its UNIQUE (sender, control_id) key is the durable record
of exactly-once delivery.

Encryption at rest: message and ACK bytes pass through a :class:`MessageCipher` before they
are written and after they are read, and ``key_id`` is stored beside them. By default the
store uses the repository's own encryption (``carebridge.security.crypto``: AES-256-GCM under
the rotating data keys) when a master key is configured, so an archived message is sealed
exactly like the resources made from it; otherwise :class:`Plaintext` (``key_id`` NULL).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from carebridge.security.crypto import BodyCipher, cipher_of
from carebridge.storage.base import Repository, Session


class MessageCipher(Protocol):
    """Seals archived bytes (e.g. AES-GCM envelope encryption) and opens them again."""

    @property
    def key_id(self) -> str | None: ...

    def seal(self, plaintext: bytes) -> bytes: ...

    def open(self, sealed: bytes, key_id: str | None) -> bytes: ...


class Plaintext:
    """No encryption (the default until the security issue provides a cipher)."""

    key_id: str | None = None

    def seal(self, plaintext: bytes) -> bytes:
        return plaintext

    def open(self, sealed: bytes, key_id: str | None) -> bytes:
        return sealed


class SealedAtRest:
    """The repository's encryption at rest as a :class:`MessageCipher` (sealed values carry
    their data key id themselves; clear values written before encryption still open)."""

    key_id: str | None = "aes-256-gcm"

    def __init__(self, cipher: BodyCipher) -> None:
        self.cipher = cipher

    def seal(self, plaintext: bytes) -> bytes:
        return self.cipher.seal(plaintext)

    def open(self, sealed: bytes, key_id: str | None) -> bytes:
        return self.cipher.open(sealed)


def default_cipher(repository: Repository) -> MessageCipher:
    body = cipher_of(repository)
    return Plaintext() if body is None else SealedAtRest(body)


@dataclass(frozen=True, slots=True)
class ArchivedMessage:
    id: int
    sender: str
    control_id: str
    message_type: str
    received_at: str
    message: bytes
    ack: bytes
    provenance_id: str | None


@dataclass(frozen=True, slots=True)
class QueuedError:
    id: int
    sender: str
    control_id: str
    message_type: str
    received_at: str
    message: bytes
    ack: bytes
    ack_code: str
    error_code: str
    location: str
    reason: str
    status: str
    attempts: int
    resolved_at: str | None
    message_id: int | None


def utc_now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _bytes(value: Any) -> bytes:
    return bytes(value) if value is not None else b""


class MessageStore:
    """Archive and error queue behind ``repository.session()``/``session.query``."""

    def __init__(self, repository: Repository, cipher: MessageCipher | None = None) -> None:
        self.repository = repository
        self.cipher: MessageCipher = cipher or default_cipher(repository)
        self._mark = "?" if repository.dialect == "sqlite" else "%s"

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._mark)

    # ---------------------------------------------------------------- archive

    def find_in(self, session: Session, sender: str, control_id: str) -> ArchivedMessage | None:
        rows = session.query(self._sql(
            "SELECT id, sender, control_id, message_type, received_at, message, ack,"
            " provenance_id, key_id FROM hl7v2_message WHERE sender = ? AND control_id = ?"),
            (sender, control_id))
        return self._archived(rows[0]) if rows else None

    def archive_in(self, session: Session, sender: str, control_id: str, message_type: str,
                   received_at: str, message: bytes, ack: bytes,
                   provenance_id: str | None) -> int:
        cipher = self.cipher
        rows = session.query(self._sql(
            "INSERT INTO hl7v2_message (sender, control_id, message_type, received_at, message,"
            " ack, key_id, provenance_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"),
            (sender, control_id, message_type, received_at, cipher.seal(message),
             cipher.seal(ack), cipher.key_id, provenance_id))
        return int(rows[0][0])

    def archived(self, sender: str, control_id: str) -> ArchivedMessage | None:
        with self.repository.session() as session:
            return self.find_in(session, sender, control_id)

    def count_archived(self) -> int:
        with self.repository.session() as session:
            return int(session.query("SELECT count(*) FROM hl7v2_message", ())[0][0])

    def _archived(self, row: tuple[Any, ...]) -> ArchivedMessage:
        key_id = row[8]
        return ArchivedMessage(int(row[0]), row[1], row[2], row[3], row[4],
                               self.cipher.open(_bytes(row[5]), key_id),
                               self.cipher.open(_bytes(row[6]), key_id), row[7])

    # ---------------------------------------------------------------- error queue

    def enqueue_error(self, sender: str, control_id: str, message_type: str,
                      message: bytes, ack: bytes, ack_code: str, error_code: str,
                      location: str, reason: str) -> int:
        cipher = self.cipher
        with self.repository.session(write=True) as session:
            rows = session.query(self._sql(
                "INSERT INTO hl7v2_error (sender, control_id, message_type, received_at,"
                " message, ack, key_id, ack_code, error_code, location, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"),
                (sender, control_id, message_type, utc_now_text(), cipher.seal(message),
                 cipher.seal(ack), cipher.key_id, ack_code, error_code, location, reason))
            return int(rows[0][0])

    _ERROR_COLUMNS = ("id, sender, control_id, message_type, received_at, message, ack,"
                      " ack_code, error_code, location, reason, status, attempts, resolved_at,"
                      " message_id, key_id")

    def errors(self, *, status: str | None = "open", limit: int = 100) -> list[QueuedError]:
        where = "WHERE status = ?" if status else ""
        params: tuple[Any, ...] = (status, limit) if status else (limit,)
        with self.repository.session() as session:
            rows = session.query(self._sql(
                f"SELECT {self._ERROR_COLUMNS} FROM hl7v2_error {where} ORDER BY id LIMIT ?"),
                params)
        return [self._error(row) for row in rows]

    def error(self, error_id: int) -> QueuedError | None:
        with self.repository.session() as session:
            rows = session.query(self._sql(
                f"SELECT {self._ERROR_COLUMNS} FROM hl7v2_error WHERE id = ?"), (error_id,))
        return self._error(rows[0]) if rows else None

    def resolve_error(self, error_id: int, message_id: int | None) -> None:
        with self.repository.session(write=True) as session:
            session.query(self._sql(
                "UPDATE hl7v2_error SET status = 'resolved', resolved_at = ?, message_id = ?,"
                " attempts = attempts + 1 WHERE id = ? RETURNING id"),
                (utc_now_text(), message_id, error_id))

    def retry_failed(self, error_id: int, ack: bytes, error_code: str, location: str,
                     reason: str) -> None:
        with self.repository.session(write=True) as session:
            session.query(self._sql(
                "UPDATE hl7v2_error SET attempts = attempts + 1, ack = ?, error_code = ?,"
                " location = ?, reason = ? WHERE id = ? RETURNING id"),
                (self.cipher.seal(ack), error_code, location, reason, error_id))

    def _error(self, row: tuple[Any, ...]) -> QueuedError:
        key_id = row[15]
        return QueuedError(int(row[0]), row[1], row[2], row[3], row[4],
                           self.cipher.open(_bytes(row[5]), key_id),
                           self.cipher.open(_bytes(row[6]), key_id), row[7], row[8], row[9],
                           row[10], row[11], int(row[12]), row[13],
                           int(row[14]) if row[14] is not None else None)
