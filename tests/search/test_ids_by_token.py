"""SearchService.ids_by_token: many business identifiers looked up in one query, with the
answer a planned search gives for each; ``match_ids`` (conditional interactions) takes that
look-up for ``identifier=system|value`` and falls back to planning for anything else (both
backends)."""

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
    planned = {}  # what a search (parsed and planned) finds for each code
    for code in dict.fromkeys(codes):
        result = search.search(SYSTEM, "Observation", [("identifier", f"{SYSTEM_A}|{code}")])
        ids = sorted(m.id for m in result.matches)
        if ids:
            planned[code] = ids
    with service.repository.session() as session:
        found = search.ids_by_token(session, "Observation", "identifier", SYSTEM_A, codes)
        # match_ids takes this look-up for such criteria; limit as conditional writes use it
        matched = {code: search.match_ids(session, "Observation",
                                          f"identifier={SYSTEM_A}|{code}", limit=10)
                   for code in dict.fromkeys(codes)}
    assert found == planned
    assert {code: ids for code, ids in matched.items() if ids} == planned
    assert found == {"1": ["o1"], "1b": ["o1"], "2": ["o2"], "4": ["o4", "o5"], "A7": ["o7"]}


def test_ids_by_token_refuses_a_parameter_without_rows_of_its_own(
        service: ResourceService) -> None:
    search = SearchService(service)
    with service.repository.session() as session, pytest.raises(ValueError):
        search.ids_by_token(session, "Observation", "patient", SYSTEM_A, ["1"])


def test_match_ids_plans_criteria_the_look_up_does_not_cover(service: ResourceService) -> None:
    for rid, value in (("o1", "x"), ("o2", "y"), ("o3", "x,y")):
        service.update(SYSTEM, "Observation", rid, observation(rid, (SYSTEM_A, value)))
    no_system = observation("o4")
    no_system["identifier"] = [{"value": "x"}]
    service.update(SYSTEM, "Observation", "o4", no_system)
    search = SearchService(service)
    with service.repository.session() as session:
        def ids(criteria: str) -> list[str]:
            return sorted(search.match_ids(session, "Observation", criteria, limit=10))

        assert ids(f"identifier={SYSTEM_A}|x,{SYSTEM_A}|y") == ["o1", "o2"]  # OR
        assert ids(f"identifier={SYSTEM_A}|x\\,y") == ["o3"]  # an escaped comma
        assert ids("identifier=x") == ["o1", "o4"]  # any system
        assert ids(f"identifier={SYSTEM_A}|x&status=final") == ["o1"]  # two parameters
        assert ids(f"identifier:not={SYSTEM_A}|x") == ["o2", "o3", "o4"]  # a modifier


def test_the_look_up_is_taken_only_for_stored_token_parameters() -> None:
    from carebridge.services.search import _stored_token

    assert _stored_token("Observation", "identifier")
    assert _stored_token("Patient", "_tag")
    assert not _stored_token("Observation", "_id")  # the resource key: no index rows
    assert not _stored_token("Observation", "patient")  # read from subject's rows
    assert not _stored_token("Observation", "combo-code")  # code + component-code rows
    assert not _stored_token("Observation", "date")  # not a token
    assert not _stored_token("Observation", "identifier:of-type")
    assert not _stored_token("NoSuchType", "identifier")
