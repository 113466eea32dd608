//! The series a `prometheus` exporter shows for the metrics it gets, kept here rather than in
//! OpenTelemetry instruments. A cumulative instrument of `opentelemetry_sdk` 0.33 keeps every
//! label set it has seen for the life of its `MeterProvider` (it evicts only under delta
//! temporality, which a scrape cannot use), so a series nobody updates never goes, nor does the
//! overflow series once one client has filled the cardinality limit. Here each series knows when
//! it was last updated and goes `metric_expiration` later, as in the OpenTelemetry Collector's
//! `prometheus` exporter; and each is charged, when it is made, the most bytes it can ever add
//! to a scrape, so the exposition stays within `max_scrape_size` whatever clients send.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mcp_metrics_plugin::MetricType;
use prometheus::proto::{self, MetricFamily, MetricType as FamilyType};

use hashbrown::{Equivalent, HashMap};

use crate::otel::instrument_names;
use crate::otel::labels::OVERFLOW_LABEL;

/// Most characters the text encoder writes for a finite, non-negative `f64` (Rust's `Display`,
/// which never uses an exponent): `2.2250738585072009e-308` is `0.` and 307 zeros and 17 digits.
pub const MAX_FLOAT_TEXT: usize = 330;

/// Most characters of a count, a `u64` the encoder writes as an `f64` (`18446744073709552000`).
pub const MAX_COUNT_TEXT: usize = 20;

/// Room kept in a scrape for what it holds besides the series of metrics: `target_info` and the
/// service's own telemetry. Their size depends on the configuration (how many receivers and
/// exporters, which status codes were answered: about 1.7 KiB each), never on labels clients
/// send; the shipped configuration's take under 25 KiB.
pub const SELF_TELEMETRY_RESERVE: usize = 64 * 1024;

/// The bounds of the series.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Histogram bucket upper bounds, in seconds.
    pub buckets: Vec<f64>,
    /// Most series per metric type, the overflow series aside.
    pub cardinality_limit: usize,
    /// Most bytes of one scrape.
    pub max_scrape_bytes: usize,
    /// How long a series stays without updates.
    pub expiration: Duration,
}

/// Label names and values, sorted by name.
pub type Labels = Vec<(String, String)>;

/// Labels as a point carries them, borrowed from its metric where they can be; sorted by name.
pub type PointLabels<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// One metric to add: its type's index in [`MetricType::ALL`], its labels, the value for the
/// counter and the duration for the histogram (each when it has one that the instrument takes).
pub struct Point<'a> {
    pub type_index: usize,
    pub labels: PointLabels<'a>,
    pub value: Option<f64>,
    pub seconds: Option<f64>,
}

/// The series of one exporter.
pub struct SeriesTable {
    settings: Settings,
    families: Vec<Family>,
    /// Bytes the series of metrics may take in a scrape: `max_scrape_bytes` less what is always
    /// there or reserved (headers, overflow series, [`SELF_TELEMETRY_RESERVE`]).
    budget: usize,
    sweep_every: Duration,
    state: Mutex<State>,
}

/// The two families of a metric type and what their lines cost besides labels.
struct Family {
    metric_type: MetricType,
    counter: String,
    counter_help: String,
    histogram: String,
    histogram_help: String,
    /// Lines one series can have: the counter, the buckets with `+Inf`, `_sum`, `_count`.
    lines: usize,
    /// Bytes of those lines without their label text: names, values at their longest, the
    /// `le` labels of the buckets.
    fixed: usize,
}

struct State {
    types: Vec<TypeSeries>,
    /// What the series in `types` are charged, in bytes.
    bytes: usize,
    next_sweep: Instant,
}

#[derive(Default)]
struct TypeSeries {
    series: HashMap<Labels, Series>,
    overflow: Option<Series>,
}

struct Series {
    /// Sum of the values; none until a value was added.
    counter: Option<f64>,
    histogram: Option<Histogram>,
    updated: Instant,
    /// Bytes charged to the budget.
    cost: usize,
}

struct Histogram {
    /// Per bucket (the last one `+Inf`), not cumulative.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Bytes of `value` once the text format escapes it (`\`, `"` and newline take two).
fn escaped_len(value: &str) -> usize {
    value.len()
        + value
            .bytes()
            .filter(|b| matches!(b, b'\\' | b'"' | b'\n'))
            .count()
}

/// A point's labels as the key of the series they name, found without making that key: they
/// hash as [`Labels`] do (a `Cow<str>` hashes as the text it holds).
struct SeriesKey<'p, 'a>(&'p [(Cow<'a, str>, Cow<'a, str>)]);

impl Hash for SeriesKey<'_, '_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Equivalent<Labels> for SeriesKey<'_, '_> {
    fn equivalent(&self, key: &Labels) -> bool {
        self.0.len() == key.len()
            && self
                .0
                .iter()
                .zip(key)
                .all(|((name, value), (key_name, key_value))| {
                    name == key_name && value == key_value
                })
    }
}

/// Bytes of `{a="1",b="2"}` and of the space and newline of its line.
fn label_text_len<N: AsRef<str>, V: AsRef<str>>(labels: &[(N, V)]) -> usize {
    let pairs: usize = labels
        .iter()
        .map(|(name, value)| name.as_ref().len() + r#"="""#.len() + escaped_len(value.as_ref()))
        .sum();
    "{}".len() + pairs + labels.len().saturating_sub(1) + " \n".len()
}

fn overflow_labels(metric_type: MetricType) -> Labels {
    vec![
        ("metric_type".to_owned(), metric_type.as_str().to_owned()),
        (OVERFLOW_LABEL.to_owned(), "true".to_owned()),
    ]
}

impl SeriesTable {
    pub fn new(settings: Settings, now: Instant) -> SeriesTable {
        let bucket_lines = settings.buckets.len() + 1;
        let le_text: usize = settings
            .buckets
            .iter()
            .map(|bound| bound.to_string().len())
            .chain(["+Inf".len()])
            .map(|len| r#",le="""#.len() + len)
            .sum();
        let families: Vec<Family> = MetricType::ALL
            .into_iter()
            .map(|metric_type| {
                let (counter, histogram) = instrument_names(metric_type);
                let counter = format!("{counter}_total");
                let histogram = format!("{histogram}_seconds");
                let fixed = counter.len()
                    + MAX_FLOAT_TEXT
                    + bucket_lines * (histogram.len() + "_bucket".len() + MAX_COUNT_TEXT)
                    + le_text
                    + histogram.len()
                    + "_sum".len()
                    + MAX_FLOAT_TEXT
                    + histogram.len()
                    + "_count".len()
                    + MAX_COUNT_TEXT;
                Family {
                    metric_type,
                    counter_help: format!("Sum of the values of {metric_type} metrics"),
                    histogram_help: format!("duration_ms of {metric_type} metrics"),
                    counter,
                    histogram,
                    lines: 1 + bucket_lines + 2,
                    fixed,
                }
            })
            .collect();
        let headers: usize = families
            .iter()
            .map(|f| {
                let header = |name: &str, help: &str, kind: &str| {
                    format!("# HELP {name} {help}\n# TYPE {name} {kind}\n").len()
                };
                header(&f.counter, &f.counter_help, "counter")
                    + header(&f.histogram, &f.histogram_help, "histogram")
            })
            .sum();
        let mut table = SeriesTable {
            budget: 0,
            sweep_every: (settings.expiration / 10)
                .clamp(Duration::from_millis(10), Duration::from_secs(5)),
            settings,
            families,
            state: Mutex::new(State {
                types: MetricType::ALL.map(|_| TypeSeries::default()).into(),
                bytes: 0,
                next_sweep: now,
            }),
        };
        let overflow: usize = (0..table.families.len())
            .map(|index| table.cost(index, &overflow_labels(table.families[index].metric_type)))
            .sum();
        table.budget = table
            .settings
            .max_scrape_bytes
            .saturating_sub(headers + overflow + SELF_TELEMETRY_RESERVE);
        table
    }

    /// The most bytes a series of type `index` with `labels` can add to a scrape: its counter
    /// and every line of its histogram, with values at their longest.
    fn cost<N: AsRef<str>, V: AsRef<str>>(&self, index: usize, labels: &[(N, V)]) -> usize {
        let family = &self.families[index];
        family.fixed + family.lines * label_text_len(labels)
    }

    /// Adds the points at `now`. A point whose labels are not a series yet makes one if its type
    /// has fewer than `cardinality_limit` and the budget has room for it; otherwise it goes to its
    /// type's overflow series. Returns, per type, how many points went there.
    pub fn record<'a>(
        &self,
        now: Instant,
        points: impl IntoIterator<Item = Point<'a>>,
    ) -> [usize; MetricType::ALL.len()] {
        let mut overflowed = [0; MetricType::ALL.len()];
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now >= state.next_sweep {
            self.sweep(&mut state, now);
        }
        let buckets = self.settings.buckets.len() + 1;
        for point in points {
            if point.value.is_none() && point.seconds.is_none() {
                continue;
            }
            let State { types, bytes, .. } = &mut *state;
            let of_type = &mut types[point.type_index];
            let series = if let Some(series) = of_type.series.get_mut(&SeriesKey(&point.labels)) {
                series
            } else {
                let cost = self.cost(point.type_index, &point.labels);
                if of_type.series.len() < self.settings.cardinality_limit
                    && *bytes + cost <= self.budget
                {
                    *bytes += cost;
                    let labels: Labels = point
                        .labels
                        .into_iter()
                        .map(|(name, value)| (name.into_owned(), value.into_owned()))
                        .collect();
                    of_type
                        .series
                        .entry(labels)
                        .or_insert_with(|| Series::new(now, cost))
                } else {
                    overflowed[point.type_index] += 1;
                    of_type.overflow.get_or_insert_with(|| Series::new(now, 0))
                }
            };
            series.updated = now;
            if let Some(value) = point.value {
                // Clamped so the sum stays a number the text format can carry.
                let sum = series.counter.get_or_insert(0.0);
                *sum = (*sum + value).min(f64::MAX);
            }
            if let Some(seconds) = point.seconds {
                let bucket = self
                    .settings
                    .buckets
                    .partition_point(|bound| *bound < seconds);
                let histogram = series.histogram.get_or_insert_with(|| Histogram {
                    counts: vec![0; buckets],
                    sum: 0.0,
                    count: 0,
                });
                histogram.counts[bucket] += 1;
                histogram.sum = (histogram.sum + seconds).min(f64::MAX);
                histogram.count += 1;
            }
        }
        overflowed
    }

    /// Drops the series not updated within `metric_expiration` of `now`, overflow series too.
    fn sweep(&self, state: &mut State, now: Instant) {
        let expiration = self.settings.expiration;
        let live = |series: &Series| now.saturating_duration_since(series.updated) < expiration;
        let mut freed = 0;
        for of_type in &mut state.types {
            of_type.series.retain(|_, series| {
                let keep = live(series);
                if !keep {
                    freed += series.cost;
                }
                keep
            });
            if of_type.overflow.as_ref().is_some_and(|s| !live(s)) {
                of_type.overflow = None;
            }
            // A table that grew under a flood keeps its capacity otherwise.
            if of_type.series.capacity() > 2 * of_type.series.len() + 16 {
                of_type.series.shrink_to_fit();
            }
        }
        state.bytes -= freed;
        state.next_sweep = now + self.sweep_every;
    }

    /// The series as Prometheus families, after dropping those expired at `now`; each family's
    /// series sorted by labels, empty families left out.
    pub fn families(&self, now: Instant) -> Vec<MetricFamily> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.sweep(&mut state, now);
        let mut families = Vec::new();
        for (family, of_type) in self.families.iter().zip(&state.types) {
            let overflow = of_type
                .overflow
                .as_ref()
                .map(|series| (overflow_labels(family.metric_type), series));
            let mut all: Vec<(&Labels, &Series)> = of_type.series.iter().collect();
            all.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let all = all
                .into_iter()
                .chain(overflow.as_ref().map(|(labels, series)| (labels, *series)));
            let mut counters = Vec::new();
            let mut histograms = Vec::new();
            for (labels, series) in all {
                if let Some(sum) = series.counter {
                    let mut counter = proto::Counter::default();
                    counter.set_value(sum);
                    let mut metric = metric_with(labels);
                    metric.set_counter(counter);
                    counters.push(metric);
                }
                if let Some(histogram) = &series.histogram {
                    let mut metric = metric_with(labels);
                    metric.set_histogram(self.histogram(histogram));
                    histograms.push(metric);
                }
            }
            for (name, help, kind, metrics) in [
                (
                    &family.counter,
                    &family.counter_help,
                    FamilyType::COUNTER,
                    counters,
                ),
                (
                    &family.histogram,
                    &family.histogram_help,
                    FamilyType::HISTOGRAM,
                    histograms,
                ),
            ] {
                if metrics.is_empty() {
                    continue;
                }
                let mut out = MetricFamily::default();
                out.set_name(name.clone());
                out.set_help(help.clone());
                out.set_field_type(kind);
                out.set_metric(metrics);
                families.push(out);
            }
        }
        families
    }

    fn histogram(&self, histogram: &Histogram) -> proto::Histogram {
        let mut cumulative = 0;
        let buckets = self
            .settings
            .buckets
            .iter()
            .zip(&histogram.counts)
            .map(|(bound, count)| {
                cumulative += count;
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(*bound);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        let mut out = proto::Histogram::default();
        out.set_bucket(buckets);
        out.set_sample_sum(histogram.sum);
        out.set_sample_count(histogram.count);
        out
    }

    /// How many series there are and the bytes they are charged (the overflow series aside).
    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        let series = state.types.iter().map(|t| t.series.len()).sum();
        (series, state.bytes)
    }
}

impl Series {
    fn new(now: Instant, cost: usize) -> Series {
        Series {
            counter: None,
            histogram: None,
            updated: now,
            cost,
        }
    }
}

fn metric_with(labels: &Labels) -> proto::Metric {
    let mut metric = proto::Metric::default();
    metric.set_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = proto::LabelPair::default();
                pair.set_name(name.clone());
                pair.set_value(value.clone());
                pair
            })
            .collect(),
    );
    metric
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    const BUCKETS: [f64; 3] = [0.005, 0.25, 10.0];

    fn table(max_scrape_bytes: usize, cardinality_limit: usize, now: Instant) -> SeriesTable {
        SeriesTable::new(
            Settings {
                buckets: BUCKETS.to_vec(),
                cardinality_limit,
                max_scrape_bytes,
                expiration: Duration::from_secs(60),
            },
            now,
        )
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        let mut labels: Labels = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        labels
    }

    /// Labels as a point carries them.
    fn borrowed(labels: Labels) -> PointLabels<'static> {
        labels
            .into_iter()
            .map(|(name, value)| (Cow::Owned(name), Cow::Owned(value)))
            .collect()
    }

    fn point(type_index: usize, labels: Labels) -> Point<'static> {
        Point {
            type_index,
            labels: borrowed(labels),
            value: Some(1.0),
            seconds: Some(0.1),
        }
    }

    fn text(table: &SeriesTable, now: Instant) -> String {
        let mut body = Vec::new();
        TextEncoder::new()
            .encode(&table.families(now), &mut body)
            .unwrap();
        String::from_utf8(body).unwrap()
    }

    /// A series's lines, as written, without the `# HELP` and `# TYPE` headers.
    fn sample_bytes(text: &str) -> usize {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| line.len() + 1)
            .sum()
    }

    #[test]
    fn no_value_is_written_longer_than_its_bound() {
        for value in [
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::from_bits(1),
            2.225_073_858_507_201e-308,
            1.234_567_890_123_456_7e-300,
            123_456_789.123_456_79,
            0.0,
        ] {
            assert!(value.to_string().len() <= MAX_FLOAT_TEXT, "{value:e}");
        }
        assert_eq!((u64::MAX as f64).to_string().len(), MAX_COUNT_TEXT);
    }

    #[test]
    fn a_series_never_writes_more_than_it_is_charged() {
        let now = Instant::now();
        let nasty = "\"\\\n".repeat(80);
        for (value, seconds) in [
            (f64::MAX, f64::MAX),
            (f64::from_bits(1), 2.225_073_858_507_201e-308),
            (1.0, 0.1),
        ] {
            let table = table(1 << 30, 10, now);
            let labels = labels(&[
                ("service", &nasty),
                ("metric_type", "custom"),
                ("k", &nasty),
            ]);
            let cost = table.cost(6, &labels);
            // Twice, so sums and counts grow.
            for _ in 0..2 {
                table.record(
                    now,
                    [Point {
                        type_index: 6,
                        labels: borrowed(labels.clone()),
                        value: Some(value),
                        seconds: Some(seconds),
                    }],
                );
            }
            let written = sample_bytes(&text(&table, now));
            assert!(written <= cost, "{written} > {cost}");
            assert!(
                written > cost / 3,
                "the bound is far off: {written} of {cost}"
            );
            assert_eq!(table.usage(), (1, cost));
        }
    }

    #[test]
    fn series_past_the_budget_go_to_the_overflow_series() {
        let now = Instant::now();
        let max = 256 * 1024;
        let table = table(max, 1_000_000, now);
        let big = "v".repeat(256);
        let mut overflowed = 0;
        for type_index in 0..MetricType::ALL.len() {
            let points = (0..200).map(|i| {
                let mut pairs = vec![
                    ("service".to_owned(), "svc".to_owned()),
                    (
                        "metric_type".to_owned(),
                        MetricType::ALL[type_index].as_str().to_owned(),
                    ),
                ];
                pairs.extend((0..7).map(|k| (format!("k{k}"), format!("{i}{big}"))));
                pairs.sort();
                point(type_index, pairs)
            });
            overflowed += table.record(now, points).iter().sum::<usize>();
        }
        let (series, bytes) = table.usage();
        assert!(bytes <= table.budget, "{bytes} > {}", table.budget);
        assert!(
            series > 0 && overflowed > 0,
            "{series} series, {overflowed} overflowed"
        );
        assert_eq!(series + overflowed, 7 * 200);
        let text = text(&table, now);
        assert!(text.len() + SELF_TELEMETRY_RESERVE <= max, "{}", text.len());
        assert!(text.contains(r#"otel_metric_overflow="true""#));
    }

    #[test]
    fn series_past_the_cardinality_limit_go_to_the_overflow_series() {
        let now = Instant::now();
        let table = table(1 << 30, 3, now);
        let points = (0..5).map(|i| point(0, labels(&[("id", &i.to_string())])));
        assert_eq!(table.record(now, points)[0], 2);
        // Another type has its own limit.
        assert_eq!(table.record(now, [point(1, labels(&[("id", "0")]))])[1], 0);
        let text = text(&table, now);
        assert!(text.contains(
            r#"mcp_auth_requests_total{metric_type="auth_request",otel_metric_overflow="true"} 2"#
        ));
        assert!(
            text.contains(r#"mcp_auth_requests_total{id="2"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"id="3""#));
    }

    #[test]
    fn series_not_updated_expire_and_free_their_place() {
        let start = Instant::now();
        let table = table(1 << 30, 2, start);
        let flood = (0..10).map(|i| point(0, labels(&[("id", &i.to_string())])));
        assert_eq!(table.record(start, flood)[0], 8);
        // One of them is kept alive; the rest and the overflow series are not updated again.
        let half = start + Duration::from_secs(40);
        table.record(half, [point(0, labels(&[("id", "0")]))]);
        let later = start + Duration::from_secs(61);
        assert_eq!(
            table.record(later, [point(0, labels(&[("id", "new")]))])[0],
            0,
            "the expired series made room"
        );
        let text = text(&table, later);
        assert!(
            text.contains(r#"mcp_auth_requests_total{id="0"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mcp_auth_requests_total{id="new"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"id="1""#), "{text}");
        assert!(!text.contains("otel_metric_overflow"), "{text}");
        let (series, bytes) = table.usage();
        assert_eq!(series, 2);
        assert_eq!(
            bytes,
            table.cost(0, &labels(&[("id", "0")])) + table.cost(0, &labels(&[("id", "new")]))
        );
        // And a scrape alone expires them too.
        let text = self::text(&table, later + Duration::from_secs(60));
        assert!(text.is_empty(), "{text}");
        assert_eq!(table.usage(), (0, 0));
    }

    #[test]
    fn values_and_durations_go_only_where_they_fit() {
        let now = Instant::now();
        let table = table(1 << 30, 10, now);
        let only_counter = Point {
            type_index: 2,
            labels: borrowed(labels(&[("id", "c")])),
            value: Some(2.5),
            seconds: None,
        };
        let only_histogram = Point {
            type_index: 2,
            labels: borrowed(labels(&[("id", "h")])),
            value: None,
            seconds: Some(0.25),
        };
        let neither = Point {
            type_index: 2,
            labels: borrowed(labels(&[("id", "n")])),
            value: None,
            seconds: None,
        };
        table.record(now, [only_counter, only_histogram, neither]);
        let text = text(&table, now);
        assert!(
            text.contains(r#"mcp_tool_executions_total{id="c"} 2.5"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"mcp_tool_executions_total{id="h"}"#),
            "{text}"
        );
        // 0.25 is in the bucket whose bound it equals.
        assert!(
            text.contains(r#"mcp_tool_execution_duration_seconds_bucket{id="h",le="0.005"} 0"#)
        );
        assert!(text.contains(r#"mcp_tool_execution_duration_seconds_bucket{id="h",le="0.25"} 1"#));
        assert!(text.contains(r#"mcp_tool_execution_duration_seconds_bucket{id="h",le="+Inf"} 1"#));
        assert!(!text.contains(r#"mcp_tool_execution_duration_seconds_count{id="c"}"#));
        assert!(!text.contains(r#"id="n""#));
        assert_eq!(table.usage().0, 2);
    }
}
