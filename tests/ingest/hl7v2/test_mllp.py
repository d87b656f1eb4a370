"""The MLLP listener over real sockets, with senders nobody here wrote: python-hl7's
``MLLPClient`` and its ``mllp_send`` command."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hl7.client import MLLPClient

from carebridge.ingest.hl7v2.committer import GroupCommitter
from carebridge.ingest.hl7v2.listener import ssl_context
from carebridge.ingest.hl7v2.mllp import MllpServer
from carebridge.ingest.hl7v2.parsing import read_frame
from carebridge.ingest.hl7v2.processor import Hl7Processor
from carebridge.ingest.hl7v2.store import MessageStore
from carebridge.storage import Repository

from .conftest import ack_fields, python_hl7_samples, sample, stored

SB, EB = b"\x0b", b"\x1c\x0d"


class RunningServer:
    """An MllpServer on a free port, its event loop in a thread (as in uvicorn's loop)."""

    def __init__(self, handler: Callable[[bytes], bytes], **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = MllpServer(handler, "127.0.0.1", 0, **options)
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.port = self.server.bound_port

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(params=["on the loop", "in threads"])
def listening(hl7: Hl7Processor, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """The listener as the server runs it (common frames answered on the event loop,
    awaiting the group commit: ``handle_frame_fast``), and with every frame in the pool."""
    committer = GroupCommitter(hl7).start()
    fast = hl7.handle_frame_fast if request.param == "on the loop" else None
    server = RunningServer(hl7.handle_frame, idle_timeout=5.0, fast_handler=fast)
    try:
        yield server
    finally:
        server.close()
        committer.stop()


def read_acks(sock: socket.socket, count: int = 1) -> list[bytes]:
    """``count`` ACK frames (fewer if the server closes first)."""
    data = b""
    while data.count(EB) < count:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return [frame + EB for frame in data.split(EB) if frame]


def read_ack(sock: socket.socket) -> bytes:
    acks = read_acks(sock)
    return acks[0] if acks else b""


def test_ig_samples_sent_with_python_hl7_client(listening: RunningServer,
                                                repository: Repository) -> None:
    names = ["A01-Admit-Patient-v2.8.txt", "A04-Register-Patient-v2.1.txt",
             "A08-Update-Patient-v2.3.txt", "R01-Basic-NG-ExampleMessage-v2.5.1.txt",
             "V04-new-admin-v2.5.1.txt"]
    with MLLPClient("127.0.0.1", listening.port) as client:  # one connection, 5 messages
        for name in names:
            ack = ack_fields(client.send_message(sample(name)))
            assert ack["MSA"][1] == "AA", (name, ack)
    assert len(stored(repository, "Patient")) == 5   # five different patients
    assert len(stored(repository, "Immunization")) == 1
    assert len(stored(repository, "DiagnosticReport")) == 1
    patient = next(p for p in stored(repository, "Patient")
                   if any(i["value"] == "PATID1234" for i in p["identifier"]))
    # v2.8 A01: PID-3 CX.4 'ADT1' is the authority, PID-3 second repetition is an SSN (SS)
    assert {i["value"] for i in patient["identifier"]} >= {"PATID1234", "123456789"}


def test_mllp_send_command_streams_a_file(listening: RunningServer, tmp_path: Path,
                                         repository: Repository) -> None:
    messages = [sample("A04-Register-Patient-v2.1.txt"),
                sample("R01-Lab-Panel-Various-Blood-Tests-v2.3.1.txt")]
    feed = tmp_path / "feed.hl7"
    feed.write_bytes(b"\r\n".join(messages))
    script = Path(sys.executable).parent / "mllp_send"
    done = subprocess.run([str(script), "--loose", "--file", str(feed), "--port",
                           str(listening.port), "127.0.0.1"], capture_output=True, timeout=60,
                          check=True)
    acks = [line for line in done.stdout.split(b"\x1c") if b"MSA|" in line]
    assert len(acks) == 2 and all(b"MSA|AA|" in a for a in acks)
    assert len(stored(repository, "Observation")) == 32


def test_many_connections_several_messages_each(listening: RunningServer,
                                                repository: Repository) -> None:
    def adt(n: int, k: int) -> bytes:
        return (f"MSH|^~\\&|ADM|GH|CB|CB|20240101||ADT^A04|C{n}-{k}|P|2.5.1\r"
                f"EVN|A04|20240101\rPID|1||P{n}^^^GH^MR||Doe^Pat{n}^{k}||19900101|F").encode()

    results: dict[int, list[str]] = {}

    def sender(n: int) -> None:
        with MLLPClient("127.0.0.1", listening.port) as client:
            results[n] = [ack_fields(client.send_message(adt(n, k)))["MSA"][1]
                          for k in range(4)]

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {n: ["AA"] * 4 for n in range(8)}
    patients = stored(repository, "Patient")
    assert len(patients) == 8
    # per-connection order kept: each patient shows the last message of its connection
    assert sorted(p["name"][0]["given"][-1] for p in patients) == ["3"] * 8


def test_partial_reads_and_pipelined_frames(listening: RunningServer) -> None:
    one = SB + sample("A04-Register-Patient-v2.1.txt") + EB
    two = SB + sample("A08-Update-Patient-v2.3.txt") + EB
    with socket.create_connection(("127.0.0.1", listening.port), timeout=10) as sock:
        for i in range(0, len(one), 7):            # a frame dribbled in 7-byte pieces
            sock.sendall(one[i:i + 7])
            time.sleep(0.001)
        assert b"MSA|AA|IHS-20180301010000.00120" in read_ack(sock)
        sock.sendall(b"\r\n" + one + two)           # noise, then two frames in one write
        first, second = read_acks(sock, 2)
        assert b"MSA|AA|IHS-20180301010000.00120" in first   # answered in order
        assert b"MSA|AA|8899-39" in second


def test_oversized_frame_is_refused_and_the_connection_closed(hl7: Hl7Processor) -> None:
    server = RunningServer(hl7.handle_frame, max_frame_bytes=2000)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(SB + b"MSH|^~\\&|A|B|||2024||ADT^A01|BIG|P|2.5.1\r" + b"X" * 5000)
            ack = ack_fields(read_ack(sock))
            assert ack["MSA"][1] == "AR"
            assert ack["ERR"][3].startswith("104^")        # value too long
            assert sock.recv(10) == b""                     # closed by the server
    finally:
        server.close()


def test_idle_connection_is_closed(hl7: Hl7Processor) -> None:
    server = RunningServer(hl7.handle_frame, idle_timeout=0.3)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            started = time.monotonic()
            assert sock.recv(10) == b""
            assert time.monotonic() - started < 5
    finally:
        server.close()


@pytest.mark.parametrize(("message", "code", "where", "condition"), [
    (b"PID|1||1", "AR", "PID^1", "100"),
    (b"MSH|^~\\&|A|B|||2024||ADT^A01||P|2.5.1\rPID|1", "AR", "MSH^1^10^1", "101"),
    (b"MSH|^~\\&|A|B|||2024||MFN^M02|M1|P|2.5.1\rMFI|1", "AR", "MSH^1^9^1^1", "200"),
    (b"MSH|^~\\&|A|B|||2024||ADT^A01|M2|P|2.5.1||||||EBCDIC\rPID|1", "AR", "MSH^1^18^1",
     "103"),
    (b"MSH|^~\\&|A|B|||2024||ADT^A01|M8|P|3.0\rPID|1", "AR", "MSH^1^12^1", "203"),
    (b"MSH|^~\\&|A|B|||2024||ADT^A01|M3|P|2.5.1\rPID|1||7^^^H^MR||X^Y||2001|Q", "AE",
     "PID^1^8^1", "103"),
    (b"MSH|^~\\&|A|B|||2024||ADT^A01|M4|P|2.5.1\rPID|1||||X^Y", "AE", "PID^1^3^1", "101"),
    (b"MSH|^~\\&|A|B|||2024||ORU^R01|M5|P|2.5.1\rPID|1||7^^^H^MR\rOBR|1||F9|1^X^LN\r"
     b"OBX|1|NM|2^Y^LN||12,5|mg||||F", "AE", "OBX^1^5^1", "102"),
    (b"MSH|^~\\&|A|B|||2024||ORU^R01|M6|P|2.5.1\rPID|1||7^^^H^MR\rOBR|1||F9|1^X^LN\r"
     b"OBX|1|NM|2^Y^LN||12|mg|||||Q", "AE", "OBX^1^11^1", "103"),
    (b"MSH|^~\\&|A|B|||2024||ADT^A02|M7|P|2.5.1\rPID|1||7^^^H^MR\rPV1|1|I|W^1", "AE",
     "PV1^1^19^1", "101"),
])
def test_malformed_messages_get_the_right_nack(listening: RunningServer, message: bytes,
                                               code: str, where: str, condition: str) -> None:
    with MLLPClient("127.0.0.1", listening.port) as client:
        ack = ack_fields(client.send_message(message))
    assert ack["MSA"][1] == code
    assert ack["ERR"][2] == where
    assert ack["ERR"][3].split("^")[0] == condition
    assert ack["ERR"][3].endswith("^HL70357")


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls(hl7: Hl7Processor, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server = RunningServer(hl7.handle_frame, ssl_context=ssl_context(str(cert), str(key)))
    try:
        client_context = ssl.create_default_context(cafile=str(cert))
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
                client_context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(SB + sample("A04-Register-Patient-v2.1.txt") + EB)
            assert b"MSA|AA|" in read_ack(sock)
        # plain text on the TLS port gets no ACK
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as plain:
            plain.sendall(SB + sample("A04-Register-Patient-v2.1.txt") + EB)
            assert b"MSA" not in read_ack(plain)
    finally:
        server.close()


def test_no_ack_when_the_message_cannot_even_be_queued(hl7: Hl7Processor,
                                                       repository: Repository) -> None:
    # The database is gone: not even the error queue can keep the message, so no ACK is
    # sent and the connection closes; the sender still holds the message and resends it.
    def unavailable(payload: bytes) -> bytes:
        raise ConnectionRefusedError("database unavailable")

    server = RunningServer(unavailable)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(SB + sample("A04-Register-Patient-v2.1.txt") + EB)
            assert read_acks(sock) == []                    # closed, nothing acknowledged
    finally:
        server.close()
    # the resend, once the database is back, is accepted
    server = RunningServer(hl7.handle_frame)
    try:
        with MLLPClient("127.0.0.1", server.port) as client:
            ack = ack_fields(client.send_message(sample("A04-Register-Patient-v2.1.txt")))
        assert ack["MSA"][1] == "AA"
    finally:
        server.close()


def test_common_frames_are_answered_on_the_loop_and_the_rest_in_threads(
        hl7: Hl7Processor, repository: Repository) -> None:
    """handle_frame_fast answers one readable message of a supported type without the
    pool; a batch, a rejected message or an unsupported type go to handle_frame in a
    thread, having changed nothing. Either way the sender gets the same kind of ACK."""
    threaded: list[bytes] = []

    def in_a_thread(payload: bytes) -> bytes:
        threaded.append(payload)
        return hl7.handle_frame(payload)

    committer = GroupCommitter(hl7).start()
    server = RunningServer(in_a_thread, fast_handler=hl7.handle_frame_fast)
    batch = python_hl7_samples().sample_file1.replace("|10131113|1||4|", "|10131113|M||4|")
    unsupported = b"MSH|^~\\&|A|B|||2024||MFN^M02|M1|P|2.5.1\rMFI|1"
    unreadable = b"PID|1||7^^^H^MR"
    try:
        with MLLPClient("127.0.0.1", server.port) as client:
            first = ack_fields(client.send_message(sample("A04-Register-Patient-v2.1.txt")))
            assert first["MSA"][1] == "AA" and threaded == []
            again = ack_fields(client.send_message(sample("A04-Register-Patient-v2.1.txt")))
            assert again["MSA"] == first["MSA"] and threaded == []  # a resend, same answer
            assert ack_fields(client.send_message(unsupported))["MSA"][1] == "AR"
            assert ack_fields(client.send_message(unreadable))["MSA"][1] == "AR"
            answer = client.send_message(batch.encode())
    finally:
        server.close()
        committer.stop()
    assert threaded == [unsupported, unreadable, batch.encode()]
    assert answer.count(b"MSA|AA|") == 3 and b"BHS" in answer
    assert len(stored(repository, "Patient")) >= 2
    assert len(hl7.store.errors()) == 2  # the two rejections, queued once each


def test_no_ack_on_the_loop_either_when_the_commit_fails(hl7: Hl7Processor) -> None:
    """A group commit that fails outright (the database, not the message) answers nobody:
    the connection closes without an ACK and the sender keeps the message."""
    committer = GroupCommitter(hl7).start()

    def broken(items: list[Any]) -> list[Any]:
        raise ConnectionRefusedError("database unavailable")

    hl7.commit_group = broken  # type: ignore[method-assign]
    server = RunningServer(hl7.handle_frame, fast_handler=hl7.handle_frame_fast)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(SB + sample("A04-Register-Patient-v2.1.txt") + EB)
            assert read_acks(sock) == []
    finally:
        server.close()
        committer.stop()


def test_a_groups_outcomes_reach_the_event_loop_in_one_wake_up(hl7: Hl7Processor,
                                                                repository: Repository) -> None:
    """Five messages awaited on one event loop are committed as one group, and their outcomes
    arrive in a single call_soon_threadsafe; a waiter that gave up (cancelled) is skipped
    without stopping the others, and its message is still stored (a resend finds it)."""
    committer = GroupCommitter(hl7)  # started only once all five wait, so they form one group
    wake_ups: list[int] = []

    async def feed() -> list[Any]:
        loop = asyncio.get_running_loop()
        original = loop.call_soon_threadsafe

        def counted(callback: Any, *args: Any) -> Any:
            wake_ups.append(len(args[0]) if args else 0)
            return original(callback, *args)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        waiters = []
        for n in range(5):
            [(_, message)] = read_frame(
                f"MSH|^~\\&|ADM|GH|CB|CB|20240101||ADT^A04|W{n}|P|2.5.1\r"
                f"PID|1||W-{n}^^^GH^MR||Doe^Pat||19900101|F".encode()).messages
            assert not isinstance(message, Exception)
            waiters.append(committer.enqueue_async(hl7.item(message)))
        waiters[2].cancel()
        committer.start()
        return await asyncio.gather(*waiters, return_exceptions=True)

    try:
        outcomes = asyncio.run(feed())
    finally:
        committer.stop()
    assert wake_ups == [5]
    assert isinstance(outcomes[2], asyncio.CancelledError)
    assert [o.ack_code for i, o in enumerate(outcomes) if i != 2] == ["AA"] * 4
    assert MessageStore(repository).count_archived() == 5
