use std::sync::Arc;
use std::time::Duration;

use mcp_metrics_plugin::bounds::out_of_range;
use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Consumer, Processor, ProcessorConfig,
    ProcessorRegistration, async_trait, inventory,
};
use mcp_metrics_store::{Database, Location, is_bare_word};
use serde::{Deserialize, Serialize};

use super::RateLimitProcessor;
use super::fleet::Fleet;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Requests per minute for keys whose `rate_limit` column is empty (the contract: 1000),
    /// from 1 to 1000000.
    pub default_limit: u32,
    /// Most callers tracked at once, from 1 to 10000000; idle ones (full bucket) are forgotten
    /// first.
    pub max_tracked_keys: usize,
    /// The database the replicas share: the id of a `database` extension, or a URL or a path.
    /// With PostgreSQL, a key's limit holds for the whole fleet; with SQLite or none, each
    /// replica limits alone.
    pub database: Option<String>,
    /// `local` (each replica limits alone) or `fleet` (a key's limit holds across every replica
    /// sharing `database`, which must be PostgreSQL). None: `fleet` when `database` is
    /// PostgreSQL, else `local`, settled when the processor is built.
    pub policy: Option<Policy>,
    /// Fleet: the most tokens a replica holds unspent, in percent of a key's limit (at least
    /// one request). The fleet may admit up to replicas × this over the limit.
    pub lease_percent: f64,
    /// Fleet: a lease not answered within this counts as PostgreSQL unreachable, and the
    /// replica limits alone until it answers again.
    #[serde(with = "humantime_serde")]
    pub lease_timeout: Duration,
    /// Fleet: while PostgreSQL is unreachable, how often it is tried again.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Local,
    Fleet,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            default_limit: 1000,
            max_tracked_keys: 10_000,
            database: None,
            policy: None,
            lease_percent: 1.0,
            lease_timeout: Duration::from_millis(500),
            retry_interval: Duration::from_secs(1),
        }
    }
}

/// Bounds of the numeric keys, checked at start-up.
const MAX_LIMIT: u32 = 1_000_000;
const MAX_TRACKED_KEYS: usize = 10_000_000;
const LEASE_PERCENT: (f64, f64) = (0.01, 10.0);
const LEASE_TIMEOUT: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(60));
const RETRY_INTERVAL: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3600));

impl ComponentConfig for RateLimitConfig {
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        problems.extend(out_of_range(
            "default_limit",
            self.default_limit,
            1..=MAX_LIMIT,
        ));
        // Each tracked caller holds a bucket: the bound keeps a typo from meaning unbounded memory.
        problems.extend(out_of_range(
            "max_tracked_keys",
            self.max_tracked_keys,
            1..=MAX_TRACKED_KEYS,
        ));
        let location = match self.database.as_deref().map(Location::parse) {
            Some(Err(problem)) => {
                problems.push(format!("database: {problem}"));
                None
            }
            Some(Ok(location)) => Some(location),
            None => None,
        };
        if self.policy == Some(Policy::Fleet) {
            match &location {
                Some(Location::Postgres(_)) => {}
                // A bare word is an extension's id, settled when the processor is built.
                Some(Location::Sqlite(_)) if self.database.as_deref().is_some_and(is_bare_word) => {
                }
                Some(Location::Sqlite(path)) => problems.push(format!(
                    "policy: fleet needs a PostgreSQL database shared by the replicas, but \
                     database is the SQLite file {}; use policy: local",
                    path.display()
                )),
                None if self.database.is_none() => problems.push(
                    "policy: fleet needs database: the PostgreSQL URL the replicas share".into(),
                ),
                None => {}
            }
        }
        let (low, high) = LEASE_PERCENT;
        if !(low..=high).contains(&self.lease_percent) {
            problems.push(format!(
                "lease_percent: must be from {low} to {high} (percent of a key's limit a replica \
                 holds at most), not {}",
                self.lease_percent
            ));
        }
        for (key, value, (low, high)) in [
            ("lease_timeout", self.lease_timeout, LEASE_TIMEOUT),
            ("retry_interval", self.retry_interval, RETRY_INTERVAL),
        ] {
            if !(low..=high).contains(&value) {
                problems.push(format!(
                    "{key}: must be from {} to {}, not {}",
                    humantime::format_duration(low),
                    humantime::format_duration(high),
                    humantime::format_duration(value)
                ));
            }
        }
        problems
    }
}

#[async_trait]
impl ProcessorConfig for RateLimitConfig {
    async fn build(
        &self,
        cx: &BuildContext,
        next: Arc<dyn Consumer>,
    ) -> Result<Arc<dyn Processor>, BoxError> {
        let database = match self.database.as_deref() {
            Some(name) => Some(Database::named(name, cx).await?),
            None => None,
        };
        // The policy is settled here, where an extension's id has become a database.
        let fleet = match (self.policy, database) {
            (Some(Policy::Local), _) | (None, None | Some(Database::Sqlite(_))) => None,
            (_, Some(Database::Postgres(store))) => Some(Fleet::start(store, self, cx)),
            (Some(Policy::Fleet), _) => {
                return Err("policy: fleet needs a PostgreSQL database shared by the replicas;                             use policy: local"
                    .into());
            }
        };
        Ok(Arc::new(RateLimitProcessor::new(self, cx, fleet, next)))
    }
}

inventory::submit!(ProcessorRegistration::of::<RateLimitConfig>(
    "rate_limit",
    "limits requests per minute per API key (GCRA); 429 with Retry-After over the limit; \
     fleet-wide with a PostgreSQL database"
));

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> RateLimitConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_database_url_or_an_extension_id_is_taken() {
        assert!(config("database: postgres://u@db/m").validate().is_empty());
        assert!(
            config("database: database\npolicy: fleet")
                .validate()
                .is_empty()
        );
    }

    #[test]
    fn fleet_without_postgres_and_out_of_range_keys_are_refused() {
        let problems = config("policy: fleet").validate();
        assert!(problems[0].contains("needs database"), "{problems:?}");
        let problems = config("policy: fleet\ndatabase: sqlite:///m.db").validate();
        assert!(problems[0].contains("SQLite file /m.db"), "{problems:?}");
        let problems = config(
            "database: postgres://db/m\nlease_percent: 0\nlease_timeout: 0s\nretry_interval: 2h",
        )
        .validate();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("lease_percent: must be from 0.01 to 10"));
        assert!(problems[1].starts_with("lease_timeout: must be from 1ms to 1m"));
        assert!(problems[2].contains("not 2h"), "{problems:?}");
        assert!(!config("lease_percent: .nan").validate().is_empty());
        let problems = config("default_limit: 0\nmax_tracked_keys: 20000000").validate();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("default_limit: must be from 1 to 1000000"));
        assert!(problems[1].starts_with("max_tracked_keys: must be from 1 to 10000000"));
    }
}
