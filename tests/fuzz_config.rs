//! The config loader against arbitrary text: every input is either a checked config or a list of
//! errors, never a panic. Bounded to a few thousand cases so it runs with every `cargo test`.

use proptest::prelude::*;

/// Text shaped like `pipelines.yaml`: known sections and component types, keys and values of
/// the wrong kinds, placeholders, and plain noise.
fn configs() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
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
