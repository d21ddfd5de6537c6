-- Lead recycling: one row per `recycle apply` run, and what each action belongs to.
-- Keep in step with migrations/postgres.

-- A recycle run: the instant ages were judged at (the CRM's clock) and its outcome in figures.
CREATE TABLE recycle_runs (
    id             INTEGER PRIMARY KEY,
    as_of_ms       INTEGER NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    summary        TEXT
);

-- The run that planned an action, and the instant (CRM clock) its record counts as recycled from.
ALTER TABLE recycle_actions ADD COLUMN run_id INTEGER REFERENCES recycle_runs (id);
ALTER TABLE recycle_actions ADD COLUMN recycled_at_ms INTEGER;
CREATE INDEX recycle_actions_by_status ON recycle_actions (connection_id, status, recycled_at_ms);
CREATE INDEX writeback_outbox_by_action ON writeback_outbox (recycle_action_id);
