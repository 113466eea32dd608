-- Admin keys (for /admin endpoints), keys registered from METRICS_API_KEY_* variables, and
-- per-table retention policies: seeded from the config (`set_by = 'config'`), overridden
-- through the admin API (`set_by = 'admin'`), which later config changes leave alone.
ALTER TABLE api_keys ADD COLUMN is_admin BOOLEAN DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN source TEXT;

CREATE TABLE IF NOT EXISTS retention_policies (
    table_name TEXT PRIMARY KEY,
    retention_days INTEGER NOT NULL,
    is_active BOOLEAN NOT NULL DEFAULT 1,
    set_by TEXT NOT NULL DEFAULT 'config',
    updated_at TEXT NOT NULL
);
