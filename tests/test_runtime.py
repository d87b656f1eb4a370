"""runtime.settle: the collector settings of the server and worker processes."""

from __future__ import annotations

import subprocess
import sys

from carebridge.runtime import THRESHOLDS

PROBE = """
import gc
from carebridge.runtime import settle
young = [{"n": n} for n in range(1000)]  # alive at startup: frozen
settle()
print(gc.get_freeze_count() >= 1000, gc.get_threshold())
garbage = []
garbage.append(garbage)  # a reference cycle made after startup
del garbage
print(gc.collect() >= 1)  # cycles made later are still collected
"""


def test_settle_freezes_the_startup_heap_and_raises_the_thresholds() -> None:
    # In a child process: freezing the test runner's own heap would change every later test.
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split("\n")
    assert out[0] == f"True {THRESHOLDS}"
    assert out[1] == "True"
    assert THRESHOLDS[0] > 700  # rarer young collections than CPython's default
