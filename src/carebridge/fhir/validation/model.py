"""StructureDefinition snapshots compiled into trees of element rules.

A snapshot is a flat list of ElementDefinitions (http://hl7.org/fhir/R4/elementdefinition.html)
whose ``id`` encodes the tree (``Observation.component:SystolicBP.code.coding:SBPCode.system``).
Each StructureDefinition is compiled once into :class:`Tree` objects: per JSON property name
the :class:`ElementRule` and :class:`TypeRule` that apply, the required elements, the choice
groups, and the slices a profile defines. Complex datatypes that a snapshot does not expand
are validated with the tree of their own StructureDefinition, compiled once and shared.

Why our own: no Python library checks cardinality, bindings, slicing and invariants from the
official definitions at the speed a write path needs (see the validation issue's measurements).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from carebridge.fhir import registry
from carebridge.fhir.validation.invariants import Invariant, compile_invariant
from carebridge.fhir.validation.primitives import PrimitiveCheck, checker, is_primitive

_FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
_SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
_BEST_PRACTICE = "http://hl7.org/fhir/StructureDefinition/elementdefinition-bestpractice"


_UNRESOLVED: Any = object()  # TypeRule.definition before the walker first looks it up


@dataclass(eq=False, slots=True)
class TypeRule:
    """One allowed type of an element (``Quantity``, ``string``, ``Reference``...)."""

    code: str
    primitive: PrimitiveCheck | None
    profiles: tuple[str, ...] = ()
    targets: frozenset[str] | None = None  # Reference target types; None: any
    definition: Any = _UNRESOLVED  # the compiled datatype, cached by the walker
    fast: bool = False  # a single primitive with nothing else to check (ElementRule.settle)


@dataclass(eq=False, slots=True)
class Binding:
    strength: str  # required | extensible | preferred | example
    value_set: str


@dataclass(eq=False, slots=True)
class Slicing:
    discriminators: tuple[tuple[str, str], ...]  # (type, path)
    rules: str  # open | closed | openAtEnd
    ordered: bool


@dataclass(eq=False, slots=True)
class ElementRule:
    """One ElementDefinition, ready to check instances."""

    id: str
    path: str
    name: str  # the element name without [x]
    choice: bool
    min: int
    max: int | None  # None: unbounded
    array: bool  # represented as a JSON array (base max is not "1")
    short: str
    types: dict[str, TypeRule] = field(default_factory=dict)  # JSON key -> type
    children: Tree | None = None  # elements defined inline (backbone, or a profile's)
    content_reference: str | None = None
    fixed: Any = None
    pattern: Any = None
    binding: Binding | None = None
    invariants: tuple[Invariant, ...] = ()
    slicing: Slicing | None = None
    slices: list[ElementRule] = field(default_factory=list)
    slice_name: str | None = None
    plain: bool = False  # nothing to check beyond the type: see settle()
    # In a profile: what the element contains is checked exactly as the core definition
    # checks it, so a profile walk need not descend (set by prune_profile).
    shallow: bool = False

    def settle(self) -> None:
        """Compute :attr:`plain` once the rule is complete."""
        self.plain = (self.fixed is None and self.pattern is None and not self.invariants and (
            self.binding is None or self.binding.strength not in (
                "required", "extensible", "preferred")))
        for trule in self.types.values():
            trule.fast = (self.plain and not self.array and self.max != 0
                          and trule.primitive is not None
                          and trule.code not in ("uri", "canonical", "url"))

    @property
    def label(self) -> str:
        return self.name + ("[x]" if self.choice else "")


@dataclass(eq=False, slots=True)
class Tree:
    """The content of a resource, datatype or backbone element."""

    path: str  # e.g. Observation, Observation.component, Quantity
    keys: dict[str, tuple[ElementRule, TypeRule]] = field(default_factory=dict)
    primitive_keys: set[str] = field(default_factory=set)  # keys that may have a `_key`
    elements: list[ElementRule] = field(default_factory=list)
    required: list[ElementRule] = field(default_factory=list)
    choices: list[ElementRule] = field(default_factory=list)
    sliced: list[ElementRule] = field(default_factory=list)
    # In a profile: JSON keys whose element and content the profile leaves exactly as the
    # core definition has them (set by prune_profile); a profile walk skips them.
    redundant: frozenset[str] = frozenset()

    def add(self, rule: ElementRule) -> None:
        self.elements.append(rule)
        if rule.min > 0:
            self.required.append(rule)
        if rule.choice and len(rule.types) > 1:
            self.choices.append(rule)
        for key, trule in rule.types.items():
            self.keys[key] = (rule, trule)
            if trule.primitive is not None:
                self.primitive_keys.add(key)


@dataclass(eq=False, slots=True)
class CompiledDefinition:
    """A compiled StructureDefinition: the root rule and its tree."""

    url: str
    type: str
    root: ElementRule
    tree: Tree
    version: str = ""
    pruned: bool = False  # prune_profile has compared it with its core definition


def type_code(type_ref: dict[str, Any]) -> str:
    """The FHIR type of a type reference (``id`` is System.String with a fhir-type ext)."""
    for ext in type_ref.get("extension", ()):
        if ext.get("url") == _FHIR_TYPE_EXT and "valueUrl" in ext:
            return str(ext["valueUrl"]).removeprefix(_SD_PREFIX)
    code = str(type_ref["code"])
    if code.startswith("http://hl7.org/fhirpath/System."):
        return "string"
    return code


def _target_types(urls: list[str]) -> frozenset[str] | None:
    names: set[str] = set()
    for url in urls:
        name = url.removeprefix(_SD_PREFIX)
        if name in ("Resource", "DomainResource"):
            return None
        if "/" in name or not registry.is_resource_type(name):
            try:
                name = registry.structure_definition(url)["type"]
            except KeyError:
                return None  # a profile we do not know: do not guess its type
        names.add(name)
    return frozenset(names)


def _max(value: str | None) -> int | None:
    if value is None or value == "*":
        return None
    return int(value)


def _fixed_or_pattern(element: dict[str, Any], prefix: str) -> Any:
    for key, value in element.items():
        if key.startswith(prefix) and key[len(prefix):][:1].isupper():
            return value
    return None


def _is_best_practice(constraint: dict[str, Any]) -> bool:
    return any(e.get("url") == _BEST_PRACTICE and e.get("valueBoolean")
               for e in constraint.get("extension", ()))


def _rule(element: dict[str, Any], type_path: str) -> ElementRule:
    path: str = element["path"]
    last = path.rsplit(".", 1)[-1]
    choice = last.endswith("[x]")
    name = last.removesuffix("[x]")
    base_max = (element.get("base") or {}).get("max", element.get("max", "1"))
    rule = ElementRule(
        id=element.get("id", path),
        path=path,
        name=name,
        choice=choice,
        min=int(element.get("min", 0)),
        max=_max(element.get("max")),
        array=base_max != "1" and "." in path,
        short=str(element.get("short", "")),
        content_reference=element.get("contentReference"),
        fixed=_fixed_or_pattern(element, "fixed"),
        pattern=_fixed_or_pattern(element, "pattern"),
        slice_name=element.get("sliceName"),
    )
    for type_ref in element.get("type", ()):
        code = type_code(type_ref)
        if (name == "id" and path.count(".") == 1 and registry.is_resource_type(
                path.split(".", 1)[0])) or path in ("Resource.id", "DomainResource.id"):
            code = "id"  # the snapshot says System.String, resource.html says id
        key = name + code[:1].upper() + code[1:] if choice else name
        rule.types[key] = TypeRule(
            code=code,
            primitive=checker(code) if is_primitive(code) else None,
            profiles=tuple(type_ref.get("profile", ())),
            targets=_target_types(type_ref.get("targetProfile", []))
            if code in ("Reference", "canonical") and type_ref.get("targetProfile") else None,
        )
    if rule.content_reference and not rule.types:
        rule.types[name] = TypeRule("BackboneElement", None)  # children resolved later
    binding = element.get("binding")
    if binding and "valueSet" in binding:
        rule.binding = Binding(binding["strength"], registry_canonical(binding["valueSet"]))
    slicing = element.get("slicing")
    if slicing:
        rule.slicing = Slicing(
            tuple((d["type"], d["path"]) for d in slicing.get("discriminator", ())),
            slicing.get("rules", "open"), bool(slicing.get("ordered", False)),
        )
    invariants = []
    for constraint in element.get("constraint", ()):
        if _is_best_practice(constraint) or "expression" not in constraint:
            continue
        invariant = compile_invariant(constraint, type_path)
        if invariant is not None:
            invariants.append(invariant)
    rule.invariants = tuple(invariants)
    return rule


def registry_canonical(url: str) -> str:
    return url.split("|", 1)[0]


def _parent_id(element_id: str) -> str:
    """``A.b:s.c`` -> ``A.b:s``; slice names may not contain dots in the core package."""
    return element_id.rsplit(".", 1)[0]


def compile_snapshot(sd: dict[str, Any]) -> CompiledDefinition:
    """Compile a StructureDefinition with a snapshot into a :class:`CompiledDefinition`."""
    elements: list[dict[str, Any]] = sd["snapshot"]["element"]
    sd_type: str = sd["type"]
    rules: dict[str, ElementRule] = {}
    trees: dict[str, Tree] = {}
    root: ElementRule | None = None
    for element in elements:
        element_id: str = element.get("id") or element["path"]
        if root is None:
            root = _rule(element, sd_type)
            root.array = False
            rules[element_id] = root
            trees[element_id] = Tree(sd_type)
            root.children = trees[element_id]
            continue
        # FHIRPath type context of the element's invariants: the path without slice names.
        rule = _rule(element, element["path"])
        rules[element_id] = rule
        if rule.slice_name is not None and element_id.endswith(":" + rule.slice_name):
            sliced = rules.get(element_id[: -len(rule.slice_name) - 1])
            if sliced is not None:
                rule.array = sliced.array
                sliced.slices.append(rule)
                continue
        parent_id = _parent_id(element_id)
        parent = rules.get(parent_id)
        if parent is None:
            continue  # an element under an unknown parent: malformed snapshot, ignore it
        if parent.children is None:
            parent.children = Tree(_clean_path(parent_id))
            trees[parent_id] = parent.children
        parent.children.add(rule)
    for rule in rules.values():
        if rule.content_reference and rule.children is None:
            target = rules.get(rule.content_reference.lstrip("#").split("#")[-1])
            if target is not None:
                rule.children = target.children
                rule.invariants = rule.invariants or target.invariants
        rule.settle()
        if rule.slices:
            owner_tree = _owning_tree(rules, rule)
            if owner_tree is not None and rule not in owner_tree.sliced:
                owner_tree.sliced.append(rule)
    assert root is not None and root.children is not None
    return CompiledDefinition(
        url=sd.get("url", ""), type=sd_type, root=root, tree=root.children,
        version=str(sd.get("version", "")),
    )


def _owning_tree(rules: dict[str, ElementRule], rule: ElementRule) -> Tree | None:
    parent = rules.get(_parent_id(rule.id))
    return parent.children if parent is not None else None


def _clean_path(element_id: str) -> str:
    """An element id without slice names, as a FHIRPath-like type path."""
    return ".".join(part.split(":", 1)[0] for part in element_id.split("."))


# --------------------------------------------------------------------------------------------
# profiles: what they leave as the core definition has it

def prune_profile(profile: CompiledDefinition, core: CompiledDefinition,
                  datatype: Callable[[str, tuple[str, ...]], CompiledDefinition | None]) -> None:
    """Mark what a profile walk may skip: a validation walks the core definition of the
    resource type first, then each profile (``Walker.profile_note`` set), and reports each
    issue once (the profile's copy of a core issue is dropped). Where a profile's element
    has the same constraints as the core's (cardinality, types, target types, fixed value,
    pattern, binding, invariants, no slicing) and the same content below it, walking it again
    can only find what the core walk found: its key goes into :attr:`Tree.redundant`. Where
    only the content is the same, the rule is :attr:`ElementRule.shallow` (its own
    constraints are checked, its content is not walked again). A derived profile (heartrate
    from vitalsigns) constrains a handful of elements; the rest of a resource is then walked
    once, not once per profile.

    ``datatype`` is the validator's look-up of a datatype's compiled definition (what the
    walker descends into where a snapshot does not expand an element).
    """
    if profile.pruned:
        return
    _same_tree(profile.tree, core.tree, datatype, {})
    profile.pruned = True


def _same_tree(ptree: Tree, btree: Tree | None,
               datatype: Callable[[str, tuple[str, ...]], CompiledDefinition | None],
               seen: dict[int, bool]) -> bool:
    """Compare (and mark) ``ptree`` against ``btree``; True if they check the same."""
    known = seen.get(id(ptree))
    if known is not None:
        return known
    seen[id(ptree)] = False  # recursive structures (contentReference): conservatively
    redundant = set()
    same = btree is not None and not ptree.sliced and ptree.keys.keys() == btree.keys.keys()
    for key, (prule, ptrule) in ptree.keys.items():
        entry = btree.keys.get(key) if btree is not None else None
        if entry is None:
            same = False
            continue
        brule, btrule = entry
        content = _same_content(prule, ptrule, brule, btrule, datatype, seen)
        if content and len(prule.types) == 1:
            prule.shallow = True
        if content and _same_constraints(prule, ptrule, brule, btrule):
            redundant.add(key)
        else:
            same = False
    if same and btree is not None:
        same = [r.name for r in ptree.required] == [r.name for r in btree.required]
    ptree.redundant = frozenset(redundant)
    seen[id(ptree)] = same
    return same


def _same_content(prule: ElementRule, ptrule: TypeRule, brule: ElementRule, btrule: TypeRule,
                  datatype: Callable[[str, tuple[str, ...]], CompiledDefinition | None],
                  seen: dict[int, bool]) -> bool:
    if ptrule.code != btrule.code or ptrule.profiles != btrule.profiles:
        return False
    if ptrule.primitive is not None:
        return True
    if prule.children is None:
        return brule.children is None
    base = brule.children
    if base is None:
        found = datatype(btrule.code, btrule.profiles)
        base = found.tree if found is not None else None
    return _same_tree(prule.children, base, datatype, seen)


def _same_constraints(prule: ElementRule, ptrule: TypeRule, brule: ElementRule,
                      btrule: TypeRule) -> bool:
    return (prule.min == brule.min and prule.max == brule.max and prule.array == brule.array
            and prule.types.keys() == brule.types.keys() and ptrule.targets == btrule.targets
            and prule.fixed == brule.fixed and prule.pattern == brule.pattern
            and _binding(prule.binding) == _binding(brule.binding)
            and {(i.key, i.expression) for i in prule.invariants}
            == {(i.key, i.expression) for i in brule.invariants}
            and prule.slicing is None and not prule.slices)


def _binding(binding: Binding | None) -> tuple[str, str] | None:
    return None if binding is None else (binding.strength, binding.value_set)
