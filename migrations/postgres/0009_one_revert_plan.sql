-- A violation's revert is planned once. Two replicas may evaluate one connection at the same
-- time (evaluation follows a sync, after its lease is released), and both used to read the
-- same due revert and record a `revert_planned` event each; the outbox's idempotency key kept
-- the CRM write single, but the audit showed two plans. The index makes the second plan a
-- no-op. Plans recorded twice before it existed keep their first event.
-- Keep in step with migrations/sqlite.
DELETE FROM violation_events later
    USING violation_events first
    WHERE later.status = 'revert_planned' AND first.status = 'revert_planned'
      AND later.violation_id = first.violation_id AND later.id > first.id;
CREATE UNIQUE INDEX violation_events_one_revert_plan ON violation_events (violation_id)
    WHERE status = 'revert_planned';
