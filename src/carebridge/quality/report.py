"""``carebridge quality report``: every current resource validated and checked, summarised.

The report reads the store (keyset pages over the current versions), validates each resource
with the same validator the write path uses, applies the data-quality rules
(:mod:`carebridge.quality.rules`), and looks for likely duplicate patients (below). Issues
are counted by resource type, rule and severity; a few examples per rule say where to look.

Likely duplicates: two Patients with the same normalised name (family and given names,
case and accents folded) and birth date that also share an identifier (system and value) or
an address (first line and postal code). Each write of a Patient is also checked against
the stored Patients with its family name and birth date (services/validation.py); the
report looks across the whole store.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from carebridge.fhir.errors import Issue
from carebridge.fhir.validation import Validator
from carebridge.quality.rules import check_quality
from carebridge.storage.base import Repository

_PAGE = 500
_RULE = re.compile(r"^([a-z][a-z0-9]*(?:-[a-z0-9]+)+):")


@dataclass
class Finding:
    reference: str
    severity: str
    rule: str
    expression: str
    message: str


@dataclass
class QualityReport:
    resources: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # type, rule, sev
    examples: dict[str, list[Finding]] = field(default_factory=lambda: defaultdict(list))
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)  # id, id, why
    recorded: Counter[str] = field(default_factory=Counter)  # type -> versions with warnings


def rule_of(issue: Issue) -> str:
    """The rule an issue comes from: an invariant key (``obs-6``), a data-quality rule
    (``vital-implausible``) or, for schema checks, the issue code (``code-invalid``)."""
    found = _RULE.match(issue.diagnostics)
    return found.group(1) if found else issue.code


def current_resources(repository: Repository) -> Iterator[dict[str, Any]]:
    """Every current (not deleted) resource, in (type, id) order, a page at a time."""
    mark = "?" if repository.dialect == "sqlite" else "%s"
    last: tuple[str, str] = ("", "")
    while True:
        with repository.session() as session:
            rows = session.query(
                f"SELECT resource_type, id, body FROM resource WHERE deleted = FALSE AND "
                f"(resource_type > {mark} OR (resource_type = {mark} AND id > {mark})) "
                f"ORDER BY resource_type, id LIMIT {_PAGE}", (last[0], last[0], last[1]))
        for _rtype, _rid, body in rows:
            yield _json(body)
        if len(rows) < _PAGE:
            return
        last = (rows[-1][0], rows[-1][1])


def recorded_on_write(repository: Repository) -> Counter[str]:
    """Versions stored with warnings (services/validation.py), by resource type."""
    with repository.session() as session:
        rows = session.query("SELECT resource_type, COUNT(*) FROM validation_issue "
                             "GROUP BY resource_type", ())
    return Counter({str(rtype): int(n) for rtype, n in rows})


def _json(body: Any) -> dict[str, Any]:
    if isinstance(body, dict):
        return body
    if isinstance(body, memoryview):
        body = body.tobytes()
    loaded: dict[str, Any] = orjson.loads(body)
    return loaded


def build_report(repository: Repository, validator: Validator | None = None) -> QualityReport:
    validator = validator or Validator()
    report = QualityReport()
    patients: list[dict[str, Any]] = []
    for resource in current_resources(repository):
        rtype = str(resource.get("resourceType"))
        report.resources += 1
        report.by_type[rtype] += 1
        ref = f"{rtype}/{resource.get('id')}"
        issues = [i for i in validator.validate(resource) if i.severity != "information"]
        issues += check_quality(resource)
        for issue in issues:
            rule = rule_of(issue)
            report.counts[(rtype, rule, issue.severity)] += 1
            examples = report.examples[rule]
            if len(examples) < 10:
                examples.append(Finding(ref, issue.severity, rule,
                                        ", ".join(issue.expression), issue.diagnostics))
        if rtype == "Patient":
            patients.append(resource)
    report.recorded = recorded_on_write(repository)
    for first, second, why in likely_duplicates(patients):
        report.duplicates.append((first, second, why))
        report.counts[("Patient", "duplicate-patient", "warning")] += 1
    return report


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", kept.lower()).split())


def _name_keys(patient: dict[str, Any]) -> set[str]:
    keys = set()
    for name in patient.get("name") or ():
        if not isinstance(name, dict):
            continue
        family = _fold(str(name.get("family", "")))
        given = _fold(" ".join(str(g) for g in name.get("given") or ()))
        if family:
            keys.add(f"{family}|{given}")
    return keys


def _identifiers(patient: dict[str, Any]) -> set[str]:
    return {f"{i.get('system')}|{i.get('value')}" for i in patient.get("identifier") or ()
            if isinstance(i, dict) and i.get("value")}


def _addresses(patient: dict[str, Any]) -> set[str]:
    found = set()
    for address in patient.get("address") or ():
        if isinstance(address, dict) and address.get("line"):
            line = _fold(str(address["line"][0]))
            found.add(f"{line}|{_fold(str(address.get('postalCode', '')))}")
    return found


def _why_same(a: dict[str, Any], b: dict[str, Any], name: str, birth: str) -> str:
    """Why two Patients with the same name key and birth date are likely one person ('' if
    they are not: a shared identifier, else a shared address)."""
    shared = _identifiers(a) & _identifiers(b)
    why = f"identifier {sorted(shared)[0]}" if shared else ""
    if not why and _addresses(a) & _addresses(b):
        why = "address"
    if not why:
        return ""
    return f"same name ({name.replace('|', ', ')}), birth date {birth} and {why}"


def likely_duplicates(patients: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Pairs of Patient references that are likely the same person, with the reason."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for patient in patients:
        birth = patient.get("birthDate")
        if not isinstance(birth, str):
            continue
        for key in _name_keys(patient):
            groups[(key, birth)].append(patient)
    pairs: dict[tuple[str, str], str] = {}
    for (name, birth), members in groups.items():
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if a.get("id") == b.get("id"):
                    continue
                why = _why_same(a, b, name, birth)
                if why:
                    first, second = sorted((f"Patient/{a.get('id')}", f"Patient/{b.get('id')}"))
                    pairs.setdefault((first, second), why)
    return [(a, b, why) for (a, b), why in sorted(pairs.items())]


def duplicates_of(patient: dict[str, Any],
                  others: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(reference, reason) of each of ``others`` likely the same person as ``patient``: the
    rule of :func:`likely_duplicates` for one new Patient, linear in ``others`` (a write
    checks itself against its candidates, not every candidate pair)."""
    birth = patient.get("birthDate")
    keys = _name_keys(patient)
    if not isinstance(birth, str) or not keys:
        return []
    found: dict[str, str] = {}
    for other in others:
        if other.get("id") == patient.get("id") or other.get("birthDate") != birth:
            continue
        for name in sorted(keys & _name_keys(other)):
            why = _why_same(patient, other, name, birth)
            if why:
                found.setdefault(f"Patient/{other.get('id')}", why)
                break
    return sorted(found.items())


def render_report(report: QualityReport, console: Console, limit: int = 3) -> None:
    console.print(f"{report.resources} resources checked "
                  f"({len(report.by_type)} resource types)")
    table = Table(title="issues by resource type, rule and severity")
    for column in ("resource type", "rule", "severity", "count"):
        table.add_column(column, justify="right" if column == "count" else "left")
    order = {"fatal": 0, "error": 1, "warning": 2}
    for (rtype, rule, severity), n in sorted(
            report.counts.items(), key=lambda kv: (order.get(kv[0][2], 9), -kv[1], kv[0])):
        table.add_row(rtype, rule, severity, str(n))
    console.print(table)
    if not report.counts:
        console.print("[green]no issues[/]")
    by_severity: Counter[str] = Counter()
    for (_rtype, _rule, severity), n in report.counts.items():
        by_severity[severity] += n
    console.print("totals: " + (", ".join(f"{n} {s}" for s, n in sorted(by_severity.items()))
                                or "none"))
    for rule, findings in sorted(report.examples.items()):
        for finding in findings[:limit]:
            console.print(f"  [{finding.severity}] {rule} {finding.reference} "
                          f"{finding.expression}: {finding.message}", markup=False)
    if report.recorded:
        console.print("versions stored with warnings (kept at write time): " + ", ".join(
            f"{rtype} {n}" for rtype, n in sorted(report.recorded.items())))
    for first, second, why in report.duplicates[: max(limit, 10)]:
        console.print(f"  [warning] duplicate-patient {first} ~ {second}: {why}",
                      markup=False)
