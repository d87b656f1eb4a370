"""Search parameters whose values are exactly the union of other parameters' values.

R4 defines Observation's ``combo-*`` parameters as the union of a parameter on the Observation
and the same on its components (``combo-code`` is ``Observation.code | Observation.component
.code``, the expressions of ``code`` and ``component-code``). Storing their index rows would
repeat rows already stored (about a sixth of all index rows of typical data), so they are not
stored, and a search on one reads the rows of the parameters it unites. The table is checked
against the official expressions by ``tests/search/test_aliases.py``.
"""

from __future__ import annotations

from collections.abc import Iterable

# resource type -> parameter -> the parameters whose rows answer it
ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "Observation": {
        "combo-code": ("code", "component-code"),
        "combo-code-value-concept": ("code-value-concept", "component-code-value-concept"),
        "combo-code-value-quantity": ("code-value-quantity", "component-code-value-quantity"),
        "combo-data-absent-reason": ("data-absent-reason", "component-data-absent-reason"),
        "combo-value-concept": ("value-concept", "component-value-concept"),
        "combo-value-quantity": ("value-quantity", "component-value-quantity"),
    },
}


def is_alias(resource_type: str, code: str) -> bool:
    """True when ``code``'s rows are not stored for ``resource_type``."""
    return code in ALIASES.get(resource_type, {})


def stored_as(code: str, resource_types: Iterable[str]) -> tuple[str, ...]:
    """The parameter codes whose index rows answer ``code`` for these types."""
    found: dict[str, None] = {}
    for rtype in resource_types:
        for name in ALIASES.get(rtype, {}).get(code, (code,)):
            found[name] = None
    return tuple(found) or (code,)
