"""One pass over a resource's JSON against compiled definitions, collecting issues.

Every issue names the element with a FHIRPath expression rooted at the resource type
(``Observation.component[1].valueQuantity.value``), or at the caller's prefix.
Issue codes come from http://hl7.org/fhir/R4/valueset-issue-type.html: ``structure`` (unknown
or mis-shaped elements, too many values), ``required`` (missing elements, slices),
``value`` (bad primitive values, fixed values, patterns, references), ``code-invalid``
(bindings), ``invariant`` (constraints).
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Protocol

from carebridge.fhir import registry
from carebridge.fhir.errors import Issue
from carebridge.fhir.validation.fhirpath import Env
from carebridge.fhir.validation.model import (
    _UNRESOLVED,
    CompiledDefinition,
    ElementRule,
    Tree,
    TypeRule,
)
from carebridge.fhir.validation.terminology import expand

_RESTFUL = re.compile(
    r"^(?:(?P<base>[a-z][a-z0-9+.\-]*://\S*?/)?)(?P<type>[A-Z][A-Za-z]+)/"
    r"(?P<id>[^/\s]+)(?:/_history/(?P<vid>[^/\s]+))?$"
)
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_UUID = re.compile(r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}")
_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
_ABSOLUTE = re.compile(r"^[a-z][a-z0-9+.\-]*:\S+$")
_CONDITIONAL = re.compile(r"^[A-Z][A-Za-z]+\?\S*$")
# txt-1: only basic html; these would execute or submit (http://hl7.org/fhir/R4/narrative.html)
_ACTIVE_HTML = re.compile(
    r"<\s*(script|form|iframe|object|embed|applet|base|link|meta|style|input|button)\b"
    r"|\son[a-z]+\s*=|javascript:", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_URI_TYPES = frozenset({"uri", "canonical", "url"})
# Required bindings give errors; extensible and preferred ones warnings, only for codes of a
# system the value set draws from (http://hl7.org/fhir/R4/terminologies.html#strength).
_CHECKED_BINDINGS = frozenset({"required", "extensible", "preferred"})


class Definitions(Protocol):
    def resource(self, resource_type: str) -> CompiledDefinition | None: ...

    def datatype(self, type_code: str, profiles: tuple[str, ...] = ()) -> (
        CompiledDefinition | None): ...


class Walker:
    """Validates one resource; create one per validation."""

    def __init__(self, definitions: Definitions) -> None:
        self.definitions = definitions
        self.issues: list[Issue] = []
        self.root: Any = None
        self.contained: dict[str, str] = {}
        self.local_refs: set[str] = set()
        self.profile_note = ""
        # A profile's snapshot repeats its base's rules: while a profile is walked
        # (``profile_note`` set), primitive formats are not checked again and invariants
        # already evaluated at the same place are skipped.
        self.evaluated: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ reporting

    def error(self, code: str, message: str, expression: str, severity: str = "error") -> None:
        self.issues.append(Issue(severity, code, message + self.profile_note, (expression,)))

    # ------------------------------------------------------------------ resources

    def resource(self, resource: dict[str, Any], expr: str,
                 definition: CompiledDefinition | None = None, *, contained: bool = False) -> None:
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or not registry.is_resource_type(rtype):
            self.error("structure", f"{rtype!r} is not a FHIR R4 resource type",
                       f"{expr}.resourceType" if rtype is not None else expr)
            return
        if definition is None:
            definition = self.definitions.resource(rtype)
            if definition is None:
                return
        saved = (self.root, self.contained, self.local_refs)
        if not contained:
            self.root = resource
            self.local_refs = set()
            self.contained = {}
            inner = resource.get("contained")
            for item in inner if isinstance(inner, list) else ():
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    self.contained[item["id"]] = str(item.get("resourceType"))
        env = Env(resource, self.root)
        self.tree(definition.tree, resource, expr, env, resource_root=True)
        self.invariants(definition.root, resource, expr, env)
        if not contained:
            self.domain_resource(resource, expr)
            self.root, self.contained, self.local_refs = saved
        if rtype == "Bundle":
            self.full_urls(resource, expr)

    def full_urls(self, bundle: dict[str, Any], expr: str) -> None:
        """A RESTful fullUrl ends with the entry resource's type and id
        (http://hl7.org/fhir/R4/bundle.html#bundle-unique)."""
        entries = bundle.get("entry")
        for i, entry in enumerate(entries if isinstance(entries, list) else ()):
            if not isinstance(entry, dict):
                continue
            full_url, resource = entry.get("fullUrl"), entry.get("resource")
            if not isinstance(full_url, str) or not isinstance(resource, dict):
                continue
            match = _RESTFUL.match(full_url)
            rid = resource.get("id")
            if match is None or not match["base"] or not isinstance(rid, str):
                continue
            if (match["type"], match["id"]) != (resource.get("resourceType"), rid):
                self.error("invalid", f"fullUrl {full_url!r} must end with the entry's "
                           f"resource type and id, {resource.get('resourceType')}/{rid}",
                           f"{expr}.entry[{i}].fullUrl")

    def domain_resource(self, resource: dict[str, Any], expr: str) -> None:
        """dom-2..dom-5 (http://hl7.org/fhir/R4/domainresource.html#invs)."""
        contained = resource.get("contained")
        if not isinstance(contained, list):
            return
        for i, item in enumerate(contained):
            if not isinstance(item, dict):
                continue
            where = f"{expr}.contained[{i}]"
            if item.get("contained"):
                self.error("invariant", "dom-2: a contained resource may not itself contain "
                           "resources", f"{where}.contained")
            meta = item.get("meta")
            if isinstance(meta, dict):
                if "versionId" in meta or "lastUpdated" in meta:
                    self.error("invariant", "dom-4: a contained resource may not have "
                               "meta.versionId or meta.lastUpdated", f"{where}.meta")
                if "security" in meta:
                    self.error("invariant", "dom-5: a contained resource may not have security "
                               "labels (meta.security)", f"{where}.meta.security")
            rid = item.get("id")
            if "#" not in self.local_refs and f"#{rid}" not in self.local_refs:
                self.error("invariant", f"dom-3: contained resource {item.get('resourceType')}"
                           f" with id {rid!r} is not referenced from the resource (refer to "
                           f"it as '#{rid}')", where)

    # ------------------------------------------------------------------ objects

    def tree(self, tree: Tree, obj: dict[str, Any], expr: str, env: Env,
             resource_root: bool = False) -> None:
        keys = tree.keys
        choices: dict[int, str] | None = None
        # In a profile walk, what the profile leaves as the core has it was checked by the
        # core walk (model.prune_profile).
        redundant = tree.redundant if self.profile_note else ()
        for key, value in obj.items():
            if key in redundant:
                continue
            entry = keys.get(key)
            if entry is None:
                if key[:1] == "_" and key[1:] in tree.primitive_keys:
                    if not self.profile_note:
                        self.primitive_sibling(value, obj.get(key[1:]), f"{expr}.{key[1:]}")
                elif not (resource_root and key == "resourceType"):
                    self.unknown(tree, key, expr)
                continue
            rule, trule = entry
            if rule.choice and len(rule.types) > 1:
                if choices is None:
                    choices = {}
                other = choices.get(id(rule))
                if other is not None:
                    self.error("structure", f"{rule.path} is a choice element: only one of its"
                               f" types may be present, found both {other!r} and {key!r}",
                               f"{expr}.{key}")
                    continue
                choices[id(rule)] = key
            if trule.fast and value is not None and not isinstance(value, list):
                # Most elements: one primitive value with nothing else to check.
                if self.profile_note:
                    continue  # checked by the base definition's walk
                reason = trule.primitive(value)  # type: ignore[misc]
                if reason is not None:
                    self.error("value", f"Invalid {trule.code} in {rule.path}: {reason}",
                               f"{expr}.{key}")
                continue
            self.element(rule, trule, value, f"{expr}.{key}", env,
                         obj.get("_" + key) if trule.primitive is not None else None)
        for rule in tree.required:
            for key in rule.types:
                if key in obj or ("_" + key) in obj:
                    break
            else:
                shown = rule.label if len(rule.types) <= 1 else (
                    f"{rule.label} (one of {', '.join(sorted(rule.types))})")
                self.error("required", f"{rule.path} is required (minimum {rule.min}) but "
                           f"{shown} is missing", f"{expr}.{rule.name}" if not rule.choice
                           else f"{expr}.{rule.label}")
        for rule in tree.sliced:
            self.slices(rule, obj, expr, env)

    def unknown(self, tree: Tree, key: str, expr: str) -> None:
        hint = ""
        stems = [r for r in tree.elements if r.choice and key.startswith(r.name)]
        if stems:
            hint = (f"; {stems[0].label} is a choice element, allowed here: "
                    f"{', '.join(sorted(stems[0].types))}")
        else:
            close = difflib.get_close_matches(key, list(tree.keys), 1, 0.75)
            if close:
                hint = f"; did you mean {close[0]!r}?"
        self.error("structure", f"Unknown element {key!r}: {tree.path} has no such element{hint}",
                   f"{expr}.{key}")

    def primitive_sibling(self, value: Any, primary: Any, expr: str) -> None:
        """``_name``: the id/extensions of a primitive (http://hl7.org/fhir/R4/json.html)."""
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) != isinstance(primary, list) and primary is not None:
            self.error("structure", f"_{expr.rsplit('.', 1)[-1]} must have the same shape "
                       "(array or not) as the element it extends", expr)
            return
        for item in items:
            if item is not None and not isinstance(item, dict):
                self.error("structure", "the _element of a primitive must be an object with id"
                           " and/or extension", expr)
                return
            if isinstance(item, dict):
                for key in item:
                    if key not in ("id", "extension"):
                        self.error("structure", f"Unknown element {key!r} in the extension "
                                   "part of a primitive (only id and extension)", expr)

    # ------------------------------------------------------------------ elements

    def element(self, rule: ElementRule, trule: TypeRule, value: Any, expr: str, env: Env,
                sibling: Any = None) -> None:
        if rule.max == 0:
            self.error("structure", f"{rule.path} is not allowed (maximum 0)", expr)
            return
        if rule.array:
            if not isinstance(value, list):
                self.error("structure", f"{rule.path} can repeat, so it must be a JSON array,"
                           " even for one value", expr)
                return
            if not value:
                self.error("structure", "Empty arrays are not allowed in FHIR JSON; omit the "
                           "element instead", expr)
                return
            if rule.max is not None and len(value) > rule.max:
                self.error("structure", f"{rule.path} allows at most {rule.max} value(s), "
                           f"found {len(value)}", expr)
            for i, item in enumerate(value):
                if item is None:
                    if not (isinstance(sibling, list) and i < len(sibling)
                            and sibling[i] is not None):
                        self.error("structure", "null is only allowed in an array of "
                                   "primitives whose _element carries that position",
                                   f"{expr}[{i}]")
                    continue
                self.item(rule, trule, item, f"{expr}[{i}]", env)
        else:
            if isinstance(value, list):
                self.error("structure", f"{rule.path} does not repeat (maximum "
                           f"{rule.max}), so it must not be a JSON array", expr)
                return
            if value is None:
                self.error("structure", "null is not a valid value; omit the element", expr)
                return
            self.item(rule, trule, value, expr, env)

    def item(self, rule: ElementRule, trule: TypeRule, value: Any, expr: str, env: Env) -> None:
        code = trule.code
        if trule.primitive is not None:
            reason = None if self.profile_note else trule.primitive(value)
            if reason is not None:
                self.error("value", f"Invalid {code} in {rule.path}: {reason}", expr)
                return
            if code in _URI_TYPES and isinstance(value, str) and value[:1] == "#":
                self.local_refs.add(value)
        elif not isinstance(value, dict):
            self.error("structure", f"{rule.path} must be a JSON object ({code}), not "
                       f"{type(value).__name__} {value!r}", expr)
            return
        elif not value:
            self.error("invariant", "ele-1: an element must have a value or children; empty "
                       "objects are not allowed", expr)
            return
        elif code in ("Resource", "DomainResource") or (
                not rule.types and rule.children is None):
            self.resource(value, expr, contained=rule.name == "contained")
        elif rule.shallow and self.profile_note:
            if code == "Reference":  # the profile may narrow the target types
                self.reference(value, trule, expr)
        else:
            definition = trule.definition
            if definition is _UNRESOLVED:
                definition = trule.definition = self.definitions.datatype(
                    code, trule.profiles) if code not in ("BackboneElement", "Element") else None
            tree = rule.children if rule.children is not None else (
                definition.tree if definition is not None else None)
            if tree is not None:
                self.tree(tree, value, expr, env)
            if definition is not None and definition.root.invariants:
                self.invariants(definition.root, value, expr, env)
            if code == "Reference":
                self.reference(value, trule, expr)
            elif code == "Extension":
                has_value = any(k[:5] == "value" or k[:6] == "_value" for k in value)
                if has_value == ("extension" in value):
                    self.error("invariant", "ext-1: an extension must have either extensions "
                               "or a value[x], not both and not neither", expr)
            elif code == "Narrative":
                self.narrative(value, expr)
        if rule.fixed is not None and value != rule.fixed:
            self.error("value", f"{rule.path} must be exactly {_show(rule.fixed)}, found "
                       f"{_show(value)}", expr)
        if rule.pattern is not None and not matches_pattern(value, rule.pattern):
            self.error("value", f"{rule.path} must match the pattern {_show(rule.pattern)}, "
                       f"found {_show(value)}", expr)
        if rule.binding is not None and rule.binding.strength in _CHECKED_BINDINGS:
            self.binding(rule, code, value, expr)
        if rule.invariants:
            self.invariants(rule, value, expr, env)

    def invariants(self, rule: ElementRule, value: Any, expr: str, env: Env) -> None:
        evaluated = self.evaluated
        for inv in rule.invariants:
            place = (inv.key, expr)
            if place in evaluated:
                continue
            evaluated.add(place)
            if inv.check(value, env) is False:
                self.error("invariant", f"{inv.key}: {inv.human} (FHIRPath: {inv.expression})",
                           expr, "warning" if inv.severity == "warning" else "error")

    # ------------------------------------------------------------------ datatypes

    def reference(self, value: dict[str, Any], trule: TypeRule, expr: str) -> None:
        ref = value.get("reference")
        if not isinstance(ref, str):
            return
        where = f"{expr}.reference"
        target: str | None = None
        if ref[:1] == "#":
            self.local_refs.add(ref)
            if ref != "#":
                target = self.contained.get(ref[1:])
                if target is None:
                    self.error("invariant", f"ref-1: {ref!r} refers to a contained resource, "
                               "but no contained resource has that id", where)
                    return
            else:
                return
        elif ref.startswith("urn:uuid:"):
            if not _UUID.fullmatch(ref):
                self.error("value", f"{ref!r} is not a valid urn:uuid reference", where)
            return
        elif ref.startswith("urn:oid:"):
            if not _OID.fullmatch(ref):
                self.error("value", f"{ref!r} is not a valid urn:oid reference", where)
            return
        else:
            match = _RESTFUL.match(ref)
            if match is not None:
                target = match["type"]
                if not _ID.fullmatch(match["id"]):
                    self.error("value", f"Reference {ref!r}: {match['id']!r} is not a valid "
                               "resource id", where)
                    return
            elif _CONDITIONAL.match(ref):
                target = ref.split("?", 1)[0]
            elif _ABSOLUTE.match(ref):
                return  # a URL that is not a FHIR REST location: its type cannot be known
            else:
                self.error("value", f"{ref!r} is not a valid reference: use 'Type/id', an "
                           "absolute URL, 'urn:uuid:...', or '#id' for a contained resource",
                           where)
                return
            if not registry.is_resource_type(target):
                if match is not None and match["base"]:
                    return  # another server's URL: may be a logical model, not ours to judge
                self.error("value", f"Reference {ref!r}: {target!r} is not a resource type",
                           where)
                return
        declared = value.get("type")
        if isinstance(declared, str) and target is not None and declared != target and (
                registry.is_resource_type(declared)):
            self.error("value", f"Reference.type is {declared!r} but the reference points to "
                       f"a {target}", f"{expr}.type")
        if trule.targets is not None and target is not None and target not in trule.targets:
            self.error("value", f"Reference {ref!r} points to a {target}, but this element "
                       f"may only refer to {', '.join(sorted(trule.targets))}", where)

    def narrative(self, value: dict[str, Any], expr: str) -> None:
        div = value.get("div")
        if not isinstance(div, str):
            return
        where = f"{expr}.div"
        if not div.lstrip().startswith("<div") or "http://www.w3.org/1999/xhtml" not in div:
            self.error("invariant", "txt-1: the narrative must be an XHTML <div> element in "
                       "the namespace http://www.w3.org/1999/xhtml", where)
        elif _ACTIVE_HTML.search(div):
            self.error("invariant", "txt-1: the narrative may contain only basic HTML "
                       "formatting: no scripts, forms, frames, styles or event handlers", where)
        elif not _TAG.sub("", div).strip() and "<img" not in div:
            self.error("invariant", "txt-2: the narrative must have some non-whitespace "
                       "content", where)

    def binding(self, rule: ElementRule, code: str, value: Any, expr: str) -> None:
        assert rule.binding is not None
        strength = rule.binding.strength
        vs = rule.binding.value_set
        expansion = expand(vs)
        if not expansion.known:
            return
        severity = "error" if strength == "required" else "warning"
        if code in ("code", "string", "uri"):
            if isinstance(value, str) and expansion.has(None, value) is False and (
                    strength == "required"):
                self.error("code-invalid", f"{value!r} is not a code of the required value set"
                           f" {vs} for {rule.path} (allowed: {expansion.examples()})", expr)
            return
        # (coding, its index in CodeableConcept.coding or None); the path is only spelt
        # out for an issue (this runs for every bound element of every write).
        codings: list[tuple[dict[str, Any], int | None]]
        if code == "Coding":
            codings = [(value, None)]
        elif code == "CodeableConcept":
            raw = value.get("coding")
            codings = []
            if isinstance(raw, list):
                for i, c in enumerate(raw):
                    if isinstance(c, dict):
                        codings.append((c, i))
        elif code == "Quantity":
            if "code" not in value:
                return
            codings = [(value, None)]
        else:
            return
        verdicts = []
        for coding, _ in codings:
            c, system = coding.get("code"), coding.get("system")
            if isinstance(c, str):
                verdict = expansion.has(system if isinstance(system, str) else None, c)
                if verdict is not False:
                    return  # a coding in the value set (or one that cannot be judged)
                verdicts.append(verdict)
        if not verdicts:
            if strength == "required" and code != "Quantity":
                self.error("code-invalid", f"{rule.path} has a required binding to {vs} but "
                           "carries no code from it", expr)
            return
        if strength != "required" and not _any_system_in(codings, expansion.systems):
            return  # extensible/preferred: codes from other systems are allowed
        first, index = codings[0]
        where = expr if index is None else f"{expr}.coding[{index}]"
        shown = f"{first.get('system', '(no system)')}|{first.get('code')}"
        self.error("code-invalid", f"{shown} is not in the {strength} value set {vs} for "
                   f"{rule.path}" + (f" (allowed: {expansion.examples()})"
                                     if expansion.bare_codes else ""),
                   where if code != "Quantity" else f"{expr}.code", severity)

    # ------------------------------------------------------------------ slicing

    def slices(self, rule: ElementRule, obj: dict[str, Any], expr: str, env: Env) -> None:
        from carebridge.fhir.validation.slicing import check_slices

        check_slices(self, rule, obj, expr, env)


def matches_pattern(value: Any, pattern: Any) -> bool:
    """FHIR pattern[x]: every element of the pattern is present with the same value;
    arrays match when each pattern item matches some instance item."""
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        return all(k in value and matches_pattern(value[k], p) for k, p in pattern.items())
    if isinstance(pattern, list):
        if not isinstance(value, list):
            return False
        return all(any(matches_pattern(v, p) for v in value) for p in pattern)
    return bool(value == pattern)


def _show(value: Any) -> str:
    import orjson

    text = orjson.dumps(value).decode()
    return text if len(text) <= 120 else text[:117] + "..."


def _any_system_in(codings: list[tuple[dict[str, Any], int | None]],
                   systems: frozenset[str]) -> bool:
    # A function of its own: the generator in Walker.binding made it a closure cell per call.
    return any(isinstance(coding.get("system"), str) and coding["system"] in systems
               for coding, _ in codings)
