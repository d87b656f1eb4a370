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
    # Validation on write (docs/validation.md): strict | warn | off.
    validation: str = "strict"
    # HL7 v2 over MLLP (docs/hl7v2.md): off unless a port is set.
    mllp_port: int | None = None
    mllp_max_frame_bytes: int = 1024 * 1024
    mllp_idle_timeout: float = 300.0
    mllp_tls_cert: str | None = None
    mllp_tls_key: str | None = None
    mllp_workers: int = 0  # more processes on the same MLLP port (ingest/hl7v2/workers.py)
    # Remote monitoring (docs/monitoring.md): MQTT device ingest when set (mqtt://host:port).
    mqtt_url: str | None = None
    mqtt_workers: int = 0  # more processes that only ingest MQTT (monitoring/workers.py)
    monitoring: bool = True
    # Security (docs/security.md). Authentication is on unless insecure_dev, which is
    # refused on anything but a loopback address.
    insecure_dev: bool = False
    public_url: str | None = None  # the URL clients use, e.g. https://fhir.example.org
    tls_cert: str | None = None
    tls_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    master_key_file: str | None = None  # or CAREBRIDGE_MASTER_KEY (base64, 32 bytes)
    oidc_issuer: str | None = None
    oidc_jwks_url: str | None = None
    oidc_audience: str | None = None

    @property
    def base_url(self) -> str:
        """The server's public origin (no trailing slash): token issuer and audience root."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"
