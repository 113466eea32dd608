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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKeyChange {
    /// The key was there already (and is active).
    Unchanged,
    /// A new key; any earlier key from the environment for the service is deactivated.
    Registered,
}

/// A new key: `mcp_metrics_` and 32 random bytes in URL-safe base64 (43 characters).
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("mcp_metrics_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// What is stored of a key: its SHA-256 digest in lower-case hex.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
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
    /// made otherwise are left alone.
    pub async fn register_env_key(
        &self,
        service_name: &str,
        key: &str,
    ) -> anyhow::Result<EnvKeyChange> {
        let digest = hash_key(key);
        let mut tx = self.pool().begin().await?;
        let known = sqlx::query(
            "UPDATE api_keys SET is_active = 1 WHERE key_hash = ? AND service_name = ?",
        )
        .bind(&digest)
        .bind(service_name)
        .execute(&mut *tx)
        .await?;
        if known.rows_affected() > 0 {
            tx.commit().await?;
            return Ok(EnvKeyChange::Unchanged);
        }
        sqlx::query("UPDATE api_keys SET is_active = 0 WHERE source = 'env' AND service_name = ?")
            .bind(service_name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO api_keys (key_hash, service_name, created_at, is_active, source) \
             VALUES (?, ?, ?, 1, 'env') \
             ON CONFLICT (key_hash) DO UPDATE SET service_name = excluded.service_name, \
             is_active = 1, source = 'env'",
        )
        .bind(&digest)
        .bind(service_name)
        .bind(timestamp_text(&Utc::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(EnvKeyChange::Registered)
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
fn rate_limit(column: Option<i64>) -> Option<u32> {
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

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
