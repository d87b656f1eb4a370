"""NEWS2, the National Early Warning Score 2 (Royal College of Physicians, 2017), as pure functions.

Sources: RCP, *National Early Warning Score (NEWS) 2: Standardising the assessment of
acute-illness severity in the NHS*, 2017 -- chart 1 (the NEWS2 scoring system) and chart 4
(clinical response to the NEWS2 trigger thresholds).

Values are recorded as the chart records them: respiration rate, SpO2, systolic pressure and
pulse in whole numbers, temperature to one decimal place. A device may send 20.6 /min, so each
value is first rounded half-up to the chart's precision and then banded; this makes every band
edge exact (20 -> 0 points, 21 -> 2 points) and leaves no value between two bands.

Written by hand: no maintained Python package implements NEWS2, and the chart is a few lines of
thresholds that must be checked against the source edge by edge anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

__all__ = [
    "Consciousness",
    "News2Result",
    "Parameter",
    "Risk",
    "news2_score",
    "pulse_score",
    "respiration_rate_score",
    "risk_band",
    "spo2_scale1_score",
    "spo2_scale2_score",
    "systolic_bp_score",
    "temperature_score",
]


class Parameter(StrEnum):
    """The seven NEWS2 physiological parameters (chart 1, top to bottom)."""

    RESPIRATION_RATE = "respiration-rate"
    SPO2 = "spo2"
    AIR_OR_OXYGEN = "air-or-oxygen"
    SYSTOLIC_BP = "systolic-bp"
    PULSE = "pulse"
    CONSCIOUSNESS = "consciousness"
    TEMPERATURE = "temperature"


class Consciousness(StrEnum):
    """ACVPU (chart 1): Alert, new Confusion, Voice, Pain, Unresponsive."""

    ALERT = "A"
    CONFUSION = "C"
    VOICE = "V"
    PAIN = "P"
    UNRESPONSIVE = "U"


class Risk(StrEnum):
    """Clinical risk bands of chart 4, lowest first."""

    LOW = "low"
    LOW_MEDIUM = "low-medium"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return _RISK_ORDER.index(self)


_RISK_ORDER = [Risk.LOW, Risk.LOW_MEDIUM, Risk.MEDIUM, Risk.HIGH]


def _whole(value: float) -> int:
    return int(Decimal(str(value)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _tenths(value: float) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def respiration_rate_score(breaths_per_minute: float) -> int:
    """Chart 1: <=8: 3, 9-11: 1, 12-20: 0, 21-24: 2, >=25: 3."""
    rate = _whole(breaths_per_minute)
    if rate <= 8:
        return 3
    if rate <= 11:
        return 1
    if rate <= 20:
        return 0
    if rate <= 24:
        return 2
    return 3


def spo2_scale1_score(percent: float) -> int:
    """Chart 1, SpO2 scale 1: <=91: 3, 92-93: 2, 94-95: 1, >=96: 0."""
    spo2 = _whole(percent)
    if spo2 <= 91:
        return 3
    if spo2 <= 93:
        return 2
    if spo2 <= 95:
        return 1
    return 0


def spo2_scale2_score(percent: float, on_oxygen: bool) -> int:
    """Chart 1, SpO2 scale 2 (target 88-92 %, hypercapnic respiratory failure only):
    <=83: 3, 84-85: 2, 86-87: 1, 88-92 or >=93 on air: 0, 93-94 on O2: 1, 95-96 on O2: 2,
    >=97 on O2: 3. High saturations score only when the patient is on oxygen."""
    spo2 = _whole(percent)
    if spo2 <= 83:
        return 3
    if spo2 <= 85:
        return 2
    if spo2 <= 87:
        return 1
    if spo2 <= 92 or not on_oxygen:
        return 0
    if spo2 <= 94:
        return 1
    if spo2 <= 96:
        return 2
    return 3


def air_or_oxygen_score(on_oxygen: bool) -> int:
    """Chart 1: supplemental oxygen 2, air 0."""
    return 2 if on_oxygen else 0


def systolic_bp_score(mm_hg: float) -> int:
    """Chart 1: <=90: 3, 91-100: 2, 101-110: 1, 111-219: 0, >=220: 3."""
    pressure = _whole(mm_hg)
    if pressure <= 90:
        return 3
    if pressure <= 100:
        return 2
    if pressure <= 110:
        return 1
    if pressure <= 219:
        return 0
    return 3


def pulse_score(beats_per_minute: float) -> int:
    """Chart 1: <=40: 3, 41-50: 1, 51-90: 0, 91-110: 1, 111-130: 2, >=131: 3."""
    pulse = _whole(beats_per_minute)
    if pulse <= 40:
        return 3
    if pulse <= 50:
        return 1
    if pulse <= 90:
        return 0
    if pulse <= 110:
        return 1
    if pulse <= 130:
        return 2
    return 3


def consciousness_score(level: Consciousness) -> int:
    """Chart 1: Alert 0; new Confusion, Voice, Pain or Unresponsive 3."""
    return 0 if level is Consciousness.ALERT else 3


def temperature_score(celsius: float) -> int:
    """Chart 1: <=35.0: 3, 35.1-36.0: 1, 36.1-38.0: 0, 38.1-39.0: 1, >=39.1: 2."""
    temp = _tenths(celsius)
    if temp <= Decimal("35.0"):
        return 3
    if temp <= Decimal("36.0"):
        return 1
    if temp <= Decimal("38.0"):
        return 0
    if temp <= Decimal("39.0"):
        return 1
    return 2


def risk_band(total: int, any_single_three: bool) -> Risk:
    """Chart 4: aggregate 0-4 low; a score of 3 in any single parameter low-medium (unless
    the aggregate already says more); 5-6 medium; 7 or more high."""
    if total >= 7:
        return Risk.HIGH
    if total >= 5:
        return Risk.MEDIUM
    if any_single_three:
        return Risk.LOW_MEDIUM
    return Risk.LOW


@dataclass(frozen=True, slots=True)
class News2Result:
    """A NEWS2 score over the parameters present.

    ``missing`` lists parameters with no value: they are never scored as normal silently.
    ``total`` and ``risk`` are what the present parameters imply, so a complete set of
    observations can only raise them (every sub-score is >= 0): the band is never lower than
    the present values justify. ``complete`` is True when nothing is missing.
    """

    total: int
    risk: Risk
    sub_scores: dict[Parameter, int]
    missing: tuple[Parameter, ...]
    spo2_scale: int
    on_oxygen: bool
    oxygen_assumed: bool = field(default=False)

    @property
    def complete(self) -> bool:
        return not self.missing


def news2_score(
    *,
    respiration_rate: float | None = None,
    spo2: float | None = None,
    on_oxygen: bool | None = None,
    systolic_bp: float | None = None,
    pulse: float | None = None,
    consciousness: Consciousness | None = None,
    temperature: float | None = None,
    hypercapnic_respiratory_failure: bool = False,
) -> News2Result:
    """Score the values given. ``on_oxygen`` None means no inhaled-oxygen reading: the issue
    (and chart 1's default) count that as air, and ``oxygen_assumed`` says so."""
    oxygen = bool(on_oxygen)
    scale = 2 if hypercapnic_respiratory_failure else 1
    subs: dict[Parameter, int] = {}
    missing: list[Parameter] = []

    def put(parameter: Parameter, score: int | None) -> None:
        if score is None:
            missing.append(parameter)
        else:
            subs[parameter] = score

    put(Parameter.RESPIRATION_RATE,
        None if respiration_rate is None else respiration_rate_score(respiration_rate))
    if spo2 is None:
        put(Parameter.SPO2, None)
    else:
        # Chart 1: scale 2 only for patients with hypercapnic respiratory failure, on the
        # decision of a competent clinician, recorded in the notes.
        put(Parameter.SPO2,
            spo2_scale2_score(spo2, oxygen) if scale == 2 else spo2_scale1_score(spo2))
    put(Parameter.AIR_OR_OXYGEN, air_or_oxygen_score(oxygen))
    put(Parameter.SYSTOLIC_BP, None if systolic_bp is None else systolic_bp_score(systolic_bp))
    put(Parameter.PULSE, None if pulse is None else pulse_score(pulse))
    put(Parameter.CONSCIOUSNESS,
        None if consciousness is None else consciousness_score(consciousness))
    put(Parameter.TEMPERATURE, None if temperature is None else temperature_score(temperature))
    total = sum(subs.values())
    risk = risk_band(total, any(score == 3 for score in subs.values()))
    return News2Result(total, risk, subs, tuple(missing), scale, oxygen, on_oxygen is None)
