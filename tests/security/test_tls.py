"""Point 6: HTTPS when a certificate is given."""

from __future__ import annotations

import datetime
import ssl
import subprocess
import sys
import time
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


@pytest.mark.slow
def test_serve_speaks_https_with_a_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "carebridge", "serve", "--database",
         f"sqlite:///{tmp_path}/t.db", "--port", str(port), "--tls-cert", str(cert),
         "--tls-key", str(key)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx2.Client(verify=ssl.create_default_context(cafile=str(cert)),
                           timeout=5) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    reply = client.get(f"https://127.0.0.1:{port}/fhir/metadata")
                    break
                except httpx2.TransportError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise
                    time.sleep(0.2)
            assert reply.status_code == 200
            assert reply.headers["strict-transport-security"].startswith("max-age=")
            config = client.get(
                f"https://127.0.0.1:{port}/fhir/.well-known/smart-configuration").json()
            assert config["token_endpoint"].startswith("https://")
        with pytest.raises(httpx2.TransportError), httpx2.Client(timeout=5) as plain:
            plain.get(f"http://127.0.0.1:{port}/fhir/metadata")
    finally:
        process.terminate()
        process.wait(timeout=15)
