//! The in-process backend: moka, weighed by bytes, per-entry TTL.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;

use super::{
    Backend, BoxFuture, Counters, Fetched, Loc, Local, MEMORY, Namespace, Put, Store, count,
    fresh_version,
};

pub(crate) struct MemEntry {
    /// Full tag ids (namespace + name) with the versions recorded at write.
    tags: Box<[(Arc<str>, u64)]>,
    pub(crate) body: Bytes,
    /// When the entry expires; `None` when moka's own time-to-live (the store's
    /// `max_ttl`, checked by moka on every read anyway) comes first, or never.
    expires: Option<quanta::Instant>,
    /// A tag generation (see [`Memory::generation`]) at which the recorded versions were
    /// known to be current: while the generation has not moved, a read skips the check.
    checked: AtomicU64,
}

pub(crate) struct Memory {
    /// Keyed by the stored key's bytes (a lookup needs no UTF-8 check of a key built on
    /// the stack), hashed with foldhash, randomly seeded per map like hashbrown's
    /// default: SipHash cost more than the rest of a hit outside moka.
    pub(crate) entries: moka::future::Cache<Arc<[u8]>, Arc<MemEntry>, foldhash::fast::RandomState>,
    /// Tag versions; cleared when over `max_tags` (every entry then misses: sound).
    tags: dashmap::DashMap<Arc<str>, u64>,
    max_tags: usize,
    epoch: AtomicU64,
    /// Incremented **after** every change of a tag version (or loss of all of them), so
    /// that a reader who saw generation `g` and then found an entry's versions current
    /// knows they stay current while the generation is still `g`.
    generation: AtomicU64,
    /// moka's time-to-live for every entry, when the store has one.
    max_ttl: Option<Duration>,
    counters: &'static Counters,
}

impl fmt::Debug for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memory")
            .field("tier", &self.counters.tier)
            .field("entries", &self.entries.entry_count())
            .field("weighted_bytes", &self.entries.weighted_size())
            .finish_non_exhaustive()
    }
}

impl Memory {
    /// A store of at most `max_bytes` (weighed) and `max_tags` tag versions; no entry
    /// outlives `max_ttl` when given.
    ///
    /// An entry living `max_ttl` or longer expires through moka's time-to-live, which
    /// moka checks on every read anyway; a shorter TTL is checked on read against
    /// `quanta`'s clock (a TSC read where the CPU has an invariant one). moka's per-entry
    /// expiry hook would cost more than the rest of a hit. Expired entries that are never
    /// read again are evicted by the weight bound, or by `max_ttl`.
    pub(crate) fn new(
        max_bytes: u64,
        max_tags: usize,
        counters: &'static Counters,
        max_ttl: Option<Duration>,
    ) -> Self {
        // quanta calibrates its clock on first use (up to 200 ms): do it now, not on a read.
        let _ = quanta::Instant::now();
        let mut builder = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &Arc<[u8]>, v: &Arc<MemEntry>| {
                let tags: usize = v.tags.iter().map(|(t, _)| t.len() + 8).sum();
                u32::try_from(k.len() + v.body.len() + tags + 64).unwrap_or(u32::MAX)
            });
        if let Some(ttl) = max_ttl {
            builder = builder.time_to_live(ttl);
        }
        let entries = builder.build_with_hasher(foldhash::fast::RandomState::default());
        let tags = dashmap::DashMap::new();
        Self {
            entries,
            tags,
            max_tags,
            epoch: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            max_ttl,
            counters,
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
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        *self.tags.entry(id.clone()).or_insert_with(fresh_version)
    }

    /// Invalidates a tag by forgetting its version, as Redis `DEL`s its version key: a
    /// missing version matches no entry, and the next write creates a fresh one. So an
    /// invalidation never adds to the table (an unknown tag, or a forged channel
    /// message, costs nothing); only [`version`](Self::version) inserts, under the cap.
    fn forget_version(&self, id: &str) {
        self.tags.remove(id);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether an entry's recorded tag versions are current. Usually two atomic loads:
    /// the versions are only looked up when a tag changed since they were last checked.
    fn valid(&self, entry: &MemEntry) -> bool {
        if entry.tags.is_empty() {
            return true;
        }
        let generation = self.generation.load(Ordering::SeqCst);
        if entry.checked.load(Ordering::Relaxed) == generation {
            return true;
        }
        let current = entry
            .tags
            .iter()
            .all(|(id, v)| self.current(id) == Some(*v));
        if current {
            entry.checked.store(generation, Ordering::Relaxed);
        }
        current
    }

    /// The entry under `key` if present, unexpired and with current tag versions (a
    /// stale one is removed).
    pub(crate) async fn lookup_entry(&self, key: &[u8]) -> Option<Arc<MemEntry>> {
        let entry = self.entries.get(key).await?;
        if self.accept(&entry) {
            Some(entry)
        } else {
            self.entries.invalidate(key).await;
            None
        }
    }

    /// Whether an entry read from `entries` is unexpired with current tag versions
    /// (counted as a hit); a `false` entry must be removed with `entries.invalidate`.
    pub(crate) fn accept(&self, entry: &MemEntry) -> bool {
        let live = entry.expires.is_none_or(|t| quanta::Instant::now() < t);
        let accepted = live && self.valid(entry);
        if accepted {
            count(&self.counters.hits);
        }
        accepted
    }

    pub(crate) async fn lookup(&self, key: &str) -> Option<Bytes> {
        self.lookup_entry(key.as_bytes())
            .await
            .map(|e| e.body.clone())
    }

    pub(crate) fn count_miss(&self) {
        count(&self.counters.misses);
    }

    pub(crate) async fn store(
        &self,
        loc: &Loc,
        tags: &[(&str, Option<u64>)],
        body: Bytes,
        ttl: Duration,
        epoch: Option<u64>,
    ) -> bool {
        // Read before the versions: see `generation`.
        let generation = self.generation.load(Ordering::SeqCst);
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
        let key: Arc<[u8]> = loc.key.as_bytes().into();
        let entry = MemEntry {
            tags: recorded.into_boxed_slice(),
            body,
            expires: if self.max_ttl.is_some_and(|max| ttl >= max) {
                None
            } else {
                quanta::Instant::now().checked_add(ttl)
            },
            checked: AtomicU64::new(generation),
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
        self.entries.invalidate(key.as_bytes()).await;
    }

    pub(crate) fn bump(&self, ns: &str, tags: &[String]) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for t in tags {
            self.forget_version(&Self::tag_id(ns, t));
        }
        count(&self.counters.invalidations);
    }

    pub(crate) fn bump_id(&self, id: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.forget_version(id);
    }

    pub(crate) fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }

    /// The number of tag versions held (tests).
    #[cfg(test)]
    pub(crate) fn tag_count(&self) -> usize {
        self.tags.len()
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    fn fetched(&self, loc: &Loc, want: &[&str], body: Option<Bytes>, epoch: u64) -> Fetched {
        let versions = want
            .iter()
            .map(|t| self.version(&Self::tag_id(&loc.ns, t)))
            .collect();
        Fetched {
            body,
            versions,
            epoch,
            ..Fetched::default()
        }
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
                self.count_miss();
            }
            self.fetched(loc, want, found, epoch)
        })
    }

    fn local(&self) -> Option<Local<'_>> {
        Some(Local {
            memory: self,
            authoritative: true,
        })
    }

    fn get_after_local_miss<'a>(
        &'a self,
        loc: &'a Loc,
        want: &'a [&'a str],
        _ttl: Duration,
    ) -> BoxFuture<'a, Fetched> {
        let epoch = self.epoch();
        self.count_miss();
        let fetched = self.fetched(loc, want, None, epoch);
        Box::pin(std::future::ready(fetched))
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
        Self {
            inner: Arc::new(Memory::new(max_bytes, 1_000_000, &MEMORY, None)),
        }
    }

    /// The same capacity as `other`, as a fresh store counted as `counters` whose entries
    /// live at most `max_ttl`.
    #[cfg(feature = "redis")]
    pub(crate) fn with_tier_of(
        other: Self,
        counters: &'static Counters,
        max_ttl: Duration,
    ) -> Arc<Memory> {
        let max = other
            .inner
            .entries
            .policy()
            .max_capacity()
            .unwrap_or(64 << 20);
        Arc::new(Memory::new(max, 1_000_000, counters, Some(max_ttl)))
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
