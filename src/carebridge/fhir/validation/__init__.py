"""Validation of FHIR R4 resources against the official StructureDefinitions and profiles.

One interface: :meth:`Validator.validate` takes a parsed resource and returns the
OperationOutcome issues (errors and warnings), each with the FHIRPath ``expression`` of the
element concerned. Definitions are compiled once per resource type, datatype and profile
(:mod:`.model`) and cached; an instance is then checked in one walk (:mod:`.walker`).

Checked: unknown elements, JSON shapes, primitive formats, cardinality at every level, choice
types, fixed values and patterns, slicing of the core profiles, required bindings (errors) and
extensible bindings (warnings, where the code system is known), invariants (FHIRPath),
reference formats and target types, contained resources (dom-2..dom-5) and bundles (each entry,
fullUrl rules). Profiles come from ``meta.profile`` and from the caller; the core profiles are
vendored, others are looked up through a ``profile_source`` (the server's own
StructureDefinitions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from carebridge.fhir import registry
from carebridge.fhir.errors import Issue, Unprocessable
from carebridge.fhir.validation.model import CompiledDefinition, compile_snapshot, prune_profile
from carebridge.fhir.validation.walker import Walker

__all__ = ["InvalidResource", "ProfileSource", "Validator", "errors_of", "raise_for_errors"]

# A StructureDefinition by canonical url, or None; used for profiles the package lacks.
ProfileSource = Callable[[str], dict[str, Any] | None]

_SEVERITY_ORDER = {"fatal": 0, "error": 1, "warning": 2, "information": 3}


class InvalidResource(Unprocessable):
    """422 with every error (and warning) of the validation as OperationOutcome issues.

    :meth:`at` re-anchors all issues from the resource root (``Observation.status``) to a
    place in a bundle (``Bundle.entry[3].resource.status``).
    """

    def at(self, prefix: str) -> InvalidResource:
        issues = [_reanchor(i, prefix) for i in self.issues]
        first = issues[0]
        return InvalidResource(f"{prefix}: {self.message}", first.expression, first.code,
                               issues[1:], self.headers)


def _reanchor(issue: Issue, prefix: str) -> Issue:
    def move(expression: str) -> str:
        if expression.startswith(prefix):
            return expression
        _root, dot, rest = expression.partition(".")
        head = _root.split("[", 1)[0]
        if registry.is_resource_type(head):
            return f"{prefix}.resource" + (dot + rest if dot else "")
        return f"{prefix}.{expression}"
    return Issue(issue.severity, issue.code, issue.diagnostics,
                 tuple(move(e) for e in issue.expression))


def errors_of(issues: Iterable[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity in ("error", "fatal")]


def raise_for_errors(issues: list[Issue]) -> None:
    """Raise :class:`InvalidResource` if any issue is an error (warnings ride along)."""
    errors = errors_of(issues)
    if not errors:
        return
    first = errors[0]
    others = [i for i in issues if i is not first]
    count = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    raise InvalidResource(first.diagnostics + count, first.expression, first.code, others)


class Validator:
    """Compiled definitions (cached) and the :meth:`validate` entry point."""

    def __init__(self, profile_source: ProfileSource | None = None) -> None:
        self.profile_source = profile_source
        self._external: dict[str, tuple[str, CompiledDefinition]] = {}

    # ------------------------------------------------------------------ definitions

    def resource(self, resource_type: str) -> CompiledDefinition | None:
        return _core(resource_type)

    def datatype(self, type_code: str, profiles: tuple[str, ...] = ()) -> (
            CompiledDefinition | None):
        for url in profiles:
            found = _core(url)
            if found is not None:
                return found
        return _core(type_code)

    def profile(self, url: str) -> CompiledDefinition | None:
        """A profile by canonical url: core ones first, then the profile source."""
        url = url.split("|", 1)[0]
        found = _core(url)
        if found is not None or self.profile_source is None:
            return found
        sd = self.profile_source(url)
        if sd is None or "snapshot" not in sd:
            return None
        version = str((sd.get("meta") or {}).get("versionId", "")) + "|" + str(
            sd.get("version", ""))
        cached = self._external.get(url)
        if cached is not None and cached[0] == version:
            return cached[1]
        compiled = compile_snapshot(sd)
        self._external[url] = (version, compiled)
        return compiled

    @staticmethod
    def compile_core() -> None:
        """Compile every core resource type and datatype now rather than on first use."""
        for sd in registry.base_structure_definitions():
            _core(sd["type"])

    def base_definition(self, url: str) -> dict[str, Any] | None:
        """A StructureDefinition to derive from: core, or one the profile source knows."""
        try:
            return registry.structure_definition(url)
        except KeyError:
            return self.profile_source(url) if self.profile_source is not None else None

    def forget(self, url: str) -> None:
        """Drop a cached uploaded profile (after its StructureDefinition changed)."""
        self._external.pop(url.split("|", 1)[0], None)

    # ------------------------------------------------------------------ validation

    def validate(self, resource: Any, *, profiles: Iterable[str] = (),
                 where: str | None = None) -> list[Issue]:
        """All issues of ``resource``: errors first, then warnings and information."""
        if not isinstance(resource, dict):
            return [Issue("error", "structure", "A FHIR resource must be a JSON object",
                          (where or "$this",))]
        rtype = resource.get("resourceType")
        expr = where or (rtype if isinstance(rtype, str) else "$this")
        walker = Walker(self)
        walker.resource(resource, expr)
        if isinstance(rtype, str) and registry.is_resource_type(rtype):
            wanted = list(dict.fromkeys([*_meta_profiles(resource), *profiles]))
            for url in wanted:
                self._check_profile(walker, resource, rtype, url, expr)
        issues = _dedupe(walker.issues)
        issues.sort(key=lambda i: _SEVERITY_ORDER.get(i.severity, 9))
        return issues

    def _check_profile(self, walker: Walker, resource: dict[str, Any], rtype: str, url: str,
                       expr: str) -> None:
        definition = self.profile(url)
        if definition is None:
            walker.issues.append(Issue(
                "information", "not-supported",
                f"Profile {url} is not known to this server, so it was not checked "
                "(upload its StructureDefinition to have it checked)", (f"{expr}.meta.profile",)))
            return
        if definition.type != rtype:
            walker.error("structure", f"Profile {url} is for {definition.type} resources, not "
                         f"{rtype}", f"{expr}.meta.profile")
            return
        if not definition.pruned:
            core = self.resource(rtype)
            if core is not None:
                prune_profile(definition, core, self.datatype)
        walker.profile_note = f" (profile {url})"
        walker.resource(resource, expr, definition)
        walker.profile_note = ""


def _meta_profiles(resource: dict[str, Any]) -> list[str]:
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        return []
    found = meta.get("profile")
    if not isinstance(found, list):
        return []
    return [p for p in found if isinstance(p, str)]


def _dedupe(issues: list[Issue]) -> list[Issue]:
    """A profile repeats its base's checks: report each (code, place, message) once."""
    seen: set[tuple[str, tuple[str, ...], str]] = set()
    out = []
    for issue in issues:
        base_message = issue.diagnostics.split(" (profile ", 1)[0]
        key = (issue.code, issue.expression, base_message)
        if key in seen:
            continue
        seen.add(key)
        out.append(issue)
    return out


@cache
def _core(name_or_url: str) -> CompiledDefinition | None:
    """The compiled core definition of a resource type, datatype or core profile."""
    try:
        sd = registry.structure_definition(name_or_url)
    except KeyError:
        return None
    return compile_snapshot(sd)
