"""ACK and NACK structure (HL7 v2.5.1 2.9.2, 2.14.1 ACK, 2.14.5 ERR, tables 0008/0357)."""

from __future__ import annotations

from carebridge.ingest.hl7v2.ack import batch_ack, build_ack, escape
from carebridge.ingest.hl7v2.errors import MessageError
from carebridge.ingest.hl7v2.parsing import parse_message

from .conftest import ack_fields

MESSAGE = parse_message("MSH|^~\\&|LAB^1.2.3^ISO|NORTH|CB|CB|20240101||ORU^R01^ORU_R01|"
                        "MSG-77|P|2.5.1\rPID|1||1^^^H^MR")


def test_aa_echoes_control_id_and_swaps_sender_and_receiver() -> None:
    ack = ack_fields(build_ack(MESSAGE, "AA", application="carebridge", facility="HQ"))
    msh, msa = ack["MSH"], ack["MSA"]
    assert msh[2] == "carebridge" and msh[3] == "HQ"          # MSH-3/4: us
    assert msh[4] == "LAB^1.2.3^ISO" and msh[5] == "NORTH"    # MSH-5/6: the sender
    assert msh[8] == "ACK^R01^ACK"                            # MSH-9
    assert msh[9] and msh[9] != "MSG-77"                      # MSH-10: the ACK's own id
    assert msh[10] == "P" and msh[11] == "2.5.1"              # MSH-11/12 as received
    assert msa[1:3] == ["AA", "MSG-77"]                       # MSA-1, MSA-2 = MSH-10
    assert "ERR" not in ack


def test_error_names_segment_field_and_code() -> None:
    error = MessageError("OBX-5 'abc' is not a number", "102", "OBX", 3, 5)
    ack = ack_fields(build_ack(MESSAGE, "AE", error))
    assert ack["MSA"][1:3] == ["AE", "MSG-77"]
    err = ack["ERR"]
    assert err[2] == "OBX^3^5^1"                  # ERR-2: segment^sequence^field^repetition
    assert err[3] == "102^Data type error^HL70357"  # ERR-3: table 0357
    assert err[4] == "E"                          # ERR-4: severity error
    assert err[8] == "OBX-5 'abc' is not a number"  # ERR-8: user message
    assert "OBX[3]-5" in ack["MSA"][3]            # MSA-3 for older receivers


def test_error_text_with_delimiters_is_escaped() -> None:
    error = MessageError("bad value a|b^c", "102", "PID", 1, 8)
    text = build_ack(MESSAGE, "AE", error)
    assert text.count("\r") == 3
    err = ack_fields(text)["ERR"]
    assert err[8] == "bad value a\\F\\b\\S\\c"
    assert escape("x&y~z\\") == "x\\T\\y\\R\\z\\E\\"


def test_unreadable_message_gets_an_ack_with_empty_msa2() -> None:
    error = MessageError("no MSH", "100", "MSH", 1)
    ack = ack_fields(build_ack(None, "AR", error))
    assert ack["MSA"][1] == "AR" and ack["MSA"][2] == ""
    assert ack["ERR"][3].startswith("100^")


def test_batch_ack_wraps_acks_in_the_envelope() -> None:
    one = build_ack(MESSAGE, "AA")
    text = batch_ack(["FHS|^~\\&", "BHS|^~\\&"], [one, one])
    names = [line[:3] for line in text.strip("\r").split("\r")]
    assert names == ["FHS", "BHS", "MSH", "MSA", "MSH", "MSA", "BTS", "FTS"]
    assert "BTS|2" in text
