"""Availability per device and per ward over a window (``GET /monitoring/devices``,
``carebridge devices report``). A device's ward is its ``Device.location`` (display, else the
reference); devices without one are reported under "(no ward)"."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

import orjson

from carebridge.fhir.resource import format_instant
from carebridge.monitoring import fleet
from carebridge.services.resources import ResourceService

NO_WARD = "(no ward)"


def fleet_report(service: ResourceService, since: datetime, until: datetime) -> dict[str, Any]:
    dialect = service.repository.dialect
    with service.repository.session() as session:
        devices = fleet.fleet(session, dialect)
        periods = fleet.downtime(session, dialect, since, until)
        bodies = session.read_many([("Device", d.device_id) for d in devices])
    rows: list[dict[str, Any]] = []
    wards: dict[str, list[float]] = defaultdict(list)
    for health in devices:
        stored = bodies.get(("Device", health.device_id))
        device = orjson.loads(stored.body) if stored is not None and stored.body else {}
        location = device.get("location") or {}
        ward = location.get("display") or location.get("reference") or NO_WARD
        share = fleet.availability(periods.get(health.device_id, []), since, until)
        wards[ward].append(share)
        rows.append({
            "device": f"Device/{health.device_id}",
            "patient": (device.get("patient") or {}).get("reference"),
            "ward": ward,
            "status": health.status,
            "lastSeen": format_instant(health.last_seen) if health.last_seen else None,
            "battery": health.battery,
            "signal": health.signal,
            "availability": round(share, 4),
            "downtime": [{"start": format_instant(s), "end": format_instant(e) if e else None}
                         for s, e in periods.get(health.device_id, [])],
        })
    return {
        "since": format_instant(since), "until": format_instant(until),
        "devices": rows,
        "wards": [{"ward": ward, "devices": len(shares),
                   "availability": round(sum(shares) / len(shares), 4)}
                  for ward, shares in sorted(wards.items())],
    }
