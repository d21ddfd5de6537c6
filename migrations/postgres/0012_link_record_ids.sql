-- The store ids of both ends of each link, so that queries following links (cohort outcomes
-- reached through a converted lead's deal) read one index instead of looking records up by
-- CRM id. A link can arrive before the record it names, so each end is filled in by whichever
-- comes second: the link (from the records already stored) or the record (in the links that
-- wait for it). One connection's writers take turns (its sync lease and fence), so a link and
-- the record it names are never written by two transactions at once; records are never
-- deleted, so an end once found stays right. Keep in step with migrations/sqlite.

-- No replica may add links or records between the fill below and the triggers' creation (a
-- rolling upgrade keeps older replicas syncing); the locks last until the migration commits.
-- They are taken in the order a sync takes them, records first, so that a sync still running
-- waits for the migration instead of deadlocking with it.
LOCK TABLE records, record_links IN SHARE ROW EXCLUSIVE MODE;

ALTER TABLE record_links ADD COLUMN from_record_id BIGINT;
ALTER TABLE record_links ADD COLUMN to_record_id BIGINT;

UPDATE record_links SET
    from_record_id = (SELECT r.id FROM records r WHERE r.connection_id = record_links.connection_id
                      AND r.object_kind = record_links.from_kind AND r.crm_id = record_links.from_crm_id),
    to_record_id = (SELECT r.id FROM records r WHERE r.connection_id = record_links.connection_id
                    AND r.object_kind = record_links.to_kind AND r.crm_id = record_links.to_crm_id);

-- Each covers what a query following links in its direction reads.
CREATE INDEX record_links_by_from_record ON record_links
    (from_record_id, relation, removed_at_ms, to_record_id);
CREATE INDEX record_links_by_to_record ON record_links
    (to_record_id, relation, removed_at_ms, from_record_id);

CREATE FUNCTION find_link_ends() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.from_record_id := (SELECT r.id FROM records r WHERE r.connection_id = NEW.connection_id
                           AND r.object_kind = NEW.from_kind AND r.crm_id = NEW.from_crm_id);
    NEW.to_record_id := (SELECT r.id FROM records r WHERE r.connection_id = NEW.connection_id
                         AND r.object_kind = NEW.to_kind AND r.crm_id = NEW.to_crm_id);
    RETURN NEW;
END
$$;

CREATE TRIGGER record_links_find_ends BEFORE INSERT ON record_links
    FOR EACH ROW EXECUTE FUNCTION find_link_ends();

CREATE FUNCTION end_links() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE record_links SET from_record_id = NEW.id
    WHERE connection_id = NEW.connection_id AND from_kind = NEW.object_kind
      AND from_crm_id = NEW.crm_id;
    UPDATE record_links SET to_record_id = NEW.id
    WHERE connection_id = NEW.connection_id AND to_kind = NEW.object_kind AND to_crm_id = NEW.crm_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER records_end_links AFTER INSERT ON records
    FOR EACH ROW EXECUTE FUNCTION end_links();
