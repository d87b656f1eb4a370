"""Fixtures for the device ingest tests (see tests/monitoring/support.py)."""

from tests.monitoring.support import ward

__all__ = ["ward"]
