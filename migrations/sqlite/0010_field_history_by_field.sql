-- Evaluation asks once per rule whether the CRM's field history holds any change of the
-- rule's fields on the connection's deals; without an index on the field that question read
-- the whole table, which lead history fills. Keep in step with migrations/postgres.
CREATE INDEX field_history_by_field ON field_history (field, record_id);
