//! The [`Cache`] handle: cache-aside with single-flight loads and versioned tags.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::Extensions;
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::watch;

use super::{
    backend::{Backend, CACHE, Fetched, LOADER, Loc, Local, Namespace, Put, Store, count},
    codec::{Codec, Postcard},
    entry,
    options::{CacheOptions, TtlTiers},
};
use crate::{
    error::ConfigError,
    identity::IdentityReader,
    key::{KeyBuilder, KeySink, StackKey, cap_escaped, escape_part, push_escaped},
    log_safe::Escaped,
};

/// Longest escaped entry-key tail kept before it is shortened with a digest.
const MAX_KEY_TAIL: usize = 160;
/// Longest stored key built on the stack for an in-process read (never capped: a base
/// plus `:k:` plus `MAX_KEY_TAIL` is longer).
const STACK_KEY: usize = 96;
/// By default, the largest encoded value stored or read: 1 MiB.
const DEFAULT_MAX_VALUE: usize = 1 << 20;

/// Configures a [`Cache`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::{cache::{Cache, MemoryBackend, TtlTiers}, key::KeyBuilder};
///
/// let cache = Cache::builder()
///     .keys(KeyBuilder::new("himalytix"))
///     .ttl_tiers(TtlTiers::default().short(Duration::from_secs(30)))
///     .compress_above(2048)
///     .load_timeout(Duration::from_secs(5))
///     .build(MemoryBackend::new(8 << 20))
///     .unwrap();
/// assert_eq!(cache.key_for("user:7"), "{himalytix:1:g:0}:k:user%3A7");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct CacheBuilder<C = Postcard> {
    keys: KeyBuilder,
    ttl: TtlTiers,
    compress_above: usize,
    max_value_bytes: usize,
    load_timeout: Duration,
    codec: C,
}

impl Default for CacheBuilder<Postcard> {
    fn default() -> Self {
        Self {
            keys: KeyBuilder::new("rampart"),
            ttl: TtlTiers::default(),
            compress_above: 1024,
            max_value_bytes: DEFAULT_MAX_VALUE,
            load_timeout: Duration::from_secs(10),
            codec: Postcard,
        }
    }
}

impl<C: Codec> CacheBuilder<C> {
    /// The key builder (prefix and version). By default, `KeyBuilder::new("rampart")`.
    pub fn keys(mut self, keys: KeyBuilder) -> Self {
        self.keys = keys;
        self
    }

    /// The durations of the TTL tiers. By default, [`TtlTiers::default`] (60 s, 5 min,
    /// 1 h, 1 day).
    pub fn ttl_tiers(mut self, ttl: TtlTiers) -> Self {
        self.ttl = ttl;
        self
    }

    /// Encoded values longer than this many bytes are stored zlib-compressed (when that
    /// makes them smaller). By default, 1024.
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.compress_above = bytes;
        self
    }

    /// The largest encoded value stored or read, in bytes: a larger value is not stored
    /// (`set` returns `false`), and a stored entry that is larger, or that would inflate
    /// to more (a decompression bomb written by someone else), is a miss and is deleted.
    /// The cap bounds the memory and the CPU time one read can cost on the executor
    /// (inflating 1 MiB takes about a millisecond). By default, 1 MiB.
    ///
    /// ```
    /// use tower_rampart::cache::{Cache, CacheOptions, MemoryBackend};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let cache = Cache::builder().max_value_bytes(100).build(MemoryBackend::new(1 << 20)).unwrap();
    /// assert!(!cache.set("big", &vec![0u8; 200], &CacheOptions::new()).await);
    /// assert!(cache.set("small", &vec![0u8; 50], &CacheOptions::new()).await);
    /// # });
    /// ```
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// The longest a loader of [`Cache::get_or_load`] may run; its waiters give up at the
    /// same time. By default, 10 s.
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.load_timeout = timeout;
        self
    }

    /// The value encoding. By default, [`Postcard`].
    pub fn codec<C2: Codec>(self, codec: C2) -> CacheBuilder<C2> {
        CacheBuilder {
            keys: self.keys,
            ttl: self.ttl,
            compress_above: self.compress_above,
            max_value_bytes: self.max_value_bytes,
            load_timeout: self.load_timeout,
            codec,
        }
    }

    /// Builds the cache on a backend.
    ///
    /// # Errors
    ///
    /// When the load timeout is zero.
    pub fn build(self, backend: impl Into<Backend>) -> Result<Cache<C>, ConfigError> {
        if self.load_timeout.is_zero() {
            return Err(ConfigError::new(
                "cache load_timeout must be greater than zero: use e.g. Duration::from_secs(10)",
            ));
        }
        let backend = backend.into();
        let buckets = backend.store.buckets().max(1);
        let ns = Arc::new(NsKeys::new(&self.keys, None, buckets));
        Ok(Cache {
            ns,
            shared: Arc::new(Shared {
                store: backend.store,
                keys: self.keys,
                buckets,
                ttl: self.ttl,
                compress_above: self.compress_above,
                max_value_bytes: self.max_value_bytes,
                load_timeout: self.load_timeout,
                codec: self.codec,
                flights: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(0),
                completions: AtomicU64::new(0),
            }),
            tenant: None,
        })
    }
}

#[derive(Debug, Clone)]
enum Flight {
    Pending,
    Done(Bytes),
    Failed,
    TimedOut,
}

type Flights = Mutex<HashMap<String, (u64, watch::Sender<Flight>)>>;

struct Shared<C> {
    store: Arc<dyn Store>,
    keys: KeyBuilder,
    buckets: u16,
    ttl: TtlTiers,
    compress_above: usize,
    max_value_bytes: usize,
    load_timeout: Duration,
    codec: C,
    flights: Flights,
    next_flight: AtomicU64,
    completions: AtomicU64,
}

/// A cache-aside handle: typed reads and writes, single-flight loads, versioned tags.
///
/// Cheap to clone (an `Arc`). A handle is scoped to a tenant or to the global namespace:
/// [`for_tenant`](Self::for_tenant) gives a handle whose keys **and tags** live in that
/// tenant's namespace, so the same logical key of two tenants never meets.
///
/// No operation returns a backend error: a failing or slow backend reads as a miss (and
/// is logged and counted), a failing write is skipped.
///
/// # Example
///
/// ```
/// use tower_rampart::cache::{Cache, CacheOptions, MemoryBackend, Ttl};
///
/// # tokio_test_block_on(async {
/// let cache = Cache::builder().build(MemoryBackend::new(8 << 20)).unwrap();
/// let acme = cache.for_tenant("acme");
/// let opts = CacheOptions::new().ttl(Ttl::Short).tag("users");
///
/// let name: String = acme
///     .get_or_load("user:7", &opts, || async { Ok::<_, std::io::Error>("Ada".to_owned()) })
///     .await
///     .unwrap();
/// assert_eq!(name, "Ada");
/// assert_eq!(acme.get::<String>("user:7").await.as_deref(), Some("Ada"));
/// assert_eq!(cache.for_tenant("globex").get::<String>("user:7").await, None);
///
/// acme.invalidate_tag("users").await;
/// assert_eq!(acme.get::<String>("user:7").await, None);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
pub struct Cache<C = Postcard> {
    shared: Arc<Shared<C>>,
    tenant: Option<Arc<str>>,
    ns: Arc<NsKeys>,
}

/// The key prefixes of one namespace, computed once per handle.
#[derive(Debug)]
struct NsKeys {
    /// `{prefix:version:g|t:<tenant>:<bucket>}` per bucket.
    bases: Vec<String>,
    /// `<base>:g:` per bucket.
    tag_prefixes: Vec<Arc<str>>,
    /// `<base of bucket 0>:k:`, the start of every stored key when not clustered.
    entry_prefix: String,
}

impl NsKeys {
    fn new(keys: &KeyBuilder, tenant: Option<&str>, buckets: u16) -> Self {
        let bases: Vec<String> = (0..buckets.max(1))
            .map(|b| {
                let b = b.to_string();
                let inner = match tenant {
                    Some(t) => keys.build(["t", t, &b]),
                    None => keys.build(["g", &b]),
                };
                format!("{{{inner}}}")
            })
            .collect();
        let tag_prefixes = bases.iter().map(|b| Arc::from(format!("{b}:g:"))).collect();
        let entry_prefix = format!("{}:k:", bases[0]);
        Self {
            bases,
            tag_prefixes,
            entry_prefix,
        }
    }
}

impl<C> Clone for Cache<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            tenant: self.tenant.clone(),
            ns: self.ns.clone(),
        }
    }
}

impl<C> fmt::Debug for Cache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("prefix", &self.shared.keys.prefix())
            .field("tenant", &self.tenant)
            .field("store", &self.shared.store)
            .finish_non_exhaustive()
    }
}

/// Why [`Cache::get_or_load`] returned no value.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadError<E> {
    /// This caller's loader failed (nothing was cached).
    Loader(E),
    /// The load this caller waited for (another caller's, for the same key) failed.
    Shared,
    /// The load took longer than the cache's load timeout.
    Timeout,
}

impl<E: fmt::Display> fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Loader(e) => write!(f, "cache loader failed: {e}"),
            Self::Shared => f.write_str("the shared cache load this call waited for failed"),
            Self::Timeout => f.write_str("the cache load timed out"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for LoadError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Loader(e) => Some(e),
            _ => None,
        }
    }
}

struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    id: u64,
    tx: Option<watch::Sender<Flight>>,
}

impl Leader<'_> {
    fn finish(mut self, outcome: Flight) {
        self.remove();
        if let Some(tx) = self.tx.take() {
            tx.send_replace(outcome);
        }
    }

    fn remove(&self) {
        let mut map = self
            .flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.key);
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // A cancelled leader: waiters see the channel close and retry.
        if self.tx.is_some() {
            self.remove();
        }
    }
}

enum Hit<T> {
    Value(T),
    /// A value past its soft expiry (`stale_while_revalidate`).
    Stale(T),
    Miss,
    Undecodable,
}

enum Role<'a> {
    Lead(Leader<'a>),
    Follow(watch::Receiver<Flight>),
    Recheck,
}

impl Cache<Postcard> {
    /// A builder with the defaults (prefix `rampart`, postcard, zlib above 1 KiB).
    pub fn builder() -> CacheBuilder<Postcard> {
        CacheBuilder::default()
    }
}

/// FNV-1a, stable across processes and versions (all instances must agree on buckets).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl<C: Codec> Cache<C> {
    /// A handle on the same cache scoped to `tenant`: its keys and tags are that tenant's.
    #[must_use]
    pub fn for_tenant(&self, tenant: impl AsRef<str>) -> Self {
        let tenant = tenant.as_ref();
        Self {
            shared: self.shared.clone(),
            tenant: Some(tenant.into()),
            ns: Arc::new(NsKeys::new(
                &self.shared.keys,
                Some(tenant),
                self.shared.buckets,
            )),
        }
    }

    /// A handle scoped to the tenant the request was resolved to, read through `reader`
    /// (global when the request has no tenant).
    #[must_use]
    pub fn for_request(&self, reader: &IdentityReader, extensions: &Extensions) -> Self {
        match reader.tenant_id(extensions) {
            Some(t) => self.for_tenant(t),
            None => self.global(),
        }
    }

    /// A handle on the global (tenant-less) namespace.
    #[must_use]
    pub fn global(&self) -> Self {
        if self.tenant.is_none() {
            return self.clone();
        }
        Self {
            shared: self.shared.clone(),
            tenant: None,
            ns: Arc::new(NsKeys::new(&self.shared.keys, None, self.shared.buckets)),
        }
    }

    /// The tenant of this handle.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The TTL tiers.
    pub fn ttl_tiers(&self) -> TtlTiers {
        self.shared.ttl
    }

    /// The stored key of a logical key and its bucket (one allocation when not clustered).
    fn entry_key(&self, key: &str) -> (String, usize) {
        let (bucket, escaped) = if self.shared.buckets > 1 {
            let escaped = escape_part(key);
            let bucket = fnv1a(escaped.as_bytes()) % u64::from(self.shared.buckets);
            (usize::try_from(bucket).unwrap_or(0), Some(escaped))
        } else {
            (0, None)
        };
        let base = &self.ns.bases[bucket];
        let mut full = String::with_capacity(base.len() + 3 + key.len() + 8);
        full.push_str(base);
        full.push_str(":k:");
        match escaped {
            Some(escaped) => full.push_str(&escaped),
            None => push_escaped(&mut full, key),
        }
        (cap_escaped(full, base.len() + 3 + MAX_KEY_TAIL), bucket)
    }

    fn loc(&self, key: &str) -> Loc {
        let (key, bucket) = self.entry_key(key);
        Loc {
            key,
            tag_prefix: self.ns.tag_prefixes[bucket].clone(),
            ns: self.ns.tag_prefixes[0].clone(),
        }
    }

    fn namespace(&self) -> Namespace {
        Namespace {
            ns: self.ns.tag_prefixes[0].clone(),
            tag_prefixes: self.ns.tag_prefixes.clone(),
        }
    }

    /// The stored key of a logical key in this handle's namespace (for debugging and
    /// for reading entries from other tools).
    pub fn key_for(&self, key: &str) -> String {
        self.loc(key).key
    }

    fn decode_body<T: DeserializeOwned>(&self, body: &[u8]) -> Option<T> {
        self.decode_capped(body, self.shared.max_value_bytes)
    }

    /// Decodes a body no longer than `max` bytes once inflated.
    fn decode_capped<T: DeserializeOwned>(&self, body: &[u8], max: usize) -> Option<T> {
        entry::unframe(body, max).and_then(|data| self.shared.codec.decode(&data).ok())
    }

    async fn decode<T: DeserializeOwned>(&self, loc: &Loc, body: &Bytes) -> Option<T> {
        self.decode_within(loc, body, self.shared.max_value_bytes)
            .await
    }

    /// Decodes a body read from the backend; one that is corrupt, too large once
    /// inflated, or not a whole `T` is deleted from the backend.
    async fn decode_within<T: DeserializeOwned>(
        &self,
        loc: &Loc,
        body: &Bytes,
        max: usize,
    ) -> Option<T> {
        let value = self.decode_capped(body, max);
        if value.is_none() {
            tracing::warn!(key = %Escaped(&loc.key), "undecodable cache entry removed");
            count(&CACHE.corrupt);
            self.shared.store.delete(std::slice::from_ref(loc)).await;
        }
        value
    }

    /// The backend TTL of an entry written with `options` (its TTL plus any
    /// stale-while-revalidate window) and its soft expiry (Unix ms) when it has one.
    fn lifetimes(&self, options: &CacheOptions) -> (Duration, Option<u64>) {
        let ttl = self.shared.ttl.resolve(options.ttl_tier());
        let window = options.stale_window();
        if window.is_zero() {
            return (ttl, None);
        }
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        (
            ttl.saturating_add(window).min(TtlTiers::MAX),
            Some(entry::unix_ms().saturating_add(ms)),
        )
    }

    fn encode<T: Serialize>(&self, value: &T, soft: Option<u64>) -> Option<Bytes> {
        match self.shared.codec.encode(value) {
            Ok(data) if data.len() > self.shared.max_value_bytes => {
                tracing::debug!(
                    bytes = data.len(),
                    max = self.shared.max_value_bytes,
                    "cache value larger than max_value_bytes; not cached"
                );
                None
            }
            Ok(data) => Some(entry::frame(&data, self.shared.compress_above, soft)),
            Err(e) => {
                tracing::warn!(error = %e, "cache value not encodable; not cached");
                None
            }
        }
    }

    /// The cached value, or `None` on a miss (absent, expired, invalidated by a tag,
    /// undecodable, or the backend failing).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        // The hot path: an in-process hit costs the key (on the stack), the moka read and
        // the decode.
        let mut local_missed = false;
        if let Some(local) = self.shared.store.local() {
            match self
                .local_get(&local, key, self.shared.max_value_bytes)
                .await
            {
                Hit::Value(v) | Hit::Stale(v) => return Some(v),
                Hit::Miss if local.authoritative => {
                    local.memory.count_miss();
                    return None;
                }
                Hit::Miss => local_missed = true,
                Hit::Undecodable => {}
            }
        }
        let loc = self.loc(key);
        let ttl = self.shared.ttl.resolve(super::Ttl::Default);
        let fetched = self.fetch(&loc, &[], ttl, local_missed).await;
        self.decode(&loc, &fetched.body?).await
    }

    /// A backend read, skipping the in-process tier when it was just tried.
    async fn fetch(&self, loc: &Loc, want: &[&str], ttl: Duration, local_missed: bool) -> Fetched {
        let store = &*self.shared.store;
        if local_missed {
            store.get_after_local_miss(loc, want, ttl).await
        } else {
            store.get(loc, want, ttl).await
        }
    }

    /// Writes the stored key into `stored` when not clustered (the usual case); `false`
    /// otherwise. Filled in place: a key built elsewhere and moved into the future costs
    /// more than building it.
    fn stack_key(&self, key: &str, stored: &mut StackKey<STACK_KEY>) -> bool {
        if self.shared.buckets > 1 {
            return false;
        }
        stored.push_str(&self.ns.entry_prefix);
        push_escaped(stored, key);
        true
    }

    /// Tries the in-process tier; an undecodable entry is left for the slow path, which
    /// logs, counts and removes it.
    async fn local_get<T: DeserializeOwned>(
        &self,
        local: &Local<'_>,
        key: &str,
        max: usize,
    ) -> Hit<T> {
        let mut stack = StackKey::new();
        let heap;
        let stored = match self
            .stack_key(key, &mut stack)
            .then(|| stack.as_bytes())
            .flatten()
        {
            Some(stored) => stored,
            None => {
                heap = self.entry_key(key).0;
                heap.as_bytes()
            }
        };
        // `lookup_entry` inlined: one async layer less on the hottest path.
        let memory = local.memory;
        let Some(entry) = memory.entries.get(stored).await else {
            return Hit::Miss;
        };
        if !memory.accept(&entry) {
            memory.entries.invalidate(stored).await;
            return Hit::Miss;
        }
        match self.decode_capped(&entry.body, max) {
            None => Hit::Undecodable,
            Some(v) if entry::is_stale(&entry.body) => Hit::Stale(v),
            Some(v) => Hit::Value(v),
        }
    }

    /// Several values in one call (concurrently; multiplexed on one Redis connection).
    pub async fn get_many<T, I>(&self, keys: I) -> Vec<Option<T>>
    where
        T: DeserializeOwned,
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let keys: Vec<I::Item> = keys.into_iter().collect();
        futures_util::future::join_all(keys.iter().map(|k| self.get(k.as_ref()))).await
    }

    /// Stores a value with its options; `false` when it was not stored (encoding failed,
    /// the backend failed).
    pub async fn set<T: Serialize>(&self, key: &str, value: &T, options: &CacheOptions) -> bool {
        // No snapshot: the tags' current versions.
        self.set_after(key, value, options, &Snapshot::default())
            .await
    }

    /// Stores several values with the same options; the number stored.
    pub async fn set_many<K, T>(&self, items: &[(K, T)], options: &CacheOptions) -> usize
    where
        K: AsRef<str>,
        T: Serialize,
    {
        futures_util::future::join_all(items.iter().map(|(k, v)| self.set(k.as_ref(), v, options)))
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count()
    }

    /// Removes an entry (from every tier and, with the two-tier backend, from every
    /// instance's in-process tier).
    pub async fn delete(&self, key: &str) {
        let loc = self.loc(key);
        self.shared.store.delete(std::slice::from_ref(&loc)).await;
    }

    /// Invalidates every entry of this handle's namespace carrying `tag`: O(1) in the
    /// number of entries (the tag's version changes; entries recorded the old one).
    pub async fn invalidate_tag(&self, tag: &str) {
        self.invalidate_tags([tag]).await;
    }

    /// Invalidates several tags at once.
    pub async fn invalidate_tags<I>(&self, tags: I)
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let tags: Vec<String> = tags.into_iter().map(|t| escape_part(t.as_ref())).collect();
        if tags.is_empty() {
            return;
        }
        let ns = self.namespace();
        self.shared.store.invalidate(&ns, &tags).await;
    }

    /// The cached value, or the loader's, stored with `options`.
    ///
    /// **Single-flight per key**: concurrent callers for the same key (in this process)
    /// wait for one load instead of running their own. A failing load is not cached: its
    /// caller gets [`LoadError::Loader`], its waiters [`LoadError::Shared`]. A load that
    /// runs longer than the load timeout is dropped and every caller gets
    /// [`LoadError::Timeout`]; if the loading caller is cancelled, a waiter takes over.
    ///
    /// The versions of the entry's tags are read (in the same round trip as the lookup)
    /// **before** the loader runs and recorded with the value: if a tag is invalidated
    /// while the loader runs, the value is returned but not cached.
    ///
    /// With [`CacheOptions::stale_while_revalidate`], a value past its TTL but within the
    /// window is refreshed by the first caller that finds it (which waits for the load,
    /// and gets the stale value if the load fails), while every caller that finds that
    /// refresh running gets the stale value at once.
    ///
    /// # Errors
    ///
    /// See [`LoadError`]; cache failures are never errors.
    pub async fn get_or_load<T, E, F, Fut>(
        &self,
        key: &str,
        options: &CacheOptions,
        loader: F,
    ) -> Result<T, LoadError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let shared = &*self.shared;
        // A value past its soft expiry: served to whoever finds a refresh running.
        let mut stale: Option<T> = None;
        // An in-process hit first: no tags, no flight bookkeeping.
        let mut local_missed = false;
        if let Some(local) = shared.store.local() {
            match self
                .local_get(&local, key, self.shared.max_value_bytes)
                .await
            {
                Hit::Value(v) => return Ok(v),
                Hit::Stale(v) => {
                    stale = Some(v);
                    local_missed = true;
                }
                Hit::Miss => local_missed = true,
                Hit::Undecodable => {}
            }
        }
        let loc = self.loc(key);
        let tags: Vec<String> = options.tags().iter().map(|t| escape_part(t)).collect();
        let want: Vec<&str> = tags.iter().map(String::as_str).collect();
        let (ttl, _) = self.lifetimes(options);
        let mut rechecked = false;
        let mut loader = Some(loader);
        loop {
            let seen = shared.completions.load(Ordering::SeqCst);
            // With a stale window, read first: a stale value beats waiting for a load.
            let read_first = stale.is_none() && !options.stale_window().is_zero();
            if let Some(rx) = self.pending(&loc.key).filter(|_| !read_first) {
                if let Some(v) = stale {
                    return Ok(v);
                }
                if let Some(r) = self.follow(&loc, rx).await {
                    return r;
                }
                continue;
            }
            let fetched = self
                .fetch(&loc, &want, ttl, std::mem::take(&mut local_missed))
                .await;
            if let Some(body) = &fetched.body
                && let Some(v) = self.decode(&loc, body).await
            {
                if !entry::is_stale(body) {
                    return Ok(v);
                }
                stale = Some(v);
            }
            let role = {
                let mut map = shared
                    .flights
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some((_, tx)) = map.get(&loc.key) {
                    Role::Follow(tx.subscribe())
                } else if !rechecked && shared.completions.load(Ordering::SeqCst) != seen {
                    Role::Recheck
                } else {
                    let id = shared.next_flight.fetch_add(1, Ordering::Relaxed);
                    let (tx, _) = watch::channel(Flight::Pending);
                    map.insert(loc.key.clone(), (id, tx.clone()));
                    Role::Lead(Leader {
                        flights: &shared.flights,
                        key: loc.key.clone(),
                        id,
                        tx: Some(tx),
                    })
                }
            };
            match role {
                Role::Recheck => rechecked = true,
                Role::Follow(rx) => {
                    if let Some(v) = stale {
                        return Ok(v);
                    }
                    if let Some(r) = self.follow(&loc, rx).await {
                        return r;
                    }
                }
                Role::Lead(leader) => {
                    let Some(load) = loader.take() else {
                        // Only reachable if a leader was cancelled and we already lead.
                        leader.finish(Flight::Failed);
                        return Err(LoadError::Shared);
                    };
                    let loaded = self.lead(&loc, &want, options, fetched, leader, load).await;
                    // A failed refresh still has the stale value to give.
                    return match (loaded, stale) {
                        (Err(_), Some(v)) => Ok(v),
                        (loaded, _) => loaded,
                    };
                }
            }
        }
    }

    fn pending(&self, key: &str) -> Option<watch::Receiver<Flight>> {
        let map = self
            .shared
            .flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(key).map(|(_, tx)| tx.subscribe())
    }

    async fn follow<T: DeserializeOwned, E>(
        &self,
        loc: &Loc,
        mut rx: watch::Receiver<Flight>,
    ) -> Option<Result<T, LoadError<E>>> {
        let waited = tokio::time::timeout(
            self.shared.load_timeout,
            rx.wait_for(|f| !matches!(f, Flight::Pending)),
        )
        .await;
        let state = match waited {
            Ok(Ok(state)) => state.clone(),
            // The leader was cancelled: try again (perhaps as the leader).
            Ok(Err(_)) => return None,
            Err(_) => return Some(Err(LoadError::Timeout)),
        };
        Some(match state {
            Flight::Done(body) => match self.decode_body(&body) {
                Some(v) => Ok(v),
                None => {
                    tracing::warn!(key = %Escaped(&loc.key), "shared load result not decodable");
                    Err(LoadError::Shared)
                }
            },
            Flight::TimedOut => Err(LoadError::Timeout),
            Flight::Pending | Flight::Failed => Err(LoadError::Shared),
        })
    }

    async fn lead<T, E, F, Fut>(
        &self,
        loc: &Loc,
        want: &[&str],
        options: &CacheOptions,
        fetched: Fetched,
        leader: Leader<'_>,
        load: F,
    ) -> Result<T, LoadError<E>>
    where
        T: Serialize,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let shared = &*self.shared;
        count(&LOADER.loads);
        let value = match tokio::time::timeout(shared.load_timeout, load()).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                count(&LOADER.load_errors);
                leader.finish(Flight::Failed);
                return Err(LoadError::Loader(e));
            }
            Err(_) => {
                count(&LOADER.load_errors);
                tracing::warn!(key = %Escaped(&loc.key), "cache load timed out");
                leader.finish(Flight::TimedOut);
                return Err(LoadError::Timeout);
            }
        };
        let (ttl, soft) = self.lifetimes(options);
        let Some(body) = self.encode(&value, soft) else {
            leader.finish(Flight::Failed);
            return Ok(value);
        };
        let known = fetched.versions.len() == want.len();
        let put = Put {
            loc,
            tags: want
                .iter()
                .enumerate()
                .map(|(i, t)| (*t, known.then(|| fetched.versions[i])))
                .collect(),
            body: body.clone(),
            ttl,
            epoch: Some(fetched.epoch),
        };
        shared.store.put(put).await;
        shared.completions.fetch_add(1, Ordering::SeqCst);
        leader.finish(Flight::Done(body));
        Ok(value)
    }
}

/// What a read saw of some tags: a later write of a value computed after the read is
/// stored with these versions, so an invalidation in between makes it born stale (a
/// miss) instead of fresh. Used by the response cache for its declared tags.
#[derive(Debug, Default)]
pub(crate) struct Snapshot<'a> {
    /// The tags read, escaped.
    tags: &'a [String],
    versions: Vec<u64>,
    epoch: Option<u64>,
}

impl<C: Codec> Cache<C> {
    /// [`get`](Self::get), also reading the current versions of `tags` (already escaped
    /// with [`escape_part`], as stored), for a [`set_after`](Self::set_after) on a miss.
    /// An in-process hit answers alone, as in `get` (a hit stores nothing: no versions
    /// needed). Without `lookup` (the caller will not use a value: `no-cache`), only the
    /// versions are wanted: the in-process tier is skipped (its hits carry no versions)
    /// and nothing is decoded.
    pub(crate) async fn get_with_snapshot<'t, T: DeserializeOwned>(
        &self,
        key: &str,
        tags: &'t [String],
        ttl: super::Ttl,
        lookup: bool,
        max: usize,
    ) -> (Option<T>, Snapshot<'t>) {
        let max = max.min(self.shared.max_value_bytes);
        let mut local_missed = !lookup;
        if lookup && let Some(local) = self.shared.store.local() {
            match self.local_get(&local, key, max).await {
                Hit::Value(v) | Hit::Stale(v) => return (Some(v), Snapshot::default()),
                // An undecodable local entry is a miss too: the versions must come
                // from the backend (a two-tier L1 hit carries none).
                Hit::Miss | Hit::Undecodable => local_missed = true,
            }
        }
        let loc = self.loc(key);
        let want: Vec<&str> = tags.iter().map(String::as_str).collect();
        let fetched = self
            .fetch(&loc, &want, self.shared.ttl.resolve(ttl), local_missed)
            .await;
        let value = match &fetched.body {
            Some(body) if lookup => self.decode_within(&loc, body, max).await,
            _ => None,
        };
        let versions = if fetched.versions.len() == tags.len() {
            fetched.versions
        } else {
            Vec::new()
        };
        let snapshot = Snapshot {
            tags,
            versions,
            epoch: Some(fetched.epoch),
        };
        (value, snapshot)
    }

    /// [`set`](Self::set) of a value computed after `snapshot` was read: its tags that
    /// the snapshot covers keep the versions read then.
    pub(crate) async fn set_after<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        options: &CacheOptions,
        snapshot: &Snapshot<'_>,
    ) -> bool {
        let (ttl, soft) = self.lifetimes(options);
        let Some(body) = self.encode(value, soft) else {
            return false;
        };
        let loc = self.loc(key);
        let tags: Vec<String> = options.tags().iter().map(|t| escape_part(t)).collect();
        let put = Put {
            loc: &loc,
            tags: tags
                .iter()
                .map(|t| {
                    let seen = snapshot
                        .tags
                        .iter()
                        .position(|s| s == t)
                        .and_then(|i| snapshot.versions.get(i).copied());
                    (t.as_str(), seen)
                })
                .collect(),
            body,
            ttl,
            epoch: snapshot.epoch,
        };
        self.shared.store.put(put).await
    }
}

#[cfg(all(test, feature = "redis"))]
impl<C> Cache<C> {
    /// Loads in flight (tests).
    pub(crate) fn shared_flights(&self) -> usize {
        self.shared.flights.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Callers waiting for the load of a logical key of this handle (tests).
    pub(crate) fn shared_waiters(&self, key: &str) -> usize
    where
        C: Codec,
    {
        let loc = self.loc(key);
        self.shared
            .flights
            .lock()
            .ok()
            .and_then(|m| m.get(&loc.key).map(|(_, tx)| tx.receiver_count()))
            .unwrap_or(0)
    }
}
