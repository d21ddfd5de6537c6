-- The refresh token a CRM issued when it rotated the configured one: after a rotation the
-- configured token no longer works, so every later run (and every replica) must start from
-- this one. `configured_sha256` fingerprints the configured token the chain started from;
-- when the operator configures a new one, the kept token no longer applies. The database holds
-- a live credential from here on: protect it like the config's secrets. Keep in step with
-- migrations/sqlite.
CREATE TABLE rotated_refresh_tokens (
    connection_id     BIGINT PRIMARY KEY REFERENCES connections (id),
    configured_sha256 TEXT NOT NULL,
    refresh_token     TEXT NOT NULL,
    rotated_at_ms     BIGINT NOT NULL
);
