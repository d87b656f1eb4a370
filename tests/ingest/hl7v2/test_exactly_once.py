"""Exactly-once effect by MSH-10, the archive, Provenance, the error queue and replay, and
the group commit's isolation of a failing message."""

from __future__ import annotations

from pathlib import Path

import orjson
from typer.testing import CliRunner

from carebridge.cli import app as cli
from carebridge.ingest.hl7v2.parsing import Message, read_frame
from carebridge.ingest.hl7v2.processor import Hl7Processor
from carebridge.security.crypto import clear_session, generate_master_key, open_data_repository
from carebridge.services import ResourceService
from carebridge.storage import Repository

from .conftest import (
    ack_fields,
    feed_provenance,
    python_hl7_samples,
    sample,
    stored,
    versions,
)

A01 = sample("A01-Simple-Admit-VHIS-1-v2.3.1.txt")


def parsed(data: bytes) -> Message:
    message = read_frame(data).messages[0][1]
    assert isinstance(message, Message)
    return message


def test_resend_is_acknowledged_again_and_changes_nothing(hl7: Hl7Processor,
                                                         repository: Repository) -> None:
    first = hl7.handle_frame(A01)
    count = versions(repository)
    again = hl7.handle_frame(A01)
    assert ack_fields(again)["MSA"][1:3] == ["AA", "MSG015410771930-19"]
    assert again == first                        # the archived ACK, byte for byte
    assert versions(repository) == count         # no new version of anything
    assert len(feed_provenance(repository)) == 1
    assert hl7.store.count_archived() == 1


def test_same_control_id_from_another_sender_is_another_message(
        hl7: Hl7Processor, repository: Repository) -> None:
    hl7.handle_frame(A01)
    other = A01.replace(b"MSH|^~\\&|VHIS|VHIS|", b"MSH|^~\\&|VHIS|EAST|")
    assert ack_fields(hl7.handle_frame(other))["MSA"][1] == "AA"
    assert hl7.store.count_archived() == 2


def test_archive_keeps_message_ack_and_provenance(hl7: Hl7Processor,
                                                  repository: Repository) -> None:
    ack = hl7.handle_frame(A01)
    archived = hl7.store.archived("VHIS|VHIS", "MSG015410771930-19")
    assert archived is not None
    assert archived.message.startswith(b"MSH|^~\\&|VHIS|VHIS|")
    assert b"\rPV1||E|ICU^Room198^1001" in archived.message
    assert archived.ack == ack
    assert archived.message_type == "ADT^A01"
    [provenance] = feed_provenance(repository)
    assert archived.provenance_id == provenance["id"]
    patient, encounter = stored(repository, "Patient")[0], stored(repository, "Encounter")[0]
    assert {t["reference"] for t in provenance["target"]} == {
        f"Patient/{patient['id']}", f"Encounter/{encounter['id']}"}
    assert provenance["entity"] == [{"role": "source", "what": {
        "identifier": {"system": "urn:carebridge:hl7v2:message",
                       "value": "VHIS|VHIS|MSG015410771930-19"},
        "display": "HL7 v2 ADT^A01 MSG015410771930-19 from VHIS|VHIS"}}]
    assert provenance["occurredDateTime"] == "2016-07-15T20:33:36Z"   # MSH-7
    assert provenance["activity"]["coding"][0]["code"] == "A01"


def test_group_commit_isolates_a_failing_message(hl7: Hl7Processor,
                                                 repository: Repository) -> None:
    good = parsed(A01)
    bad = parsed(b"MSH|^~\\&|LAB|X|||2024||ORU^R01|BAD-1|P|2.5.1\r"
                 b"PID|1||9^^^X^MR\rOBR|1||F1|\rOBX|1|NM|1-1^A^LN||5|mg||||F")
    other = parsed(A01.replace(b"MSG015410771930-19", b"SECOND-1"))
    outcomes = hl7.commit_group([hl7.item(good), hl7.item(bad), hl7.item(other)])
    assert [o.ack_code for o in outcomes] == ["AA", "AE", "AA"]
    assert ack_fields(outcomes[1].ack)["ERR"][2] == "OBR^1^4^1"   # OBR-4 required
    assert hl7.store.count_archived() == 2
    [queued] = hl7.store.errors()
    assert (queued.control_id, queued.error_code, queued.location) == ("BAD-1", "101",
                                                                      "OBR[1]-4")
    assert len(stored(repository, "Patient")) == 1                # the bad one wrote nothing


def test_error_queue_and_replay(hl7: Hl7Processor, repository: Repository) -> None:
    # A40 before the merged patient is known: AE 204, kept for replay
    merge = sample("A40-REDOX-A40-2-v2.3.txt")
    assert ack_fields(hl7.handle_frame(merge))["MSA"][1] == "AE"
    [queued] = hl7.store.errors()
    assert queued.status == "open" and queued.error_code == "204"
    # still failing: stays open, attempts counted
    outcome = hl7.replay(queued.id)
    assert outcome.ack_code == "AE"
    assert hl7.store.error(queued.id).attempts == 2  # type: ignore[union-attr]
    # the fix: the merged patient arrives; the replay now succeeds and resolves the entry
    prior = (b"MSH|^~\\&|REDOX|RDX|||20190504||ADT^A04|PRE-2|T|2.3\rEVN|A04|20190504\r"
             b"PID|||53700^^^MR||Bixby^Tim||20080106|M")
    assert ack_fields(hl7.handle_frame(prior))["MSA"][1] == "AA"
    outcome = hl7.replay(queued.id)
    assert outcome.ack_code == "AA"
    resolved = hl7.store.error(queued.id)
    assert resolved is not None and resolved.status == "resolved"
    assert resolved.message_id == outcome.archive_id
    assert hl7.store.errors() == []
    assert len(stored(repository, "Patient")) == 2
    # the sender's own resend of the same message is now a duplicate: nothing changes
    count = versions(repository)
    assert ack_fields(hl7.handle_frame(merge))["MSA"][1] == "AA"
    assert versions(repository) == count


def test_unsupported_and_unreadable_messages_are_queued(hl7: Hl7Processor) -> None:
    ack = ack_fields(hl7.handle_frame(b"MSH|^~\\&|A|B|||2024||SIU^S12|S-1|P|2.5.1\rSCH|1"))
    assert ack["MSA"][1:3] == ["AR", "S-1"]
    assert ack["ERR"][3].startswith("200^")                       # unsupported message type
    ack = ack_fields(hl7.handle_frame(b"MSH|^~\\&|A|B|||2024||ADT^A99|S-2|P|2.5.1\rPID|1"))
    assert ack["ERR"][3].startswith("201^") and ack["ERR"][2] == "MSH^1^9^1^2"
    ack = ack_fields(hl7.handle_frame(b"\xff\xfe garbage"))
    assert ack["MSA"][1] == "AR"
    assert [e.control_id for e in hl7.store.errors()] == ["S-1", "S-2", ""]


def test_cli_lists_errors_and_replays(database_url: str, hl7: Hl7Processor) -> None:
    hl7.handle_frame(sample("A40-REDOX-A40-2-v2.3.txt"))
    runner = CliRunner()
    listed = runner.invoke(cli, ["hl7", "errors", "--database", database_url])
    assert listed.exit_code == 0, listed.output
    assert "1270314131" in listed.output and "MRG[1]-1" in listed.output
    [queued] = hl7.store.errors()
    failed = runner.invoke(cli, ["hl7", "replay", str(queued.id), "--database", database_url])
    assert failed.exit_code == 1 and "MSA|AE|1270314131" in failed.output
    missing = runner.invoke(cli, ["hl7", "replay", "999999", "--database", database_url])
    assert missing.exit_code == 2


def test_archive_is_readable_json_free_bytes(hl7: Hl7Processor) -> None:
    hl7.handle_frame(A01)
    archived = hl7.store.archived("VHIS|VHIS", "MSG015410771930-19")
    assert archived is not None
    # The archive holds HL7 text, not FHIR JSON: it is the source the Provenance points to.
    try:
        orjson.loads(archived.message)
    except orjson.JSONDecodeError:
        pass
    else:
        raise AssertionError("the archive should hold the v2 message itself")


def test_replay_keeps_the_characters_of_an_8859_1_message(hl7: Hl7Processor,
                                                          repository: Repository) -> None:
    merge = ("MSH|^~\\&|ADM|NORD|||20240101||ADT^A40|L1-1|P|2.5.1||||||8859/1\r"
             "EVN|A40|20240101\rPID|1||S1^^^NORD^MR||Müller^Jürgen\rMRG|M1^^^NORD^MR")
    assert ack_fields(hl7.handle_frame(merge.encode("latin-1")))["MSA"][1] == "AE"
    [queued] = hl7.store.errors()
    prior = ("MSH|^~\\&|ADM|NORD|||20240101||ADT^A04|L1-0|P|2.5.1\rEVN|A04|20240101\r"
             "PID|1||M1^^^NORD^MR||Muller^J")
    hl7.handle_frame(prior.encode())
    assert hl7.replay(queued.id).ack_code == "AA"
    survivor = next(p for p in stored(repository, "Patient") if p.get("active"))
    assert survivor["name"][0] == {"family": "Müller", "given": ["Jürgen"]}


def test_a_batch_is_answered_with_a_batch_of_acks(hl7: Hl7Processor,
                                                  repository: Repository) -> None:
    samples = python_hl7_samples()
    # The sample (an Australian VINAH feed) codes PID-8 with a local '1'; table 0001 values
    # are what we map, so the test sends 'M' (test_mllp shows the AE a local code gets).
    batch = samples.sample_file1.replace("|10131113|1||4|", "|10131113|M||4|")
    answer = hl7.handle_frame(batch.encode()).decode()
    lines = answer.strip("\r").split("\r")
    assert [line[:3] for line in lines if line[:3] in ("FHS", "BHS", "BTS", "FTS")] == [
        "FHS", "BHS", "BTS", "FTS"]
    msa = [line.split("|")[1:3] for line in lines if line.startswith("MSA")]
    # three messages; the third repeats the first's control id: a resend, acknowledged again
    assert msa == [["AA", "12334456778890"], ["AA", "12334456778891"],
                   ["AA", "12334456778890"]]
    assert hl7.store.count_archived() == 2
    assert len(stored(repository, "Patient")) == 1   # the same patient each time


def test_archive_and_error_queue_are_encrypted_at_rest(database_url: str,
                                                       tmp_path: Path) -> None:
    key = tmp_path / "master.key"
    generate_master_key(key)
    repository = open_data_repository(database_url, str(key))
    try:
        processor = Hl7Processor(ResourceService(repository))
        processor.handle_frame(A01)                                   # archived
        processor.handle_frame(sample("A40-REDOX-A40-2-v2.3.txt"))    # queued (AE)
        with repository.session() as session:
            raw = clear_session(session)
            stored_bytes = [bytes(v) for row in raw.query(
                "SELECT message, ack FROM hl7v2_message UNION ALL"
                " SELECT message, ack FROM hl7v2_error", ()) for v in row]
        assert len(stored_bytes) == 4
        for value in stored_bytes:
            assert b"Winson" not in value and b"Bixby" not in value and b"MSH|" not in value
        archived = processor.store.archived("VHIS|VHIS", "MSG015410771930-19")
        assert archived is not None and b"Winson^Patient1" in archived.message
        [queued] = processor.store.errors()
        assert b"Bixby^Timothy" in queued.message
    finally:
        repository.close()
