"""HL7 v2 messages in, ACKs out: map -> one transaction bundle per message -> service layer.

Exactly-once: each message's archive row (with its AA ACK) is written inside the SAME
database transaction as the resources its bundle produced, and UNIQUE (sender, control_id)
makes that row the durable dedup record:

- AA is sent only after the commit that made the resources AND the archive row durable;
- a crash before that commit leaves nothing, and the resend is processed as new;
- a crash after it leaves both, and the resend is answered from the archive, changing nothing.

Group commit: a durable commit costs an fsync (~10 ms here), which alone would cap a feed at
~100 messages/s. Messages arriving together on different connections are therefore
committed together: one database transaction runs each message's bundle through the bundle
processor in turn (each still validated, authorized and audited as its own transaction
bundle), then commits once; every ACK waits for that commit. If one message fails, the
transaction is rolled back, that message is answered AE/AR and queued, and the others run
again without it. One message per connection is in flight at a time, so per-connection
order is kept.

How the archive joins the bundle's transaction: the bundle processor
(``carebridge.services.bundles``) writes through ``ResourceService.run_write``.
:class:`_ArchivingResources` is the application's own service (its state is shared, not
copied: same repository, policy, audit, events) whose ``run_write``, while a group runs,
executes the bundle's work in the group's session and adds, per message, the dedup check
(under a lock on the message key) and the archive row.

A failed message is kept in the error queue (its own transaction) before its AE/AR is sent;
if even that cannot be written, no ACK is sent and the connection closes, so the sender
keeps the message and retries.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from carebridge.fhir.errors import Conflict, FhirError, NotFound, PreconditionFailed
from carebridge.ingest.hl7v2 import errors as codes
from carebridge.ingest.hl7v2.ack import batch_ack, build_ack
from carebridge.ingest.hl7v2.adt import PATIENT_EVENTS, map_adt
from carebridge.ingest.hl7v2.bundle import transaction_bundle
from carebridge.ingest.hl7v2.errors import Hl7Error, MessageError, MessageRejected
from carebridge.ingest.hl7v2.immunization import map_vxu
from carebridge.ingest.hl7v2.lookup import SessionLookup
from carebridge.ingest.hl7v2.mapping import Mapped, Mapper
from carebridge.ingest.hl7v2.parsing import Message, read_frame, read_text
from carebridge.ingest.hl7v2.results import map_oru
from carebridge.ingest.hl7v2.store import ArchivedMessage, MessageStore, utc_now_text
from carebridge.security.policy import Caller
from carebridge.security.roles import INTERFACE
from carebridge.services.bundles import BundleProcessor
from carebridge.services.resources import PendingWrites, ResourceService
from carebridge.storage.base import Session, VersionConflict
from carebridge.storage.readset import ReadSet, RecordingSession

log = logging.getLogger(__name__)
T = TypeVar("T")

_CONTENDED = 20  # group re-runs after run_write's own retries lost to concurrent writers
ADT_EVENTS = {"A01", "A02", "A03", "A04", "A05", "A08", "A11", "A13", "A40"} | PATIENT_EVENTS

_FEED_SCOPES = frozenset({"system/*.crus"})


def feed_caller(sending_application: str | None) -> Caller:
    """Who a feed writes as. MLLP is not HTTP: the sender is a least-privilege system
    identity named after MSH-3, with the interface role (every type but AuditEvent; create,
    read, update, search; never delete), as security/roles.py defines it."""
    return Caller(f"hl7v2:{sending_application or 'unknown'}",
                  roles=frozenset({INTERFACE}), scopes=_FEED_SCOPES)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to one message."""

    ack: str
    ack_code: str
    duplicate: bool = False
    error_id: int | None = None
    archive_id: int | None = None
    provenance_id: str | None = None  # what an accepted message produced (for the audit)
    error: Hl7Error | None = None  # why an AE/AR


#: Called with each message (None: unreadable) and its outcome once its ACK is known.
OutcomeObserver = Callable[[Message | None, Outcome], None]


@dataclass
class Item:
    """One message on its way through a group commit."""

    message: Message
    mapper: Mapper
    ack: str
    received_at: str = field(default_factory=utc_now_text)
    duplicate: ArchivedMessage | None = None
    archive_id: int | None = None
    provenance_id: str | None = None
    first_write: int = 0

    @property
    def caller(self) -> Caller:
        return feed_caller(self.message.sending_application)


@dataclass
class _Group:
    session: Session
    pending: PendingWrites
    item: Item
    store: MessageStore
    speculative: bool = False  # reading only: map, validate, index; archive nothing


@dataclass
class _Speculation:
    """A message worked out from a read snapshot: its writes, and the reads they rest on."""

    reads: ReadSet
    pending: PendingWrites


class _Duplicate(Exception):
    """The message was accepted before: it writes nothing; answer with the archived ACK."""


class _Failed(Exception):
    """One message of a group failed: roll the group back and run the others again."""

    def __init__(self, item: Item, error: Hl7Error) -> None:
        super().__init__(error.reason)
        self.item = item
        self.error = error


_GROUP: ContextVar[_Group | None] = ContextVar("hl7v2_group", default=None)


class _ArchivingResources(ResourceService):
    """The application's ResourceService (same state) that runs a bundle's write inside the
    current group's transaction with the message's dedup check and archive row."""

    @classmethod
    def around(cls, service: ResourceService) -> _ArchivingResources:
        wrapped = cls.__new__(cls)
        wrapped.__dict__ = service.__dict__  # the same repository, policy, events, audit
        return wrapped

    def run_write(self, work: Callable[[Session, PendingWrites], T], *, retry: bool,
                  version_aware: bool = False) -> T:
        group = _GROUP.get()
        if group is None:
            return super().run_write(work, retry=retry, version_aware=version_aware)
        session, pending, item = group.session, group.pending, group.item
        message = item.message
        session.lock(f"hl7v2:{message.sender}|{message.control_id}")
        found = group.store.find_in(session, message.sender, message.control_id)
        if found is not None:
            item.duplicate = found
            raise _Duplicate
        result = work(session, pending)
        if not group.speculative:
            _archive(session, pending, item, group.store)
        return result


def _archive(session: Session, pending: PendingWrites, item: Item, store: MessageStore) -> None:
    """Store the message's writes and its archive row (with its Provenance) in ``session``."""
    message = item.message
    pending.flush(session)
    provenance = next((w.version.id for w in pending.writes[item.first_write:]
                       if w.version.resource_type == "Provenance"), None)
    item.provenance_id = provenance
    item.archive_id = store.archive_in(
        session, message.sender, message.control_id, message.message_type,
        item.received_at, message.text.encode("utf-8"), item.ack.encode("utf-8"), provenance)


class Hl7Processor:
    """Turns HL7 v2 frames into committed FHIR resources and ACKs (thread-safe; blocking).

    ``submit`` (default: commit alone) lets a :class:`~.committer.GroupCommitter` gather
    messages from concurrent connections into one commit.
    """

    def __init__(self, service: ResourceService, store: MessageStore | None = None, *,
                 application: str = "carebridge", facility: str = "") -> None:
        self.service = _ArchivingResources.around(service)
        self.store = store or MessageStore(service.repository)
        self.bundles = BundleProcessor(self.service, "urn:carebridge:hl7v2")
        self.application = application
        self.facility = facility
        self.submit: Callable[[Item], Outcome] = lambda item: self.commit_group([item])[0]
        # With a group committer: hand an item over and await its outcome on the event loop
        # (handle_frame_fast; called there).
        self.enqueue: Callable[[Item], asyncio.Future[Outcome]] | None = None
        # Work messages out before taking the write lock (see _speculate); off, everything
        # runs under the lock.
        self.speculate = True
        self.observe: OutcomeObserver | None = None  # e.g. the listener's audit

    # ---------------------------------------------------------------- frames

    def handle_frame(self, data: bytes) -> bytes:
        """One MLLP frame's payload -> the ACK payload (a batch gets a batch of ACKs)."""
        try:
            received = read_frame(data)
        except MessageRejected as exc:
            ack = build_ack(None, "AR", exc, application=self.application)
            self._observed(None, Outcome(ack, "AR", error_id=self._enqueue(None, data, ack, exc),
                                         error=exc))
            return ack.encode("ascii", "replace")
        acks: list[str] = []
        codec = "utf-8"
        for text, parsed in received.messages:
            if isinstance(parsed, MessageRejected):
                ack = build_ack(None, "AR", parsed, application=self.application)
                error_id = self._enqueue(None, text.encode("utf-8"), ack, parsed)
                self._observed(None, Outcome(ack, "AR", error_id=error_id, error=parsed))
                acks.append(ack)
                continue
            codec = parsed.codec
            outcome = self.process(parsed)
            self._observed(parsed, outcome)
            acks.append(outcome.ack)
        answer = batch_ack(received.envelope, acks) if received.envelope else acks[0]
        return answer.encode(codec, "replace")

    async def handle_frame_fast(self, data: bytes) -> bytes | None:
        """:meth:`handle_frame` for the common frame, on the event loop: one readable
        message of a supported type, parsed here and awaited while the group committer
        stores it, so no thread is held per message. Anything else (a batch, a rejection,
        no committer) returns None having done nothing but parse, and the caller runs
        :meth:`handle_frame` in a thread (its error queue writes block).

        Per message this saves a thread pool hand-off both ways and leaves the committer
        competing for the GIL with one thread instead of the pool's (docs/hl7v2.md)."""
        enqueue = self.enqueue
        if enqueue is None:
            return None
        try:
            received = read_frame(data)
        except MessageRejected:
            return None
        if received.envelope or len(received.messages) != 1:
            return None
        parsed = received.messages[0][1]
        if isinstance(parsed, MessageRejected):
            return None
        try:
            item = self.item(parsed)
        except Hl7Error:
            return None
        outcome = await enqueue(item)
        self._observed(parsed, outcome)
        return outcome.ack.encode(parsed.codec, "replace")

    def _observed(self, message: Message | None, outcome: Outcome) -> None:
        if self.observe is not None:
            self.observe(message, outcome)

    def process(self, message: Message) -> Outcome:
        """Map, commit and archive one message; its ACK (AA, or AE/AR with ERR)."""
        try:
            item = self.item(message)
        except Hl7Error as exc:
            return self._failed(message, exc)
        return self.submit(item)

    def item(self, message: Message) -> Item:
        ack = build_ack(message, "AA", application=self.application, facility=self.facility)
        return Item(message, self._mapper(message), ack)

    def _mapper(self, message: Message) -> Mapper:
        version = message.header.value(12)
        if version and not version.startswith("2."):
            raise MessageRejected(f"HL7 version {version!r} is not supported (v2.x)",
                                  codes.UNSUPPORTED_VERSION_ID, "MSH", 1, 12)
        code, event = message.message_code, message.trigger_event
        if code == "ADT":
            if event not in ADT_EVENTS:
                raise MessageRejected(f"ADT^{event} is not supported (supported: "
                                      f"{', '.join(sorted(ADT_EVENTS))})",
                                      codes.UNSUPPORTED_EVENT_CODE, "MSH", 1, 9, 2)
            return map_adt
        if code == "ORU":
            if event not in ("R01", ""):
                raise MessageRejected(f"ORU^{event} is not supported (ORU^R01 is)",
                                      codes.UNSUPPORTED_EVENT_CODE, "MSH", 1, 9, 2)
            return map_oru
        if code == "VXU":
            return map_vxu
        raise MessageRejected(f"message type {code!r} is not supported (ADT, ORU^R01, VXU^V04)",
                              codes.UNSUPPORTED_MESSAGE_TYPE, "MSH", 1, 9, 1)

    # ---------------------------------------------------------------- group commit

    def commit_group(self, items: list[Item],
                     more: Callable[[], list[Item]] | None = None) -> list[Outcome]:
        """Commit ``items`` together (see module doc); one outcome per item, in order.

        ``more`` (the group committer's) hands over messages that arrived since the group
        was gathered: while another writer has the database's write turn, they are worked
        out too and join the group (appended to ``items``) instead of waiting idle for the
        turn; see :meth:`_while_busy`.

        Raises only when the database itself fails and not even the error queue can keep
        the messages (then nothing is acknowledged)."""
        outcomes: dict[int, Outcome] = {}
        speculated = self._speculate(items) if self.speculate else {}
        if more is not None and self.speculate:
            self._while_busy(items, speculated, more)
        todo = list(items)
        contended = 0
        while todo:
            try:
                self.service.run_write(self._group_work(todo, speculated), retry=True)
            except Conflict:
                # run_write's immediate retries all lost to concurrent writers (PostgreSQL,
                # several servers on one patient): back off a little and run it again.
                contended += 1
                if contended > _CONTENDED:
                    raise
                time.sleep(random.uniform(0.001, 0.005 * contended))
                continue
            except _Failed as failed:
                outcomes[id(failed.item)] = self._failed(failed.item.message, failed.error)
                todo = [i for i in todo if i is not failed.item]
                continue
            for item in todo:
                if item.duplicate is not None:
                    outcomes[id(item)] = Outcome(
                        item.duplicate.ack.decode("utf-8"), "AA", duplicate=True,
                        archive_id=item.duplicate.id, provenance_id=item.duplicate.provenance_id)
                else:
                    outcomes[id(item)] = Outcome(item.ack, "AA", archive_id=item.archive_id,
                                                 provenance_id=item.provenance_id)
            break
        return [outcomes[id(i)] for i in items]

    def _while_busy(self, items: list[Item], speculated: dict[int, _Speculation],
                    more: Callable[[], list[Item]]) -> None:
        """Work out the messages that arrived meanwhile, for as long as another writer (the
        other ``--mllp-workers`` processes on SQLite) has the write turn and some arrived.

        A process's committer is the thread every one of its messages waits for; blocked
        on the turn, it would sit idle while another process stores its group. Worked out
        now, the late messages are stored with this group: fewer, larger commits (one fsync,
        one re-read of the pages the other process changed) and no idle committer."""
        repository = self.service.repository
        while repository.write_busy():
            extra = more()
            if not extra:
                return
            items.extend(extra)
            speculated.update(self._speculate(extra))

    def _speculate(self, items: list[Item]) -> dict[int, _Speculation]:
        """Map, validate and index each message from a read snapshot, before the write lock
        (storage.readset): under the lock only its reads are checked again and its writes
        stored, so other processes can write meanwhile. A message whose speculation fails in
        any way is simply run under the lock, the usual way, which decides its answer."""
        found: dict[int, _Speculation] = {}
        with self.service.repository.session() as snapshot:
            for item in items:
                reads = ReadSet()
                session = RecordingSession(snapshot, reads)
                # The duplicate-patient look-up reads the snapshot unrecorded: it only
                # informs a warning, and a warning never makes the writes wrong.
                pending = PendingWrites(reader=snapshot)
                token = _GROUP.set(_Group(session, pending, item, self.store, speculative=True))
                try:
                    # A resend stops at the archive look-up in run_write (_Duplicate) and is
                    # answered under the lock.
                    caller = item.caller
                    lookup = SessionLookup(session, self.bundles.search, self.service.policy,
                                           caller)
                    mapped = item.mapper(item.message, lookup)
                    self.bundles.process(caller, transaction_bundle(item.message, mapped,
                                                                    item.received_at))
                except Exception:  # whatever it was, it is decided again under the lock
                    continue
                finally:
                    _GROUP.reset(token)
                found[id(item)] = _Speculation(reads, pending)
        return found

    def _group_work(self, items: list[Item], speculated: dict[int, _Speculation] | None = None,
                    ) -> Callable[[Session, PendingWrites], None]:
        speculated = speculated or {}

        def work(session: Session, pending: PendingWrites) -> None:
            for item in items:
                item.duplicate, item.archive_id, item.provenance_id = None, None, None
                item.first_write = len(pending.writes)
                message = item.message
                guess = speculated.get(id(item))
                if guess is not None and guess.reads.holds(session):
                    # Everything the message read is unchanged, including that its control
                    # id is not archived (looked up after its lock in run_write): its writes
                    # stand.
                    pending.writes.extend(guess.pending.writes)
                    pending.issues.update(guess.pending.issues)
                    _archive(session, pending, item, self.store)
                    continue
                # A resend is answered before mapping: its mapping may no longer apply (the
                # archive row, looked up again under the lock in run_write, is the record).
                found = self.store.find_in(session, message.sender, message.control_id)
                if found is not None:
                    item.duplicate = found
                    continue
                token = _GROUP.set(_Group(session, pending, item, self.store))
                mapped: Mapped | None = None
                try:
                    caller = item.caller
                    lookup = SessionLookup(session, self.bundles.search, self.service.policy,
                                           caller)
                    mapped = item.mapper(item.message, lookup)
                    bundle = transaction_bundle(item.message, mapped, item.received_at)
                    self.bundles.process(caller, bundle)
                except _Duplicate:
                    continue
                except Hl7Error as exc:
                    raise _Failed(item, exc) from None
                except PreconditionFailed as exc:
                    if mapped is not None and any(e.if_match for e in mapped.entries):
                        # Another process changed a resource this message refines after it
                        # was read (PostgreSQL, several servers): run the group again.
                        raise VersionConflict("(refined resource)", "") from None
                    raise _Failed(item, from_fhir(exc, mapped)) from None
                except FhirError as exc:
                    raise _Failed(item, from_fhir(exc, mapped)) from None
                except VersionConflict:
                    raise  # a concurrent writer won: run_write runs the group again
                except Exception as exc:  # a defect must not stall the feed: AE, queued
                    log.exception("HL7 %s %s: internal error", item.message.message_type,
                                  item.message.control_id)
                    raise _Failed(item, MessageError(
                        f"internal error: {type(exc).__name__}: {exc}",
                        codes.APPLICATION_INTERNAL_ERROR)) from None
                finally:
                    _GROUP.reset(token)

        return work

    # ---------------------------------------------------------------- failures

    def _failed(self, message: Message, error: Hl7Error) -> Outcome:
        ack = build_ack(message, error.ack_code, error, application=self.application,
                        facility=self.facility)
        error_id = self._enqueue(message, message.text.encode("utf-8"), ack, error)
        log.info("HL7 %s %s from %s: %s %s", message.message_type, message.control_id,
                 message.sender, error.ack_code, error.describe())
        return Outcome(ack, error.ack_code, error_id=error_id, error=error)

    def _enqueue(self, message: Message | None, text: bytes, ack: str,
                 error: Hl7Error) -> int:
        """Keep the failed message (raises if it cannot be kept: then no ACK is sent)."""
        return self.store.enqueue_error(
            message.sender if message else "", message.control_id if message else "",
            message.message_type if message else "", text, ack.encode("utf-8"),
            error.ack_code, error.code, error.location, error.reason)

    # ---------------------------------------------------------------- replay

    def replay(self, error_id: int) -> Outcome:
        """Re-run one queued message (after a fix); resolve it when it is accepted now."""
        queued = self.store.error(error_id)
        if queued is None:
            raise NotFound(f"no HL7 v2 error #{error_id}")
        try:  # queued messages are kept as UTF-8 text; unreadable frames as received
            received = read_text(queued.message.decode("utf-8"))
        except (UnicodeDecodeError, MessageRejected):
            received = read_frame(queued.message)
        _, parsed = received.messages[0]
        try:
            if isinstance(parsed, MessageRejected):
                raise parsed
            item = self.item(parsed)
            self.service.run_write(self._group_work([item]), retry=True)
        except (_Failed, Hl7Error) as exc:
            error = exc.error if isinstance(exc, _Failed) else exc
            message = parsed if not isinstance(parsed, MessageRejected) else None
            ack = build_ack(message, error.ack_code, error, application=self.application)
            self.store.retry_failed(error_id, ack.encode("utf-8"), error.code,
                                    error.location, error.reason)
            return Outcome(ack, error.ack_code, error_id=error_id, error=error)
        if item.duplicate is not None:
            self.store.resolve_error(error_id, item.duplicate.id)
            return Outcome(item.duplicate.ack.decode("utf-8"), "AA", True, error_id,
                           item.duplicate.id, item.duplicate.provenance_id)
        self.store.resolve_error(error_id, item.archive_id)
        return Outcome(item.ack, "AA", False, error_id, item.archive_id, item.provenance_id)


def from_fhir(exc: FhirError, mapped: Mapped | None = None) -> MessageError:
    """A refusal of the FHIR layer -> AE naming the segment the failing entry came from."""
    expression = " ".join(exc.expression)
    segment, sequence, field_ = "", None, None
    if mapped is not None:
        for index, entry in enumerate(mapped.entries):
            marker = f"Bundle.entry[{index}]"
            if marker in exc.message or marker in expression:
                segment, sequence, field_ = (entry.source.segment, entry.source.sequence,
                                             entry.source.field)
                break
    code = {412: codes.DUPLICATE_KEY_IDENTIFIER, 404: codes.UNKNOWN_KEY_IDENTIFIER,
            409: codes.APPLICATION_RECORD_LOCKED, 400: codes.DATA_TYPE_ERROR,
            422: codes.DATA_TYPE_ERROR}.get(exc.status, codes.APPLICATION_INTERNAL_ERROR)
    reason = f"FHIR {exc.status}: {exc.message}" + (f" ({expression})" if expression else "")
    return MessageError(reason, code, segment, sequence, field_)
