"""Kill -9 in the middle of a stream: every message ACKed AA is stored, nothing is stored
twice, and every message not ACKed is accepted on resend (issue: "Nothing lost").

A real ``carebridge serve --mllp-port`` process (carebridge.testing.ServerProcess) takes
ADT and ORU messages on several connections; the test SIGKILLs it once some have been
acknowledged, starts it again on the same database and resends what had no ACK (and, to
show the dedup, some that had one).
"""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest
from hl7.client import MLLPClient

from carebridge.ingest.hl7v2.store import MessageStore
from carebridge.storage import open_repository
from carebridge.testing import free_port
from carebridge.testing.server import ServerProcess

from .conftest import ack_fields, stored

CONNECTIONS = 4
PER_CONNECTION = 40
KILL_AFTER = 50  # AA acknowledgements before the SIGKILL


def message(n: int) -> tuple[str, bytes]:
    control = f"K{n:04d}"
    if n % 2:
        text = (f"MSH|^~\\&|ADM|GH|CB|CB|20240101||ADT^A04|{control}|P|2.5.1\r"
                f"EVN|A04|20240101\rPID|1||P{n}^^^GH^MR||Doe^Pat{n}||19900101|F\r"
                f"PV1|1|O|CLINIC^1||||||||||||||||V{n}^^^GH^VN")
    else:
        text = (f"MSH|^~\\&|LAB|GH|CB|CB|20240101||ORU^R01|{control}|P|2.5.1\r"
                f"PID|1||P{n}^^^GH^MR||Doe^Pat{n}||19900101|F\r"
                f"OBR|1||ORD{n}^LAB|2345-7^Glucose^LN|||20240101\r"
                f"OBX|1|NM|2345-7^Glucose^LN||{80 + n % 40}|mg/dL|70-99|N|||F\r"
                f"OBX|2|NM|8867-4^Heart rate^LN||{60 + n % 30}|/min||N|||F")
    return control, text.encode()


def send_all(port: int, batches: list[list[tuple[str, bytes]]], acked: set[str],
             stop_after: int | None = None, on_threshold: threading.Event | None = None) -> None:
    lock = threading.Lock()

    def sender(batch: list[tuple[str, bytes]]) -> None:
        try:
            with MLLPClient("127.0.0.1", port) as client:
                for control, data in batch:
                    reply = client.send_message(data)
                    if not reply:
                        return  # the server died
                    fields = ack_fields(reply)
                    if fields["MSA"][1] == "AA" and fields["MSA"][2] == control:
                        with lock:
                            acked.add(control)
                            if stop_after and on_threshold and len(acked) >= stop_after:
                                on_threshold.set()
        except OSError:
            return  # connection reset by the kill

    threads = [threading.Thread(target=sender, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


@pytest.mark.slow
def test_sigkill_mid_stream_loses_and_duplicates_nothing(database_url: str) -> None:
    messages = [message(n) for n in range(CONNECTIONS * PER_CONNECTION)]
    batches = [messages[k::CONNECTIONS] for k in range(CONNECTIONS)]
    port = free_port()
    acked_before_kill: set[str] = set()
    threshold = threading.Event()
    server = ServerProcess(database_url, extra_args=("--mllp-port", str(port))).start()
    killer_done = threading.Event()

    def killer() -> None:
        threshold.wait(120)
        os.kill(server.pid, signal.SIGKILL)
        killer_done.set()

    threading.Thread(target=killer, daemon=True).start()
    send_all(port, batches, acked_before_kill, KILL_AFTER, threshold)
    assert killer_done.wait(60)
    server.stop()
    assert KILL_AFTER <= len(acked_before_kill) < len(messages)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

    # After the crash: every AA-acknowledged message is in the store.
    repository = open_repository(database_url)
    try:
        archived = {c for c, _ in messages
                    if MessageStore(repository).archived("ADM|GH" if int(c[1:]) % 2 else
                                                         "LAB|GH", c) is not None}
        assert acked_before_kill <= archived, (len(acked_before_kill), len(archived))
    finally:
        repository.close()

    # Restart on the same database; resend everything without an ACK, and some with one.
    port = free_port()
    with ServerProcess(database_url, extra_args=("--mllp-port", str(port))):
        resend = [m for m in messages if m[0] not in acked_before_kill]
        resend += [m for m in messages if m[0] in acked_before_kill][:10]
        acked_after: set[str] = set()
        send_all(port, [resend[k::CONNECTIONS] for k in range(CONNECTIONS)], acked_after)
        assert acked_after == {c for c, _ in resend}

    repository = open_repository(database_url)
    try:
        store = MessageStore(repository)
        assert store.count_archived() == len(messages)           # each message once
        # (other parts of the server, e.g. remote monitoring scoring the heart rates, may
        # write resources of their own: count those this feed wrote)
        sources = [p["entity"][0]["what"]["identifier"]["value"]
                   for p in stored(repository, "Provenance")
                   if p["entity"][0]["what"].get("identifier", {}).get("system")
                   == "urn:carebridge:hl7v2:message"]
        assert len(sources) == len(set(sources)) == len(messages)  # one per message
        patients = stored(repository, "Patient")
        assert len(patients) == len(messages)                    # P0..Pn, none twice
        observations = [o for o in stored(repository, "Observation")
                        if o.get("identifier", [{}])[0].get("system", "").startswith(
                            "urn:carebridge:hl7v2:observation:")]
        assert len(observations) == 2 * (len(messages) // 2)     # 2 OBX per ORU
        assert len(stored(repository, "Encounter")) == len(messages) // 2
        assert len(stored(repository, "DiagnosticReport")) == len(messages) // 2
    finally:
        repository.close()
