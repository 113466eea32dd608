//! `rate_limit`: requests per minute per API key, each key at its own `rate_limit` (or the
//! default). A limit of N lets a fresh key send N requests at once, then refills smoothly at N per
//! minute (GCRA, through `governor`), so there is no double burst at a window's edge. Every
//! answer carries `X-RateLimit-Limit`, `-Remaining` and `-Reset`; over the limit, 429 with
//! `Retry-After`.

mod config;

pub use config::RateLimitConfig;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use mcp_metrics_plugin::{
    Batch, Consumer, Outcome, Processor, RateLimitState, Refusal, RequestContext, async_trait,
    telemetry,
};

pub struct RateLimitProcessor {
    default_limit: u32,
    max_tracked: usize,
    limiters: Mutex<HashMap<String, Limiter>>,
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
    limit: u32,
    remaining: u32,
    /// Seconds until the bucket is full again.
    reset: u64,
    /// Seconds until the next request would be allowed.
    retry_after: u64,
}

impl Verdict {
    fn headers(&self) -> Vec<(String, String)> {
        vec![
            ("x-ratelimit-limit".into(), self.limit.to_string()),
            ("x-ratelimit-remaining".into(), self.remaining.to_string()),
            ("x-ratelimit-reset".into(), self.reset.to_string()),
        ]
    }
}

#[async_trait]
impl Consumer for RateLimitProcessor {
    async fn consume(&self, batch: Batch) -> Result<Outcome, Refusal> {
        // A batch from a receiver is one request; one verdict per request.
        let mut headers = Vec::new();
        for request in &batch.requests {
            let verdict = self.check(&request.context);
            headers = verdict.headers();
            if !verdict.allowed {
                let service = request
                    .context
                    .key
                    .as_ref()
                    .map_or(&request.context.service, |k| &k.service_name);
                telemetry::rate_limited(service);
                let mut refusal = Refusal::new(
                    429,
                    "rate_limit_exceeded",
                    format!(
                        "over the limit of {} requests per minute; retry in {} s",
                        verdict.limit, verdict.retry_after
                    ),
                );
                refusal.retry_after = Some(verdict.retry_after);
                refusal.headers = headers;
                return Err(refusal);
            }
        }
        match self.next.consume(batch).await {
            Ok(mut outcome) => {
                outcome.headers.extend(headers);
                Ok(outcome)
            }
            Err(mut refusal) => {
                refusal.headers.extend(headers);
                Err(refusal)
            }
        }
    }
}

impl Processor for RateLimitProcessor {
    fn rate_limit(&self, context: &RequestContext) -> Option<RateLimitState> {
        let (caller, per_minute) = self.caller(context);
        let limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        let remaining = match limiters.get(&caller) {
            Some(limiter) if limiter.per_minute == per_minute => {
                // The bucket refills one request per `refill` since it was last used.
                let refill = Duration::from_secs(60) / per_minute;
                let refilled = limiter.last_seen.elapsed().as_nanos() / refill.as_nanos().max(1);
                let refilled = u32::try_from(refilled).unwrap_or(u32::MAX);
                limiter.remaining.saturating_add(refilled).min(per_minute)
            }
            _ => per_minute,
        };
        Some(RateLimitState {
            limit: per_minute,
            remaining,
            reset_seconds: seconds_up(
                Duration::from_secs(60) / per_minute * (per_minute - remaining),
            ),
        })
    }
}

impl RateLimitProcessor {
    fn new(config: &RateLimitConfig, next: Arc<dyn Consumer>) -> RateLimitProcessor {
        RateLimitProcessor {
            default_limit: config.default_limit,
            max_tracked: config.max_tracked_keys,
            limiters: Mutex::new(HashMap::new()),
            next,
        }
    }

    /// Who the caller is, and its limit: by API key once authenticated, else by the service the
    /// client names.
    fn caller(&self, context: &RequestContext) -> (String, u32) {
        let (caller, own_limit) = match &context.key {
            Some(key) => (format!("key:{}", key.id), key.rate_limit),
            None => (format!("service:{}", context.service), None),
        };
        let per_minute = own_limit
            .filter(|n| *n > 0)
            .unwrap_or(self.default_limit)
            .max(1);
        (caller, per_minute)
    }

    /// Takes one request from the caller's bucket, if it has one to give.
    fn check(&self, context: &RequestContext) -> Verdict {
        let (caller, per_minute) = self.caller(context);
        let mut limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if limiters.len() >= self.max_tracked && !limiters.contains_key(&caller) {
            // A bucket idle for a minute is full again, the same as no bucket: forget those.
            limiters.retain(|_, l| now.duration_since(l.last_seen) < Duration::from_secs(60));
            // Still full of busy callers: forget the one seen longest ago, not everyone's state.
            let oldest = limiters
                .iter()
                .min_by_key(|(_, l)| l.last_seen)
                .map(|(caller, _)| caller.clone());
            if let (true, Some(oldest)) = (limiters.len() >= self.max_tracked, oldest) {
                limiters.remove(&oldest);
            }
        }
        let limiter = limiters
            .entry(caller)
            .or_insert_with(|| Limiter::new(per_minute));
        if limiter.per_minute != per_minute {
            *limiter = Limiter::new(per_minute);
        }
        limiter.last_seen = now;
        let refill = Duration::from_secs(60) / per_minute;
        match limiter.bucket.check() {
            Ok(state) => {
                limiter.remaining = state.remaining_burst_capacity();
                Verdict {
                    allowed: true,
                    limit: per_minute,
                    remaining: limiter.remaining,
                    reset: seconds_up(refill * (per_minute - limiter.remaining)),
                    retry_after: 0,
                }
            }
            Err(not_until) => {
                limiter.remaining = 0;
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Verdict {
                    allowed: false,
                    limit: per_minute,
                    remaining: 0,
                    reset: seconds_up(refill * per_minute),
                    retry_after: seconds_up(wait).max(1),
                }
            }
        }
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
}

fn seconds_up(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}
