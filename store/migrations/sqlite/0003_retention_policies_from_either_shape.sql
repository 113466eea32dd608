-- Retention policies in the one shape the code uses, whoever made the table. 0002 creates the
-- table only if missing, so a database of the Python service kept the Python shape (an `id`,
-- `created_at`, maybe `cleanup_query` and `timestamp_column`, no `set_by`), and start-up failed.
-- SQLite cannot alter a table conditionally, so the table is rebuilt from either shape, every
-- row kept.
CREATE TABLE retention_policies_0003 (
    table_name TEXT PRIMARY KEY,
    retention_days INTEGER NOT NULL,
    is_active BOOLEAN NOT NULL DEFAULT 1,
    set_by TEXT NOT NULL DEFAULT 'config',
    updated_at TEXT NOT NULL
);

INSERT INTO retention_policies_0003 (table_name, retention_days, is_active, set_by, updated_at)
SELECT
    old.table_name,
    old.retention_days,
    old.is_active,
    -- Our shape has `set_by`, and the subquery reads it. The Python shape has none, and the
    -- name falls through to the enclosing query's `old.set_by`: a Python row other than its
    -- 90-day default was set by an operator, so it is kept as 'admin' (the config's
    -- retention_days does not override it).
    (SELECT set_by FROM retention_policies AS own WHERE own.table_name = old.table_name),
    old.updated_at
FROM (
    SELECT
        table_name,
        retention_days,
        COALESCE(is_active, 1) AS is_active,
        CASE WHEN retention_days = 90 AND COALESCE(is_active, 1) THEN 'config' ELSE 'admin' END
            AS set_by,
        COALESCE(updated_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) AS updated_at
    FROM retention_policies
) AS old;

DROP TABLE retention_policies;
ALTER TABLE retention_policies_0003 RENAME TO retention_policies;
