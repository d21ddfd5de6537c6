-- When a message's last send got no answer (timeout, reset, 5xx, or a crash before the answer
-- was stored), Slack may hold it already. Delivery looks for it in the channel before sending
-- again. NULL: Slack answered the last attempt, so its outcome is known.
-- Keep in step with migrations/sqlite.
ALTER TABLE alert_outbox ADD COLUMN sent_at_ms BIGINT;
