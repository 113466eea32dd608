//! Config values the OpenTelemetry exporters share, read the way the environment gives them.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The histogram bucket bounds the contract names: 5 ms to 5 minutes, in seconds.
pub const DEFAULT_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Most histogram bucket bounds: classic histograms have tens.
pub const MAX_BUCKETS: usize = 1000;

/// Histogram bucket upper bounds in seconds. Reads a list of numbers, or text of comma-separated
/// numbers as `HISTOGRAM_BUCKET_BOUNDARIES` gives it (`0.01,0.1,1`); null means the default.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets(pub Vec<f64>);

impl Default for Buckets {
    fn default() -> Self {
        Buckets(DEFAULT_BUCKETS.to_vec())
    }
}

impl Buckets {
    /// Problems with the bounds, for `validate`, each starting with `key`.
    pub fn problems(&self, key: &str) -> Vec<String> {
        let bounds = &self.0;
        if bounds.is_empty() {
            return vec![format!("{key}: needs at least one bound")];
        }
        if bounds.iter().any(|b| !b.is_finite() || *b < 0.0) {
            return vec![format!("{key}: bounds must be finite and not negative")];
        }
        if bounds.windows(2).any(|pair| pair[0] >= pair[1]) {
            return vec![format!("{key}: bounds must be strictly increasing")];
        }
        // Every histogram series holds a count per bucket, and prints a line per bucket.
        if bounds.len() > MAX_BUCKETS {
            return vec![format!("{key}: at most {MAX_BUCKETS} bounds")];
        }
        Vec::new()
    }
}

impl Serialize for Buckets {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Buckets {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BucketsVisitor;

        impl<'de> Visitor<'de> for BucketsVisitor {
            type Value = Buckets;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of bucket bounds in seconds, or text such as \"0.01,0.1,1\"")
            }

            fn visit_unit<E: de::Error>(self) -> Result<Buckets, E> {
                Ok(Buckets::default())
            }

            fn visit_none<E: de::Error>(self) -> Result<Buckets, E> {
                Ok(Buckets::default())
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Buckets, E> {
                Ok(Buckets(vec![value]))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Buckets, E> {
                Ok(Buckets(vec![value as f64]))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Buckets, E> {
                Ok(Buckets(vec![value as f64]))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Buckets, E> {
                let text = text.trim().trim_start_matches('[').trim_end_matches(']');
                if text.trim().is_empty() {
                    return Ok(Buckets::default());
                }
                text.split(',')
                    .map(|part| {
                        part.trim().parse::<f64>().map_err(|_| {
                            E::custom(format!("{:?} is not a number of seconds", part.trim()))
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map(Buckets)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Buckets, A::Error> {
                let mut bounds = Vec::new();
                while let Some(bound) = seq.next_element::<f64>()? {
                    bounds.push(bound);
                }
                Ok(Buckets(bounds))
            }
        }

        deserializer.deserialize_any(BucketsVisitor)
    }
}

/// A duration given as milliseconds (a number, as the `*_MS` variables give it) or as text
/// such as `30s` or `500ms`; null means none.
pub mod millis_or_text {
    use super::*;

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_str(
                &humantime_serde::re::humantime::format_duration(*duration).to_string(),
            ),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        struct MillisVisitor;

        impl<'de> Visitor<'de> for MillisVisitor {
            type Value = Option<Duration>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("milliseconds, or a duration such as \"30s\"")
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(Some(Duration::from_millis(value)))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                u64::try_from(value)
                    .map(|ms| Some(Duration::from_millis(ms)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                let text = text.trim();
                if text.is_empty() {
                    return Ok(None);
                }
                if let Ok(ms) = text.parse::<u64>() {
                    return Ok(Some(Duration::from_millis(ms)));
                }
                humantime_serde::re::humantime::parse_duration(text)
                    .map(Some)
                    .map_err(|e| E::custom(format!("{text:?}: {e}")))
            }
        }

        deserializer.deserialize_any(MillisVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_metrics_plugin::serde_yaml;

    #[derive(Debug, Deserialize)]
    struct Sample {
        #[serde(default)]
        buckets: Buckets,
        #[serde(default, with = "millis_or_text")]
        interval: Option<Duration>,
    }

    fn read(yaml: &str) -> Sample {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn buckets_from_lists_text_or_nothing() {
        assert_eq!(read("buckets: [0.1, 1, 10]").buckets.0, [0.1, 1.0, 10.0]);
        assert_eq!(read("buckets: '0.1, 1,10'").buckets.0, [0.1, 1.0, 10.0]);
        assert_eq!(read("buckets: ~").buckets, Buckets::default());
        assert_eq!(read("{}").buckets, Buckets::default());
        assert!(serde_yaml::from_str::<Sample>("buckets: 'a,b'").is_err());
        assert!(!Buckets(vec![1.0, 0.5]).problems("b").is_empty());
        assert!(Buckets::default().problems("b").is_empty());
        let most = Buckets((0..MAX_BUCKETS).map(|b| b as f64).collect());
        assert!(most.problems("b").is_empty());
        let more = Buckets((0..=MAX_BUCKETS).map(|b| b as f64).collect());
        assert_eq!(more.problems("b"), ["b: at most 1000 bounds"]);
    }

    #[test]
    fn durations_from_millis_or_text() {
        assert_eq!(
            read("interval: 1500").interval,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            read("interval: '250'").interval,
            Some(Duration::from_millis(250))
        );
        assert_eq!(read("interval: 2s").interval, Some(Duration::from_secs(2)));
        assert_eq!(read("interval: ~").interval, None);
    }
}
