-- Search index: one narrow table per search-parameter type (token, string, date, ...).
-- Every row names the resource (resource_type, id) and the parameter code; a write
-- replaces all rows of the resource. Dates are microseconds since 1970-01-01 UTC,
-- inclusive ranges; numbers and quantities keep their implicit precision range.
-- Text compared by prefix ranges uses the C collation, so the ranges use the index.

CREATE TABLE idx_string (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    norm          TEXT COLLATE "C" NOT NULL,
    exact         TEXT NOT NULL
);
CREATE INDEX idx_string_resource ON idx_string (resource_type, id, param);
CREATE INDEX idx_string_lookup1 ON idx_string (resource_type, param, norm);

CREATE TABLE idx_token (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    system        TEXT,
    code          TEXT,
    text_norm     TEXT,
    type_system   TEXT,
    type_code     TEXT
);
CREATE INDEX idx_token_resource ON idx_token (resource_type, id, param);
CREATE INDEX idx_token_lookup1 ON idx_token (resource_type, param, code, system);

CREATE TABLE idx_date (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    low           BIGINT NOT NULL,
    high          BIGINT NOT NULL
);
CREATE INDEX idx_date_resource ON idx_date (resource_type, id, param);
CREATE INDEX idx_date_lookup1 ON idx_date (resource_type, param, low);
CREATE INDEX idx_date_lookup2 ON idx_date (resource_type, param, high);

CREATE TABLE idx_number (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    low           DOUBLE PRECISION NOT NULL,
    high          DOUBLE PRECISION NOT NULL,
    value         DOUBLE PRECISION NOT NULL
);
CREATE INDEX idx_number_resource ON idx_number (resource_type, id, param);
CREATE INDEX idx_number_lookup1 ON idx_number (resource_type, param, value);

CREATE TABLE idx_quantity (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    system        TEXT,
    code          TEXT,
    value         DOUBLE PRECISION,
    low           DOUBLE PRECISION,
    high          DOUBLE PRECISION,
    canon_code    TEXT,
    canon_value   DOUBLE PRECISION
);
CREATE INDEX idx_quantity_resource ON idx_quantity (resource_type, id, param);
CREATE INDEX idx_quantity_lookup1 ON idx_quantity (resource_type, param, canon_code, canon_value);
CREATE INDEX idx_quantity_lookup2 ON idx_quantity (resource_type, param, code, value);

CREATE TABLE idx_reference (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    target_type   TEXT,
    target_id     TEXT,
    version       TEXT,
    url           TEXT,
    ident_system  TEXT,
    ident_value   TEXT
);
CREATE INDEX idx_reference_resource ON idx_reference (resource_type, id, param);
CREATE INDEX idx_reference_lookup1 ON idx_reference (target_id, target_type, param);
CREATE INDEX idx_reference_lookup2 ON idx_reference (resource_type, param, url);

CREATE TABLE idx_uri (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    value         TEXT COLLATE "C" NOT NULL
);
CREATE INDEX idx_uri_resource ON idx_uri (resource_type, id, param);
CREATE INDEX idx_uri_lookup1 ON idx_uri (resource_type, param, value);

CREATE TABLE idx_composite (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    c1_system     TEXT,
    c1_code       TEXT,
    c2_system     TEXT,
    c2_code       TEXT,
    c2_low        DOUBLE PRECISION,
    c2_high       DOUBLE PRECISION
);
CREATE INDEX idx_composite_resource ON idx_composite (resource_type, id, param);
CREATE INDEX idx_composite_lookup1 ON idx_composite (resource_type, param, c1_code, c2_code);
