"""SearchService.ids_by_token: many business identifiers looked up in one query, with the
same answer conditional interactions get from ``match_ids`` for each (both backends)."""

from __future__ import annotations

import pytest

from carebridge.security.policy import SYSTEM
from carebridge.services import ResourceService
from carebridge.services.search import SearchService

SYSTEM_A = "urn:example:a"


def observation(rid: str, *identifiers: tuple[str, str]) -> dict[str, object]:
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"text": "x"},
            "identifier": [{"system": s, "value": v} for s, v in identifiers]}


def test_ids_by_token_agrees_with_match_ids(service: ResourceService) -> None:
    for resource in (
        observation("o1", (SYSTEM_A, "1"), (SYSTEM_A, "1b")),
        observation("o2", (SYSTEM_A, "2")),
        observation("o3", ("urn:example:other", "3")),  # another system
        observation("o4", (SYSTEM_A, "4")),
        observation("o5", (SYSTEM_A, "4")),  # the same identifier twice
        observation("o6", (SYSTEM_A, "6")),
        observation("o7", (SYSTEM_A, "A7")),
    ):
        service.update(SYSTEM, "Observation", str(resource["id"]), resource)
    service.create(SYSTEM, "Patient", {"resourceType": "Patient",
                                       "identifier": [{"system": SYSTEM_A, "value": "2"}]})
    service.delete(SYSTEM, "Observation", "o6")
    search = SearchService(service)
    codes = ["1", "1b", "2", "3", "4", "6", "a7", "A7", "missing", "2"]
    with service.repository.session() as session:
        found = search.ids_by_token(session, "Observation", "identifier", SYSTEM_A, codes)
        expected = {}
        for code in dict.fromkeys(codes):
            ids = search.match_ids(session, "Observation", f"identifier={SYSTEM_A}|{code}",
                                   limit=10)
            if ids:
                expected[code] = sorted(ids)
    assert found == expected
    assert found == {"1": ["o1"], "1b": ["o1"], "2": ["o2"], "4": ["o4", "o5"], "A7": ["o7"]}


def test_ids_by_token_refuses_a_parameter_without_rows_of_its_own(
        service: ResourceService) -> None:
    search = SearchService(service)
    with service.repository.session() as session, pytest.raises(ValueError):
        search.ids_by_token(session, "Observation", "patient", SYSTEM_A, ["1"])
