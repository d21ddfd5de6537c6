-- Each record's first occurrence of each lifecycle event, kept by a trigger on every insert into
-- lifecycle_events, whatever writes it (the sync, recycling, the write-back outbox). `cohort`
-- counts its cohorts here by the start's time and kind, an index range, instead of taking
-- each record's first start from all of its events. Keep in step with migrations/postgres.
CREATE TABLE lifecycle_firsts (
    connection_id  INTEGER NOT NULL REFERENCES connections (id),
    event          TEXT NOT NULL,
    record_id      INTEGER NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    object_kind    TEXT NOT NULL,
    occurred_at_ms INTEGER NOT NULL,
    PRIMARY KEY (connection_id, event, record_id)
) WITHOUT ROWID;

-- A record has one kind, which every writer of lifecycle_events copies from it.
INSERT INTO lifecycle_firsts (connection_id, event, record_id, object_kind, occurred_at_ms)
SELECT connection_id, event, record_id, MIN(object_kind), MIN(occurred_at_ms)
FROM lifecycle_events GROUP BY connection_id, event, record_id;

CREATE INDEX lifecycle_firsts_by_time ON lifecycle_firsts
    (connection_id, event, object_kind, occurred_at_ms);

CREATE TRIGGER lifecycle_firsts_kept AFTER INSERT ON lifecycle_events
BEGIN
    INSERT INTO lifecycle_firsts (connection_id, event, record_id, object_kind, occurred_at_ms)
    VALUES (NEW.connection_id, NEW.event, NEW.record_id, NEW.object_kind, NEW.occurred_at_ms)
    ON CONFLICT (connection_id, event, record_id) DO UPDATE
    SET occurred_at_ms = excluded.occurred_at_ms
    WHERE excluded.occurred_at_ms < lifecycle_firsts.occurred_at_ms;
END;
