-- Remote monitoring: device fleet health, readings dedup, rule state, durable delivery queue.
-- Instants are ISO 8601 UTC text of fixed width (text order is time order) in both dialects.

-- Transactional outbox: one row per stored version, written in the same transaction as the
-- version (carebridge.events.outbox), consumed and deleted by the trigger evaluator.
CREATE TABLE event_outbox (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource_type TEXT    NOT NULL,
    resource_id   TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    method        TEXT    NOT NULL
);

-- Durable delivery queue (Subscription rest-hook notifications), retried with back-off.
CREATE TABLE delivery_queue (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel       TEXT    NOT NULL,   -- Subscription id
    method        TEXT    NOT NULL,   -- POST or PUT
    endpoint      TEXT    NOT NULL,
    headers       TEXT    NOT NULL,   -- JSON list of "Name: value"
    content_type  TEXT,
    payload       BYTEA,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  TEXT    NOT NULL,
    last_error    TEXT,
    status        TEXT    NOT NULL DEFAULT 'pending'   -- pending | failed
);
CREATE INDEX delivery_queue_due ON delivery_queue (status, next_attempt);

-- Vital-sign readings projected from committed Observations (numbers in their UCUM unit).
CREATE TABLE mon_reading (
    patient_id     TEXT NOT NULL,
    code           TEXT NOT NULL,
    effective      TEXT NOT NULL,
    value          DOUBLE PRECISION NOT NULL,
    observation_id TEXT NOT NULL
);
CREATE INDEX mon_reading_latest ON mon_reading (patient_id, code, effective);

-- Device credentials and fleet health.
CREATE TABLE mon_device (
    device_id    TEXT PRIMARY KEY,
    secret_hash  TEXT,
    last_seen    TEXT,
    battery      DOUBLE PRECISION,
    signal       DOUBLE PRECISION,
    status       TEXT NOT NULL DEFAULT 'unknown',   -- online | degraded | offline | unknown
    status_since TEXT
);

CREATE TABLE mon_downtime (
    device_id TEXT NOT NULL,
    started   TEXT NOT NULL,
    ended     TEXT
);
CREATE INDEX mon_downtime_device ON mon_downtime (device_id, started);

-- Alerts (FHIR Flags) and the condition each one stands for; at most one open per condition.
CREATE TABLE mon_alert (
    flag_id       TEXT PRIMARY KEY,
    patient_id    TEXT NOT NULL,
    condition_key TEXT NOT NULL,
    rank          INTEGER NOT NULL,
    state         TEXT NOT NULL,   -- open | acknowledged | resolved
    opened        TEXT NOT NULL
);
CREATE UNIQUE INDEX mon_alert_one_open ON mon_alert (patient_id, condition_key)
    WHERE state <> 'resolved';
