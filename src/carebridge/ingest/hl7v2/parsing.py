"""HL7 v2 bytes -> messages: character sets, segment ends, batches, escape sequences.

Parsing is python-hl7's (``hl7`` 0.4.5): on this machine it parses ~2,850 messages/s where
hl7apy parses ~100/s (27x slower); we need >= 500 stored messages/s, so the lenient, fast
parser wins, and the few structural checks the mapping relies on (MSH present and first,
message type, control id, required segments and fields) are made here and in the mappers,
each failing with the segment, field and table 0357 code the ACK reports.

What python-hl7 leaves to us (HL7 v2.5.1 chapter 2):
- bytes -> text: byte-order marks, and MSH-18 (character set, table 0211) decides the codec
  *before* parsing, since a Latin-1 byte is not valid UTF-8 (2.15.9.18);
- segment terminators: the standard says CR (2.5.1), senders also use LF and CRLF;
- batches: FHS/BHS ... BTS/FTS envelopes hold several messages (2.10.3);
- a regular tree: python-hl7 nests only as deep as the separators present, so each field is
  normalised to repetitions -> components -> subcomponents of unescaped text (2.7).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hl7
from hl7.exceptions import ParseException
from hl7.util import unescape

from carebridge.ingest.hl7v2.errors import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    TABLE_VALUE_NOT_FOUND,
    MessageRejected,
)

# HL7 table 0211 (alternate character sets) -> Python codec. UTF-16/32 are not ASCII
# compatible: the MSH cannot even be found without knowing them, so they are refused.
CHARSETS = {
    "": "utf-8",  # not valued: ASCII by the standard; UTF-8 is its superset
    "ASCII": "ascii",
    "8859/1": "latin-1",
    **{f"8859/{n}": f"iso8859-{n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15)},
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UNICODE": "utf-8",
}

Composite = list[list[str]]  # components -> subcomponents


class Segment:
    """One segment: :meth:`repetitions` of field n (1-based, as in ``PID-3``) are its valued
    repetitions (those with some non-empty subcomponent), normalised from python-hl7's nodes
    when first asked for: a mapper reads a fraction of the fields a message carries, and the
    normalising walk was a quarter of the parse."""

    __slots__ = ("_escape", "_fields", "_raw", "_tree", "name", "position", "sequence")

    def __init__(self, name: str, sequence: int, position: int, raw: list[Any], tree: Any,
                 escape: str) -> None:
        self.name = name
        self.sequence = sequence  # which occurrence of this segment name in the message
        self.position = position  # index among all segments of the message
        self._raw = raw  # python-hl7's nodes: raw[n] is field n
        self._tree = tree  # the parsed message (its separators drive unescape)
        self._escape = escape
        self._fields: dict[int, list[Composite]] = {}

    def __repr__(self) -> str:
        return f"Segment({self.name!r}, {self.sequence}, {self.position})"

    def repetitions(self, n: int) -> list[Composite]:
        """Field ``n``'s repetitions (empty when not valued)."""
        found = self._fields.get(n)
        if found is None:
            raw = self._raw
            if n < 0 or n >= len(raw):
                found = []
            elif n == 0:
                found = [[[self.name]]]
            elif n <= 2 and self.name == "MSH":
                # MSH-1 is the field separator itself and MSH-2 the encoding characters:
                # verbatim (they are not data to split or unescape).
                found = [[[_text(raw[n])]]]
            else:
                found = [rep for rep in _field(self._tree, raw[n], self._escape)
                         if any(map(any, rep))]
            self._fields[n] = found
        return found

    def first(self, n: int) -> Composite:
        reps = self.repetitions(n)
        return reps[0] if reps else []

    def value(self, n: int, component: int = 1, sub: int = 1) -> str:
        return part(self.first(n), component, sub)


def part(composite: Composite, component: int = 1, sub: int = 1) -> str:
    """Component ``component`` (1-based), subcomponent ``sub`` of a composite, or ''."""
    if component > len(composite):
        return ""
    subs = composite[component - 1]
    return subs[sub - 1] if sub <= len(subs) else ""


def sub_composite(composite: Composite, component: int) -> Composite:
    """A component whose subcomponents form a composite (e.g. CX.4 HD = ns&uid&type)."""
    if component > len(composite):
        return []
    return [[s] for s in composite[component - 1]]


@dataclass
class Message:
    """One parsed HL7 v2 message (MSH first) and the raw text it came from."""

    text: str
    segments: list[Segment]
    encoding_characters: str = "^~\\&"
    _by_name: dict[str, list[Segment]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for segment in self.segments:
            self._by_name.setdefault(segment.name, []).append(segment)

    @property
    def header(self) -> Segment:
        return self.segments[0]

    def first(self, name: str) -> Segment | None:
        found = self._by_name.get(name)
        return found[0] if found else None

    def all(self, name: str) -> list[Segment]:
        return self._by_name.get(name, [])

    def require(self, name: str) -> Segment:
        found = self.first(name)
        if found is None:
            raise MessageRejected(f"the message has no {name} segment",
                                  SEGMENT_SEQUENCE_ERROR, name, 1)
        return found

    # MSH fields (HL7 v2.5.1 2.14.9)
    @property
    def sending_application(self) -> str:
        return self.header.value(3)

    @property
    def sending_facility(self) -> str:
        return self.header.value(4)

    @property
    def control_id(self) -> str:
        return self.header.value(10)

    @property
    def message_code(self) -> str:
        return self.header.value(9, 1)

    @property
    def trigger_event(self) -> str:
        return self.header.value(9, 2)

    @property
    def message_type(self) -> str:
        """``ADT^A01`` style, for logs and the archive."""
        trigger = self.trigger_event
        return f"{self.message_code}^{trigger}" if trigger else self.message_code

    @property
    def codec(self) -> str:
        """The Python codec of the message's character set (MSH-18), for its ACK."""
        return CHARSETS.get(self.header.value(18).upper().strip(), "utf-8")

    @property
    def sender(self) -> str:
        """Sending application and facility: with MSH-10, the key of exactly-once delivery
        (a control id is unique per sending system, HL7 v2.5.1 2.14.9.10)."""
        return f"{self.sending_application}|{self.sending_facility}"


def decode(data: bytes) -> str:
    """Bytes -> text, in the character set MSH-18 names (after any byte-order mark)."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise MessageRejected(f"not valid UTF-16 after its byte-order mark: {exc}",
                                  DATA_TYPE_ERROR) from None
    charset = _charset(data)
    codec = CHARSETS.get(charset.upper().strip())
    if codec is None:
        raise MessageRejected(f"character set {charset!r} is not supported (HL7 table 0211:"
                              " ASCII, 8859/1-15, UNICODE UTF-8)", TABLE_VALUE_NOT_FOUND,
                              "MSH", 1, 18)
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise MessageRejected(f"the bytes are not valid {charset or 'UTF-8'}: {exc.reason} at"
                              f" byte {exc.start}", DATA_TYPE_ERROR, "MSH", 1, 18) from None


def _charset(data: bytes) -> str:
    """MSH-18 read from the raw header line (MSH-18 itself is ASCII)."""
    start = data.find(b"MSH")
    if start < 0 or len(data) < start + 8:
        return ""
    line_end = len(data)
    for terminator in (b"\r", b"\n"):
        at = data.find(terminator, start)
        if at >= 0:
            line_end = min(line_end, at)
    separator = data[start + 3:start + 4]
    fields = data[start:line_end].split(separator)
    # fields[0] = 'MSH', fields[1] = encoding characters (MSH-2), so MSH-n = fields[n - 1]
    if len(fields) < 18:
        return ""
    repetition = data[start + 5:start + 6] or b"~"
    return fields[17].split(repetition)[0].decode("latin-1")


def normalise(text: str) -> str:
    """CR, LF or CRLF segment ends -> CR; drop blank lines and surrounding whitespace."""
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    return "\r".join(line for line in text.split("\r") if line.strip())


def split_batch(text: str) -> tuple[list[str], list[str]]:
    """Split FHS/BHS envelopes (HL7 v2.5.1 2.10.3) into messages.

    Returns (envelope header segments, message texts); plain messages give ([], [text]).
    """
    headers: list[str] = []
    messages: list[list[str]] = []
    for line in text.split("\r"):
        tag = line[:3]
        if tag in ("FHS", "BHS"):
            headers.append(line)
        elif tag in ("FTS", "BTS"):
            continue
        elif tag == "MSH":
            messages.append([line])
        elif messages:
            messages[-1].append(line)
        else:
            raise MessageRejected(f"segment {tag or '(empty)'} before any MSH",
                                  SEGMENT_SEQUENCE_ERROR, tag, 1)
    return headers, ["\r".join(m) for m in messages]


def parse_message(text: str) -> Message:
    """One message's text (CR-separated, MSH first) -> :class:`Message`."""
    if not text.startswith("MSH") or len(text) < 8:
        raise MessageRejected("a message starts with an MSH segment", SEGMENT_SEQUENCE_ERROR,
                              "MSH", 1)
    try:
        tree = hl7.parse(text, factory=_Lists)
    except (ParseException, ValueError, IndexError) as exc:
        raise MessageRejected(f"cannot parse the message: {exc}", DATA_TYPE_ERROR,
                              "MSH", 1) from None
    escape = text[6] if len(text) > 6 and text[6] != text[3] else "\\"
    counts: dict[str, int] = {}
    segments: list[Segment] = []
    for position, raw in enumerate(tree):
        name = _text(raw[0]) if len(raw) else ""
        counts[name] = counts.get(name, 0) + 1
        segments.append(Segment(name, counts[name], position, raw, tree, escape))
    message = Message(text, segments, text[4:8] if text[3] != text[4] else "^~\\&")
    if not message.control_id:
        raise MessageRejected("MSH-10 (message control id) is required", REQUIRED_FIELD_MISSING,
                              "MSH", 1, 10)
    if not message.message_code:
        raise MessageRejected("MSH-9 (message type) is required", REQUIRED_FIELD_MISSING,
                              "MSH", 1, 9)
    return message


def _plain(sequence: list[Any], esc: str | None = None, separators: str | None = None,
           factory: Any = None) -> list[Any]:
    return sequence


class _Lists(hl7.Factory):  # type: ignore[misc]
    """python-hl7's documented extension point (``factory=``): segments, fields, repetitions
    and components as plain lists instead of its container objects, which parse_message
    turns into the regular tree anyway. On this machine python-hl7's parse became 2.4x faster
    (461 against 1,122 us per benchmark message) and ``read_frame`` as a whole went from
    1,108 to 812 us. The message stays python-hl7's ``Message``: its separators and escape
    character drive ``unescape``."""

    create_segment = staticmethod(_plain)
    create_field = staticmethod(_plain)
    create_repetition = staticmethod(_plain)
    create_component = staticmethod(_plain)


def _text(node: Any) -> str:
    """A node that holds one value (a segment name, MSH-1, MSH-2) as that value."""
    while isinstance(node, list):
        node = node[0] if node else ""
    return str(node)


def _leaf(container: Any, text: str) -> str:
    """A leaf holding the escape character, unescaped (callers test for it inline)."""
    return str(unescape(container, text))


def _field(tree: Any, node: Any, escape: str) -> list[Composite]:
    if node.__class__ is str:
        return [[[node if escape not in node else _leaf(tree, node)]]]
    out: list[Composite] = []
    for rep in node:
        out.append(_repetition(tree, rep, escape))
    return out


def _repetition(tree: Any, node: Any, escape: str) -> Composite:
    # Leaves are str (the _Lists factory); only text holding the escape character is
    # unescaped (a function call per leaf was most of this walk). python-hl7 wraps every
    # component in a list, of one subcomponent unless it holds "&": that case is taken
    # without a comprehension (a comprehension per component cost more than its copy).
    if node.__class__ is str:
        return [[node if escape not in node else _leaf(tree, node)]]
    out: Composite = []
    for component in node:
        if component.__class__ is str:
            out.append([component if escape not in component
                        else _leaf(tree, component)])
        elif len(component) == 1:
            sub = component[0]
            out.append([sub if escape not in sub else _leaf(tree, sub)])
        else:
            out.append(_subcomponents(tree, component, escape))
    return out


def _subcomponents(tree: Any, component: list[str], escape: str) -> list[str]:
    # Its own function: a comprehension in _repetition or _field would give them a closure
    # cell per variable it reads, made on every call (Python 3.11).
    return [s if escape not in s else _leaf(tree, s) for s in component]


@dataclass
class Received:
    """What one MLLP frame held: messages, or the error that stopped it being read."""

    messages: list[tuple[str, Message | MessageRejected]]  # (message text, parsed or why not)
    envelope: list[str]  # FHS/BHS header segments when the frame was a batch
    text: str = ""


def read_frame(data: bytes) -> Received:
    """Decode and split one frame; a failing message does not hide the others in a batch."""
    return read_text(decode(data))


def read_text(text: str) -> Received:
    """Split and parse decoded text (a frame's, or a message kept in the error queue)."""
    text = normalise(text)
    if not text:
        raise MessageRejected("the frame holds no message", SEGMENT_SEQUENCE_ERROR, "MSH", 1)
    envelope, texts = split_batch(text)
    messages: list[tuple[str, Message | MessageRejected]] = []
    for one in texts:
        try:
            messages.append((one, parse_message(one)))
        except MessageRejected as exc:
            messages.append((one, exc))
    if not messages:
        raise MessageRejected("the batch holds no MSH segment", SEGMENT_SEQUENCE_ERROR,
                              "MSH", 1)
    return Received(messages, envelope, text)


def iter_segments(message: Message, *names: str) -> Iterator[Segment]:
    wanted = set(names)
    return (s for s in message.segments if s.name in wanted)
