"""Device gateway: readings from wearables and bedside devices over HTTP and MQTT."""

from carebridge.ingest.devices.credentials import DeviceCredentials
from carebridge.ingest.devices.gateway import DeviceGateway, IngestResult, PreparedReadings

__all__ = ["DeviceCredentials", "DeviceGateway", "IngestResult", "PreparedReadings"]
