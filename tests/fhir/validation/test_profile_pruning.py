"""A profile walk skips what the profile leaves as the core definition has it
(model.prune_profile): the issues must be exactly those of a walk that skips nothing.

The reference walk uses freshly compiled, unpruned copies of the same profiles. Both
validators see the catalogue's resources and, for each profiled resource, every variant made
by deleting one element or giving it a value of the wrong shape, anywhere in the tree.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from tests.fhir.validation.catalogue import BLOOD_PRESSURE, CASES, HEART_RATE, SD, VALID

from carebridge.fhir import registry
from carebridge.fhir.errors import Issue
from carebridge.fhir.validation import Validator
from carebridge.fhir.validation.model import CompiledDefinition, compile_snapshot

PRUNED = Validator()


class Unpruned(Validator):
    """Profiles compiled afresh and walked in full (marked as compared, nothing skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self._fresh: dict[str, CompiledDefinition] = {}

    def profile(self, url: str) -> CompiledDefinition | None:
        url = url.split("|", 1)[0]
        if url not in self._fresh:
            try:
                definition = compile_snapshot(registry.structure_definition(url))
            except KeyError:
                return None
            definition.pruned = True  # never pruned: every element is walked again
            self._fresh[url] = definition
        return self._fresh[url]


FULL = Unpruned()


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key)
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*path, index)
            yield from _paths(item, (*path, index))


def _variants(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for path in _paths(resource):
        if path in (("resourceType",), ("meta",), ("meta", "profile"), ("meta", "profile", 0)):
            continue
        for replacement in (None, 42, "x", {}, [{"bogus": True}]):
            variant = copy.deepcopy(resource)
            parent = variant
            for step in path[:-1]:
                parent = parent[step]
            if replacement is None:
                del parent[path[-1]]
            else:
                parent[path[-1]] = replacement
            yield variant


def _profiled() -> list[dict[str, Any]]:
    heart = {**HEART_RATE, "meta": {"profile": [SD + "heartrate"]}}
    pressure = {**BLOOD_PRESSURE, "meta": {"profile": [SD + "bp", SD + "vitalsigns"]}}
    return [heart, pressure]


def _shown(issues: list[Issue]) -> list[tuple[str, str, tuple[str, ...], str]]:
    return sorted((i.severity, i.code, i.expression, i.diagnostics) for i in issues)


def test_a_derived_profile_skips_what_it_leaves_alone() -> None:
    PRUNED.validate(_profiled()[0])
    heartrate = PRUNED.profile(SD + "heartrate")
    assert heartrate is not None and heartrate.pruned
    assert {"issued", "device", "note", "status"} <= heartrate.tree.redundant
    # constrained by vitalsigns/heartrate: cardinality, slices, types, patterns
    assert not {"subject", "category", "code", "valueQuantity"} & heartrate.tree.redundant
    subject, _ = heartrate.tree.keys["subject"]
    assert subject.shallow  # 1..1 and Patient only, but a Reference like any other inside


@pytest.mark.parametrize("resource", _profiled(), ids=lambda r: str(r["meta"]["profile"][0]))
def test_every_variant_gets_the_issues_of_a_full_walk(resource: dict[str, Any]) -> None:
    checked = 0
    for variant in _variants(resource):
        assert _shown(PRUNED.validate(variant)) == _shown(FULL.validate(variant)), variant
        checked += 1
    assert checked > 100


def test_the_catalogue_gets_the_issues_of_a_full_walk() -> None:
    resources = VALID + [case.resource for case in CASES]
    assert any("meta" in r for r in resources)
    for resource in resources:
        assert _shown(PRUNED.validate(resource)) == _shown(FULL.validate(resource)), resource
