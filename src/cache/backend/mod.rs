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

/// An in-process tier a read can try first, with nothing but the entry key: no `Loc`,
/// no boxed future (the hot path of an L1 hit).
pub(crate) struct Local<'a> {
    pub(crate) memory: &'a memory::Memory,
    /// Whether a miss there is a miss of the whole backend (no other tier behind it).
    pub(crate) authoritative: bool,
}

/// The operations every backend implements.
pub(crate) trait Store: Send + Sync + fmt::Debug + 'static {
    fn get<'a>(
        &'a self,
        loc: &'a Loc,
        want: &'a [&'a str],
        ttl: Duration,
    ) -> BoxFuture<'a, Fetched>;
    /// The in-process tier to try before [`get`](Self::get), if one is usable now.
    fn local(&self) -> Option<Local<'_>> {
        None
    }
    /// [`get`](Self::get) after a miss in [`local`](Self::local) (which is not retried).
    fn get_after_local_miss<'a>(
        &'a self,
        loc: &'a Loc,
        want: &'a [&'a str],
        ttl: Duration,
    ) -> BoxFuture<'a, Fetched> {
        self.get(loc, want, ttl)
    }
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

/// The counters of one tier. Their keys (with the key hash `metrics` uses) are computed
/// at compile time, so counting costs the recorder's lookup only.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) tier: &'static str,
    pub(crate) hits: metrics::Key,
    pub(crate) misses: metrics::Key,
    pub(crate) invalidations: metrics::Key,
    pub(crate) backend_errors: metrics::Key,
    pub(crate) loads: metrics::Key,
    pub(crate) load_errors: metrics::Key,
    pub(crate) corrupt: metrics::Key,
}

macro_rules! counters {
    ($tier:literal) => {{
        static LABELS: [metrics::Label; 1] = [metrics::Label::from_static_parts("tier", $tier)];
        const fn key(name: &'static str) -> metrics::Key {
            metrics::Key::from_static_parts(name, &LABELS)
        }
        Counters {
            tier: $tier,
            hits: key("rampart_cache_hits_total"),
            misses: key("rampart_cache_misses_total"),
            invalidations: key("rampart_cache_invalidations_total"),
            backend_errors: key("rampart_cache_backend_errors_total"),
            loads: key("rampart_cache_loads_total"),
            load_errors: key("rampart_cache_load_errors_total"),
            corrupt: key("rampart_cache_corrupt_total"),
        }
    }};
}

/// Counters labelled `tier="memory"` (the standalone in-process backend).
pub(crate) static MEMORY: Counters = counters!("memory");
/// Counters labelled `tier="l1"` (the in-process tier of the two-tier backend).
pub(crate) static L1: Counters = counters!("l1");
/// Counters labelled `tier="redis"`.
pub(crate) static REDIS: Counters = counters!("redis");
/// Counters labelled `tier="loader"` (loads run by `get_or_load`).
pub(crate) static LOADER: Counters = counters!("loader");
/// Counters labelled `tier="cache"` (the cache handle itself, e.g. corrupt entries).
pub(crate) static CACHE: Counters = counters!("cache");

/// Increments a counter by one (no allocation, no hashing of the key).
pub(crate) fn count(key: &'static metrics::Key) {
    static META: metrics::Metadata<'static> =
        metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
    metrics::with_recorder(|r| r.register_counter(key, &META)).increment(1);
}

pub(crate) fn fresh_version() -> u64 {
    // Never 0, so a version is never confused with a missing one in logs.
    fastrand::u64(1..)
}
