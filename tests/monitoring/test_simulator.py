"""The simulator (`carebridge simulate`): scripted deteriorations reach their alerts, flaky
devices misbehave as documented and the gateway copes, and the fleet report (`carebridge
devices report`) shows what the devices said."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.monitoring.support import LiveServer, Ward, wait_for
from typer.testing import CliRunner

from carebridge.cli import app
from carebridge.fhir.errors import FhirError
from carebridge.monitoring import simulator
from carebridge.monitoring.report import fleet_report

ORIGIN = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _patient(scenario: str = "stable", flaws: tuple[str, ...] = (),
             name: str = "p") -> simulator.SimulatedPatient:
    return simulator.SimulatedPatient(name, f"device-{name}", "secret", scenario, flaws,
                                      rng=random.Random(3))


def _by_patient(population: simulator.Population, duration: float,
                ) -> dict[str, list[tuple[float, dict[str, Any]]]]:
    # Two reading sets per second in all: one per second for each of the two patients.
    out: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    for elapsed, patient, reading in simulator.ticks(
            population, 2 * simulator.READINGS_PER_SET, duration, start=ORIGIN):
        out[patient.patient_id].append((elapsed, reading))
    return out


def _moment(reading: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(reading["t"].replace("Z", "+00:00"))


def test_flaky_devices_gaps_duplicates_skew_and_battery() -> None:
    steady = _patient(name="steady")
    flaky = _patient(flaws=("gaps", "duplicates", "skew", "battery"), name="flaky")
    sent = _by_patient(simulator.Population([steady, flaky]), 240)
    # Gaps: silent one 30-second period in four (90-120 s, 210-240 s); the steady device is not.
    quiet = [e for e, _ in sent["flaky"] if 90 <= e < 120 or 210 <= e < 240]
    assert quiet == []
    assert len([e for e, _ in sent["steady"] if 90 <= e < 120]) == 30
    # Duplicates: some reading sets are sent twice, the same object with the same instant.
    times = [r["t"] for _, r in sent["flaky"]]
    assert len(times) - len(set(times)) >= 10
    assert len(set(r["t"] for _, r in sent["steady"])) == len(sent["steady"])
    # Clock skew: every reading is ahead of the time it is sent; some far ahead (15 min).
    ahead = [_moment(r) - (ORIGIN + timedelta(seconds=e)) for e, r in sent["flaky"]]
    assert set(ahead) == {timedelta(minutes=2), timedelta(minutes=15)}
    assert all(_moment(r) == ORIGIN + timedelta(seconds=e) for e, r in sent["steady"])
    # Battery: drains by half a percent a set (reported rounded), the steady one stays full.
    flaky_levels = [r["battery"] for _, r in sent["flaky"]]
    assert flaky_levels[0] == 100 and flaky_levels[-1] < 60
    assert flaky_levels == sorted(flaky_levels, reverse=True)
    assert {r["battery"] for _, r in sent["steady"]} == {100}


@pytest.mark.parametrize("scenario", ["sepsis", "respiratory", "heart-failure"])
def test_scripted_deterioration_changes_the_vitals(scenario: str) -> None:
    patient = _patient(scenario)
    baseline = _patient("stable")
    before, after = patient.vitals(0, 10, 60), patient.vitals(100, 10, 60)
    normal = baseline.vitals(100, 10, 60)
    if scenario == "sepsis":
        assert after["hr"] > normal["hr"] + 40 and after["temp"] > 38.5
        assert after["sbp"] < normal["sbp"] - 25 and after["rr"] > 24
    elif scenario == "respiratory":
        assert after["spo2"] < 88 and after["rr"] > 25 and after["o2flow"] == 4
        assert "o2flow" not in before
    else:
        assert after["weight"] - before["weight"] > 2.5
        assert abs(after["hr"] - normal["hr"]) < 10


def test_simulated_ward_through_the_gateway(ward: Ward) -> None:
    """Scripted patients and a flaky device through the real gateway and engine: sepsis is
    scored high, heart failure trips its weight-trend rule, the stable patient raises
    nothing; duplicates are dropped, far-skewed readings refused, the battery reported."""
    population = simulator.provision(ward.service, ward.monitoring.credentials.issue, 3,
                                     scripted=1.0, flaky=0.0)
    by_scenario = {p.scenario: p for p in population.patients}
    assert set(by_scenario) == {"sepsis", "respiratory", "heart-failure"}
    flaky_id, flaky_secret = ward.add_device()
    flaky = simulator.SimulatedPatient(ward.patient_id, flaky_id, flaky_secret, "stable",
                                       ("duplicates", "skew", "battery"),
                                       rng=random.Random(5))
    population.patients.append(flaky)
    statuses: dict[str, list[int]] = defaultdict(list)
    stored: dict[str, int] = defaultdict(int)
    duplicates: dict[str, int] = defaultdict(int)
    refusals: list[str] = []
    start = datetime.now(UTC) - timedelta(seconds=30)  # the run took the last 30 s
    for _, patient, reading in simulator.ticks(population, 4 * 2 * simulator.READINGS_PER_SET,
                                               30, onset=5, ramp=10, start=start):
        try:
            result = ward.monitoring.gateway.ingest(patient.device_id, reading, patient.secret)
        except FhirError as exc:
            statuses[patient.scenario].append(exc.status)
            refusals.append(str(exc))
            continue
        statuses[patient.scenario].append(201)
        stored[patient.device_id] += len(result.stored)
        duplicates[patient.device_id] += len(result.duplicates)
    ward.settle()

    def open_codes(patient_id: str) -> set[str]:
        return {str(f["code"]["coding"][0]["code"])  # type: ignore[index]
                for f in ward.search("Flag", subject=f"Patient/{patient_id}")
                if f["status"] == "active"}

    assert "news2-high" in open_codes(by_scenario["sepsis"].patient_id)
    assert "rule-trend" in open_codes(by_scenario["heart-failure"].patient_id)
    assert not any(c.startswith("news2") or c.startswith("rule")
                   for c in open_codes(ward.patient_id))  # the flaky device's patient is well
    # Duplicates were dropped by the gateway, never stored twice.
    assert duplicates[flaky_id] > 0
    ids = [o["id"] for o in ward.search("Observation", device=f"Device/{flaky_id}")]
    assert len(ids) == len(set(ids)) == stored[flaky_id]
    # Readings 15 minutes ahead were refused with the reason; those 2 minutes ahead taken.
    assert 422 in statuses["stable"] and 201 in statuses["stable"]
    assert refusals and all("clock skew" in r for r in refusals)
    # The fleet shows the drained battery (the last value the device reported).
    report = fleet_report(ward.service, start, datetime.now(UTC))
    [row] = [d for d in report["devices"] if d["device"] == f"Device/{flaky_id}"]
    assert row["battery"] < 100


def test_simulate_and_devices_report_commands(ward: Ward, database_url: str) -> None:
    """``carebridge simulate --url`` provisions patients in the database and streams their
    readings to a running server over HTTP; ``carebridge devices report`` then lists the new
    devices as online with their battery."""
    runner = CliRunner()
    with LiveServer(ward.monitoring) as server:
        result = runner.invoke(app, ["simulate", "--database", database_url, "--url",
                                     server.url, "--patients", "3", "--rate", "42",
                                     "--duration", "1.5"])
        assert result.exit_code == 0, result.output
        assert "3 simulated patients" in result.output
        sent = int(result.output.rsplit("sent ", 1)[1].split()[0])
        assert sent >= 6
        ward.settle()
        simulated = [p for p in ward.search("Patient", family="Simulated-")]
        assert len(simulated) == 3
        wait_for(lambda: len(ward.search("Observation", code="http://loinc.org|8867-4")) >= 6)
    since = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    report = runner.invoke(app, ["devices", "report", "--database", database_url,
                                 "--since", since], env={"COLUMNS": "400"})
    assert report.exit_code == 0, report.output
    for patient in simulated:
        assert str(patient["id"]) in report.output
    assert "Virtual ward" in report.output
    assert report.output.count("online") >= 3
    assert since[:16] in report.output  # the window it was asked for
