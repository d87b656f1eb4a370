-- Versioned resource store: current versions and the full history.
CREATE TABLE resource (
    resource_type TEXT        NOT NULL,
    id            TEXT        NOT NULL,
    version       INTEGER     NOT NULL,
    last_updated  TIMESTAMPTZ NOT NULL,
    deleted       BOOLEAN     NOT NULL DEFAULT FALSE,
    body          BYTEA,      -- the resource JSON as served; NULL when deleted
    PRIMARY KEY (resource_type, id)
);

CREATE TABLE resource_history (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource_type TEXT        NOT NULL,
    id            TEXT        NOT NULL,
    version       INTEGER     NOT NULL,
    last_updated  TIMESTAMPTZ NOT NULL,
    method        TEXT        NOT NULL,   -- POST, PUT, PATCH or DELETE
    body          BYTEA,
    UNIQUE (resource_type, id, version)
);

CREATE INDEX resource_history_type_seq ON resource_history (resource_type, seq);
CREATE INDEX resource_history_updated ON resource_history (last_updated);
