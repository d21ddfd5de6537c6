-- A violation's revert is planned once: a second `revert_planned` event for the same violation
-- is refused, and the planner then queues nothing. On PostgreSQL two replicas evaluating one
-- connection at once used to both record a plan; a SQLite store serves one replica, but both
-- schemas stay alike. Plans recorded twice before the index existed keep their first event.
-- Keep in step with migrations/postgres.
DELETE FROM violation_events
    WHERE status = 'revert_planned'
      AND id NOT IN (SELECT min(id) FROM violation_events WHERE status = 'revert_planned' GROUP BY violation_id);
CREATE UNIQUE INDEX violation_events_one_revert_plan ON violation_events (violation_id)
    WHERE status = 'revert_planned';
