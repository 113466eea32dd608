//! Migrations on files that already hold a `retention_policies` table: from this service's own
//! 0002 and from the Python service's migrations, which differ in shape.

use std::path::Path;

use mcp_metrics_store::{RetentionPolicy, Store};
use sqlx::SqlitePool;

async fn pool(path: &Path) -> SqlitePool {
    SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap()
}

/// (table_name, retention_days, is_active, set_by) of every policy.
fn summary(policies: &[RetentionPolicy]) -> Vec<(&str, u32, bool, &str)> {
    policies
        .iter()
        .map(|p| {
            let RetentionPolicy {
                table_name,
                retention_days,
                is_active,
                set_by,
                ..
            } = p;
            (
                table_name.as_str(),
                *retention_days,
                *is_active,
                set_by.as_str(),
            )
        })
        .collect()
}

#[tokio::test]
async fn policies_made_by_0002_keep_who_set_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.db");
    // The file as this service left it before 0003: migrated by 0001 and 0002 only.
    let first_two = dir.path().join("migrations");
    std::fs::create_dir(&first_two).unwrap();
    for name in [
        "0001_contract_schema.sql",
        "0002_admin_keys_env_keys_retention_policies.sql",
    ] {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations/sqlite")
            .join(name);
        std::fs::copy(from, first_two.join(name)).unwrap();
    }
    let pool = pool(&path).await;
    sqlx::migrate::Migrator::new(first_two.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO retention_policies (table_name, retention_days, is_active, set_by, updated_at) \
         VALUES ('metrics', 90, 1, 'config', 'a'), ('auth_metrics', 90, 0, 'admin', 'b')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = Store::open(&path).await.unwrap();
    let policies = store.retention_policies().await.unwrap();
    assert_eq!(
        summary(&policies),
        [
            ("auth_metrics", 90, false, "admin"),
            ("metrics", 90, true, "config")
        ]
    );
    assert_eq!(policies[0].updated_at, "b");
    // The admin's policy survives the config, as before.
    store.seed_retention(30).await.unwrap();
    let policies = store.retention_policies().await.unwrap();
    assert_eq!(
        summary(&policies)[..2],
        [
            ("auth_metrics", 90, false, "admin"),
            ("discovery_metrics", 30, true, "config")
        ]
    );
}

#[tokio::test]
async fn policies_made_by_the_python_service_are_kept_and_usable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.db");
    let pool = pool(&path).await;
    // The shape of the Python service's later migration, with the columns it adds there.
    for statement in [
        "CREATE TABLE retention_policies (id INTEGER PRIMARY KEY AUTOINCREMENT, \
         table_name TEXT UNIQUE NOT NULL, retention_days INTEGER NOT NULL, is_active BOOLEAN DEFAULT 1, \
         cleanup_query TEXT, timestamp_column TEXT DEFAULT 'created_at', \
         created_at TEXT DEFAULT (datetime('now')), updated_at TEXT DEFAULT (datetime('now')))",
        "CREATE INDEX idx_retention_policies_table ON retention_policies(table_name)",
        "INSERT INTO retention_policies (table_name, retention_days, is_active, updated_at) VALUES \
         ('metrics', 90, 1, '2025-03-01 12:00:00'), ('tool_metrics', 14, 1, NULL), \
         ('discovery_metrics', 90, 0, '2025-03-01 12:00:00'), ('metrics_daily', 1095, 1, '2025-03-01 12:00:00')",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    pool.close().await;

    let store = Store::open(&path).await.unwrap();
    let policies = store.retention_policies().await.unwrap();
    assert_eq!(
        summary(&policies),
        [
            ("discovery_metrics", 90, false, "admin"),
            ("metrics", 90, true, "config"),
            ("metrics_daily", 1095, true, "admin"),
            ("tool_metrics", 14, true, "admin"),
        ],
        "what differs from the Python default was an operator's choice"
    );
    assert_eq!(policies[1].updated_at, "2025-03-01 12:00:00");
    assert!(
        !policies[3].updated_at.is_empty(),
        "a missing time is filled in"
    );

    store.seed_retention(30).await.unwrap();
    store
        .set_retention_policy("auth_metrics", 7, true)
        .await
        .unwrap();
    let policies = store.retention_policies().await.unwrap();
    assert_eq!(
        summary(&policies),
        [
            ("auth_metrics", 7, true, "admin"),
            ("discovery_metrics", 90, false, "admin"),
            ("metrics", 30, true, "config"),
            ("metrics_daily", 1095, true, "admin"),
            ("tool_metrics", 14, true, "admin"),
        ]
    );
    assert!(store.apply_retention(None, true).await.is_ok());
}
