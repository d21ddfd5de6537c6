-- Paths the historical queries read by. Keep in step with migrations/postgres.

-- Salesforce lead conversions as links, like HubSpot associations, so that cohorts follow a
-- lead to the deal and contact it became through an index instead of reading every lead's
-- fields. The sync writes these from now on; this fills them in for the leads already stored.
INSERT INTO record_links (connection_id, from_kind, from_crm_id, relation, to_kind, to_crm_id,
                          first_seen_at_ms, last_seen_at_ms)
SELECT r.connection_id, 'lead', r.crm_id, 'converted_to', 'deal',
       json_extract(r.fields, '$.ConvertedOpportunityId'), r.first_seen_at_ms, r.last_seen_at_ms
FROM records r JOIN connections c ON c.id = r.connection_id AND c.kind = 'salesforce'
WHERE r.object_kind = 'lead' AND json_type(r.fields, '$.ConvertedOpportunityId') = 'text'
ON CONFLICT DO NOTHING;
INSERT INTO record_links (connection_id, from_kind, from_crm_id, relation, to_kind, to_crm_id,
                          first_seen_at_ms, last_seen_at_ms)
SELECT r.connection_id, 'lead', r.crm_id, 'converted_to', 'contact',
       json_extract(r.fields, '$.ConvertedContactId'), r.first_seen_at_ms, r.last_seen_at_ms
FROM records r JOIN connections c ON c.id = r.connection_id AND c.kind = 'salesforce'
WHERE r.object_kind = 'lead' AND json_type(r.fields, '$.ConvertedContactId') = 'text'
ON CONFLICT DO NOTHING;

-- Open deal versions only, with what `as-of` totals: a pipeline as of a date is found among
-- the deals that were open, not among every version ever stored, and its totals are summed
-- in the index's order by stage without sorting.
CREATE INDEX record_versions_open_deals ON record_versions
    (connection_id, pipeline, stage, probability_bp, valid_from_ms, valid_to_ms, owner_id, amount_cents)
    WHERE object_kind = 'deal' AND is_closed = FALSE AND deleted = FALSE;

-- Deleted records, few among many: `funnel` leaves deleted deals out of the stuck ones.
CREATE INDEX records_deleted ON records (connection_id, object_kind, deleted_at_ms)
    WHERE deleted_at_ms IS NOT NULL;

-- A window's deal moves read from the index alone (`funnel` reads millions); it starts with the
-- columns of stage_transitions_by_time, which it replaces.
CREATE INDEX stage_transitions_moves ON stage_transitions
    (connection_id, object_kind, changed_at_ms, record_id, pipeline, to_stage);
DROP INDEX stage_transitions_by_time;

-- Each record's first occurrence of an event, in record order, so that `cohort` takes it
-- without sorting every event.
CREATE INDEX lifecycle_events_first ON lifecycle_events
    (connection_id, event, record_id, occurred_at_ms, object_kind);
