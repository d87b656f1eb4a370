"""FHIR element values -> index values, by search parameter type and FHIR type.

The mapping follows http://hl7.org/fhir/R4/search.html: the table of each parameter type
says which datatypes it searches and how (token: Coding, CodeableConcept, Identifier,
ContactPoint, code, boolean, ...).  :func:`converter` picks the function when the FHIR type
is known (the fast path); :func:`convert_untyped` decides from the shape of a JSON value (what
a FHIRPath engine returns).  Values that cannot be read (a malformed date) are skipped:
extraction never fails a write that validation let through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from carebridge.search.references import (
    reference_from_canonical,
    reference_from_reference,
    reference_from_resource,
)
from carebridge.search.values import (
    DATE_MAX,
    DATE_MIN,
    DateValue,
    IndexValue,
    NumberValue,
    QuantityValue,
    StringValue,
    TokenValue,
    UriValue,
    date_range,
    implicit_range,
    normalize_string,
    to_decimal,
)

__all__ = ["Converter", "convert_untyped", "converter"]

Converter = Callable[[Any], Sequence[IndexValue]]

_NONE: tuple[IndexValue, ...] = ()
_ISO_4217 = "urn:iso:std:iso:4217"


# --- token ----------------------------------------------------------------------------------


def _token_primitive(value: Any) -> Sequence[IndexValue]:
    if isinstance(value, bool):  # search.html#token: boolean is searched as true / false
        return (TokenValue(None, "true" if value else "false"),)
    if isinstance(value, str | int):
        return (TokenValue(None, str(value)),)
    return _NONE


def _token_code(system: str | None) -> Converter:
    def convert(value: Any) -> Sequence[IndexValue]:
        return (TokenValue(system, value),) if isinstance(value, str) else _NONE

    return convert


def _token_coding(coding: Any) -> Sequence[IndexValue]:
    if type(coding) is not dict:
        return _NONE
    system, code, display = coding.get("system"), coding.get("code"), coding.get("display")
    if system is None and code is None and display is None:
        return _NONE
    return (TokenValue(system, code, display),)


def _token_concept(concept: Any) -> Sequence[IndexValue]:
    if type(concept) is not dict:
        return _NONE
    found: list[IndexValue] = []
    for coding in concept.get("coding", ()):
        found.extend(_token_coding(coding))
    if text := concept.get("text"):  # for :text (search.html#modifiers)
        found.append(TokenValue(None, None, text))
    return found


def _token_identifier(identifier: Any) -> Sequence[IndexValue]:
    if type(identifier) is not dict:
        return _NONE
    system, value = identifier.get("system"), identifier.get("value")
    if system is None and value is None:
        return _NONE
    id_type = identifier.get("type")
    if type(id_type) is not dict:
        return (TokenValue(system, value),)
    text = id_type.get("text")
    codings = [c for c in id_type.get("coding", ()) if type(c) is dict]
    if not codings:
        return (TokenValue(system, value, text),)
    # one value per type coding, for :of-type (search.html#token)
    return [TokenValue(system, value, text, c.get("system"), c.get("code")) for c in codings]


def _token_contact(contact: Any) -> Sequence[IndexValue]:
    # ContactPoint: the value is the code; its system (phone, email, ...) serves as the
    # system, as HAPI does, so `telecom=email|a@b.org` works.
    if type(contact) is not dict or not contact.get("value"):
        return _NONE
    return (TokenValue(contact.get("system"), contact["value"]),)


# --- string ---------------------------------------------------------------------------------


def _string(value: Any) -> Sequence[IndexValue]:
    if not isinstance(value, str) or not value:
        return _NONE
    return (StringValue(value, normalize_string(value)),)


def _strings_of(parts: Sequence[str]) -> Converter:
    def convert(value: Any) -> Sequence[IndexValue]:
        if type(value) is not dict:
            return _NONE
        found: list[IndexValue] = []
        for part in parts:
            item = value.get(part)
            if isinstance(item, list):
                for element in item:
                    found.extend(_string(element))
            else:
                found.extend(_string(item))
        return found

    return convert


_HUMAN_NAME = ("family", "given", "prefix", "suffix", "text")
_ADDRESS = ("line", "city", "district", "state", "postalCode", "country", "text")
_string_name = _strings_of(_HUMAN_NAME)
_string_address = _strings_of(_ADDRESS)


# --- date -----------------------------------------------------------------------------------


def _date(value: Any) -> Sequence[IndexValue]:
    if not isinstance(value, str):
        value = str(value) if value is not None and not isinstance(value, bool) else ""
    bounds = date_range(value)
    return (DateValue(*bounds),) if bounds else _NONE


def _date_period(period: Any) -> Sequence[IndexValue]:
    if type(period) is not dict:
        return _NONE
    start = date_range(period["start"]) if isinstance(period.get("start"), str) else None
    end = date_range(period["end"]) if isinstance(period.get("end"), str) else None
    if start is None and end is None:
        return _NONE  # an empty or unreadable Period says nothing about time
    return (DateValue(start[0] if start else DATE_MIN, end[1] if end else DATE_MAX),)


def _date_timing(timing: Any) -> Sequence[IndexValue]:
    # search.html#date: a Timing is searched by its events and the bounds of its repeat.
    if type(timing) is not dict:
        return _NONE
    found: list[IndexValue] = []
    for event in timing.get("event", ()):
        found.extend(_date(event))
    repeat = timing.get("repeat")
    if type(repeat) is dict and "boundsPeriod" in repeat:
        found.extend(_date_period(repeat["boundsPeriod"]))
    return found


# --- number and quantity --------------------------------------------------------------------


def _number(value: Any) -> Sequence[IndexValue]:
    number = to_decimal(value)
    if number is None:
        return _NONE
    return (NumberValue(number, *implicit_range(number)),)


def _quantity(quantity: Any) -> Sequence[IndexValue]:
    if type(quantity) is not dict:
        return _NONE
    number = to_decimal(quantity.get("value"))
    if number is None:
        return _NONE
    low: Decimal | None
    high: Decimal | None
    low, high = implicit_range(number)
    # Quantity.comparator: "<5" is any value below 5: the range is (-inf, 5].
    comparator = quantity.get("comparator")
    if comparator in ("<", "<="):
        low, high = None, number
    elif comparator in (">", ">="):
        low, high = number, None
    if "currency" in quantity:  # Money
        return (QuantityValue(number, low, high, _ISO_4217, quantity["currency"], None),)
    unit = quantity.get("unit")
    return (QuantityValue(number, low, high, quantity.get("system"), quantity.get("code"), unit),)


def _quantity_range(range_: Any) -> Sequence[IndexValue]:
    if type(range_) is not dict:
        return _NONE
    low, high = range_.get("low"), range_.get("high")
    low_value = to_decimal(low.get("value")) if type(low) is dict else None
    high_value = to_decimal(high.get("value")) if type(high) is dict else None
    if low_value is None and high_value is None:
        return _NONE
    bound: dict[str, Any] = low if low_value is not None else high  # type: ignore[assignment]
    return (
        QuantityValue(
            None, low_value, high_value, bound.get("system"), bound.get("code"), bound.get("unit")
        ),
    )


# --- uri ------------------------------------------------------------------------------------


def _uri(value: Any) -> Sequence[IndexValue]:
    return (UriValue(value),) if isinstance(value, str) and value else _NONE


# --- dispatch -------------------------------------------------------------------------------

_QUANTITIES = ("Quantity", "Age", "Duration", "Distance", "Count", "Money")
_BY_TYPE: dict[str, dict[str, Converter]] = {
    "token": {
        "Coding": _token_coding,
        "CodeableConcept": _token_concept,
        "Identifier": _token_identifier,
        "ContactPoint": _token_contact,
        **{t: _token_primitive for t in ("boolean", "string", "id", "uri", "url", "canonical")},
        **{t: _token_primitive for t in ("oid", "uuid", "integer", "positiveInt")},
    },
    "string": {
        **{t: _string for t in ("string", "markdown", "code", "uri", "url", "id")},
        "HumanName": _string_name,
        "Address": _string_address,
    },
    "date": {
        **{t: _date for t in ("date", "dateTime", "instant")},
        "Period": _date_period,
        "Timing": _date_timing,
    },
    "number": {t: _number for t in ("decimal", "integer", "positiveInt", "unsignedInt")},
    "quantity": {**{t: _quantity for t in _QUANTITIES}, "Range": _quantity_range},
    "reference": {
        "Reference": reference_from_reference,
        "Resource": reference_from_resource,
        **{t: reference_from_canonical for t in ("canonical", "uri", "url")},
    },
    "uri": {t: _uri for t in ("uri", "url", "canonical", "oid", "uuid")},
}


def converter(param_type: str, fhir_type: str, implicit_system: str | None) -> Converter | None:
    """How a ``param_type`` parameter reads an element of ``fhir_type``; None: it doesn't.

    E.g. a date parameter on ``Procedure.performed[x]`` reads dateTime and Period but not
    the string, Age or Range choices; a quantity parameter does not read SampledData.
    """
    if param_type == "token" and fhir_type == "code":
        return _token_code(implicit_system)
    return _BY_TYPE.get(param_type, {}).get(fhir_type)


def convert_untyped(param_type: str, value: Any) -> Sequence[IndexValue]:
    """Convert a value of unknown FHIR type (a FHIRPath result) by its JSON shape."""
    if type(value) is dict:
        convert = converter(param_type, _shape(param_type, value), None)
        return convert(value) if convert else _NONE
    if param_type == "number":
        return _number(value)
    if param_type == "reference":
        return reference_from_canonical(value)
    if not isinstance(value, str | bool):
        value = str(value)  # a FHIRPath engine's own types (dates, quantities) print as FHIR
    simple = {"token": _token_primitive, "string": _string, "date": _date, "uri": _uri}
    convert = simple.get(param_type)
    return convert(value) if convert else _NONE


def _shape(param_type: str, value: dict[str, Any]) -> str:
    if "resourceType" in value:
        return "Resource"
    if param_type == "token":
        if "coding" in value or ("text" in value and "value" not in value):
            return "CodeableConcept"
        if "code" in value or "display" in value:
            return "Coding"
        if "use" in value or value.get("system") in {"phone", "fax", "email", "pager", "url"}:
            return "ContactPoint"
        return "Identifier"
    if param_type == "string":
        return "HumanName" if "family" in value or "given" in value else "Address"
    if param_type == "date":
        return "Timing" if "event" in value or "repeat" in value else "Period"
    if param_type == "quantity":
        return "Range" if "low" in value or "high" in value else "Quantity"
    return "Reference"
