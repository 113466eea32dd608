//! `rate_limit`: requests per minute per API key, each key at its own `rate_limit` (or the
//! default). A limit of N lets a fresh key send N requests at once, then refills smoothly at N per
//! minute (GCRA, through `governor`), so there is no double burst at a window's edge. It judges
//! a request from its head, before the body is read: the caller's standing goes back to the
//! client with every answer; over the limit, the request is refused as rate-limited.
//!
//! With the `fleet` policy a key's bucket is shared by every replica, in PostgreSQL (`fleet`).

mod config;
mod fleet;

pub use config::{Policy, RateLimitConfig};

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use mcp_metrics_plugin::{
    Batch, BuildContext, Consumer, Outcome, Processor, RateLimitState, Reason, Refusal,
    RequestHead, Telemetry, async_trait,
};

use fleet::Fleet;

pub struct RateLimitProcessor {
    telemetry: Telemetry,
    default_limit: u32,
    max_tracked: usize,
    limiters: Mutex<HashMap<String, Limiter>>,
    /// The shared buckets, with the `fleet` policy: keys are judged there, callers without a key
    /// (a pipeline without `auth`) here.
    fleet: Option<Arc<Fleet>>,
    next: Arc<dyn Consumer>,
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// One caller's bucket and the limit it was made for; a new limit in the table makes a new one.
struct Limiter {
    per_minute: u32,
    bucket: Bucket,
    last_seen: Instant,
    /// What the bucket had left after the last request, for looking without taking.
    remaining: u32,
}

/// What the caller is told about its limit.
struct Verdict {
    allowed: bool,
    standing: RateLimitState,
    /// Seconds until the next request would be allowed.
    retry_after: u64,
}

#[async_trait]
impl Consumer for RateLimitProcessor {
    /// Its work was done on the request's head.
    async fn consume(&self, batch: Batch) -> Result<Outcome, Refusal> {
        self.next.consume(batch).await
    }
}

#[async_trait]
impl Processor for RateLimitProcessor {
    async fn admit(&self, head: &mut RequestHead) -> Result<(), Refusal> {
        if head.look_only {
            head.standing = Some(self.look(head).await);
            return Ok(());
        }
        let verdict = self.check(head).await;
        head.standing = Some(verdict.standing);
        if verdict.allowed {
            return Ok(());
        }
        let service = head.key.as_ref().map_or("anonymous", |k| &k.service_name);
        self.telemetry.rate_limited(service);
        Err(Refusal::new(
            Reason::RateLimited {
                standing: verdict.standing,
                retry_after: Duration::from_secs(verdict.retry_after),
            },
            format!(
                "over the limit of {} requests per minute; retry in {} s",
                verdict.standing.limit, verdict.retry_after
            ),
        ))
    }
}

impl RateLimitProcessor {
    fn new(
        config: &RateLimitConfig,
        cx: &BuildContext,
        fleet: Option<Arc<Fleet>>,
        next: Arc<dyn Consumer>,
    ) -> RateLimitProcessor {
        RateLimitProcessor {
            telemetry: cx.telemetry.clone(),
            default_limit: config.default_limit,
            max_tracked: config.max_tracked_keys,
            limiters: Mutex::new(HashMap::new()),
            fleet,
            next,
        }
    }

    /// The caller's standing, without using up a request.
    async fn look(&self, head: &RequestHead) -> RateLimitState {
        let (caller, per_minute) = self.caller(head);
        if let (Some(fleet), Some(key)) = (&self.fleet, &head.key) {
            return fleet.look(key.id, per_minute).await;
        }
        let limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        match limiters.get(&caller) {
            Some(limiter) if limiter.per_minute == per_minute => limiter.look(),
            _ => full(per_minute),
        }
    }

    /// Who the caller is, and its limit: by API key once authenticated, else by the credential it
    /// presents (a pipeline without `auth`), else one bucket for every anonymous caller.
    fn caller(&self, head: &RequestHead) -> (String, u32) {
        let (caller, own_limit) = match (&head.key, &head.credential) {
            (Some(key), _) => (format!("key:{}", key.id), key.rate_limit),
            (None, Some(credential)) => (format!("credential:{credential}"), None),
            (None, None) => ("anonymous".to_owned(), None),
        };
        let per_minute = own_limit
            .filter(|n| *n > 0)
            .unwrap_or(self.default_limit)
            .max(1);
        (caller, per_minute)
    }

    /// Takes one request from the caller's bucket, if it has one to give.
    async fn check(&self, head: &RequestHead) -> Verdict {
        let (caller, per_minute) = self.caller(head);
        if let (Some(fleet), Some(key)) = (&self.fleet, &head.key) {
            return fleet.take(key.id, per_minute).await;
        }
        let mut limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if limiters.len() >= self.max_tracked && !limiters.contains_key(&caller) {
            forget_idle(&mut limiters, self.max_tracked, now, |l| l.last_seen);
        }
        let limiter = limiters
            .entry(caller)
            .or_insert_with(|| Limiter::new(per_minute));
        if limiter.per_minute != per_minute {
            *limiter = Limiter::new(per_minute);
        }
        limiter.check()
    }
}

/// Makes room for one more caller: a bucket idle for a minute is full again, the same as no
/// bucket, so those go; if every one is busy, the one seen longest ago goes, not everyone's state.
fn forget_idle<K: Clone + Eq + std::hash::Hash, V>(
    tracked: &mut HashMap<K, V>,
    most: usize,
    now: Instant,
    last_seen: impl Fn(&V) -> Instant,
) {
    tracked.retain(|_, v| now.duration_since(last_seen(v)) < Duration::from_secs(60));
    if tracked.len() >= most
        && let Some(oldest) = tracked
            .iter()
            .min_by_key(|(_, v)| last_seen(v))
            .map(|(k, _)| k.clone())
    {
        tracked.remove(&oldest);
    }
}

impl Limiter {
    fn new(per_minute: u32) -> Limiter {
        let burst = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Limiter {
            per_minute,
            bucket: RateLimiter::direct(Quota::per_minute(burst)).with_middleware(),
            last_seen: Instant::now(),
            remaining: per_minute,
        }
    }

    /// A bucket holding `remaining` requests rather than a full one.
    fn holding(per_minute: u32, remaining: u32) -> Limiter {
        let mut limiter = Limiter::new(per_minute);
        if let Some(spent) = NonZeroU32::new(per_minute.saturating_sub(remaining)) {
            // At most the burst, so it always fits.
            let _ = limiter.bucket.check_n(spent);
            limiter.remaining = remaining.min(per_minute);
        }
        limiter
    }

    /// Takes one request, if the bucket has one.
    fn check(&mut self) -> Verdict {
        self.last_seen = Instant::now();
        let per_minute = self.per_minute;
        let refill = Duration::from_secs(60) / per_minute;
        match self.bucket.check() {
            Ok(state) => {
                self.remaining = state.remaining_burst_capacity();
                Verdict {
                    allowed: true,
                    standing: RateLimitState {
                        limit: per_minute,
                        remaining: self.remaining,
                        reset_seconds: seconds_up(refill * (per_minute - self.remaining)),
                    },
                    retry_after: 0,
                }
            }
            Err(not_until) => {
                self.remaining = 0;
                // The bucket's own clock: a new one runs `cpuid`, which a VM traps (about
                // 15 µs a refusal).
                refused(
                    per_minute,
                    not_until.wait_time_from(self.bucket.clock().now()),
                )
            }
        }
    }

    /// The standing now, without taking.
    fn look(&self) -> RateLimitState {
        // The bucket refills one request per `refill` since it was last used.
        let per_minute = self.per_minute;
        let refill = Duration::from_secs(60) / per_minute;
        let refilled = self.last_seen.elapsed().as_nanos() / refill.as_nanos().max(1);
        let refilled = u32::try_from(refilled).unwrap_or(u32::MAX);
        standing(per_minute, self.remaining.saturating_add(refilled))
    }
}

/// A caller with `remaining` requests left of `per_minute`.
fn standing(per_minute: u32, remaining: u32) -> RateLimitState {
    let remaining = remaining.min(per_minute);
    RateLimitState {
        limit: per_minute,
        remaining,
        reset_seconds: seconds_up(Duration::from_secs(60) / per_minute * (per_minute - remaining)),
    }
}

fn full(per_minute: u32) -> RateLimitState {
    standing(per_minute, per_minute)
}

/// Refused: none left, and the next request allowed after `wait`.
fn refused(per_minute: u32, wait: Duration) -> Verdict {
    Verdict {
        allowed: false,
        standing: RateLimitState {
            limit: per_minute,
            remaining: 0,
            reset_seconds: seconds_up(Duration::from_secs(60) / per_minute * per_minute),
        },
        retry_after: seconds_up(wait).max(1),
    }
}

fn seconds_up(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}
