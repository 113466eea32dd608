//! The `fleet` policy: a key's limit holds across every replica sharing one PostgreSQL database.
//!
//! Each key has one token bucket in `rate_limit_buckets`, refilled at the key's rate. A replica
//! does not ask it per request (Kong's `cluster` policy, a round trip each): it leases a few
//! tokens at a time and spends them locally, and leases again in the background once half are
//! spent, so a request rarely waits for the database. A replica holds at most `lease_percent` of
//! a key's limit unspent; that is all the fleet can admit beyond the shared bucket, so N replicas
//! stay within N × `lease_percent` of the limit. An empty bucket is not asked again until it
//! could give a lease's worth: a flood over the limit is refused locally too.
//!
//! PostgreSQL unreachable (an error, or no answer within `lease_timeout`): every replica limits
//! alone, each key starting from what this replica last saw of its shared bucket, until a probe
//! every `retry_interval` finds the database again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use mcp_metrics_plugin::{BuildContext, RateLimitState};
use mcp_metrics_store::PgStore;
use tokio_util::sync::CancellationToken;

use super::{Limiter, RateLimitConfig, Verdict, forget_idle, refused, standing};

pub(super) struct Fleet {
    store: Arc<PgStore>,
    /// `lease_percent` as a fraction.
    share: f64,
    lease_timeout: Duration,
    retry_interval: Duration,
    max_tracked: usize,
    keys: Mutex<HashMap<i64, Arc<KeyBucket>>>,
    /// False while PostgreSQL is unreachable (a probe is then running).
    reachable: AtomicBool,
    shutdown: CancellationToken,
}

/// One key's share of its bucket on this replica.
struct KeyBucket {
    key_id: i64,
    held: Mutex<Held>,
    /// Taken while leasing, so a key has one lease in flight at a time.
    leasing: tokio::sync::Mutex<()>,
}

struct Held {
    per_minute: u32,
    /// Leased, not yet spent.
    tokens: u32,
    /// The shared bucket after this replica's last lease, and when.
    shared: Option<(f64, Instant)>,
    /// The shared bucket could not give a lease's worth before this.
    empty_until: Option<Instant>,
    /// A background lease is on its way.
    prefetching: bool,
    /// While PostgreSQL is unreachable: this replica's own bucket for the key.
    fallback: Option<Limiter>,
    last_seen: Instant,
}

impl Fleet {
    pub(super) fn start(
        store: Arc<PgStore>,
        config: &RateLimitConfig,
        cx: &BuildContext,
    ) -> Arc<Fleet> {
        Arc::new(Fleet {
            store,
            share: config.lease_percent / 100.0,
            lease_timeout: config.lease_timeout,
            retry_interval: config.retry_interval,
            max_tracked: config.max_tracked_keys,
            keys: Mutex::new(HashMap::new()),
            reachable: AtomicBool::new(true),
            shutdown: cx.shutdown.clone(),
        })
    }

    /// The most tokens of a key this replica holds unspent.
    fn most_held(&self, per_minute: u32) -> u32 {
        ((f64::from(per_minute) * self.share) as u32).max(1)
    }

    /// Leases are taken to fill up to `most_held`, in the background once this many are left.
    fn refill_at(&self, per_minute: u32) -> u32 {
        self.most_held(per_minute) / 2
    }

    /// Takes one request from key `key_id`'s share, leasing more first if it has none.
    pub(super) async fn take(self: &Arc<Self>, key_id: i64, per_minute: u32) -> Verdict {
        let bucket = self.bucket(key_id, per_minute);
        loop {
            let now = Instant::now();
            {
                let mut held = bucket.held();
                if !self.reachable.load(Ordering::Acquire) {
                    return held.fallback(now).check();
                }
                held.fallback = None;
                let empty = held.empty_until.filter(|until| *until > now);
                if held.tokens > 0 {
                    held.tokens -= 1;
                    if held.tokens <= self.refill_at(per_minute)
                        && !held.prefetching
                        && empty.is_none()
                    {
                        held.prefetching = true;
                        self.prefetch(bucket.clone());
                    }
                    return Verdict {
                        allowed: true,
                        standing: held.standing(now),
                        retry_after: 0,
                    };
                }
                if let Some(until) = empty {
                    return refused(per_minute, until - now);
                }
            }
            // None held and the bucket may have some: lease now. Requests arriving meanwhile
            // wait for this lease rather than making their own.
            let _one_lease = bucket.leasing.lock().await;
            let wanted = {
                let held = bucket.held();
                held.tokens == 0 && held.needs_lease(Instant::now())
            };
            if wanted && self.reachable.load(Ordering::Acquire) {
                self.lease(&bucket).await;
            }
        }
    }

    /// The standing of key `key_id` without taking: the shared bucket as it is now, and what
    /// this replica holds.
    pub(super) async fn look(&self, key_id: i64, per_minute: u32) -> RateLimitState {
        let bucket = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key_id)
            .cloned();
        let now = Instant::now();
        let (tokens, estimate) = match &bucket {
            Some(bucket) => {
                let mut held = bucket.held();
                if held.per_minute != per_minute {
                    (0, per_minute)
                } else if !self.reachable.load(Ordering::Acquire) {
                    return held.fallback(now).look();
                } else {
                    (held.tokens, held.standing(now).remaining)
                }
            }
            None => (0, per_minute),
        };
        if !self.reachable.load(Ordering::Acquire) {
            return standing(per_minute, estimate);
        }
        let peek = self.store.peek_tokens(key_id, per_minute);
        match tokio::time::timeout(self.lease_timeout, peek).await {
            Ok(Ok(shared)) => standing(per_minute, tokens.saturating_add(shared as u32)),
            _ => standing(per_minute, estimate),
        }
    }

    fn bucket(&self, key_id: i64, per_minute: u32) -> Arc<KeyBucket> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if keys.len() >= self.max_tracked && !keys.contains_key(&key_id) {
            // What a forgotten key held is lost to the fleet until the bucket refills it.
            forget_idle(&mut keys, self.max_tracked, now, |b| b.held().last_seen);
        }
        let bucket = keys.entry(key_id).or_insert_with(|| {
            Arc::new(KeyBucket {
                key_id,
                held: Mutex::new(Held::new(per_minute, now)),
                leasing: tokio::sync::Mutex::new(()),
            })
        });
        let mut held = bucket.held();
        if held.per_minute != per_minute {
            // A new limit in the table: what was leased under the old one is dropped.
            *held = Held::new(per_minute, now);
        }
        held.last_seen = now;
        drop(held);
        bucket.clone()
    }

    /// Leases in the background, so the requests spending the rest need not wait for it.
    fn prefetch(self: &Arc<Self>, bucket: Arc<KeyBucket>) {
        let fleet = self.clone();
        tokio::spawn(async move {
            let _one_lease = bucket.leasing.lock().await;
            let wanted = {
                let held = bucket.held();
                held.tokens <= fleet.refill_at(held.per_minute) && held.needs_lease(Instant::now())
            };
            if wanted && fleet.reachable.load(Ordering::Acquire) {
                fleet.lease(&bucket).await;
            }
            bucket.held().prefetching = false;
        });
    }

    /// Fills this replica's share of the key up to `most_held`, from the shared bucket.
    async fn lease(self: &Arc<Self>, bucket: &KeyBucket) {
        let (per_minute, want) = {
            let held = bucket.held();
            let most = self.most_held(held.per_minute);
            (held.per_minute, most.saturating_sub(held.tokens))
        };
        if want == 0 {
            return;
        }
        let lease = self.store.lease_tokens(bucket.key_id, per_minute, want);
        let result = tokio::time::timeout(self.lease_timeout, lease).await;
        let now = Instant::now();
        let lease = match result {
            Ok(Ok(lease)) => lease,
            Ok(Err(error)) => return self.unreachable(&error.to_string()),
            Err(_) => {
                let waited = humantime::format_duration(self.lease_timeout);
                return self.unreachable(&format!("no answer within {waited}"));
            }
        };
        let mut held = bucket.held();
        if held.per_minute != per_minute {
            return;
        }
        held.tokens += lease.granted;
        held.shared = Some((lease.left, now));
        held.empty_until = (lease.granted == 0).then(|| {
            // Not worth asking again before the bucket has refilled half a share.
            let short = f64::from(self.most_held(per_minute).div_ceil(2)) - lease.left;
            now + Duration::from_secs_f64(short.max(0.0) * 60.0 / f64::from(per_minute))
        });
    }

    /// PostgreSQL did not answer: limit alone until a probe finds it again.
    fn unreachable(self: &Arc<Self>, why: &str) {
        if !self.reachable.swap(false, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            error = why,
            "rate_limit: cannot lease from PostgreSQL; this replica limits every key alone (at \
             its full limit) until PostgreSQL answers again"
        );
        let fleet = Arc::downgrade(self);
        let (every, shutdown) = (self.retry_interval, self.shutdown.clone());
        tokio::spawn(probe(fleet, every, shutdown));
    }
}

async fn probe(fleet: Weak<Fleet>, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Some(fleet) = fleet.upgrade() else { return };
        let ping = fleet.store.ping_leases();
        if let Ok(Ok(())) = tokio::time::timeout(fleet.lease_timeout, ping).await {
            fleet.reachable.store(true, Ordering::Release);
            tracing::info!("rate_limit: PostgreSQL answers again; limits hold for the fleet");
            return;
        }
    }
}

impl KeyBucket {
    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Held {
    fn new(per_minute: u32, now: Instant) -> Held {
        Held {
            per_minute,
            tokens: 0,
            shared: None,
            empty_until: None,
            prefetching: false,
            fallback: None,
            last_seen: now,
        }
    }

    /// Whether a lease could give anything now.
    fn needs_lease(&self, now: Instant) -> bool {
        self.empty_until.is_none_or(|until| until <= now)
    }

    /// What is left as far as this replica knows: what it holds, and the shared bucket as it
    /// last saw it, refilled since (other replicas may have taken some meanwhile).
    fn standing(&self, now: Instant) -> RateLimitState {
        let limit = f64::from(self.per_minute);
        let shared = match self.shared {
            Some((left, at)) => left + limit / 60.0 * now.duration_since(at).as_secs_f64(),
            None => limit,
        };
        standing(self.per_minute, self.tokens + shared.min(limit) as u32)
    }

    /// This replica's own bucket while PostgreSQL is unreachable, made at the first request of
    /// the outage: it starts where the shared one was last seen, not full, so an outage does
    /// not hand every replica a fresh burst. What was leased is in it.
    fn fallback(&mut self, now: Instant) -> &mut Limiter {
        if self.fallback.is_none() {
            let remaining = self.standing(now).remaining;
            self.tokens = 0;
            self.fallback = Some(Limiter::holding(self.per_minute, remaining));
        }
        self.fallback
            .as_mut()
            .expect("made above when there was none")
    }
}
