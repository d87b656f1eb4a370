"""Validation throughput: typical resources per second, every check on, against the floor of
parsing the same bytes with orjson in the same run.

Resources come from the Synthea bundles in ``../shared/data/synthea-r4`` (Patient, vital-sign
Observations, Encounter, Condition, MedicationRequest), plus whole 300-entry Synthea bundles
validated as Bundle resources. "Every check on" is what a write does: the validator
(structure, types, cardinality, bindings, slicing, invariants, references) and the
data-quality rules. One process, one core, CPU time of the process. The vital-sign
Observations are validated once plainly and once claiming their core vital-signs profile
(``meta.profile``), which adds the profile's checks.

Then the ingest comparison: the same bundles imported through the service layer into SQLite
with validation off and strict, in CPU seconds of this process (robust on a busy machine); the
HTTP figure is ``bench/ingest.py --validation off|strict``.

Rerun::

    .venv/bin/python bench/validate.py                 # 20 patient bundles
    .venv/bin/python bench/validate.py --patients 80 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from carebridge.fhir.validation import Validator
from carebridge.quality.rules import check_quality

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "synthea-r4"
TARGET = 5_000  # typical resources per second per core (issue: validation and data quality)
INGEST_TARGET = 0.50  # validation adds at most 50 % to ingest
TYPES = ("Patient", "Observation", "Encounter", "Condition", "MedicationRequest")
VITAL_PROFILES = {  # LOINC code -> core profile (http://hl7.org/fhir/R4/observation-vitalsigns.html)
    "8867-4": "heartrate", "9279-1": "resprate", "8310-5": "bodytemp", "29463-7": "bodyweight",
    "8302-2": "bodyheight", "39156-5": "bmi", "85354-9": "bp", "59408-5": "oxygensat",
}
SD = "http://hl7.org/fhir/StructureDefinition/"


def load(data: Path, patients: int) -> tuple[dict[str, list[bytes]], list[bytes]]:
    files = sorted(p for p in data.glob("*.json") if not p.name.startswith(
        ("hospitalInformation", "practitionerInformation")))[:patients]
    if not files:
        raise SystemExit(f"no Synthea bundles in {data}")
    by_kind: dict[str, list[bytes]] = {}
    bundles: list[bytes] = []
    for path in files:
        bundle = orjson.loads(path.read_bytes())
        entries = bundle["entry"]
        for entry in entries:
            resource = entry["resource"]
            kind = resource["resourceType"]
            if kind == "Observation":
                codes = [c.get("code") for c in resource["code"].get("coding", ())]
                vital = next((VITAL_PROFILES[c] for c in codes if c in VITAL_PROFILES), None)
                if vital is None:
                    continue
                by_kind.setdefault("Observation (vital sign)", []).append(orjson.dumps(resource))
                profiled = copy.deepcopy(resource)
                profiled["meta"] = {"profile": [SD + vital]}
                by_kind.setdefault("Observation + vital-signs profile", []).append(
                    orjson.dumps(profiled))
            elif kind in TYPES:
                by_kind.setdefault(kind, []).append(orjson.dumps(resource))
        if len(entries) >= 300:
            bundles.append(orjson.dumps({**bundle, "entry": entries[:300]}))
    return by_kind, bundles


def best_of(rounds: int, work: Callable[[], None]) -> float:
    """CPU seconds of this process (one thread), best of ``rounds``: other processes on a
    shared machine then cost little but cache misses."""
    times = []
    for _ in range(rounds):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return min(times)


def measure(validator: Validator, payloads: list[bytes], rounds: int) -> tuple[float, float]:
    """(seconds to parse all, seconds to parse and validate all), best of ``rounds``."""
    def parse() -> None:
        for raw in payloads:
            orjson.loads(raw)

    def parse_and_validate() -> None:
        for raw in payloads:
            resource: Any = orjson.loads(raw)
            validator.validate(resource)
            check_quality(resource)

    return best_of(rounds, parse), best_of(rounds, parse_and_validate)


def ingest_cpu(data: Path, patients: int, mode: str) -> tuple[int, float]:
    """(resources, CPU seconds of this process) to import the bundles into a fresh SQLite
    store through the service layer with validation ``mode``. CPU time, not wall time: the
    figure then holds on a machine other processes keep busy."""
    from carebridge.security.policy import SYSTEM
    from carebridge.services.importer import Importer
    from carebridge.services.resources import ResourceService
    from carebridge.services.validation import WriteValidation
    from carebridge.storage import open_repository

    files = sorted(data.glob("*.json"))
    first = [p for p in files if p.name.startswith(("hospitalInformation",
                                                     "practitionerInformation"))]
    files = first + [p for p in files if p not in first][:patients]
    with tempfile.TemporaryDirectory(prefix="carebridge-bench-validate-") as tmp:
        repository = open_repository(f"sqlite:///{tmp}/store.db")
        try:
            service = ResourceService(repository, validation=WriteValidation(repository, mode))
            importer = Importer(service, SYSTEM)
            count = 0
            started = time.process_time()
            for path in files:
                result = importer.load_file(path)
                if not result.ok:
                    raise SystemExit(f"{path.name} did not load: {result.error}")
                count += result.total
            return count, time.process_time() - started
        finally:
            repository.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=20, help="patient bundles (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="best of N rounds (default 3)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--no-ingest", action="store_true",
                        help="skip the ingest comparison (validation off vs strict)")
    args = parser.parse_args(argv)
    print("rerun: " + shlex.join([sys.executable.split("/")[-1], *sys.argv]))
    by_kind, bundles = load(args.data, args.patients)
    validator = Validator()
    started = time.perf_counter()
    for payloads in (*by_kind.values(), bundles):  # compile every definition once
        for raw in payloads[:20]:
            validator.validate(orjson.loads(raw))
    print(f"compiling the definitions used: {time.perf_counter() - started:.2f} s (once per "
          "process)")
    print(f"\n{'resources':<36}{'count':>7}{'validated/s':>13}{'parsed/s (floor)':>18}"
          f"{'ratio':>8}{'us each':>9}")
    typical_count = 0
    typical_seconds = 0.0
    for kind, payloads in by_kind.items():
        floor, full = measure(validator, payloads, args.rounds)
        rate, floor_rate = len(payloads) / full, len(payloads) / floor
        print(f"{kind:<36}{len(payloads):>7}{rate:>13,.0f}{floor_rate:>18,.0f}"
              f"{rate / floor_rate:>8.3f}{full / len(payloads) * 1e6:>9.0f}")
        if "profile" not in kind:
            typical_count += len(payloads)
            typical_seconds += full
    if bundles:
        floor, full = measure(validator, bundles, args.rounds)
        entries = 300 * len(bundles)
        print(f"{'Bundle of 300 Synthea entries':<36}{len(bundles):>7}"
              f"{len(bundles) / full:>13,.1f}{len(bundles) / floor:>18,.1f}"
              f"{floor / full:>8.3f}{full / len(bundles) * 1e6:>9.0f}")
        print(f"{'  = entries in those bundles':<36}{entries:>7}{entries / full:>13,.0f}"
              f"{entries / floor:>18,.0f}")
    typical = typical_count / typical_seconds
    print(f"\ntypical resources (mix above, no profile claimed): {typical:,.0f}/s per core; "
          f"target >= {TARGET:,} ({typical / TARGET:.2f}x the target)")
    if not args.no_ingest:
        runs: dict[str, list[float]] = {"off": [], "strict": []}
        count = 0
        for _ in range(2):
            for mode in ("off", "strict"):
                count, seconds = ingest_cpu(args.data, args.patients, mode)
                runs[mode].append(seconds)
        off, strict = min(runs["off"]), min(runs["strict"])
        print(f"\ningest through the service layer into SQLite ({count} resources, CPU s, best "
              f"of 2): validation off {off:.2f} s ({count / off:,.0f}/s), strict {strict:.2f} s"
              f" ({count / strict:,.0f}/s): validation adds {strict / off - 1:+.0%} "
              f"(target <= +{INGEST_TARGET:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
