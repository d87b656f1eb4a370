"""The MLLP listener (HL7 v2 Minimal Lower Layer Protocol, release 2; HL7 v2.5.1 appendix C).

A frame is ``<SB=0x0B> payload <EB=0x1C><CR=0x0D>``; each payload is answered with one ACK
frame. Written on asyncio streams rather than python-hl7's ``hl7.mllp`` server because we
need what that one does not offer: a maximum frame size answered with a NACK before the
connection closes, idle timeouts, and the ACK written only after the blocking database work,
which runs in a thread pool so the event loop (shared with the HTTP server) never waits on
a commit. A ``fast_handler`` may answer a frame on the loop itself (awaiting the commit
without a thread) or decline it (None), and then the pool runs ``handler``. Frames of one
connection are handled strictly one after another (per-connection order is the sender's
order); connections run concurrently. While a frame is handled,
:func:`peer_address` names the connection's remote address (for the audit trail).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from carebridge.ingest.hl7v2.ack import build_ack
from carebridge.ingest.hl7v2.errors import VALUE_TOO_LONG, MessageRejected

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
READ_SIZE = 64 * 1024
DEFAULT_MAX_FRAME = 1024 * 1024  # 1 MiB: larger than any ADT/ORU; images belong elsewhere

_PEER: contextvars.ContextVar[str | None] = contextvars.ContextVar("mllp_peer", default=None)


def peer_address() -> str | None:
    """The remote address of the connection whose frame the calling handler is serving."""
    return _PEER.get()


def frame(payload: bytes) -> bytes:
    return START_BLOCK + payload + END_BLOCK


class MllpServer:
    """``await server.start()`` ... ``await server.stop()``; ``handler`` maps a frame's payload
    to the ACK payload (blocking: it runs in the thread pool)."""

    def __init__(self, handler: Callable[[bytes], bytes], host: str = "127.0.0.1",
                 port: int = 2575, *, max_frame_bytes: int = DEFAULT_MAX_FRAME,
                 idle_timeout: float = 300.0, ssl_context: ssl.SSLContext | None = None,
                 workers: int = 4, reuse_port: bool = False,
                 on_refused: Callable[[MessageRejected], None] | None = None,
                 fast_handler: Callable[[bytes], Awaitable[bytes | None]] | None = None,
                 ) -> None:
        self.handler = handler
        self.fast_handler = fast_handler
        self.on_refused = on_refused  # told of frames refused here (too large), e.g. to audit
        self.host = host
        self.port = port
        self.max_frame_bytes = max_frame_bytes
        self.idle_timeout = idle_timeout
        self.ssl_context = ssl_context
        self.reuse_port = reuse_port  # several processes listen on the port (SO_REUSEPORT)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mllp")
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def bound_port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, ssl=self.ssl_context, limit=READ_SIZE,
            reuse_port=self.reuse_port or None)
        log.info("MLLP listening on %s:%s", self.host, self.bound_port)

    async def stop(self) -> None:
        """Stop accepting; let each connection finish the frame it is handling."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        _PEER.set(str(peer[0]) if isinstance(peer, tuple) and peer else None)  # this task's
        try:
            await self._connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.info("MLLP connection %s ended: %s", peer, exc)
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        buffer = bytearray()
        while True:
            payload = _take_frame(buffer)
            if payload is None:
                if _frame_length(buffer) > self.max_frame_bytes:
                    await self._oversized(writer)
                    return
                try:
                    chunk = await asyncio.wait_for(reader.read(READ_SIZE), self.idle_timeout)
                except TimeoutError:
                    return  # idle: close; the sender reconnects when it has more to send
                if not chunk:
                    return
                buffer += chunk
                continue
            if len(payload) > self.max_frame_bytes:
                await self._oversized(writer)
                return
            try:
                data = bytes(payload)
                ack = await self.fast_handler(data) if self.fast_handler else None
                if ack is None:
                    # The handler runs in this connection's context (it reads peer_address()).
                    context = contextvars.copy_context()
                    ack = await loop.run_in_executor(self.executor, context.run, self.handler,
                                                     data)
            except Exception:
                # Not even the error queue could keep it: send nothing, so the sender keeps
                # the message and resends it on a new connection.
                log.exception("MLLP: message not processed; closing without ACK")
                return
            writer.write(frame(ack))
            await writer.drain()

    async def _oversized(self, writer: asyncio.StreamWriter) -> None:
        error = MessageRejected(f"the MLLP frame exceeds {self.max_frame_bytes} bytes",
                                VALUE_TOO_LONG)
        writer.write(frame(build_ack(None, "AR", error).encode("ascii")))
        await writer.drain()
        if self.on_refused is not None:
            try:
                self.on_refused(error)
            except Exception:  # an observer's failure must not break the connection's end
                log.exception("MLLP: on_refused failed")


def _frame_length(buffer: bytearray) -> int:
    start = buffer.find(START_BLOCK)
    return len(buffer) - start if start >= 0 else 0


def _take_frame(buffer: bytearray) -> bytearray | None:
    """Remove and return the first complete frame's payload; bytes before a start block
    (line noise, keep-alive newlines) are dropped."""
    start = buffer.find(START_BLOCK)
    if start < 0:
        buffer.clear()
        return None
    end = buffer.find(END_BLOCK, start + 1)
    if end < 0:
        if start:
            del buffer[:start]
        return None
    payload = buffer[start + 1:end]
    del buffer[:end + len(END_BLOCK)]
    return payload
