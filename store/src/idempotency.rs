//! `Idempotency-Key`: a request recorded in the transaction that writes its metrics, so a resend
//! (to this replica or any other) finds the record and stores nothing again. The record is per
//! part, named by the index of the part's first metric, since a request larger than a batch is
//! written in parts; parts are cut the same way every time (see `Batch::take_front`).

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use mcp_metrics_plugin::{Metric, Request, RequestContext};

/// How long a key is remembered: a resend later than this is stored again.
pub const IDEMPOTENCY_WINDOW: TimeDelta = TimeDelta::days(1);

/// A part of a request sent with an idempotency key.
pub(crate) struct KeyedPart<'a> {
    /// Its place in `batch.requests`.
    pub request: usize,
    /// The API key it came with; 0 when no key was checked.
    pub key_id: i64,
    pub idempotency_key: &'a str,
    pub first_index: i64,
    pub request_id: &'a str,
}

pub(crate) fn keyed_parts(requests: &[Arc<Request>]) -> Vec<KeyedPart<'_>> {
    requests
        .iter()
        .enumerate()
        .filter_map(|(request, part)| {
            let context = &*part.context;
            Some(KeyedPart {
                request,
                key_id: context.key.as_ref().map_or(0, |key| key.id),
                idempotency_key: context.idempotency_key.as_deref()?,
                first_index: part.metrics.first()?.index as i64,
                request_id: &context.request_id,
            })
        })
        .collect()
}

/// The metrics of the requests not in `seen`, with their contexts.
pub(crate) fn unseen<'a>(
    requests: &'a [Arc<Request>],
    seen: &'a HashSet<usize>,
) -> impl Iterator<Item = (&'a RequestContext, &'a Metric)> {
    requests
        .iter()
        .enumerate()
        .filter(move |(index, _)| !seen.contains(index))
        .flat_map(|(_, part)| part.metrics.iter().map(move |m| (&*part.context, m)))
}

/// Records older than this are forgotten.
pub fn idempotency_cutoff(now: DateTime<Utc>) -> DateTime<Utc> {
    now - IDEMPOTENCY_WINDOW
}
