"""Canonical UCUM units for quantity search: "5.4 mg" matches "0.0054 g".

FHIR R4 quantity search (http://hl7.org/fhir/R4/search.html#quantity) lets a server compare
quantities in different units when it canonicalises UCUM (``http://unitsofmeasure.org``) codes.
:func:`canonical` turns a value in a UCUM unit into a value in the one canonical unit of that
unit's dimension, so equal quantities written in different units index and match alike::

    canonical(Decimal("5.4"), "mg")        -> (Decimal("0.0054"), "g")
    canonical(Decimal("98.6"), "[degF]")   -> (Decimal("310.15"), "K")
    canonical(Decimal("92"), "%")          -> (Decimal("0.92"), "1")
    canonical(Decimal("72"), "{beats}/min") -> (Decimal("1.2"), "/s")
    canonical(Decimal("1"), "furlong")     -> None      (unknown: compare codes literally)

Why a small hand-written module and not a library
-------------------------------------------------
The Python UCUM packages were looked at first:

* ``ucumate`` (Python bindings for a Java implementation) needs a JVM through ``jpype1`` and
  ships a 17 MB jar: too heavy for one search feature of a server.
* ``ucumvert`` (beta) parses UCUM with ``lark`` and converts through ``pint``: two more
  dependencies, a slow-loading registry, float arithmetic, and its mapping makes ``[iU]`` the
  number 1, so ``[iU]/L`` would compare equal to ``/L``.
* ``pyucum`` calls a remote web service; ``pint`` alone does not know UCUM codes.

What search needs is small: a well-tested subset of the UCUM grammar and the few dozen units
clinical data actually uses, with exact arithmetic.  So this module is table-driven: the unit
table below is copied from ``ucum-essence.xml`` (UCUM 2.2, 2024-06-17) in UCUM's own notation
and resolved by the same parser that reads the codes, so each row can be checked against the
specification by eye.  A unit outside the table gives None and the search falls back to
comparing codes literally - never a wrong match.

What is implemented (section numbers are those of https://ucum.org/ucum)
------------------------------------------------------------------------
* §4 prefixes ``Y`` … ``y`` (``da``, ``k``, ``m``, ``u``, …) on metric atoms only (§11); the
  prefix is the longest leading substring whose remainder is a metric atom (§4.4), so ``Pa``
  is the pascal (``a``, the year, is not metric) and ``mm[Hg]`` is milli-``m[Hg]``.
* §5 square brackets are part of an atom (``[in_i'Hg]``); §6/§12 annotations in curly braces
  are discarded, and an annotation on its own is the unity: ``{beats}/min`` = ``/min``,
  ``mL/min/{1.73_m2}`` = ``mL/min``.
* §7 ``.`` and ``/`` with equal precedence, evaluated left to right; a leading ``/`` inverts:
  ``mL/min/{1.73_m2}`` is (mL/min)/1, ``/min`` is min⁻¹.
* §8 integer factors (``10*3/uL``; ``10*`` and ``10^`` are the atom "ten", so ``10*9`` is 10⁹),
  §9 exponents (``m2``, ``cm3`` = (cm)³, ``s-1``), §10 parentheses.
* Codes are case-sensitive (UCUM c/s); whitespace is an error (§3).

Canonical units - one per dimension
-----------------------------------
The canonical unit is a function of the dimension alone, so two codes are comparable exactly
when their canonical units are the same string.  It is built from the base units
``g m s K mol eq osm [iU] [arb'U]``, with these choices:

* mass ``g``, length ``m``, time ``s``, temperature ``K``, amount of substance ``mol``;
* volume ``L`` rather than UCUM's ``m3``: a length exponent that is a multiple of 3 is written in
  litres, so mass concentrations come out as ``g/L``, substance concentrations as ``mol/L``,
  cell counts as ``/L`` (``10*9/L`` and ``10*3/uL`` are both 10⁹ ``/L``), flows as ``L/s``;
* pressure ``Pa``, energy ``J``, force ``N``, power ``W`` (named, instead of ``g/m/s2`` etc.);
* rates ``/s`` (``/min``, ``{breaths}/min``, ``Hz``); dimensionless ``1`` (``%`` is 0.01, so
  SpO2 92 % is ``(0.92, "1")``).

Deliberate departures from UCUM, all towards *not* matching:

* UCUM defines ``mol`` as the number 6.02214076·10²³; here ``mol`` is a base unit, so
  ``mmol/L`` never compares with a cell count such as ``10*9/L``.
* UCUM defines ``eq`` and ``osm`` as 1 ``mol``; here each is its own base unit, because
  milliequivalents equal millimoles only for univalent ions (1 mmol Ca²⁺ is 2 meq), so
  ``meq/L`` is not comparable with ``mmol/L``.  The non-UCUM spelling ``mEq``, common in
  data, is accepted as ``meq``.
* ``[iU]`` (= ``[IU]``) and ``[arb'U]`` are arbitrary units, "not commensurable with any other
  unit" (§24.3): each is a base unit of its own, so ``[iU]/L`` never compares with ``/L`` or
  ``U/L``.  §25 goes further (no term with an arbitrary unit compares with another term); we
  read it pragmatically and still let ``m[iU]/mL`` compare with ``[iU]/L``, the same assay unit
  per a different volume.  ``U`` (enzyme unit) is ``umol/min``, as UCUM defines it.
* Special units on non-ratio scales (``Cel``, ``[degF]``) "cannot take part in any algebraic
  operations" (§22.1): they are accepted only on their own, so ``Cel/h`` gives None.  A prefix
  scales the measured value (§22.3-4, x = f⁻¹(αx')): 1000 mCel is 1 Cel.

Temperature is affine: K = Cel + 273.15 and K = ([degF] + 459.67) × 5/9.  Every conversion
here is increasing, so a range converts endpoint by endpoint - convert ``low`` and ``high`` of
a search range (or of the implicit range of a value's precision) separately.

Arithmetic is exact: unit factors are rationals, and the value is scaled with one rounding at
the end (34 significant digits), so equal quantities give *identical* decimals
(``60 /min`` and ``1 /s``, ``37 Cel`` and ``98.6 [degF]``).  :func:`canonical_float` does the
same for the float values the search index stores, reading the float through its shortest
decimal form (98.6, not 98.59999999999999431566).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, DivisionByZero, InvalidOperation
from fractions import Fraction
from functools import lru_cache
from typing import TypeAlias

__all__ = [
    "UCUM_SYSTEM",
    "canonical",
    "canonical_float",
    "canonical_unit",
    "same_dimension",
]

UCUM_SYSTEM = "http://unitsofmeasure.org"
"""Quantity.system for UCUM codes; only codes in this system should be canonicalised."""

# --- dimensions -------------------------------------------------------------------------------

_BASES = ("g", "m", "s", "K", "mol", "eq", "osm", "[iU]", "[arb'U]")
"""Base units, the axes of a dimension vector (see the module docstring for the extra ones)."""

_M = _BASES.index("m")
_DISPLAY_ORDER = tuple(
    _BASES.index(b) for b in ("g", "mol", "eq", "osm", "[iU]", "[arb'U]", "K", "m", "s")
)
"""Order of the factors in a canonical unit: ``mol/L/s`` rather than ``/L.mol/s``."""

_Dims: TypeAlias = tuple[int, ...]
_DIMLESS: _Dims = (0,) * len(_BASES)


def _dims(**exponents: int) -> _Dims:
    return tuple(exponents.get(base, 0) for base in _BASES)


# Named canonical units: dimension -> (symbol, its size in base units).  Everything else is
# written as a product of base units.
_NAMED: dict[_Dims, tuple[str, Fraction]] = {
    _dims(g=1, m=-1, s=-2): ("Pa", Fraction(1000)),  # kg/(m.s2)
    _dims(g=1, m=2, s=-2): ("J", Fraction(1000)),  # kg.m2/s2
    _dims(g=1, m=1, s=-2): ("N", Fraction(1000)),  # kg.m/s2
    _dims(g=1, m=2, s=-3): ("W", Fraction(1000)),  # kg.m2/s3
}


# --- the unit table ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Atom:
    factor: Fraction  # size in base units
    dims: _Dims
    metric: bool  # may take a prefix (§11)
    offset: Fraction | None = None  # special unit: K = (x + offset) * factor


_PREFIXES: dict[str, Fraction] = {
    "Y": Fraction(10) ** 24,
    "Z": Fraction(10) ** 21,
    "E": Fraction(10) ** 18,
    "P": Fraction(10) ** 15,
    "T": Fraction(10) ** 12,
    "G": Fraction(10) ** 9,
    "M": Fraction(10) ** 6,
    "k": Fraction(10) ** 3,
    "h": Fraction(10) ** 2,
    "da": Fraction(10),
    "d": Fraction(10) ** -1,
    "c": Fraction(10) ** -2,
    "m": Fraction(10) ** -3,
    "u": Fraction(10) ** -6,
    "n": Fraction(10) ** -9,
    "p": Fraction(10) ** -12,
    "f": Fraction(10) ** -15,
    "a": Fraction(10) ** -18,
    "z": Fraction(10) ** -21,
    "y": Fraction(10) ** -24,
}
_PREFIXES_LONGEST_FIRST = sorted(_PREFIXES, key=len, reverse=True)

_ATOMS: dict[str, _Atom] = {
    base: _Atom(Fraction(1), tuple(int(i == n) for i in range(len(_BASES))), True)
    for n, base in enumerate(_BASES)
}
_ATOMS["[arb'U]"] = _Atom(Fraction(1), _ATOMS["[arb'U]"].dims, False)  # not metric in UCUM

# (code, metric, value, unit) as in ucum-essence.xml 2.2: code = value × unit.  Each row may
# use the rows above it.  Comments give the UCUM class.
_DEFINITIONS: tuple[tuple[str, bool, str, str], ...] = (
    # dimensionless
    ("10*", False, "10", "1"),
    ("10^", False, "10", "1"),
    ("%", False, "1", "10*-2"),
    ("[ppth]", False, "1", "10*-3"),
    ("[ppm]", False, "1", "10*-6"),
    # si
    ("Hz", True, "1", "s-1"),
    ("N", True, "1", "kg.m/s2"),
    ("Pa", True, "1", "N/m2"),
    ("J", True, "1", "N.m"),
    ("W", True, "1", "J/s"),
    # iso1000
    ("l", True, "1", "dm3"),
    ("L", True, "1", "l"),
    ("min", False, "60", "s"),
    ("h", False, "60", "min"),
    ("d", False, "24", "h"),
    ("a_j", False, "365.25", "d"),
    ("a", False, "1", "a_j"),
    ("wk", False, "7", "d"),
    ("mo_j", False, "1", "a_j/12"),
    ("mo", False, "1", "mo_j"),
    ("t", True, "1e3", "kg"),
    ("bar", True, "1e5", "Pa"),
    # const
    ("[g]", True, "9.80665", "m/s2"),
    ("atm", False, "101325", "Pa"),
    # intcust
    ("[in_i]", False, "2.54", "cm"),
    ("[ft_i]", False, "12", "[in_i]"),
    ("[yd_i]", False, "3", "[ft_i]"),
    ("[mi_i]", False, "5280", "[ft_i]"),
    ("[cin_i]", False, "1", "[in_i]3"),
    # us-volumes
    ("[gal_us]", False, "231", "[in_i]3"),
    ("[qt_us]", False, "1", "[gal_us]/4"),
    ("[pt_us]", False, "1", "[qt_us]/2"),
    ("[gil_us]", False, "1", "[pt_us]/4"),
    ("[foz_us]", False, "1", "[gil_us]/4"),
    ("[tbs_us]", False, "1", "[foz_us]/2"),
    ("[tsp_us]", False, "1", "[tbs_us]/3"),
    ("[cup_us]", False, "16", "[tbs_us]"),
    # avoirdupois
    ("[gr]", False, "64.79891", "mg"),
    ("[lb_av]", False, "7000", "[gr]"),
    ("[oz_av]", False, "1", "[lb_av]/16"),
    ("[stone_av]", False, "14", "[lb_av]"),
    ("[lbf_av]", False, "1", "[lb_av].[g]"),
    # heat (Cel and [degF] are special units, below)
    ("[degR]", False, "5", "K/9"),
    ("cal_th", True, "4.184", "J"),
    ("cal", True, "1", "cal_th"),
    ("[Cal]", False, "1", "kcal_th"),
    # clinical
    ("m[H2O]", True, "9.80665", "kPa"),
    ("m[Hg]", True, "133.3220", "kPa"),
    ("[in_i'Hg]", False, "1", "m[Hg].[in_i]/m"),
    ("g%", True, "1", "g/dL"),
    # chemical (eq, osm, [iU] are base units here: see the module docstring)
    ("Eq", True, "1", "eq"),  # not UCUM: the common misspelling of "eq" (mEq/L)
    ("kat", True, "1", "mol/s"),
    ("U", True, "1", "umol/min"),
    ("[IU]", True, "1", "[iU]"),
    # misc
    ("[psi]", False, "1", "[lbf_av]/[in_i]2"),
)

# Special units (UCUM §§21-23): K = (x + offset) × factor.
_SPECIAL: dict[str, tuple[bool, Fraction, Fraction]] = {
    "Cel": (True, Fraction("273.15"), Fraction(1)),  # cel(1 K)
    "[degF]": (False, Fraction("459.67"), Fraction(5, 9)),  # degf(5 K/9)
}

_MAX_CODE_LENGTH = 256
_MAX_EXPONENT = 64
"""Bounds that keep a hostile code from building huge rationals; no real unit comes close."""

_INTEGER = re.compile(r"(\d+)(?:([+-]\d+))?")
_ANNOTATABLE = re.compile(r"(.+?)([+-]?\d+)?")
_STOP = frozenset("./(){}")


class _Invalid(Exception):
    """The code is not in the supported subset of UCUM."""


@dataclass(frozen=True, slots=True)
class _Term:
    factor: Fraction
    dims: _Dims
    special: _Atom | None = None  # a lone special unit (the term is exactly that unit)


_UNITY = _Term(Fraction(1), _DIMLESS)


def _times(a: _Term, b: _Term, power: int) -> _Term:
    if a.special is not None or b.special is not None:
        raise _Invalid("special units cannot be combined")
    dims = tuple(x + power * y for x, y in zip(a.dims, b.dims, strict=True))
    return _Term(a.factor * b.factor**power, dims)


class _Parser:
    """Recursive descent over the UCUM grammar (§§4-10), evaluating as it goes."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.pos = 0

    def peek(self) -> str:
        return self.code[self.pos] if self.pos < len(self.code) else ""

    def main_term(self) -> _Term:
        if self.peek() == "/":  # §7.3: a leading solidus inverts what follows
            self.pos += 1
            term = _times(_UNITY, self.component(), -1)
        else:
            term = self.component()
        term = self.term_rest(term)
        if self.pos != len(self.code):
            raise _Invalid(f"unexpected {self.peek()!r}")
        return term

    def term_rest(self, term: _Term) -> _Term:
        # §7.4: "." and "/" have the same precedence and are evaluated left to right.
        while (op := self.peek()) in (".", "/"):
            self.pos += 1
            term = _times(term, self.component(), 1 if op == "." else -1)
        return term

    def component(self) -> _Term:
        char = self.peek()
        if char == "(":  # §10 nested term
            self.pos += 1
            term = self.term_rest(self.component())
            if self.peek() != ")":
                raise _Invalid("missing ')'")
            self.pos += 1
            if term.special is not None:
                raise _Invalid("special units cannot be nested")
            return term
        if char == "{":  # §6.4: an annotation on its own is the unity
            self.annotation()
            return _UNITY
        symbol = self.symbol()
        if self.peek() == "{":  # §6.2: annotations carry no meaning
            self.annotation()
        return _simple_unit(symbol)

    def annotation(self) -> None:
        end = self.code.find("}", self.pos + 1)
        if end < 0 or "{" in self.code[self.pos + 1 : end]:
            raise _Invalid("bad annotation")
        self.pos = end + 1

    def symbol(self) -> str:
        start = self.pos
        code = self.code
        while self.pos < len(code) and code[self.pos] not in _STOP:
            if code[self.pos] == "[":  # §5: brackets are lexical, any of 33-126 inside
                end = code.find("]", self.pos + 1)
                if end < 0 or "[" in code[self.pos + 1 : end]:
                    raise _Invalid("bad square brackets")
                self.pos = end + 1
            elif code[self.pos] == "]":
                raise _Invalid("unmatched ']'")
            else:
                self.pos += 1
        if self.pos == start:
            raise _Invalid("missing unit")
        return code[start : self.pos]


def _exponent(text: str | None) -> int:
    if text is None:
        return 1
    exponent = int(text)
    if abs(exponent) > _MAX_EXPONENT:
        raise _Invalid("exponent out of range")
    return exponent


def _simple_unit(symbol: str) -> _Term:
    integer = _INTEGER.fullmatch(symbol)
    if integer:  # §8 (and §9: "2+10" is 2 to the 10th)
        return _Term(Fraction(int(integer[1])) ** _exponent(integer[2]), _DIMLESS)
    match = _ANNOTATABLE.fullmatch(symbol)
    if match is None:  # pragma: no cover - the pattern matches any non-empty string
        raise _Invalid(symbol)
    name, exponent = match[1], _exponent(match[2])
    prefix, atom = _split_prefix(name)
    if atom.offset is not None:
        if exponent != 1:
            raise _Invalid("special units take no exponent")
        # The prefix scales the measured value (§22.4):
        # K = (prefix·x + offset) × factor = (x + offset/prefix) × (factor·prefix).
        special = _Atom(atom.factor * prefix, atom.dims, False, atom.offset / prefix)
        return _Term(Fraction(1), atom.dims, special)
    return _Term((prefix * atom.factor) ** exponent, tuple(exponent * d for d in atom.dims))


def _split_prefix(name: str) -> tuple[Fraction, _Atom]:
    # §4.4: the longest prefix whose remainder is a metric atom; otherwise a bare atom.
    for prefix in _PREFIXES_LONGEST_FIRST:
        if name.startswith(prefix) and len(name) > len(prefix):
            atom = _ATOMS.get(name[len(prefix) :])
            if atom is not None and atom.metric:
                return _PREFIXES[prefix], atom
    atom = _ATOMS.get(name)
    if atom is None:
        raise _Invalid(f"unknown unit {name!r}")
    return Fraction(1), atom


def _evaluate(code: str) -> _Term:
    if not code or len(code) > _MAX_CODE_LENGTH or not all(33 <= ord(c) <= 126 for c in code):
        raise _Invalid("not a UCUM code")
    return _Parser(code).main_term()


def _build_table() -> None:
    for code, metric, value, unit in _DEFINITIONS:
        term = _evaluate(unit)
        _ATOMS[code] = _Atom(Fraction(value) * term.factor, term.dims, metric)
    for code, (metric, offset, factor) in _SPECIAL.items():
        _ATOMS[code] = _Atom(factor, _ATOMS["K"].dims, metric, offset)


_build_table()


# --- canonical form ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Canonical:
    """canonical value = (value × scale + shift) / divisor, in ``unit``; all exact integers."""

    unit: str
    dims: _Dims
    scale: Decimal
    shift: Decimal
    divisor: Decimal


def _unit_name(dims: _Dims) -> tuple[str, Fraction]:
    """The canonical unit of a dimension and its size in base units."""
    named = _NAMED.get(dims)
    if named is not None:
        return named
    size = Fraction(1)
    numerator: list[str] = []
    denominator: list[str] = []
    for axis in _DISPLAY_ORDER:
        exponent = dims[axis]
        symbol = _BASES[axis]
        if axis == _M and exponent % 3 == 0:
            exponent //= 3
            symbol = "L"
            size = Fraction(1, 1000) ** exponent
        if exponent == 0:
            continue
        power = "" if abs(exponent) == 1 else str(abs(exponent))
        (numerator if exponent > 0 else denominator).append(symbol + power)
    if not numerator and not denominator:
        return "1", size
    return ".".join(numerator) + "".join("/" + d for d in denominator), size


@lru_cache(maxsize=4096)
def _canonical_form(code: str) -> _Canonical | None:
    try:
        term = _evaluate(code)
    except _Invalid:
        return None
    unit, size = _unit_name(term.dims)
    if term.special is not None:  # K = (x + offset) × factor
        offset, factor = term.special.offset or Fraction(0), term.special.factor
        # (x + p/q) × n/d = (x·q·n + p·n) / (q·d)
        p, q = offset.numerator, offset.denominator
        n, d = factor.numerator, factor.denominator
        return _Canonical(unit, term.dims, Decimal(q * n), Decimal(p * n), Decimal(q * d))
    ratio = term.factor / size
    return _Canonical(
        unit, term.dims, Decimal(ratio.numerator), Decimal(0), Decimal(ratio.denominator)
    )


_EXACT = Context(prec=1000, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[InvalidOperation])
_RESULT = Context(prec=34, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[InvalidOperation, DivisionByZero])


def canonical(value: Decimal, code: str) -> tuple[Decimal, str] | None:
    """``value`` in UCUM unit ``code`` as a value in the canonical unit of its dimension.

    Returns ``(canonical value, canonical unit)``, or None when ``code`` is not a UCUM code this
    module knows (the caller then compares unit codes literally).  The result is exact when it
    fits in 34 significant digits and correctly rounded otherwise, so equal quantities give
    equal decimals.  Infinite values stay infinite (every conversion is increasing), which lets
    an open range end convert like any other; NaN stays NaN.
    """
    form = _canonical_form(code)
    if form is None:
        return None
    numerator = _EXACT.fma(value, form.scale, form.shift)
    return _RESULT.divide(numerator, form.divisor), form.unit


def canonical_float(value: float, code: str) -> tuple[float, str] | None:
    """:func:`canonical` for a float, read through its shortest decimal form (``repr``).

    ``98.6`` [degF] and ``37.0`` Cel both give exactly ``310.15`` K: the conversion is done in
    decimal and rounded to a float once.
    """
    form = _canonical_form(code)
    if form is None:
        return None
    numerator = _EXACT.fma(Decimal(repr(value)), form.scale, form.shift)
    return float(_RESULT.divide(numerator, form.divisor)), form.unit


def canonical_unit(code: str) -> str | None:
    """The canonical unit that :func:`canonical` gives for ``code``, or None if unknown."""
    form = _canonical_form(code)
    return None if form is None else form.unit


def same_dimension(code_a: str, code_b: str) -> bool:
    """Whether both codes are known units of the same dimension (so their values compare)."""
    a, b = _canonical_form(code_a), _canonical_form(code_b)
    return a is not None and b is not None and a.dims == b.dims
