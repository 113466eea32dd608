//! API keys in PostgreSQL: the same operations as in the SQLite file.

use chrono::{DateTime, Utc};
use mcp_metrics_plugin::KeyInfo;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::PgStore;
use crate::keys::rate_limit;
use crate::{EnvKeyChange, KeyRecord, generate_key, hash_key, timestamp_text};

impl PgStore {
    pub async fn create_key(
        &self,
        service_name: &str,
        rate_limit: Option<u32>,
        is_admin: bool,
    ) -> anyhow::Result<(KeyRecord, String)> {
        let key = generate_key();
        let row = sqlx::query(
            "INSERT INTO api_keys (key_hash, service_name, is_active, rate_limit, is_admin) \
             VALUES ($1, $2, TRUE, $3, $4) RETURNING id, created_at",
        )
        .bind(hash_key(&key))
        .bind(service_name)
        .bind(
            rate_limit
                .map(i64::from)
                .map(|n| n.min(i64::from(i32::MAX)) as i32),
        )
        .bind(is_admin)
        .fetch_one(self.pool())
        .await?;
        let record = KeyRecord {
            id: row.try_get("id")?,
            service_name: service_name.to_owned(),
            created_at: timestamp_text(&row.try_get::<DateTime<Utc>, _>("created_at")?),
            last_used_at: None,
            is_active: true,
            rate_limit,
            is_admin,
            source: None,
        };
        Ok((record, key))
    }

    /// As [`Store::register_env_key`](crate::Store::register_env_key); replicas starting at once
    /// take turns through a transaction-scoped advisory lock.
    pub async fn register_env_key(
        &self,
        service_name: &str,
        key: &str,
    ) -> anyhow::Result<EnvKeyChange> {
        let digest = hash_key(key);
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('mcp_metrics_api_keys'))")
            .execute(&mut *tx)
            .await?;
        let known =
            sqlx::query("SELECT id, service_name, is_active FROM api_keys WHERE key_hash = $1")
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
        sqlx::query(
            "UPDATE api_keys SET is_active = FALSE \
             WHERE source = 'env' AND service_name = $1 AND id IS DISTINCT FROM $2",
        )
        .bind(service_name)
        .bind(kept)
        .execute(&mut *tx)
        .await?;
        let change = match kept {
            Some(id) => {
                sqlx::query(
                    "UPDATE api_keys SET source = 'env', rate_limit = NULLIF(rate_limit, 1000) \
                     WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                EnvKeyChange::Unchanged
            }
            None => {
                sqlx::query(
                    "INSERT INTO api_keys (key_hash, service_name, is_active, rate_limit, source) \
                     VALUES ($1, $2, TRUE, NULL, 'env')",
                )
                .bind(&digest)
                .bind(service_name)
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
                    created_at: timestamp_text(&row.try_get("created_at")?),
                    last_used_at: row
                        .try_get::<Option<DateTime<Utc>>, _>("last_used_at")?
                        .map(|at| timestamp_text(&at)),
                    is_active: row.try_get::<Option<bool>, _>("is_active")?.unwrap_or(true),
                    rate_limit: rate_limit(
                        row.try_get::<Option<i32>, _>("rate_limit")?.map(i64::from),
                    ),
                    is_admin: row.try_get::<Option<bool>, _>("is_admin")?.unwrap_or(false),
                    source: row.try_get("source")?,
                })
            })
            .collect()
    }

    pub async fn revoke_key(&self, id: i64) -> anyhow::Result<bool> {
        let done = sqlx::query("UPDATE api_keys SET is_active = FALSE WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn active_keys(&self) -> anyhow::Result<Vec<(String, KeyInfo)>> {
        let rows = sqlx::query(
            "SELECT id, key_hash, service_name, rate_limit, is_admin FROM api_keys \
             WHERE is_active IS NOT FALSE",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("key_hash")?, key_info(row)?)))
            .collect()
    }

    pub async fn find_active_key(&self, key_hash: &str) -> anyhow::Result<Option<KeyInfo>> {
        let row = sqlx::query(
            "SELECT id, service_name, rate_limit, is_admin FROM api_keys \
             WHERE key_hash = $1 AND is_active IS NOT FALSE",
        )
        .bind(key_hash)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(key_info).transpose()?)
    }

    pub async fn touch_keys(&self, ids: &[i64]) -> anyhow::Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1)")
            .bind(ids)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

fn key_info(row: &PgRow) -> Result<KeyInfo, sqlx::Error> {
    Ok(KeyInfo {
        id: row.try_get("id")?,
        service_name: row.try_get("service_name")?,
        rate_limit: rate_limit(row.try_get::<Option<i32>, _>("rate_limit")?.map(i64::from)),
        is_admin: row.try_get::<Option<bool>, _>("is_admin")?.unwrap_or(false),
    })
}
