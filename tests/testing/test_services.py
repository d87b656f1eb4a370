"""The throwaway PostgreSQL and Mosquitto instances really start, answer and go away."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from carebridge.testing import (
    ServiceUnavailable,
    ThrowawayMosquitto,
    ThrowawayPostgres,
    find_postgres_binaries,
    free_port,
    services,
)

SYSTEM_POSTGRES_PORT = 5432
SYSTEM_MOSQUITTO_PORT = 1883


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port that somebody else is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


@pytest.fixture
def base_dir() -> Iterator[Path]:
    """An empty directory the postgres user can enter, to watch what is left in it."""
    path = Path(tempfile.mkdtemp(prefix="carebridge-test-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------ helpers


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_service_unavailable_is_a_runtime_error() -> None:
    assert issubclass(ServiceUnavailable, RuntimeError)


def _fake_bin(directory: Path, *names: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        program = directory / name
        program.write_text("#!/bin/sh\n")
        program.chmod(program.stat().st_mode | stat.S_IXUSR)


def test_find_postgres_binaries_prefers_highest_complete_version(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    _fake_bin(lib / "9.6" / "bin", "initdb", "pg_ctl", "postgres")
    _fake_bin(lib / "15" / "bin", "initdb", "pg_ctl", "postgres")
    _fake_bin(lib / "16" / "bin", "initdb", "pg_ctl")  # incomplete: no server
    (lib / "README").write_text("not a version")
    found = find_postgres_binaries(lib, path="")
    assert found is not None
    assert found.initdb == lib / "15" / "bin" / "initdb"
    assert found.postgres == lib / "15" / "bin" / "postgres"


def test_find_postgres_binaries_resolves_symlinks_on_path(tmp_path: Path) -> None:
    real = tmp_path / "pg" / "bin"
    _fake_bin(real, "initdb", "pg_ctl", "postgres")
    links = tmp_path / "local-bin"
    links.mkdir()
    for name in ("initdb", "pg_ctl", "postgres"):
        (links / name).symlink_to(real / name)
    found = find_postgres_binaries(tmp_path / "no-such-lib", path=os.fspath(links))
    assert found is not None
    assert found.pg_ctl == real.resolve() / "pg_ctl"


def test_find_postgres_binaries_returns_none_when_missing(tmp_path: Path) -> None:
    assert find_postgres_binaries(tmp_path / "no-such-lib", path=os.fspath(tmp_path)) is None


class _FakeApt:
    """Stands in for subprocess.run in services: records apt-get commands."""

    def __init__(self, install_results: list[int]) -> None:
        self.install_results = install_results
        self.calls: list[str] = []

    def __call__(self, command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        verb = "update" if "update" in command else "install " + command[-1]
        self.calls.append(verb)
        code = self.install_results.pop(0) if verb.startswith("install") else 0
        return subprocess.CompletedProcess(command, code, "", "E: simulated failure")


@pytest.fixture
def fake_root_apt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(services, "_APT_LOCK_PATH", tmp_path / "apt.lock")
    real_which = shutil.which
    monkeypatch.setattr(
        shutil,
        "which",
        lambda name, path=None: (
            "/usr/bin/apt-get" if name == "apt-get" else real_which(name, path=path)
        ),
    )


@pytest.mark.usefixtures("fake_root_apt")
@pytest.mark.parametrize(
    ("install_results", "expected_calls"),
    [
        ([0], ["install postgresql"]),
        ([100, 0], ["install postgresql", "update", "install postgresql"]),
    ],
)
def test_apt_get_update_runs_only_when_the_install_fails(
    monkeypatch: pytest.MonkeyPatch, install_results: list[int], expected_calls: list[str]
) -> None:
    fake = _FakeApt(install_results)
    monkeypatch.setattr(subprocess, "run", fake)
    services._install_with_apt("postgresql")
    assert fake.calls == expected_calls


@pytest.mark.usefixtures("fake_root_apt")
def test_missing_postgres_that_cannot_be_installed_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _FakeApt([100, 100])
    monkeypatch.setattr(subprocess, "run", fake)
    monkeypatch.setattr(services, "find_postgres_binaries", lambda: None)
    with pytest.raises(ServiceUnavailable, match=r"not found(.|\n)*simulated failure"):
        ThrowawayPostgres().start()
    assert fake.calls == ["install postgresql", "update", "install postgresql"]


def test_missing_mosquitto_when_not_root_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(services, "find_mosquitto_binary", lambda: None)
    with pytest.raises(ServiceUnavailable, match="apt-get install -y mosquitto"):
        ThrowawayMosquitto().start()


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_postgres_answers_on_loopback_only(postgres_server: ThrowawayPostgres) -> None:
    assert postgres_server.port != SYSTEM_POSTGRES_PORT
    assert postgres_server.url == f"postgresql://postgres@127.0.0.1:{postgres_server.port}/postgres"
    with psycopg.connect(postgres_server.url) as conn:
        row = conn.execute(
            "select version(), current_setting('listen_addresses'), current_setting('port'),"
            " host(inet_server_addr()), current_setting('data_directory'),"
            " current_setting('fsync'), current_user"
        ).fetchone()
    assert row is not None
    version, listen, port, server_addr, data_dir, fsync, user = row
    assert version.startswith("PostgreSQL ")
    assert listen == "127.0.0.1"
    assert int(port) == postgres_server.port
    assert server_addr == "127.0.0.1"
    # It is our own server, not a system one that happens to answer.
    assert Path(data_dir) == postgres_server.data_dir
    assert fsync == "off"
    assert user == "postgres"


@pytest.mark.postgres
def test_postgres_create_database(postgres_server: ThrowawayPostgres) -> None:
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = postgres_server.create_database(name)
    assert url == postgres_server.url_for(name)
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "select current_database(), pg_encoding_to_char(encoding)"
                " from pg_database where datname = current_database()"
            ).fetchone()
        assert row == (name, "UTF8")
    finally:
        postgres_server.drop_database(name)
    with psycopg.connect(postgres_server.url) as conn:
        gone = conn.execute("select count(*) from pg_database where datname = %s", [name])
        assert gone.fetchone() == (0,)


@pytest.mark.postgres
def test_postgres_stop_removes_directory_and_closes_port(base_dir: Path) -> None:
    with ThrowawayPostgres(durable=True, base_dir=base_dir) as pg:
        directory, port = pg.directory, pg.port
        assert directory.parent == base_dir
        assert (pg.data_dir / "PG_VERSION").is_file()
        with pg.connect() as conn:
            row = conn.execute("select current_setting('fsync')").fetchone()
        assert row == ("on",)  # durable=True keeps the real settings
    assert not directory.exists()
    assert list(base_dir.iterdir()) == []
    assert not _accepts(port)
    pg.stop()  # idempotent


@pytest.mark.postgres
def test_postgres_failed_start_cleans_up_and_shows_log(base_dir: Path) -> None:
    pg = ThrowawayPostgres(settings={"no_such_setting": "1"}, base_dir=base_dir)
    with pytest.raises(ServiceUnavailable, match="no_such_setting"):
        pg.start()
    assert list(base_dir.iterdir()) == []
    assert not pg.running


@pytest.mark.postgres
def test_postgres_on_a_busy_port_fails_without_touching_the_owner(
    busy_port: int, base_dir: Path
) -> None:
    with pytest.raises(ServiceUnavailable, match="could not bind"):
        ThrowawayPostgres(port=busy_port, base_dir=base_dir).start()
    assert list(base_dir.iterdir()) == []
    assert _accepts(busy_port)


@pytest.mark.postgres
def test_postgres_retries_when_the_free_port_is_taken(
    busy_port: int, base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([busy_port, free_port(), free_port()])
    monkeypatch.setattr(services, "free_port", lambda: next(ports))
    with ThrowawayPostgres(base_dir=base_dir) as pg:
        assert pg.port != busy_port
        with pg.connect() as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    assert list(base_dir.iterdir()) == []


# ---------------------------------------------------------------------------- Mosquitto


def _mqtt_connect_packet(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT: clean session, keepalive 60 s, no credentials."""
    cid = client_id.encode()
    variable_header = (
        b"\x00\x04MQTT"  # protocol name
        + b"\x04"  # protocol level 4 = 3.1.1
        + b"\x02"  # connect flags: clean session
        + (60).to_bytes(2, "big")  # keepalive
    )
    payload = len(cid).to_bytes(2, "big") + cid
    remaining = variable_header + payload
    assert len(remaining) < 128  # one-byte remaining length
    return bytes([0x10, len(remaining)]) + remaining


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _mqtt_handshake(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(_mqtt_connect_packet(f"carebridge-test-{uuid.uuid4().hex[:8]}"))
        connack = _recv_exactly(sock, 4)
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    return connack


def test_mosquitto_accepts_an_mqtt_connection(mosquitto_server: ThrowawayMosquitto) -> None:
    assert mosquitto_server.host == "127.0.0.1"
    assert mosquitto_server.port != SYSTEM_MOSQUITTO_PORT
    assert mosquitto_server.url == f"mqtt://127.0.0.1:{mosquitto_server.port}"
    assert _mqtt_handshake(mosquitto_server.host, mosquitto_server.port) == b"\x20\x02\x00\x00"


def test_mosquitto_listens_on_loopback_only(mosquitto_server: ThrowawayMosquitto) -> None:
    config = mosquitto_server.config_path.read_text()
    assert f"listener {mosquitto_server.port} 127.0.0.1" in config.splitlines()
    assert "port " not in config  # no second, all-interfaces listener


def test_mosquitto_stop_removes_directory_and_closes_port(base_dir: Path) -> None:
    with ThrowawayMosquitto(base_dir=base_dir) as broker:
        directory, port = broker.directory, broker.port
        assert broker.running
        assert _mqtt_handshake(broker.host, port) == b"\x20\x02\x00\x00"
    assert not directory.exists()
    assert list(base_dir.iterdir()) == []
    assert not _accepts(port)
    broker.stop()  # idempotent


def test_mosquitto_on_a_busy_port_fails_and_cleans_up(busy_port: int, base_dir: Path) -> None:
    with pytest.raises(ServiceUnavailable, match="in use"):
        ThrowawayMosquitto(port=busy_port, base_dir=base_dir).start()
    assert list(base_dir.iterdir()) == []
    assert _accepts(busy_port)


def test_mosquitto_retries_when_the_free_port_is_taken(
    busy_port: int, base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([busy_port, free_port(), free_port()])
    monkeypatch.setattr(services, "free_port", lambda: next(ports))
    with ThrowawayMosquitto(base_dir=base_dir) as broker:
        assert broker.port != busy_port
        assert _mqtt_handshake(broker.host, broker.port) == b"\x20\x02\x00\x00"
