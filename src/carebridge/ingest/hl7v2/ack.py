"""Acknowledgments (HL7 v2.5.1 2.9.2 original mode; ACK structure 2.14.1; ERR 2.14.5).

MSA-1 is AA, AE or AR (table 0008) and MSA-2 echoes the MSH-10 of the message answered.
An error adds one ERR segment: ERR-2 the location (segment^sequence^field^field
repetition^component), ERR-3 the condition code from table 0357, ERR-4 the severity (table
0516: E error), ERR-8 a message for the user. MSA-3 repeats the text for v2.3 receivers.
"""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime

from carebridge.ingest.hl7v2.errors import CONDITION_TEXT, Hl7Error
from carebridge.ingest.hl7v2.parsing import Message

_counter = itertools.count(1)
_PREFIX = f"CB{os.getpid() % 100000:05d}"


def _ack_control_id(stamp: str) -> str:
    return f"{_PREFIX}{stamp}{next(_counter):06d}"


def escape(text: str, encoding_characters: str = "^~\\&", field_separator: str = "|") -> str:
    """Escape delimiter characters in data (HL7 v2.5.1 2.7.4: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\)."""
    for char in field_separator + encoding_characters + "^~\\&\r\n":
        if char in text:
            break
    else:  # most data (an application name, a control id) has nothing to escape
        return text
    chars = (encoding_characters + "^~\\&"[len(encoding_characters):])[:4]
    component, repetition, esc, sub = chars[0], chars[1], chars[2], chars[3]
    out = text.replace(esc, f"{esc}E{esc}")
    for char, code in ((field_separator, "F"), (component, "S"), (sub, "T"), (repetition, "R")):
        out = out.replace(char, f"{esc}{code}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def build_ack(message: Message | None, ack_code: str, error: Hl7Error | None = None, *,
              application: str = "carebridge", facility: str = "") -> str:
    """The ACK for ``message`` (None: the message could not even be read) as CR-ended text."""
    if message is not None:
        header = message.header
        separator = "|"
        encoding = message.encoding_characters or "^~\\&"
        receiver_app = escape(header.value(3), encoding) + _more(header.first(3), encoding)
        receiver_fac = escape(header.value(4), encoding) + _more(header.first(4), encoding)
        trigger = message.trigger_event
        processing = header.value(11) or "P"
        version = header.value(12) or "2.5.1"
        control_id = message.control_id
    else:
        separator, encoding = "|", "^~\\&"
        receiver_app = receiver_fac = trigger = ""
        processing, version, control_id = "P", "2.5.1", ""
    component = encoding[0]
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    message_type = component.join(p for p in ("ACK", trigger, "ACK") if p) if trigger else "ACK"

    def esc(text: str) -> str:
        return escape(text, encoding, separator)

    msh = separator.join([
        "MSH", encoding, esc(application), esc(facility), receiver_app, receiver_fac,
        stamp + "+0000", "", message_type, _ack_control_id(stamp), esc(processing),
        esc(version),
    ])
    text_message = esc(error.describe())[:80] if error is not None else ""
    msa = separator.join(["MSA", ack_code, esc(control_id), text_message]).rstrip(separator)
    segments = [msh, msa]
    if error is not None:
        location = component.join([
            esc(error.segment), str(error.sequence or "") if error.segment else "",
            str(error.field or ""), "1" if error.field else "", str(error.component or ""),
        ]).rstrip(component)
        condition = component.join(
            [error.code, esc(CONDITION_TEXT.get(error.code, "")), "HL70357"])
        segments.append(separator.join(
            ["ERR", "", location, condition, "E", "", "", "", esc(error.reason)]))
    return "\r".join(segments) + "\r"


def _more(composite: list[list[str]], encoding: str) -> str:
    """The rest of an HD (namespace^universal id^type) for the ACK's receiver fields."""
    rest = [c[0] if c else "" for c in composite[1:]]
    if not any(rest):
        return ""
    return "".join(encoding[0] + escape(r, encoding) for r in rest).rstrip(encoding[0])


def batch_ack(envelope: list[str], acks: list[str]) -> str:
    """ACKs of a batch (2.10.3): the same envelope kind around the ACK messages."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    has_file = any(h.startswith("FHS") for h in envelope)
    lines: list[str] = []
    if has_file:
        lines.append(f"FHS|^~\\&|carebridge||||{now}")
    lines.append(f"BHS|^~\\&|carebridge||||{now}")
    lines.extend(a.rstrip("\r") for a in acks)
    lines.append(f"BTS|{len(acks)}")
    if has_file:
        lines.append("FTS|1")
    return "\r".join(lines) + "\r"
