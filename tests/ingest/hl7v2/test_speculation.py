"""Messages worked out before the write lock (storage/readset.py, Hl7Processor._speculate):
the writes stand only when every read gives the same answer under the lock; otherwise the
message runs again there. And ``serve --mllp-workers``: more processes on the same port."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hl7.client import MLLPClient

from carebridge.ingest.hl7v2.parsing import read_frame
from carebridge.ingest.hl7v2.processor import Hl7Processor, Item
from carebridge.ingest.hl7v2.store import MessageStore
from carebridge.security.policy import SYSTEM
from carebridge.services.resources import ResourceService
from carebridge.storage import Repository, open_repository
from carebridge.storage import readset as readset_module
from carebridge.storage.base import StoredVersion, Write
from carebridge.storage.readset import ReadSet, RecordingSession, WriteDuringSpeculation
from carebridge.testing import free_port
from carebridge.testing.procfs import alive, child_pids, cpu_seconds
from carebridge.testing.server import ServerProcess
from carebridge.testing.writers import write_session_elsewhere

from .conftest import ack_fields, stored


def adt(control: str, pid: str, family: str = "Doe") -> bytes:
    return (f"MSH|^~\\&|ADM|GH|CB|CB|20240101||ADT^A04|{control}|P|2.5.1\r"
            f"EVN|A04|20240101\rPID|1||{pid}^^^GH^MR||{family}^Pat||19900101|F\r"
            f"PV1|1|O|CLINIC^1||||||||||||||||V{control}^^^GH^VN").encode()


def item(hl7: Hl7Processor, data: bytes) -> Item:
    [(_, message)] = read_frame(data).messages
    assert not isinstance(message, Exception)
    return hl7.item(message)


def patients_with(repository: Repository, value: str) -> list[dict[str, Any]]:
    return [p for p in stored(repository, "Patient")
            if any(i.get("value") == value for i in p.get("identifier", []))]


def count_holds(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every ReadSet.holds answer, in order."""
    answers: list[bool] = []
    original = readset_module.ReadSet.holds

    def holds(self: ReadSet, session: Any) -> bool:
        answer = original(self, session)
        answers.append(answer)
        return answer

    monkeypatch.setattr(readset_module.ReadSet, "holds", holds)
    return answers


def test_a_read_set_holds_until_what_it_read_changes(repository: Repository) -> None:
    service = ResourceService(repository)
    mark = "?" if repository.dialect == "sqlite" else "%s"
    sql = f"SELECT id FROM resource WHERE resource_type = {mark} ORDER BY id"
    reads = ReadSet()
    with repository.session() as snapshot:
        session = RecordingSession(snapshot, reads)
        assert session.read("Patient", "a") is None
        assert session.query(sql, ("Patient",)) == []
        session.lock("Patient?identifier=x")
        with pytest.raises(WriteDuringSpeculation):
            session.write([Write(StoredVersion("Patient", "a", 1, None, "PUT", b"{}"),  # type: ignore[arg-type]
                                 None, None)])
    assert [c[0] for c in reads.calls] == ["read", "query", "lock"]
    with repository.session(write=True) as session:
        assert reads.holds(session)  # nothing changed (and the lock is taken again)
    service.update(SYSTEM, "Patient", "a", {"resourceType": "Patient", "id": "a"})
    with repository.session(write=True) as session:
        assert not reads.holds(session)


def test_writes_stand_when_the_reads_hold(hl7: Hl7Processor, repository: Repository,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    answers = count_holds(monkeypatch)
    for n in range(3):
        assert ack_fields(hl7.handle_frame(adt(f"S{n}", f"P{n}")))["MSA"][1] == "AA"
    assert answers == [True, True, True]
    assert len(stored(repository, "Patient")) == 3
    assert MessageStore(repository).count_archived() == 3


def test_a_message_whose_reads_changed_runs_again_under_the_lock(
        hl7: Hl7Processor, repository: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer stores the patient between the snapshot and the lock: the message's
    speculation (a new Patient) is dropped and it runs again, updating that patient."""
    answers = count_holds(monkeypatch)
    speculate = hl7._speculate
    other = ResourceService(repository)

    def speculate_then_interfere(items: list[Item]) -> Any:
        found = speculate(items)
        other.create(SYSTEM, "Patient", {
            "resourceType": "Patient", "active": True,
            "identifier": [{"system": "urn:carebridge:hl7v2:authority:GH", "value": "P7",
                            "type": {"coding": [{
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "MR"}]}}]})
        return found

    monkeypatch.setattr(hl7, "_speculate", speculate_then_interfere)
    before = patients_with(repository, "P7")
    ack = hl7.handle_frame(adt("R1", "P7", family="Later"))
    assert ack_fields(ack)["MSA"][1] == "AA"
    assert answers == [False]
    after = patients_with(repository, "P7")
    assert before == [] and len(after) == 1  # updated the other writer's, not a second one
    assert after[0]["name"][0]["family"] == "Later"


def test_a_group_with_two_messages_for_one_new_patient(hl7: Hl7Processor,
                                                       repository: Repository,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Both were speculated against a store without the patient; under the lock the second
    sees the first's patient, so its speculation is dropped and it updates that one."""
    answers = count_holds(monkeypatch)
    outcomes = hl7.commit_group([item(hl7, adt("G1", "P9")),
                                 item(hl7, adt("G2", "P9", family="Second"))])
    assert [o.ack_code for o in outcomes] == ["AA", "AA"]
    assert answers == [True, False]
    [patient] = patients_with(repository, "P9")
    assert patient["name"][0]["family"] == "Second"
    assert len(stored(repository, "Encounter")) == 2


@pytest.mark.parametrize("speculate", [True, False], ids=["speculated", "under-the-lock"])
def test_a_likely_duplicate_patient_is_found_in_the_messages_own_session(
        hl7: Hl7Processor, repository: Repository, monkeypatch: pytest.MonkeyPatch,
        speculate: bool) -> None:
    """The duplicate-patient rule warns about a second patient with another MRN but the
    same name, birth date and address. On SQLite it reads where the message's work reads
    (its snapshot, or its write transaction), never in the validation's reader thread; on
    PostgreSQL in that thread (a failed statement would abort the write's transaction)."""
    hl7.speculate = speculate
    answers = count_holds(monkeypatch)
    threaded: list[str] = []
    submit = hl7.service.validation._reader.submit

    def watched(*args: Any, **kwargs: Any) -> Any:
        threaded.append("submit")
        return submit(*args, **kwargs)

    monkeypatch.setattr(hl7.service.validation._reader, "submit", watched)
    address = "|||1 Main St^^Town^^12345"
    for control, pid in (("D1", "DP-1"), ("D2", "DP-2")):
        frame = adt(control, pid).replace(b"19900101|F", b"19900101|F" + address.encode())
        assert ack_fields(hl7.handle_frame(frame))["MSA"][1] == "AA"
    assert answers == ([True, True] if speculate else [])
    [first] = patients_with(repository, "DP-1")
    [second] = patients_with(repository, "DP-2")
    assert hl7.service.validation.recorded("Patient", first["id"]) == []
    [(version, outcome)] = hl7.service.validation.recorded("Patient", second["id"])
    assert version == 1
    assert [i["diagnostics"][:60] for i in outcome["issue"]] == [
        f"duplicate-patient: likely the same person as Patient/{first['id']}"[:60]]
    assert threaded == ([] if repository.dialect == "sqlite" else ["submit", "submit"])


def test_a_resend_in_the_same_group_is_answered_from_the_archive(
        hl7: Hl7Processor, repository: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message and its resend (same MSH-10) in one group: both were speculated against a
    store without either; under the lock the first is stored, and the second's recorded
    archive look-up now finds it, so it is answered as a resend and changes nothing."""
    answers = count_holds(monkeypatch)
    outcomes = hl7.commit_group([item(hl7, adt("R7", "P6")), item(hl7, adt("R7", "P6"))])
    assert [(o.ack_code, o.duplicate) for o in outcomes] == [("AA", False), ("AA", True)]
    assert answers == [True, False]
    assert len(patients_with(repository, "P6")) == 1
    assert MessageStore(repository).count_archived() == 1
    assert outcomes[1].archive_id == outcomes[0].archive_id


def test_messages_arriving_while_another_writer_has_the_turn_join_the_group(
        hl7: Hl7Processor, repository: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """While another writer holds the write turn, the committer works out what arrived
    meanwhile and stores it with its group (one commit) instead of waiting idle."""
    answers = count_holds(monkeypatch)
    arrived = [[item(hl7, adt("J2", "J-2"))], [item(hl7, adt("J3", "J-3"))]]
    asked: list[bool] = []

    def more() -> list[Item]:
        asked.append(repository.write_busy())
        return arrived.pop(0) if arrived else []

    group = [item(hl7, adt("J1", "J-1"))]
    with write_session_elsewhere(repository, release_after=1.0):
        busy = repository.write_busy()
        outcomes = hl7.commit_group(group, more=more)  # waits for the turn (SQLite)
    if repository.dialect == "sqlite":  # one writer at a time: the others joined
        assert busy and asked == [True, True, True]  # the third found nothing more
        assert [i.message.control_id for i in group] == ["J1", "J2", "J3"]
        assert [o.ack_code for o in outcomes] == ["AA", "AA", "AA"]
        assert answers == [True, True, True]  # each stored as worked out
        assert all(len(patients_with(repository, p)) == 1 for p in ("J-1", "J-2", "J-3"))
    else:  # PostgreSQL writers do not wait for each other as a whole: nothing to wait for
        assert not busy and asked == [] and [o.ack_code for o in outcomes] == ["AA"]
        assert patients_with(repository, "J-2") == []


def test_nobody_joins_a_group_when_the_turn_is_free(hl7: Hl7Processor,
                                                    repository: Repository) -> None:
    assert not repository.write_busy()
    asked: list[int] = []

    def more() -> list[Item]:
        asked.append(1)
        return [item(hl7, adt("K2", "K-2"))]

    outcomes = hl7.commit_group([item(hl7, adt("K1", "K-1"))], more=more)
    assert [o.ack_code for o in outcomes] == ["AA"] and asked == []
    assert patients_with(repository, "K-2") == []


def oru(control: str, value: str, status: str = "F") -> bytes:
    return (f"MSH|^~\\&|LAB|GH|CB|CB|20240101||ORU^R01|{control}|P|2.5.1\r"
            "PID|1||P5^^^GH^MR||Doe^Pat||19900101|F\r"
            "OBR|1||ORD5^LAB|24331-1^Lipid panel^LN|||20240101\r"
            f"OBX|1|NM|2093-3^Cholesterol^LN||{value}|mg/dL|||||{status}\r").encode()


def test_a_group_with_two_messages_for_one_new_result(hl7: Hl7Processor,
                                                      repository: Repository,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A result and its correction in one group, neither stored before: both look the
    Observation up by its identifier and find none; under the lock the second's look-up
    finds the first's, so it runs again and corrects that Observation instead of making a
    second one with the same identifier."""
    answers = count_holds(monkeypatch)
    outcomes = hl7.commit_group([item(hl7, oru("O1", "180")),
                                 item(hl7, oru("O2", "185", status="C"))])
    assert [o.ack_code for o in outcomes] == ["AA", "AA"]
    assert answers == [True, False]
    [observation] = stored(repository, "Observation")
    assert observation["valueQuantity"]["value"] == 185
    assert observation["status"] == "corrected"
    assert observation["meta"]["versionId"] == "2"


def test_speculation_stores_what_running_under_the_lock_stores(tmp_path: Path) -> None:
    """The same ADT/ORU stream with and without speculation leaves the same resources."""
    from .test_kill9 import message

    def run(speculate: bool) -> dict[str, list[str]]:
        repository = open_repository(f"sqlite:///{tmp_path}/{speculate}.db")
        try:
            processor = Hl7Processor(ResourceService(repository))
            processor.speculate = speculate
            for n in range(40):
                _, data = message(n % 30)  # ten repeat an earlier control id: resends
                assert ack_fields(processor.handle_frame(data))["MSA"][1] == "AA"
            return {rtype: sorted(_identifiers(r) for r in stored(repository, rtype))
                    for rtype in ("Patient", "Encounter", "Observation", "DiagnosticReport",
                                  "Provenance")}
        finally:
            repository.close()

    with_speculation, without = run(True), run(False)
    assert with_speculation == without
    assert len(with_speculation["Patient"]) == 30


def _identifiers(resource: dict[str, Any]) -> str:
    if resource["resourceType"] == "Provenance":
        return str(resource["entity"][0]["what"].get("identifier", {}).get("value"))
    return ",".join(sorted(f"{i.get('system')}|{i.get('value')}"
                           for i in resource.get("identifier", [])))


@pytest.mark.slow
def test_serve_with_mllp_workers_shares_the_port(database_url: str) -> None:
    """``serve --mllp-workers 1``: a second process listens on the same port and takes
    connections; every message is answered AA and stored once, a resend on another
    connection is answered from the archive, and the worker stops with the server."""
    port = free_port()
    with ServerProcess(database_url,
                       extra_args=("--mllp-port", str(port), "--mllp-workers", "1")) as server:
        deadline = time.monotonic() + 60
        while not child_pids(server.pid):
            assert time.monotonic() < deadline, "no MLLP worker started"
            time.sleep(0.1)
        [worker] = child_pids(server.pid)
        time.sleep(3)  # it binds the port once it has opened the database
        worker_cpu = cpu_seconds(worker)
        acks: dict[str, str] = {}
        lock = threading.Lock()

        def sender(k: int) -> None:
            # A connection per message: the kernel spreads new connections over both.
            for n in range(k, 48, 8):
                with MLLPClient("127.0.0.1", port) as client:
                    reply = ack_fields(client.send_message(adt(f"W{n}", f"WP{n}")))
                with lock:
                    acks[reply["MSA"][2]] = reply["MSA"][1]

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert acks == {f"W{n}": "AA" for n in range(48)}
        assert cpu_seconds(worker) - worker_cpu > 0.05  # the worker served some of them
        with MLLPClient("127.0.0.1", port) as client:  # resends, on a new connection
            for n in range(5):
                assert ack_fields(client.send_message(adt(f"W{n}", f"WP{n}")))["MSA"][1] == "AA"
    assert not Path(f"/proc/{worker}").exists() or "Z" in Path(
        f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0]
    repository = open_repository(database_url)
    try:
        assert MessageStore(repository).count_archived() == 48
        assert len([p for p in stored(repository, "Patient")
                    if p["identifier"][0]["value"].startswith("WP")]) == 48
    finally:
        repository.close()


@pytest.mark.slow
def test_mllp_workers_stop_when_the_server_is_killed(database_url: str) -> None:
    """A server killed outright (SIGKILL: no chance to stop its children) does not leave its
    MLLP worker serving on alone: the worker notices within seconds and stops."""
    import signal

    port = free_port()
    server = ServerProcess(database_url,
                           extra_args=("--mllp-port", str(port), "--mllp-workers", "1")).start()
    try:
        deadline = time.monotonic() + 60
        while not child_pids(server.pid):
            assert time.monotonic() < deadline, "no MLLP worker started"
            time.sleep(0.1)
        [worker] = child_pids(server.pid)
        time.sleep(2)
        assert alive(worker)
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while alive(worker):
            assert time.monotonic() < deadline, "the orphaned MLLP worker kept running"
            time.sleep(0.2)
    finally:
        server.stop()


def test_mllp_worker_command_carries_the_listener_settings() -> None:
    """A worker listens as the server does: same database, host, port, TLS and mode."""
    from carebridge.config import Settings
    from carebridge.ingest.hl7v2.workers import MllpWorkers

    settings = Settings(database_url="sqlite:///x.db", host="0.0.0.0", mllp_port=2575,
                        mllp_workers=1, mllp_tls_cert="c.pem", mllp_tls_key="k.pem",
                        validation="warn", insecure_dev=True)
    command = MllpWorkers(settings, 1).command(0)
    assert command[3:6] == ["mllp-worker", "--index", "0"]
    pairs = dict(zip(command[4::2], command[5::2], strict=False))
    assert {k: pairs[k] for k in ("--database", "--host", "--mllp-port", "--mllp-tls-cert",
                                  "--mllp-tls-key", "--validation")} == {
        "--database": "sqlite:///x.db", "--host": "0.0.0.0", "--mllp-port": "2575",
        "--mllp-tls-cert": "c.pem", "--mllp-tls-key": "k.pem", "--validation": "warn"}
    assert command[-1] == "--insecure-dev"
