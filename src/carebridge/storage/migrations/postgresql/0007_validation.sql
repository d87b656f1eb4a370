-- Validation: the warnings of each stored version (extensible bindings, data-quality rules,
-- errors accepted in warn-only mode), as the OperationOutcome returned with the write.
CREATE TABLE validation_issue (
    resource_type TEXT        NOT NULL,
    id            TEXT        NOT NULL,
    version       INTEGER     NOT NULL,
    recorded      TIMESTAMPTZ NOT NULL,
    issues        INTEGER     NOT NULL,
    outcome       BYTEA       NOT NULL,
    PRIMARY KEY (resource_type, id, version)
);
