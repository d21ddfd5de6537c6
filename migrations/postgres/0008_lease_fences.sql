-- Fencing for leases: each time a replica takes a lease it raises the lease's epoch, and each
-- transaction a sync run commits first reads the epoch with a shared row lock. A run whose
-- lease died with its database session (while another replica took it over) sees a newer
-- epoch and stops before writing; a takeover waits for a transaction already past that check.
-- Keep in step with migrations/sqlite.
CREATE TABLE lease_fences (
    name  TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL
);
