"""FHIR primitive types: JSON representation and lexical rules.

The regular expressions come from the official type StructureDefinitions (the ``regex``
extension on ``<type>.value``); the JSON kinds and value ranges come from
http://hl7.org/fhir/R4/datatypes.html#primitive and http://hl7.org/fhir/R4/json.html#primitive
(booleans and numbers are JSON booleans and numbers, everything else is a JSON string).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from functools import cache

from carebridge.fhir import registry

_REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"

# FHIR integer is a signed 32-bit number (datatypes.html#integer).
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1

# Valid string values remembered per type (see checker): at most this many, this long.
_REMEMBERED_VALUES = 20_000
_REMEMBERED_LENGTH = 200

# A check returns None when the value is fine, else a human reason.
PrimitiveCheck = Callable[[object], str | None]


@cache
def regex_of(type_code: str) -> re.Pattern[str] | None:
    """The lexical regex of a primitive type, from its StructureDefinition."""
    try:
        sd = registry.structure_definition(type_code)
    except KeyError:
        return None
    for element in sd["snapshot"]["element"]:
        if element["path"] == f"{type_code}.value":
            for type_ref in element.get("type", ()):
                for ext in type_ref.get("extension", ()):
                    if ext.get("url") == _REGEX_EXT:
                        # The spec's regexes are Java's: \s and \S are ASCII-only there.
                        return re.compile(ext["valueString"], re.ASCII)
    return None


def is_primitive(type_code: str) -> bool:
    # FHIR primitive type names start with a lower-case letter (datatypes.html).
    return type_code[:1].islower()


def _calendar_ok(text: str) -> bool:
    """The regexes accept 2023-02-30; a real calendar date is required."""
    if len(text) < 10 or text[4] != "-" or text[7] != "-":
        return True
    try:
        date(int(text[0:4]), int(text[5:7]), int(text[8:10]))
    except ValueError:
        return False
    return True


def _kind_name(value: object) -> str:
    if isinstance(value, bool):
        return "a JSON boolean"
    if isinstance(value, int | float):
        return "a JSON number"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, dict):
        return "a JSON object"
    return "null"


@cache
def checker(type_code: str) -> PrimitiveCheck:
    """A function that checks one JSON value against a primitive type."""
    if type_code == "boolean":
        def check_boolean(value: object) -> str | None:
            if isinstance(value, bool):
                return None
            return f"must be a JSON boolean (true or false), not {_kind_name(value)} {value!r}"
        return check_boolean
    if type_code in ("integer", "positiveInt", "unsignedInt"):
        low = {"integer": _INT_MIN, "positiveInt": 1, "unsignedInt": 0}[type_code]

        def check_integer(value: object) -> str | None:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    return None  # 5.0 and 5 are the same JSON number
                return (f"must be a JSON number without a fraction ({type_code}), not "
                        f"{_kind_name(value)} {value!r}")
            if not low <= value <= _INT_MAX:
                return f"{value} is out of range for {type_code} ({low}..{_INT_MAX})"
            return None
        return check_integer
    if type_code == "decimal":
        def check_decimal(value: object) -> str | None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"must be a JSON number (decimal), not {_kind_name(value)} {value!r}"
            if value != value or value in (float("inf"), float("-inf")):
                return "must be a finite number"
            return None
        return check_decimal

    pattern = regex_of(type_code)
    dated = type_code in ("date", "dateTime", "instant")
    formats = {
        "date": "YYYY, YYYY-MM or YYYY-MM-DD",
        "dateTime": "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss+zz:zz",
        "instant": "YYYY-MM-DDThh:mm:ss(.sss)+zz:zz or ...Z, with seconds and a time zone",
        "time": "hh:mm:ss",
        "id": "1-64 characters of A-Z, a-z, 0-9, '-' and '.'",
        "oid": "urn:oid: followed by a dotted OID",
        "uuid": "urn:uuid: followed by a lower-case UUID",
        "code": "no leading, trailing or double whitespace",
        "string": "not empty",
        "markdown": "not empty",
        "base64Binary": "base64 characters in groups of 4",
        "uri": "no whitespace",
        "url": "no whitespace",
        "canonical": "no whitespace",
    }
    expected = formats.get(type_code, "")
    # Short values seen valid before (codes, systems, dates, references repeat across
    # resources): a set look-up instead of the regex. Bounded; emptied when full.
    valid: set[str] = set()

    def check_string(value: object) -> str | None:
        if not isinstance(value, str):
            return f"must be a JSON string ({type_code}), not {_kind_name(value)} {value!r}"
        if value in valid:
            return None
        if pattern is not None and not pattern.fullmatch(value):
            shown = value if len(value) <= 60 else value[:57] + "..."
            hint = f" (expected {expected})" if expected else ""
            return f"{shown!r} is not a valid {type_code}{hint}"
        if dated and not _calendar_ok(value):
            return f"{value!r} is not a valid {type_code}: no such calendar date"
        if type_code in ("string", "markdown") and len(value) > 1024 * 1024:
            return f"{type_code} values are limited to 1 MB"
        if len(value) <= _REMEMBERED_LENGTH:
            if len(valid) >= _REMEMBERED_VALUES:
                valid.clear()
            valid.add(value)
        return None
    return check_string
