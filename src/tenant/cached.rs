//! A caching store wrapper (moka): TTL, negative caching, bounded size, single-flight.

use std::{
    fmt,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use moka::{
    future::Cache,
    ops::compute::{CompResult, Op},
};
use serde::Deserialize;
use tokio::time::Instant;

use super::{
    id::TenantId,
    store::{StoreError, TenantStore},
};
use crate::error::ConfigError;

#[derive(Clone)]
struct Cached<T> {
    /// A found tenant, an unknown identifier, or the store's error (shared by clone).
    value: Result<Option<T>, StoreError>,
    /// The value of `CachedInner::loads` when this load finished.
    load: u64,
    expires_at: Instant,
}

/// Cache settings, as a TOML file describes them.
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::CacheConfig;
///
/// let c: CacheConfig = serde_json::from_str(r#"{"ttl_secs": 30}"#).unwrap();
/// assert_eq!(c.ttl_secs, 30);
/// assert_eq!(c.negative_ttl_secs, 5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Seconds a found tenant stays cached. By default, 60.
    pub ttl_secs: u64,
    /// Seconds an unknown identifier stays cached (0 disables negative caching). By
    /// default, 5.
    pub negative_ttl_secs: u64,
    /// The most identifiers cached at once. By default, 10 000.
    pub max_capacity: u64,
    /// Milliseconds a store error stays cached, so a failing store is asked at most once
    /// per identifier and period (0 disables it). By default, 2 000.
    pub error_ttl_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 60,
            negative_ttl_secs: 5,
            max_capacity: 10_000,
            error_ttl_ms: 2_000,
        }
    }
}

/// Hit and miss counts of a [`CachedStore`].
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::CacheStats;
///
/// assert_eq!(CacheStats::default().hit_ratio(), 0.0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Lookups answered from the cache (including waiters of a single-flight load).
    pub hits: u64,
    /// Lookups that called the backing store.
    pub misses: u64,
}

impl CacheStats {
    /// `hits / (hits + misses)`, 0 when nothing was looked up.
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// Wraps a [`TenantStore`] with an in-process cache (moka).
///
/// - Found tenants are cached for `ttl` (by default 60 s), unknown identifiers for the
///   shorter `negative_ttl` (by default 5 s), so a flood of made-up identifiers does not
///   reach the database more than once per identifier and `negative_ttl`.
/// - Store errors are cached for the shortest period, `error_ttl` (by default 2 s): a
///   store that is down is asked at most once per identifier and period.
/// - Bounded: at most `max_capacity` identifiers (by default 10 000), evicted by moka's
///   TinyLFU policy.
/// - Single-flight, on success and on failure: concurrent lookups of one identifier that
///   miss call the backing store once; the others wait for that result or share its error
///   (moka's per-key serialised compute), even when `error_ttl` is zero.
/// - Expiry is measured on [`tokio::time::Instant`], so tests can `pause()` and
///   `advance()` time. Clones share the cache.
///
/// Metrics (with the `metrics` facade): `rampart_tenant_cache_total{result="hit"|"miss"}`
/// gives the hit ratio; [`CachedStore::stats`] gives it in-process.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::tenant::{CachedStore, MemoryStore, TenantId, TenantStore};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = CachedStore::builder(MemoryStore::new().with("acme", 1).unwrap())
///     .ttl(Duration::from_secs(30))
///     .negative_ttl(Duration::from_secs(2))
///     .build()
///     .unwrap();
/// let acme = TenantId::parse("acme").unwrap();
/// assert_eq!(store.lookup(&acme).await.unwrap(), Some(1));
/// assert_eq!(store.lookup(&acme).await.unwrap(), Some(1));
/// assert_eq!((store.stats().misses, store.stats().hits), (1, 1));
/// # });
/// ```
pub struct CachedStore<St: TenantStore> {
    inner: Arc<CachedInner<St>>,
}

struct CachedInner<St: TenantStore> {
    store: St,
    cache: Cache<TenantId, Cached<St::Tenant>>,
    ttl: Duration,
    negative_ttl: Duration,
    error_ttl: Duration,
    /// Store loads finished so far: a waiter that saw fewer before it asked shares the
    /// answer of a load that finished while it waited.
    loads: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<St: TenantStore> Clone for CachedStore<St> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<St: TenantStore> fmt::Debug for CachedStore<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("ttl", &self.inner.ttl)
            .field("negative_ttl", &self.inner.negative_ttl)
            .field("entries", &self.inner.cache.entry_count())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Builds a [`CachedStore`].
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::{CachedStore, MemoryStore};
///
/// let err = CachedStore::builder(MemoryStore::<u8>::new())
///     .ttl(std::time::Duration::ZERO)
///     .build()
///     .unwrap_err();
/// assert!(err.to_string().contains("ttl"));
/// ```
#[must_use]
pub struct CachedStoreBuilder<St> {
    store: St,
    ttl: Duration,
    negative_ttl: Duration,
    error_ttl: Duration,
    max_capacity: u64,
}

impl<St> fmt::Debug for CachedStoreBuilder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStoreBuilder")
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("error_ttl", &self.error_ttl)
            .field("max_capacity", &self.max_capacity)
            .finish_non_exhaustive()
    }
}

impl<St: TenantStore> CachedStoreBuilder<St> {
    /// How long a found tenant stays cached. By default, 60 seconds.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long an unknown identifier stays cached; zero disables negative caching. By
    /// default, 5 seconds.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// How long a store error stays cached; zero disables it. By default, 2 seconds.
    ///
    /// Concurrent lookups of one identifier share one store call whatever this is; this
    /// bounds how often a failing store is asked afterwards (once per identifier and
    /// period), so a database that is down is not hammered by every request.
    pub fn error_ttl(mut self, ttl: Duration) -> Self {
        self.error_ttl = ttl;
        self
    }

    /// The most identifiers kept at once (found, unknown and failed alike). By default,
    /// 10 000.
    pub fn max_capacity(mut self, n: u64) -> Self {
        self.max_capacity = n;
        self
    }

    /// Takes all settings from a [`CacheConfig`].
    pub fn config(mut self, config: &CacheConfig) -> Self {
        self.ttl = Duration::from_secs(config.ttl_secs);
        self.negative_ttl = Duration::from_secs(config.negative_ttl_secs);
        self.max_capacity = config.max_capacity;
        self.error_ttl = Duration::from_millis(config.error_ttl_ms);
        self
    }

    /// Builds the store.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `ttl` is zero, `negative_ttl` or `error_ttl` exceeds `ttl`,
    /// or `max_capacity` is zero.
    pub fn build(self) -> Result<CachedStore<St>, ConfigError> {
        let (ttl, negative_ttl) = (self.ttl, self.negative_ttl);
        if ttl.is_zero() {
            return Err(ConfigError::new(
                "tenant cache ttl must be positive: use e.g. .ttl(Duration::from_secs(60))",
            ));
        }
        if negative_ttl > ttl {
            return Err(ConfigError::new(format!(
                "tenant cache negative_ttl ({negative_ttl:?}) must not exceed ttl ({ttl:?}): \
                 unknown identifiers should expire sooner, e.g. .negative_ttl(Duration::from_secs(5))"
            )));
        }
        if self.error_ttl > ttl {
            return Err(ConfigError::new(format!(
                "tenant cache error_ttl ({:?}) must not exceed ttl ({ttl:?}): store errors \
                 should expire sooner, e.g. .error_ttl(Duration::from_secs(2))",
                self.error_ttl
            )));
        }
        if self.max_capacity == 0 {
            return Err(ConfigError::new(
                "tenant cache max_capacity must be at least 1: use .max_capacity(10_000)",
            ));
        }
        let cache = Cache::builder()
            .max_capacity(self.max_capacity)
            // A wall-clock upper bound so memory is freed; the tokio-clock check in
            // `lookup` decides freshness.
            .time_to_live(ttl)
            .build();
        Ok(CachedStore {
            inner: Arc::new(CachedInner {
                store: self.store,
                cache,
                ttl,
                negative_ttl,
                error_ttl: self.error_ttl,
                loads: AtomicU64::new(0),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            }),
        })
    }
}

impl<St: TenantStore> CachedStore<St> {
    /// A builder wrapping `store`, with the defaults of [`CacheConfig`].
    pub fn builder(store: St) -> CachedStoreBuilder<St> {
        let d = CacheConfig::default();
        CachedStoreBuilder {
            store,
            ttl: Duration::from_secs(d.ttl_secs),
            negative_ttl: Duration::from_secs(d.negative_ttl_secs),
            error_ttl: Duration::from_millis(d.error_ttl_ms),
            max_capacity: d.max_capacity,
        }
    }

    /// Hit and miss counts since the store was built.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
        }
    }

    /// Forgets one identifier (after the tenant changed or was created).
    pub async fn invalidate(&self, id: &TenantId) {
        self.inner.cache.invalidate(id).await;
    }

    /// Forgets every identifier.
    pub fn invalidate_all(&self) {
        self.inner.cache.invalidate_all();
    }

    fn hit(&self) {
        self.inner.hits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("rampart_tenant_cache_total", "result" => "hit").increment(1);
    }

    async fn lookup_cached(&self, id: &TenantId) -> Result<Option<St::Tenant>, StoreError> {
        let inner = &*self.inner;
        let asked = inner.loads.load(Ordering::Acquire);
        if let Some(c) = inner.cache.get(id).await
            && c.expires_at > Instant::now()
        {
            self.hit();
            return c.value;
        }
        let result = inner
            .cache
            .entry_by_ref(id)
            .and_compute_with(|current| async move {
                if let Some(c) = current {
                    let c = c.value();
                    // Another caller loaded it while we waited (single-flight): use its
                    // answer, an error included, even if already expired (error_ttl 0).
                    if c.expires_at > Instant::now() || c.load > asked {
                        return Op::Nop;
                    }
                }
                inner.misses.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("rampart_tenant_cache_total", "result" => "miss").increment(1);
                let value = inner.store.lookup(id).await;
                let ttl = match value {
                    Ok(Some(_)) => inner.ttl,
                    Ok(None) => inner.negative_ttl,
                    Err(_) => inner.error_ttl,
                };
                Op::Put(Cached {
                    value,
                    load: inner.loads.fetch_add(1, Ordering::AcqRel) + 1,
                    expires_at: Instant::now() + ttl,
                })
            })
            .await;
        match result {
            CompResult::Unchanged(e) => {
                self.hit();
                e.into_value().value
            }
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) => e.into_value().value,
            CompResult::StillNone(_) | CompResult::Removed(_) => Ok(None),
        }
    }
}

impl<St: TenantStore> TenantStore for CachedStore<St> {
    type Tenant = St::Tenant;

    fn lookup(
        &self,
        id: &TenantId,
    ) -> impl Future<Output = Result<Option<Self::Tenant>, StoreError>> + Send {
        self.lookup_cached(id)
    }
}
