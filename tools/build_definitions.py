"""Build the vendored FHIR R4 definitions from the official HL7 package.

Usage (from the repository root)::

    python tools/build_definitions.py [PATH_TO_TGZ] [--out DIR]

PATH_TO_TGZ defaults to ``../shared/fhir-r4/hl7.fhir.r4.examples-4.0.1.tgz`` (relative to the
repository root) and DIR to ``src/carebridge/fhir/definitions``.  The package is read in place
with :mod:`tarfile`; nothing is extracted to disk.  Only the standard library is used.

The output is deterministic: entries are sorted, JSON keys are sorted, and the gzip header
carries no file name and ``mtime=0``, so rerunning the script on the same package (with the
same zlib) produces byte-identical files.  See the generated ``README.md`` in the output folder
for what each file holds.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TGZ = REPO_ROOT / ".." / "shared" / "fhir-r4" / "hl7.fhir.r4.examples-4.0.1.tgz"
DEFAULT_OUT = REPO_ROOT / "src" / "carebridge" / "fhir" / "definitions"

FHIR_VERSION = "4.0.1"

Json = dict[str, Any]

# Only these kinds of conformance resources are read; example instances are never parsed.
WANTED_PREFIXES = (
    "StructureDefinition-",
    "SearchParameter-",
    "ValueSet-",
    "CodeSystem-",
    "CompartmentDefinition-",
    "OperationDefinition-",
)

# The core search parameters all carry this extension (standards status); the handful without
# it are examples (e.g. a second `_id` on Resource, a bogus `part-agree` on Patient) and
# parameters published alongside individual extensions, several of them lacking `base` or
# `expression`.  Only the core set is vendored.
STANDARDS_STATUS = "http://hl7.org/fhir/StructureDefinition/structuredefinition-standards-status"

# Prose that no machine needs.
DROP_TOP_LEVEL = frozenset(
    {"text", "mapping", "differential", "contact", "description", "purpose", "copyright"}
)
DROP_ELEMENT = frozenset(
    {
        "definition",
        "comment",
        "requirements",
        "alias",
        "mapping",
        "example",
        "meaningWhenMissing",
        "orderMeaning",
        "isModifierReason",
    }
)
DROP_CONSTRAINT = frozenset({"xpath", "requirements"})
KEEP_BINDING = frozenset({"strength", "valueSet"})
KEEP_CONCEPT = frozenset({"code", "display", "concept", "property"})
DROP_EXTENSION_URLS = frozenset(
    {"http://hl7.org/fhir/StructureDefinition/elementdefinition-bestpractice-explanation"}
)


# --------------------------------------------------------------------------------------------
# reading


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_package(path: Path) -> tuple[Json, list[tuple[str, Json]]]:
    """Return package.json and (file name, parsed JSON) of the wanted resources, by name.

    The archive is read in a single streaming pass (seeking in a gzip stream is slow).
    """
    manifest: Json | None = None
    found: list[tuple[str, Json]] = []
    with tarfile.open(path, mode="r|gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.startswith("package/"):
                continue
            name = member.name.removeprefix("package/")
            if "/" in name or not name.endswith(".json"):
                continue
            if name != "package.json" and not name.startswith(WANTED_PREFIXES):
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            data = json.loads(fh.read())
            if name == "package.json":
                manifest = data
            else:
                found.append((name, data))
    if manifest is None:
        raise SystemExit(f"{path}: no package/package.json, not an NPM FHIR package")
    found.sort(key=lambda item: item[0])
    return manifest, found


# --------------------------------------------------------------------------------------------
# stripping


def strip_extensions(value: Any) -> Any:
    """Recursively drop extensions that only carry prose."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "extension" and isinstance(item, list):
                kept = [e for e in item if e.get("url") not in DROP_EXTENSION_URLS]
                if kept:
                    out[key] = [strip_extensions(e) for e in kept]
            else:
                out[key] = strip_extensions(item)
        return out
    if isinstance(value, list):
        return [strip_extensions(v) for v in value]
    return value


def strip_top_level(resource: Json, extra: Iterable[str] = ()) -> Json:
    drop = DROP_TOP_LEVEL | frozenset(extra)
    return {k: v for k, v in resource.items() if k not in drop}


def strip_element(element: Json) -> Json:
    out = {k: v for k, v in element.items() if k not in DROP_ELEMENT}
    if "constraint" in out:
        out["constraint"] = [
            {k: v for k, v in c.items() if k not in DROP_CONSTRAINT} for c in out["constraint"]
        ]
    if "binding" in out:
        out["binding"] = {k: v for k, v in out["binding"].items() if k in KEEP_BINDING}
    return out


def strip_structure_definition(sd: Json) -> Json:
    out = strip_top_level(sd)
    out["snapshot"] = {"element": [strip_element(e) for e in sd["snapshot"]["element"]]}
    result: Json = strip_extensions(out)
    return result


def strip_concepts(concepts: list[Json]) -> list[Json]:
    out = []
    for concept in concepts:
        kept = {k: v for k, v in concept.items() if k in KEEP_CONCEPT}
        if "concept" in kept:
            kept["concept"] = strip_concepts(kept["concept"])
        out.append(kept)
    return out


def strip_code_system(cs: Json) -> Json:
    out = strip_top_level(cs)
    if "concept" in out:
        out["concept"] = strip_concepts(out["concept"])
    return out


def strip_value_set(vs: Json) -> Json:
    return strip_top_level(vs)


def strip_search_parameter(sp: Json) -> Json:
    return {k: v for k, v in sp.items() if k not in {"description", "text", "contact"}}


# --------------------------------------------------------------------------------------------
# selection


def canonical(url: str) -> str:
    """Strip a `|version` suffix from a canonical reference."""
    return url.split("|", 1)[0]


def is_example(resource: Json) -> bool:
    rid = str(resource.get("id", ""))
    return rid == "example" or rid.startswith("example-")


def select(files: list[tuple[str, Json]]) -> tuple[dict[str, list[Json]], dict[str, Any]]:
    """Return (output file stem -> entries, notes about what was skipped)."""
    sds: list[Json] = []
    search_params: list[Json] = []
    value_sets: dict[str, Json] = {}
    code_systems: dict[str, Json] = {}
    compartments: list[Json] = []
    operations: list[Json] = []
    skipped: dict[str, list[str]] = {
        "StructureDefinition": [],
        "SearchParameter": [],
        "CompartmentDefinition": [],
        "OperationDefinition": [],
    }

    for name, resource in files:
        rtype = resource.get("resourceType")
        if rtype == "StructureDefinition":
            sds.append(resource)
        elif rtype == "SearchParameter":
            if any(e.get("url") == STANDARDS_STATUS for e in resource.get("extension", [])):
                search_params.append(resource)
            else:
                skipped["SearchParameter"].append(resource["id"])
        elif rtype == "ValueSet":
            value_sets[resource["url"]] = resource
        elif rtype == "CodeSystem":
            code_systems[resource["url"]] = resource
        elif rtype == "CompartmentDefinition":
            if is_example(resource):
                skipped["CompartmentDefinition"].append(resource["id"])
            else:
                compartments.append(resource)
        elif rtype == "OperationDefinition":
            if is_example(resource):
                skipped["OperationDefinition"].append(resource["id"])
            else:
                operations.append(resource)
        else:  # pragma: no cover - file name prefix and resourceType disagree
            raise ValueError(f"{name}: unexpected resourceType {rtype!r}")

    resources: list[Json] = []
    types: list[Json] = []
    profiles: list[Json] = []
    for sd in sds:
        kind = sd.get("kind")
        derivation = sd.get("derivation")
        if "snapshot" not in sd or kind == "logical":
            skipped["StructureDefinition"].append(sd["id"])
        elif derivation == "constraint":
            if sd["type"] != "Extension":
                profiles.append(sd)
        elif kind == "resource":
            resources.append(sd)  # incl. Resource (no derivation) and DomainResource (abstract)
        elif kind in ("primitive-type", "complex-type"):
            types.append(sd)  # incl. Element (no derivation) and BackboneElement (abstract)
        else:  # pragma: no cover
            skipped["StructureDefinition"].append(sd["id"])

    # Dedupe search parameters by url (the package has no duplicates, but be safe).
    by_url: dict[str, Json] = {}
    for sp in search_params:
        by_url.setdefault(sp["url"], sp)
    search_params = list(by_url.values())

    # Terminology: ValueSets of required, extensible and preferred bindings, transitively
    # included ValueSets, and the CodeSystems they draw from, when the package has them.
    required: set[str] = set()
    for sd in resources + types + profiles:
        for element in sd["snapshot"]["element"]:
            binding = element.get("binding")
            # Required bindings are errors, extensible and preferred ones warnings (the
            # validator's rules).
            if binding and binding.get("strength") in (
                    "required", "extensible", "preferred") and "valueSet" in binding:
                required.add(canonical(binding["valueSet"]))
    wanted_vs: set[str] = set()
    missing_vs: set[str] = set()
    systems: set[str] = set()
    stack = sorted(required)
    while stack:
        url = stack.pop()
        if url in wanted_vs or url in missing_vs:
            continue
        vs = value_sets.get(url)
        if vs is None:
            missing_vs.add(url)
            continue
        wanted_vs.add(url)
        for part in ("include", "exclude"):
            for inc in vs.get("compose", {}).get(part, []):
                stack.extend(canonical(v) for v in inc.get("valueSet", []))
                if "system" in inc:
                    systems.add(canonical(inc["system"]))
        for contained in vs.get("expansion", {}).get("contains", []):
            if "system" in contained:
                systems.add(canonical(contained["system"]))
    terminology = [strip_value_set(value_sets[u]) for u in wanted_vs]
    terminology += [strip_code_system(code_systems[s]) for s in systems if s in code_systems]

    def by_url_key(r: Json) -> tuple[str, str]:
        return (r["resourceType"], r["url"])

    outputs = {
        "resources": sorted((strip_structure_definition(sd) for sd in resources), key=by_url_key),
        "types": sorted((strip_structure_definition(sd) for sd in types), key=by_url_key),
        "profiles": sorted((strip_structure_definition(sd) for sd in profiles), key=by_url_key),
        "search-parameters": sorted(
            (strip_search_parameter(sp) for sp in search_params), key=by_url_key
        ),
        "compartments": sorted((strip_top_level(c) for c in compartments), key=by_url_key),
        "terminology": sorted(terminology, key=by_url_key),
        "operations": sorted((strip_top_level(o) for o in operations), key=by_url_key),
    }
    notes = {
        "skipped": {k: sorted(v) for k, v in skipped.items()},
        "required_value_sets_missing": sorted(missing_vs),
        "code_systems_missing": sorted(s for s in systems if s not in code_systems),
        "extension_definitions_skipped": sum(
            1 for sd in sds if sd.get("derivation") == "constraint" and sd["type"] == "Extension"
        ),
    }
    return outputs, notes


# --------------------------------------------------------------------------------------------
# writing


def encode(payload: Any) -> bytes:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    raw = text.encode("utf-8")
    buf = io.BytesIO()
    # No file name in the header and mtime=0: the bytes depend only on the content.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    return buf.getvalue()


FILE_DESCRIPTIONS = {
    "resources": (
        "StructureDefinitions (snapshot) of every resource type: the 146 concrete ones plus "
        "the abstract bases Resource and DomainResource."
    ),
    "types": (
        "StructureDefinitions (snapshot) of all datatypes: primitive and complex types, "
        "including Element, BackboneElement, Extension, Reference, Meta, Narrative, "
        "ElementDefinition."
    ),
    "profiles": (
        "Constraint StructureDefinitions of the core spec on resources and datatypes (vital "
        "signs, lipid profile, genetics, shareable*, SimpleQuantity, MoneyQuantity, ...). "
        "Extension definitions are not included."
    ),
    "search-parameters": (
        "The core SearchParameters (the ones carrying the standards-status extension), "
        "including the Resource/DomainResource ones (_id, _lastUpdated, _tag, ...)."
    ),
    "compartments": "The CompartmentDefinitions (Patient, Encounter, RelatedPerson, ...).",
    "terminology": (
        "ValueSets referenced by required, extensible and preferred bindings of the "
        "StructureDefinitions above, the "
        "ValueSets they include (transitively), and the CodeSystems they draw codes from "
        "where the package has them."
    ),
    "operations": "The OperationDefinitions of the core spec ($everything, $validate, ...).",
}


def readme(
    package: Path,
    sha256: str,
    pkg: Json,
    outputs: dict[str, list[Json]],
    notes: Json,
    sizes: dict[str, int],
) -> str:
    lines = [
        "# Vendored FHIR R4 definitions",
        "",
        "Generated by `tools/build_definitions.py`; do not edit by hand.",
        "",
        "## Source",
        "",
        f"- Package: `{pkg.get('name')}` version `{pkg.get('version')}` "
        f"(FHIR {', '.join(pkg.get('fhirVersions', []))}), the official HL7 FHIR R4 package "
        f"(license {pkg.get('license')}, i.e. public domain dedication), "
        f"<{pkg.get('url')}>.",
        f"- File: `{package.name}`",
        f"- SHA-256: `{sha256}`",
        "",
        "## Rebuild",
        "",
        "From the repository root (output is byte-identical for the same package):",
        "",
        "```sh",
        "python tools/build_definitions.py ../shared/fhir-r4/hl7.fhir.r4.examples-4.0.1.tgz",
        "```",
        "",
        "(or `make definitions`).",
        "",
        "## Files",
        "",
        "Each file is gzip-compressed UTF-8 JSON: an object with `source` (package name, "
        "version, sha256) and `entries`, a list of FHIR resources sorted by "
        "(resourceType, url). They are read lazily by `carebridge.fhir.registry`.",
        "",
        "| File | Entries | Bytes | Contents |",
        "| --- | ---: | ---: | --- |",
    ]
    for stem, entries in outputs.items():
        lines.append(
            f"| `{stem}.json.gz` | {len(entries)} | {sizes[stem]} | {FILE_DESCRIPTIONS[stem]} |"
        )
    skipped = notes["skipped"]
    lines += [
        "",
        "## What was stripped",
        "",
        "Narrative and prose no machine needs: `text`, `mapping`, `differential` (the "
        "`snapshot` is kept), `contact`, `description`, `purpose`, `copyright`; in element "
        "definitions `definition`, `comment`, `requirements`, `alias`, `mapping`, `example`, "
        "`meaningWhenMissing`, `orderMeaning`, `isModifierReason`, constraint `xpath`, and "
        "binding `description` and extensions (only `strength` and `valueSet` are kept); "
        "best-practice explanation extensions; in CodeSystem concepts everything but `code`, "
        "`display`, `property` and child `concept`s. The served resources are therefore not "
        "the complete published ones.",
        "",
        "## What was left out",
        "",
        f"- {notes['extension_definitions_skipped']} extension definitions "
        "(StructureDefinitions with type Extension and derivation constraint).",
        "- StructureDefinitions that are logical models or have no snapshot: "
        + ", ".join(f"`{s}`" for s in skipped["StructureDefinition"])
        + ".",
        "- SearchParameters without the standards-status extension (examples and parameters "
        "published with individual extensions, some lacking `base` or `expression`): "
        + ", ".join(f"`{s}`" for s in skipped["SearchParameter"])
        + ".",
        "- Example CompartmentDefinitions / OperationDefinitions: "
        + ", ".join(
            [f"`CompartmentDefinition/{s}`" for s in skipped["CompartmentDefinition"]]
            + [f"`OperationDefinition/{s}`" for s in skipped["OperationDefinition"]]
        )
        + ".",
        "- Required/extensible/preferred-binding ValueSets not in the package: "
        + ", ".join(f"`{s}`" for s in notes["required_value_sets_missing"])
        + ".",
        "- CodeSystems not in the package (external terminologies): "
        + ", ".join(f"`{s}`" for s in notes["code_systems_missing"])
        + ".",
        "",
    ]
    return "\n".join(lines)


def build(package: Path, out_dir: Path) -> dict[str, tuple[int, int]]:
    """Build all files into out_dir; return stem -> (entries, compressed bytes)."""
    sha256 = sha256_of(package)
    pkg, files = read_package(package)
    if pkg.get("version") != FHIR_VERSION:
        raise SystemExit(f"expected a FHIR {FHIR_VERSION} package, got {pkg.get('version')}")
    outputs, notes = select(files)
    source = {"package": pkg.get("name"), "version": pkg.get("version"), "sha256": sha256}
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    summary: dict[str, tuple[int, int]] = {}
    for stem, entries in outputs.items():
        data = encode({"source": source, "entries": entries})
        (out_dir / f"{stem}.json.gz").write_bytes(data)
        sizes[stem] = len(data)
        summary[stem] = (len(entries), len(data))
    text = readme(package, sha256, pkg, outputs, notes, sizes)
    (out_dir / "README.md").write_text(text, encoding="utf-8", newline="\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", nargs="?", default=str(DEFAULT_TGZ), help="FHIR R4 .tgz")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    args = parser.parse_args(argv)
    package = Path(args.package)
    if not package.is_absolute() and not package.exists():
        package = REPO_ROOT / package  # allow paths relative to the repository root
    out_dir = Path(args.out)
    summary = build(package, out_dir)
    total = 0
    print(f"{'file':<26} {'entries':>8} {'bytes':>10}")
    for stem, (count, size) in summary.items():
        total += size
        print(f"{stem + '.json.gz':<26} {count:>8} {size:>10}")
    print(f"{'total':<26} {'':>8} {total:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
