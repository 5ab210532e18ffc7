//! Storage backends: in-process (moka), Redis (standalone or Cluster) and two-tier.
//!
//! A backend never returns an error to the cache: a failing operation is logged, counted
//! in `rampart_cache_backend_errors_total{tier}` and answered as a miss (or a skipped
//! write).

// Some fields and methods serve only the Redis and two-tier backends.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;

pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(feature = "redis")]
pub(crate) mod two_tier;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where one entry lives.
#[derive(Debug, Clone)]
pub(crate) struct Loc {
    /// The full entry key (with its Redis Cluster hash tag).
    pub(crate) key: String,
    /// Prefix of the Redis tag-version keys in the entry's slot: `{base}:g:`.
    pub(crate) tag_prefix: Arc<str>,
    /// Prefix of in-process tag ids, independent of the Redis bucket.
    pub(crate) ns: Arc<str>,
}

/// A namespace's tag-key prefixes, for invalidation.
#[derive(Debug, Clone)]
pub(crate) struct Namespace {
    /// One Redis tag-key prefix per bucket.
    pub(crate) tag_prefixes: Vec<Arc<str>>,
    /// Prefix of in-process tag ids.
    pub(crate) ns: Arc<str>,
}

/// What a read found.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fetched {
    /// The validated body (flag byte + data), `None` on a miss.
    pub(crate) body: Option<Bytes>,
    /// Remaining time to live of the entry, when known.
    pub(crate) ttl: Option<Duration>,
    /// The entry's tag names (unprefixed), for filling an upper tier.
    pub(crate) tags: Vec<String>,
    /// Current versions of the requested tags (created when missing); empty when the
    /// backend failed.
    pub(crate) versions: Vec<u64>,
    /// The backend's invalidation epoch before the read (two-tier L1 fill guard).
    pub(crate) epoch: u64,
}

/// One write.
#[derive(Debug)]
pub(crate) struct Put<'a> {
    pub(crate) loc: &'a Loc,
    /// Tag names with the versions read before the value was computed (`None`: current
    /// version, created when missing).
    pub(crate) tags: Vec<(&'a str, Option<u64>)>,
    pub(crate) body: Bytes,
    pub(crate) ttl: Duration,
    /// Epoch returned by the read that preceded this write.
    pub(crate) epoch: Option<u64>,
}

/// The operations every backend implements.
pub(crate) trait Store: Send + Sync + fmt::Debug + 'static {
    fn get<'a>(
        &'a self,
        loc: &'a Loc,
        want: &'a [&'a str],
        ttl: Duration,
    ) -> BoxFuture<'a, Fetched>;
    fn put<'a>(&'a self, put: Put<'a>) -> BoxFuture<'a, bool>;
    fn delete<'a>(&'a self, locs: &'a [Loc]) -> BoxFuture<'a, ()>;
    fn invalidate<'a>(&'a self, ns: &'a Namespace, tags: &'a [String]) -> BoxFuture<'a, ()>;
    /// How many Redis Cluster buckets a namespace spreads over (1 when not clustered).
    fn buckets(&self) -> u16 {
        1
    }
}

/// A configured storage backend for [`Cache`](super::Cache).
///
/// Build one from [`MemoryBackend`](super::MemoryBackend), `RedisBackend` or
/// `TwoTierBackend` (the latter two with the `redis` feature) with `.into()`.
#[derive(Clone)]
pub struct Backend {
    pub(crate) store: Arc<dyn Store>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Backend").field(&self.store).finish()
    }
}

/// Increments a counter labelled by tier, without allocating (static key parts).
pub(crate) fn count(name: &'static str, tier: &'static str) {
    use metrics::{Key, Label, Level, Metadata};
    static MEMORY: [Label; 1] = [Label::from_static_parts("tier", "memory")];
    static L1: [Label; 1] = [Label::from_static_parts("tier", "l1")];
    static REDIS: [Label; 1] = [Label::from_static_parts("tier", "redis")];
    static LOADER: [Label; 1] = [Label::from_static_parts("tier", "loader")];
    static CACHE: [Label; 1] = [Label::from_static_parts("tier", "cache")];
    static META: Metadata<'static> =
        Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
    let labels: &'static [Label] = match tier {
        "memory" => &MEMORY,
        "l1" => &L1,
        "redis" => &REDIS,
        "loader" => &LOADER,
        _ => &CACHE,
    };
    let key = Key::from_static_parts(name, labels);
    metrics::with_recorder(|r| r.register_counter(&key, &META)).increment(1);
}

pub(crate) fn fresh_version() -> u64 {
    // Never 0, so a version is never confused with a missing one in logs.
    fastrand::u64(1..)
}
