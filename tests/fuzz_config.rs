//! The config loader against arbitrary text: every input is either a checked config or a list of
//! errors, never a panic; and against any number for every ranged key: taken exactly when it is
//! within the key's range. Bounded to a few thousand cases so it runs with every `cargo test`.

use proptest::prelude::*;

/// Text shaped like `pipelines.yaml`: known sections and component types, keys and values of
/// the wrong kinds, placeholders, and plain noise.
fn configs() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("18446744073709551615s".to_owned()),
        Just("0s".to_owned()),
        Just("1h".to_owned()),
        Just("10MiB".to_owned()),
        Just("true".to_owned()),
        Just("~".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("${env:NOPE}".to_owned()),
        Just("${env:NOPE:-5}".to_owned()),
        "[a-z_/]{0,10}",
    ];
    let key = "(port|host|path|timeout|queue_size|sending_queue|retry_on_failure|retention_days|\
               linger|admission_wait|watch_interval|max_future_skew|refresh_interval|\
               retention_interval|num_consumers|max_concurrent_requests|export_interval|\
               receivers|processors|exporters|pipelines|include|[a-z_]{1,8})";
    let entry = (key, scalar).prop_map(|(k, v)| format!("{k}: {v}"));
    let component = (
        "(http|auth|rate_limit|validate|enrich|batch|filter|sqlite|prometheus|otlp|stdout|nope)(/[a-z]{1,4})?",
        prop::collection::vec(entry, 0..4),
    )
        .prop_map(|(id, entries)| format!("  {id}: {{{}}}", entries.join(", ")));
    let section = (
        "(receivers|processors|exporters|service|extra)",
        prop::collection::vec(component, 0..3),
    )
        .prop_map(|(name, components)| format!("{name}:\n{}", components.join("\n")));
    let pipeline = "service:\n  pipelines:\n    m: {receivers: [http], processors: [batch], exporters: [sqlite]}";
    prop_oneof![
        prop::collection::vec(section.clone(), 0..5).prop_map(|s| s.join("\n")),
        prop::collection::vec(section, 0..4)
            .prop_map(move |s| format!("{}\n{pipeline}", s.join("\n"))),
        "\\PC{0,200}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn loading_any_config_never_panics(text in configs()) {
        let _ = mcp_metrics::parse(&text, "fuzz", &|_| None);
        let _ = mcp_metrics::config::effective(&text, "fuzz", &|_| None);
    }
}

/// Every ranged number: where it is, its key, its range, what else the case needs (a number
/// bounded by another), and whether it is a duration (then the range is in milliseconds).
#[rustfmt::skip]
const RANGES: &[(&str, &str, u64, u64, &str, bool)] = &[
    ("receivers.http", "max_request_size", 1024, 1 << 30, "", false),
    ("receivers.http", "max_metrics_per_request", 1, 1_000_000, "", false),
    ("receivers.http", "max_concurrent_requests", 1, 100_000, "", false),
    ("receivers.http", "max_connections", 1, 100_000, "", false),
    ("receivers.http", "acknowledgement_timeout", 1, 3_600_000, "", true),
    ("receivers.http", "header_read_timeout", 1, 3_600_000, "", true),
    ("receivers.http", "body_read_timeout", 1, 3_600_000, "", true),
    ("processors.auth", "refresh_interval", 1, 3_600_000, "", true),
    ("processors.validate", "max_service_length", 1, 1024, "", false),
    ("processors.validate", "max_version_length", 1, 1024, "", false),
    ("processors.validate", "max_instance_id_length", 1, 1024, "", false),
    ("processors.validate", "max_attributes", 1, 10_000, "", false),
    ("processors.validate", "max_depth", 0, 64, "", false),
    ("processors.validate", "max_attributes_bytes", 16, 16 << 20, "", false),
    ("processors.validate", "max_future_skew", 0, 365 * 86_400_000, "", true),
    ("processors.batch", "send_batch_size", 1, 10_000_000, "queue_size: 10000000", false),
    ("processors.batch", "queue_size", 1, 10_000_000, "send_batch_size: 1", false),
    ("processors.batch", "timeout", 1, 3_600_000, "", true),
    ("exporters.sqlite", "retention_interval", 1, 30 * 86_400_000, "", true),
    ("exporters.sqlite", "retention_days", 0, 36_500, "", false),
    ("exporters.prometheus", "cardinality_limit", 1, 1_000_000, "", false),
    ("exporters.prometheus", "max_scrape_size", 256 << 10, 1 << 30, "", false),
    ("exporters.prometheus", "metric_expiration", 1000, 30 * 86_400_000, "", true),
    ("exporters.prometheus", "max_concurrent_scrapes", 1, 1000, "", false),
    ("exporters.prometheus", "max_connections", 1, 100_000, "", false),
    ("exporters.otlp", "export_interval", 0, 86_400_000, "", true),
    ("exporters.otlp", "timeout", 1, 3_600_000, "", true),
    ("exporters.otlp", "max_retries", 0, 100, "", false),
    ("exporters.otlp", "cardinality_limit", 1, 1_000_000, "", false),
    ("exporters.sqlite.sending_queue", "queue_size", 1, 10_000_000, "", false),
    ("exporters.sqlite.sending_queue", "num_consumers", 1, 1000, "", false),
    ("exporters.sqlite.sending_queue", "batch_max_size", 1, 10_000_000, "", false),
    ("exporters.sqlite.sending_queue", "linger", 0, 3_600_000, "", true),
    ("exporters.sqlite.retry_on_failure", "initial_interval", 1, 3_600_000, "max_interval: 1h", true),
    ("exporters.sqlite.retry_on_failure", "max_interval", 1, 3_600_000, "initial_interval: 1ms", true),
    ("exporters.sqlite.retry_on_failure", "max_elapsed_time", 0, 30 * 86_400_000, "", true),
    ("service", "shutdown_timeout", 1, 3_600_000, "", true),
    ("service", "export_failure_threshold", 0, 30 * 86_400_000, "", true),
    ("service", "watch_interval", 1, 3_600_000, "", true),
    ("service", "admission_wait", 0, 60_000, "", true),
];

/// A config with every ranged component, `{key}: {value}` (and `extra`) set at `place`.
fn config(place: &str, setting: &str) -> String {
    let components = [
        ("receivers.http", "host: 127.0.0.1, port: 0"),
        ("processors.auth", "database: ./m.db"),
        ("processors.validate", ""),
        ("processors.batch", ""),
        ("exporters.sqlite", "path: ./m.db"),
        ("exporters.prometheus", "port: 0"),
        ("exporters.otlp", "endpoint: 'http://127.0.0.1:4318'"),
    ];
    let mut text = String::new();
    let mut section = "";
    for (at, settings) in components {
        let (this, id) = at.split_once('.').unwrap();
        if this != section {
            text += &format!("{this}:\n");
            section = this;
        }
        let mut all = Vec::new();
        if !settings.is_empty() {
            all.push(settings.to_owned());
        }
        if place == at {
            all.push(setting.to_owned());
        } else if let Some(engine) = place.strip_prefix(&format!("{at}.")) {
            all.push(format!("{engine}: {{{setting}}}"));
        }
        text += &format!("  {id}: {{{}}}\n", all.join(", "));
    }
    let service = if place == "service" {
        format!("{setting}, ")
    } else {
        String::new()
    };
    text + &format!(
        "service: {{{service}pipelines: {{m: {{receivers: [http], processors: [auth, validate, batch], \
         exporters: [sqlite, prometheus, otlp]}}}}}}\n"
    )
}

/// Values around a range's ends, and anywhere up to the largest a key can be written with.
fn value_near(low: u64, high: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(low),
        Just(high),
        Just(low.saturating_sub(1)),
        Just(high + 1),
        low..=high,
        any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// A number is taken exactly when it is within its range, however large.
    #[test]
    fn a_number_is_taken_exactly_within_its_range(
        (index, value) in (0..RANGES.len()).prop_flat_map(|i| (Just(i), value_near(RANGES[i].2, RANGES[i].3)))
    ) {
        let (place, key, low, high, extra, duration) = RANGES[index];
        let unit = if duration { "ms" } else { "" };
        let mut setting = format!("{key}: {value}{unit}");
        if !extra.is_empty() {
            setting = format!("{setting}, {extra}");
        }
        let text = config(place, &setting);
        let taken = mcp_metrics::parse(&text, "fuzz", &|_| None);
        let within = (low..=high).contains(&value);
        prop_assert_eq!(taken.is_ok(), within, "{}\n{:?}", text, taken.err().map(|e| e.to_string()));
    }
}
