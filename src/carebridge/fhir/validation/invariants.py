"""Invariants: the ``constraint`` FHIRPath expressions of ElementDefinitions.

Each constraint is compiled once. A few that every resource carries are checked natively by
the walker, because a generic evaluation would cost more than everything else:
``ele-1`` (no empty elements), ``ext-1`` (an extension has a value or extensions, not both),
``dom-2``..``dom-5`` (contained resources), ``ref-1`` (a local reference resolves),
``txt-1``/``txt-2`` (narrative). The rest run on the fast FHIRPath subset of
:mod:`.fhirpath`, or on fhirpathpy (with the R4 model, for choice types and ``ofType``) when
the subset does not cover them. An invariant is evaluated only on elements that are present
(its context), as FHIRPath constraints are defined on their element.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from carebridge.fhir.validation.fhirpath import Env, Unsupported, compile_fast, evaluate_fast

log = logging.getLogger(__name__)

# Checked structurally by the walker (see module docstring).
NATIVE = frozenset({"ele-1", "ext-1", "dom-2", "dom-3", "dom-4", "dom-5", "ref-1", "txt-1",
                    "txt-2"})

Check = Callable[[Any, Env], bool | None]


@dataclass(frozen=True, slots=True)
class Invariant:
    key: str
    severity: str  # error | warning
    human: str
    expression: str
    check: Check


def _has_value(inputs: list[Any]) -> list[bool]:
    return [len(inputs) == 1 and not isinstance(inputs[0], dict | list)]


def _html_checks(inputs: list[Any]) -> list[bool]:
    return [True]  # the walker checks narrative natively (txt-1, txt-2)


_OPTIONS = {"userInvocationTable": {
    "hasValue": {"fn": _has_value, "arity": {0: []}},
    "htmlChecks": {"fn": _html_checks, "arity": {0: []}},
}}


@cache
def _slow(expression: str, type_path: str) -> Check | None:
    try:
        compiled = fhirpathpy.compile(expression, models["r4"], _OPTIONS)
    except Exception:
        log.warning("FHIRPath expression not supported, invariant skipped: %s", expression)
        return None

    def check(focus: Any, env: Env) -> bool | None:
        node = focus
        if type_path:
            node = ResourceNode.create_node(focus, type_path)  # type: ignore[no-untyped-call]
        try:
            result = compiled(node, {"resource": env.resource, "rootResource": env.root})
        except Exception:
            return None
        if not result:
            return None
        if len(result) == 1 and isinstance(result[0], bool):
            return result[0]
        return True
    return check


def compile_invariant(constraint: dict[str, Any], type_path: str) -> Invariant | None:
    """Compile one ElementDefinition.constraint; None for the natively checked ones."""
    key = str(constraint.get("key", ""))
    if key in NATIVE:
        return None
    return _compile(key, str(constraint["expression"]), str(constraint.get("severity", "error")),
                    str(constraint.get("human", "")), type_path)


@cache
def _compile(key: str, expression: str, severity: str, human: str,
             type_path: str) -> Invariant | None:
    context = _type_context(type_path)
    check: Check | None
    try:
        fast = compile_fast(expression)

        def check(focus: Any, env: Env) -> bool | None:
            try:
                return evaluate_fast(fast, focus, env)
            except Unsupported:
                slow = _slow(expression, context)  # compiled on first need, then cached
                return slow(focus, env) if slow is not None else None
    except Unsupported:
        check = _slow(expression, context)
    except Exception:
        check = None
    if check is None:
        return None
    return Invariant(key, severity, human, expression, check)


def _type_context(type_path: str) -> str:
    """fhirpathpy's R4 model knows paths without ``[x]``."""
    return type_path.replace("[x]", "")
