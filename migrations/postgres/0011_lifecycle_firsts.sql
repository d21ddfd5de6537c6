-- Each record's first occurrence of each lifecycle event, kept by a trigger on every insert into
-- lifecycle_events, whatever writes it (the sync, recycling, the write-back outbox). `cohort`
-- counts its cohorts here by the start's time and kind, an index range, instead of taking
-- each record's first start from all of its events. Keep in step with migrations/sqlite.
CREATE TABLE lifecycle_firsts (
    connection_id  BIGINT NOT NULL REFERENCES connections (id),
    event          TEXT NOT NULL,
    record_id      BIGINT NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    object_kind    TEXT NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    PRIMARY KEY (connection_id, event, record_id)
);

-- No replica may add events between the fill below and the trigger's creation (a rolling
-- upgrade keeps older replicas syncing); the lock lasts until the migration commits.
LOCK TABLE lifecycle_events IN SHARE ROW EXCLUSIVE MODE;

-- A record has one kind, which every writer of lifecycle_events copies from it.
INSERT INTO lifecycle_firsts (connection_id, event, record_id, object_kind, occurred_at_ms)
SELECT connection_id, event, record_id, MIN(object_kind), MIN(occurred_at_ms)
FROM lifecycle_events GROUP BY connection_id, event, record_id;

CREATE INDEX lifecycle_firsts_by_time ON lifecycle_firsts
    (connection_id, event, object_kind, occurred_at_ms);

CREATE FUNCTION keep_lifecycle_first() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO lifecycle_firsts (connection_id, event, record_id, object_kind, occurred_at_ms)
    VALUES (NEW.connection_id, NEW.event, NEW.record_id, NEW.object_kind, NEW.occurred_at_ms)
    ON CONFLICT (connection_id, event, record_id) DO UPDATE
    SET occurred_at_ms = EXCLUDED.occurred_at_ms
    WHERE EXCLUDED.occurred_at_ms < lifecycle_firsts.occurred_at_ms;
    RETURN NULL;
END
$$;

CREATE TRIGGER lifecycle_firsts_kept AFTER INSERT ON lifecycle_events
    FOR EACH ROW EXECUTE FUNCTION keep_lifecycle_first();
