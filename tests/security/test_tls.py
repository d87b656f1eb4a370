"""Point 6: HTTPS when a certificate is given."""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from carebridge.testing.services import free_port


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


A01 = (b"MSH|^~\\&|ADT1|GOOD HEALTH|CB|CB|20240101||ADT^A01|TLS-1|P|2.5.1\r"
       b"EVN|A01|20240101\rPID|1||TLS-P1^^^GH^MR||Secure^Sam||19700101|M\r"
       b"PV1|1|I|W1^1^1||||||||||||||||V-TLS-1")


def _mllp_ack(sock: socket.socket) -> bytes:
    sock.sendall(b"\x0b" + A01 + b"\x1c\x0d")
    return read_mllp_answer(sock)


def read_mllp_answer(sock: socket.socket) -> bytes:
    """Bytes up to the end of one MLLP frame (or until the server closes)."""
    answer = b""
    while b"\x1c" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


@contextlib.contextmanager
def _serving(tmp_path: Path, *options: str) -> Iterator[tuple[Path, int, int]]:
    """``carebridge serve`` with a self-signed certificate and MLLP, up and answering:
    (certificate, HTTP port, MLLP port)."""
    cert, key = _self_signed(tmp_path)
    port, mllp_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "carebridge", "serve", "--database",
         f"sqlite:///{tmp_path}/t.db", "--port", str(port), "--tls-cert", str(cert),
         "--tls-key", str(key), "--mllp-port", str(mllp_port), *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        # The MLLP listener starts with the application, and HTTP only once the application
        # has started: wait for both (waiting for MLLP alone raced HTTP's bind under load).
        for waited in (mllp_port, port):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", waited), timeout=5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise
                    time.sleep(0.2)
        yield cert, port, mllp_port
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.mark.slow
def test_serve_speaks_https_and_mllp_over_tls_with_a_certificate(tmp_path: Path) -> None:
    with _serving(tmp_path) as (cert, port, mllp_port), httpx2.Client(
            verify=ssl.create_default_context(cafile=str(cert)), timeout=5) as client:
        reply = client.get(f"https://127.0.0.1:{port}/fhir/metadata")
        assert reply.status_code == 200
        assert reply.headers["strict-transport-security"].startswith("max-age=")
        config = client.get(
            f"https://127.0.0.1:{port}/fhir/.well-known/smart-configuration").json()
        assert config["token_endpoint"].startswith("https://")
        with pytest.raises(httpx2.TransportError), httpx2.Client(timeout=5) as plain:
            plain.get(f"http://127.0.0.1:{port}/fhir/metadata")
        # MLLP takes the same certificate: a TLS sender gets its ACK, a plain one nothing.
        context = ssl.create_default_context(cafile=str(cert))
        with socket.create_connection(("127.0.0.1", mllp_port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert b"MSA|AA|TLS-1" in _mllp_ack(tls)
        with socket.create_connection(("127.0.0.1", mllp_port), timeout=10) as clear, \
                contextlib.suppress(ConnectionError):
            assert b"MSA" not in _mllp_ack(clear)


@pytest.mark.slow
def test_mllp_plaintext_keeps_legacy_senders_working_beside_https(tmp_path: Path) -> None:
    with _serving(tmp_path, "--mllp-plaintext") as (_cert, _port, mllp_port), \
            socket.create_connection(("127.0.0.1", mllp_port), timeout=10) as clear:
        assert b"MSA|AA|TLS-1" in _mllp_ack(clear)
