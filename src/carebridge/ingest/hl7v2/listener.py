"""Running the MLLP listener with the HTTP server.

The listener joins the ASGI application's lifespan: it starts in uvicorn's own event loop
once the application is up and stops before the application's shutdown closes the database.
One process, one event loop; the blocking database work of each message runs in the
listener's thread pool and commits through the group committer thread, so neither the HTTP
requests nor the MLLP connections wait on an fsync in the loop. No second loop or
process has to be coordinated, and a SIGTERM stops both in order.

Audit: with the server's audit ledger (every server but ``--insecure-dev``, as for HTTP),
each message taken records one FHIR AuditEvent (``hl7v2_event`` in
``carebridge.security.audit_events``): type DICOM 110107 *Import* (PS3.15 A.5.3.5: data from
outside the server's control enters it; action C), subtypes channel ``hl7v2-mllp`` and the
message code and trigger event (HL7 tables 0076 and 0003); agent the feed identity
``hl7v2:<MSH-3>`` with the connection's peer address; entity the message (MSH-9, MSH-10,
MSA-1) and, when accepted or answered from the archive as a resend, the Provenance it
produced; outcome AA 0, AE/AR 4, 8 for condition 207 (application internal error).
Recorded once the ACK is known, by appending to the ledger's in-memory queue: nothing is
added to the group commit's transaction, and no database work is added per message (the
ledger's writer thread stores the events in batches).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from starlette.applications import Starlette

from carebridge.api.lifespan import extend_lifespan
from carebridge.ingest.hl7v2.committer import GroupCommitter
from carebridge.ingest.hl7v2.errors import MessageRejected
from carebridge.ingest.hl7v2.mllp import DEFAULT_MAX_FRAME, MllpServer, peer_address
from carebridge.ingest.hl7v2.parsing import Message
from carebridge.ingest.hl7v2.processor import Hl7Processor, Outcome, feed_caller
from carebridge.ingest.hl7v2.store import MessageCipher, MessageStore
from carebridge.security.audit import AuditLedger
from carebridge.security.audit_events import hl7v2_event
from carebridge.services.resources import ResourceService


@dataclass(frozen=True, slots=True)
class MllpSettings:
    port: int
    host: str = "127.0.0.1"
    max_frame_bytes: int = DEFAULT_MAX_FRAME
    idle_timeout: float = 300.0
    tls_cert: str | None = None  # PEM; with tls_key, connections must use TLS
    tls_key: str | None = None
    workers: int = 32  # connections served at once (each waits in a thread for its commit)
    reuse_port: bool = False  # other processes listen on the same port (--mllp-workers)


def ssl_context(cert: str, key: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class Hl7Listener:
    """Processor + group committer + MLLP server, started and stopped together."""

    def __init__(self, service: ResourceService, settings: MllpSettings,
                 cipher: MessageCipher | None = None, ledger: AuditLedger | None = None) -> None:
        self.settings = settings
        self.processor = Hl7Processor(service, MessageStore(service.repository, cipher))
        self.ledger = ledger
        if ledger is not None:
            self.processor.observe = self.audit
        self.committer = GroupCommitter(self.processor)
        context = ssl_context(settings.tls_cert, settings.tls_key) if settings.tls_cert else None
        self.server = MllpServer(self.processor.handle_frame, settings.host, settings.port,
                                 fast_handler=self.processor.handle_frame_fast,
                                 max_frame_bytes=settings.max_frame_bytes,
                                 idle_timeout=settings.idle_timeout, ssl_context=context,
                                 workers=settings.workers, reuse_port=settings.reuse_port,
                                 on_refused=self.refused if ledger is not None else None)

    def audit(self, message: Message | None, outcome: Outcome) -> None:
        """Queue the AuditEvent of one message whose ACK is known (see module doc)."""
        assert self.ledger is not None
        error = outcome.error
        self.ledger.record(hl7v2_event(
            feed_caller(message.sending_application if message else None),
            address=peer_address(),
            message_code=message.message_code if message else "",
            trigger_event=message.trigger_event if message else "",
            control_id=message.control_id if message else "", ack_code=outcome.ack_code,
            condition=error.code if error else "", location=error.location if error else "",
            duplicate=outcome.duplicate, provenance_id=outcome.provenance_id,
            error_id=outcome.error_id))

    def refused(self, error: MessageRejected) -> None:
        """A frame the MLLP layer refused before reading it (too large): audited as an
        unreadable message (nothing of it is kept)."""
        self.audit(None, Outcome("", "AR", error=error))

    async def start(self) -> None:
        self.committer.start()
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()
        self.committer.stop()


def attach_listener(asgi: Starlette, service: ResourceService, settings: MllpSettings,
                    cipher: MessageCipher | None = None,
                    ledger: AuditLedger | None = None) -> Hl7Listener:
    """Run an :class:`Hl7Listener` inside ``asgi``'s lifespan (see module doc); it stops
    before the application's own shutdown flushes ``ledger``."""
    listener = Hl7Listener(service, settings, cipher, ledger)
    extend_lifespan(asgi, listener.start, listener.stop)
    return listener
