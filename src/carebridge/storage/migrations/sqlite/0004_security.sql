-- Security: users, OAuth clients, tokens and codes, signing keys, the audit ledger, data keys.
-- Times are seconds since the epoch (UTC) as REAL; secrets are stored only as hashes.
CREATE TABLE sec_user (
    username      TEXT PRIMARY KEY,
    password_hash TEXT    NOT NULL,   -- Argon2id (PHC string)
    roles         TEXT    NOT NULL,   -- space-separated
    patient_id    TEXT,               -- the Patient a patient user is linked to
    totp_secret   TEXT,               -- base32 (wrapped when encryption at rest is on)
    totp_last     INTEGER NOT NULL DEFAULT 0,  -- last accepted time step (no replay)
    disabled      INTEGER NOT NULL DEFAULT 0,
    failures      INTEGER NOT NULL DEFAULT 0,
    locked_until  REAL    NOT NULL DEFAULT 0,
    created       REAL    NOT NULL
);

CREATE TABLE sec_client (
    client_id     TEXT PRIMARY KEY,
    kind          TEXT    NOT NULL,   -- public | confidential | backend
    secret_hash   TEXT,               -- Argon2id, confidential clients
    redirect_uris TEXT    NOT NULL,   -- space-separated, exact match
    scopes        TEXT    NOT NULL,   -- the most the client may be granted
    roles         TEXT    NOT NULL,   -- backend clients: the roles of the system behind them
    jwks          TEXT,               -- backend clients: public keys (JWK Set JSON)
    disabled      INTEGER NOT NULL DEFAULT 0,
    created       REAL    NOT NULL
);

CREATE TABLE sec_grant (
    handle_hash   TEXT PRIMARY KEY,   -- SHA-256 of the opaque code / refresh token / launch id
    kind          TEXT    NOT NULL,   -- code | refresh | launch
    family        TEXT    NOT NULL,   -- refresh rotation: a reused token revokes its family
    client_id     TEXT    NOT NULL,
    username      TEXT,
    data          TEXT    NOT NULL,   -- JSON: scope, patient, redirect_uri, code_challenge...
    expires       REAL    NOT NULL,
    used          INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX sec_grant_family ON sec_grant (family);

CREATE TABLE sec_revoked (
    jti           TEXT PRIMARY KEY,   -- revoked access tokens and spent client assertions
    expires       REAL    NOT NULL
);

CREATE TABLE sec_signing_key (
    kid           TEXT PRIMARY KEY,
    private_jwk   TEXT    NOT NULL,   -- wrapped when encryption at rest is on
    created       REAL    NOT NULL,
    retired       REAL                -- no longer signs; published until tokens expire
);

CREATE TABLE audit_ledger (
    seq           INTEGER PRIMARY KEY,
    event_id      TEXT    NOT NULL,   -- the AuditEvent's id
    body          BLOB    NOT NULL,   -- the AuditEvent JSON, as hashed
    prev_hash     BLOB    NOT NULL,
    hash          BLOB    NOT NULL    -- SHA-256(prev_hash || seq || body)
);

CREATE TABLE audit_checkpoint (
    seq           INTEGER PRIMARY KEY, -- the ledger entry the checkpoint seals
    hash          BLOB    NOT NULL,
    signature     TEXT    NOT NULL,   -- compact JWS over {seq, hash} by a signing key
    created       REAL    NOT NULL
);

CREATE TABLE sec_data_key (
    kid           TEXT PRIMARY KEY,
    wrapped       BLOB    NOT NULL,   -- AES-256 data key, AES-GCM under the master key
    master_id     TEXT    NOT NULL,
    active        INTEGER NOT NULL DEFAULT 1,
    created       REAL    NOT NULL
);
