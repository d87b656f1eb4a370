"""Sample data for ``carebridge demo`` and the tests: a few Synthea bundles (Apache-2.0; see
``data/NOTICE``)."""

from __future__ import annotations

import gzip
import os
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson

from carebridge.security.crypto import generate_master_key, load_key_provider

DEMO_KEY_NAME = "demo-master.key"


def data_dir() -> Path:
    return Path(str(files("carebridge.demo") / "data"))


def load_bundle(name: str) -> dict[str, Any]:
    """One sample bundle by file name, e.g. ``patient-034.json.gz``."""
    bundle: dict[str, Any] = orjson.loads(gzip.decompress((data_dir() / name).read_bytes()))
    return bundle


def demo_master_key(database_url: str) -> Path | None:
    """Turn encryption at rest on for the demo: the master key file beside the demo's SQLite
    database (``var/demo-master.key`` by default; ``var/`` for other databases), written once
    (``keys generate-master``) and then reused. Returns the file, or None when a master key
    or KMS is already configured in the environment (that one is used). Sets
    ``CAREBRIDGE_MASTER_KEY_FILE`` so every part of the demo opens the store with it."""
    if load_key_provider() is not None:
        return None
    if database_url.startswith("sqlite:///"):
        folder = Path(database_url.removeprefix("sqlite:///")).parent
    else:
        folder = Path("var")
    path = folder / DEMO_KEY_NAME
    if not path.exists():
        generate_master_key(path)
    os.environ["CAREBRIDGE_MASTER_KEY_FILE"] = str(path)
    return path
