//! A strict reader of the Prometheus text exposition format (version 0.0.4), for tests: it
//! panics on anything a Prometheus server would not take, and gives every series by its exact
//! name and labels.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};

/// One family: its type, help text and samples, keyed by sample name and sorted labels.
#[derive(Debug, Default)]
pub struct Family {
    pub kind: String,
    pub help: String,
}

#[derive(Debug, Default)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
    /// `name{a="1",b="2"}` (labels sorted) → value.
    pub samples: BTreeMap<String, f64>,
}

impl Exposition {
    /// The value of a series, `labels` in any order.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(&series_key(name, labels)).copied()
    }

    /// Every series of a sample name, as (sorted labels, value).
    pub fn series(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|(key, _)| key.split('{').next() == Some(name))
            .map(|(key, value)| (labels_of(key), *value))
            .collect()
    }

    /// The bucket counts of one histogram series, by `le`.
    pub fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(String, f64)> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut buckets: Vec<(String, f64)> = self
            .series(&format!("{name}_bucket"))
            .into_iter()
            .filter_map(|(mut labels, value)| {
                let le = labels.remove("le")?;
                (labels == wanted).then_some((le, value))
            })
            .collect();
        buckets.sort_by(|a, b| parse_value(&a.0).total_cmp(&parse_value(&b.0)));
        buckets
    }
}

pub fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    let sorted: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let inner: Vec<String> = sorted
        .iter()
        .map(|(k, v)| format!("{k}={}", escape(v)))
        .collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn escape(value: &str) -> String {
    format!(
        "\"{}\"",
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

fn labels_of(key: &str) -> BTreeMap<String, String> {
    let inner = &key[key.find('{').unwrap() + 1..key.len() - 1];
    let text = format!("{inner}}}");
    let (labels, rest) = parse_labels(&text).unwrap();
    assert!(rest.is_empty());
    labels.into_iter().collect()
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

fn parse_value(text: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        other => other
            .parse()
            .unwrap_or_else(|_| panic!("{other:?} is not a sample value")),
    }
}

type Labels = Vec<(String, String)>;

/// Reads `a="1",b="2"}` up to and with the closing brace; returns the labels and what follows.
fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {name} value is not quoted"));
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            if escaped {
                value.push(match c {
                    'n' => '\n',
                    '\\' => '\\',
                    '"' => '"',
                    other => return Err(format!("invalid escape \\{other}")),
                });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(eq + 1 + i + 1);
                break;
            } else if c == '\n' {
                return Err("raw newline in a label value".into());
            } else {
                value.push(c);
            }
        }
        let end = end.ok_or("unterminated label value")?;
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("label {name} twice"));
        }
        labels.push((name.to_owned(), value));
        rest = &rest[end..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels not separated by ,".into());
        }
    }
}

/// Reads an exposition; panics with the line on the first thing that is not valid.
pub fn parse(text: &str) -> Exposition {
    let mut exposition = Exposition::default();
    let mut current: Option<String> = None;
    let mut finished: HashSet<String> = HashSet::new();
    let mut typed: HashMap<String, String> = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let fail = |why: &str| -> ! { invalid(number, line, why) };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), help) => {
                    if !is_metric_name(name) {
                        fail("invalid metric name in HELP");
                    }
                    exposition.families.entry(name.to_owned()).or_default().help =
                        help.unwrap_or("").to_owned();
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !is_metric_name(name) {
                        fail("invalid metric name in TYPE");
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        fail("unknown type");
                    }
                    if typed.insert(name.to_owned(), kind.to_owned()).is_some() {
                        fail("second TYPE line for a family");
                    }
                    if finished.contains(name) || current.as_deref() == Some(name) {
                        fail("TYPE after the family's samples");
                    }
                    exposition.families.entry(name.to_owned()).or_default().kind = kind.to_owned();
                }
                _ => {}
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| fail("sample without value"));
        let name = &line[..name_end];
        if !is_metric_name(name) {
            fail("invalid metric name");
        }
        let (labels, rest) = if let Some(after) = line[name_end..].strip_prefix('{') {
            parse_labels(after).unwrap_or_else(|e| fail(&e))
        } else {
            (Vec::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = fields.next().unwrap_or_else(|| fail("no value"));
        let value = parse_value(value);
        if let Some(timestamp) = fields.next() {
            timestamp
                .parse::<i64>()
                .unwrap_or_else(|_| fail("invalid timestamp"));
        }
        if fields.next().is_some() {
            fail("trailing text");
        }
        // The family a sample belongs to: histograms' _bucket/_sum/_count, counters' own name.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                matches!(
                    typed.get(base).map(String::as_str),
                    Some("histogram" | "summary")
                )
                .then(|| base.to_owned())
            })
            .unwrap_or_else(|| name.to_owned());
        if typed.get(&family).map(String::as_str) == Some("histogram")
            && name.ends_with("_bucket")
            && !labels.iter().any(|(n, _)| n == "le")
        {
            fail("histogram bucket without le");
        }
        if current.as_deref() != Some(family.as_str()) {
            if finished.contains(&family) {
                fail("family's samples are not together");
            }
            if let Some(previous) = current.replace(family.clone()) {
                finished.insert(previous);
            }
        }
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let key = series_key(name, &labels);
        if exposition.samples.insert(key, value).is_some() {
            fail("the same series twice");
        }
    }
    check_histograms(&exposition);
    exposition
}

fn invalid(number: usize, line: &str, why: &str) -> ! {
    panic!("line {}: {why}: {line:?}", number + 1)
}

/// Buckets are cumulative and the `+Inf` bucket equals `_count`.
fn check_histograms(exposition: &Exposition) {
    for (name, family) in &exposition.families {
        if family.kind != "histogram" {
            continue;
        }
        // Every series' buckets, gathered in one pass (a scrape may have thousands of series).
        let mut by_series: HashMap<BTreeMap<String, String>, Vec<(String, f64)>> = HashMap::new();
        for (mut labels, value) in exposition.series(&format!("{name}_bucket")) {
            let le = labels.remove("le").unwrap();
            by_series.entry(labels).or_default().push((le, value));
        }
        for (labels, count) in exposition.series(&format!("{name}_count")) {
            let mut buckets = by_series.remove(&labels).unwrap_or_default();
            buckets.sort_by(|a, b| parse_value(&a.0).total_cmp(&parse_value(&b.0)));
            assert!(!buckets.is_empty(), "{name}{labels:?} has no buckets");
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{name}{labels:?} buckets are not cumulative: {buckets:?}"
            );
            let last = buckets.last().unwrap();
            assert_eq!(last.0, "+Inf", "{name}{labels:?} has no +Inf bucket");
            assert_eq!(last.1, count, "{name}{labels:?}: +Inf bucket is not _count");
            let labels: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert!(
                exposition
                    .samples
                    .contains_key(&series_key(&format!("{name}_sum"), &labels)),
                "{name}{labels:?} has no _sum"
            );
        }
    }
}
