"""What can go wrong with an HL7 v2 message, as the sender will read it in the ACK.

Every failure is an :class:`Hl7Error` that knows where it is (segment, sequence, field,
component: HL7 v2.5.1 chapter 2.14.5, ERR-2 ``ERL``), its code from HL7 table 0357
(message error condition codes) and the acknowledgment code it earns (table 0008)::

    Hl7Error
    ├── MessageRejected   AR  the message cannot be taken at all: framing, character set,
    │                         no MSH, unsupported message type/event, processing or version id
    └── MessageError      AE  the content is wrong: required field missing, bad data type,
                              unknown code, unknown key (e.g. A40 for an unknown patient),
                              or the FHIR resources it maps to were refused (validation,
                              authorization, conflicts)
"""

from __future__ import annotations

from dataclasses import dataclass

# HL7 table 0357 (message error condition codes), the ones this adapter uses.
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
VALUE_TOO_LONG = "104"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION_ID = "203"
UNKNOWN_KEY_IDENTIFIER = "204"
DUPLICATE_KEY_IDENTIFIER = "205"
APPLICATION_RECORD_LOCKED = "206"
APPLICATION_INTERNAL_ERROR = "207"

CONDITION_TEXT = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}


@dataclass
class Hl7Error(Exception):
    """A failure with its location in the message and its table 0357 code."""

    reason: str
    code: str = APPLICATION_INTERNAL_ERROR
    segment: str = ""
    sequence: int | None = None  # which occurrence of the segment (1-based)
    field: int | None = None
    component: int | None = None
    ack_code: str = "AE"

    def __post_init__(self) -> None:
        super().__init__(self.reason)

    @property
    def location(self) -> str:
        """``PID[1]-3.4``-style location for logs and the error queue."""
        if not self.segment:
            return ""
        where = self.segment + (f"[{self.sequence}]" if self.sequence else "")
        if self.field is not None:
            where += f"-{self.field}"
            if self.component is not None:
                where += f".{self.component}"
        return where

    def describe(self) -> str:
        where = self.location
        return f"{where}: {self.reason}" if where else self.reason


class MessageRejected(Hl7Error):
    """AR: the message as a whole cannot be accepted."""

    def __post_init__(self) -> None:
        self.ack_code = "AR"
        super().__post_init__()


class MessageError(Hl7Error):
    """AE: the message was understood but its content cannot be applied."""
