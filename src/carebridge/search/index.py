"""Index rows: the extracted values of a resource laid out for the per-type index tables.

The layout (migration ``0002_search_index``) follows STYLE.md point 4: one narrow table per
search-parameter type, so a token search is one indexed equality and a date search one range
scan. Values come from :func:`carebridge.search.extract` (the same values in-memory matching
uses). Dates are stored as microseconds since the epoch (UTC) and numbers as floats with their
implicit precision range; quantities also carry a canonical UCUM form (``canon_*``) so that
5.4 mg and 0.0054 g meet.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from carebridge.fhir import registry
from carebridge.search.extract import compile_all, extract_stored
from carebridge.search.params import pids_of
from carebridge.search.values import (
    CompositeValue,
    DateValue,
    IndexValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    normalize_string,
)
from carebridge.storage.sql import Rows

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UCUM = "http://unitsofmeasure.org"
_MICRO = timedelta(microseconds=1)


def _prepare() -> None:
    compile_all()
    for resource_type in registry.resource_types():
        pids_of(resource_type)


def warm_up() -> threading.Thread:
    """Compile the extractors and parameter numbers of every resource type in a background
    thread, so a new server's first writes do not pay for it (the validator warms up the
    same way: :meth:`carebridge.services.validation.WriteValidation.warm_up`)."""
    thread = threading.Thread(target=_prepare, name="search-warm-up", daemon=True)
    thread.start()
    return thread


def micros(moment: datetime) -> int:
    """Microseconds since 1970-01-01T00:00:00Z (negative before)."""
    return (moment - EPOCH) // _MICRO


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def canonical(value: Decimal | float | None, code: str | None) -> tuple[str | None, float | None]:
    """The canonical UCUM unit and the value in it; (None, None) if not convertible."""
    if value is None or code is None:
        return None, None
    from carebridge.search.ucum import canonical_float

    converted = canonical_float(float(value), code)
    if converted is None:
        return None, None
    return converted[1], converted[0]


def _ucum(value: QuantityValue) -> tuple[str | None, float | None]:
    """Canonical form for UCUM quantities (or ones without a system); others have none."""
    if value.system not in (None, UCUM):
        return None, None
    return canonical(value.value, value.code)


def _component_parts(value: IndexValue) -> tuple[Any, ...]:
    """(system, code, low, high, canonical unit, canonical value) of a composite's second
    component; the canonical pair only for a UCUM quantity (as in idx_quantity)."""
    if isinstance(value, TokenValue):
        return value.system, value.code, None, None, None, None
    if isinstance(value, QuantityValue):
        number = _float(value.value)
        return (value.system, value.code, number, number, *_ucum(value))
    if isinstance(value, DateValue):
        return None, None, float(micros(value.start)), float(micros(value.end)), None, None
    if isinstance(value, StringValue):
        return None, value.normalized, None, None, None, None
    if isinstance(value, NumberValue):
        return None, None, float(value.low), float(value.high), None, None
    if isinstance(value, ReferenceValue):
        return value.target_type, value.target_id or value.url, None, None, None, None
    if isinstance(value, UriValue):
        return None, value.value, None, None, None, None
    return None, None, None, None, None, None


def _composite_rows(value: CompositeValue) -> Iterable[tuple[Any, ...]]:
    if len(value.components) < 2:
        return
    firsts = [v for v in value.components[0][1] if isinstance(v, TokenValue)]
    coded = [v for v in firsts if v.code is not None or v.system is not None]
    if coded:
        # A text-only first component (CodeableConcept.text) gives rows with no code and no
        # system: a search constraining the code or system cannot match them, and one that
        # does not matches the coded rows beside them, which carry the same second parts.
        # (About a third of Observation composite rows in Synthea data.)
        firsts = coded
    for first in firsts:
        for second in value.components[1][1]:
            yield (first.system, first.code, *_component_parts(second))


def index_rows(resource: dict[str, Any]) -> Rows:
    """Every index row of ``resource`` by table; rows start with the parameter's number
    (carebridge.search.params); the session writing them puts the resource's in front."""
    pids = pids_of(resource["resourceType"])
    tokens: list[tuple[Any, ...]] = []
    references: list[tuple[Any, ...]] = []
    dates: list[tuple[Any, ...]] = []
    others: Rows = {}
    # The commonest kinds of value first, tested by exact type (the value classes have no
    # subclasses): this loop runs for every index row of every write.
    for code, values in extract_stored(resource).items():
        pid = pids[code]
        texts: set[str] | None = None
        for value in values:  # extract_stored has removed duplicates
            if type(value) is TokenValue:
                text = value.text
                if text:
                    if value.code is None and value.system is None:
                        # A CodeableConcept.text equal to one of its codings' display adds
                        # nothing: :text finds it in the coding's row.
                        if texts is None:
                            texts = {normalize_string(v.text) for v in values
                                     if type(v) is TokenValue and v.code is not None
                                     and v.text}
                        norm = normalize_string(text)
                        if norm in texts:
                            continue
                    else:
                        norm = normalize_string(text)
                    tokens.append((pid, value.system, value.code, norm,
                                   value.type_system, value.type_code))
                else:
                    tokens.append((pid, value.system, value.code, None,
                                   value.type_system, value.type_code))
            elif type(value) is ReferenceValue:
                ident = value.identifier
                if ident is None:
                    references.append((pid, value.target_type, value.target_id,
                                       value.version, value.url, None, None))
                else:
                    references.append((pid, value.target_type, value.target_id,
                                       value.version, value.url, ident.system, ident.code))
            elif type(value) is DateValue:
                dates.append((pid, micros(value.start), micros(value.end)))
            else:
                _other(others, pid, value)
    if tokens:
        others["idx_token"] = tokens
    if references:
        others["idx_reference"] = references
    if dates:
        others["idx_date"] = dates
    return others


def _other(rows: Rows, pid: int, value: IndexValue) -> None:
    """The row of a value of the rarer kinds, added to ``rows``."""
    if isinstance(value, StringValue):
        rows.setdefault("idx_string", []).append((pid, value.normalized, value.value))
    elif isinstance(value, CompositeValue):
        found = [(pid, *row) for row in _composite_rows(value)]
        if found:
            rows.setdefault("idx_composite", []).extend(found)
    elif isinstance(value, QuantityValue):
        rows.setdefault("idx_quantity", []).append((
            pid, value.system, value.code, _float(value.value),
            _float(value.low), _float(value.high), *_ucum(value),
        ))
    elif isinstance(value, NumberValue):
        rows.setdefault("idx_number", []).append(
            (pid, float(value.low), float(value.high), float(value.value)))
    elif isinstance(value, UriValue):
        rows.setdefault("idx_uri", []).append((pid, value.value))
