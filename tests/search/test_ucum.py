"""UCUM canonical units for quantity search (carebridge.search.ucum).

Expected values come from the UCUM specification (https://ucum.org/ucum, ucum-essence.xml 2.2)
and from exact definitions outside it: 1 lb = 0.45359237 kg and 1 in = 2.54 cm (international
yard and pound, 1959), K = Cel + 273.15, 1 standard atmosphere = 101325 Pa.  FHIR's own example
is search.html#quantity: "5.4 mg" should match "0.0054 g".
"""

from __future__ import annotations

import math
from decimal import Context, Decimal

import pytest

from carebridge.search.ucum import (
    UCUM_SYSTEM,
    canonical,
    canonical_float,
    canonical_unit,
    same_dimension,
)


def canon(value: str, code: str) -> tuple[Decimal, str]:
    result = canonical(Decimal(value), code)
    assert result is not None, code
    return result


def assert_same_quantity(a: tuple[str, str], b: tuple[str, str]) -> None:
    """Both quantities canonicalise to the same unit and *exactly* the same decimal."""
    value_a, unit_a = canon(*a)
    value_b, unit_b = canon(*b)
    assert unit_a == unit_b
    assert value_a == value_b, (a, b, value_a, value_b)


def test_system_uri() -> None:
    assert UCUM_SYSTEM == "http://unitsofmeasure.org"


# --- the pairs the issue names ----------------------------------------------------------------


def test_fhir_example_mg_and_g() -> None:
    assert canon("5.4", "mg") == (Decimal("0.0054"), "g")
    assert_same_quantity(("5.4", "mg"), ("0.0054", "g"))
    assert_same_quantity(("5.4", "mg"), ("5400", "ug"))
    assert_same_quantity(("1", "kg"), ("1000000", "mg"))


def test_kilogram_and_avoirdupois_pound() -> None:
    assert canon("1", "[lb_av]") == (Decimal("453.59237"), "g")
    assert_same_quantity(("150", "[lb_av]"), ("68.0388555", "kg"))
    assert_same_quantity(("16", "[oz_av]"), ("1", "[lb_av]"))
    assert_same_quantity(("1", "[stone_av]"), ("14", "[lb_av]"))


def test_celsius_fahrenheit_kelvin() -> None:
    assert canon("37", "Cel") == (Decimal("310.15"), "K")
    assert canon("0", "Cel") == (Decimal("273.15"), "K")
    assert canon("212", "[degF]") == (Decimal("373.15"), "K")
    assert canon("-40", "[degF]") == canon("-40", "Cel")
    # Exact, not merely within 1e-9.
    assert_same_quantity(("37", "Cel"), ("98.6", "[degF]"))
    assert_same_quantity(("98.6", "[degF]"), ("310.15", "K"))
    body_f = canon("98.6", "[degF]")[0]
    assert abs(body_f - Decimal("310.15")) < Decimal("1e-9")
    # 100 °F is colder than 50 °C: the canonical values order them correctly.
    assert canon("100", "[degF]")[0] < canon("50", "Cel")[0]


def test_temperature_range_converts_endpoint_by_endpoint() -> None:
    # "37 Cel" has the implicit range [36.5, 37.5] (search.html#number); its Fahrenheit image
    # is [97.7, 99.5], not 98.6 ± 0.5.
    low, high = canon("36.5", "Cel")[0], canon("37.5", "Cel")[0]
    assert canon("97.7", "[degF]")[0] == low
    assert canon("99.5", "[degF]")[0] == high
    assert low <= canon("98.6", "[degF]")[0] <= high
    assert not low <= canon("100", "[degF]")[0] <= high


def test_blood_pressure_mm_hg_and_kpa() -> None:
    # m[Hg] = 133.3220 kPa (ucum-essence.xml), so 1 mm[Hg] = 133.322 Pa.
    assert canon("1", "mm[Hg]") == (Decimal("133.322"), "Pa")
    assert_same_quantity(("120", "mm[Hg]"), ("15.99864", "kPa"))
    assert_same_quantity(("1", "kPa"), ("1000", "Pa"))
    assert_same_quantity(("1", "bar"), ("100", "kPa"))
    assert_same_quantity(("1", "atm"), ("101.325", "kPa"))
    # 760 mmHg is one atmosphere to within 0.001 %.
    atm, mmhg = canon("1", "atm")[0], canon("760", "mm[Hg]")[0]
    assert abs(atm - mmhg) / atm < Decimal("1e-5")
    # [in_i'Hg] = m[Hg].[in_i]/m = 133322 Pa × 0.0254.
    assert canon("1", "[in_i'Hg]") == (Decimal("3386.3788"), "Pa")
    assert canon("1", "cm[H2O]") == (Decimal("98.0665"), "Pa")


def test_rates_per_minute_beats_and_per_second() -> None:
    assert canon("72", "/min") == (Decimal("1.2"), "/s")
    assert_same_quantity(("72", "/min"), ("72", "{beats}/min"))
    assert_same_quantity(("16", "{breaths}/min"), ("16", "/min"))
    assert_same_quantity(("60", "/min"), ("1", "/s"))
    assert_same_quantity(("60", "/min"), ("1", "Hz"))
    assert_same_quantity(("3600", "/h"), ("1", "/s"))


def test_percent_and_unity() -> None:
    assert canon("92", "%") == (Decimal("0.92"), "1")
    assert canon("0.92", "1") == (Decimal("0.92"), "1")
    assert_same_quantity(("92", "%"), ("0.92", "1"))
    assert_same_quantity(("92", "%"), ("920", "[ppth]"))
    assert_same_quantity(("5", "%{vol}"), ("0.05", "1"))
    assert_same_quantity(("3", "{RBC}"), ("3", "1"))
    assert same_dimension("%", "1")
    assert same_dimension("mmol/mol", "%")
    # SpO2 92 % is below 95 % and above 0.9.
    assert canon("0.9", "1")[0] < canon("92", "%")[0] < canon("95", "%")[0]


def test_mass_concentrations() -> None:
    assert canon("100", "mg/dL") == (Decimal("1"), "g/L")
    assert_same_quantity(("100", "mg/dL"), ("1", "g/L"))
    assert_same_quantity(("14", "g/dL"), ("140", "g/L"))
    assert_same_quantity(("14", "g%"), ("14", "g/dL"))
    assert_same_quantity(("5", "ng/mL"), ("5", "ug/L"))
    assert_same_quantity(("5", "pg/mL"), ("5", "ng/L"))


def test_substance_concentrations() -> None:
    assert canon("5", "mmol/L") == (Decimal("0.005"), "mol/L")
    assert_same_quantity(("5", "mmol/L"), ("5000", "umol/L"))
    assert_same_quantity(("5", "mmol/L"), ("5", "umol/mL"))


def test_cell_counts() -> None:
    assert_same_quantity(("7.5", "10*9/L"), ("7.5", "10*3/uL"))
    assert_same_quantity(("4.5", "10*12/L"), ("4.5", "10*6/uL"))
    assert_same_quantity(("7.5", "10^9/L"), ("7.5", "10*9/L"))
    assert canon("7.5", "10*9/L")[1] == "/L"
    assert_same_quantity(("250", "10*3/uL"), ("250000", "/uL"))


def test_lengths() -> None:
    assert canon("1", "[in_i]") == (Decimal("0.0254"), "m")
    assert_same_quantity(("70", "[in_i]"), ("177.8", "cm"))
    assert_same_quantity(("6", "[ft_i]"), ("72", "[in_i]"))
    assert_same_quantity(("1", "[yd_i]"), ("0.9144", "m"))
    assert_same_quantity(("1", "[mi_i]"), ("1.609344", "km"))


def test_area_and_exponents() -> None:
    assert canon("2", "m2") == (Decimal("2"), "m2")
    assert_same_quantity(("1", "m2"), ("10000", "cm2"))  # §9: cm2 is (cm)², not c(m²)
    assert_same_quantity(("24", "kg/m2"), ("2.4", "g/cm2"))
    assert canon("24", "kg/m2")[1] == "g/m2"
    assert_same_quantity(("1", "m-1"), ("1", "/m"))
    assert_same_quantity(("1", "s-1"), ("1", "/s"))
    assert_same_quantity(("1", "[in_i]2"), ("6.4516", "cm2"))


def test_volumes_in_litres() -> None:
    assert canon("1", "m3") == (Decimal("1000"), "L")
    assert_same_quantity(("1", "L"), ("1", "dm3"))
    assert_same_quantity(("1", "mL"), ("1", "cm3"))
    assert_same_quantity(("1", "l"), ("1", "L"))
    assert_same_quantity(("90", "fL"), ("90", "um3"))
    assert_same_quantity(("1", "[gal_us]"), ("3.785411784", "L"))
    assert_same_quantity(("1", "[cup_us]"), ("8", "[foz_us]"))
    assert_same_quantity(("3", "[tsp_us]"), ("1", "[tbs_us]"))


def test_clinical_compound_units() -> None:
    # eGFR: the {1.73_m2} annotation is discarded (§12), and / is left to right (§7).
    assert canon("90", "mL/min/{1.73_m2}") == (Decimal("0.0015"), "L/s")
    assert_same_quantity(("90", "mL/min/{1.73_m2}"), ("90", "mL/min"))
    assert_same_quantity(("60", "mL/min"), ("1", "mL/s"))
    assert_same_quantity(("30", "pg"), ("0.03", "ng"))
    assert canon("30", "pg")[1] == "g"


def test_energy() -> None:
    assert canon("1", "kcal") == (Decimal("4184"), "J")  # cal = cal_th = 4.184 J
    assert_same_quantity(("2000", "kcal"), ("8368", "kJ"))
    assert_same_quantity(("2000", "[Cal]"), ("2000", "kcal"))


def test_time() -> None:
    assert_same_quantity(("1", "h"), ("3600", "s"))
    assert_same_quantity(("1", "d"), ("24", "h"))
    assert_same_quantity(("2", "wk"), ("14", "d"))
    assert_same_quantity(("1", "a"), ("365.25", "d"))  # a = a_j
    assert_same_quantity(("12", "mo"), ("1", "a"))
    assert_same_quantity(("1", "ms"), ("1000", "us"))


def test_enzyme_and_international_units() -> None:
    assert_same_quantity(("60", "U/L"), ("1", "umol/s/L"))  # U = umol/min
    assert_same_quantity(("1", "kat/L"), ("1", "mol/s/L"))
    assert_same_quantity(("40", "[IU]/L"), ("40", "[iU]/L"))
    assert_same_quantity(("40", "m[iU]/mL"), ("40", "[iU]/L"))
    # Arbitrary units are "not commensurable with any other unit" (UCUM §24.3).
    assert not same_dimension("[iU]/L", "/L")
    assert not same_dimension("[iU]/L", "U/L")
    assert not same_dimension("[iU]", "[arb'U]")


def test_equivalents_are_not_moles() -> None:
    assert canon("140", "meq/L") == (Decimal("0.14"), "eq/L")
    assert_same_quantity(("140", "mEq/L"), ("140", "meq/L"))  # the common spelling, accepted
    assert_same_quantity(("140", "mEq/L"), ("0.14", "eq/L"))
    assert not same_dimension("mEq/L", "mmol/L")
    assert not same_dimension("mosm/kg", "mmol/kg")
    assert not same_dimension("mmol/L", "10*9/L")


# --- syntax ---------------------------------------------------------------------------------


def test_left_to_right_evaluation_and_parentheses() -> None:
    # §7.4: mg/kg.d is (mg/kg)·d; mg/kg/d and mg/(kg.d) are the dose rate.
    assert_same_quantity(("1", "mg/kg/d"), ("1", "mg/(kg.d)"))
    assert canon("1", "mg/kg/d")[1] == "/s"
    assert canon("1", "mg/kg.d")[1] == "s"
    assert_same_quantity(("1", "(mg/dL)"), ("1", "mg/dL"))
    assert_same_quantity(("1", "kg.m/s2"), ("1", "N"))
    assert_same_quantity(("1", "N/m2"), ("1", "Pa"))


def test_prefix_parsing() -> None:
    # §4.4: the prefix is taken only if the rest is a metric atom.
    assert canon("1", "Pa") == (Decimal("1"), "Pa")  # not peta-year: "a" is not metric
    assert canon("1", "hPa") == (Decimal("100"), "Pa")
    assert canon("1", "dam") == (Decimal("10"), "m")  # deka, the two-letter prefix
    assert canon("1", "mmol") == (Decimal("0.001"), "mol")
    assert canon("1", "min") == (Decimal("60"), "s")  # an atom, not milli-"in"
    assert canonical(Decimal(1), "mmin") is None  # min is not metric (§11)
    assert canonical(Decimal(1), "k[lb_av]") is None
    assert canonical(Decimal(1), "cd") is None  # not centi-day; candela is not in the table


def test_integer_factors_and_ten_powers() -> None:
    assert canon("1", "10*3") == (Decimal("1000"), "1")
    assert canon("1", "10*-3") == (Decimal("0.001"), "1")
    assert canon("1", "10*") == (Decimal("10"), "1")
    assert canon("1", "100") == (Decimal("100"), "1")
    assert canon("1", "2+10") == (Decimal("1024"), "1")  # §9: a signed exponent on a number
    assert_same_quantity(("1", "10*3.g"), ("1", "kg"))
    assert_same_quantity(("1", "mg/100"), ("10", "ug"))


def test_annotations() -> None:
    assert_same_quantity(("1", "kg{total}"), ("1", "kg"))
    assert_same_quantity(("1", "{cells}/uL"), ("1", "/uL"))
    assert_same_quantity(("1", "mL{x.y/z}"), ("1", "mL"))  # operators inside braces are text
    assert canonical(Decimal(1), "{a}g") is None  # an annotation is not a prefix
    assert canonical(Decimal(1), "g{a") is None
    assert canonical(Decimal(1), "g{a{b}}") is None  # §6.5: no nesting


@pytest.mark.parametrize(
    "code",
    [
        "",  # empty
        "furlong",
        "mm Hg",  # whitespace (§3)
        " mg",
        "mmHg",  # not UCUM: mm[Hg]
        "MG",  # case-sensitive: M (mega) + G is nothing
        "µg",  # not ASCII: UCUM writes ug
        "kg/",
        "/",
        ".kg",
        "kg..m",
        "(kg",
        "kg)",
        "m^2",
        "[in_i",
        "in_i]",
        "[[in_i]]",
        "10*99999999",  # exponent far out of range
        "m" * 300,  # too long
        "mL/min/1.73m2",
    ],
)
def test_unknown_or_invalid_codes_give_none(code: str) -> None:
    assert canonical(Decimal(1), code) is None
    assert canonical_float(1.0, code) is None
    assert canonical_unit(code) is None
    assert not same_dimension(code, code)


def test_special_units_only_on_their_own() -> None:
    for code in ("Cel/h", "/Cel", "Cel2", "Cel.s", "(Cel)", "[degF]/min", "2.Cel", "k[degF]"):
        assert canonical(Decimal(1), code) is None, code
    assert same_dimension("Cel", "[degF]")
    assert same_dimension("Cel", "K")
    assert_same_quantity(("37", "Cel{oral}"), ("37", "Cel"))
    # A prefix scales the measured value (§22.4): 1000 mCel is 1 Cel, 0 mCel is 0 Cel.
    assert_same_quantity(("1000", "mCel"), ("1", "Cel"))
    assert_same_quantity(("0", "mCel"), ("0", "Cel"))
    # [degR] is on a ratio scale: an ordinary unit of 5/9 K.
    assert_same_quantity(("9", "[degR]"), ("5", "K"))
    assert canon("9", "[degR]/s")[1] == "K/s"


# --- dimensions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("mg", "[lb_av]", True),
        ("mg", "mL", False),
        ("mg/dL", "g/L", True),
        ("mg/dL", "mmol/L", False),
        ("mm[Hg]", "kPa", True),
        ("mm[Hg]", "cm[H2O]", True),
        ("/min", "{beats}/min", True),
        ("/min", "min", False),
        ("cm", "[in_i]", True),
        ("cm", "cm2", False),
        ("m2", "[in_i]2", True),
        ("kcal", "kJ", True),
        ("kcal", "kW", False),
        ("%", "mg", False),
        ("10*9/L", "10*3/uL", True),
        ("10*9/L", "g/L", False),
        ("Cel", "mg", False),
        ("mg", "furlong", False),
        ("furlong", "furlong", False),
    ],
)
def test_same_dimension(a: str, b: str, expected: bool) -> None:
    assert same_dimension(a, b) is expected
    assert same_dimension(b, a) is expected
    unit_a, unit_b = canonical_unit(a), canonical_unit(b)
    if expected:
        assert unit_a == unit_b is not None
    else:
        assert unit_a is None or unit_b is None or unit_a != unit_b


@pytest.mark.parametrize(
    ("code", "unit"),
    [
        ("mg", "g"),
        ("km", "m"),
        ("mL", "L"),
        ("h", "s"),
        ("Cel", "K"),
        ("umol", "mol"),
        ("mm[Hg]", "Pa"),
        ("{breaths}/min", "/s"),
        ("%", "1"),
        ("mg/dL", "g/L"),
        ("mmol/L", "mol/L"),
        ("meq/L", "eq/L"),
        ("U/L", "mol/L/s"),
        ("[iU]/L", "[iU]/L"),
        ("10*9/L", "/L"),
        ("fL", "L"),
        ("mL/min/{1.73_m2}", "L/s"),
        ("kg/m2", "g/m2"),
        ("kcal", "J"),
        ("kg.m/s2", "N"),
        ("W", "W"),
    ],
)
def test_canonical_unit(code: str, unit: str) -> None:
    assert canonical_unit(code) == unit
    # The canonical unit is itself a UCUM code for which the conversion is the identity.
    assert canon("1.5", unit) == (Decimal("1.5"), unit)


# --- arithmetic -----------------------------------------------------------------------------


def test_exact_decimal_arithmetic() -> None:
    # Thirds and ninths do not accumulate error: the rational factor is applied once.
    assert canon("3", "[tsp_us]") == canon("1", "[tbs_us]")
    assert canon("180", "/min") == (Decimal("3"), "/s")
    # Otherwise one correctly rounded result to 34 significant digits.
    assert canon("1", "/min")[0] == Context(prec=34).divide(Decimal(1), Decimal(60))
    assert canon("1", "[degF]") == (Decimal("255.9277777777777777777777777777778"), "K")


def test_infinite_and_nan_values() -> None:
    # Open range ends ("<5 mg" is (-inf, 5]) convert like any other end.
    assert canonical(Decimal("-Infinity"), "mg") == (Decimal("-Infinity"), "g")
    assert canonical(Decimal("Infinity"), "[degF]") == (Decimal("Infinity"), "K")
    result = canonical(Decimal("NaN"), "mg")
    assert result is not None and result[0].is_nan()
    assert canonical_float(-math.inf, "mg") == (-math.inf, "g")


def test_extreme_values_do_not_blow_up() -> None:
    assert canon("1E-999999", "[degF]")[0] == canon("0", "[degF]")[0]
    assert canon("1E+999999", "g")[0] == Decimal("1E+999999")
    assert canon("1E+999999", "mg")[0] == Decimal("1E+999996")


def test_canonical_float() -> None:
    assert canonical_float(5.4, "mg") == canonical_float(0.0054, "g") == (0.0054, "g")
    assert canonical_float(37.0, "Cel") == canonical_float(98.6, "[degF]") == (310.15, "K")
    assert canonical_float(120, "mm[Hg]") == (15998.64, "Pa")
    assert canonical_float(72.0, "{beats}/min") == (1.2, "/s")
    assert canonical_float(92.0, "%") == (0.92, "1")
    assert canonical_float(7.5, "10*3/uL") == canonical_float(7.5, "10*9/L") == (7.5e9, "/L")
    value, unit = canonical_float(37.0, "Cel") or (math.nan, "")
    assert unit == "K" and abs(value - 310.15) < 1e-9


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("5.4", "mg"), ("0.0054", "g")),
        (("150", "[lb_av]"), ("68.0388555", "kg")),
        (("37", "Cel"), ("98.6", "[degF]")),
        (("120", "mm[Hg]"), ("15.99864", "kPa")),
        (("72", "/min"), ("1.2", "/s")),
        (("100", "mg/dL"), ("1", "g/L")),
        (("7.5", "10*9/L"), ("7.5", "10*3/uL")),
        (("70", "[in_i]"), ("177.8", "cm")),
        (("90", "mL/min/{1.73_m2}"), ("0.0015", "L/s")),
    ],
)
def test_float_path_agrees_with_decimal_path(a: tuple[str, str], b: tuple[str, str]) -> None:
    float_a = canonical_float(float(a[0]), a[1])
    float_b = canonical_float(float(b[0]), b[1])
    assert float_a is not None and float_b is not None
    assert float_a == float_b
    decimal_value, unit = canon(*a)
    assert float_a == (float(decimal_value), unit)


_METRIC_ATOMS = ("g", "m", "s", "L", "l", "mol", "eq", "Pa", "J", "cal", "U", "[iU]", "bar")
_PREFIX_VALUES = {
    "k": "1E3",
    "h": "1E2",
    "da": "1E1",
    "d": "1E-1",
    "c": "1E-2",
    "m": "1E-3",
    "u": "1E-6",
    "n": "1E-9",
    "p": "1E-12",
    "f": "1E-15",
    "M": "1E6",
    "G": "1E9",
}


@pytest.mark.parametrize("atom", _METRIC_ATOMS)
@pytest.mark.parametrize("prefix", sorted(_PREFIX_VALUES))
def test_prefixes(prefix: str, atom: str) -> None:
    assert_same_quantity(("1", prefix + atom), (_PREFIX_VALUES[prefix], atom))
    # §9.2: the prefix is raised with the atom.
    if atom in ("m", "g", "s"):
        size = Decimal(_PREFIX_VALUES[prefix])
        assert_same_quantity(("1", f"{prefix}{atom}2"), (str(size * size), f"{atom}2"))
