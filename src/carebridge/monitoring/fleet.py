"""Device fleet health: last seen, battery and signal, status, downtime periods.

A device is *online* while it reports (readings or heartbeats); *degraded* when it reports
but its battery is low or its signal weak; *offline* once it has been silent longer than the
offline threshold, which opens a downtime period that closes when it reports again.
Availability over a window is the share of the window not covered by downtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from carebridge.events.sqltext import run
from carebridge.monitoring.codes import from_text, instant_text
from carebridge.storage.base import Session

LOW_BATTERY = 15.0  # percent
WEAK_SIGNAL = -100.0  # dBm (RSSI)


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    device_id: str
    status: str
    last_seen: datetime | None
    battery: float | None
    signal: float | None
    status_since: datetime | None


def health_status(battery: float | None, signal: float | None) -> str:
    if (battery is not None and battery < LOW_BATTERY) or (
            signal is not None and signal < WEAK_SIGNAL):
        return "degraded"
    return "online"


def record_seen(session: Session, dialect: str, device_id: str, moment: datetime,
                battery: float | None = None, signal: float | None = None) -> bool:
    """Note that ``device_id`` reported at ``moment``; returns True when it was offline
    (its downtime period is closed here)."""
    rows = run(session, dialect,
               "SELECT status, battery, signal FROM mon_device WHERE device_id = ?", (device_id,))
    now = instant_text(moment)
    if not rows:
        status = health_status(battery, signal)
        run(session, dialect,
            "INSERT INTO mon_device (device_id, last_seen, battery, signal, status, status_since)"
            " VALUES (?, ?, ?, ?, ?, ?) RETURNING 1",
            (device_id, now, battery, signal, status, now))
        return False
    old_status, old_battery, old_signal = rows[0]
    battery = old_battery if battery is None else battery
    signal = old_signal if signal is None else signal
    status = health_status(battery, signal)
    run(session, dialect,
        "UPDATE mon_device SET last_seen = ?, battery = ?, signal = ?, status = ?,"
        " status_since = CASE WHEN status = ? THEN status_since ELSE ? END"
        " WHERE device_id = ? RETURNING 1",
        (now, battery, signal, status, status, now, device_id))
    if old_status == "offline":
        run(session, dialect,
            "UPDATE mon_downtime SET ended = ? WHERE device_id = ? AND ended IS NULL RETURNING 1",
            (now, device_id))
        return True
    return False


def mark_silent(session: Session, dialect: str, now: datetime,
                offline_after: timedelta) -> list[str]:
    """Set devices silent for longer than ``offline_after`` offline, opening a downtime
    period that starts when they were last seen; returns their ids."""
    cutoff = instant_text(now - offline_after)
    rows = run(session, dialect,
               "SELECT device_id, last_seen FROM mon_device WHERE status <> 'offline'"
               " AND last_seen IS NOT NULL AND last_seen < ?", (cutoff,))
    stamp = instant_text(now)
    for device_id, last_seen in rows:
        run(session, dialect,
            "UPDATE mon_device SET status = 'offline', status_since = ? WHERE device_id = ?"
            " RETURNING 1", (stamp, device_id))
        run(session, dialect,
            "INSERT INTO mon_downtime (device_id, started) VALUES (?, ?) RETURNING 1",
            (device_id, last_seen))
    return [row[0] for row in rows]


def fleet(session: Session, dialect: str) -> list[DeviceHealth]:
    rows = run(session, dialect,
               "SELECT device_id, status, last_seen, battery, signal, status_since"
               " FROM mon_device ORDER BY device_id")
    return [DeviceHealth(r[0], r[1], from_text(r[2]) if r[2] else None, r[3], r[4],
                         from_text(r[5]) if r[5] else None) for r in rows]


def downtime(session: Session, dialect: str, since: datetime,
             until: datetime) -> dict[str, list[tuple[datetime, datetime | None]]]:
    """Downtime periods overlapping [since, until] by device (an open period has no end)."""
    rows = run(session, dialect,
               "SELECT device_id, started, ended FROM mon_downtime"
               " WHERE started < ? AND (ended IS NULL OR ended > ?) ORDER BY started",
               (instant_text(until), instant_text(since)))
    out: dict[str, list[tuple[datetime, datetime | None]]] = {}
    for device_id, started, ended in rows:
        out.setdefault(device_id, []).append(
            (from_text(started), from_text(ended) if ended else None))
    return out


def availability(periods: list[tuple[datetime, datetime | None]], since: datetime,
                 until: datetime) -> float:
    """Share of [since, until] not covered by the (non-overlapping) downtime ``periods``."""
    window = (until - since).total_seconds()
    if window <= 0:
        return 1.0
    down = 0.0
    for start, end in periods:
        low, high = max(start, since), min(end or until, until)
        if high > low:
            down += (high - low).total_seconds()
    return max(0.0, 1.0 - down / window)
