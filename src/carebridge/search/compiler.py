"""Compile parsed search criteria to SQL on the index tables, for SQLite or PostgreSQL.

Each criterion has two forms, and search.planner picks which one each criterion takes: the
resources it matches (``ids``/``driver``: ``SELECT i.rid FROM idx_<type> i WHERE i.pid = ?
AND ...``), to lead a join; and a check on one resource (``exists``: a correlated ``EXISTS``
on that resource's own index rows, found by its number). Index rows name their resource by
number (``rid``) and their (type, parameter) pair by number (``pid``, search.params); chains
nest the numbers of the referenced type and map them to ids (references name their target
by type and id), ``_has`` those of the referring type. The two dialects differ in the
parameter mark and in how a resource's own rows are found (``own``), so one generator serves
both.

Comparison semantics (http://hl7.org/fhir/R4/search.html#prefix): a date value and a date
parameter are both ranges; ``eq`` means the resource's range lies within the parameter's,
``gt`` that some of it lies after, ``sa`` that all of it does, and so on. Numbers and
quantities compare the resource's value with the parameter's implicit precision range.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from carebridge.fhir.errors import BadRequest
from carebridge.search import terminology
from carebridge.search.aliases import restricted, stored_as
from carebridge.search.index import canonical, micros
from carebridge.search.params import pid, pids, types_of
from carebridge.search.query import Criterion, Value
from carebridge.search.values import normalize_string
from carebridge.storage.sql import rows_of

_TABLE = {
    "string": "idx_string", "token": "idx_token", "date": "idx_date", "number": "idx_number",
    "quantity": "idx_quantity", "reference": "idx_reference", "uri": "idx_uri",
    "composite": "idx_composite",
}
_TOP = "\U0010ffff"  # sorts after every other character: the end of a prefix range


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _uri_parents(uri: str) -> list[str]:
    """``uri`` and the URLs above it, path segment by segment, with and without the trailing
    slash (search.html#uri, ``:above``); a URN has no hierarchy, so only itself."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return [uri]
    parts = rest.split("/")
    found = [uri]
    for n in range(len(parts), 0, -1):
        head = f"{scheme}://{'/'.join(parts[:n])}".rstrip("/")
        found += [head, f"{head}/"]
    return list(dict.fromkeys(found))


_SLOT = re.compile("\x00(\\d+)\x00")


class Compiler:
    """Builds SQL text with its parameters; ``mark`` is ``?`` (SQLite) or ``%s``.

    :meth:`p` returns a numbered slot rather than the mark itself, so fragments may be built
    in any order; :meth:`finish` puts the marks in and orders the parameters as the text
    uses them.
    """

    def __init__(self, mark: str, *, per_row: bool = False) -> None:
        self.mark = mark
        self._values: list[Any] = []
        # PostgreSQL turns a correlated EXISTS into a semi-join and, misjudging how few rows
        # a range or a probed criterion leaves, may hash every row of the other criterion
        # (280,000 lab results to check 1,300 candidates). ``per_row`` keeps each check a
        # per-row index probe: an OFFSET in the subquery stops the pull-up (PostgreSQL's
        # simplify_EXISTS_query keeps it as a fence). For pages, whose walks stop early, and
        # for drivers the planner counted to be few.
        self._fence = " OFFSET 0" if per_row and mark == "%s" else ""

    def p(self, value: Any) -> str:
        self._values.append(value)
        return f"\x00{len(self._values) - 1}\x00"

    def finish(self, sql: str) -> tuple[str, list[Any]]:
        params = [self._values[int(n)] for n in _SLOT.findall(sql)]
        return _SLOT.sub(lambda _: self.mark, sql), params

    def marks(self, values: list[Any] | set[Any] | tuple[Any, ...]) -> str:
        return ", ".join(self.p(v) for v in values)

    # ------------------------------------------------------------------ criteria
    #
    # ``types`` is the scope of a condition: the resource types searched (never empty; a
    # system search without _type passes every type). Index rows name their resource by
    # number (``rid``) and their (type, parameter) pair by number (``pid``,
    # search.params), so naming the parameters' numbers for the searched types also scopes
    # the rows to those types; every look-up index starts with ``pid``.

    def own(self, alias: str, rows: str = "i") -> str:
        """The index rows (alias ``rows``) of the resource ``alias`` (anything with a
        ``rid`` column): on SQLite a range of the index table's rowids (rid * 2**24 + n,
        migration 0011), on PostgreSQL its (rid, pid) index."""
        return rows_of(rows, alias, self.mark == "?")

    def owned(self, table: str, rows: str = "i") -> str:
        """``table`` (alias ``rows``) in a FROM clause whose rows are found by :meth:`own`.
        On SQLite ``NOT INDEXED``: its planner would otherwise take a look-up index that
        starts with ``pid`` (every row of the parameter, per candidate) over the rowid
        range of the one resource (rowid ranges stay usable; 720 -> 1.5 ms for a two-sided
        date range checked on 1,300 encounters at 20k resources)."""
        return f"{table} {rows} NOT INDEXED" if self.mark == "?" else f"{table} {rows}"

    def exists(self, criterion: Criterion, alias: str = "r", row: str = "r",
               types: tuple[str, ...] = ()) -> str:
        """The criterion as a check on one resource: ``alias`` has its ``rid`` (a row of
        ``resource``, a leading criterion's row or an index row), ``row`` is its row of
        ``resource`` (for its type and id). A correlated ``EXISTS`` on the resource's own
        index rows, so its cost is a few index probes per candidate row, whatever the number
        of resources that match it elsewhere (``r.rid IN (...)`` would build the whole
        list). ``types``: the types the resource may have (every type the parameter
        applies to when empty)."""
        negate = criterion.modifier in ("not", "not-in")
        own = f"{self.own(alias)} AND {self.param_code(criterion.code, types)}"
        fence = self._fence
        if criterion.modifier == "missing":
            table = _TABLE.get(criterion.type, "idx_token")
            present = f"EXISTS (SELECT 1 FROM {self.owned(table)} WHERE {own}{fence})"
            return f"NOT {present}" if criterion.values[0].raw == "true" else present
        if criterion.code == "_id" and criterion.chain is None:
            ids = [v.code for v in criterion.values if v.code]
            cond = f"{row}.id IN ({self.marks(ids)})"
            return f"NOT ({cond})" if negate else cond
        if criterion.has is not None:
            source, ref_code, inner = criterion.has
            found = (f"EXISTS (SELECT 1 FROM idx_reference i WHERE i.target_id = {row}.id"
                     f" AND i.target_type = {row}.resource_type"
                     f" AND {self.param_code(ref_code, (source,))}"
                     f" AND i.rid IN ({self.condition_ids(source, inner)}){fence})")
        elif criterion.code == "_list":
            found = (f"EXISTS (SELECT 1 FROM idx_reference i WHERE i.target_id = {row}.id"
                     f" AND i.target_type = {row}.resource_type"
                     f" AND i.pid = {pid('List', 'item')}"
                     f" AND i.rid IN ({self._lists(criterion)}){fence})")
        elif criterion.chain is not None:
            found = (f"EXISTS (SELECT 1 FROM {self.owned('idx_reference')} WHERE {own}"
                     f" AND ({self._chain_branches(criterion, hashed=True)}){fence})")
        else:
            ors = " OR ".join(self._value(criterion, v) for v in criterion.values)
            found = (f"EXISTS (SELECT 1 FROM {self.owned(_TABLE[criterion.type])} WHERE {own}"
                     f" AND ({ors}){fence})")
        return f"NOT {found}" if negate else found

    def _lists(self, criterion: Criterion) -> str:
        """The numbers of the Lists a ``_list`` criterion names (search.html#list)."""
        return (f"SELECT c.rid FROM resource c WHERE c.resource_type = 'List'"
                f" AND c.id IN ({self.marks([v.raw for v in criterion.values])})")

    def driver(self, types: tuple[str, ...], criterion: Criterion, *same_row: Criterion,
               distinct: bool = True) -> str:
        """A subquery of the distinct ``rid`` of the resources matching a positive
        criterion, to lead a join: only current resources have index rows. Without
        ``distinct`` a resource may come once per matching index row."""
        if criterion.code == "_id" and criterion.chain is None:
            ids = [v.code for v in criterion.values if v.code]
            scope = self.scope(types, "c.resource_type")
            return (f"SELECT c.rid FROM resource c WHERE {scope}"
                    f" AND c.id IN ({self.marks(ids)}) AND NOT c.deleted")
        inner = self.ids(types, criterion, *same_row)
        unique = "DISTINCT " if distinct else ""
        return f"SELECT {unique}d.rid FROM ({inner}) d"

    def param_code(self, code: str, types: Iterable[str], column: str = "i.pid") -> str:
        """``column`` naming the rows that answer ``code`` on ``types`` (every type it
        applies to when ``types`` is empty): its own, those of the parameters it unites,
        or, for a restricted alias, those of the parameter it narrows whose target has the
        type (search.aliases; the other columns of the row are read through the alias of
        ``column``'s table)."""
        types = tuple(types) or types_of(code)
        narrowed: dict[tuple[str, str], list[str]] = {}
        plain: list[str] = []
        for rtype in types:
            alias = restricted(rtype).get(code)
            if alias is None:
                plain.append(rtype)
            else:
                narrowed.setdefault(alias, []).append(rtype)
        parts = []
        if plain:
            numbers = sorted({n for rtype in plain
                              for name in stored_as(code, (rtype,)) for n in pids(name, (rtype,))})
            if numbers:
                parts.append(self.numbers(column, numbers))
        table = column.rsplit(".", 1)[0]
        for (stored, target), owners in narrowed.items():
            numbers = sorted(pids(stored, owners))
            parts.append(f"{self.numbers(column, numbers)} AND {table}.target_type = "
                         f"{self.p(target)}")
        if not parts:
            return "1 = 0"
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(
            f"({part})" for part in parts) + ")"

    @staticmethod
    def numbers(column: str, values: list[int]) -> str:
        """``column`` equal to one of parameter numbers ``values``, written as literals (our
        own integers): psycopg would send a small one as ``smallint``, for which the
        btree_gist ``integer`` class of PostgreSQL's date span index has no operator, so
        the index would not use it (every date row of the range, whatever its parameter)."""
        if len(values) == 1:
            return f"{column} = {int(values[0])}"
        return f"{column} IN ({', '.join(str(int(v)) for v in values)})"

    def _in(self, column: str, values: list[Any]) -> str:
        if len(values) == 1:
            return f"{column} = {self.p(values[0])}"
        return f"{column} IN ({self.marks(values)})"

    def scope(self, types: tuple[str, ...], column: str = "r.resource_type") -> str:
        """``column`` (a resource's type) restricted to the searched types."""
        return self._in(column, list(types))

    def ids(self, types: tuple[str, ...], criterion: Criterion, *same_row: Criterion) -> str:
        """A subquery selecting the numbers (``rid``) of resources whose values match the
        criterion (ignoring ``:not``/``:not-in``, which the caller applies); ``same_row``
        criteria on the same parameter must hold for the same index row (search.planner
        does this for a single-valued parameter only)."""
        if criterion.has is not None:
            return self._has(types, criterion)
        if criterion.code == "_list":
            # search.html#list: the resources a List refers to in its items
            return self._targets(types, self._lists(criterion),
                                 f"i.pid = {pid('List', 'item')}")
        if criterion.chain is not None:
            return self._chain(types, criterion)
        table = _TABLE[criterion.type]
        conds = "".join(
            f" AND ({' OR '.join(self._value(c, v) for v in c.values)})"
            for c in (criterion, *same_row))
        if same_row and criterion.type == "date" and self.mark == "%s":
            conds += self._span((criterion, *same_row))
        return (f"SELECT i.rid FROM {table} i"
                f" WHERE {self.param_code(criterion.code, types)}{conds}")

    def _targets(self, types: tuple[str, ...], sources: str, which: str) -> str:
        """The numbers of the resources of ``types`` that the ``which`` reference rows of
        the resources ``sources`` (a subquery of rids) point to (``_has``, ``_list``):
        reference rows name their target by type and id, which may not exist (yet) or be
        deleted (NULL then).

        The target is a correlated look-up, not a join: SQLite (3.38+) would build a Bloom
        filter for a joined ``resource`` by reading every row of the type first (a
        ``_has`` on 841 Conditions at 1M resources: 1,580 ms against 10 ms)."""
        return (f"SELECT (SELECT t.rid FROM resource t WHERE t.resource_type = i.target_type"
                f" AND t.id = i.target_id AND NOT t.deleted) AS rid"
                f" FROM ({sources}) s CROSS JOIN idx_reference i"
                f" WHERE {self.own('s')} AND {which} AND {self.scope(types, 'i.target_type')}")

    def _span(self, criteria: tuple[Criterion, ...]) -> str:
        """PostgreSQL: AND-ed date ranges met by one index row, as the span that row must
        overlap (migration 0009's GiST index on ``int8range(low, high)``). Implied by the
        prefixes' own conditions (search.html#prefix; low <= high), so it changes no result:
        ge/gt/sa bound it below, le/lt/eb above, eq on both sides."""
        lower: int | None = None
        upper: int | None = None
        for c in criteria:
            (value,) = c.values
            assert value.start is not None and value.end is not None
            qlo, qhi = micros(value.start), micros(value.end)
            below = {"ge": qlo, "gt": qhi + 1, "sa": qhi + 1, "eq": qlo}.get(value.prefix)
            above = {"le": qhi, "lt": qlo - 1, "eb": qlo - 1, "eq": qhi}.get(value.prefix)
            if below is None and above is None:
                return ""  # ne, ap: no span to add
            if below is not None:
                lower = below if lower is None else max(lower, below)
            if above is not None:
                upper = above if upper is None else min(upper, above)
        if lower is not None and upper is not None and lower > upper:
            # h >= lower and l <= upper: a row spanning the gap, not an overlap of one span
            return ""
        return (f" AND int8range(i.low, i.high, '[]')"
                f" && int8range({self.p(lower)}, {self.p(upper)}, '[]')")

    def _chain(self, types: tuple[str, ...], criterion: Criterion) -> str:
        return (f"SELECT i.rid FROM idx_reference i WHERE {self.param_code(criterion.code, types)}"
                f" AND ({self._chain_branches(criterion)})")

    def _chain_branches(self, criterion: Criterion, hashed: bool = False) -> str:
        """The reference rows whose target meets the chained criterion. ``hashed``: for a
        check on one resource's rows; on PostgreSQL the targets' ids are then an array
        found once per statement, not joined anew for every resource checked (40 patients
        named like 'Kassulke' probed for each of 5,300 body weights: 233 ms; found once, one
        probe per body weight)."""
        assert criterion.chain is not None
        branches = []
        for target in criterion.chain_types:
            inner = self.condition_ids(target, criterion.chain)
            ids = f"SELECT c.id FROM resource c WHERE c.rid IN ({inner})"
            # An uncorrelated ARRAY(...) is an InitPlan, run once per statement.
            among = (f"= ANY(ARRAY({ids}))" if hashed and self.mark == "%s"
                     else f"IN ({ids})")
            branches.append(f"(i.target_type = {self.p(target)} AND i.target_id {among})")
        return " OR ".join(branches)

    def condition_ids(self, rtype: str, criterion: Criterion) -> str:
        """Numbers of current ``rtype`` resources meeting the criterion, modifiers
        included."""
        negate = criterion.modifier in ("not", "not-in") or (
            criterion.modifier == "missing" and criterion.values[0].raw == "true")
        if not negate and criterion.modifier != "missing" and criterion.code != "_id":
            return self.ids((rtype,), criterion)
        cond = self.exists(criterion, "c", "c", (rtype,))
        return (f"SELECT c.rid FROM resource c WHERE c.resource_type = {self.p(rtype)}"
                f" AND NOT c.deleted AND {cond}")

    def _has(self, types: tuple[str, ...], criterion: Criterion) -> str:
        assert criterion.has is not None
        source, ref_code, inner = criterion.has
        return self._targets(types, self.condition_ids(source, inner),
                             self.param_code(ref_code, (source,)))

    # ------------------------------------------------------------------ values

    def _value(self, criterion: Criterion, value: Value) -> str:
        kind = criterion.type
        if kind == "token":
            return self._token(criterion, value)
        if kind == "string":
            return self._string(criterion.modifier, value.raw)
        if kind == "date":
            return self._date(value, "i.low", "i.high")
        if kind == "number":
            return self._ordered(value, "i.value")
        if kind == "quantity":
            return self._quantity(value)
        if kind == "reference":
            return self._reference(criterion, value)
        if kind == "uri":
            return self._uri(criterion.modifier, value.raw)
        if kind == "composite":
            return self._composite(value)
        raise BadRequest(f"Search on {kind} parameter {criterion.code!r} is not supported")

    def _token(self, criterion: Criterion, value: Value) -> str:
        modifier = criterion.modifier
        if modifier == "text":
            return f"i.text_norm LIKE {self.p(_like(normalize_string(value.raw)))} ESCAPE '\\'"
        if modifier in ("in", "not-in"):
            pairs = terminology.expand(value.raw)
            by_system: dict[str, list[str]] = {}
            for system, code in pairs:
                by_system.setdefault(system, []).append(code)
            if not by_system:
                return "1 = 0"
            return " OR ".join(
                f"(i.system = {self.p(system)} AND i.code IN ({self.marks(sorted(codes))}))"
                for system, codes in sorted(by_system.items()))
        if modifier == "of-type":
            return (f"(i.type_system = {self.p(value.type_system)} AND i.type_code = "
                    f"{self.p(value.type_code)} AND i.code = {self.p(value.code)})")
        codes: set[str] | None = None
        if modifier in ("above", "below") and value.code is not None:
            expand = terminology.below if modifier == "below" else terminology.above
            codes = expand(value.system or None, value.code)
        parts = []
        if value.code is not None:
            parts.append(f"i.code IN ({self.marks(sorted(codes))})" if codes
                         else f"i.code = {self.p(value.code)}")
        if value.system == "":
            parts.append("i.system IS NULL")
        elif value.system is not None:
            parts.append(f"i.system = {self.p(value.system)}")
        return "(" + " AND ".join(parts or ["1 = 1"]) + ")"

    def _string(self, modifier: str | None, raw: str) -> str:
        if modifier == "exact":
            return f"i.exact = {self.p(raw)}"
        norm = normalize_string(raw)
        if modifier == "contains":
            return f"i.norm LIKE {self.p(_like(norm))} ESCAPE '\\'"
        return f"(i.norm >= {self.p(norm)} AND i.norm < {self.p(norm + _TOP)})"

    def _date(self, value: Value, low: str, high: str) -> str:
        assert value.start is not None and value.end is not None
        qlo, qhi = micros(value.start), micros(value.end)
        prefix = value.prefix
        # The target range lies within the search range; ``low <= qhi`` follows (low <= high)
        # but makes it a closed range on ``low``, so the index scan stops at the range's end.
        within = (f"({low} >= {self.p(qlo)} AND {low} <= {self.p(qhi)}"
                  f" AND {high} <= {self.p(qhi)})")
        if prefix == "eq":
            return within
        if prefix == "ne":
            return f"NOT {within}"
        if prefix == "gt":
            return f"{high} > {self.p(qhi)}"
        if prefix == "lt":
            return f"{low} < {self.p(qlo)}"
        # ge/le also carry the bound they imply (low <= high), so that an index range scan
        # on one column can serve them instead of a union of two.
        if prefix == "ge":
            return f"({high} >= {self.p(qlo)} AND ({high} > {self.p(qhi)} OR {within}))"
        if prefix == "le":
            return f"({low} <= {self.p(qhi)} AND ({low} < {self.p(qlo)} OR {within}))"
        if prefix == "sa":
            return f"{low} > {self.p(qhi)}"
        if prefix == "eb":
            return f"{high} < {self.p(qlo)}"
        # ap: within 10% of the distance from now (search.html#prefix), at least the range.
        now = micros(datetime.now(UTC))
        slack = abs(now - qlo) // 10
        return f"({high} >= {self.p(qlo - slack)} AND {low} <= {self.p(qhi + slack)})"

    def _ordered(self, value: Value, column: str, number: float | None = None,
                 low: float | None = None, high: float | None = None) -> str:
        """Compare an exact stored value with the parameter's number and implicit range."""
        q = value.number if number is None else number
        lo = value.low if low is None else low
        hi = value.high if high is None else high
        assert q is not None and lo is not None and hi is not None
        prefix = value.prefix
        if prefix == "eq":
            return f"({column} >= {self.p(lo)} AND {column} < {self.p(hi)})"
        if prefix == "ne":
            return f"NOT ({column} >= {self.p(lo)} AND {column} < {self.p(hi)})"
        if prefix == "gt":
            return f"{column} > {self.p(q)}"
        if prefix == "lt":
            return f"{column} < {self.p(q)}"
        # sa/eb: outside the search value's implicit range, above/below it (search.html#prefix)
        if prefix == "sa":
            return f"{column} >= {self.p(hi)}"
        if prefix == "eb":
            return f"{column} < {self.p(lo)}"
        if prefix == "ge":
            return f"{column} >= {self.p(q)}"
        if prefix == "le":
            return f"{column} <= {self.p(q)}"
        slack = abs(q) * 0.1  # ap: within 10 % of the value
        return f"({column} >= {self.p(q - slack)} AND {column} <= {self.p(q + slack)})"

    def _canonical(self, value: Value, unit_column: str, value_column: str) -> str | None:
        """The value compared in canonical UCUM form, when its unit converts; else None."""
        if not value.code or value.system not in (None, "http://unitsofmeasure.org"):
            return None
        unit, number = canonical(value.number, value.code)
        if unit is None or number is None:
            return None
        _, low = canonical(value.low, value.code)
        _, high = canonical(value.high, value.code)
        lo, hi = sorted((number if low is None else low, number if high is None else high))
        compare = self._ordered(value, value_column, number, lo, hi)
        return f"({unit_column} = {self.p(unit)} AND {compare})"

    def _quantity(self, value: Value) -> str:
        if value.code is not None:
            converted = self._canonical(value, "i.canon_code", "i.canon_value")
            if converted is not None:
                return converted
            system = f" AND i.system = {self.p(value.system)}" if value.system else ""
            return (f"(i.code = {self.p(value.code)}{system} AND "
                    f"{self._ordered(value, 'i.value')})")
        return self._ordered(value, "i.value")

    def _reference(self, criterion: Criterion, value: Value) -> str:
        raw = value.raw
        modifier = criterion.modifier
        if modifier == "identifier":
            system, _, code = raw.rpartition("|") if "|" in raw else ("", "", raw)
            cond = f"i.ident_value = {self.p(code)}"
            return f"({cond} AND i.ident_system = {self.p(system)})" if system else cond
        if raw.startswith(("http://", "https://", "urn:")):
            url, _, version = raw.partition("|")
            cond = f"i.url = {self.p(url)}"
            return f"({cond} AND i.version = {self.p(version)})" if version else cond
        parts = raw.split("/")
        if len(parts) >= 2:  # Type/id, or Type/id/_history/version
            if modifier is not None and modifier != parts[0]:
                return "1 = 0"  # subject:Patient=Group/1 can match nothing
            return (f"(i.target_type = {self.p(parts[0])}"
                    f" AND i.target_id = {self.p(parts[1])})")
        if modifier is not None:  # :Type
            return f"(i.target_type = {self.p(modifier)} AND i.target_id = {self.p(raw)})"
        return f"i.target_id = {self.p(raw)}"

    def _uri(self, modifier: str | None, raw: str) -> str:
        if modifier == "below":
            return f"(i.value >= {self.p(raw)} AND i.value < {self.p(raw + _TOP)})"
        if modifier == "above":
            return f"i.value IN ({self.marks(_uri_parents(raw))})"
        return f"i.value = {self.p(raw)}"

    def _component_quantity(self, value: Value) -> str:
        """A composite's quantity component: in canonical UCUM form when the search value
        has a convertible unit (as :meth:`_quantity`), else the number in the stored unit."""
        converted = self._canonical(value, "i.c2_canon_code", "i.c2_canon_value")
        if converted is not None:
            return converted
        compare = self._ordered(value, "i.c2_low")
        return f"({compare} AND i.c2_code = {self.p(value.code)})" if value.code else compare

    def _composite(self, value: Value) -> str:
        first, second = value.parts[0], value.parts[1]
        parts = []
        if first.code is not None:
            parts.append(f"i.c1_code = {self.p(first.code)}")
        if first.system:
            parts.append(f"i.c1_system = {self.p(first.system)}")
        if second.start is not None:
            parts.append(self._date(second, "i.c2_low", "i.c2_high"))
        elif second.number is not None:
            parts.append(self._component_quantity(second))
        else:
            if second.code is not None:
                parts.append(f"i.c2_code = {self.p(second.code)}")
            if second.system:
                parts.append(f"i.c2_system = {self.p(second.system)}")
        return "(" + " AND ".join(parts or ["1 = 1"]) + ")"
