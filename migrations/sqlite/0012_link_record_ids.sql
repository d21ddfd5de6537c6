-- The store ids of both ends of each link, so that queries following links (cohort outcomes
-- reached through a converted lead's deal) read one index instead of looking records up by
-- CRM id. A link can arrive before the record it names, so each end is filled in by whichever
-- comes second: the link (from the records already stored) or the record (in the links that
-- wait for it). One connection's writers take turns (its sync lease and fence), so a link and
-- the record it names are never written by two transactions at once; records are never
-- deleted, so an end once found stays right. Keep in step with migrations/postgres.
ALTER TABLE record_links ADD COLUMN from_record_id INTEGER;
ALTER TABLE record_links ADD COLUMN to_record_id INTEGER;

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

CREATE TRIGGER record_links_find_ends AFTER INSERT ON record_links
BEGIN
    UPDATE record_links SET
        from_record_id = (SELECT r.id FROM records r WHERE r.connection_id = NEW.connection_id
                          AND r.object_kind = NEW.from_kind AND r.crm_id = NEW.from_crm_id),
        to_record_id = (SELECT r.id FROM records r WHERE r.connection_id = NEW.connection_id
                        AND r.object_kind = NEW.to_kind AND r.crm_id = NEW.to_crm_id)
    WHERE connection_id = NEW.connection_id AND from_kind = NEW.from_kind
      AND from_crm_id = NEW.from_crm_id AND relation = NEW.relation AND to_kind = NEW.to_kind
      AND to_crm_id = NEW.to_crm_id;
END;

CREATE TRIGGER records_end_links AFTER INSERT ON records
BEGIN
    UPDATE record_links SET from_record_id = NEW.id
    WHERE connection_id = NEW.connection_id AND from_kind = NEW.object_kind
      AND from_crm_id = NEW.crm_id;
    UPDATE record_links SET to_record_id = NEW.id
    WHERE connection_id = NEW.connection_id AND to_kind = NEW.object_kind AND to_crm_id = NEW.crm_id;
END;
