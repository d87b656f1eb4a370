"""Parse a FHIR search query string into criteria (http://hl7.org/fhir/R4/search.html).

The result is a small expression tree: a :class:`SearchQuery` holds AND-ed :class:`Criterion`
objects; each criterion names a parameter (with its definition), a modifier, an optional chain
(another criterion on the referenced type) or reverse chain (``_has``), and OR-ed values, each
parsed for the parameter's type. The SQL generator (``carebridge.search.compiler``) compiles it.

Unknown or unsupported parameters are collected in ``ignored`` (reported back to the client)
unless the caller asked for strict handling; malformed values always raise a 400 naming the
parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import TYPE_CHECKING, Any

from carebridge.fhir import registry
from carebridge.fhir.errors import BadRequest, FhirError, NotImplementedYet
from carebridge.search import terminology
from carebridge.search.values import date_range, implicit_range

if TYPE_CHECKING:
    from carebridge.search.planner import Lead

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
CONTROL = {
    "_count", "_sort", "_include", "_revinclude", "_total", "_summary", "_elements",
    "_format", "_pretty", "_cursor", "_type", "_contained", "_containedType",
}
MODIFIERS = {
    "missing", "exact", "contains", "text", "not", "above", "below", "in", "not-in",
    "of-type", "identifier", "iterate",
}
_ORDERED_TYPES = ("number", "date", "quantity")
_SORTABLE = ("string", "token", "date", "number", "quantity", "reference", "uri")


@dataclass(frozen=True, slots=True)
class Value:
    """One OR-ed value, parsed for its parameter type."""

    raw: str
    prefix: str = "eq"
    # token: system (None: any; "": no system), code; :of-type adds type_system/type_code
    system: str | None = None
    code: str | None = None
    type_system: str | None = None
    type_code: str | None = None
    # number/quantity: the number and its implicit range
    number: float | None = None
    low: float | None = None
    high: float | None = None
    # date: the range at its precision, microseconds since the epoch
    start: datetime | None = None
    end: datetime | None = None
    # composite: the parsed component values
    parts: tuple[Value, ...] = ()


@dataclass
class Criterion:
    """``name[:modifier]=v1,v2`` or a chain ``ref[:Type].name=...`` or ``_has:...``."""

    code: str
    definition: dict[str, Any]
    modifier: str | None = None
    values: list[Value] = field(default_factory=list)
    chain: Criterion | None = None  # the criterion on the referenced resource
    chain_types: tuple[str, ...] = ()  # the types the chain may reach
    has: tuple[str, str, Criterion] | None = None  # (source type, reference param, criterion)

    @property
    def type(self) -> str:
        return str(self.definition.get("type", "special"))


@dataclass
class SearchQuery:
    resource_types: tuple[str, ...]  # empty: every type (system search without _type)
    criteria: list[Criterion] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    count: int = 20
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (param code, descending)
    include: list[tuple[str, str, str | None, bool]] = field(default_factory=list)
    revinclude: list[tuple[str, str, str | None, bool]] = field(default_factory=list)
    total: str | None = None
    summary: str | None = None
    elements: list[str] = field(default_factory=list)
    cursor: str | None = None
    used: list[tuple[str, str]] = field(default_factory=list)  # the parameters applied
    probed: Lead | None = None  # the planner's choice, once probed


def parse_query(
    resource_type: str | None,
    params: list[tuple[str, str]],
    *,
    strict: bool = False,
    default_count: int = 20,
    max_count: int = 1000,
) -> SearchQuery:
    for name, raw in params:
        if "\x00" in raw or "\x00" in name:
            # No FHIR value holds a NUL, and PostgreSQL refuses one in text (it would be a
            # 500 there and merely match nothing on SQLite): a 400 on every backend.
            raise BadRequest(f"Search parameter {name!r} contains a NUL character", (name,))
    types = _types(resource_type, params)
    query = SearchQuery(types, count=default_count)
    for name, raw in params:
        base = name.split(":", 1)[0].split(".", 1)[0]
        if base in CONTROL:
            _control(query, name, raw, max_count)
            query.used.append((name, raw))
            continue
        try:
            criterion = parse_criterion(types, name, raw)
        except _Unknown as exc:
            if strict:
                raise BadRequest(str(exc), (name,)) from None
            query.ignored.append(f"{name}: {exc}")
            continue
        query.criteria.append(criterion)
        query.used.append((name, raw))
    return query


class _Unknown(Exception):
    """A parameter this server does not know or support (ignored unless strict)."""


def _types(resource_type: str | None, params: list[tuple[str, str]]) -> tuple[str, ...]:
    if resource_type is not None:
        return (resource_type,)
    types: list[str] = []
    for name, raw in params:
        if name == "_type":
            for t in raw.split(","):
                if not registry.is_resource_type(t.strip()):
                    raise BadRequest(f"_type names an unknown resource type {t!r}", ("_type",))
                types.append(t.strip())
    return tuple(dict.fromkeys(types))


def _definition(types: tuple[str, ...], code: str) -> dict[str, Any]:
    """The parameter's definition, common to every type searched (system search: Resource)."""
    found: dict[str, Any] | None = None
    for rtype in types or ("Resource",):
        params = registry.search_parameters_for(rtype) if rtype != "Resource" else {
            k: v for k, v in registry.search_parameters_for("Patient").items()
            if k.startswith("_")}
        sp = params.get(code)
        if sp is None:
            raise _Unknown(f"unknown search parameter {code!r} for {rtype}")
        if found is not None and sp.get("type") != found.get("type"):
            raise _Unknown(f"{code!r} has different types across {', '.join(types)}")
        found = found or sp
    assert found is not None
    if found.get("code") == "near":
        raise NotImplementedYet("Search parameter 'near' (distance search) is not supported",
                                (code,))
    if not found.get("expression") or found.get("type") == "special":
        raise _Unknown(f"search parameter {code!r} is not supported")
    return found


def parse_criterion(types: tuple[str, ...], name: str, raw: str) -> Criterion:
    if name.startswith("_has:"):
        return _parse_has(types, name, raw)
    if name == "_list":
        return Criterion("_list", {"code": "_list", "type": "special"},
                         values=[Value(v) for v in _split_or(raw)])
    head, dot, rest = name.partition(".")
    code, _, modifier = head.partition(":")
    definition = _definition(types, code)
    criterion = Criterion(code, definition, modifier or None)
    if dot:
        if definition.get("type") != "reference":
            raise BadRequest(f"Chained parameter {name!r}: {code!r} is not a reference",
                             (name,))
        targets = tuple(definition.get("target") or ())
        if modifier:
            if modifier not in targets:
                raise BadRequest(f"Chained parameter {name!r}: {code!r} cannot refer to "
                                 f"{modifier}", (name,))
            targets = (modifier,)
            criterion.modifier = None
        reachable = tuple(t for t in targets if _has_param(t, rest.split(".", 1)[0]))
        if not reachable:
            raise BadRequest(f"Chained parameter {name!r}: no target of {code!r} has a "
                             f"parameter {rest.split('.', 1)[0].split(':', 1)[0]!r}", (name,))
        criterion.chain_types = reachable
        criterion.chain = parse_criterion(reachable, rest, raw)
        return criterion
    _check_modifier(criterion, name)
    criterion.values = [_parse_value(criterion, v, name) for v in _split_or(raw)]
    if not criterion.values:
        raise BadRequest(f"Search parameter {name!r} has no value", (name,))
    return criterion


def _has_param(rtype: str, code: str) -> bool:
    return code.split(":", 1)[0] in registry.search_parameters_for(rtype)


def _parse_has(types: tuple[str, ...], name: str, raw: str) -> Criterion:
    # _has:Observation:patient:code=1234 ; the last part may itself be _has:...
    parts = name.split(":", 3)
    if len(parts) < 4 or not registry.is_resource_type(parts[1]):
        raise BadRequest(f"Malformed _has parameter {name!r}; use _has:Type:reference:param",
                         (name,))
    source, ref_code, inner = parts[1], parts[2], parts[3]
    ref = registry.search_parameters_for(source).get(ref_code)
    if ref is None or ref.get("type") != "reference":
        raise BadRequest(f"_has: {ref_code!r} is not a reference parameter of {source}",
                         (name,))
    targets = set(ref.get("target") or ())
    if types and not targets.intersection(types):
        raise BadRequest(f"_has: {source}.{ref_code} cannot refer to {', '.join(types)}",
                         (name,))
    inner_criterion = parse_criterion((source,), inner, raw)
    return Criterion("_has", {"code": "_has", "type": "special"},
                     has=(source, ref_code, inner_criterion))


def _check_modifier(criterion: Criterion, name: str) -> None:
    modifier = criterion.modifier
    if modifier is None:
        return
    kind = criterion.type
    allowed = {
        "string": {"missing", "exact", "contains"},
        "token": {"missing", "text", "not", "above", "below", "in", "not-in", "of-type"},
        "reference": {"missing", "identifier", "above", "below"},
        "uri": {"missing", "above", "below"},
        "date": {"missing"}, "number": {"missing"}, "quantity": {"missing"},
        "composite": {"missing"}, "special": {"missing"},
    }.get(kind, {"missing"})
    if kind == "reference" and registry.is_resource_type(modifier):
        if modifier not in (criterion.definition.get("target") or ()):
            raise BadRequest(f"{criterion.code!r} cannot refer to a {modifier}", (name,))
        return
    if modifier not in allowed:
        raise BadRequest(f"Modifier :{modifier} is not valid on {kind} parameter "
                         f"{criterion.code!r}", (name,))
    if kind == "reference" and modifier in ("above", "below"):
        # Hierarchies of references (e.g. Location.partOf) would need recursive queries.
        raise NotImplementedYet(f"Modifier :{modifier} on reference parameters is not "
                                "supported", (name,))


def _split_or(raw: str) -> list[str]:
    """Split on commas that are not escaped with a backslash (search.html#escaping)."""
    parts = re.split(r"(?<!\\),", raw)
    return [p for p in parts if p != ""]


def _unescape(text: str) -> str:
    return re.sub(r"\\([,$|\\])", r"\1", text)


def escape_value(text: str) -> str:
    """A value as one search token, the inverse of the unescaping above (search.html#escaping:
    backslash, comma, pipe, dollar)."""
    return re.sub(r"([,$|\\])", r"\\\1", text)


def _split_pipe(text: str) -> list[str]:
    return [_unescape(p) for p in re.split(r"(?<!\\)\|", text)]


def _parse_value(criterion: Criterion, raw: str, name: str) -> Value:
    kind = criterion.type
    if criterion.modifier == "missing":
        if raw not in ("true", "false"):
            raise BadRequest(f"{name} takes true or false, not {raw!r}", (name,))
        return Value(raw)
    if kind in _ORDERED_TYPES:
        prefix, text = _prefix(raw)
        if kind == "date":
            return _date_value(prefix, text, name)
        if kind == "number":
            return _number_value(prefix, text, name)
        return _quantity_value(prefix, text, name)
    if kind == "token":
        return _token_value(criterion, raw, name)
    if kind == "composite":
        return _composite_value(criterion, raw, name)
    return Value(_unescape(raw))


def _prefix(raw: str) -> tuple[str, str]:
    if len(raw) > 2 and raw[:2] in PREFIXES and not raw[:2].isdigit():
        return raw[:2], raw[2:]
    return "eq", raw


def _date_value(prefix: str, text: str, name: str) -> Value:
    found = date_range(text)
    if found is None:
        raise BadRequest(f"{name}: {text!r} is not a valid date (prefix + YYYY[-MM[-DD[Thh:mm"
                         f"[:ss[.sss]][Z|+hh:mm]]]])", (name,))
    return Value(text, prefix, start=found[0], end=found[1])


def _decimal(text: str, name: str) -> Decimal:
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise BadRequest(f"{name}: {text!r} is not a number", (name,)) from None
    if not number.is_finite():
        raise BadRequest(f"{name}: {text!r} is not a number", (name,))
    return number


def _number_value(prefix: str, text: str, name: str) -> Value:
    number = _decimal(text, name)
    low, high = implicit_range(number)
    return Value(text, prefix, number=float(number), low=float(low), high=float(high))


def _quantity_value(prefix: str, text: str, name: str) -> Value:
    parts = _split_pipe(text)
    if len(parts) not in (1, 3):
        raise BadRequest(f"{name}: a quantity is number, number||code or number|system|code",
                         (name,))
    number = _decimal(parts[0], name)
    low, high = implicit_range(number)
    system = parts[1] or None if len(parts) == 3 else None
    code = parts[2] or None if len(parts) == 3 else None
    return Value(text, prefix, system=system, code=code, number=float(number),
                 low=float(low), high=float(high))


def _token_value(criterion: Criterion, raw: str, name: str) -> Value:
    text = raw
    if criterion.modifier == "text":
        return Value(_unescape(text))
    if criterion.modifier in ("in", "not-in"):
        url = _unescape(text)
        try:
            terminology.expand(url)  # cached; fails here so the error names the parameter
        except FhirError as exc:
            raise type(exc)(exc.message, (name,)) from None
        return Value(url)
    if criterion.modifier == "of-type":
        parts = _split_pipe(text)
        if len(parts) != 3 or not all(parts):
            raise BadRequest(f"{name} takes type-system|type-code|value", (name,))
        return Value(raw, type_system=parts[0] or None, type_code=parts[1] or None,
                     code=parts[2] or None)
    parts = _split_pipe(text)
    if len(parts) == 1:
        return Value(raw, system=None, code=parts[0])
    if len(parts) == 2:
        return Value(raw, system=parts[0], code=parts[1] or None)
    raise BadRequest(f"{name}: {raw!r} has more than one '|'", (name,))


def _composite_value(criterion: Criterion, raw: str, name: str) -> Value:
    pieces = re.split(r"(?<!\\)\$", raw)
    components = criterion.definition.get("component") or []
    if len(pieces) != len(components) or len(pieces) < 2:
        raise BadRequest(f"{name} takes {len(components)} values joined by '$'", (name,))
    parts = []
    for piece, component in zip(pieces, components, strict=True):
        sp = _component_definition(component)
        sub = Criterion(sp.get("code", ""), sp)
        parts.append(_parse_value(sub, piece, name))
    return Value(raw, parts=tuple(parts))


@cache
def _parameters_by_url() -> dict[str, dict[str, Any]]:
    return {sp["url"]: sp for sp in registry.search_parameters() if "url" in sp}


def _component_definition(component: dict[str, Any]) -> dict[str, Any]:
    url = component.get("definition", "")
    found = _parameters_by_url().get(url)
    if found is None:
        raise BadRequest(f"Composite component {url!r} is not a known SearchParameter")
    return found


def _control(query: SearchQuery, name: str, raw: str, max_count: int) -> None:
    if name == "_count":
        if not raw.isdigit():
            raise BadRequest(f"_count must be a non-negative integer, not {raw!r}", ("_count",))
        query.count = min(int(raw), max_count)
    elif name == "_sort":
        for key in raw.split(","):
            desc = key.startswith("-")
            code = key.lstrip("-")
            if code != "_id":
                try:
                    sp = _definition(query.resource_types, code)
                except _Unknown as exc:
                    raise BadRequest(f"Cannot sort by {code!r}: {exc}", ("_sort",)) from None
                if sp.get("type") not in _SORTABLE:
                    raise BadRequest(f"Cannot sort by {code!r}", ("_sort",))
            query.sort.append((code, desc))
    elif name.startswith(("_include", "_revinclude")):
        _include(query, name, raw)
    elif name == "_total":
        if raw not in ("none", "estimate", "accurate"):
            raise BadRequest("_total must be none, estimate or accurate", ("_total",))
        query.total = raw
    elif name == "_summary":
        if raw not in ("true", "false", "text", "data", "count"):
            raise BadRequest("_summary must be true, false, text, data or count", ("_summary",))
        query.summary = raw
    elif name == "_elements":
        query.elements = [e.strip() for e in raw.split(",") if e.strip()]
    elif name == "_cursor":
        query.cursor = raw
    elif name in ("_contained", "_containedType"):
        raise NotImplementedYet(f"{name} is not supported", (name,))


def _include(query: SearchQuery, name: str, raw: str) -> None:
    iterate = name.endswith(":iterate") or name.endswith(":recurse")
    reverse = name.startswith("_revinclude")
    target = query.revinclude if reverse else query.include
    if raw == "*":
        target.append(("*", "*", None, iterate))
        return
    parts = raw.split(":")
    if len(parts) not in (2, 3) or not registry.is_resource_type(parts[0]):
        raise BadRequest(f"{name}={raw!r}: use SourceType:param[:TargetType] or *", (name,))
    sp = registry.search_parameters_for(parts[0]).get(parts[1])
    if sp is None or sp.get("type") != "reference":
        raise BadRequest(f"{name}: {parts[1]!r} is not a reference parameter of {parts[0]}",
                         (name,))
    target_type = parts[2] if len(parts) == 3 else None
    if target_type is not None and target_type not in (sp.get("target") or ()):
        raise BadRequest(f"{name}: {parts[0]}.{parts[1]} cannot refer to {target_type!r}",
                         (name,))
    target.append((parts[0], parts[1], target_type, iterate))


def now() -> datetime:
    return datetime.now(UTC)
