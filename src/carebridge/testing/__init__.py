"""Helpers shared by the test suite and the benchmarks.

:mod:`carebridge.testing.services` starts throwaway PostgreSQL and Mosquitto
instances on free loopback ports from the installed binaries; see its module
docstring for why it is hand-written.
"""

from carebridge.testing.server import ServerProcess
from carebridge.testing.services import (
    PostgresBinaries,
    ServiceUnavailable,
    ThrowawayMosquitto,
    ThrowawayPostgres,
    find_mosquitto_binary,
    find_postgres_binaries,
    free_port,
)

__all__ = [
    "PostgresBinaries",
    "ServerProcess",
    "ServiceUnavailable",
    "ThrowawayMosquitto",
    "ThrowawayPostgres",
    "find_mosquitto_binary",
    "find_postgres_binaries",
    "free_port",
]
