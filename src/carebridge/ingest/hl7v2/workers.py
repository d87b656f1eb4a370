"""More MLLP processes: ``carebridge serve --mllp-port P --mllp-workers N``.

A message costs milliseconds of Python (parsing, mapping, validation, index extraction) and one
process runs Python on one core at a time. ``--mllp-workers N`` starts N more processes
(``carebridge mllp-worker``, children of the server) that listen on the same port: every
listener binds with SO_REUSEPORT and the kernel spreads new connections over them. Each
process runs the same listener as the server (processor, group committer, audit), so a
connection is served start to end by one process and its messages keep their order.

They share the work because each message is worked out from a read snapshot before the write
lock (``Hl7Processor._speculate``, storage/readset.py): under the lock a process only checks
that the message's reads still hold and stores its writes, so the others can map and validate
meanwhile. Exactly-once holds across processes as within one: the archive row is written in
the same transaction as the message's resources, looked up again under the lock (SQLite's one
writer, or PostgreSQL's transaction lock on the message key), and unique per (sender,
control id). The server's monitoring engine scores what the workers store from the outbox.
Workers stop (SIGTERM: they stop accepting and finish the frame in hand) before the server's
own shutdown, and by themselves within a second if the server is killed outright; one that
dies is not restarted, and its connections' senders reconnect to the others and resend what
had no ACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from starlette.applications import Starlette

from carebridge.config import Settings
from carebridge.processes import (
    ORPHAN_CHECK,
    ChildProcesses,
    attach_children,
    orphaned,
    serving,
)


def run_worker(settings: Settings, index: int) -> None:
    """Run one MLLP process until SIGTERM/SIGINT (``carebridge mllp-worker``)."""
    from carebridge.app import build_stores, mllp_settings
    from carebridge.ingest.hl7v2.listener import Hl7Listener

    if settings.mllp_port is None:
        raise ValueError("an MLLP worker needs --mllp-port")
    stores = build_stores(settings)
    listener = Hl7Listener(stores.service, mllp_settings(settings),
                           ledger=stores.authority.ledger if stores.authority else None)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await listener.start()
        print(f"mllp-worker {index} ready", flush=True)
        while not orphaned():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), ORPHAN_CHECK)
            if stop.is_set():
                break
        await listener.stop()

    with serving(stores):
        asyncio.run(main())


class MllpWorkers(ChildProcesses):
    kind = "MLLP worker"
    subcommand = "mllp-worker"

    def options(self) -> list[str]:
        s = self.settings
        assert s.mllp_port is not None
        options = ["--host", s.host, "--mllp-port", str(s.mllp_port)]
        if s.mllp_tls_cert:
            options += ["--mllp-tls-cert", s.mllp_tls_cert]
            if s.mllp_tls_key:
                options += ["--mllp-tls-key", s.mllp_tls_key]
        return options


def attach_mllp_workers(asgi: Starlette, settings: Settings, count: int) -> ChildProcesses:
    """Run :class:`MllpWorkers` inside ``asgi``'s lifespan."""
    return attach_children(asgi, MllpWorkers(settings, count))
