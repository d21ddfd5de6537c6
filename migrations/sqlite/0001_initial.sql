-- pipewarden store, SQLite edition. Keep in step with migrations/postgres.
-- Times are UTC epoch milliseconds (*_ms); money is integer cents; probabilities are basis
-- points. Integers keep SQLite and PostgreSQL answers identical to the last digit.

-- A CRM connection named in the config. Rows elsewhere refer to it by id.
CREATE TABLE connections (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    kind          TEXT NOT NULL CHECK (kind IN ('salesforce', 'hubspot')),
    created_at_ms INTEGER NOT NULL
);

-- Sync audit: one row per run of one connection.
CREATE TABLE sync_runs (
    id                  INTEGER PRIMARY KEY,
    connection_id       INTEGER NOT NULL REFERENCES connections (id),
    triggered_by        TEXT NOT NULL,
    replica             TEXT NOT NULL,
    started_at_ms       INTEGER NOT NULL,
    finished_at_ms      INTEGER,
    status              TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'budget_stopped', 'interrupted')),
    records_seen        INTEGER NOT NULL DEFAULT 0,
    versions_written    INTEGER NOT NULL DEFAULT 0,
    transitions_written INTEGER NOT NULL DEFAULT 0,
    api_calls           INTEGER NOT NULL DEFAULT 0,
    errors              INTEGER NOT NULL DEFAULT 0,
    quarantined         INTEGER NOT NULL DEFAULT 0,
    message             TEXT
);
CREATE INDEX sync_runs_recent ON sync_runs (connection_id, started_at_ms);

-- Where each stream of each object stopped; written in the same transaction as the page it follows.
CREATE TABLE sync_cursors (
    connection_id INTEGER NOT NULL REFERENCES connections (id),
    crm_object    TEXT NOT NULL,
    stream        TEXT NOT NULL,
    position      TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    sync_run_id   INTEGER REFERENCES sync_runs (id),
    PRIMARY KEY (connection_id, crm_object, stream)
);

-- Records that could not be parsed; the sync goes on without them.
CREATE TABLE quarantined_records (
    id               INTEGER PRIMARY KEY,
    connection_id    INTEGER NOT NULL REFERENCES connections (id),
    crm_object       TEXT NOT NULL,
    crm_id           TEXT NOT NULL,
    reason           TEXT NOT NULL,
    payload          TEXT,
    sync_run_id      INTEGER REFERENCES sync_runs (id),
    first_seen_at_ms INTEGER NOT NULL,
    last_seen_at_ms  INTEGER NOT NULL,
    occurrences      INTEGER NOT NULL DEFAULT 1,
    resolved_at_ms   INTEGER,
    UNIQUE (connection_id, crm_object, crm_id)
);

-- Current state of every deal, lead, contact, account, campaign and campaign member.
CREATE TABLE records (
    id                  INTEGER PRIMARY KEY,
    connection_id       INTEGER NOT NULL REFERENCES connections (id),
    object_kind         TEXT NOT NULL,
    crm_object          TEXT NOT NULL,
    crm_id              TEXT NOT NULL,
    name                TEXT,
    pipeline            TEXT,
    stage               TEXT,
    status              TEXT,
    lifecycle_stage     TEXT,
    amount_cents        INTEGER,
    probability_bp      INTEGER,
    close_date          TEXT,
    owner_id            TEXT,
    source              TEXT,
    campaign_id         TEXT,
    is_closed           INTEGER NOT NULL DEFAULT 0,
    is_won              INTEGER NOT NULL DEFAULT 0,
    crm_created_at_ms   INTEGER,
    crm_modified_at_ms  INTEGER NOT NULL,
    last_activity_at_ms INTEGER,
    fields              TEXT NOT NULL,
    content_hash        BLOB NOT NULL,
    deleted_at_ms       INTEGER,
    first_seen_at_ms    INTEGER NOT NULL,
    last_seen_at_ms     INTEGER NOT NULL,
    UNIQUE (connection_id, object_kind, crm_id)
);
CREATE INDEX records_by_stage ON records (connection_id, object_kind, stage);
CREATE INDEX records_by_owner ON records (connection_id, object_kind, owner_id);
CREATE INDEX records_by_modified ON records (connection_id, object_kind, crm_modified_at_ms);

-- Every distinct state observed (SCD type 2): valid over [valid_from_ms, valid_to_ms).
CREATE TABLE record_versions (
    id                INTEGER PRIMARY KEY,
    record_id         INTEGER NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    connection_id     INTEGER NOT NULL REFERENCES connections (id),
    object_kind       TEXT NOT NULL,
    valid_from_ms     INTEGER NOT NULL,
    valid_to_ms       INTEGER,
    valid_from_basis  TEXT NOT NULL CHECK (valid_from_basis IN ('crm_modified', 'observed')),
    observed_at_ms    INTEGER NOT NULL,
    content_hash      BLOB NOT NULL,
    name              TEXT,
    pipeline          TEXT,
    stage             TEXT,
    status            TEXT,
    lifecycle_stage   TEXT,
    amount_cents      INTEGER,
    probability_bp    INTEGER,
    close_date        TEXT,
    owner_id          TEXT,
    source            TEXT,
    campaign_id       TEXT,
    is_closed         INTEGER NOT NULL DEFAULT 0,
    is_won            INTEGER NOT NULL DEFAULT 0,
    crm_created_at_ms   INTEGER,
    last_activity_at_ms INTEGER,
    deleted           INTEGER NOT NULL DEFAULT 0,
    fields            TEXT NOT NULL,
    sync_run_id       INTEGER REFERENCES sync_runs (id),
    UNIQUE (record_id, valid_from_ms)
);
CREATE INDEX record_versions_as_of ON record_versions (connection_id, object_kind, valid_from_ms);
CREATE INDEX record_versions_closed ON record_versions (connection_id, object_kind, valid_to_ms);

-- Field changes the CRM itself recorded (OpportunityFieldHistory, LeadHistory, HubSpot property history).
CREATE TABLE field_history (
    id             INTEGER PRIMARY KEY,
    record_id      INTEGER NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    field          TEXT NOT NULL,
    old_value      TEXT,
    new_value      TEXT,
    changed_at_ms  INTEGER NOT NULL,
    changed_by     TEXT,
    change_source  TEXT,
    dedupe_key     TEXT NOT NULL,
    UNIQUE (record_id, field, changed_at_ms, dedupe_key)
);

-- Stage changes of deals (and status changes of leads), from CRM history or observed diffs.
CREATE TABLE stage_transitions (
    id             INTEGER PRIMARY KEY,
    record_id      INTEGER NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    connection_id  INTEGER NOT NULL REFERENCES connections (id),
    object_kind    TEXT NOT NULL,
    pipeline       TEXT,
    from_stage     TEXT,
    to_stage       TEXT NOT NULL,
    changed_at_ms  INTEGER NOT NULL,
    changed_by     TEXT,
    actor_kind     TEXT NOT NULL CHECK (actor_kind IN ('person', 'integration', 'api', 'import', 'workflow', 'system', 'unknown')),
    change_source  TEXT,
    origin         TEXT NOT NULL CHECK (origin IN ('crm_history', 'observed_diff')),
    crm_history_id TEXT,
    amount_cents   INTEGER,
    observed_at_ms INTEGER NOT NULL,
    UNIQUE (record_id, changed_at_ms, to_stage)
);
CREATE INDEX stage_transitions_by_time ON stage_transitions (connection_id, object_kind, changed_at_ms);
CREATE INDEX stage_transitions_by_stage ON stage_transitions (connection_id, to_stage, changed_at_ms);

-- Milestones of leads, contacts and deals with their own timestamps (cohorts read these).
CREATE TABLE lifecycle_events (
    id             INTEGER PRIMARY KEY,
    record_id      INTEGER NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    connection_id  INTEGER NOT NULL REFERENCES connections (id),
    object_kind    TEXT NOT NULL,
    event          TEXT NOT NULL CHECK (event IN ('created', 'first_contacted', 'mql', 'sql', 'meeting_booked', 'opportunity_created', 'won', 'lost', 'disqualified', 'recycled', 'returned')),
    occurred_at_ms INTEGER NOT NULL,
    origin         TEXT NOT NULL CHECK (origin IN ('crm_history', 'crm_field', 'observed_diff', 'pipewarden')),
    detail         TEXT,
    observed_at_ms INTEGER NOT NULL,
    UNIQUE (record_id, event, occurred_at_ms)
);
CREATE INDEX lifecycle_events_cohort ON lifecycle_events (connection_id, event, occurred_at_ms);

-- Relations between records by CRM id: lead conversions, deal<->contact associations, campaign membership.
CREATE TABLE record_links (
    connection_id    INTEGER NOT NULL REFERENCES connections (id),
    from_kind        TEXT NOT NULL,
    from_crm_id      TEXT NOT NULL,
    relation         TEXT NOT NULL CHECK (relation IN ('converted_to', 'associated_with', 'member_of', 'belongs_to')),
    to_kind          TEXT NOT NULL,
    to_crm_id        TEXT NOT NULL,
    first_seen_at_ms INTEGER NOT NULL,
    last_seen_at_ms  INTEGER NOT NULL,
    removed_at_ms    INTEGER,
    PRIMARY KEY (connection_id, from_kind, from_crm_id, relation, to_kind, to_crm_id)
);
CREATE INDEX record_links_reverse ON record_links (connection_id, to_kind, to_crm_id);

-- CRM metadata: stage order and probabilities (rules and funnels), fields (rule checks), owners (exemptions).
CREATE TABLE stage_definitions (
    connection_id  INTEGER NOT NULL REFERENCES connections (id),
    object_kind    TEXT NOT NULL,
    pipeline       TEXT NOT NULL,
    stage          TEXT NOT NULL,
    label          TEXT NOT NULL,
    sort_order     INTEGER NOT NULL,
    probability_bp INTEGER,
    is_closed      INTEGER NOT NULL DEFAULT 0,
    is_won         INTEGER NOT NULL DEFAULT 0,
    is_active      INTEGER NOT NULL DEFAULT 1,
    observed_at_ms INTEGER NOT NULL,
    PRIMARY KEY (connection_id, object_kind, pipeline, stage)
);

CREATE TABLE field_definitions (
    connection_id  INTEGER NOT NULL REFERENCES connections (id),
    crm_object     TEXT NOT NULL,
    field          TEXT NOT NULL,
    label          TEXT NOT NULL,
    data_type      TEXT NOT NULL,
    filterable     INTEGER NOT NULL DEFAULT 1,
    is_custom      INTEGER NOT NULL DEFAULT 0,
    observed_at_ms INTEGER NOT NULL,
    PRIMARY KEY (connection_id, crm_object, field)
);

CREATE TABLE crm_owners (
    connection_id  INTEGER NOT NULL REFERENCES connections (id),
    crm_id         TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('person', 'queue', 'integration')),
    name           TEXT,
    email          TEXT,
    teams          TEXT NOT NULL DEFAULT '[]',
    is_active      INTEGER NOT NULL DEFAULT 1,
    observed_at_ms INTEGER NOT NULL,
    PRIMARY KEY (connection_id, crm_id)
);

-- Stage-gate violations: one per (rule, transition), whatever replays happen.
CREATE TABLE violations (
    id             INTEGER PRIMARY KEY,
    rule_name      TEXT NOT NULL,
    connection_id  INTEGER NOT NULL REFERENCES connections (id),
    record_id      INTEGER NOT NULL REFERENCES records (id),
    transition_id  INTEGER NOT NULL REFERENCES stage_transitions (id),
    from_stage     TEXT,
    to_stage       TEXT NOT NULL,
    missing_fields TEXT NOT NULL,
    skipped_stages TEXT NOT NULL,
    changed_at_ms  INTEGER NOT NULL,
    changed_by     TEXT,
    actor_kind     TEXT NOT NULL,
    owner_id       TEXT,
    status         TEXT NOT NULL CHECK (status IN ('open', 'resolved_late', 'waived', 'superseded')),
    detected_at_ms INTEGER NOT NULL,
    resolved_at_ms INTEGER,
    waived_by      TEXT,
    waive_reason   TEXT,
    UNIQUE (rule_name, transition_id)
);
CREATE INDEX violations_by_status ON violations (connection_id, status, changed_at_ms);
CREATE INDEX violations_by_record ON violations (record_id);

CREATE TABLE violation_events (
    id           INTEGER PRIMARY KEY,
    violation_id INTEGER NOT NULL REFERENCES violations (id) ON DELETE CASCADE,
    status       TEXT NOT NULL,
    at_ms        INTEGER NOT NULL,
    actor        TEXT,
    note         TEXT
);
CREATE INDEX violation_events_by_violation ON violation_events (violation_id, at_ms);

-- Slack messages decided in the same transaction as their cause, delivered by a worker.
CREATE TABLE alert_outbox (
    id                 INTEGER PRIMARY KEY,
    dedupe_key         TEXT NOT NULL UNIQUE,
    kind               TEXT NOT NULL,
    channel            TEXT,
    payload            TEXT NOT NULL,
    violation_id       INTEGER REFERENCES violations (id),
    thread_of_id       INTEGER REFERENCES alert_outbox (id),
    status             TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    last_error         TEXT,
    slack_ts           TEXT,
    created_at_ms      INTEGER NOT NULL,
    delivered_at_ms    INTEGER
);
CREATE INDEX alert_outbox_due ON alert_outbox (status, next_attempt_at_ms);

-- Recycle decisions and their audit (before/after values, errors, later return).
CREATE TABLE recycle_actions (
    id             INTEGER PRIMARY KEY,
    plan_key       TEXT NOT NULL UNIQUE,
    policy         TEXT NOT NULL,
    connection_id  INTEGER NOT NULL REFERENCES connections (id),
    record_id      INTEGER NOT NULL REFERENCES records (id),
    action         TEXT NOT NULL,
    params         TEXT NOT NULL,
    reason         TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('planned', 'applied', 'failed', 'skipped', 'returned')),
    dry_run        INTEGER NOT NULL,
    planned_at_ms  INTEGER NOT NULL,
    applied_at_ms  INTEGER,
    before_values  TEXT,
    after_values   TEXT,
    error_code     TEXT,
    error_message  TEXT,
    returned_at_ms INTEGER,
    returned_event TEXT
);
CREATE INDEX recycle_actions_by_record ON recycle_actions (record_id, planned_at_ms);
CREATE INDEX recycle_actions_by_policy ON recycle_actions (policy, status);

-- CRM writes (recycling, reverts), applied at most once by the write-back worker.
CREATE TABLE writeback_outbox (
    id                 INTEGER PRIMARY KEY,
    idempotency_key    TEXT NOT NULL UNIQUE,
    connection_id      INTEGER NOT NULL REFERENCES connections (id),
    origin             TEXT NOT NULL CHECK (origin IN ('recycle', 'revert')),
    recycle_action_id  INTEGER REFERENCES recycle_actions (id),
    violation_id       INTEGER REFERENCES violations (id),
    crm_object         TEXT NOT NULL,
    crm_id             TEXT,
    operation          TEXT NOT NULL,
    payload            TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('pending', 'in_flight', 'applied', 'failed')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    claimed_at_ms      INTEGER,
    error_code         TEXT,
    error_message      TEXT,
    crm_response       TEXT,
    created_at_ms      INTEGER NOT NULL,
    applied_at_ms      INTEGER
);
CREATE INDEX writeback_outbox_due ON writeback_outbox (connection_id, status, next_attempt_at_ms);
