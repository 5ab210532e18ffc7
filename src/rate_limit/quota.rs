//! Quotas: a count per period, with an optional burst, written with the unit in the name.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer};

use super::gcra::{MAX_TOLERANCE_US, Window};
use crate::error::ConfigError;

/// How many requests a key may make per period, and how many at once.
///
/// Units are in the constructor's name: `Quota::per_minute(5)` is five requests per
/// minute. The burst (requests allowed at once, after a quiet period) defaults to the
/// count. Also parsed from strings such as `"5/minute"` or `"10/second burst=20"`.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::rate_limit::Quota;
///
/// let q = Quota::per_minute(5);
/// assert_eq!((q.count(), q.period(), q.burst_size()), (5, Duration::from_secs(60), 5));
/// assert_eq!(Quota::per_second(10).burst(20).burst_size(), 20);
/// assert_eq!("100/hour".parse::<Quota>().unwrap(), Quota::per_hour(100));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    count: u32,
    period: Duration,
    burst: Option<u32>,
}

impl Quota {
    /// `count` requests per second.
    pub const fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` requests per minute.
    pub const fn per_minute(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` requests per hour.
    pub const fn per_hour(count: u32) -> Self {
        Self::new(count, Duration::from_secs(3600))
    }

    /// `count` requests per day.
    pub const fn per_day(count: u32) -> Self {
        Self::new(count, Duration::from_secs(86_400))
    }

    /// `count` requests per arbitrary `period`.
    pub const fn new(count: u32, period: Duration) -> Self {
        Self {
            count,
            period,
            burst: None,
        }
    }

    /// How many requests may arrive at once.
    ///
    /// By default, the count.
    #[must_use]
    pub const fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Requests per period.
    pub const fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// The burst size (the count unless set).
    pub const fn burst_size(&self) -> u32 {
        match self.burst {
            Some(b) => b,
            None => self.count,
        }
    }

    /// Checks the quota and turns it into a GCRA window.
    pub(crate) fn window(&self, policy: &str) -> Result<Window, ConfigError> {
        if self.count == 0 {
            return Err(ConfigError::new(format!(
                "rate-limit policy `{policy}`: a quota of 0 requests blocks everything; use at least 1 \
                 (e.g. Quota::per_minute(1)) or remove the policy"
            )));
        }
        if self.burst == Some(0) {
            return Err(ConfigError::new(format!(
                "rate-limit policy `{policy}`: burst 0 blocks everything; use .burst(1) or more, or \
                 leave it unset to default to the count"
            )));
        }
        let period_us = u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX);
        let interval = period_us / u64::from(self.count);
        if interval == 0 {
            return Err(ConfigError::new(format!(
                "rate-limit policy `{policy}`: {} requests per {:?} is more than one per microsecond; \
                 use a longer period or a smaller count",
                self.count, self.period
            )));
        }
        let burst = u64::from(self.burst_size());
        if burst.saturating_mul(interval) > MAX_TOLERANCE_US {
            return Err(ConfigError::new(format!(
                "rate-limit policy `{policy}`: burst {burst} over {:?} spans more than three years; \
                 use a smaller burst or a shorter period",
                self.period
            )));
        }
        Ok(Window { interval, burst })
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.period.as_secs();
        let unit = match (secs, self.period.subsec_nanos()) {
            (1, 0) => "second".to_owned(),
            (60, 0) => "minute".to_owned(),
            (3600, 0) => "hour".to_owned(),
            (86_400, 0) => "day".to_owned(),
            _ => format!("{}ms", self.period.as_millis()),
        };
        write!(f, "{}/{unit}", self.count)?;
        if let Some(b) = self.burst {
            write!(f, " burst={b}")?;
        }
        Ok(())
    }
}

impl FromStr for Quota {
    type Err = ConfigError;

    /// Parses `COUNT/UNIT` with an optional ` burst=N`; the unit is `second`, `minute`,
    /// `hour` or `day` (also `s`, `sec`, `m`, `min`, `h`, `d` and plurals).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            ConfigError::new(format!(
                "cannot read the rate {s:?}: write COUNT/UNIT with UNIT one of second, minute, \
                 hour, day, optionally followed by ` burst=N` (e.g. \"5/minute\", \"10/second burst=20\")"
            ))
        };
        let mut parts = s.split_whitespace();
        let rate = parts.next().ok_or_else(bad)?;
        let (count, unit) = rate.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let mut quota = match unit.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" | "seconds" => Self::per_second(count),
            "m" | "min" | "minute" | "minutes" => Self::per_minute(count),
            "h" | "hour" | "hours" => Self::per_hour(count),
            "d" | "day" | "days" => Self::per_day(count),
            _ => return Err(bad()),
        };
        for extra in parts {
            let burst = extra.strip_prefix("burst=").ok_or_else(bad)?;
            quota = quota.burst(burst.parse().map_err(|_| bad())?);
        }
        Ok(quota)
    }
}

impl<'de> Deserialize<'de> for Quota {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_units_and_burst() {
        assert_eq!("5/minute".parse::<Quota>().unwrap(), Quota::per_minute(5));
        assert_eq!("5/min".parse::<Quota>().unwrap(), Quota::per_minute(5));
        assert_eq!("2/d".parse::<Quota>().unwrap(), Quota::per_day(2));
        assert_eq!(
            "10/second burst=20".parse::<Quota>().unwrap(),
            Quota::per_second(10).burst(20)
        );
        for bad in [
            "",
            "5",
            "x/minute",
            "5/fortnight",
            "5/minute burst",
            "5/minute b=2",
        ] {
            let err = bad.parse::<Quota>().unwrap_err();
            assert!(err.message().contains("COUNT/UNIT"), "{bad}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for q in [
            Quota::per_second(3),
            Quota::per_minute(5).burst(9),
            Quota::per_hour(100),
            Quota::per_day(1),
        ] {
            assert_eq!(q.to_string().parse::<Quota>().unwrap(), q);
        }
        assert_eq!(
            Quota::new(1, Duration::from_millis(250)).to_string(),
            "1/250ms"
        );
    }

    #[test]
    fn invalid_quotas_say_how_to_fix() {
        let e = Quota::per_minute(0).window("p").unwrap_err();
        assert!(e.message().contains("at least 1"), "{e}");
        let e = Quota::per_minute(5).burst(0).window("p").unwrap_err();
        assert!(e.message().contains(".burst(1)"), "{e}");
        let e = Quota::new(10, Duration::from_nanos(1))
            .window("p")
            .unwrap_err();
        assert!(e.message().contains("longer period"), "{e}");
        let e = Quota::per_day(1).burst(u32::MAX).window("p").unwrap_err();
        assert!(e.message().contains("smaller burst"), "{e}");
        let w = Quota::per_hour(100).window("p").unwrap();
        assert_eq!(w.interval, 36_000_000);
        assert_eq!(w.burst, 100);
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<Quota>();
        }

        #[test]
        fn valid_rates_parse(n in 1u32..100_000, unit in prop::sample::select(vec!["second", "minute", "hour", "day"])) {
            let q: Quota = format!("{n}/{unit}").parse().unwrap();
            prop_assert_eq!(q.count(), n);
            prop_assert_eq!(q.burst_size(), n);
        }
    }
}
