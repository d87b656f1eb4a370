"""One HL7 v2 message in, one ACK out: map -> one transaction bundle -> service layer -> ACK.

Exactly-once: the message's archive row (with the AA ACK) is written inside the SAME database
transaction as the resources the bundle produced, and UNIQUE (sender, control_id) makes it
the durable dedup record. The bundle processor (``carebridge.services.bundles``) runs its
transaction through ``ResourceService.run_write``; :class:`_ArchivingResources` is that same
service (same repository, policy, audit, events: its state is shared, not copied) whose
``run_write`` also (1) takes a lock on the message key and looks it up, so a resend returns
the archived ACK and changes nothing, and (2) inserts the archive row before commit. So:

- AA is sent only after the commit that made the resources AND the archive row durable;
- a crash before that commit leaves nothing, and the resend is processed as new;
- a crash after it leaves both, and the resend is answered from the archive.

A message that fails is kept in the error queue (its own transaction) before its AE/AR is
sent; if even that cannot be written, no ACK is sent and the connection closes, so the
sender keeps the message and retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from carebridge.fhir.errors import FhirError, NotFound, PreconditionFailed
from carebridge.ingest.hl7v2 import errors as codes
from carebridge.ingest.hl7v2.ack import batch_ack, build_ack
from carebridge.ingest.hl7v2.adt import PATIENT_EVENTS, map_adt
from carebridge.ingest.hl7v2.bundle import transaction_bundle
from carebridge.ingest.hl7v2.errors import Hl7Error, MessageError, MessageRejected
from carebridge.ingest.hl7v2.immunization import map_vxu
from carebridge.ingest.hl7v2.lookup import StoreLookup
from carebridge.ingest.hl7v2.mapping import Mapped, Mapper
from carebridge.ingest.hl7v2.parsing import CHARSETS, Message, read_frame
from carebridge.ingest.hl7v2.results import map_oru
from carebridge.ingest.hl7v2.store import ArchivedMessage, MessageStore, utc_now_text
from carebridge.security.policy import Caller
from carebridge.services.bundles import BundleProcessor
from carebridge.services.resources import PendingWrites, ResourceService
from carebridge.storage.base import Session

log = logging.getLogger(__name__)
T = TypeVar("T")

ADT_EVENTS = {"A01", "A02", "A03", "A04", "A05", "A08", "A11", "A13", "A40"} | PATIENT_EVENTS
_ATTEMPTS = 4  # mapping again after a concurrent change of a resource it refines (412)


@dataclass
class _Commit:
    """What the archiving hook needs for one message's transaction."""

    store: MessageStore
    message: Message
    text: bytes
    ack: bytes
    received_at: str
    duplicate: ArchivedMessage | None = None
    archive_id: int | None = None


class _Duplicate(Exception):
    """The message was accepted before: roll back, answer with the archived ACK."""


_COMMIT: ContextVar[_Commit | None] = ContextVar("hl7v2_commit", default=None)


class _ArchivingResources(ResourceService):
    """The application's ResourceService, sharing its state, whose write transactions also
    dedup and archive the HL7 message being processed in this thread (see module doc)."""

    @classmethod
    def around(cls, service: ResourceService) -> _ArchivingResources:
        wrapped = cls.__new__(cls)
        wrapped.__dict__ = service.__dict__  # the same repository, policy, events, audit
        return wrapped

    def run_write(self, work: Callable[[Session, PendingWrites], T], *, retry: bool,
                  version_aware: bool = False) -> T:
        commit = _COMMIT.get()
        if commit is None:
            return super().run_write(work, retry=retry, version_aware=version_aware)

        def archived(session: Session, pending: PendingWrites) -> T:
            message = commit.message
            session.lock(f"hl7v2:{message.sender}|{message.control_id}")
            found = commit.store.find_in(session, message.sender, message.control_id)
            if found is not None:
                commit.duplicate = found
                raise _Duplicate
            result = work(session, pending)
            pending.flush(session)
            provenance = next((w.version.id for w in pending.writes
                               if w.version.resource_type == "Provenance"), None)
            commit.archive_id = commit.store.archive_in(
                session, message.sender, message.control_id, message.message_type,
                commit.received_at, commit.text, commit.ack, provenance)
            return result

        return super().run_write(archived, retry=retry, version_aware=version_aware)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to one message."""

    ack: str
    ack_code: str
    duplicate: bool = False
    error_id: int | None = None
    archive_id: int | None = None


class Hl7Processor:
    """Turns HL7 v2 frames into committed FHIR resources and ACKs (thread-safe; blocking)."""

    def __init__(self, service: ResourceService, store: MessageStore | None = None, *,
                 application: str = "carebridge", facility: str = "") -> None:
        self.service = _ArchivingResources.around(service)
        self.store = store or MessageStore(service.repository)
        self.bundles = BundleProcessor(self.service, "urn:carebridge:hl7v2")
        self.lookup = StoreLookup(self.bundles.search)
        self.application = application
        self.facility = facility

    # ---------------------------------------------------------------- frames

    def handle_frame(self, data: bytes) -> bytes:
        """One MLLP frame's payload -> the ACK payload (a batch gets a batch of ACKs)."""
        try:
            received = read_frame(data)
        except MessageRejected as exc:
            ack = build_ack(None, "AR", exc, application=self.application)
            self._enqueue(None, data, ack, exc)
            return ack.encode("ascii", "replace")
        acks: list[str] = []
        codec = "utf-8"
        for text, parsed in received.messages:
            if isinstance(parsed, MessageRejected):
                ack = build_ack(None, "AR", parsed, application=self.application)
                self._enqueue(None, text.encode("utf-8"), ack, parsed)
                acks.append(ack)
                continue
            codec = CHARSETS.get(parsed.header.value(18).upper().strip(), "utf-8")
            acks.append(self.process(parsed).ack)
        answer = batch_ack(received.envelope, acks) if received.envelope else acks[0]
        return answer.encode(codec, "replace")

    # ---------------------------------------------------------------- messages

    def process(self, message: Message) -> Outcome:
        """Map, commit and archive one message; its ACK (AA, or AE/AR with ERR)."""
        text = message.text.encode("utf-8")
        try:
            mapper = self._mapper(message)
            return self._commit(message, text, mapper)
        except Hl7Error as exc:
            return self._failed(message, text, exc)
        except FhirError as exc:
            return self._failed(message, text, _from_fhir(exc))

    def _mapper(self, message: Message) -> Mapper:
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

    def _commit(self, message: Message, text: bytes, mapper: Mapper) -> Outcome:
        caller = Caller(f"hl7v2:{message.sending_application or 'unknown'}",
                        roles=frozenset({"system"}))
        ack = build_ack(message, "AA", application=self.application, facility=self.facility)
        received_at = utc_now_text()
        for attempt in range(_ATTEMPTS):
            mapped: Mapped = mapper(message, self.lookup.bound(caller, self.service))
            bundle = transaction_bundle(message, mapped, received_at)
            commit = _Commit(self.store, message, text, ack.encode("utf-8"), received_at)
            token = _COMMIT.set(commit)
            try:
                self.bundles.process(caller, bundle)
            except _Duplicate:
                assert commit.duplicate is not None
                return Outcome(commit.duplicate.ack.decode("utf-8"), "AA", duplicate=True,
                               archive_id=commit.duplicate.id)
            except PreconditionFailed:
                # A resource read for refinement changed meanwhile: map again on fresh data.
                if attempt == _ATTEMPTS - 1 or not any(e.if_match for e in mapped.entries):
                    raise
                continue
            except FhirError as exc:
                raise _from_fhir(exc, mapped) from None
            finally:
                _COMMIT.reset(token)
            return Outcome(ack, "AA", archive_id=commit.archive_id)
        raise AssertionError("unreachable")

    def _failed(self, message: Message, text: bytes, error: Hl7Error) -> Outcome:
        ack = build_ack(message, error.ack_code, error, application=self.application,
                        facility=self.facility)
        error_id = self._enqueue(message, text, ack, error)
        log.info("HL7 %s %s from %s: %s %s", message.message_type, message.control_id,
                 message.sender, error.ack_code, error.describe())
        return Outcome(ack, error.ack_code, error_id=error_id)

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
        received = read_frame(queued.message)
        text, parsed = received.messages[0]
        if isinstance(parsed, MessageRejected):
            ack = build_ack(None, "AR", parsed, application=self.application)
            self.store.retry_failed(error_id, ack.encode("utf-8"), parsed.code,
                                    parsed.location, parsed.reason)
            return Outcome(ack, "AR", error_id=error_id)
        try:
            outcome = self._commit(parsed, text.encode("utf-8"), self._mapper(parsed))
        except (Hl7Error, FhirError) as exc:
            error = exc if isinstance(exc, Hl7Error) else _from_fhir(exc)
            ack = build_ack(parsed, error.ack_code, error, application=self.application)
            self.store.retry_failed(error_id, ack.encode("utf-8"), error.code,
                                    error.location, error.reason)
            return Outcome(ack, error.ack_code, error_id=error_id)
        self.store.resolve_error(error_id, outcome.archive_id)
        return Outcome(outcome.ack, outcome.ack_code, outcome.duplicate, error_id,
                       outcome.archive_id)


def _from_fhir(exc: FhirError, mapped: Mapped | None = None) -> MessageError:
    """A refusal of the FHIR layer -> AE naming the segment the failing entry came from."""
    expression = " ".join(exc.expression)
    segment, sequence, field = "", None, None
    if mapped is not None:
        for index, entry in enumerate(mapped.entries):
            if f"Bundle.entry[{index}]" in exc.message or f"Bundle.entry[{index}]" in expression:
                segment, sequence, field = (entry.source.segment, entry.source.sequence,
                                            entry.source.field)
                break
    code = {412: codes.DUPLICATE_KEY_IDENTIFIER, 404: codes.UNKNOWN_KEY_IDENTIFIER,
            409: codes.APPLICATION_RECORD_LOCKED, 400: codes.DATA_TYPE_ERROR,
            422: codes.DATA_TYPE_ERROR}.get(exc.status, codes.APPLICATION_INTERNAL_ERROR)
    reason = f"FHIR {exc.status}: {exc.message}" + (f" ({expression})" if expression else "")
    return MessageError(reason, code, segment, sequence, field)


def describe_outcome(outcome: Outcome) -> dict[str, Any]:
    return {"ack_code": outcome.ack_code, "duplicate": outcome.duplicate,
            "error_id": outcome.error_id, "archive_id": outcome.archive_id}
