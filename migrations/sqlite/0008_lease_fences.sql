-- Fencing for leases between PostgreSQL replicas: each time a replica takes a lease it raises
-- the lease's epoch, and each transaction a sync run commits first reads the epoch with a
-- shared row lock. A SQLite store serves one replica and never reads this table; it exists so
-- both schemas stay alike.
-- Keep in step with migrations/postgres.
CREATE TABLE lease_fences (
    name  TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL
);
