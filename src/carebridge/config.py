"""Settings, from command-line options or ``CAREBRIDGE_*`` environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from carebridge.storage.factory import DEFAULT_DATABASE_URL


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 64 * 1024 * 1024
    # HL7 v2 over MLLP (docs/hl7v2.md): off unless a port is set.
    mllp_port: int | None = None
    mllp_max_frame_bytes: int = 1024 * 1024
    mllp_idle_timeout: float = 300.0
    mllp_tls_cert: str | None = None
    mllp_tls_key: str | None = None
