"""Run ``carebridge serve`` as a real process on a free loopback port.

End-to-end tests and benchmarks talk to it over real HTTP, exactly as a client would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from carebridge.testing.services import ServiceUnavailable, free_port


class ServerProcess:
    """``with ServerProcess("sqlite:///x.db") as server: server.base_url`` -> .../fhir"""

    def __init__(self, database_url: str, *, extra_args: tuple[str, ...] = (),
                 program: tuple[str, ...] | None = None, start_timeout: float = 60.0,
                 secure: bool = False, env: dict[str, str] | None = None) -> None:
        """``program`` replaces ``python -m carebridge serve`` (it must take the same
        ``--database``, ``--host`` and ``--port`` options), e.g. a benchmark's own variant.

        By default the server runs with authentication OFF (``CAREBRIDGE_INSECURE_DEV=1``, the
        environment form of ``--insecure-dev``; it listens on 127.0.0.1 only), so tests and
        benchmarks of other parts need no tokens. ``secure=True`` runs it as deployed: bearer
        tokens required (see :mod:`carebridge.security`). ``env`` adds environment variables.
        """
        self.secure = secure
        self.extra_env = dict(env or {})
        self.database_url = database_url
        self.extra_args = extra_args
        self.program = program or (sys.executable, "-m", "carebridge", "serve")
        self.start_timeout = start_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
            prefix="carebridge-", suffix=".log", delete=False
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Self:
        self.port = free_port()
        command = [*self.program, "--database", self.database_url,
                   "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBRIDGE_")}
        if not self.secure:
            env["CAREBRIDGE_INSECURE_DEV"] = "1"
        env.update(self.extra_env)
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceUnavailable(f"carebridge serve exited:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/metadata", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise ServiceUnavailable(f"carebridge serve did not answer in time:\n{self.output()}")

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._log.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        Path(self._log.name).unlink(missing_ok=True)
