-- Search performance: covering indexes shaped for the planner's two plans (search.planner).
-- Lookup indexes end with the resource id, so a leading criterion yields distinct ids
-- without reading table rows and an equality lookup yields them in id order; the date
-- lookups are also the sort walks ((param, high, id) descending, (param, low, id)
-- ascending). The per-resource indexes carry the compared values, so a per-row check
-- (EXISTS on resource_type, id, param) never reads the table row either.

DROP INDEX idx_token_lookup1;
CREATE INDEX idx_token_lookup ON idx_token (resource_type, param, code, system, id);
DROP INDEX idx_token_resource;
CREATE INDEX idx_token_resource ON idx_token (resource_type, id, param, code, system);

DROP INDEX idx_date_lookup1;
DROP INDEX idx_date_lookup2;
CREATE INDEX idx_date_low ON idx_date (resource_type, param, low, id, high);
CREATE INDEX idx_date_high ON idx_date (resource_type, param, high, id, low);
DROP INDEX idx_date_resource;
CREATE INDEX idx_date_resource ON idx_date (resource_type, id, param, low, high);

DROP INDEX idx_reference_lookup1;
CREATE INDEX idx_reference_lookup ON idx_reference (target_id, target_type, param, resource_type, id);
DROP INDEX idx_reference_resource;
CREATE INDEX idx_reference_resource ON idx_reference (resource_type, id, param, target_type, target_id);

-- A composite's quantity component also in canonical UCUM form, as idx_quantity has it.
ALTER TABLE idx_composite ADD COLUMN c2_canon_code TEXT;
ALTER TABLE idx_composite ADD COLUMN c2_canon_value REAL;

DROP INDEX idx_string_lookup1;
CREATE INDEX idx_string_lookup ON idx_string (resource_type, param, norm, id);
