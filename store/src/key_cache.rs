//! The active API keys, held in memory so that checking a key never waits on the database. One
//! cache per database (and refresh interval) per process: every component that checks keys
//! against it (each pipeline's `auth`) shares it, so there is one key check, one cache and one
//! `last_used_at` writer.
//!
//! The whole table is re-read every refresh interval, so a key deactivated by any tool is refused
//! within one interval; on PostgreSQL also at once whenever the table changes (a trigger
//! announces it with NOTIFY), so every replica follows a key made or revoked anywhere. With the
//! database unreachable, the keys known are kept. A key the cache does not know is looked up
//! once (a key made a moment ago works at once) and then remembered as unknown until the next
//! refresh, so a flood of bad keys costs no more than one query each per interval, and at most
//! `MAX_UNKNOWN` of them.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use mcp_metrics_plugin::{CancellationToken, KeyInfo};

use crate::postgres::KEYS_CHANGED;
use crate::shared::OpenOnce;
use crate::{Database, Location, PgStore, key_digest};

const MAX_UNKNOWN: usize = 10_000;

/// A key's SHA-256 digest, as the cache holds it: every request's key is looked up, and 32 bytes
/// are hashed and compared in half the time of the 64 characters of hex the database stores,
/// with no string to make.
type Digest = [u8; 32];

pub struct KeyCache {
    database: Database,
    known: RwLock<HashMap<Digest, KeyInfo>>,
    unknown: Mutex<HashSet<Digest>>,
    /// Ids of keys used since `last_used_at` was last written.
    used: Mutex<HashSet<i64>>,
    /// Stops the tasks that keep it fresh, once the last component using it is gone.
    stop: CancellationToken,
}

/// The caches in use, by database and refresh interval (a reload that changes the interval gets a
/// cache of its own, not the one it replaces).
static SHARED: OpenOnce<(Location, Duration), KeyCache> = OpenOnce::new();

impl KeyCache {
    /// The cache of `database`'s keys refreshed every `refresh`: the one this process has, or a
    /// new one, loaded and kept fresh for as long as anyone holds it.
    pub async fn shared(database: Database, refresh: Duration) -> anyhow::Result<Arc<KeyCache>> {
        SHARED
            .get_or_make((database.location(), refresh), || {
                KeyCache::start(database, refresh)
            })
            .await
    }

    async fn start(database: Database, refresh: Duration) -> anyhow::Result<Arc<KeyCache>> {
        let cache = Arc::new(KeyCache {
            database: database.clone(),
            known: RwLock::new(HashMap::new()),
            unknown: Mutex::new(HashSet::new()),
            used: Mutex::new(HashSet::new()),
            stop: CancellationToken::new(),
        });
        cache.refresh().await?;
        let stop = cache.stop.clone();
        if let Database::Postgres(store) = &database {
            let follower = follow_changes(Arc::downgrade(&cache), store.clone(), stop.clone());
            tokio::spawn(follower);
        }
        let keeper = Arc::downgrade(&cache);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                let Some(cache) = keeper.upgrade() else { break };
                if let Err(error) = cache.refresh().await {
                    tracing::warn!(%error, "cannot refresh API keys; keeping the ones known");
                }
            }
        });
        Ok(cache)
    }

    /// The active key behind `key`, if there is one.
    pub async fn lookup(&self, key: &str) -> anyhow::Result<Option<KeyInfo>> {
        let digest = key_digest(key);
        let found = self
            .known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .cloned();
        let found = match found {
            Some(info) => Some(info),
            None => self.lookup_unknown(digest).await?,
        };
        if let Some(info) = &found {
            self.used
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(info.id);
        }
        Ok(found)
    }

    async fn lookup_unknown(&self, digest: Digest) -> anyhow::Result<Option<KeyInfo>> {
        {
            let unknown = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
            if unknown.contains(&digest) || unknown.len() >= MAX_UNKNOWN {
                return Ok(None);
            }
        }
        let found = self.database.find_active_key(&hex::encode(digest)).await?;
        match &found {
            Some(info) => {
                let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
                known.insert(digest, info.clone());
            }
            None => {
                let mut unknown = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
                unknown.insert(digest);
            }
        }
        Ok(found)
    }

    async fn refresh(&self) -> anyhow::Result<()> {
        let active: HashMap<Digest, KeyInfo> = self
            .database
            .active_keys()
            .await?
            .into_iter()
            .filter_map(|(stored, info)| Some((stored_digest(&stored)?, info)))
            .collect();
        *self.known.write().unwrap_or_else(|e| e.into_inner()) = active;
        self.unknown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.record_use().await
    }

    /// Writes `last_used_at` for the keys used since the last time.
    pub async fn record_use(&self) -> anyhow::Result<()> {
        let used: Vec<i64> = {
            let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
            used.drain().collect()
        };
        if used.is_empty() {
            return Ok(());
        }
        self.database.touch_keys(&used).await
    }
}

/// The digest a key's row stores, if it is one a key can match: 64 characters of lower-case hex,
/// as [`hash_key`](crate::hash_key) writes them (the database compares the text as it is).
fn stored_digest(stored: &str) -> Option<Digest> {
    if stored.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut digest = [0; 32];
    hex::decode_to_slice(stored, &mut digest).ok()?;
    Some(digest)
}

impl Drop for KeyCache {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Refreshes the cache whenever PostgreSQL announces a change to `api_keys`. A lost connection
/// is made again (the refresh interval covers the time between), and the cache is refreshed once
/// it is back, for the changes made meanwhile.
async fn follow_changes(cache: Weak<KeyCache>, store: Arc<PgStore>, stop: CancellationToken) {
    loop {
        tokio::select! {
            Err(error) = listen(&cache, &store) => {
                tracing::warn!(%error, "cannot listen for key changes; trying again in 1 s");
            }
            _ = stop.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn listen(cache: &Weak<KeyCache>, store: &PgStore) -> Result<Infallible, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(store.pool()).await?;
    listener.listen(KEYS_CHANGED).await?;
    loop {
        // `None`: the connection was lost; the next call connects again.
        if listener.try_recv().await?.is_none() {
            tracing::debug!("key changes: connection lost, listening again");
        }
        let Some(cache) = cache.upgrade() else {
            return std::future::pending().await;
        };
        if let Err(error) = cache.refresh().await {
            tracing::warn!(%error, "cannot refresh API keys; keeping the ones known");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash_key;

    #[test]
    fn a_stored_digest_is_read_as_the_key_it_was_made_from() {
        let key = "mcp_metrics_abc";
        assert_eq!(stored_digest(&hash_key(key)), Some(key_digest(key)));
    }

    #[test]
    fn a_row_no_key_can_match_is_left_out() {
        let stored = hash_key("mcp_metrics_abc");
        // The database compares the text: an upper-case digest never matches a key.
        assert_eq!(stored_digest(&stored.to_ascii_uppercase()), None);
        assert_eq!(stored_digest(&stored[..62]), None);
        assert_eq!(stored_digest(&format!("{stored}00")), None);
        assert_eq!(stored_digest("not hex at all"), None);
    }
}
