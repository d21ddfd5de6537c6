-- Where a connection's records open in the CRM's UI (Salesforce: the org's instance URL from the
-- token response; HubSpot: the portal's UI domain and id), learnt by the sync, so alerts can link
-- to the deal. Keep in step with migrations/postgres.
ALTER TABLE connections ADD COLUMN record_url_base TEXT;
