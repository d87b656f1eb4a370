"""The search use case: parse, authorize, compile to SQL, run, page, include, shape a Bundle.

Paging is by key (the sort keys of the last row seen plus the resource's number, ``rid``), so
a page deep in a result set costs what the first does and stays stable while data is written.
In the default order (by ``rid``, the order resources were created in) the keyset condition is
a range on the resource table's (resource_type, rid) index; sorting by a parameter computes
its value once per matching resource (a sort costs in proportion to the matches, on every
page, as it would with OFFSET paging too).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any
from urllib.parse import urlencode

import orjson

from carebridge.fhir import registry
from carebridge.fhir.errors import BadRequest, Issue, operation_outcome
from carebridge.fhir.subsetting import select_elements, summarize
from carebridge.search.aliases import is_alias
from carebridge.search.compiler import Compiler
from carebridge.search.extract import stored_codes
from carebridge.search.params import pid
from carebridge.search.planner import (
    COUNT_CAP,
    DEFAULT_CAP,
    WALK_BUDGET,
    Lead,
    choose_lead,
    one_row_each,
    rank,
)
from carebridge.search.query import Criterion, SearchQuery, parse_query
from carebridge.security.narrowing import Narrowing
from carebridge.security.policy import SYSTEM, Caller, Restriction
from carebridge.services.resources import ResourceService, check_type
from carebridge.storage.base import Session

_KEY_TABLE = {"date": "idx_date", "number": "idx_number", "quantity": "idx_quantity",
              "string": "idx_string", "token": "idx_token", "reference": "idx_reference",
              "uri": "idx_uri"}
_KEY_COLUMN = {"date": ("low", "high"), "number": ("value", "value"),
               "quantity": ("value", "value"), "string": ("norm", "norm"),
               "token": ("code", "code"), "reference": ("target_id", "target_id"),
               "uri": ("value", "value")}
_NUMERIC = {"date", "number", "quantity"}
MAX_INCLUDES = 1000


@dataclass
class Match:
    resource_type: str
    id: str
    body: bytes
    mode: str = "match"


@dataclass
class SearchResult:
    query: SearchQuery
    matches: list[Match] = field(default_factory=list)
    included: list[Match] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    previous_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class _Key:
    """A sort key: a column of ``resource`` (``plain``, indexed), or a parameter's value for
    the resource, computed, NULL when it has none (``filler`` stands in for it then)."""

    sql: str
    desc: bool
    plain: bool = False
    filler: Any = None


def _encode_cursor(direction: str, values: list[Any]) -> str:
    return direction + base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, list[Any]]:
    direction, payload = cursor[:1], cursor[1:]
    try:
        values = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise BadRequest("Invalid _cursor; use the links the server gave", ("_cursor",)) from None
    if direction not in ("n", "p") or not isinstance(values, list):
        raise BadRequest("Invalid _cursor; use the links the server gave", ("_cursor",))
    return direction, values


class SearchService:
    def __init__(self, resources: ResourceService, *, default_count: int = 20,
                 max_count: int = 1000) -> None:
        self.resources = resources
        self.default_count = default_count
        self.max_count = max_count

    # ---------------------------------------------------------------- entry points

    def search(
        self,
        caller: Caller,
        resource_type: str | None,
        params: list[tuple[str, str]],
        *,
        strict: bool = False,
        compartment: tuple[str, str] | None = None,
    ) -> SearchResult:
        if resource_type is not None:
            check_type(resource_type)
        query = parse_query(resource_type, params, strict=strict,
                            default_count=self.default_count, max_count=self.max_count)
        if compartment is not None and not query.resource_types:
            query.resource_types = _compartment_types(compartment[0])
        # Authorization narrows the query itself (security.narrowing): a compartment
        # condition and a granular scope's criteria are compiled into the SQL.
        narrowing = Narrowing(self.resources.policy, caller)
        narrowing.for_search(query.resource_types or (None,))
        if narrowing.criteria:
            query = parse_query(resource_type, [*params, *narrowing.criteria], strict=strict,
                                default_count=self.default_count, max_count=self.max_count)
            query.used = [u for u in query.used if u not in narrowing.criteria]
        with self.resources.repository.session() as session:
            return self.run(session, query, compartment, narrowing)

    def match_ids(self, session: Session, resource_type: str, criteria: str,
                  limit: int = 2) -> list[str]:
        """Ids of the resources a conditional interaction's criteria select (at most
        ``limit``); every parameter must be understood (strict), as a guess would be unsafe."""
        from urllib.parse import parse_qsl

        params = parse_qsl(criteria, keep_blank_values=True)
        if not params:
            raise BadRequest(f"Conditional criteria {criteria!r} are empty")
        if len(params) == 1 and _stored_token(resource_type, params[0][0]):
            # The usual criteria (``identifier=system|value``): one index look-up, no query
            # planning (the same rows match; tests/search/test_ids_by_token.py).
            value = params[0][1]
            system, _, code = value.partition("|")
            # Not for OR (","), escapes ("\\") or a second "|" (parse_query's errors).
            if system and code and "|" not in code and "," not in value and "\\" not in value:
                found = self.ids_by_token(session, resource_type, params[0][0], system, [code])
                return found.get(code, [])[:limit]
        query = parse_query(resource_type, params, strict=True, default_count=limit)
        query.count = limit
        rows = self._page(session, query, None, None)
        return [row[1] for row in rows[:limit]]

    def ids_by_token(self, session: Session, resource_type: str, param: str, system: str,
                     codes: Sequence[str]) -> dict[str, list[str]]:
        """For each of ``codes``: the ids of the resources of ``resource_type`` whose
        ``param`` has the token ``system|code`` (those with none are left out), as
        ``match_ids(resource_type, "param=system|code")`` would give them, in one index-only
        query over the lookup index (pid, code, system, rid) for many codes at once
        (business identifiers of a message's results). Only for parameters with index rows of
        their own (not ``_id``, nor an alias)."""
        if param not in stored_codes(resource_type):
            raise ValueError(f"{resource_type} {param} has no index rows of its own")
        mark = self._dialect_mark()
        found: dict[str, list[str]] = {}
        unique = list(dict.fromkeys(codes))
        number = pid(resource_type, param)
        for start in range(0, len(unique), 500):
            part = unique[start:start + 500]
            rows = session.query(
                f"SELECT DISTINCT i.code, r.id, r.rid FROM idx_token i CROSS JOIN resource r"
                f" WHERE i.pid = {mark} AND i.code IN ({', '.join([mark] * len(part))})"
                f" AND i.system = {mark} AND r.rid = i.rid ORDER BY i.code, r.rid",
                (number, *part, system))
            for code, rid, _ in rows:
                found.setdefault(str(code), []).append(str(rid))
        return found

    def admits(self, session: Session, resource_type: str, resource_id: str,
               restriction: Restriction) -> bool:
        """Whether one resource lies inside a restriction: the same narrowed query a search
        would run, on its id."""
        query = parse_query(resource_type, [("_id", resource_id), *restriction.criteria],
                            strict=True, default_count=1)
        narrowing = None
        if restriction.patient is not None:
            narrowing = Narrowing(self.resources.policy, SYSTEM, restriction.patient,
                                  {resource_type})
        return bool(self._page(session, query, None, None, narrowing))

    # ---------------------------------------------------------------- execution

    def _dialect_mark(self) -> str:
        return "?" if self.resources.repository.dialect == "sqlite" else "%s"

    def _filter(self, compiler: Compiler, query: SearchQuery,
                compartment: tuple[str, str] | None,
                narrowing: Narrowing | None = None, lead: Lead | None = None,
                led_by: str = "d", checked_on: str | None = None) -> str:
        """The conditions on ``r``, a row of ``resource``: every criterion but the one that
        leads (``_source`` joins that one) as a per-row check (see search.planner).
        ``checked_on``: the alias of an index row whose ``rid`` the criteria are checked
        on, so that they run before the join reads the resource row."""
        types = query.resource_types or _every_type()
        # Checks on the leading resources (``d``) run before the join reads the resource row.
        led = lead is not None and lead.index is not None
        conds = []
        if led:
            # What leads names current resources of the searched types only (index rows
            # exist for those alone; _id, _has and _list look them up so), so ``r`` needs
            # no condition of its own: with one, SQLite (3.38+), expecting many leading
            # rows, builds a Bloom filter over every resource row of the type first (a
            # _has on 841 Conditions at 1M resources: 530 ms of 540).
            conds.append(f"r.rid = {led_by}.rid")
        else:
            conds.append("NOT r.deleted")
            if len(types) == 1:
                conds.append(f"r.resource_type = {compiler.p(types[0])}")
            elif compartment is None and query.resource_types:
                # (else the compartment's subquery names the types, or there are no others)
                conds.append(f"r.resource_type IN ({compiler.marks(types)})")
        for n, criterion in enumerate(query.criteria):
            if lead is None or n not in lead.covers:
                conds.append(compiler.exists(criterion, led_by if led else checked_on or "r",
                                             "r", types))
        if compartment is not None:
            conds.append(self._compartment(compiler, types, compartment))
        if narrowing is not None and narrowing.patient is not None:
            conds.append(self._narrow(compiler, types, narrowing))
        return " AND ".join(conds)

    @staticmethod
    def _source(compiler: Compiler, types: tuple[str, ...], query: SearchQuery,
                lead: Lead | None) -> str:
        """The FROM clause: ``resource r``, led by the leading criterion's ids when there is
        one (CROSS JOIN fixes SQLite's join order; PostgreSQL plans it freely)."""
        if lead is None or lead.index is None:
            return "resource r"
        driver = compiler.driver(types, *(query.criteria[n] for n in lead.covers))
        if compiler.mark == "%s":
            # PostgreSQL would merge-join the sorted numbers with the resource table's rid
            # index, walking it from its start to the first match: a patient's resources,
            # created together far into the table, cost a scan of all before them. The
            # fenced lateral look-up keeps it one index probe per leading resource.
            return (f"({driver}) d CROSS JOIN LATERAL (SELECT * FROM resource x"
                    f" WHERE x.rid = d.rid OFFSET 0) r")
        return f"({driver}) d CROSS JOIN resource r"

    def _lead(self, session: Session, query: SearchQuery, compartment: tuple[str, str] | None,
              narrowing: Narrowing | None, *, always: bool = False) -> Lead | None:
        """Which criterion leads (search.planner); none when a compartment does (its subquery
        is a patient's rows), ``always`` picks the best even when none is selective."""
        if compartment is not None or (narrowing is not None and narrowing.patient is not None):
            return None
        types = query.resource_types or _every_type()
        lead = query.probed  # the page and the count of one request probe once
        if lead is None and always:
            candidates = [n for n, c in enumerate(query.criteria) if rank(c) < 99]
            if len(candidates) == 1 and len(query.criteria) == 1:
                return Lead((candidates[0],), 0)  # a count's one driver: nothing to choose
        if lead is None:
            lead = query.probed = choose_lead(session.query, self._dialect_mark(), types,
                                              query.criteria)
        if lead.index is None and always and len(query.criteria) > 1:
            # A count reads every match through its driver, one EXISTS per row for the other
            # criteria: several times what a plain index count costs per row. When none was
            # selective within the page's cap, counting further to find the smallest driver
            # pays for itself (a common name's chain beside all body weights: 20k rows
            # instead of 80k).
            deeper = choose_lead(session.query, self._dialect_mark(), types, query.criteria,
                                 cap=COUNT_CAP)
            if deeper.index is not None:
                return deeper
        if lead.index is None and always and query.criteria:
            best = min(range(len(query.criteria)), key=lambda n: rank(query.criteria[n]))
            if rank(query.criteria[best]) < 99:
                return Lead((best,), lead.rows)
        return lead

    def _narrow(self, compiler: Compiler, types: tuple[str, ...], narrowing: Narrowing) -> str:
        """A patient-bound caller sees bound types only inside its patient's compartment."""
        assert narrowing.patient is not None
        bound = tuple(t for t in types if t in narrowing.bound_types)
        free = [t for t in types if t not in narrowing.bound_types]
        inside = self._compartment(compiler, bound, ("Patient", narrowing.patient))
        if not free:
            return inside
        return f"(r.resource_type IN ({compiler.marks(free)}) OR {inside})"

    def _compartment(self, compiler: Compiler, types: tuple[str, ...],
                     compartment: tuple[str, str]) -> str:
        """Resources in the compartment (http://hl7.org/fhir/R4/compartmentdefinition.html):
        those whose compartment parameters refer to it, and the compartment resource itself.

        One subquery on ``idx_reference`` driven by the reference's target (its lookup index),
        not one branch per type: an OR over dozens of types would read the resource table.
        """
        code, cid = compartment
        definition = registry.compartment_definition(code)
        params = {r["code"]: r.get("param") or [] for r in definition.get("resource", [])}
        pairs = [(rtype, [p for p in params.get(rtype, []) if p != "{def}"]) for rtype in types]
        pairs = [(rtype, codes) for rtype, codes in pairs if codes]
        selves = [rtype for rtype in types if rtype == code or "{def}" in params.get(rtype, [])]
        parts = []
        if pairs:
            which = " OR ".join(compiler.param_code(c, (rtype,))
                                for rtype, codes in pairs for c in codes)
            parts.append(
                f"SELECT i.rid FROM idx_reference i WHERE i.target_id = {compiler.p(cid)}"
                f" AND i.target_type = {compiler.p(code)} AND ({which})")
        if selves:
            parts.append(f"SELECT c.rid FROM resource c WHERE c.resource_type"
                         f" = {compiler.p(code)} AND c.id = {compiler.p(cid)}")
        if not parts:
            return "1 = 0"
        # SQLite drives an IN by index only from a simple SELECT, not from a compound one.
        return f"r.rid IN (SELECT * FROM ({' UNION ALL '.join(parts)}) c)"

    def _keys(self, compiler: Compiler, query: SearchQuery) -> list[_Key]:
        """The sort keys, then the resource's number so that the order is total (alone, the
        default order: the order resources were created in, which the spec leaves to the
        server)."""
        keys: list[_Key] = []
        for code, desc in query.sort:
            if code == "_id":
                keys.append(_Key("r.id", desc, plain=True))
                continue
            sp = registry.search_parameters_for(query.resource_types[0])[code] if (
                query.resource_types) else registry.search_parameters_for("Patient")[code]
            kind = sp["type"]
            table = _KEY_TABLE[kind]
            column = _KEY_COLUMN[kind][1 if desc else 0]
            agg = "MAX" if desc else "MIN"
            keys.append(_Key(
                f"(SELECT {agg}(s.{column}) FROM {compiler.owned(table, 's')}"
                f" WHERE {compiler.own('r', 's')}"
                f" AND {compiler.param_code(code, query.resource_types, 's.pid')})",
                desc, filler=0 if kind in _NUMERIC else ""))
        # Ties go the first key's way, so a walk down a (value, rid) index yields them in order.
        tie = bool(query.sort) and query.sort[0][1]
        keys.append(_Key("r.rid", tie, plain=True))
        return keys

    def _walk_code(self, session: Session, query: SearchQuery,
                   compartment: tuple[str, str] | None, narrowing: Narrowing | None,
                   cursor: str | None, lead: Lead | None) -> list[tuple[Any, ...]] | None:
        """A page in the default order (by rid) when the leading criterion, or with none
        selective enough to lead any criterion, is a single ``system|code`` token: its lookup
        index, (pid, code, system, rid), holds the matching resources in that order, so
        walking it from the cursor and checking the other criteria per row stops at the
        page's end. None otherwise."""
        if lead is None or len(query.resource_types) != 1 or query.sort:
            return None
        tokens = [n for n, c in enumerate(query.criteria)
                  if c.type == "token" and c.modifier is None and c.chain is None
                  and c.has is None and c.code != "_id" and len(c.values) == 1
                  and c.values[0].system and c.values[0].code is not None]
        # Leading with such a token reads the same index rows as walking it, but all of
        # them; walking stops at the page's end.
        if lead.index is not None and lead.covers != (lead.index,):
            return None
        walk = lead.index if lead.index is not None else (tokens[0] if tokens else None)
        if walk is None or walk not in tokens or is_alias(
                query.resource_types[0], query.criteria[walk].code):
            return None
        values, backwards = self._cursor(cursor, 1)
        if backwards:
            return None
        value = query.criteria[walk].values[0]
        compiler = Compiler(self._dialect_mark(), per_row=True)
        where = self._filter(compiler, query, compartment, narrowing, Lead((walk,), 0), "w")
        after = "" if values is None else f" AND w.rid > {compiler.p(values[0])}"
        number = pid(query.resource_types[0], query.criteria[walk].code)
        sql = (f"SELECT r.resource_type, r.id, r.body, r.rid FROM idx_token w CROSS JOIN"
               f" resource r WHERE w.pid = {number}"
               f" AND w.code = {compiler.p(value.code)} AND w.system = {compiler.p(value.system)}"
               f"{after} AND {where} ORDER BY w.rid LIMIT ")
        text, params = compiler.finish(sql)
        # A resource with the code in two codings (different displays) has two rows, next
        # to each other in the walk's order: only the first counts. Dropped here rather than with a
        # per-row NOT EXISTS, which PostgreSQL, misjudging a code as rare, ran on the
        # lookup index (every row of the code once per row walked).
        want = query.count + 1
        limit = want + 8
        while True:
            rows = session.query(f"{text}{limit}", params)
            unique = [row for n, row in enumerate(rows) if n == 0 or row[1] != rows[n - 1][1]]
            if len(unique) >= want or len(rows) < limit:
                return unique[:want]
            limit *= 4

    def _walk(self, session: Session, query: SearchQuery, compartment: tuple[str, str] | None,
              narrowing: Narrowing | None, cursor: str | None,
              lead: Lead | None, budget: int | None = None) -> list[tuple[Any, ...]] | None:
        """A page sorted by one date parameter, read by walking that parameter's index in
        order and checking every criterion per row, when no criterion is selective enough to
        lead (search.planner); None when the search is not of that form.

        The sort value of a resource is the highest end of its ranges (descending) or the
        lowest start (ascending) (search.html#sort leaves multiple values to the server), so
        only the row holding that value stands for its resource. Resources without a value
        come after all others, as in the general plan, and keep its cursor values.

        With a ``budget``, only that many index rows are walked (from the cursor on), and the
        page is returned only if they fill it: the first matches of a prefix of the order are
        the first matches of all of it. None otherwise (the caller plans as usual)."""
        if (lead is None or lead.index is not None or len(query.resource_types) != 1
                or len(query.sort) != 1 or query.sort[0][0] == "_id"):
            return None
        rtype = query.resource_types[0]
        code, desc = query.sort[0]
        if registry.search_parameters_for(rtype)[code]["type"] != "date":
            return None
        values, backwards = self._cursor(cursor, 3)
        if backwards:
            return None
        mark = self._dialect_mark()
        rows: list[tuple[Any, ...]] = []
        want = query.count + 1
        col, op, order = ("high", "<", "DESC") if desc else ("low", ">", "ASC")
        other = "low" if desc else "high"
        better = ">" if desc else "<"  # a row of the same resource that sorts before ``w``
        if values is None or values[0] == 0:
            compiler = Compiler(mark, per_row=True)
            where = self._filter(compiler, query, compartment, narrowing, checked_on="w")

            def rows_of(alias: str) -> str:  # the sort parameter's rows from the cursor on
                after = "" if values is None else (
                    f" AND ({alias}.{col}, {alias}.rid) {op}"
                    f" ({compiler.p(values[1])}, {compiler.p(values[2])})")
                return f"{alias}.pid = {pid(rtype, code)}{after}"

            walked, scope = "idx_date w", rows_of("w")
            if budget is not None:  # the first rows of the index in order
                walked = (f"(SELECT * FROM idx_date x WHERE {rows_of('x')}"
                          f" ORDER BY x.{col} {order}, x.rid {order} LIMIT {budget}) w")
                scope = "1 = 1"
            sql = (f"SELECT r.resource_type, r.id, r.body, 0, w.{col}, w.rid"
                   f" FROM {walked} CROSS JOIN resource r"
                   f" WHERE {scope} AND NOT EXISTS (SELECT 1 FROM"
                   f" {compiler.owned('idx_date', 's')} WHERE"
                   f" {compiler.own('w', 's')} AND s.pid = w.pid"
                   f" AND (s.{col} {better} w.{col}"
                   f" OR (s.{col} = w.{col} AND s.{other} {better} w.{other})))"
                   f" AND r.rid = w.rid AND {where}")
            # SQLite would sort all the budget's matches before the LIMIT; with the
            # budgeted rows as the outer loop (CROSS JOIN keeps it there) they come in
            # order and the walk stops at the page's end. That order is checked below.
            streamed = budget is not None and mark == "?"
            sql += ("" if streamed else f" ORDER BY w.{col} {order}, w.rid {order}") + (
                f" LIMIT {compiler.p(want)}")
            rows = session.query(*compiler.finish(sql))
            if streamed and rows != sorted(rows, key=lambda row: (row[4], row[5]),
                                           reverse=desc):
                return None  # not in order after all: plan as usual
        if budget is not None:
            return rows if len(rows) == want else None
        if len(rows) < want:
            compiler = Compiler(mark, per_row=True)
            where = self._filter(compiler, query, compartment, narrowing)
            after = "" if values is None or values[0] == 0 else (
                f" AND r.rid {op} {compiler.p(values[2])}")
            sql = (f"SELECT r.resource_type, r.id, r.body, 1, {compiler.p(0)}, r.rid"
                   f" FROM resource r WHERE {where} AND NOT EXISTS (SELECT 1 FROM"
                   f" {compiler.owned('idx_date', 's')}"
                   f" WHERE {compiler.own('r', 's')}"
                   f" AND s.pid = {pid(rtype, code)}){after}"
                   f" ORDER BY r.rid {order} LIMIT {compiler.p(want - len(rows))}")
            rows += session.query(*compiler.finish(sql))
        return rows

    def _page(self, session: Session, query: SearchQuery, compartment: tuple[str, str] | None,
              cursor: str | None, narrowing: Narrowing | None = None) -> list[tuple[Any, ...]]:
        """One page plus one row (that row tells whether there is more), in display order;
        each row is (type, id, body, key values...), the key values being the cursor."""
        compiler = Compiler(self._dialect_mark(), per_row=True)
        keys = self._keys(compiler, query)
        if query.probed is None and compartment is None and (
                narrowing is None or narrowing.patient is None) and query.criteria and all(
                rank(c) > 1 for c in query.criteria):
            # Sorted by a date and nothing that names a resource (a patient, an id): the
            # matches are often common, and the first WALK_BUDGET rows of the order give a
            # page before a probe could have counted (search.planner).
            walked = self._walk(session, query, compartment, narrowing, cursor,
                                Lead((), DEFAULT_CAP), budget=WALK_BUDGET)
            if walked is not None:
                return walked
            if len(query.criteria) == 1:
                # One system|code token in the default order: walking its index never reads
                # more rows than leading with it would, so there is nothing to probe for.
                walked = self._walk_code(session, query, compartment, narrowing, cursor,
                                         Lead((), DEFAULT_CAP))
                if walked is not None:
                    return walked
        lead = self._lead(session, query, compartment, narrowing)
        walked = self._walk(session, query, compartment, narrowing, cursor, lead)
        if walked is None:
            walked = self._walk_code(session, query, compartment, narrowing, cursor, lead)
        if walked is not None:
            return walked
        source = self._source(compiler, query.resource_types or _every_type(), query, lead)
        where = self._filter(compiler, query, compartment, narrowing, lead)
        limit = compiler.p(query.count + 1)
        if all(k.plain for k in keys):
            # Plain columns: the keyset condition is a range on the primary key index, and
            # the index gives the order, so a page deep in the results costs what the first
            # does.
            names = [k.sql for k in keys]
            values, backwards = self._cursor(cursor, len(keys))
            if values is not None:
                where += " AND " + self._keyset(compiler, keys, names, values, backwards)
            if source == "resource r":
                sql = (f"SELECT r.resource_type, r.id, r.body, {', '.join(names)} FROM {source}"
                       f" WHERE {where} ORDER BY {self._order(keys, names, backwards)}"
                       f" LIMIT {limit}")
            else:
                # Led by a criterion's ids: the page is chosen (and sorted) without carrying
                # the bodies, which are read for the page's rows only.
                aliased = [f"k{n}" for n in range(len(names))]
                picked = ", ".join(f"{name} AS {alias}" for name, alias in zip(
                    names, aliased, strict=True))
                sql = (f"SELECT p.rt, p.ri, b.body, {', '.join(f'p.{a}' for a in aliased)}"
                       f" FROM (SELECT r.resource_type AS rt, r.id AS ri, r.rid AS rn, {picked}"
                       f" FROM {source} WHERE {where}"
                       f" ORDER BY {self._order(keys, names, backwards)} LIMIT {limit}) p"
                       f" JOIN resource b ON b.rid = p.rn"
                       f" ORDER BY {self._order(keys, [f'p.{a}' for a in aliased], backwards)}")
            rows = session.query(*compiler.finish(sql))
            return list(reversed(rows)) if backwards else rows
        # Computed sort keys: computed once per matching resource in a fenced subquery
        # (OFFSET 0 keeps both planners from inlining it, which would re-run the correlated
        # subqueries of the keys inside the keyset condition); the bodies are read for the
        # page's rows only, not carried through the sort. A parameter key becomes two: "has
        # no value" (0/1, always ascending: such resources come last either way, which
        # search.html#sort leaves to the server) and the value (or its filler).
        columns = ", ".join(f"{k.sql} AS v{n}" for n, k in enumerate(keys))
        fence = "LIMIT -1 OFFSET 0" if self._dialect_mark() == "?" else "OFFSET 0"
        inner = (f"SELECT r.resource_type AS rt, r.id AS ri, r.rid AS rn, {columns} FROM {source}"
                 f" WHERE {where} {fence}")
        derived: list[tuple[_Key, str]] = []
        for n, key in enumerate(keys):
            if key.plain:
                derived.append((_Key(f"k{n}", key.desc), f"t.v{n}"))
            else:
                derived.append((_Key(f"m{n}", False),
                                f"CASE WHEN t.v{n} IS NULL THEN 1 ELSE 0 END"))
                derived.append((_Key(f"k{n}", key.desc),
                                f"COALESCE(t.v{n}, {compiler.p(key.filler)})"))
        dkeys = [k for k, _ in derived]
        names = [k.sql for k in dkeys]
        values, backwards = self._cursor(cursor, len(dkeys))
        keyset = "" if values is None else (
            " WHERE " + self._keyset(compiler, dkeys, names, values, backwards))
        projected = ", ".join(f"{expr} AS {k.sql}" for k, expr in derived)
        sql = (f"SELECT p.rt, p.ri, b.body, {', '.join(f'p.{n}' for n in names)} FROM"
               f" (SELECT * FROM (SELECT t.rt, t.ri, t.rn, {projected} FROM ({inner}) t)"
               f" u{keyset} ORDER BY {self._order(dkeys, names, backwards)} LIMIT {limit}) p"
               f" JOIN resource b ON b.rid = p.rn"
               f" ORDER BY {self._order(dkeys, [f'p.{n}' for n in names], backwards)}")
        rows = session.query(*compiler.finish(sql))
        return list(reversed(rows)) if backwards else rows

    @staticmethod
    def _cursor(cursor: str | None, size: int) -> tuple[list[Any] | None, bool]:
        """The key values of the row a cursor starts after, and whether it pages back."""
        if cursor is None:
            return None, False
        direction, values = _decode_cursor(cursor)
        if len(values) != size:
            raise BadRequest("Invalid _cursor for this search", ("_cursor",))
        return values, direction == "p"

    @staticmethod
    def _order(keys: list[_Key], names: list[str], backwards: bool) -> str:
        return ", ".join(f"{name} {'DESC' if key.desc != backwards else 'ASC'}"
                         for key, name in zip(keys, names, strict=True))

    @staticmethod
    def _keyset(compiler: Compiler, keys: list[_Key], names: list[str], values: list[Any],
                backwards: bool) -> str:
        """Rows after (or, paging back, before) the row whose key values are ``values``."""
        if len({k.desc for k in keys}) == 1:
            # One direction: a row-value comparison, which both databases turn into an
            # index range when the keys are indexed columns.
            op = ">" if keys[0].desc == backwards else "<"
            return (f"({', '.join(names)}) {op} ({compiler.marks(values)})" if len(keys) > 1
                    else f"{names[0]} {op} {compiler.p(values[0])}")
        ors = []
        for n, key in enumerate(keys):
            ands = [f"{names[m]} = {compiler.p(values[m])}" for m in range(n)]
            after = key.desc == backwards  # ascending key, forward: greater
            ands.append(f"{names[n]} {'>' if after else '<'} {compiler.p(values[n])}")
            ors.append("(" + " AND ".join(ands) + ")")
        return "(" + " OR ".join(ors) + ")"

    def run(self, session: Session, query: SearchQuery,
            compartment: tuple[str, str] | None,
            narrowing: Narrowing | None = None) -> SearchResult:
        result = SearchResult(query)
        want_total = query.total in ("accurate", "estimate") or query.summary == "count" or (
            query.total is None and query.cursor is None)
        if query.summary == "count" or query.count == 0:
            result.total = self._count(session, query, compartment, narrowing)
            return result
        rows = self._page(session, query, compartment, query.cursor, narrowing)
        backwards = query.cursor is not None and query.cursor.startswith("p")
        more = len(rows) > query.count
        if more:
            rows = rows[1:] if backwards else rows[:-1]
        if want_total:
            # A first page that holds every match is its own count.
            whole = query.cursor is None and not more
            result.total = len(rows) if whole else self._count(
                session, query, compartment, narrowing)
        result.matches = [Match(row[0], row[1], bytes(row[2])) for row in rows]
        if rows:
            first, last = list(rows[0][3:]), list(rows[-1][3:])
            if more or backwards:
                result.next_cursor = _encode_cursor("n", last)
            if query.cursor is not None and (more or not backwards):
                result.previous_cursor = _encode_cursor("p", first)
        result.included = self._includes(session, query, result.matches, narrowing)
        return result

    def _count(self, session: Session, query: SearchQuery,
               compartment: tuple[str, str] | None, narrowing: Narrowing | None = None) -> int:
        types = query.resource_types or _every_type()
        lead = self._lead(session, query, compartment, narrowing, always=True)
        # The other criteria are probed per driver row when the planner counted few rows.
        compiler = Compiler(self._dialect_mark(), per_row=lead is not None and (
            lead.index is not None and lead.rows < DEFAULT_CAP))
        if lead is not None and lead.index is not None:
            leader = query.criteria[lead.index]
            if leader.has is None and leader.code != "_list":
                # Index rows exist for current resources only: the leading criterion's
                # resources are counted without reading the resource table.
                # One type: count(DISTINCT rid), which SQLite answers from an index that
                # delivers the numbers in order without building a set of them.
                single = len(types) == 1
                covered = [query.criteria[n] for n in lead.covers]
                if single and self._dialect_mark() == "?":
                    covered = [self._pinned(session, types[0], c) for c in covered]
                driver = compiler.driver(types, *covered, distinct=not single)
                others = [c for n, c in enumerate(query.criteria) if n not in lead.covers]
                checks = [compiler.exists(c, "d", "r", types) for c in others]
                joined = ""
                if any(c.has is not None or c.code in ("_id", "_list") for c in others):
                    # checked on the resource's type and id
                    joined = " CROSS JOIN resource r"
                    checks.append("r.rid = d.rid")
                where = f" WHERE {' AND '.join(checks)}" if checks else ""
                # A resource comes once per matching index row: once at most where the
                # parameter has one row per resource (gender, a Period, a Reference).
                counted = "count(DISTINCT d.rid)" if single and not (
                    leader.chain is None and one_row_each(types[0], leader.code)) else (
                    "count(*)")
                return int(session.query(*compiler.finish(
                    f"SELECT {counted} FROM ({driver}) d{joined}{where}"))[0][0])
        if not query.criteria and compartment is None and (
                narrowing is None or narrowing.patient is None):
            # Every current resource has one _lastUpdated index row, a deleted one none:
            # counting those rows does not read the resource table (whose rows hold bodies).
            return int(session.query(*compiler.finish(
                f"SELECT count(*) FROM idx_date i"
                f" WHERE {compiler.param_code('_lastUpdated', types)}"))[0][0])
        source = self._source(compiler, types, query, lead)
        where = self._filter(compiler, query, compartment, narrowing, lead)
        return int(session.query(*compiler.finish(
            f"SELECT count(*) FROM {source} WHERE {where}"))[0][0])

    def _pinned(self, session: Session, resource_type: str, criterion: Criterion) -> Criterion:
        """SQLite counts: a plain code-only token (``category=laboratory``) whose index rows
        all carry the same system is given that system. The same rows match, but the lookup
        index (pid, code, system, rid) then yields their numbers in order, so
        ``count(DISTINCT rid)`` streams instead of building a temporary B-tree of them
        (282k lab results: ~3x faster). Three index seeks decide it (min and max system,
        and whether any row has none)."""
        if (criterion.type != "token" or criterion.modifier or criterion.chain is not None
                or criterion.has is not None or len(criterion.values) != 1
                or is_alias(resource_type, criterion.code)):
            return criterion
        value = criterion.values[0]
        if value.system is not None or value.code is None or value.type_code is not None:
            return criterion
        where = "FROM idx_token WHERE pid = ? AND code = ?"
        args = (pid(resource_type, criterion.code), value.code)
        low = session.query(f"SELECT min(system) {where}", args)
        high = session.query(f"SELECT max(system) {where}", args)
        if not low or low[0][0] is None or low[0][0] != high[0][0] or session.query(
                f"SELECT 1 {where} AND system IS NULL LIMIT 1", args):
            return criterion
        return replace(criterion, values=[replace(value, system=str(low[0][0]))])

    # ---------------------------------------------------------------- includes

    def _includes(self, session: Session, query: SearchQuery,
                  matches: list[Match], narrowing: Narrowing | None = None) -> list[Match]:
        if not (query.include or query.revinclude) or not matches:
            return []
        mark = self._dialect_mark()
        seen = {(m.resource_type, m.id) for m in matches}
        included: list[Match] = []
        frontier = list(matches)
        first = True
        while frontier and len(included) < MAX_INCLUDES:
            wanted: set[tuple[str, str]] = set()
            for spec in query.include:
                if first or spec[3]:
                    wanted |= self._forward(session, mark, spec, frontier)
            for spec in query.revinclude:
                if first or spec[3]:
                    wanted |= self._reverse(session, mark, spec, frontier)
            wanted -= seen
            fetched = self._fetch(session, mark, sorted(wanted), narrowing)[
                : MAX_INCLUDES - len(included)]
            seen |= {(m.resource_type, m.id) for m in fetched}
            included += fetched
            frontier = fetched
            first = False
        return included

    @staticmethod
    def _pairs(compiler: Compiler, frontier: list[Match], type_col: str, id_col: str) -> str:
        by_type: dict[str, list[str]] = {}
        for m in frontier:
            by_type.setdefault(m.resource_type, []).append(m.id)
        return " OR ".join(f"({type_col} = {compiler.p(t)} AND {id_col} IN "
                           f"({compiler.marks(ids)}))" for t, ids in sorted(by_type.items()))

    def _forward(self, session: Session, mark: str, spec: tuple[str, str, str | None, bool],
                 frontier: list[Match]) -> set[tuple[str, str]]:
        source, code, target, _ = spec
        compiler = Compiler(mark)
        sources = [m for m in frontier if source == "*" or m.resource_type == source]
        if not sources:
            return set()
        conds = [f"({self._pairs(compiler, sources, 'c.resource_type', 'c.id')})",
                 compiler.own("c")]
        if code != "*":
            conds.append(compiler.param_code(code, (source,) if source != "*" else ()))
        if target:
            conds.append(f"i.target_type = {compiler.p(target)}")
        rows = session.query(*compiler.finish(
            "SELECT DISTINCT i.target_type, i.target_id FROM resource c CROSS JOIN"
            f" idx_reference i WHERE i.target_id IS NOT NULL AND {' AND '.join(conds)}"))
        return {(r[0], r[1]) for r in rows if r[0]}

    def _reverse(self, session: Session, mark: str, spec: tuple[str, str, str | None, bool],
                 frontier: list[Match]) -> set[tuple[str, str]]:
        source, code, target, _ = spec
        compiler = Compiler(mark)
        targets = [m for m in frontier if target is None or m.resource_type == target]
        if not targets:
            return set()
        conds = [self._pairs(compiler, targets, "i.target_type", "i.target_id")]
        if source != "*":
            conds.append(f"r.resource_type = {compiler.p(source)}")
        if code != "*":
            conds.append(compiler.param_code(code, (source,) if source != "*" else ()))
        rows = session.query(*compiler.finish(
            "SELECT DISTINCT r.resource_type, r.id FROM idx_reference i CROSS JOIN resource r"
            f" WHERE ({conds[0]}){''.join(' AND ' + c for c in conds[1:])}"
            " AND r.rid = i.rid"))
        return {(r[0], r[1]) for r in rows}

    def _fetch(self, session: Session, mark: str, keys: list[tuple[str, str]],
               narrowing: Narrowing | None = None) -> list[Match]:
        extra = ""
        compiler = Compiler(mark)
        if narrowing is not None:
            # Only types the caller may read are fetched; patient-bound ones through the
            # compartment condition (the same narrowing as the search itself).
            allowed = {t: narrowing.includable(t) for t, _ in keys}
            keys = [(t, i) for t, i in keys if allowed[t] is not False]
            bound = {t for t, a in allowed.items() if isinstance(a, Restriction) and a.patient}
            if bound:
                inner = Narrowing(narrowing.policy, narrowing.caller, narrowing.patient, bound)
                extra = " AND " + self._narrow(compiler, tuple(sorted({t for t, _ in keys})),
                                               inner)
        if not keys:
            return []
        fake = [Match(t, i, b"") for t, i in keys]
        rows = session.query(*compiler.finish(
            "SELECT r.resource_type, r.id, r.body FROM resource r WHERE NOT r.deleted AND ("
            + self._pairs(compiler, fake, "r.resource_type", "r.id") + ")" + extra))
        return [Match(r[0], r[1], bytes(r[2]), "include") for r in rows]


@cache
def _every_type() -> tuple[str, ...]:
    return tuple(sorted(registry.resource_types()))


def _compartment_types(code: str) -> tuple[str, ...]:
    definition = registry.compartment_definition(code)
    return tuple(sorted(r["code"] for r in definition.get("resource", []) if r.get("param")))


def search_bundle(result: SearchResult, base: str, path: str) -> dict[str, Any]:
    """The ``searchset`` Bundle for a result; ``path`` is the URL the links repeat."""
    query = result.query

    def link(relation: str, cursor: str | None) -> dict[str, str]:
        params = [(k, v) for k, v in query.used if k != "_cursor"]
        if cursor is not None:
            params.append(("_cursor", cursor))
        return {"relation": relation, "url": f"{path}?{urlencode(params)}" if params else path}

    links = [link("self", query.cursor)]
    if result.next_cursor:
        links.append(link("next", result.next_cursor))
    if result.previous_cursor:
        links.append(link("previous", result.previous_cursor))
    entries: list[dict[str, Any]] = []
    for match in result.matches + result.included:
        body: Any = orjson.Fragment(match.body)
        if query.summary not in (None, "false") or query.elements:
            resource = orjson.loads(match.body)
            if query.summary not in (None, "false"):
                resource = summarize(resource, query.summary or "false")
            if query.elements:
                resource = select_elements(resource, query.elements)
            body = resource
        entries.append({"fullUrl": f"{base}/{match.resource_type}/{match.id}",
                        "resource": body, "search": {"mode": match.mode}})
    if query.ignored:
        outcome = operation_outcome([
            Issue("warning", "not-supported", f"Ignored search parameter {name}")
            for name in query.ignored])
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if result.total is not None:
        bundle["total"] = result.total
    bundle["link"] = links
    if entries:  # JSON arrays are never empty in FHIR (http://hl7.org/fhir/R4/json.html)
        bundle["entry"] = entries
    return bundle


@cache
def _stored_token(resource_type: str, code: str) -> bool:
    """Whether ``code`` is a token parameter of ``resource_type`` with index rows of its own
    (not ``_id``, which is the resource key, nor an alias answered from other rows)."""
    try:
        parameter = registry.search_parameters_for(resource_type).get(code)
        stored = code in stored_codes(resource_type)
    except KeyError:
        return False
    return parameter is not None and parameter.get("type") == "token" and stored
