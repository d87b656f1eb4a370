"""Throwaway PostgreSQL and Mosquitto instances for the test suite and the benchmarks.

The house rule is that PostgreSQL and Mosquitto are *real* in tests: the suite
starts its own private instances on free loopback ports from the installed
binaries, and never touches a service somebody else left running (this matters:
developer machines and CI often have a system PostgreSQL on 5432 and a system
Mosquitto on 1883).

Why this is hand-written rather than taken from pytest-postgresql & co:

* the suite runs as root on CI and on developer machines.  PostgreSQL refuses to
  run as root, so ``initdb`` and ``pg_ctl`` must be run through
  ``runuser -u postgres --`` in a directory owned by ``postgres``; the existing
  plugins run the binaries as the current user and simply fail there;
* when the binaries are missing and we are root, the missing Debian package is
  installed with ``apt-get`` instead of the test being skipped: a test that needs
  a service and cannot get one must fail in CI, never be silently skipped;
* the benchmarks (``bench/``) need exactly the same helper outside pytest, with
  realistic durability settings (``durable=True``), so it must be a plain library
  with no pytest dependency.

Typical use::

    with ThrowawayPostgres() as pg:
        url = pg.create_database("carebridge_test")
        ...
    with ThrowawayMosquitto() as broker:
        connect_to(broker.host, broker.port)
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

__all__ = [
    "PostgresBinaries",
    "ServiceUnavailable",
    "ThrowawayMosquitto",
    "ThrowawayPostgres",
    "find_mosquitto_binary",
    "find_postgres_binaries",
    "free_port",
]

LOOPBACK = "127.0.0.1"
POSTGRES_LIB_DIR = Path("/usr/lib/postgresql")
POSTGRES_APT_PACKAGE = "postgresql"
MOSQUITTO_APT_PACKAGE = "mosquitto"
POSTGRES_OS_USER = "postgres"

# A Unix socket path may be at most 107 bytes; leave room for "/.s.PGSQL.65535".
_MAX_SOCKET_DIR_LEN = 90
_APT_LOCK_PATH = Path(tempfile.gettempdir()) / "carebridge-apt-get.lock"
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 40


class ServiceUnavailable(RuntimeError):
    """A throwaway service could not be found, installed or started."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is not reserved: a caller that loses the race sees a bind error,
    which both service classes handle by retrying with another port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _is_root() -> bool:
    return os.geteuid() == 0


def _clean_env() -> dict[str, str]:
    """The environment for service binaries: no PG* variables, a C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"(log {path} is empty)"


def _world_traversable(path: Path) -> bool:
    """True if every directory from / down to ``path`` can be entered by anybody."""
    try:
        current = path.resolve()
        for directory in (current, *current.parents):
            if not directory.stat().st_mode & 0o001:
                return False
    except OSError:
        return False
    return True


def _base_temp_dir(explicit: str | os.PathLike[str] | None, *, for_other_user: bool) -> str:
    """Where to create the instance's temporary directory.

    ``tempfile.gettempdir()`` unless it is too long for a Unix socket path or,
    when the service runs as another user, not reachable by that user; then /tmp.
    """
    if explicit is not None:
        return os.fspath(explicit)
    base = tempfile.gettempdir()
    if len(base) > _MAX_SOCKET_DIR_LEN - 30 or (
        for_other_user and not _world_traversable(Path(base))
    ):
        return "/tmp"
    return base


def _install_with_apt(package: str) -> None:
    """Install a Debian package as root, running ``apt-get update`` only if needed.

    Raises ServiceUnavailable if we are not root, there is no apt-get, or the
    installation fails.  A file lock serialises concurrent test processes.
    """
    if not _is_root():
        raise ServiceUnavailable(
            f"the {package!r} package is not installed and we are not root: "
            f"install it with `sudo apt-get install -y {package}`"
        )
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise ServiceUnavailable(
            f"the {package!r} package is not installed and there is no apt-get"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [apt_get, "-o", "DPkg::Lock::Timeout=300", "install", "-y", package]
    update = [apt_get, "-o", "DPkg::Lock::Timeout=300", "update"]
    with open(_APT_LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            first = subprocess.run(
                install, env=env, capture_output=True, text=True, timeout=900, check=False
            )
            if first.returncode == 0:
                return
            for command in (update, install):
                result = subprocess.run(
                    command, env=env, capture_output=True, text=True, timeout=900, check=False
                )
                if result.returncode != 0:
                    output = (result.stdout + result.stderr).strip().splitlines()
                    raise ServiceUnavailable(
                        f"`{shlex.join(command)}` failed with exit code {result.returncode}:\n"
                        + "\n".join(output[-_LOG_TAIL_LINES:])
                    )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True, slots=True)
class PostgresBinaries:
    """Absolute paths of the PostgreSQL server programs we need."""

    initdb: Path
    pg_ctl: Path
    postgres: Path


_PG_PROGRAMS = ("initdb", "pg_ctl", "postgres")


def _binaries_in(directory: Path) -> PostgresBinaries | None:
    paths = [directory / name for name in _PG_PROGRAMS]
    if all(p.is_file() and os.access(p, os.X_OK) for p in paths):
        return PostgresBinaries(*paths)
    return None


def _version_key(name: str) -> tuple[int, ...] | None:
    if not re.fullmatch(r"\d+(\.\d+)*", name):
        return None
    return tuple(int(part) for part in name.split("."))


def find_postgres_binaries(
    lib_dir: Path = POSTGRES_LIB_DIR, path: str | None = None
) -> PostgresBinaries | None:
    """Locate initdb, pg_ctl and postgres, or return None.

    First ``<lib_dir>/<highest version>/bin`` (Debian's layout; versions compare
    numerically, so 16 beats 9.6), then PATH.  A program found on PATH is
    resolved through symlinks and, if its real directory holds all three
    programs, that directory is used: /usr/local/bin/initdb and friends may be
    symlinks or wrapper scripts, whereas pg_ctl must find the real ``postgres``
    beside itself.
    """
    versions: list[tuple[tuple[int, ...], Path]] = []
    with contextlib.suppress(OSError):
        for entry in lib_dir.iterdir():
            key = _version_key(entry.name)
            if key is not None:
                versions.append((key, entry))
    for _key, entry in sorted(versions, reverse=True):
        found = _binaries_in(entry / "bin")
        if found is not None:
            return found

    located = [shutil.which(name, path=path) for name in _PG_PROGRAMS]
    if any(p is None for p in located):
        return None
    resolved = [Path(p).resolve() for p in located if p is not None]
    real_dir = _binaries_in(resolved[0].parent)
    if real_dir is not None:
        return real_dir
    return PostgresBinaries(*resolved)


def _postgres_binaries_or_install() -> PostgresBinaries:
    found = find_postgres_binaries()
    if found is not None:
        return found
    try:
        _install_with_apt(POSTGRES_APT_PACKAGE)
    except ServiceUnavailable as exc:
        raise ServiceUnavailable(
            f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
            f"{POSTGRES_LIB_DIR}/<version>/bin nor on PATH, and installing them failed: {exc}"
        ) from exc
    found = find_postgres_binaries()
    if found is None:
        raise ServiceUnavailable(
            f"`apt-get install {POSTGRES_APT_PACKAGE}` succeeded but initdb, pg_ctl and postgres "
            f"are still not found in {POSTGRES_LIB_DIR}/<version>/bin nor on PATH"
        )
    return found


class ThrowawayPostgres:
    """A private PostgreSQL server in a temporary directory, on a free loopback port.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.  Connect as
    the ``postgres`` superuser without a password (trust authentication) to
    :attr:`url`, or make a database with :meth:`create_database`.

    ``durable=False`` (the default, for tests) turns off fsync,
    synchronous_commit and full_page_writes; benchmarks that want realistic
    numbers pass ``durable=True``.  ``settings`` adds or overrides server
    settings (``{"shared_buffers": "256MB"}``).
    """

    def __init__(
        self,
        *,
        durable: bool = False,
        settings: Mapping[str, str] | None = None,
        port: int | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        binaries: PostgresBinaries | None = None,
        start_timeout: int = 60,
    ) -> None:
        self.durable = durable
        self.settings: dict[str, str] = dict(settings or {})
        self.host = LOOPBACK
        self._requested_port = port
        self._base_dir = base_dir
        self._binaries = binaries
        self.start_timeout = start_timeout
        self._port: int | None = None
        self._dir: Path | None = None
        self._running = False
        self.startup_seconds: float | None = None

    # -- properties ---------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def directory(self) -> Path:
        """The temporary directory holding the data dir, the log and the socket."""
        if self._dir is None:
            raise RuntimeError("the server has not been started")
        return self._dir

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def running(self) -> bool:
        return self._running

    @property
    def binaries(self) -> PostgresBinaries:
        if self._binaries is None:
            raise RuntimeError("the server has not been started")
        return self._binaries

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{POSTGRES_OS_USER}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    # -- lifecycle ------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """initdb and start the server; on any failure clean up and raise."""
        if self._dir is not None:
            raise RuntimeError("the server is already started")
        began = time.monotonic()
        if self._binaries is None:
            self._binaries = _postgres_binaries_or_install()
        owner: tuple[int, int] | None = None  # (uid, gid) to run as, when we are root
        if _is_root():
            try:
                pw = pwd.getpwnam(POSTGRES_OS_USER)
            except KeyError:
                raise ServiceUnavailable(
                    f"running as root but there is no {POSTGRES_OS_USER!r} user to run "
                    f"PostgreSQL as (PostgreSQL refuses to run as root); "
                    f"`apt-get install {POSTGRES_APT_PACKAGE}` creates it"
                ) from None
            if shutil.which("runuser") is None:
                raise ServiceUnavailable("running as root but `runuser` (util-linux) is missing")
            owner = (pw.pw_uid, pw.pw_gid)
        base = _base_temp_dir(self._base_dir, for_other_user=owner is not None)
        self._dir = Path(tempfile.mkdtemp(prefix="carebridge-pg-", dir=base))
        atexit.register(self.stop)
        try:
            if owner is not None:
                os.chown(self._dir, *owner)
            self._initdb()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop the server (immediate shutdown) and remove its directory.  Idempotent."""
        atexit.unregister(self.stop)
        directory, self._dir = self._dir, None
        if directory is None:
            return
        try:
            if self._running:
                self._shutdown(directory / "data")
        finally:
            self._running = False
            shutil.rmtree(directory, ignore_errors=True)

    # -- database helpers -------------------------------------------------------

    def connect(
        self, dbname: str = "postgres", *, autocommit: bool = True
    ) -> psycopg.Connection[TupleRow]:
        """A new psycopg connection to ``dbname`` as the postgres superuser."""
        return psycopg.connect(self.url_for(dbname), autocommit=autocommit)

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """CREATE DATABASE ``name`` (owned by postgres) and return its URL."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(query)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE IF EXISTS ``name`` WITH (FORCE)."""
        query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(query)

    # -- internals ------------------------------------------------------------------

    def _command(self, program: Path, *args: str) -> list[str]:
        command = [os.fspath(program), *args]
        if _is_root():
            return ["runuser", "-u", POSTGRES_OS_USER, "--", *command]
        return command

    def _run(
        self, program: Path, *args: str, cwd: Path, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._command(program, *args),
            cwd=cwd,  # must be accessible to the postgres user, unlike e.g. /root
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _initdb(self) -> None:
        result = self._run(
            self.binaries.initdb,
            "-D", os.fspath(self.data_dir),
            "-A", "trust",
            "-U", POSTGRES_OS_USER,
            "-E", "UTF8",
            "--no-locale",
            "--no-sync",
            cwd=self.directory,
            timeout=120,
        )  # fmt: skip
        if result.returncode != 0:
            raise ServiceUnavailable(
                f"initdb failed with exit code {result.returncode}:\n"
                f"{(result.stdout + result.stderr).strip()}"
            )

    def _server_options(self, port: int) -> str:
        settings = {
            "listen_addresses": LOOPBACK,
            "max_connections": "200",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        settings |= self.settings
        options = ["-p", str(port), "-k", os.fspath(self.directory)]
        for key, value in settings.items():
            options += ["-c", f"{key}={value}"]
        return shlex.join(options)

    def _start_server(self) -> None:
        ports = (
            [self._requested_port]
            if self._requested_port is not None
            else [free_port() for _ in range(_PORT_ATTEMPTS)]
        )
        for attempt, port in enumerate(ports, start=1):
            self._port = port
            self._running = True  # a failed start may still leave a postmaster behind
            result = self._run(
                self.binaries.pg_ctl,
                "start",
                "-w",
                "-t", str(self.start_timeout),
                "-D", os.fspath(self.data_dir),
                "-l", os.fspath(self.log_path),
                "-o", self._server_options(port),
                cwd=self.directory,
                timeout=self.start_timeout + 30,
            )  # fmt: skip
            if result.returncode == 0:
                return
            log = _tail(self.log_path)
            self._shutdown(self.data_dir)
            self._running = False
            if "could not bind" in log and attempt < len(ports):
                self.log_path.unlink(missing_ok=True)
                continue
            raise ServiceUnavailable(
                f"PostgreSQL failed to start on {LOOPBACK}:{port} "
                f"(pg_ctl exit code {result.returncode}).\n"
                f"pg_ctl output:\n{(result.stdout + result.stderr).strip()}\n"
                f"last lines of the server log:\n{log}"
            )

    def _shutdown(self, data_dir: Path) -> None:
        """pg_ctl stop -m immediate; SIGKILL the postmaster if that does not work."""
        if not (data_dir / "postmaster.pid").exists():
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            result = self._run(
                self.binaries.pg_ctl,
                "stop", "-w", "-t", "30", "-m", "immediate", "-D", os.fspath(data_dir),
                cwd=data_dir.parent,
                timeout=60,
            )  # fmt: skip
            if result.returncode == 0:
                return
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- Mosquitto


def find_mosquitto_binary(path: str | None = None) -> Path | None:
    """``mosquitto`` on PATH, else in /usr/sbin (not on a normal user's PATH)."""
    found = shutil.which("mosquitto", path=path)
    if found is not None:
        return Path(found)
    for candidate in (Path("/usr/sbin/mosquitto"), Path("/usr/local/sbin/mosquitto")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _mosquitto_binary_or_install() -> Path:
    found = find_mosquitto_binary()
    if found is not None:
        return found
    try:
        _install_with_apt(MOSQUITTO_APT_PACKAGE)
    except ServiceUnavailable as exc:
        raise ServiceUnavailable(
            f"the mosquitto broker is not on PATH nor in /usr/sbin, and installing it failed: {exc}"
        ) from exc
    found = find_mosquitto_binary()
    if found is None:
        raise ServiceUnavailable(
            f"`apt-get install {MOSQUITTO_APT_PACKAGE}` succeeded but mosquitto is still not found"
        )
    return found


_MOSQUITTO_RUNNING = re.compile(rb"mosquitto version \S+ running")


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class ThrowawayMosquitto:
    """A private Mosquitto MQTT broker on a free loopback port, anonymous, in memory.

    ``extra_config`` lines are appended to the generated mosquitto.conf (they must
    not silence the notice log: readiness is detected from the broker's log).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        extra_config: Sequence[str] = (),
        base_dir: str | os.PathLike[str] | None = None,
        binary: Path | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.host = LOOPBACK
        self._requested_port = port
        self.extra_config = list(extra_config)
        self._base_dir = base_dir
        self._binary = binary
        self.start_timeout = start_timeout
        self._port: int | None = None
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the broker has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def directory(self) -> Path:
        if self._dir is None:
            raise RuntimeError("the broker has not been started")
        return self._dir

    @property
    def config_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        if self._dir is not None:
            raise RuntimeError("the broker is already started")
        began = time.monotonic()
        binary = self._binary or _mosquitto_binary_or_install()
        # As root mosquitto drops privileges to the `mosquitto` user, but only after
        # it has read its configuration, and it logs to a file we opened for it: a
        # 0700 root-owned directory is fine (checked with mosquitto 2.0.11).
        base = _base_temp_dir(self._base_dir, for_other_user=False)
        self._dir = Path(tempfile.mkdtemp(prefix="carebridge-mqtt-", dir=base))
        atexit.register(self.stop)
        try:
            ports = (
                [self._requested_port]
                if self._requested_port is not None
                else [free_port() for _ in range(_PORT_ATTEMPTS)]
            )
            for attempt, port in enumerate(ports, start=1):
                if self._launch(binary, port):
                    break
                log = _tail(self.log_path)
                if "in use" in log.lower() and attempt < len(ports):
                    continue
                raise ServiceUnavailable(
                    f"mosquitto failed to start on {LOOPBACK}:{port} within "
                    f"{self.start_timeout:g} s; last lines of its log:\n{log}"
                )
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Terminate the broker and remove its directory.  Idempotent."""
        atexit.unregister(self.stop)
        self._terminate()
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def _launch(self, binary: Path, port: int) -> bool:
        """Start mosquitto on ``port``; True once the port accepts connections."""
        self._terminate()
        self._port = port
        lines = [
            f"listener {port} {LOOPBACK}",
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            # Needed: start() waits for the "mosquitto version ... running" notice.
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "set_tcp_nodelay true",
            *self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in _terminate
        self._process = subprocess.Popen(
            [os.fspath(binary), "-c", os.fspath(self.config_path)],
            cwd=self.directory,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            # Another process may already listen on the port (it was only free a
            # moment ago) and would accept our probe; "... running" is logged only
            # once *this* broker has bound its listener.
            if _MOSQUITTO_RUNNING.search(self.log_path.read_bytes()) and _port_accepts(
                LOOPBACK, port
            ):
                return True
            time.sleep(0.01)
        self._terminate()
        return False

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            else:
                process.wait()
        log_file, self._log_file = self._log_file, None
        if log_file is not None:
            log_file.close()
