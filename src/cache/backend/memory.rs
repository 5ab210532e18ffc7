//! The in-process backend: moka, weighed by bytes, per-entry TTL.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use moka::Expiry;

use super::{Backend, BoxFuture, Fetched, Loc, Namespace, Put, Store, count, fresh_version};

struct MemEntry {
    /// Full tag ids (namespace + name) with the versions recorded at write.
    tags: Box<[(Arc<str>, u64)]>,
    body: Bytes,
    ttl: Duration,
}

struct PerEntry;

impl Expiry<Arc<str>, Arc<MemEntry>> for PerEntry {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<MemEntry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &Arc<str>,
        value: &Arc<MemEntry>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub(crate) struct Memory {
    entries: moka::future::Cache<Arc<str>, Arc<MemEntry>>,
    /// Tag versions; cleared when over `max_tags` (every entry then misses: sound).
    tags: dashmap::DashMap<Arc<str>, u64>,
    max_tags: usize,
    epoch: AtomicU64,
    tier: &'static str,
}

impl fmt::Debug for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memory")
            .field("tier", &self.tier)
            .field("entries", &self.entries.entry_count())
            .field("weighted_bytes", &self.entries.weighted_size())
            .finish_non_exhaustive()
    }
}

impl Memory {
    pub(crate) fn new(max_bytes: u64, max_tags: usize, tier: &'static str) -> Self {
        let entries = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &Arc<str>, v: &Arc<MemEntry>| {
                let tags: usize = v.tags.iter().map(|(t, _)| t.len() + 8).sum();
                u32::try_from(k.len() + v.body.len() + tags + 64).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntry)
            .build();
        let tags = dashmap::DashMap::new();
        Self {
            entries,
            tags,
            max_tags,
            epoch: AtomicU64::new(0),
            tier,
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn tag_id(ns: &str, tag: &str) -> Arc<str> {
        let mut id = String::with_capacity(ns.len() + tag.len());
        id.push_str(ns);
        id.push_str(tag);
        id.into()
    }

    fn current(&self, id: &str) -> Option<u64> {
        self.tags.get(id).map(|v| *v)
    }

    fn version(&self, id: &Arc<str>) -> u64 {
        if let Some(v) = self.current(id) {
            return v;
        }
        if self.tags.len() >= self.max_tags {
            // Bounded memory: forgetting every version turns every entry into a miss.
            self.epoch.fetch_add(1, Ordering::SeqCst);
            self.tags.clear();
        }
        *self.tags.entry(id.clone()).or_insert_with(fresh_version)
    }

    fn set_version(&self, id: Arc<str>) {
        self.tags.insert(id, fresh_version());
    }

    pub(crate) async fn lookup(&self, key: &str) -> Option<Bytes> {
        let entry = self.entries.get(key).await?;
        if entry
            .tags
            .iter()
            .all(|(id, v)| self.current(id) == Some(*v))
        {
            count("rampart_cache_hits_total", self.tier);
            Some(entry.body.clone())
        } else {
            self.entries.invalidate(key).await;
            None
        }
    }

    pub(crate) async fn store(
        &self,
        loc: &Loc,
        tags: &[(&str, Option<u64>)],
        body: Bytes,
        ttl: Duration,
        epoch: Option<u64>,
    ) -> bool {
        let mut recorded = Vec::with_capacity(tags.len());
        for (name, expected) in tags {
            let id = Self::tag_id(&loc.ns, name);
            let current = match expected {
                Some(e) => match self.current(&id) {
                    Some(v) if v == *e => v,
                    _ => return false,
                },
                None => self.version(&id),
            };
            recorded.push((id, current));
        }
        // Versions were read first: an invalidation after this check leaves the entry
        // with old versions (so it reads as a miss); one before it changed the epoch.
        if epoch.is_some_and(|e| e != self.epoch()) {
            return false;
        }
        let key: Arc<str> = loc.key.as_str().into();
        let entry = MemEntry {
            tags: recorded.into_boxed_slice(),
            body,
            ttl,
        };
        self.entries.insert(key.clone(), Arc::new(entry)).await;
        if epoch.is_some_and(|e| e != self.epoch()) {
            // A key deletion raced this insert: drop what we wrote.
            self.entries.invalidate(&key).await;
            return false;
        }
        true
    }

    pub(crate) async fn remove(&self, key: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate(key).await;
    }

    pub(crate) fn bump(&self, ns: &str, tags: &[String]) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for t in tags {
            self.set_version(Self::tag_id(ns, t));
        }
        count("rampart_cache_invalidations_total", self.tier);
    }

    pub(crate) fn bump_id(&self, id: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.set_version(id.into());
    }

    pub(crate) fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }
}

impl Store for Memory {
    fn get<'a>(
        &'a self,
        loc: &'a Loc,
        want: &'a [&'a str],
        _ttl: Duration,
    ) -> BoxFuture<'a, Fetched> {
        Box::pin(async move {
            let epoch = self.epoch();
            let found = self.lookup(&loc.key).await;
            if found.is_none() {
                count("rampart_cache_misses_total", self.tier);
            }
            let versions = want
                .iter()
                .map(|t| self.version(&Self::tag_id(&loc.ns, t)))
                .collect();
            Fetched {
                body: found,
                versions,
                epoch,
                ..Fetched::default()
            }
        })
    }

    fn put<'a>(&'a self, put: Put<'a>) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            self.store(put.loc, &put.tags, put.body, put.ttl, None)
                .await
        })
    }

    fn delete<'a>(&'a self, locs: &'a [Loc]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for loc in locs {
                self.remove(&loc.key).await;
            }
        })
    }

    fn invalidate<'a>(&'a self, ns: &'a Namespace, tags: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.bump(&ns.ns, tags) })
    }
}

/// The in-process backend: a moka cache bounded by total weight in bytes, with a TTL per
/// entry and versioned tags kept in a second bounded map (evicting a tag version turns
/// its entries into misses, never into stale hits).
///
/// # Example
///
/// ```
/// use tower_rampart::cache::{Cache, MemoryBackend};
///
/// let cache = Cache::builder().build(MemoryBackend::new(16 << 20)).unwrap();
/// # let _ = cache;
/// ```
#[derive(Clone)]
pub struct MemoryBackend {
    pub(crate) inner: Arc<Memory>,
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl MemoryBackend {
    /// A cache holding at most `max_bytes` of keys, values and tags (approximately:
    /// each entry also counts 64 bytes of overhead), and at most 1 000 000 tag versions.
    pub fn new(max_bytes: u64) -> Self {
        Self::with_tier(max_bytes, "memory")
    }

    pub(crate) fn with_tier(max_bytes: u64, tier: &'static str) -> Self {
        Self {
            inner: Arc::new(Memory::new(max_bytes, 1_000_000, tier)),
        }
    }

    /// The same capacity as `other`, as a fresh store counted under `tier`.
    #[cfg(feature = "redis")]
    pub(crate) fn with_tier_of(other: Self, tier: &'static str) -> Arc<Memory> {
        let max = other
            .inner
            .entries
            .policy()
            .max_capacity()
            .unwrap_or(64 << 20);
        Arc::new(Memory::new(max, 1_000_000, tier))
    }

    /// The number of entries held (moka's estimate, updated lazily).
    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }
}

impl From<MemoryBackend> for Backend {
    fn from(m: MemoryBackend) -> Self {
        Backend { store: m.inner }
    }
}
