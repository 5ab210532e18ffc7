//! Per-entry options: the TTL tier and the tags.

use std::{sync::Arc, time::Duration};

use serde::Deserialize;

/// A named time-to-live, resolved against the cache's [`TtlTiers`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::cache::{Ttl, TtlTiers};
///
/// let tiers = TtlTiers::default();
/// assert_eq!(tiers.resolve(Ttl::Short), Duration::from_secs(60));
/// assert_eq!(tiers.resolve(Ttl::Custom(Duration::from_secs(7))), Duration::from_secs(7));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ttl {
    /// The short tier (by default 60 s).
    Short,
    /// The default tier (by default 5 min).
    #[default]
    Default,
    /// The long tier (by default 1 h).
    Long,
    /// The "permanent" tier (by default 1 day).
    Permanent,
    /// An explicit duration (at least 1 ms and at most [`TtlTiers::MAX`] are used).
    #[serde(with = "millis")]
    Custom(Duration),
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// The durations behind the [`Ttl`] tiers, with the origin's defaults. Deserializable from
/// TOML with fields in seconds (`short_secs`, `default_secs`, `long_secs`,
/// `permanent_secs`).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::cache::{Ttl, TtlTiers};
///
/// let tiers = TtlTiers::default().long(Duration::from_secs(7200));
/// assert_eq!(tiers.resolve(Ttl::Long), Duration::from_secs(7200));
/// assert_eq!(tiers.resolve(Ttl::Permanent), Duration::from_secs(86_400));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct TtlTiers {
    short_secs: u64,
    default_secs: u64,
    long_secs: u64,
    permanent_secs: u64,
}

impl Default for TtlTiers {
    fn default() -> Self {
        Self {
            short_secs: 60,
            default_secs: 300,
            long_secs: 3_600,
            permanent_secs: 86_400,
        }
    }
}

impl TtlTiers {
    /// The longest time-to-live any entry gets (10 years): every backend clamps to it
    /// alike, so `Ttl::Custom(Duration::MAX)` means the same in memory and in Redis
    /// (which rejects an expiry past its clock's range).
    pub const MAX: Duration = Duration::from_secs(10 * 365 * 86_400);

    /// The short tier. By default, 60 s.
    #[must_use]
    pub fn short(mut self, ttl: Duration) -> Self {
        self.short_secs = ttl.as_secs().max(1);
        self
    }

    /// The default tier. By default, 5 min.
    #[must_use]
    pub fn default_tier(mut self, ttl: Duration) -> Self {
        self.default_secs = ttl.as_secs().max(1);
        self
    }

    /// The long tier. By default, 1 h.
    #[must_use]
    pub fn long(mut self, ttl: Duration) -> Self {
        self.long_secs = ttl.as_secs().max(1);
        self
    }

    /// The "permanent" tier. By default, 1 day.
    #[must_use]
    pub fn permanent(mut self, ttl: Duration) -> Self {
        self.permanent_secs = ttl.as_secs().max(1);
        self
    }

    /// The duration of a tier, between 1 ms and [`MAX`](Self::MAX).
    pub fn resolve(&self, ttl: Ttl) -> Duration {
        let d = match ttl {
            Ttl::Short => Duration::from_secs(self.short_secs),
            Ttl::Default => Duration::from_secs(self.default_secs),
            Ttl::Long => Duration::from_secs(self.long_secs),
            Ttl::Permanent => Duration::from_secs(self.permanent_secs),
            Ttl::Custom(d) => d,
        };
        d.clamp(Duration::from_millis(1), Self::MAX)
    }
}

/// Options of one entry: its TTL tier and its tags.
///
/// Tags are scoped like keys: a tag written through a tenant's handle
/// ([`Cache::for_tenant`](super::Cache::for_tenant)) is that tenant's tag.
///
/// # Example
///
/// ```
/// use tower_rampart::cache::{CacheOptions, Ttl};
///
/// let opts = CacheOptions::new().ttl(Ttl::Long).tag("users").tag("user:7");
/// assert_eq!(opts.tags().len(), 2);
/// assert_eq!(opts.ttl_tier(), Ttl::Long);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheOptions {
    ttl: Ttl,
    tags: Vec<Arc<str>>,
    stale: Duration,
}

impl CacheOptions {
    /// The default tier, no tags.
    pub fn new() -> Self {
        Self::default()
    }

    /// The TTL tier. By default, [`Ttl::Default`].
    #[must_use]
    pub fn ttl(mut self, ttl: Ttl) -> Self {
        self.ttl = ttl;
        self
    }

    /// Serves a value past its TTL for up to `window` more while it is refreshed: in
    /// [`Cache::get_or_load`](super::Cache::get_or_load), the first caller to find the
    /// value stale runs the loader (one refresh per key, single-flight) and every other
    /// caller meanwhile gets the stale value at once; if the refresh fails, its caller
    /// gets the stale value too. Past the TTL plus `window` the entry is gone (the hard
    /// bound on staleness). Staleness is judged by the wall clock, so it holds across
    /// instances and tiers. By default, zero: no stale value is ever served.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::cache::{CacheOptions, Ttl};
    ///
    /// let opts = CacheOptions::new()
    ///     .ttl(Ttl::Short)
    ///     .stale_while_revalidate(Duration::from_secs(30));
    /// assert_eq!(opts.stale_window(), Duration::from_secs(30));
    /// ```
    #[must_use]
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale = window;
        self
    }

    /// The stale-while-revalidate window.
    pub fn stale_window(&self) -> Duration {
        self.stale
    }

    /// Adds a tag. By default, an entry has no tag.
    #[must_use]
    pub fn tag(mut self, tag: impl AsRef<str>) -> Self {
        let tag: Arc<str> = tag.as_ref().into();
        if !self.tags.contains(&tag) {
            self.tags.push(tag);
        }
        self
    }

    /// Adds several tags.
    #[must_use]
    pub fn with_tags<I>(mut self, tags: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        for t in tags {
            self = self.tag(t);
        }
        self
    }

    /// The TTL tier.
    pub fn ttl_tier(&self) -> Ttl {
        self.ttl
    }

    /// The tags.
    pub fn tags(&self) -> &[Arc<str>] {
        &self.tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_resolve_and_deserialize() {
        let t: TtlTiers = serde_json::from_str(r#"{"short_secs": 5}"#).unwrap();
        assert_eq!(t.resolve(Ttl::Short), Duration::from_secs(5));
        assert_eq!(t.resolve(Ttl::Default), Duration::from_secs(300));
        let t = t
            .short(Duration::ZERO)
            .default_tier(Duration::from_secs(9))
            .permanent(Duration::from_secs(10));
        assert_eq!(t.resolve(Ttl::Short), Duration::from_secs(1));
        assert_eq!(t.resolve(Ttl::Default), Duration::from_secs(9));
        assert_eq!(t.resolve(Ttl::Permanent), Duration::from_secs(10));
        assert_eq!(
            t.resolve(Ttl::Custom(Duration::ZERO)),
            Duration::from_millis(1)
        );
        assert_eq!(t.resolve(Ttl::Custom(Duration::MAX)), TtlTiers::MAX);
        let big = TtlTiers::default().permanent(Duration::MAX);
        assert_eq!(big.resolve(Ttl::Permanent), TtlTiers::MAX);
        let ttl: Ttl = serde_json::from_str(r#"{"custom": 1500}"#).unwrap();
        assert_eq!(ttl, Ttl::Custom(Duration::from_millis(1500)));
        let ttl: Ttl = serde_json::from_str(r#""long""#).unwrap();
        assert_eq!(ttl, Ttl::Long);
    }

    #[test]
    fn tags_are_deduplicated() {
        let o = CacheOptions::new().with_tags(["a", "b", "a"]);
        assert_eq!(o.tags().len(), 2);
        assert_eq!(o.ttl_tier(), Ttl::Default);
    }
}
