"""A fast path for the FHIRPath subset that most R4 invariants use.

fhirpathpy evaluates a compiled expression in 20-40 us; a typical resource has a handful of
invariants on the elements it carries, so evaluating all of them with it would cost more than
the rest of validation. Most invariants are navigation plus ``exists()``, ``empty()``,
``count()``, boolean logic and comparisons with literals
(http://hl7.org/fhirpath/N1/): this module turns such expressions, parsed by fhirpathpy's own
parser, into Python closures over the JSON tree (about 1-3 us). Anything outside the subset
raises :class:`Unsupported` when compiling, and the caller keeps fhirpathpy for it; a
situation the subset does not model at run time (e.g. comparing dates of different time zones)
raises :class:`Unsupported` while evaluating, and the caller falls back for that evaluation.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from functools import cache
from typing import Any

from fhirpathpy.parser import parse

from carebridge.fhir import registry
from carebridge.fhir.validation.primitives import checker

Collection = list[Any]


class Env:
    __slots__ = ("resource", "root")

    def __init__(self, resource: Any, root: Any) -> None:
        self.resource = resource
        self.root = root


Fn = Callable[[Collection, Env], Collection]


class Unsupported(Exception):
    """The expression (or this evaluation) is outside the fast subset."""


# Type suffixes of choice elements (valueQuantity, effectiveDateTime...): a name followed by
# one of these is the choice element `name[x]` in JSON (http://hl7.org/fhir/R4/json.html#choice).
_TYPE_SUFFIXES = frozenset({
    "Base64Binary", "Boolean", "Canonical", "Code", "Date", "DateTime", "Decimal", "Id",
    "Instant", "Integer", "Markdown", "Oid", "PositiveInt", "String", "Time", "UnsignedInt",
    "Uri", "Url", "Uuid", "Address", "Age", "Annotation", "Attachment", "CodeableConcept",
    "Coding", "ContactPoint", "Count", "Distance", "Duration", "HumanName", "Identifier",
    "Money", "Period", "Quantity", "Range", "Ratio", "Reference", "SampledData", "Signature",
    "Timing", "ContactDetail", "Contributor", "DataRequirement", "Expression",
    "ParameterDefinition", "RelatedArtifact", "TriggerDefinition", "UsageContext", "Dosage",
    "Meta",
})


@cache
def _choice_stems() -> frozenset[str]:
    """Names of all choice elements (``value[x]`` -> ``value``) in the R4 definitions."""
    stems: set[str] = set()
    for sd in registry.base_structure_definitions():
        for element in sd["snapshot"]["element"]:
            path: str = element["path"]
            if path.endswith("[x]"):
                stems.add(path.rsplit(".", 1)[-1][:-3])
    return frozenset(stems)


def _choice_key(item: dict[str, Any], name: str) -> str | None:
    if name not in _choice_stems():
        return None
    for key in item:
        if key.startswith(name) and key[len(name):] in _TYPE_SUFFIXES:
            return key
    return None


def _child(item: Any, name: str, out: Collection) -> None:
    if not isinstance(item, dict):
        return
    value = item.get(name)
    if value is None:
        if name[:1].isupper() and item.get("resourceType") == name:
            out.append(item)
            return
        sibling = item.get("_" + name)
        if sibling is not None:  # a primitive with only extensions
            out.extend(sibling if isinstance(sibling, list) else [sibling])
            return
        key = _choice_key(item, name)
        if key is None:
            return
        value = item[key]
    if isinstance(value, list):
        out.extend(v for v in value if v is not None)
    else:
        out.append(value)


_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n",
            "r": "\r", "t": "\t"}


def _unescape(text: str) -> str:
    """FHIRPath string literal escapes (http://hl7.org/fhirpath/N1/#string)."""
    if "\\" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "u" and i + 5 < len(text):
                out.append(chr(int(text[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _truth(collection: Collection) -> bool | None:
    """Singleton evaluation of collections (FHIRPath 4.5)."""
    if not collection:
        return None
    if len(collection) == 1:
        value = collection[0]
        return value if isinstance(value, bool) else True
    raise Unsupported("boolean of a collection with several items")


def _bool(value: bool | None) -> Collection:
    return [] if value is None else [value]


def _has_value(item: Any) -> bool:
    return not isinstance(item, dict | list)


def _comparable(left: Any, right: Any) -> tuple[Any, Any]:
    if isinstance(left, bool) or isinstance(right, bool):
        raise Unsupported("ordering booleans")
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left, right
    if isinstance(left, dict) and isinstance(right, dict):
        # Quantities in the same unit compare by value; other units need UCUM: fall back.
        a, b = left.get("value"), right.get("value")
        if (left.get("code"), left.get("system")) == (right.get("code"), right.get("system")) \
                and isinstance(a, int | float) and isinstance(b, int | float):
            return a, b
        raise Unsupported("quantities in different units")
    if isinstance(left, str) and isinstance(right, str):
        if _DATEISH.match(left) or _DATEISH.match(right):
            return _date_key(left), _date_key(right)
        return left, right
    raise Unsupported("comparison of mixed kinds")


_DATEISH = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?(T|$)")


def _date_key(text: str) -> Any:
    """Full dates compare as text; dateTimes with seconds and a zone as instants. Other
    mixes (partial dates, no zone) have FHIRPath's precision rules: left to fhirpathpy."""
    if len(text) == 10:
        return (0, text)
    if len(text) >= 20 and text[10] == "T" and (text[-1] == "Z" or text[-6] in "+-"):
        try:
            return (1, datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            raise Unsupported("not a dateTime") from None
    raise Unsupported("date comparison across precisions or time zones")


def _equal(left: Collection, right: Collection) -> bool | None:
    if not left or not right:
        return None
    if len(left) != len(right):
        return False
    return all(a == b and type(a) is not dict for a, b in zip(left, right, strict=True)) or (
        left == right
    )


class _Compiler:
    def compile(self, node: dict[str, Any]) -> Fn:
        kind = node.get("type")
        handler = getattr(self, f"_{kind}", None)
        if handler is None:
            raise Unsupported(str(kind))
        fn: Fn = handler(node)
        return fn

    def _TermExpression(self, node: dict[str, Any]) -> Fn:
        return self.compile(node["children"][0])

    def _ParenthesizedTerm(self, node: dict[str, Any]) -> Fn:
        return self.compile(node["children"][0])

    def _InvocationTerm(self, node: dict[str, Any]) -> Fn:
        return self._invocation(node["children"][0], None)

    def _LiteralTerm(self, node: dict[str, Any]) -> Fn:
        literal = node["children"][0]
        text = literal.get("text", "")
        kind = literal["type"]
        value: Any
        if kind == "StringLiteral":
            value = _unescape(text[1:-1])
        elif kind == "NumberLiteral":
            value = float(text) if "." in text else int(text)
        elif kind == "BooleanLiteral":
            value = text == "true"
        elif kind == "NullLiteral":
            return lambda focus, env: []
        else:
            raise Unsupported(kind)
        constant = [value]
        return lambda focus, env: constant

    def _ExternalConstantTerm(self, node: dict[str, Any]) -> Fn:
        name = node["children"][0]["children"][0].get("text")
        if name == "resource":
            return lambda focus, env: [env.resource]
        if name == "rootResource":
            return lambda focus, env: [env.root]
        if name == "ucum":
            ucum = ["http://unitsofmeasure.org"]
            return lambda focus, env: ucum
        raise Unsupported(f"%{name}")

    def _InvocationExpression(self, node: dict[str, Any]) -> Fn:
        source = self.compile(node["children"][0])
        return self._invocation(node["children"][1], source)

    def _invocation(self, node: dict[str, Any], source: Fn | None) -> Fn:
        kind = node["type"]
        if kind == "ThisInvocation":
            return lambda focus, env: focus
        if kind == "MemberInvocation":
            name = node["children"][0]["text"]
            if source is None:
                def member_here(focus: Collection, env: Env) -> Collection:
                    out: Collection = []
                    for item in focus:
                        _child(item, name, out)
                    return out
                return member_here

            def member(focus: Collection, env: Env) -> Collection:
                out: Collection = []
                for item in source(focus, env):
                    _child(item, name, out)
                return out
            return member
        if kind == "FunctionInvocation":
            functn = node["children"][0]
            name = functn["children"][0]["text"]
            params = functn["children"][1]["children"] if len(functn["children"]) > 1 else []
            if name in ("is", "as", "ofType") and len(params) == 1:
                return self._type_test(name, str(params[0].get("text", "")), source)
            return self._function(name, [self.compile(p) for p in params], source)
        raise Unsupported(kind)

    @staticmethod
    def _type_test(name: str, type_name: str, source: Fn | None) -> Fn:
        """``is``/``as``/``ofType`` on resources (their resourceType names the type)."""
        src: Fn = source if source is not None else (lambda focus, env: focus)
        wanted = type_name.removeprefix("FHIR.")

        primitive = checker(wanted) if wanted[:1].islower() else None

        def type_test(focus: Collection, env: Env) -> Collection:
            items = src(focus, env)
            if primitive is not None:
                # A JSON primitive is of a FHIR primitive type when it has that type's form.
                kept = [i for i in items if not isinstance(i, dict | list) and primitive(i) is None]
            elif all(isinstance(i, dict) and "resourceType" in i for i in items):
                kept = [i for i in items if i["resourceType"] == wanted]
            else:
                raise Unsupported("type test on a non-resource")
            if name == "is":
                if len(items) > 1:
                    raise Unsupported("is on a collection")
                return [bool(kept)] if items else []
            return kept
        return type_test

    def _function(self, name: str, params: list[Fn], source: Fn | None) -> Fn:
        src: Fn = source if source is not None else (lambda focus, env: focus)
        one = params[0] if params else None
        if name == "exists" and one is None:
            return lambda focus, env: [bool(src(focus, env))]
        if name == "exists" and one is not None:
            return lambda focus, env: [any(_truth(one([i], env)) for i in src(focus, env))]
        if name == "empty" and not params:
            return lambda focus, env: [not src(focus, env)]
        if name == "count" and not params:
            return lambda focus, env: [len(src(focus, env))]
        if name == "not" and not params:
            def negate(focus: Collection, env: Env) -> Collection:
                value = _truth(src(focus, env))
                return [] if value is None else [not value]
            return negate
        if name == "hasValue" and not params:
            def has_value(focus: Collection, env: Env) -> Collection:
                items = src(focus, env)
                return [len(items) == 1 and _has_value(items[0])]
            return has_value
        if name == "where" and one is not None:
            return lambda focus, env: [i for i in src(focus, env) if _truth(one([i], env))]
        if name == "all" and one is not None:
            return lambda focus, env: [all(_truth(one([i], env)) for i in src(focus, env))]
        if name == "select" and one is not None:
            def select(focus: Collection, env: Env) -> Collection:
                out: Collection = []
                for item in src(focus, env):
                    out.extend(one([item], env))
                return out
            return select
        if name == "intersect" and one is not None:
            def intersect(focus: Collection, env: Env) -> Collection:
                other = one(focus, env)
                out: Collection = []
                for item in src(focus, env):
                    if item in other and item not in out:
                        out.append(item)
                return out
            return intersect
        if name == "toString" and not params:
            def to_string(focus: Collection, env: Env) -> Collection:
                items = src(focus, env)
                if len(items) > 1 or (items and isinstance(items[0], dict | list | bool)):
                    raise Unsupported("toString of this value")
                return [str(items[0])] if items else []
            return to_string
        if name == "length" and not params:
            def length(focus: Collection, env: Env) -> Collection:
                items = src(focus, env)
                if len(items) > 1 or (items and not isinstance(items[0], str)):
                    raise Unsupported("length of a non-string")
                return [len(items[0])] if items else []
            return length
        if name == "tail" and not params:
            return lambda focus, env: src(focus, env)[1:]
        if name == "toInteger" and not params:
            def to_integer(focus: Collection, env: Env) -> Collection:
                items = src(focus, env)
                if len(items) != 1:
                    if items:
                        raise Unsupported("toInteger of a collection")
                    return []
                value = items[0]
                if isinstance(value, int) and not isinstance(value, bool):
                    return [value]
                if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value):
                    return [int(value)]
                return []
            return to_integer
        if name == "iif" and len(params) in (2, 3):
            criterion, then = params[0], params[1]
            otherwise = params[2] if len(params) == 3 else None

            def iif(focus: Collection, env: Env) -> Collection:
                base = src(focus, env)
                if _truth(criterion(base, env)):
                    return then(base, env)
                return otherwise(base, env) if otherwise is not None else []
            return iif
        if name == "first" and not params:
            return lambda focus, env: src(focus, env)[:1]
        if name == "trace":
            return src
        if name == "isDistinct" and not params:
            def distinct(focus: Collection, env: Env) -> Collection:
                items = src(focus, env)
                if any(isinstance(i, dict | list) for i in items):
                    raise Unsupported("isDistinct on complex values")
                return [len(set(items)) == len(items)]
            return distinct
        if name in ("startsWith", "matches", "contains") and one is not None:
            test: Callable[[str, str], bool]
            if name == "startsWith":
                test = str.startswith
            elif name == "contains":
                test = str.__contains__
            else:
                def test(value: str, pattern: str) -> bool:
                    return re.search(pattern, value) is not None

            def string_test(focus: Collection, env: Env) -> Collection:
                items = src(focus, env)
                if not items:
                    return []
                arg = one(focus, env)
                if len(items) != 1 or len(arg) != 1 or not isinstance(items[0], str):
                    raise Unsupported(f"{name} on a non-string")
                return [test(items[0], arg[0])]
            return string_test
        raise Unsupported(f"{name}()")

    def _logic(self, node: dict[str, Any]) -> tuple[Fn, Fn, str]:
        left, right = (self.compile(c) for c in node["children"])
        return left, right, node["terminalNodeText"][0]

    def _AndExpression(self, node: dict[str, Any]) -> Fn:
        left, right, _ = self._logic(node)

        def both(focus: Collection, env: Env) -> Collection:
            a = _truth(left(focus, env))
            if a is False:
                return [False]
            b = _truth(right(focus, env))
            if b is False:
                return [False]
            return [True] if a and b else []
        return both

    def _OrExpression(self, node: dict[str, Any]) -> Fn:
        left, right, op = self._logic(node)
        if op == "xor":
            def xor(focus: Collection, env: Env) -> Collection:
                a, b = _truth(left(focus, env)), _truth(right(focus, env))
                return [] if a is None or b is None else [a != b]
            return xor

        def either(focus: Collection, env: Env) -> Collection:
            a = _truth(left(focus, env))
            if a is True:
                return [True]
            b = _truth(right(focus, env))
            if b is True:
                return [True]
            return [False] if a is False and b is False else []
        return either

    def _ImpliesExpression(self, node: dict[str, Any]) -> Fn:
        left, right, _ = self._logic(node)

        def implies(focus: Collection, env: Env) -> Collection:
            a = _truth(left(focus, env))
            if a is False:
                return [True]
            b = _truth(right(focus, env))
            if b is True:
                return [True]
            if a is None:
                return []
            return _bool(b)
        return implies

    def _EqualityExpression(self, node: dict[str, Any]) -> Fn:
        left, right, op = self._logic(node)
        if op not in ("=", "!="):
            raise Unsupported(op)
        negate = op == "!="

        def equality(focus: Collection, env: Env) -> Collection:
            result = _equal(left(focus, env), right(focus, env))
            if result is None:
                return []
            return [result != negate]
        return equality

    def _InequalityExpression(self, node: dict[str, Any]) -> Fn:
        left, right, op = self._logic(node)
        compare: Callable[[Any, Any], bool] = {
            "<": lambda a, b: a < b, ">": lambda a, b: a > b,
            "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b,
        }[op]

        def inequality(focus: Collection, env: Env) -> Collection:
            a, b = left(focus, env), right(focus, env)
            if not a or not b:
                return []
            if len(a) != 1 or len(b) != 1:
                raise Unsupported("comparing collections")
            x, y = _comparable(a[0], b[0])
            return [compare(x, y)]
        return inequality

    def _UnionExpression(self, node: dict[str, Any]) -> Fn:
        left, right, _ = self._logic(node)

        def union(focus: Collection, env: Env) -> Collection:
            out: Collection = []
            for item in left(focus, env) + right(focus, env):
                if item not in out:
                    out.append(item)
            return out
        return union

    def _AdditiveExpression(self, node: dict[str, Any]) -> Fn:
        left, right, op = self._logic(node)
        if op == "&":
            def concatenate(focus: Collection, env: Env) -> Collection:
                a, b = left(focus, env), right(focus, env)
                if len(a) > 1 or len(b) > 1 or not all(isinstance(x, str) for x in a + b):
                    raise Unsupported("& on non-strings")
                return [(a[0] if a else "") + (b[0] if b else "")]
            return concatenate
        if op not in ("+", "-"):
            raise Unsupported(op)

        def additive(focus: Collection, env: Env) -> Collection:
            a, b = left(focus, env), right(focus, env)
            if not a or not b:
                return []
            if len(a) != 1 or len(b) != 1:
                raise Unsupported("arithmetic on collections")
            x, y = a[0], b[0]
            if isinstance(x, bool) or isinstance(y, bool):
                raise Unsupported("arithmetic on booleans")
            if isinstance(x, int | float) and isinstance(y, int | float):
                return [x + y if op == "+" else x - y]
            if isinstance(x, str) and isinstance(y, str) and op == "+":
                return [x + y]
            raise Unsupported("arithmetic on mixed kinds")
        return additive

    def _TypeExpression(self, node: dict[str, Any]) -> Fn:
        """``answer is Boolean`` on a choice element (the JSON key names the type); otherwise
        ``x is T`` / ``x as T`` on primitives (by their lexical form) and resources."""
        source, spec = node["children"]
        op = node["terminalNodeText"][0]
        type_name = str(spec.get("text", "")).rsplit(".", 1)[-1]
        member = source["children"][-1] if source.get("type") in (
            "TermExpression", "InvocationExpression") else {}
        if source.get("type") == "TermExpression":
            member = member["children"][0] if member.get("children") else {}
        name = member["children"][0]["text"] if member.get("type") == "MemberInvocation" else ""
        if op == "is" and name in _choice_stems():
            wanted = type_name.lower()
            owner: Fn = (self.compile(source["children"][0]) if source["type"] ==
                         "InvocationExpression" else (lambda focus, env: focus))

            def is_type(focus: Collection, env: Env) -> Collection:
                items = [i for i in owner(focus, env) if isinstance(i, dict)]
                keys = [k for k in (_choice_key(i, name) for i in items) if k is not None]
                if len(keys) != 1:
                    if not keys:
                        return []
                    raise Unsupported("is on a collection")
                return [keys[0][len(name):].lower() == wanted]
            return is_type
        if op not in ("is", "as"):
            raise Unsupported(op)
        return self._type_test(op, type_name, self.compile(source))

    def _MembershipExpression(self, node: dict[str, Any]) -> Fn:
        left, right, op = self._logic(node)
        if op == "contains":
            left, right = right, left

        def membership(focus: Collection, env: Env) -> Collection:
            item, within = left(focus, env), right(focus, env)
            if not item:
                return []
            if len(item) != 1:
                raise Unsupported("membership of a collection")
            return [item[0] in within]
        return membership


def compile_fast(expression: str) -> Fn:
    """Compile ``expression``; raises :class:`Unsupported` if outside the subset."""
    tree = parse(expression)  # type: ignore[no-untyped-call]
    return _Compiler().compile(tree["children"][0])


def evaluate_fast(fn: Fn, focus: Any, env: Env) -> bool | None:
    return _truth(fn([focus], env))
