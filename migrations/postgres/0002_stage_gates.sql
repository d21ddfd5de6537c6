-- Stage gates: how far each rule has read the store, and what kind of breach a violation is.
-- Keep in step with migrations/sqlite.

-- One row per (rule, connection): the newest transition and version already evaluated, so that
-- each sync evaluates only what is new and a replay evaluates nothing twice.
CREATE TABLE rule_progress (
    rule_name          TEXT NOT NULL,
    connection_id      BIGINT NOT NULL REFERENCES connections (id),
    last_transition_id BIGINT NOT NULL,
    last_version_id    BIGINT NOT NULL,
    updated_at_ms      BIGINT NOT NULL,
    PRIMARY KEY (rule_name, connection_id)
);

-- forward (fields of the target or a skipped stage missing), skip (stages skipped where the rule
-- forbids it), closed_lost, backward.
ALTER TABLE violations ADD COLUMN kind TEXT NOT NULL DEFAULT 'forward';
-- Whether the violation was alerted; baseline violations (found by a rule's first evaluation) are not.
ALTER TABLE violations ADD COLUMN alerted BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX violations_by_rule ON violations (rule_name, status);
CREATE INDEX alert_outbox_by_violation ON alert_outbox (violation_id);
