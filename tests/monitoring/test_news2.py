"""NEWS2 at every band edge, worked out from RCP 2017 chart 1 (scores) and chart 4 (risk)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carebridge.monitoring.news2 import (
    Consciousness,
    Parameter,
    Risk,
    consciousness_score,
    news2_score,
    pulse_score,
    respiration_rate_score,
    risk_band,
    spo2_scale1_score,
    spo2_scale2_score,
    systolic_bp_score,
    temperature_score,
)

# Each pair: the last value of one band and the first of the next, with the chart's scores.


@pytest.mark.parametrize(("rate", "score"), [
    (0, 3), (8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (60, 3),
    (8.4, 3), (8.5, 1), (20.4, 0), (20.5, 2),
])
def test_respiration_rate(rate: float, score: int) -> None:
    assert respiration_rate_score(rate) == score


@pytest.mark.parametrize(("spo2", "score"), [
    (70, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0), (95.5, 0),
])
def test_spo2_scale1(spo2: float, score: int) -> None:
    assert spo2_scale1_score(spo2) == score


@pytest.mark.parametrize(("spo2", "on_oxygen", "score"), [
    (83, False, 3), (84, False, 2), (85, False, 2), (86, False, 1), (87, False, 1),
    (88, False, 0), (92, False, 0), (93, False, 0), (97, False, 0), (100, False, 0),
    (83, True, 3), (84, True, 2), (86, True, 1), (88, True, 0), (92, True, 0),
    (93, True, 1), (94, True, 1), (95, True, 2), (96, True, 2), (97, True, 3), (100, True, 3),
])
def test_spo2_scale2(spo2: float, on_oxygen: bool, score: int) -> None:
    assert spo2_scale2_score(spo2, on_oxygen) == score


@pytest.mark.parametrize(("sbp", "score"), [
    (50, 3), (90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3),
    (260, 3),
])
def test_systolic_bp(sbp: float, score: int) -> None:
    assert systolic_bp_score(sbp) == score


@pytest.mark.parametrize(("pulse", "score"), [
    (30, 3), (40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1), (111, 2),
    (130, 2), (131, 3), (180, 3),
])
def test_pulse(pulse: float, score: int) -> None:
    assert pulse_score(pulse) == score


@pytest.mark.parametrize(("temp", "score"), [
    (33.0, 3), (35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0), (38.1, 1), (39.0, 1),
    (39.1, 2), (41.0, 2), (35.04, 3), (35.05, 1), (38.04, 0), (38.05, 1),
])
def test_temperature(temp: float, score: int) -> None:
    assert temperature_score(temp) == score


@pytest.mark.parametrize(("level", "score"), [
    (Consciousness.ALERT, 0), (Consciousness.CONFUSION, 3), (Consciousness.VOICE, 3),
    (Consciousness.PAIN, 3), (Consciousness.UNRESPONSIVE, 3),
])
def test_consciousness(level: Consciousness, score: int) -> None:
    assert consciousness_score(level) == score


@pytest.mark.parametrize(("total", "single_three", "risk"), [
    (0, False, Risk.LOW), (4, False, Risk.LOW), (3, True, Risk.LOW_MEDIUM),
    (4, True, Risk.LOW_MEDIUM), (5, False, Risk.MEDIUM), (5, True, Risk.MEDIUM),
    (6, True, Risk.MEDIUM), (7, False, Risk.HIGH), (7, True, Risk.HIGH), (20, True, Risk.HIGH),
])
def test_risk_band(total: int, single_three: bool, risk: Risk) -> None:
    assert risk_band(total, single_three) == risk


NORMAL = dict(respiration_rate=16, spo2=97, on_oxygen=False, systolic_bp=120, pulse=70,
              consciousness=Consciousness.ALERT, temperature=37.0)


def test_all_normal_is_zero_and_complete() -> None:
    result = news2_score(**NORMAL)  # type: ignore[arg-type]
    assert (result.total, result.risk, result.missing) == (0, Risk.LOW, ())
    assert result.complete and not result.oxygen_assumed


def test_supplemental_oxygen_adds_two() -> None:
    result = news2_score(**{**NORMAL, "on_oxygen": True})  # type: ignore[arg-type]
    assert result.total == 2
    assert result.sub_scores[Parameter.AIR_OR_OXYGEN] == 2


def test_oxygen_counts_as_air_without_a_reading() -> None:
    result = news2_score(**{**NORMAL, "on_oxygen": None})  # type: ignore[arg-type]
    assert result.sub_scores[Parameter.AIR_OR_OXYGEN] == 0
    assert result.oxygen_assumed
    assert Parameter.AIR_OR_OXYGEN not in result.missing


def test_single_three_is_low_medium() -> None:
    # Pulse 131 scores 3, everything else 0: aggregate 3 but one red parameter (chart 4).
    result = news2_score(**{**NORMAL, "pulse": 131})  # type: ignore[arg-type]
    assert (result.total, result.risk) == (3, Risk.LOW_MEDIUM)


def test_sepsis_like_picture_is_high() -> None:
    # RR 25 (3) + SpO2 93 (2) + SBP 95 (2) + pulse 115 (2) + temp 38.5 (1) = 10.
    result = news2_score(respiration_rate=25, spo2=93, on_oxygen=False, systolic_bp=95,
                         pulse=115, consciousness=Consciousness.ALERT, temperature=38.5)
    assert (result.total, result.risk) == (10, Risk.HIGH)


def test_medium_band_from_aggregate() -> None:
    # RR 22 (2) + pulse 112 (2) + temp 38.2 (1) = 5: medium.
    result = news2_score(**{**NORMAL, "respiration_rate": 22, "pulse": 112,  # type: ignore[arg-type]
                            "temperature": 38.2})
    assert (result.total, result.risk) == (5, Risk.MEDIUM)


def test_missing_parameters_are_listed_not_scored() -> None:
    result = news2_score(pulse=135, spo2=90)
    assert result.missing == (Parameter.RESPIRATION_RATE, Parameter.SYSTOLIC_BP,
                              Parameter.CONSCIOUSNESS, Parameter.TEMPERATURE)
    # Pulse 3 + SpO2 3 = 6 from the present values: medium, whatever the others turn out to be.
    assert (result.total, result.risk) == (6, Risk.MEDIUM)
    assert not result.complete


def test_hypercapnic_patient_uses_scale2() -> None:
    on_air = news2_score(spo2=89, hypercapnic_respiratory_failure=True)
    assert (on_air.spo2_scale, on_air.sub_scores[Parameter.SPO2]) == (2, 0)
    on_o2 = news2_score(spo2=97, on_oxygen=True, hypercapnic_respiratory_failure=True)
    assert on_o2.sub_scores[Parameter.SPO2] == 3
    assert on_o2.total == 5  # 3 for SpO2 + 2 for oxygen


_values = st.fixed_dictionaries({
    "respiration_rate": st.none() | st.integers(0, 60),
    "spo2": st.none() | st.integers(60, 100),
    "on_oxygen": st.none() | st.booleans(),
    "systolic_bp": st.none() | st.integers(40, 260),
    "pulse": st.none() | st.integers(20, 200),
    "consciousness": st.none() | st.sampled_from(list(Consciousness)),
    "temperature": st.none() | st.integers(320, 420).map(lambda t: t / 10),
})


@given(_values, st.data())
def test_band_never_lower_when_missing_values_arrive(values: dict[str, object],
                                                     data: st.DataObject) -> None:
    partial = news2_score(**values)  # type: ignore[arg-type]
    filled = {k: (data.draw(st.just(NORMAL[k])) if v is None else v) for k, v in values.items()}
    full = news2_score(**filled)  # type: ignore[arg-type]
    assert full.total >= partial.total
    assert full.risk.rank >= partial.risk.rank
