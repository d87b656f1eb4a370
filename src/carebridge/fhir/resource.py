"""Plain helpers on FHIR JSON resources: parsing, ids, instants, references.

Resources stay ``dict`` trees parsed by orjson; there are no model classes on the hot path
(the server stores and serves JSON bytes).
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from carebridge.fhir import registry
from carebridge.fhir.errors import BadRequest

# http://hl7.org/fhir/R4/datatypes.html#id
ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")

Resource = dict[str, Any]


def new_id() -> str:
    """A new server-assigned id: a UUID version 7 (RFC 9562 section 5.7).

    Time-ordered ids keep the B-tree indexes keyed on ids (resource, history, every search
    index table) appending near their right edge instead of touching a random page per
    row: with random (version 4) ids the index writes of an ingest cost ~1.6x as much here
    (bench/ingest.py). The price: an id tells roughly when its resource was created (to
    the millisecond), which ``meta.lastUpdated`` of a first version says anyway; 62 bits
    stay random, so ids are not guessable (and access never depends on an id's secrecy).
    Python 3.11's ``uuid`` has no version 7 (3.14 adds it), hence these lines.
    """
    h = f"{_uuid7_int():032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID7_LOCK = threading.Lock()
_uuid7_last = [0, 0]  # [unix ms, counter] of the last id made by this process


class _Entropy:
    """Random bits from the operating system's CSPRNG (``os.urandom``), read 4 KiB at a
    time: ``secrets.randbits`` and ``uuid.uuid4`` make one ``getrandom`` system call each,
    and an HL7 v2 message needs a dozen ids (2.5 % of a feed's CPU went there). Every bit
    is still the kernel's; a forked child drops what it inherited, so two processes never
    hand out the same bits."""

    SIZE = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._buffer, self._at = b"", 0
        self._lock = threading.Lock()

    def take(self, count: int) -> bytes:
        with self._lock:
            if self._at + count > len(self._buffer):
                self._buffer, self._at = os.urandom(max(self.SIZE, count)), 0
            start = self._at
            self._at = start + count
            return self._buffer[start:self._at]

    def bits(self, count: int) -> int:
        return int.from_bytes(self.take((count + 7) // 8), "big") >> (-count % 8)


_ENTROPY = _Entropy()


def random_uuid() -> uuid.UUID:
    """A random (version 4) UUID, like ``uuid.uuid4()`` from the same kernel source."""
    return uuid.UUID(bytes=_ENTROPY.take(16), version=4)


def _uuid7_int() -> int:
    """unix_ts_ms (48 bits) | ver 7 | rand_a (12 bits) | var 0b10 | rand_b (62 bits).

    rand_a is a counter within the millisecond, starting at a random value below 2048
    (RFC 9562 section 6.2, method 1), so ids made by one process are strictly increasing
    even within a millisecond or when the clock steps back (then the last timestamp is kept).
    """
    with _UUID7_LOCK:
        ms = time.time_ns() // 1_000_000
        last_ms, counter = _uuid7_last
        if ms > last_ms:
            counter = _ENTROPY.bits(11)
        else:
            ms, counter = last_ms, counter + 1
            if counter > 0xFFF:  # 4,096 ids in one millisecond: borrow the next one
                ms, counter = ms + 1, _ENTROPY.bits(11)
        _uuid7_last[0], _uuid7_last[1] = ms, counter
    return ((ms & 0xFFFF_FFFF_FFFF) << 80) | (0x7 << 76) | (counter << 64) | (
        0b10 << 62) | _ENTROPY.bits(62)


def check_id(value: object, expression: str = "id") -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise BadRequest(
            f"Invalid resource id {value!r}: ids are 1-64 characters of A-Z, a-z, 0-9, '-' and '.'",
            (expression,),
        )
    return value


def check_resource_type(name: str) -> str:
    """Raise if ``name`` is not a concrete R4 resource type (404 at the URL level is the
    caller's choice; this is the body check)."""
    if not registry.is_resource_type(name):
        raise BadRequest(f"Unknown resource type {name!r}", ("resourceType",))
    return name


def parse_json(body: bytes, what: str = "request body") -> Any:
    if not body:
        raise BadRequest(f"The {what} is empty; a FHIR JSON resource was expected")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The {what} is not valid JSON: {exc}") from None


def parse_resource(body: bytes, expected_type: str | None = None) -> Resource:
    """Parse and check the shape every stored resource must have.

    Checks: a JSON object, a known ``resourceType`` (equal to ``expected_type`` when given),
    only elements the type defines at the top level. Deeper validation belongs to the validator.
    """
    data = parse_json(body)
    return check_resource(data, expected_type)


def check_resource(data: Any, expected_type: str | None = None, where: str = "") -> Resource:
    if not isinstance(data, dict):
        raise BadRequest("A FHIR resource must be a JSON object", (where or "$this",))
    rtype = data.get("resourceType")
    if not isinstance(rtype, str):
        raise BadRequest("The resource has no resourceType", (_join(where, "resourceType"),))
    if not registry.is_resource_type(rtype):
        raise BadRequest(f"Unknown resource type {rtype!r}", (_join(where, "resourceType"),))
    if expected_type is not None and rtype != expected_type:
        raise BadRequest(
            f"The body's resourceType {rtype!r} does not match the URL's type {expected_type!r}",
            (_join(where, "resourceType"),),
        )
    allowed = registry.top_level_elements(rtype)
    for key in data:
        if key not in allowed:
            raise BadRequest(f"Unknown element {key!r} in {rtype}", (_join(where or rtype, key),))
    return data


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def now_instant() -> datetime:
    """The server clock, truncated to milliseconds (the precision we publish)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@lru_cache(maxsize=64)  # a transaction stamps many versions with the same instant
def format_instant(moment: datetime) -> str:
    """FHIR ``instant`` with millisecond precision in UTC, e.g. 2026-11-22T10:00:00.123Z."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_instant(value: str) -> datetime:
    """Parse a FHIR instant / dateTime given to ``_since`` and similar parameters.

    A date without a time zone is taken as UTC; partial dates (``2026``, ``2026-11``,
    ``2026-11-22``) start at the beginning of their period.
    """
    text = value.strip().replace("Z", "+00:00").replace(" ", "+")
    try:
        if re.fullmatch(r"\d{4}", text):
            return datetime(int(text), 1, 1, tzinfo=UTC)
        if re.fullmatch(r"\d{4}-\d{2}", text):
            return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{value!r} is not a valid FHIR instant") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def with_meta(resource: Resource, resource_id: str, version: int, updated: datetime) -> Resource:
    """A copy of ``resource`` with the server-owned id and meta, ordered for reading."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = format_instant(updated)
    out: Resource = {"resourceType": resource["resourceType"], "id": resource_id, "meta": meta}
    for key, value in resource.items():
        if key not in out:
            out[key] = value
    return out


def rewrite_references(node: Any, replace: Callable[[str], str | None]) -> Any:
    """Walk a resource and replace reference strings in place.

    ``Reference.reference`` values are offered to ``replace``, and so is any other string
    value that begins with ``urn:uuid:`` or ``urn:oid:`` (uri/canonical elements), as the
    transaction rules require (http://hl7.org/fhir/R4/http.html#trules). Parsed JSON holds
    exact types only, so ``type(x) is`` tests stand for ``isinstance`` (this runs on every
    element of every resource in a bundle).
    """
    kind = type(node)
    if kind is dict:
        for key, value in node.items():
            kind = type(value)
            if kind is str:
                if key == "reference" or value.startswith(_URN):
                    new = replace(value)
                    if new is not None:
                        node[key] = new
            elif kind is dict or kind is list:
                rewrite_references(value, replace)
    elif kind is list:
        for index, value in enumerate(node):
            kind = type(value)
            if kind is str:
                if value.startswith(_URN):
                    new = replace(value)
                    if new is not None:
                        node[index] = new
            elif kind is dict or kind is list:
                rewrite_references(value, replace)
    return node


_URN = ("urn:uuid:", "urn:oid:")


def dumps(resource: Any, pretty: bool = False) -> bytes:
    return orjson.dumps(resource, option=orjson.OPT_INDENT_2 if pretty else 0)
