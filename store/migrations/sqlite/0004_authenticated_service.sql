-- Issue 14: the service of the API key that sent a typed metric, when the `enrich` processor
-- records it (`service_identity: record`), so a key for one service writing as another is
-- visible in the typed tables too, not only in `metrics.metadata`.
ALTER TABLE auth_metrics ADD COLUMN authenticated_service TEXT;
ALTER TABLE discovery_metrics ADD COLUMN authenticated_service TEXT;
ALTER TABLE tool_metrics ADD COLUMN authenticated_service TEXT;
