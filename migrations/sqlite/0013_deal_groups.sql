-- The values `funnel --by` groups deals by, read for every deal of a connection from this
-- index alone: deals are a small share of records, and their owners, sources and campaigns
-- were otherwise looked up row by row in the table. Keep in step with migrations/postgres.
CREATE INDEX records_deal_groups ON records
    (connection_id, object_kind, id, owner_id, source, campaign_id)
    WHERE object_kind = 'deal';
