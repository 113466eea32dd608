//! The active API keys, held in memory so that checking a key never waits on the database.
//!
//! The whole table is re-read every refresh interval, so a key deactivated by any tool is refused
//! within one interval. A key the cache does not know is looked up once (a key made a moment ago
//! works at once) and then remembered as unknown until the next refresh, so a flood of bad keys
//! costs no more than one query each per interval, and at most `MAX_UNKNOWN` of them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mcp_metrics_plugin::{CancellationToken, KeyInfo};

use crate::{Store, hash_key};

const MAX_UNKNOWN: usize = 10_000;

pub struct KeyCache {
    store: Arc<Store>,
    known: RwLock<HashMap<String, KeyInfo>>,
    unknown: Mutex<HashSet<String>>,
    /// Ids of keys used since `last_used_at` was last written.
    used: Mutex<HashSet<i64>>,
}

impl KeyCache {
    /// Loads the keys and keeps them fresh every `refresh` until `shutdown`.
    pub async fn start(
        store: Arc<Store>,
        refresh: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<KeyCache>> {
        let cache = Arc::new(KeyCache {
            store,
            known: RwLock::new(HashMap::new()),
            unknown: Mutex::new(HashSet::new()),
            used: Mutex::new(HashSet::new()),
        });
        cache.refresh().await?;
        let keeper = cache.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => break,
                }
                if let Err(error) = keeper.refresh().await {
                    tracing::warn!(%error, "cannot refresh API keys; keeping the ones known");
                }
            }
        });
        Ok(cache)
    }

    /// The active key behind `key`, if there is one.
    pub async fn lookup(&self, key: &str) -> anyhow::Result<Option<KeyInfo>> {
        let digest = hash_key(key);
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

    async fn lookup_unknown(&self, digest: String) -> anyhow::Result<Option<KeyInfo>> {
        {
            let unknown = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
            if unknown.contains(&digest) || unknown.len() >= MAX_UNKNOWN {
                return Ok(None);
            }
        }
        let found = self.store.find_active_key(&digest).await?;
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
        let active: HashMap<String, KeyInfo> =
            self.store.active_keys().await?.into_iter().collect();
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
        self.store.touch_keys(&used).await
    }
}
