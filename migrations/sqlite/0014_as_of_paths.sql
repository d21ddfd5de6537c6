-- Nothing changes on SQLite. On PostgreSQL this migration keys the index of open deal versions
-- by the version's end and adds CRM ids to the index of deals' groups, for `as-of`; SQLite
-- reads `record_versions_open_deals` one (pipeline, stage) at a time on several cores and
-- names the deals from the table. The migration is here so that both backends count the same
-- schema versions.
SELECT 1;
