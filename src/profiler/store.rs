//! The in-memory store: a bounded ring of recent records plus the slowest ones.

use std::{
    collections::VecDeque,
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Deserialize;

use super::{normalize::Memo, record::RequestRecord};
use crate::error::ConfigError;

/// How much the [`ProfileStore`] keeps.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::StoreLimits;
///
/// let limits: StoreLimits = serde_json::from_str(r#"{"max_records": 200}"#).unwrap();
/// assert_eq!(limits.max_records, 200);
/// assert_eq!(limits.slowest, StoreLimits::default().slowest);
/// assert!(limits.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[must_use]
pub struct StoreLimits {
    /// Most recent records kept. By default, 1000.
    pub max_records: usize,
    /// Upper bound on the estimated bytes the ring holds. By default, 32 MiB.
    pub max_bytes: usize,
    /// The slowest records kept beside the ring, so they survive it. By default, 50.
    pub slowest: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_records: 1000,
            max_bytes: 32 * 1024 * 1024,
            slowest: 50,
        }
    }
}

impl StoreLimits {
    /// Sets how many recent records are kept. By default, 1000.
    pub fn max_records(mut self, n: usize) -> Self {
        self.max_records = n;
        self
    }

    /// Sets the byte cap of the ring (estimated). By default, 32 MiB.
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }

    /// Sets how many of the slowest records are kept beyond the ring. By default, 50.
    pub fn slowest(mut self, n: usize) -> Self {
        self.slowest = n;
        self
    }

    /// Checks the limits.
    ///
    /// # Errors
    ///
    /// A zero `max_records` or a `max_bytes` under 4 KiB, which would keep nothing useful.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_records == 0 {
            return Err(ConfigError::new(
                "profiler store: max_records must be at least 1 (the default is 1000); \
                 to record nothing, sample at 0 % instead",
            ));
        }
        if self.max_bytes < 4096 {
            return Err(ConfigError::new(format!(
                "profiler store: max_bytes = {} is too small to hold a record; use at least 4096 \
                 (the default is 32 MiB)",
                self.max_bytes
            )));
        }
        Ok(())
    }
}

struct State {
    ring: VecDeque<(Arc<RequestRecord>, usize)>,
    ring_bytes: usize,
    /// Ascending by duration, with their estimated sizes.
    slowest: Vec<(Arc<RequestRecord>, usize)>,
    /// Estimated bytes of the slowest records (counted against the cap with the ring's).
    slowest_bytes: usize,
}

struct Inner {
    limits: StoreLimits,
    state: Mutex<State>,
    next_id: AtomicU64,
    recorded: AtomicU64,
    /// Normalised statements, shared by every request recorded here.
    memo: Memo,
}

/// Where profiles go: the last `max_records` records within `max_bytes`, plus the
/// `slowest` records ever seen. Clones share the same store.
///
/// Adding a record takes one short lock; reading copies `Arc`s out under the lock.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::{ProfileStore, StoreLimits};
///
/// let store = ProfileStore::new(StoreLimits::default().max_records(10)).unwrap();
/// assert_eq!(store.limits().max_records, 10);
/// assert_eq!(store.len(), 0);
/// ```
#[derive(Clone)]
pub struct ProfileStore {
    inner: Arc<Inner>,
}

impl Default for ProfileStore {
    fn default() -> Self {
        Self::build(StoreLimits::default())
    }
}

impl fmt::Debug for ProfileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfileStore")
            .field("limits", &self.inner.limits)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl ProfileStore {
    /// A store with these limits.
    ///
    /// # Errors
    ///
    /// See [`StoreLimits::validate`].
    pub fn new(limits: StoreLimits) -> Result<Self, ConfigError> {
        limits.validate()?;
        Ok(Self::build(limits))
    }

    fn build(limits: StoreLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits,
                state: Mutex::new(State {
                    ring: VecDeque::new(),
                    ring_bytes: 0,
                    slowest: Vec::new(),
                    slowest_bytes: 0,
                }),
                next_id: AtomicU64::new(1),
                recorded: AtomicU64::new(0),
                memo: Memo::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The limits.
    pub fn limits(&self) -> StoreLimits {
        self.inner.limits
    }

    /// The normalised form of a raw statement (remembered for the next requests).
    pub(crate) fn normalize(&self, sql: &str) -> String {
        self.inner.memo.normalize(sql)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records in the ring.
    pub fn len(&self) -> usize {
        self.lock().ring.len()
    }

    /// Whether the ring is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Estimated bytes held by the ring and the slowest records (the figure the byte cap
    /// bounds).
    pub fn bytes(&self) -> usize {
        let st = self.lock();
        st.ring_bytes + st.slowest_bytes
    }

    /// Records ever added (including those evicted since).
    pub fn recorded_total(&self) -> u64 {
        self.inner.recorded.load(Ordering::Relaxed)
    }

    /// Adds a finished record, evicting the oldest ones beyond the limits.
    ///
    /// The profiler layer calls this; it is public so that other sources (a job runner,
    /// a test) can add records too.
    pub fn push(&self, mut record: RequestRecord) {
        let limits = self.inner.limits;
        let mut size = record.approx_bytes();
        if size > limits.max_bytes / 2 {
            // One huge record must not flush the whole ring (it may be kept twice, in the
            // ring and among the slowest): keep its summary only.
            record.queries_dropped += record.queries.len();
            record.queries = Vec::new();
            record.request_headers = Vec::new();
            record.response_headers = Vec::new();
            size = record.approx_bytes();
        }
        let record = Arc::new(record);
        self.inner.recorded.fetch_add(1, Ordering::Relaxed);
        // Evicted records are freed after the lock is released.
        let mut evicted = Vec::new();
        let mut st = self.lock();
        st.ring.push_back((Arc::clone(&record), size));
        st.ring_bytes += size;
        if limits.slowest > 0 {
            let full = st.slowest.len() >= limits.slowest;
            if !full || st.slowest[0].0.duration_ms < record.duration_ms {
                if full {
                    let (r, s) = st.slowest.remove(0);
                    st.slowest_bytes -= s;
                    evicted.push(r);
                }
                let at = st
                    .slowest
                    .partition_point(|(r, _)| r.duration_ms <= record.duration_ms);
                st.slowest.insert(at, (record, size));
                st.slowest_bytes += size;
            }
        }
        // Every kept record counts against the cap, the slowest included (a record in both
        // is counted twice: the bound errs on the safe side). The ring gives way first,
        // then the fastest of the slowest.
        while st.ring.len() > limits.max_records
            || st.ring_bytes + st.slowest_bytes > limits.max_bytes
        {
            if let Some((r, s)) = st.ring.pop_front() {
                st.ring_bytes -= s;
                evicted.push(r);
            } else if !st.slowest.is_empty() {
                let (r, s) = st.slowest.remove(0);
                st.slowest_bytes -= s;
                evicted.push(r);
            } else {
                break;
            }
        }
        drop(st);
        drop(evicted);
    }

    /// All records kept (ring and slowest), newest first.
    pub fn records(&self) -> Vec<RequestRecord> {
        self.shared_records()
            .into_iter()
            .map(|r| (*r).clone())
            .collect()
    }

    pub(crate) fn shared_records(&self) -> Vec<Arc<RequestRecord>> {
        let st = self.lock();
        let mut out: Vec<Arc<RequestRecord>> = st
            .ring
            .iter()
            .chain(st.slowest.iter())
            .map(|(r, _)| Arc::clone(r))
            .collect();
        drop(st);
        out.sort_by_key(|r| std::cmp::Reverse(r.id));
        out.dedup_by_key(|r| r.id);
        out
    }

    /// The record with this id, if still kept.
    pub fn get(&self, id: u64) -> Option<RequestRecord> {
        self.get_shared(id).map(|r| (*r).clone())
    }

    pub(crate) fn get_shared(&self, id: u64) -> Option<Arc<RequestRecord>> {
        let st = self.lock();
        st.ring
            .iter()
            .chain(st.slowest.iter())
            .map(|(r, _)| r)
            .find(|r| r.id == id)
            .cloned()
    }

    /// Removes every record.
    pub fn clear(&self) {
        let mut st = self.lock();
        st.ring.clear();
        st.ring_bytes = 0;
        st.slowest.clear();
        st.slowest_bytes = 0;
    }
}
