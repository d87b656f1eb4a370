"""Index rows (search.index) that are left out because they can never change an answer."""

from __future__ import annotations

from typing import Any

from carebridge.search.index import index_rows
from carebridge.search.params import pid

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def _height(code: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": "h1", "status": "final", "code": code,
            "valueQuantity": {"value": 176.4, "unit": "cm", "system": UCUM, "code": "cm"}}


def _composites(resource: dict[str, Any], param: str) -> list[tuple[Any, ...]]:
    number = pid(resource["resourceType"], param)
    return [row[1:] for row in index_rows(resource).get("idx_composite", []) if row[0] == number]


def test_a_coded_concept_gives_no_composite_rows_for_its_text() -> None:
    rows = _composites(_height({"coding": [{"system": LOINC, "code": "8302-2"}],
                                "text": "Body Height"}), "code-value-quantity")
    assert [(r[0], r[1]) for r in rows] == [(LOINC, "8302-2")]
    assert rows[0][2:4] == (UCUM, "cm")


def test_a_text_only_concept_keeps_its_composite_rows() -> None:
    rows = _composites(_height({"text": "Body Height"}), "code-value-quantity")
    assert [(r[0], r[1]) for r in rows] == [(None, None)]  # searched by value alone
    assert rows[0][2:4] == (UCUM, "cm")


def test_the_text_still_has_its_token_row_for_the_text_modifier() -> None:
    tokens = [row for row in index_rows(_height({"coding": [{"system": LOINC,
                                                            "code": "8302-2"}],
                                                 "text": "Body Height"}))["idx_token"]
              if row[0] == pid("Observation", "code")]
    assert any(row[3] == "body height" for row in tokens)
