//! The ranges config numbers are held to. Every count, size and duration a config takes has one,
//! generous enough that no sane deployment meets it: past it a value would exhaust memory (a queue
//! of 10^18 metrics), overflow arithmetic (a duration added to an `Instant` or a date past what
//! those hold panics, in a request or in a background task that then stops silently) or mean
//! nothing (a zero interval). Each range is said the way the config writes its values.

use std::ops::RangeInclusive;
use std::time::Duration;

pub const MILLISECOND: Duration = Duration::from_millis(1);
pub const SECOND: Duration = Duration::from_secs(1);
pub const MINUTE: Duration = Duration::from_secs(60);
pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// Most metrics any one buffer (a queue, a batch) may be sized for: at a few hundred bytes a
/// metric, gigabytes of memory once full.
pub const MAX_METRICS_HELD: usize = 10_000_000;

/// A config value with a range, said as the config writes it.
pub trait Bound: PartialOrd + Copy {
    fn show(self) -> String;
}

macro_rules! integer_bound {
    ($($t:ty),*) => {$(
        impl Bound for $t {
            fn show(self) -> String {
                self.to_string()
            }
        }
    )*};
}

integer_bound!(u16, u32, u64, usize);

impl Bound for Duration {
    /// In the largest unit that says it exactly (`1ms`, `30s`, `1h`, `30d`), as humantime reads it.
    fn show(self) -> String {
        if self.is_zero() {
            return "0".into();
        }
        let units = [(DAY, "d"), (HOUR, "h"), (MINUTE, "m"), (SECOND, "s")];
        for (unit, name) in units {
            if self.as_nanos().is_multiple_of(unit.as_nanos()) {
                return format!("{}{name}", self.as_nanos() / unit.as_nanos());
            }
        }
        if self.as_nanos().is_multiple_of(MILLISECOND.as_nanos()) {
            return format!("{}ms", self.as_millis());
        }
        format!("{}ns", self.as_nanos())
    }
}

/// `"{key}: must be from {low} to {high}"` if `value` is outside `range`; for `validate`.
pub fn out_of_range<T: Bound>(key: &str, value: T, range: RangeInclusive<T>) -> Option<String> {
    (!range.contains(&value)).then(|| {
        format!(
            "{key}: must be from {} to {}",
            range.start().show(),
            range.end().show()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_said_as_configs_write_them() {
        let said = |range: RangeInclusive<Duration>| {
            out_of_range("k", Duration::MAX, range).unwrap_or_default()
        };
        assert_eq!(said(MILLISECOND..=HOUR), "k: must be from 1ms to 1h");
        assert_eq!(said(Duration::ZERO..=MINUTE), "k: must be from 0 to 1m");
        assert_eq!(said(SECOND..=30 * DAY), "k: must be from 1s to 30d");
        assert_eq!(
            said(Duration::from_millis(1500)..=DAY),
            "k: must be from 1500ms to 1d"
        );
        assert_eq!(
            out_of_range("n", 0usize, 1..=100_000),
            Some("n: must be from 1 to 100000".into())
        );
    }

    #[test]
    fn the_bounds_themselves_are_accepted() {
        assert_eq!(out_of_range("k", HOUR, MILLISECOND..=HOUR), None);
        assert_eq!(out_of_range("k", MILLISECOND, MILLISECOND..=HOUR), None);
        assert!(out_of_range("k", HOUR + Duration::from_nanos(1), MILLISECOND..=HOUR).is_some());
        assert!(out_of_range("k", Duration::ZERO, MILLISECOND..=HOUR).is_some());
    }
}
