-- Validation: the warnings of each stored version (extensible bindings, data-quality rules,
-- errors accepted in warn-only mode), as the OperationOutcome returned with the write.
CREATE TABLE validation_issue (
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    recorded      TEXT    NOT NULL,   -- ISO 8601 UTC, when the version was stored
    issues        INTEGER NOT NULL,   -- how many issues the outcome holds
    outcome       BLOB    NOT NULL,   -- OperationOutcome JSON
    PRIMARY KEY (resource_type, id, version)
);
