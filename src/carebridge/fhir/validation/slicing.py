"""Slicing as the core profiles use it (http://hl7.org/fhir/R4/profiling.html#slicing).

Discriminators supported: ``value`` and ``pattern`` (the expected values are the fixed or
pattern values found at the discriminator path inside the slice, e.g. ``code.coding.code``
in the blood-pressure components), ``type`` on choice elements (``value[x]`` sliced by type),
and ``url`` of extensions (the slice's fixed url or its extension profile). Items are matched
to the first slice they fit; each slice's cardinality is checked, items in a slice are checked
against the slice's own definition, and ``closed`` slicing rejects items that fit no slice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from carebridge.fhir.validation.fhirpath import Env
from carebridge.fhir.validation.model import ElementRule

if TYPE_CHECKING:
    from carebridge.fhir.validation.walker import Walker

_expected_cache: dict[tuple[int, str], list[Any]] = {}


def _navigate(values: list[Any], path: str) -> list[Any]:
    for step in path.split("."):
        if step == "$this":
            continue
        out: list[Any] = []
        for value in values:
            if isinstance(value, dict) and step in value:
                found = value[step]
                out.extend(found if isinstance(found, list) else [found])
        values = out
    return values


def _expected(slice_rule: ElementRule, path: str) -> list[Any]:
    """Fixed/pattern values at ``path`` inside a slice (any of them identifies the slice)."""
    key = (id(slice_rule), path)
    cached = _expected_cache.get(key)
    if cached is not None:
        return cached
    found: list[Any] = []
    steps = [s for s in path.split(".") if s != "$this"]
    frontier: list[ElementRule] = [slice_rule]
    for depth, step in enumerate(steps):
        following: list[ElementRule] = []
        for rule in frontier:
            for candidate in (rule, *rule.slices):
                pattern = candidate.pattern if candidate.pattern is not None else candidate.fixed
                if pattern is not None:
                    found.extend(_navigate([pattern], ".".join(steps[depth:])))
                tree = candidate.children
                if tree is not None:
                    for child in tree.elements:
                        if child.name == step:
                            following.append(child)
        frontier = following
    for rule in frontier:
        for candidate in (rule, *rule.slices):
            value = candidate.fixed if candidate.fixed is not None else candidate.pattern
            if value is not None:
                found.append(value)
    if not steps or steps == ["url"]:
        for trule in slice_rule.types.values():
            found.extend(trule.profiles)
    _expected_cache[key] = found
    return found


def _fits(slice_rule: ElementRule, item: Any, discriminators: tuple[tuple[str, str], ...]) -> bool:
    for kind, path in discriminators:
        if kind in ("value", "pattern"):
            expected = _expected(slice_rule, path)
            if not expected:
                return False
            actual = _navigate([item], path)
            if not any(a == e or (isinstance(e, dict) and isinstance(a, dict)
                                  and all(a.get(k) == v for k, v in e.items()))
                       for a in actual for e in expected):
                return False
        elif kind == "exists":
            continue
        else:  # type / profile on non-choice elements: not decidable here
            return False
    return True


def check_slices(walker: Walker, rule: ElementRule, obj: dict[str, Any], expr: str,
                 env: Env) -> None:
    slicing = rule.slicing
    if slicing is None:
        return
    if rule.choice:
        _type_slices(walker, rule, obj, expr, env)
        return
    (key,) = list(rule.types)[:1] or (rule.name,)
    raw = obj.get(key)
    if raw is None:
        items: list[Any] = []
    else:
        items = raw if isinstance(raw, list) else [raw]
    counts = {id(s): 0 for s in rule.slices}
    for i, item in enumerate(items):
        where = f"{expr}.{key}[{i}]" if rule.array else f"{expr}.{key}"
        for slice_rule in rule.slices:
            if _fits(slice_rule, item, slicing.discriminators):
                counts[id(slice_rule)] += 1
                trule = next(iter(slice_rule.types.values()), None) or rule.types[key]
                if item is not None:
                    walker.item(slice_rule, trule, item, where, env)
                break
        else:
            if slicing.rules == "closed":
                walker.error("structure", f"{rule.path} is closed to the slices "
                             f"{', '.join(s.slice_name or '' for s in rule.slices)}; this item"
                             " matches none of them", where)
    for slice_rule in rule.slices:
        n = counts[id(slice_rule)]
        label = f"{rule.path}:{slice_rule.slice_name}"
        if n < slice_rule.min:
            walker.error("required", f"{label} requires at least {slice_rule.min} item(s)"
                         f" matching {_describe(slice_rule, slicing.discriminators)}, found {n}",
                         f"{expr}.{key}")
        if slice_rule.max is not None and n > slice_rule.max:
            walker.error("structure", f"{label} allows at most {slice_rule.max} item(s), "
                         f"found {n}", f"{expr}.{key}")


def _type_slices(walker: Walker, rule: ElementRule, obj: dict[str, Any], expr: str,
                 env: Env) -> None:
    for slice_rule in rule.slices:
        keys = [k for k in slice_rule.types if k in obj]
        if not keys and slice_rule.slice_name and slice_rule.slice_name in obj:
            keys = [slice_rule.slice_name]
        if slice_rule.max == 0:
            for key in keys:
                walker.error("structure", f"{rule.path}: the type slice "
                             f"{slice_rule.slice_name} is not allowed (maximum 0)",
                             f"{expr}.{key}")
            continue
        if len(keys) < slice_rule.min:
            walker.error("required", f"{rule.path}:{slice_rule.slice_name} is required",
                         f"{expr}.{rule.label}")
        for key in keys:
            trule = slice_rule.types.get(key) or next(iter(slice_rule.types.values()))
            walker.item(slice_rule, trule, obj[key], f"{expr}.{key}", env)


def _describe(slice_rule: ElementRule, discriminators: tuple[tuple[str, str], ...]) -> str:
    parts = []
    for kind, path in discriminators:
        if kind in ("value", "pattern"):
            values = _expected(slice_rule, path)
            if values:
                parts.append(f"{path} = {values[0]!r}")
    return " and ".join(parts) or f"slice {slice_rule.slice_name}"
