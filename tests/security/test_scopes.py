"""SMART scope parsing, v1 and v2 (SMART App Launch 2.0, scopes-and-launch-context)."""

from __future__ import annotations

from carebridge.security.scopes import ScopeGrant, parse_scope, split_scope, within


def test_v2_scopes() -> None:
    assert parse_scope("patient/Observation.rs") == ScopeGrant(
        "patient", "Observation", frozenset("rs"))
    assert parse_scope("user/*.cruds") == ScopeGrant("user", "*", frozenset("cruds"))
    assert parse_scope("system/*.rs") == ScopeGrant("system", "*", frozenset("rs"))


def test_granular_scope_keeps_its_query() -> None:
    grant = parse_scope("patient/Observation.rs?category=http://terminology.hl7.org/"
                        "CodeSystem/observation-category|laboratory")
    assert grant is not None
    assert grant.criteria == (("category", "http://terminology.hl7.org/CodeSystem/"
                                           "observation-category|laboratory"),)


def test_v1_scopes_map_to_v2_letters() -> None:
    # The spec's table: read = rs, write = cud, * = cruds.
    assert parse_scope("patient/Observation.read") == ScopeGrant(
        "patient", "Observation", frozenset("rs"))
    assert parse_scope("user/Patient.write") == ScopeGrant("user", "Patient", frozenset("cud"))
    assert parse_scope("user/*.*") == ScopeGrant("user", "*", frozenset("cruds"))


def test_letters_out_of_order_or_unknown_are_not_scopes() -> None:
    for text in ["patient/Observation.sr", "patient/Observation.x", "patient/Observation.",
                 "clinician/Observation.rs", "patient/observation.rs", "openid", "launch"]:
        assert parse_scope(text) is None, text


def test_split_and_within() -> None:
    requested = split_scope("openid patient/Observation.rs patient/*.cruds  user/*.rs")
    allowed = frozenset({"openid", "patient/*.rs"})
    assert within(requested, allowed) == {"openid", "patient/Observation.rs"}
