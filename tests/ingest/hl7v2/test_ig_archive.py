"""Every archived test message of the v2-to-FHIR IG (all message types, when
``../shared/data`` is beside the repository, as in CI): each gets an ACK echoing its MSH-10,
supported ones that are well formed are accepted, the others get an AR/AE naming where and
why (table 0357). On a fresh clone without ``../shared`` there is nothing to read."""

from __future__ import annotations

from pathlib import Path

from carebridge.ingest.hl7v2.parsing import Message, read_frame
from carebridge.ingest.hl7v2.processor import Hl7Processor

from .conftest import ack_fields

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "hl7v2" / "v2-to-fhir-ig"
ARCHIVE = SHARED / "archive" / "src" / "test" / "resources" / "v2"

# Well-formed messages of the supported types (ADT, ORU^R01, VXU^V04) in the archive
ACCEPTED = {
    "A01-Admit-Patient-(example-from-V2-8-2-base-standard)-v2.8.txt",
    "A01-Simple-Admit-VHIS-1-v2.3.1.txt", "A04-REDOX-A28-1-v2.3.txt",
    "A04-Register-Patient-v2.1.txt", "A04-with-allergies-v2.3.1.txt",
    "A08-Update-Patient-v2.3.txt", "A28-REDOX-A1-EmptyPV1andGT1-v2.3.txt",
    "R01-Basic-NG-ExampleMessage-v2.5.1.txt", "R01-Lab-Panel-Various-Blood-Tests-v2.3.1.txt",
    "R01-Lipid-Panel-NG-ExampleMessage-v2.5.1.txt", "V04-historical-admin-v2.5.1.txt",
    "V04-multiple-admins-v2.5.1.txt", "V04-new-admin-v2.5.1.txt",
}
CONDITIONS = {"100", "101", "102", "103", "104", "200", "201", "202", "203", "204", "205",
              "206", "207"}


def test_every_archived_message_gets_the_right_answer(hl7: Hl7Processor) -> None:
    files = sorted(ARCHIVE.glob("*/*.txt")) + sorted((SHARED / "samples" / "messages")
                                                     .glob("*.txt"))
    accepted = set()
    for path in files:
        data = path.read_bytes()
        parsed = read_frame(data).messages[0][1]
        assert isinstance(parsed, Message), path.name
        ack = ack_fields(hl7.handle_frame(data))
        code, control = ack["MSA"][1], ack["MSA"][2]
        assert control == parsed.control_id, path.name      # MSA-2 echoes MSH-10
        if code == "AA":
            accepted.add(path.name)
            continue
        assert code in ("AE", "AR"), path.name
        assert ack["ERR"][3].split("^")[0] in CONDITIONS, path.name
        assert ack["ERR"][2].split("^")[0] in {s.name for s in parsed.segments}, path.name
        if parsed.message_code not in ("ADT", "ORU", "VXU"):
            assert ack["ERR"][3].startswith("200^"), path.name   # unsupported message type
    if files:
        assert accepted == ACCEPTED
