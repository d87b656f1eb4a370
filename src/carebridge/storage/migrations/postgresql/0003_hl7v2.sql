-- HL7 v2 ingest: message archive (every message and its ACK) and the error queue for replay.
-- message/ack hold bytes as the MessageCipher sealed them; key_id names the key (NULL: plain),
-- so encrypted rows can join plain ones once encryption at rest lands.

-- One row per accepted message, written in the same database transaction as the resources
-- it produced; UNIQUE (sender, control_id) is the exactly-once key (MSH-3|MSH-4 + MSH-10).
CREATE TABLE hl7v2_message (
    id            BIGSERIAL PRIMARY KEY,
    sender        TEXT        NOT NULL,
    control_id    TEXT        NOT NULL,
    message_type  TEXT        NOT NULL,
    received_at   TEXT        NOT NULL,   -- ISO 8601 UTC (same text as on SQLite)
    message       BYTEA       NOT NULL,
    ack           BYTEA       NOT NULL,
    key_id        TEXT,
    provenance_id TEXT,
    UNIQUE (sender, control_id)
);

-- Rejected or failed messages with the reason, kept for `carebridge hl7 replay ID`.
CREATE TABLE hl7v2_error (
    id            BIGSERIAL PRIMARY KEY,
    sender        TEXT        NOT NULL,
    control_id    TEXT        NOT NULL,
    message_type  TEXT        NOT NULL,
    received_at   TEXT        NOT NULL,
    message       BYTEA       NOT NULL,
    ack           BYTEA       NOT NULL,
    key_id        TEXT,
    ack_code      TEXT        NOT NULL,   -- AE or AR
    error_code    TEXT        NOT NULL,   -- HL7 table 0357
    location      TEXT        NOT NULL,   -- e.g. OBX[3]-5
    reason        TEXT        NOT NULL,
    status        TEXT        NOT NULL DEFAULT 'open',   -- open | resolved
    attempts      INTEGER     NOT NULL DEFAULT 1,
    resolved_at   TEXT,
    message_id    BIGINT REFERENCES hl7v2_message (id)
);

CREATE INDEX hl7v2_error_status ON hl7v2_error (status, id);
