"""The FHIR R4 (4.0.1) definitions vendored in ``carebridge/fhir/definitions/``.

The data files are built from the official HL7 package by ``tools/build_definitions.py`` (see
the README in that folder) and shipped as package data.  Each file is read lazily on first use
and cached for the life of the process, together with the indexes built from it.

Everything returned is shared, cached data: treat the dicts and lists as read-only.  Functions
returning a container of indexes (:func:`search_parameters`, :func:`search_parameters_for`,
:func:`profiles`) return a fresh shallow copy; the definitions inside are shared.

JSON property names follow the FHIR JSON format (http://hl7.org/fhir/R4/json.html): a choice
element ``effective[x]`` appears as ``effectiveDateTime``, ``effectivePeriod``, ... and a
primitive element ``birthDate`` may have a sibling ``_birthDate`` carrying its id/extensions.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import orjson

__all__ = [
    "base_structure_definitions",
    "code_system",
    "compartment_definition",
    "is_resource_type",
    "mandatory_elements",
    "operation_definition",
    "profiles",
    "resource_types",
    "search_parameters",
    "search_parameters_for",
    "structure_definition",
    "summary_elements",
    "top_level_elements",
    "value_set",
]

_FHIRPATH_SYSTEM = "http://hl7.org/fhirpath/System."
_FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
_SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"


# --------------------------------------------------------------------------------------------
# loading


@cache
def _entries(stem: str) -> list[dict[str, Any]]:
    """Read and parse one vendored file (once per process)."""
    path = files("carebridge.fhir") / "definitions" / f"{stem}.json.gz"
    document = orjson.loads(gzip.decompress(path.read_bytes()))
    entries: list[dict[str, Any]] = document["entries"]
    return entries


def _canonical(url: str) -> str:
    """Strip a ``|version`` suffix: only one version of each artifact is vendored."""
    return url.split("|", 1)[0]


@cache
def _resource_index() -> dict[str, dict[str, Any]]:
    """Resource StructureDefinitions by type name (incl. abstract Resource, DomainResource)."""
    return {sd["type"]: sd for sd in _entries("resources")}


@cache
def _type_index() -> dict[str, dict[str, Any]]:
    """Datatype StructureDefinitions by type name (``string``, ``HumanName``, ...)."""
    return {sd["type"]: sd for sd in _entries("types")}


@cache
def _base_url_index() -> dict[str, dict[str, Any]]:
    sds = [*_entries("resources"), *_entries("types")]
    return {sd["url"]: sd for sd in sds}


@cache
def _profile_index() -> dict[str, dict[str, Any]]:
    return {sd["url"]: sd for sd in _entries("profiles")}


@cache
def _search_index() -> dict[str, dict[str, dict[str, Any]]]:
    """Base resource type -> code -> SearchParameter."""
    index: dict[str, dict[str, dict[str, Any]]] = {}
    for sp in _entries("search-parameters"):
        for base in sp.get("base", ()):
            index.setdefault(base, {})[sp["code"]] = sp
    return index


@cache
def _compartment_index() -> dict[str, dict[str, Any]]:
    return {c["code"]: c for c in _entries("compartments")}


@cache
def _terminology_index() -> dict[tuple[str, str], dict[str, Any]]:
    """(resourceType, url) -> ValueSet or CodeSystem."""
    return {(r["resourceType"], r["url"]): r for r in _entries("terminology")}


@cache
def _operation_index() -> dict[str, dict[str, Any]]:
    """OperationDefinitions by canonical url and by id (e.g. ``Patient-everything``)."""
    index: dict[str, dict[str, Any]] = {}
    for op in _entries("operations"):
        index[op["url"]] = op
        index[op["id"]] = op
    return index


# --------------------------------------------------------------------------------------------
# resource types and structure definitions


@cache
def resource_types() -> frozenset[str]:
    """Names of the concrete resource types (146 in R4; not Resource or DomainResource)."""
    return frozenset(t for t, sd in _resource_index().items() if not sd.get("abstract", False))


def is_resource_type(name: str) -> bool:
    """True if ``name`` is a concrete resource type (``Patient``: yes, ``Resource``: no)."""
    return name in resource_types()


def structure_definition(name_or_url: str) -> dict[str, Any]:
    """The StructureDefinition of a resource type, datatype or core profile.

    Accepts a type name (``Patient``, ``HumanName``, ``string``, also the abstract
    ``Resource``, ``DomainResource``, ``Element``, ``BackboneElement``) or a canonical url,
    optionally with ``|version`` (``http://hl7.org/fhir/StructureDefinition/heartrate``).
    Raises :class:`KeyError` if unknown.
    """
    found = _resource_index().get(name_or_url) or _type_index().get(name_or_url)
    if found is not None:
        return found
    url = _canonical(name_or_url)
    if "/" in url:
        found = _base_url_index().get(url) or _profile_index().get(url)
        if found is not None:
            return found
    raise KeyError(f"unknown FHIR R4 StructureDefinition: {name_or_url!r}")


def base_structure_definitions() -> list[dict[str, Any]]:
    """The StructureDefinitions of every resource type and datatype (not the profiles)."""
    return [*_entries("resources"), *_entries("types")]


def profiles() -> dict[str, dict[str, Any]]:
    """The core constraint profiles (vital signs, lipid profile, SimpleQuantity, ...) by url.

    Extension definitions are not vendored.
    """
    return dict(_profile_index())


# --------------------------------------------------------------------------------------------
# top-level JSON properties


@dataclass(frozen=True, slots=True)
class _Element:
    names: frozenset[str]  # JSON property names, choice types expanded, no `_x` siblings
    primitive_names: frozenset[str]  # those of the names that have a primitive type
    min: int
    is_summary: bool


def _type_code(type_ref: dict[str, Any]) -> str:
    """The FHIR type of a type reference (``id`` is System.String with a fhir-type ext)."""
    for ext in type_ref.get("extension", ()):
        if ext.get("url") == _FHIR_TYPE_EXT and "valueUrl" in ext:
            return str(ext["valueUrl"]).removeprefix(_SD_PREFIX)
    return str(type_ref["code"])


def _is_primitive(code: str) -> bool:
    # FHIR primitive type names start with a lower-case letter; complex ones upper-case.
    return code.startswith(_FHIRPATH_SYSTEM) or code[:1].islower()


@cache
def _top_level(resource_type: str) -> tuple[_Element, ...]:
    try:
        sd = _resource_index()[resource_type]
    except KeyError:
        raise KeyError(f"unknown FHIR R4 resource type: {resource_type!r}") from None
    elements: list[_Element] = []
    for element in sd["snapshot"]["element"]:
        path: str = element["path"]
        _root, _, name = path.partition(".")
        if not name or "." in name:
            continue  # the root element, or a nested one
        codes = [_type_code(t) for t in element.get("type", ())]
        names: set[str] = set()
        primitive: set[str] = set()
        if name.endswith("[x]"):
            stem = name.removesuffix("[x]")
            for code in codes:
                json_name = stem + code[:1].upper() + code[1:]
                names.add(json_name)
                if _is_primitive(code):
                    primitive.add(json_name)
        else:
            names.add(name)
            if any(_is_primitive(code) for code in codes):
                primitive.add(name)
        elements.append(
            _Element(
                names=frozenset(names),
                primitive_names=frozenset(primitive),
                min=int(element.get("min", 0)),
                is_summary=bool(element.get("isSummary", False)),
            )
        )
    return tuple(elements)


def _json_names(elements: tuple[_Element, ...] | list[_Element], siblings: bool) -> set[str]:
    names: set[str] = set()
    for element in elements:
        names |= element.names
        if siblings:
            names |= {"_" + n for n in element.primitive_names}
    return names


@cache
def top_level_elements(resource_type: str) -> frozenset[str]:
    """JSON property names allowed at the top level of a resource of this type.

    Choice types are expanded (``deceasedBoolean``, ``deceasedDateTime``, never
    ``deceased[x]``), primitive elements also allow their ``_name`` sibling, and
    ``resourceType`` is included.  Raises :class:`KeyError` for an unknown resource type.
    """
    return frozenset(_json_names(_top_level(resource_type), siblings=True) | {"resourceType"})


@cache
def summary_elements(resource_type: str) -> frozenset[str]:
    """JSON property names kept by ``_summary=true`` (http://hl7.org/fhir/R4/search.html#summary).

    The top-level elements marked isSummary in the base definition (expanded like
    :func:`top_level_elements`, ``_x`` siblings included), plus ``resourceType``, ``id`` and
    ``meta``.  Raises :class:`KeyError` for an unknown resource type.
    """
    summary = [e for e in _top_level(resource_type) if e.is_summary]
    return frozenset(_json_names(summary, siblings=True) | {"resourceType", "id", "meta"})


@cache
def mandatory_elements(resource_type: str) -> frozenset[str]:
    """JSON property names of the top-level elements with min >= 1.

    Choice elements are expanded to every allowed name: *one* of them must be present (e.g.
    MedicationRequest ``medicationCodeableConcept`` or ``medicationReference``).  ``_x``
    siblings are not listed.  Raises :class:`KeyError` for an unknown resource type.
    """
    required = [e for e in _top_level(resource_type) if e.min >= 1]
    return frozenset(_json_names(required, siblings=False))


# --------------------------------------------------------------------------------------------
# search parameters and compartments


def search_parameters() -> list[dict[str, Any]]:
    """All vendored core SearchParameters (1375), sorted by url."""
    return list(_entries("search-parameters"))


@cache
def _search_parameters_for(resource_type: str) -> dict[str, dict[str, Any]]:
    if resource_type not in _resource_index():
        raise KeyError(f"unknown FHIR R4 resource type: {resource_type!r}")
    index = _search_index()
    merged: dict[str, dict[str, Any]] = {}
    for base in reversed(_ancestry(resource_type)):  # most specific last: it wins
        merged.update(index.get(base, {}))
    return merged


@cache
def _ancestry(resource_type: str) -> tuple[str, ...]:
    """The type and its bases, e.g. (Patient, DomainResource, Resource); (Bundle, Resource)."""
    chain = [resource_type]
    sd = _resource_index()[resource_type]
    while base_url := sd.get("baseDefinition"):
        sd = _base_url_index()[base_url]
        chain.append(sd["type"])
    return tuple(chain)


def search_parameters_for(resource_type: str) -> dict[str, dict[str, Any]]:
    """Search parameter code -> SearchParameter applicable to a resource type.

    Includes the ones defined on Resource (``_id``, ``_lastUpdated``, ``_tag``, ``_profile``,
    ``_security``, ``_source``, ``_content``, ``_query``) and, for types derived from
    DomainResource (all but Bundle, Binary, Parameters), ``_text``.  Raises :class:`KeyError`
    for an unknown resource type.
    """
    return dict(_search_parameters_for(resource_type))


def compartment_definition(code: str) -> dict[str, Any]:
    """The CompartmentDefinition for a compartment type (``Patient``, ``Encounter``,
    ``RelatedPerson``, ``Practitioner``, ``Device``).  Raises :class:`KeyError` if unknown."""
    try:
        return _compartment_index()[code]
    except KeyError:
        raise KeyError(f"unknown FHIR R4 compartment: {code!r}") from None


# --------------------------------------------------------------------------------------------
# terminology and operations


def value_set(url: str) -> dict[str, Any]:
    """A ValueSet of a required binding (or included by one), by canonical url.

    A ``|version`` suffix is accepted and ignored.  Raises :class:`KeyError` if not vendored.
    """
    try:
        return _terminology_index()[("ValueSet", _canonical(url))]
    except KeyError:
        raise KeyError(f"ValueSet not vendored: {url!r}") from None


def code_system(url: str) -> dict[str, Any]:
    """A CodeSystem used by a vendored ValueSet, by canonical url (``|version`` ignored).

    Raises :class:`KeyError` if not vendored (e.g. LOINC, UCUM, BCP-13, ISO 4217).
    """
    try:
        return _terminology_index()[("CodeSystem", _canonical(url))]
    except KeyError:
        raise KeyError(f"CodeSystem not vendored: {url!r}") from None


def operation_definition(name_or_url: str) -> dict[str, Any]:
    """An OperationDefinition by canonical url (``|version`` ignored) or by id, e.g.
    ``Patient-everything`` or ``Resource-validate``.  Raises :class:`KeyError` if unknown."""
    index = _operation_index()
    found = index.get(name_or_url) or index.get(_canonical(name_or_url))
    if found is None:
        raise KeyError(f"unknown FHIR R4 OperationDefinition: {name_or_url!r}")
    return found
