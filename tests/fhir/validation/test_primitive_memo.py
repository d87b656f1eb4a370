"""Primitive checks remember short valid values (primitives.checker): the memory must never
change an answer, across types, after an invalid value, or once it is full."""

from __future__ import annotations

import pytest

from carebridge.fhir.validation import primitives
from carebridge.fhir.validation.primitives import checker


def test_a_value_valid_for_one_type_is_still_checked_for_another() -> None:
    assert checker("code")("in progress") is None
    assert checker("id")("in progress") is not None  # a space is not allowed in an id
    assert checker("string")("2023-02-30") is None
    reason = checker("date")("2023-02-30")
    assert reason is not None and "no such calendar date" in reason


def test_invalid_values_are_never_remembered() -> None:
    check = checker("code")
    first = check(" leading")
    assert first is not None
    assert check(" leading") == first
    assert check("fine") is None
    assert check("fine") is None


def _memory(check: primitives.PrimitiveCheck) -> set[str]:
    cells = [c.cell_contents for c in getattr(check, "__closure__", None) or ()
             if isinstance(c.cell_contents, set)]
    assert len(cells) == 1
    found: set[str] = cells[0]
    return found


def test_long_values_are_not_remembered_and_a_full_memory_starts_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    check = checker("uri")
    long_value = "http://example.org/" + "a" * 400
    assert check(long_value) is None
    assert long_value not in _memory(check)
    assert check(long_value + " x") is not None  # whitespace
    monkeypatch.setattr(primitives, "_REMEMBERED_VALUES", 3)
    for n in range(10):
        assert check(f"urn:x:{n}") is None
        assert len(_memory(check)) <= 3
    assert "urn:x:9" in _memory(check)
    assert check("urn:x:3 bad") is not None
