"""Bytes -> messages: encoding characters, escapes, repetitions, components, segment ends,
byte-order marks, FHS/BHS batches, MSH-18 character sets (HL7 v2.5.1 chapter 2)."""

from __future__ import annotations

import codecs

import pytest

from carebridge.ingest.hl7v2.errors import MessageRejected
from carebridge.ingest.hl7v2.parsing import parse_message, read_frame

from .conftest import python_hl7_samples, sample


def test_fields_repetitions_components_subcomponents() -> None:
    message = parse_message(
        "MSH|^~\\&|APP|FAC|||20240101||ADT^A01^ADT_A01|C1|P|2.5.1\r"
        "PID|1||111^^^HOSP&1.2.3&ISO^MR~222^^^OTHER^PI||Doe^John^Q")
    pid = message.require("PID")
    reps = pid.repetitions(3)
    assert len(reps) == 2
    assert reps[0][0] == ["111"]
    assert reps[0][3] == ["HOSP", "1.2.3", "ISO"]  # CX.4 HD as subcomponents
    assert reps[1][3] == ["OTHER"]
    assert pid.value(5, 2) == "John"
    assert message.message_code == "ADT" and message.trigger_event == "A01"
    assert message.control_id == "C1"
    assert message.sender == "APP|FAC"


def test_escape_sequences_are_decoded() -> None:
    # 2.7.4: \F\ field, \S\ component, \T\ subcomponent, \R\ repetition, \E\ escape
    message = parse_message("MSH|^~\\&|A|B|||2024||ORU^R01|C2|P|2.5.1\r"
                            "OBX|1|ST|X^Y||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f")
    assert message.require("OBX").value(5) == "a|b^c&d~e\\f"


def test_encoding_characters_come_from_msh_1_and_2() -> None:
    # Non-default delimiters: field '#', component '$', repetition '*', escape '/', sub '%'
    message = parse_message("MSH#$*/%#APP#FAC###2024##ADT$A08#C3#P#2.5\r"
                            "PID#1##9$$$AUTH$MR*8##Roe$Ann")
    pid = message.require("PID")
    assert [r[0][0] for r in pid.repetitions(3)] == ["9", "8"]
    assert pid.value(3, 4) == "AUTH"
    assert pid.value(5, 2) == "Ann"
    assert message.trigger_event == "A08"


@pytest.mark.parametrize("ending", ["\r", "\n", "\r\n"])
def test_segment_terminators_cr_lf_crlf(ending: str) -> None:
    text = ending.join(["MSH|^~\\&|A|B|||2024||ADT^A01|C4|P|2.5.1", "EVN|A01|2024",
                        "PID|1||7^^^H^MR||Poe^Ed", ""])
    received = read_frame(text.encode())
    _, message = received.messages[0]
    assert not isinstance(message, MessageRejected)
    assert [s.name for s in message.segments] == ["MSH", "EVN", "PID"]


def test_utf8_byte_order_mark_is_dropped() -> None:
    data = codecs.BOM_UTF8 + "MSH|^~\\&|A|B|||2024||ADT^A01|C5|P|2.5.1\rPID|1||1||Zoë".encode()
    _, message = read_frame(data).messages[0]
    assert not isinstance(message, MessageRejected)
    assert message.require("PID").value(5) == "Zoë"


def test_msh18_latin1_decodes_bytes_before_parsing() -> None:
    text = "MSH|^~\\&|A|B|||2024||ADT^A01|C6|P|2.5.1||||||8859/1\rPID|1||1||Müller^Jürgen"
    _, message = read_frame(text.encode("latin-1")).messages[0]
    assert not isinstance(message, MessageRejected)
    assert message.require("PID").value(5) == "Müller"


def test_msh18_utf8_and_ascii() -> None:
    utf8 = "MSH|^~\\&|A|B|||2024||ADT^A01|C7|P|2.5.1||||||UNICODE UTF-8\rPID|1||1||Øre"
    _, message = read_frame(utf8.encode("utf-8")).messages[0]
    assert not isinstance(message, MessageRejected)
    assert message.require("PID").value(5) == "Øre"
    ascii_ = "MSH|^~\\&|A|B|||2024||ADT^A01|C8|P|2.5.1||||||ASCII\rPID|1||1||Smith"
    _, message = read_frame(ascii_.encode("ascii")).messages[0]
    assert not isinstance(message, MessageRejected)


def test_bytes_invalid_in_the_declared_charset_are_rejected_at_msh18() -> None:
    text = "MSH|^~\\&|A|B|||2024||ADT^A01|C9|P|2.5.1||||||ASCII\rPID|1||1||Müller"
    with pytest.raises(MessageRejected) as caught:
        read_frame(text.encode("latin-1"))
    assert (caught.value.segment, caught.value.field, caught.value.code) == ("MSH", 18, "102")


def test_unknown_charset_is_table_value_not_found() -> None:
    with pytest.raises(MessageRejected) as caught:
        read_frame(b"MSH|^~\\&|A|B|||2024||ADT^A01|C10|P|2.5.1||||||KLINGON\rPID|1")
    assert (caught.value.field, caught.value.code) == (18, "103")


def test_python_hl7_sample_message() -> None:
    samples = python_hl7_samples()
    _, message = read_frame(samples.sample_hl7.encode()).messages[0]
    assert not isinstance(message, MessageRejected)
    assert message.message_type == "ORU^R01"
    assert message.control_id == "CNTRL-3456"
    assert [s.name for s in message.all("OBX")] == ["OBX", "OBX"]
    assert message.require("OBX").value(5, 2) == "182"


def test_batches_split_into_messages() -> None:
    samples = python_hl7_samples()
    received = read_frame(samples.sample_batch1.encode())
    assert received.envelope and received.envelope[0].startswith("BHS")
    ids = [m.control_id for _, m in received.messages if not isinstance(m, MessageRejected)]
    assert ids == ["12334456778890", "12334456778891"]
    file_ = read_frame(samples.sample_file1.encode())
    assert [h[:3] for h in file_.envelope] == ["FHS", "BHS", "BHS"]
    assert len(file_.messages) == 3


def test_batch_without_msh_is_rejected() -> None:
    samples = python_hl7_samples()
    with pytest.raises(MessageRejected) as caught:
        read_frame(samples.sample_bad_batch.encode())
    assert caught.value.code == "100"  # segment sequence error


@pytest.mark.parametrize(("text", "field"), [
    ("MSH|^~\\&|A|B|||2024||ADT^A01||P|2.5.1\rPID|1", 10),   # no control id
    ("MSH|^~\\&|A|B|||2024|||C11|P|2.5.1\rPID|1", 9),        # no message type
])
def test_required_msh_fields(text: str, field: int) -> None:
    _, parsed = read_frame(text.encode()).messages[0]
    assert isinstance(parsed, MessageRejected)
    assert (parsed.segment, parsed.field, parsed.code) == ("MSH", field, "101")


def test_first_segment_must_be_msh() -> None:
    with pytest.raises(MessageRejected):
        read_frame(b"PID|1||1\rMSH|^~\\&|A|B|||2024||ADT^A01|C|P|2.5.1")


def test_ig_archive_messages_parse() -> None:
    for name in ("A01-Simple-Admit-VHIS-1-v2.3.1.txt", "R01-Lab-Panel-Various-Blood-Tests"
                 "-v2.3.1.txt", "V04-multiple-admins-v2.5.1.txt"):
        _, message = read_frame(sample(name)).messages[0]
        assert not isinstance(message, MessageRejected), name
    _, oru = read_frame(sample("R01-Lab-Panel-Various-Blood-Tests-v2.3.1.txt")).messages[0]
    assert not isinstance(oru, MessageRejected)
    assert len(oru.all("OBX")) == 32
