//! API keys: made here, stored only as SHA-256 digests.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use mcp_metrics_plugin::KeyInfo;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{Store, timestamp_text};

/// A key as listed by `keys list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: i64,
    pub service_name: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub is_active: bool,
    /// Requests per minute; none means the service's default.
    pub rate_limit: Option<u32>,
    pub is_admin: bool,
    /// `env` for keys registered from `METRICS_API_KEY_*` variables.
    pub source: Option<String>,
}

/// What registering a key from the environment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvKeyChange {
    /// The key was there already for the service, and is now the service's key from the
    /// environment (also a key of the Python service or one made by hand).
    Unchanged,
    /// A new key; any earlier key from the environment for the service is deactivated.
    Registered,
    /// The key was revoked, and a restart does not revive it.
    Revoked,
    /// The key belongs to another service; it is left as it is.
    OtherService(String),
}

/// A new key: `mcp_metrics_` and 32 random bytes in URL-safe base64 (43 characters).
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("mcp_metrics_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A key's SHA-256 digest.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// What is stored of a key: its SHA-256 digest in lower-case hex.
pub fn hash_key(key: &str) -> String {
    hex::encode(key_digest(key))
}

impl Store {
    /// Makes and stores a key for `service_name`; returns its record and the key itself, which is
    /// not stored and cannot be shown again.
    pub async fn create_key(
        &self,
        service_name: &str,
        rate_limit: Option<u32>,
        is_admin: bool,
    ) -> anyhow::Result<(KeyRecord, String)> {
        let key = generate_key();
        let created_at = timestamp_text(&Utc::now());
        let id = sqlx::query(
            "INSERT INTO api_keys (key_hash, service_name, created_at, is_active, rate_limit, is_admin) \
             VALUES (?, ?, ?, 1, ?, ?)",
        )
        .bind(hash_key(&key))
        .bind(service_name)
        .bind(&created_at)
        .bind(rate_limit.map(i64::from))
        .bind(is_admin)
        .execute(self.pool())
        .await?
        .last_insert_rowid();
        let record = KeyRecord {
            id,
            service_name: service_name.to_owned(),
            created_at,
            last_used_at: None,
            is_active: true,
            rate_limit,
            is_admin,
            source: None,
        };
        Ok((record, key))
    }

    /// Registers a key given by the deployment's environment for `service_name`: idempotent
    /// across restarts; a changed key replaces the service's earlier environment key, while keys
    /// made otherwise are left alone. A revoked key stays revoked, and a key of another service
    /// is not taken from it.
    pub async fn register_env_key(
        &self,
        service_name: &str,
        key: &str,
    ) -> anyhow::Result<EnvKeyChange> {
        let digest = hash_key(key);
        // IMMEDIATE: this reads, then writes, and must not lose the write lock in between.
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let known =
            sqlx::query("SELECT id, service_name, is_active FROM api_keys WHERE key_hash = ?")
                .bind(&digest)
                .fetch_optional(&mut *tx)
                .await?;
        let kept = match known {
            Some(row) => {
                let owner: String = row.try_get("service_name")?;
                if owner != service_name {
                    return Ok(EnvKeyChange::OtherService(owner));
                }
                if !row.try_get::<Option<bool>, _>("is_active")?.unwrap_or(true) {
                    return Ok(EnvKeyChange::Revoked);
                }
                Some(row.try_get::<i64, _>("id")?)
            }
            None => None,
        };
        // Only one key from the environment per service: the earlier one is replaced.
        sqlx::query(
            "UPDATE api_keys SET is_active = 0 \
             WHERE source = 'env' AND service_name = ? AND id IS NOT ?",
        )
        .bind(service_name)
        .bind(kept)
        .execute(&mut *tx)
        .await?;
        let change = match kept {
            Some(id) => {
                // Marked as the environment's, so that a later change of the variable replaces
                // it. A limit of 1000 is what the Python service (and earlier versions of this
                // one) wrote for every such key, not an operator's choice: cleared, the key
                // follows `default_limit` (METRICS_RATE_LIMIT).
                sqlx::query(
                    "UPDATE api_keys SET source = 'env', rate_limit = NULLIF(rate_limit, 1000) \
                     WHERE id = ?",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                EnvKeyChange::Unchanged
            }
            None => {
                // rate_limit NULL: the key follows `default_limit` (METRICS_RATE_LIMIT).
                sqlx::query(
                    "INSERT INTO api_keys \
                     (key_hash, service_name, created_at, is_active, rate_limit, source) \
                     VALUES (?, ?, ?, 1, NULL, 'env')",
                )
                .bind(&digest)
                .bind(service_name)
                .bind(timestamp_text(&Utc::now()))
                .execute(&mut *tx)
                .await?;
                EnvKeyChange::Registered
            }
        };
        tx.commit().await?;
        Ok(change)
    }

    pub async fn list_keys(&self) -> anyhow::Result<Vec<KeyRecord>> {
        let rows = sqlx::query(
            "SELECT id, service_name, created_at, last_used_at, is_active, rate_limit, is_admin, \
             source FROM api_keys ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(KeyRecord {
                    id: row.try_get("id")?,
                    service_name: row.try_get("service_name")?,
                    created_at: row.try_get("created_at")?,
                    last_used_at: row.try_get("last_used_at")?,
                    is_active: row.try_get::<Option<bool>, _>("is_active")?.unwrap_or(true),
                    rate_limit: rate_limit(row.try_get("rate_limit")?),
                    is_admin: row.try_get::<Option<bool>, _>("is_admin")?.unwrap_or(false),
                    source: row.try_get("source")?,
                })
            })
            .collect()
    }

    /// Deactivates a key; false when there is no key with that id.
    pub async fn revoke_key(&self, id: i64) -> anyhow::Result<bool> {
        let done = sqlx::query("UPDATE api_keys SET is_active = 0 WHERE id = ?")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every active key, by digest.
    pub async fn active_keys(&self) -> anyhow::Result<Vec<(String, KeyInfo)>> {
        let rows = sqlx::query(
            "SELECT id, key_hash, service_name, rate_limit, is_admin FROM api_keys \
             WHERE is_active = 1 OR is_active IS NULL",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("key_hash")?, key_info(row)?)))
            .collect()
    }

    /// The active key with this digest, if any.
    pub async fn find_active_key(&self, key_hash: &str) -> anyhow::Result<Option<KeyInfo>> {
        let row = sqlx::query(
            "SELECT id, service_name, rate_limit, is_admin FROM api_keys \
             WHERE key_hash = ? AND (is_active = 1 OR is_active IS NULL)",
        )
        .bind(key_hash)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(key_info).transpose()?)
    }

    /// Records that these keys were used now.
    pub async fn touch_keys(&self, ids: &[i64]) -> anyhow::Result<()> {
        let now = timestamp_text(&Utc::now());
        let mut tx = self.pool().begin().await?;
        for id in ids {
            sqlx::query("UPDATE api_keys SET last_used_at = ? WHERE id = ?")
                .bind(&now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn key_info(row: &sqlx::sqlite::SqliteRow) -> Result<KeyInfo, sqlx::Error> {
    Ok(KeyInfo {
        id: row.try_get("id")?,
        service_name: row.try_get("service_name")?,
        rate_limit: rate_limit(row.try_get("rate_limit")?),
        is_admin: row.try_get::<Option<bool>, _>("is_admin")?.unwrap_or(false),
    })
}

/// An empty column means the service's default; negative values make no sense.
pub(crate) fn rate_limit(column: Option<i64>) -> Option<u32> {
    column.map(|n| n.clamp(0, u32::MAX as i64) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_contract_shape() {
        let key = generate_key();
        let body = key.strip_prefix("mcp_metrics_").unwrap();
        assert_eq!(body.len(), 43);
        assert!(
            body.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(generate_key(), key);
    }

    async fn store() -> (tempfile::TempDir, std::sync::Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("metrics.db")).await.unwrap();
        (dir, store)
    }

    async fn key_of(store: &Store, service: &str) -> KeyRecord {
        let keys = store.list_keys().await.unwrap();
        let mut of_service = keys.into_iter().filter(|k| k.service_name == service);
        let key = of_service.next().expect("a key of the service");
        assert!(of_service.next().is_none(), "one key of {service}");
        key
    }

    #[tokio::test]
    async fn an_env_key_follows_the_default_limit() {
        let (_dir, store) = store().await;
        let change = store
            .register_env_key("auth", "mcp_metrics_a")
            .await
            .unwrap();
        assert_eq!(change, EnvKeyChange::Registered);
        let key = key_of(&store, "auth").await;
        assert_eq!((key.rate_limit, key.source.as_deref()), (None, Some("env")));
        let info = store
            .find_active_key(&hash_key("mcp_metrics_a"))
            .await
            .unwrap();
        assert_eq!(info.unwrap().rate_limit, None);
    }

    #[tokio::test]
    async fn a_python_era_key_becomes_the_env_key_so_a_rotation_replaces_it() {
        let (_dir, store) = store().await;
        // As the Python service registers its environment's keys.
        sqlx::query(
            "INSERT INTO api_keys (key_hash, service_name, created_at, is_active, rate_limit) \
             VALUES (?, 'auth', '2025-01-01 00:00:00', 1, 1000)",
        )
        .bind(hash_key("mcp_metrics_old"))
        .execute(store.pool())
        .await
        .unwrap();
        let change = store
            .register_env_key("auth", "mcp_metrics_old")
            .await
            .unwrap();
        assert_eq!(change, EnvKeyChange::Unchanged);
        let old = key_of(&store, "auth").await;
        assert_eq!(old.source.as_deref(), Some("env"));
        assert_eq!(old.rate_limit, None, "the Python default gives way to ours");

        store
            .register_env_key("auth", "mcp_metrics_new")
            .await
            .unwrap();
        let keys = store.list_keys().await.unwrap();
        assert!(!keys.iter().find(|k| k.id == old.id).unwrap().is_active);
        assert!(keys.iter().any(|k| k.id != old.id && k.is_active));
    }

    #[tokio::test]
    async fn a_limit_set_on_a_key_other_than_1000_is_kept() {
        let (_dir, store) = store().await;
        store
            .register_env_key("auth", "mcp_metrics_a")
            .await
            .unwrap();
        sqlx::query("UPDATE api_keys SET rate_limit = 50")
            .execute(store.pool())
            .await
            .unwrap();
        store
            .register_env_key("auth", "mcp_metrics_a")
            .await
            .unwrap();
        assert_eq!(key_of(&store, "auth").await.rate_limit, Some(50));
    }

    #[tokio::test]
    async fn a_revoked_env_key_is_not_revived_by_a_restart() {
        let (_dir, store) = store().await;
        store
            .register_env_key("auth", "mcp_metrics_a")
            .await
            .unwrap();
        let key = key_of(&store, "auth").await;
        assert!(store.revoke_key(key.id).await.unwrap());
        let change = store
            .register_env_key("auth", "mcp_metrics_a")
            .await
            .unwrap();
        assert_eq!(change, EnvKeyChange::Revoked);
        assert_eq!(
            key_of(&store, "auth").await,
            KeyRecord {
                is_active: false,
                ..key
            }
        );
        let found = store
            .find_active_key(&hash_key("mcp_metrics_a"))
            .await
            .unwrap();
        assert_eq!(found, None);
    }

    #[tokio::test]
    async fn a_key_of_another_service_is_not_taken_from_it() {
        let (_dir, store) = store().await;
        let (cli, key) = store
            .create_key("registry", Some(600), false)
            .await
            .unwrap();
        let change = store.register_env_key("auth", &key).await.unwrap();
        assert_eq!(change, EnvKeyChange::OtherService("registry".into()));
        let keys = store.list_keys().await.unwrap();
        assert_eq!(keys, [cli], "the key is left as it was, nothing added");
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
