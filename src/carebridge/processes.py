"""Child processes that share a server's work (``serve --mqtt-workers N``,
``serve --mllp-workers N``): started with the application, stopped before it.

One Python process runs Python code on one core at a time. A server with more cores than one
starts children that each take a share of a way in (the broker spreads MQTT messages over a
shared subscription; the kernel spreads MLLP connections over sockets bound with
SO_REUSEPORT) and store through the same database. Each kind says how its children are
started (:meth:`ChildProcesses.command`); starting, stopping (SIGTERM, then SIGKILL after a
timeout) and the ASGI lifespan hooks are shared here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from starlette.applications import Starlette

from carebridge.api.lifespan import extend_lifespan
from carebridge.config import Settings
from carebridge.runtime import settle as settle_gc

if TYPE_CHECKING:
    from carebridge.app import Stores

log = logging.getLogger(__name__)


ORPHAN_CHECK = 1.0  # seconds between a child's looks at whether its server is still there


PARENT_ENV = "CAREBRIDGE_PARENT_PID"  # set for each child: the server that started it


@contextmanager
def serving(stores: Stores) -> Iterator[None]:
    """A child's stores in service: the collector settled (carebridge.runtime), the audit
    writer started; afterwards the audit ledger flushed and the repository closed."""
    settle_gc()
    if stores.authority is not None:
        stores.authority.start()
    try:
        yield
    finally:
        if stores.authority is not None:
            stores.authority.close()  # flushes the audit ledger
        stores.repository.close()


def orphaned() -> bool:
    """Whether the server that started this child is gone (killed without stopping its
    children first, e.g. SIGKILL): a child then stops too instead of serving on alone. The
    server's pid comes with the child's environment, so a server that died while the child
    was still starting counts too. False for a process no server started."""
    expected = os.environ.get(PARENT_ENV)
    return expected is not None and os.getppid() != int(expected)


class ChildProcesses(ABC):
    """``count`` children of one kind: ``carebridge <subcommand>`` with the server's database,
    validation mode and development flag, plus the options of the kind (:meth:`options`);
    subclasses may add to :meth:`environment`."""

    kind = "worker"
    subcommand = ""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self.processes: list[subprocess.Popen[bytes]] = []

    @abstractmethod
    def options(self) -> list[str]:
        """The command-line options of this kind of child (its way in)."""

    def command(self, index: int) -> list[str]:
        s = self.settings
        command = [sys.executable, "-m", "carebridge", self.subcommand, "--index", str(index),
                   "--database", s.database_url, "--validation", s.validation,
                   *self.options()]
        return [*command, "--insecure-dev"] if s.insecure_dev else command

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env[PARENT_ENV] = str(os.getpid())
        if self.settings.master_key_file:  # the children open the store with the same key
            env["CAREBRIDGE_MASTER_KEY_FILE"] = self.settings.master_key_file
        return env

    def start(self) -> None:
        env = self.environment()
        for index in range(self.count):
            self.processes.append(subprocess.Popen(self.command(index), env=env))

    def stop(self, timeout: float = 30.0) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s %d did not stop; killing it", self.kind, process.pid)
                process.kill()
                process.wait()
        self.processes.clear()


def attach_children(asgi: Starlette, children: ChildProcesses) -> ChildProcesses:
    """Run ``children`` inside ``asgi``'s lifespan: started with it, stopped (and waited
    for, so they end their sessions cleanly) before its own shutdown."""

    async def start() -> None:
        children.start()

    async def stop() -> None:
        await asyncio.to_thread(children.stop)

    extend_lifespan(asgi, start, stop)
    return children
