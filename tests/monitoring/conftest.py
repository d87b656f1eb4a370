"""Fixtures for the monitoring tests (see tests/monitoring/support.py)."""

from tests.monitoring.support import ward

__all__ = ["ward"]
