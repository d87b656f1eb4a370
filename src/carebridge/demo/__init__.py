"""Sample data for ``carebridge demo`` and the tests: a few Synthea bundles (Apache-2.0; see
``data/NOTICE``)."""

from __future__ import annotations

import gzip
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson


def data_dir() -> Path:
    return Path(str(files("carebridge.demo") / "data"))


def load_bundle(name: str) -> dict[str, Any]:
    """One sample bundle by file name, e.g. ``patient-034.json.gz``."""
    bundle: dict[str, Any] = orjson.loads(gzip.decompress((data_dir() / name).read_bytes()))
    return bundle
