"""The audit trail: FHIR AuditEvents in an append-only, hash-chained, checkpointed ledger.

Every entry of ``audit_ledger`` stores the AuditEvent exactly as hashed and
``hash = SHA-256(prev_hash || seq (8 bytes, big-endian) || body)``, ``prev_hash`` being the
previous entry's hash (32 zero bytes for the first). Editing, deleting, inserting or reordering
entries breaks the chain at the first entry touched. Recomputing the whole chain after an edit
needs no secret, so every flush also writes a *checkpoint*: a JWS (ES384, the token signing
keys) over the last entry's ``seq`` and ``hash``; :func:`verify_ledger` checks the chain and
every checkpoint, so a rewritten chain no longer matches what was signed, and a truncated tail
leaves a checkpoint pointing past the end.

Each event is also stored as an ordinary ``AuditEvent`` resource (with its search index rows)
in the same database transaction as its ledger entry, so auditors search it through the FHIR
API; the policy lets nobody create, update or delete AuditEvents through any interaction.

Recording is cheap on the request path: :meth:`AuditLedger.record` appends to an in-memory
queue; a background thread writes queued events every ``interval`` seconds (or ``batch``
events) in one transaction, holding the ledger lock (a PostgreSQL advisory lock, SQLite's write
lock) so several server processes extend one chain. Events still queued when a process is
killed hard are lost (at most ``interval`` seconds of them); a normal shutdown flushes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

from carebridge.events.sqltext import insert_many
from carebridge.fhir.resource import new_id, now_instant, with_meta
from carebridge.search.index import index_rows
from carebridge.security.crypto import cipher_of, clear_session
from carebridge.security.keys import ALGORITHM, SigningKeys
from carebridge.security.store import SecurityStore
from carebridge.storage.base import Repository, StoredVersion, Write

log = logging.getLogger(__name__)
GENESIS = bytes(32)
_LOCK = "carebridge-audit-ledger"


def chain_hash(prev: bytes, seq: int, body: bytes) -> bytes:
    return hashlib.sha256(prev + seq.to_bytes(8, "big") + body).digest()


class AuditLedger:
    def __init__(self, repository: Repository, keys: SigningKeys, *, interval: float = 0.2,
                 batch: int = 500) -> None:
        self.repository = repository
        self.store = SecurityStore(repository)
        self.keys = keys
        self.cipher = cipher_of(repository)  # ledger copies are sealed like resource bodies
        self.interval, self.batch = interval, batch
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- recording

    def record(self, event: dict[str, Any]) -> None:
        """Queue an AuditEvent (written within ``interval`` seconds)."""
        self._queue.append(event)
        if len(self._queue) >= self.batch:
            self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-ledger", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the trail must survive a failed flush: retried next time
                log.exception("audit flush failed; will retry")

    def flush(self) -> int:
        """Write every queued event now; returns how many were written."""
        with self._flush_lock:
            events: list[dict[str, Any]] = []
            while self._queue:
                events.append(self._queue.popleft())
            if not events:
                return 0
            try:
                self._append(events)
            except Exception:
                self._queue.extendleft(reversed(events))  # keep them for the next attempt
                raise
            return len(events)

    def _append(self, events: list[dict[str, Any]]) -> None:
        moment = now_instant()
        key = self.keys.signing_key()  # before the write lock: it may read the key table
        with self.repository.session(write=True) as session:
            session.lock(_LOCK)
            raw = clear_session(session)  # ledger rows are hashed as stored
            last = self.store.query(
                "SELECT seq, hash FROM audit_ledger ORDER BY seq DESC LIMIT 1", session=raw)
            seq, prev = (int(last[0][0]), bytes(last[0][1])) if last else (0, GENESIS)
            writes: list[Write] = []
            rows: list[tuple[int, str, bytes, bytes, bytes]] = []
            for event in events:
                rid = event.get("id") or new_id()
                stored = with_meta(event, rid, 1, moment)
                body = orjson.dumps(stored)
                kept = self.cipher.seal(body) if self.cipher else body  # hashed as stored
                seq += 1
                digest = chain_hash(prev, seq, kept)
                rows.append((seq, rid, kept, prev, digest))
                prev = digest
                writes.append(Write(StoredVersion("AuditEvent", rid, 1, moment, "POST", body),
                                    None, index_rows(stored)))
            # One multi-row INSERT per 200 entries, not a statement per entry.
            insert_many(raw, self.repository.dialect, "audit_ledger",
                        ("seq", "event_id", "body", "prev_hash", "hash"), rows)
            session.write(writes)
            signature = _sign(key, seq, prev)
            self.store.execute(
                "INSERT INTO audit_checkpoint (seq, hash, signature, created) VALUES (?, ?, ?, ?)",
                (seq, prev, signature, moment.timestamp()), session=raw)



def _sign(key: ECKey, seq: int, digest: bytes) -> str:
    payload = orjson.dumps({"seq": seq, "hash": digest.hex()})
    return str(jws.serialize_compact({"alg": ALGORITHM, "kid": key.kid}, payload, key,
                                     algorithms=[ALGORITHM]))


# ------------------------------------------------------------------------------ verification

@dataclass
class LedgerReport:
    checked: int = 0
    checkpoints: int = 0
    first_bad: int | None = None  # the seq of the first entry that fails
    problem: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.first_bad is None and not self.problem


def verify_ledger(repository: Repository, keys: SigningKeys, *, page: int = 20000,
                  trusted: KeySet | None = None) -> LedgerReport:
    """Check the whole chain and every signed checkpoint; name the first bad entry.

    ``trusted``: the public keys to check checkpoints with, kept outside the database (an
    exported JWKS); by default the database's own key table, which someone able to rewrite
    the database could also extend."""
    started = time.perf_counter()
    store = SecurityStore(repository)
    report = LedgerReport()
    with repository.session() as session:
        checkpoints: dict[int, tuple[bytes, str]] = {
            int(seq): (bytes(digest), signature) for seq, digest, signature in store.query(
                "SELECT seq, hash, signature FROM audit_checkpoint",
                session=clear_session(session))}
    keyset = trusted or keys.every_public_key()
    bad_checkpoint = _bad_checkpoint(checkpoints, keyset)
    if bad_checkpoint is not None:
        report.first_bad, report.problem = bad_checkpoint, "checkpoint signature is not valid"
    prev, expected, last = GENESIS, 1, 0
    sha256 = hashlib.sha256
    # PostgreSQL checks each entry's hash itself (sha256 over the same bytes in the same
    # order), so only hashes cross the wire, not every body; SQLite reads them in-process.
    columns = ("seq, NULL, prev_hash, hash, sha256(prev_hash || int8send(seq) || body) = hash"
               if store.postgres else "seq, body, prev_hash, hash, NULL")
    with repository.session() as session:
        raw = clear_session(session)
        while report.ok:
            rows = store.query(
                f"SELECT {columns} FROM audit_ledger WHERE seq >= ? ORDER BY seq LIMIT ?",
                (expected, page), session=raw)
            if not rows:
                break
            for seq, body, stored_prev, stored_hash, matches in rows:
                if seq != expected:
                    report.first_bad = expected
                    report.problem = (f"entry {expected} is missing (deleted, or the entries"
                                      " renumbered)")
                    break
                if matches is None:
                    digest = sha256(prev + seq.to_bytes(8, "big") + bytes(body)).digest()
                else:  # the database compared: its verdict, and the hash it vouched for
                    digest = bytes(stored_hash) if matches else GENESIS
                if bytes(stored_prev) != prev or bytes(stored_hash) != digest:
                    report.first_bad = seq
                    report.problem = (f"entry {seq} does not follow from the one before it"
                                      " (edited, inserted or reordered)")
                    break
                sealed = checkpoints.get(seq)
                if sealed is not None:
                    report.checkpoints += 1
                    if sealed[0] != digest:
                        report.first_bad = seq
                        report.problem = (f"entry {seq} differs from its signed checkpoint"
                                          " (the chain was rewritten)")
                        break
                prev, expected, last = digest, seq + 1, seq
                report.checked += 1
    if report.ok and checkpoints and max(checkpoints) > last:
        report.first_bad = last + 1
        report.problem = (f"entries {last + 1}..{max(checkpoints)} were signed but are missing"
                          " (the end of the ledger was cut off)")
    report.seconds = time.perf_counter() - started
    return report


def _bad_checkpoint(checkpoints: dict[int, tuple[bytes, str]], keyset: KeySet) -> int | None:
    for seq in sorted(checkpoints):
        digest, signature = checkpoints[seq]
        try:
            payload = orjson.loads(jws.deserialize_compact(
                signature, keyset, algorithms=[ALGORITHM]).payload)
        except (JoseError, ValueError, orjson.JSONDecodeError):
            return seq
        if payload != {"seq": seq, "hash": digest.hex()}:
            return seq
    return None

