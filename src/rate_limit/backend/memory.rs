//! The in-memory GCRA backend: sharded maps, bounded by construction.

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, Hash, Hasher},
    sync::{Mutex, OnceLock},
};

use super::{
    super::{
        gcra::{self, Clock, MAX_WINDOWS, Outcome, Window},
        policy::Subject,
    },
    Mode,
};

/// Default maximum number of keys kept (about 10 MB).
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// The in-memory backend's settings: a key cap and a clock.
///
/// Memory is bounded by construction: the keys are spread over shards of at most
/// `max_keys / shards` entries each, so the map never holds more than `max_keys` keys.
/// When a shard is full, keys whose every window has fully recovered (idle keys, whose
/// state equals "never seen") are dropped first, which loses nothing; only when more keys
/// than the cap are active at once are the ones closest to idle forgotten, measured
/// **relative to each key's own window** (the used share of its burst): a flood of fresh
/// keys of a `per_day(1000)` policy never pushes out an exhausted `per_minute(5)` key.
///
/// # Example
///
/// ```
/// use tower_rampart::rate_limit::MemoryBackend;
///
/// let backend = MemoryBackend::new().max_keys(10_000);
/// assert_eq!(backend.max_key_count(), 10_000);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryBackend {
    max_keys: usize,
    clock: Clock,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self {
            max_keys: DEFAULT_MAX_KEYS,
            clock: Clock::default(),
        }
    }
}

impl MemoryBackend {
    /// The default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most keys held at once (per limiter).
    ///
    /// By default, 100 000 (about 10 MB). Values below 64 are raised to 64.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(64);
        self
    }

    /// The clock the windows are measured with.
    ///
    /// By default, [`Clock::default`]: quanta, or tokio's clock when the layer is built
    /// while tokio's time is paused.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The configured key cap.
    pub fn max_key_count(&self) -> usize {
        self.max_keys
    }

    pub(crate) fn build(&self) -> MemoryStore {
        MemoryStore::new(self.max_keys, self.clock.clone())
    }
}

/// A key of the map: policy index + subject, hashed once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MemKey {
    hash: u64,
    policy: usize,
    subject: Subject,
}

impl Hash for MemKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Passes the precomputed hash through.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<MemKey, [u64; MAX_WINDOWS], BuildHasherDefault<IdHasher>>;

/// Sharded GCRA state.
pub(crate) struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    /// foldhash, randomly seeded per store (as hashbrown's default): SipHash cost about
    /// as much as the rest of a decision. Keys are attacker-chosen (addresses, header
    /// values) but the seed is not known to the attacker, and a shard never holds more
    /// than `per_shard` keys.
    hasher: foldhash::fast::RandomState,
    clock: Clock,
    /// Per policy index, each window's full span (burst × interval, µs): what eviction
    /// measures a key's use against. Set once when the limiter is built.
    spans: OnceLock<Box<[[u64; MAX_WINDOWS]]>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("per_shard", &self.per_shard)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    pub(crate) fn new(max_keys: usize, clock: Clock) -> Self {
        let cpus = std::thread::available_parallelism().map_or(4, std::num::NonZero::get);
        let shards = (cpus * 4)
            .next_power_of_two()
            .clamp(8, 64)
            .min(max_keys / 8)
            .max(1);
        let per_shard = (max_keys / shards).max(1);
        Self {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard::with_capacity_and_hasher(
                        0,
                        BuildHasherDefault::default(),
                    ))
                })
                .collect(),
            per_shard,
            hasher: foldhash::fast::RandomState::default(),
            clock,
            spans: OnceLock::new(),
        }
    }

    /// Tells the store each policy's windows (by policy index), so that eviction
    /// compares keys of different policies by the share of their burst in use.
    pub(crate) fn set_windows<'w>(&self, policies: impl Iterator<Item = &'w [Window]>) {
        let spans: Box<[_]> = policies
            .map(|windows| {
                let mut span = [0u64; MAX_WINDOWS];
                for (s, w) in span.iter_mut().zip(windows) {
                    *s = w.interval.saturating_mul(w.burst).max(1);
                }
                span
            })
            .collect();
        let _ = self.spans.set(spans);
    }

    /// Decides one request for `(policy, subject)`; the windows' states are computed only
    /// when `states` (see [`gcra::decide_with`]).
    #[inline]
    pub(crate) fn check(
        &self,
        policy: usize,
        subject: Subject,
        windows: &[Window],
        cost: u64,
        states: bool,
    ) -> Outcome {
        self.check_at(policy, subject, windows, cost, self.clock.now_us(), states)
    }

    /// [`check`](Self::check) at a given time.
    #[inline]
    pub(crate) fn check_at(
        &self,
        policy: usize,
        subject: Subject,
        windows: &[Window],
        cost: u64,
        now: u64,
        states: bool,
    ) -> Outcome {
        self.with_tats(policy, subject, now, windows.len(), |tats| {
            let outcome = gcra::decide_with(tats, now, windows, cost, states);
            (outcome, outcome.allowed)
        })
    }

    /// A decision in `mode` (see [`Mode`]); a peek leaves no state, a forced
    /// consumption is stored even when it does not fit (its bucket then full).
    pub(crate) fn check_mode(
        &self,
        policy: usize,
        subject: Subject,
        windows: &[Window],
        cost: u64,
        mode: Mode,
    ) -> Outcome {
        let now = self.clock.now_us();
        match mode {
            Mode::Decide => self.check_at(policy, subject, windows, cost, now, true),
            Mode::Peek => self.with_tats(policy, subject, now, windows.len(), |tats| {
                let mut copy = [0u64; MAX_WINDOWS];
                copy[..tats.len()].copy_from_slice(tats);
                (
                    gcra::decide_with(&mut copy[..tats.len()], now, windows, cost, true),
                    false,
                )
            }),
            Mode::Force => self.with_tats(policy, subject, now, windows.len(), |tats| {
                let outcome = gcra::decide_with(tats, now, windows, cost, true);
                if !outcome.allowed {
                    for (tat, w) in tats.iter_mut().zip(windows) {
                        let full = w.burst.saturating_mul(w.interval);
                        *tat = (*tat)
                            .max(now)
                            .saturating_add(cost.saturating_mul(w.interval))
                            .min(now.saturating_add(full));
                    }
                }
                (outcome, true)
            }),
        }
    }

    /// Decides one request for `(policy, subject)` without computing any state for
    /// headers: 0 when allowed, else the microseconds until it would be.
    #[inline]
    pub(crate) fn refusal(
        &self,
        policy: usize,
        subject: Subject,
        windows: &[Window],
        cost: u64,
    ) -> u64 {
        let now = self.clock.now_us();
        self.with_tats(policy, subject, now, windows.len(), |tats| {
            let retry_after = gcra::refusal(tats, now, windows, cost);
            (retry_after, retry_after == 0)
        })
    }

    /// Runs `decide` on the arrival times of `(policy, subject)` under its shard's lock;
    /// a key seen for the first time is stored only when `decide` allowed the request (a
    /// refused request leaves no state, so refusals cannot fill the map).
    #[inline]
    fn with_tats<R>(
        &self,
        policy: usize,
        subject: Subject,
        now: u64,
        windows: usize,
        decide: impl FnOnce(&mut [u64]) -> (R, bool),
    ) -> R {
        let hash = self.hasher.hash_one((policy, &subject));
        let shard = &self.shards[shard_index(hash, self.shards.len())];
        let mut map = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = MemKey {
            hash,
            policy,
            subject,
        };
        if let Some(tats) = map.get_mut(&key) {
            return decide(&mut tats[..windows]).0;
        }
        let mut tats = [0u64; MAX_WINDOWS];
        let (answer, allowed) = decide(&mut tats[..windows]);
        if allowed {
            if map.len() >= self.per_shard {
                evict(
                    &mut map,
                    now,
                    self.per_shard,
                    self.spans.get().map(|s| &**s),
                );
            }
            map.insert(key, tats);
        }
        answer
    }

    /// The number of keys held.
    pub(crate) fn len(&self) -> usize {
        total_len(&self.shards)
    }

    /// The most keys this store can hold.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// Drops every idle key (all windows recovered).
    pub(crate) fn sweep(&self) {
        let now = self.clock.now_us();
        for s in &*self.shards {
            s.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|_, t| t.iter().any(|tat| *tat > now));
        }
    }
}

/// The shard of a precomputed hash among `shards`: from its middle bits, since the low
/// ones pick a bucket inside the shard's map (keyed by that same hash).
pub(crate) fn shard_index(hash: u64, shards: usize) -> usize {
    #[allow(clippy::cast_possible_truncation)] // the modulo fits in usize
    let i = ((hash >> 32) % shards as u64) as usize;
    i
}

/// Makes room for one more key in a map of at most `cap` entries that lacks it, by
/// dropping the entries `live` says are over; `false` when it stays full.
pub(crate) fn room_for<V, S>(
    map: &mut HashMap<u64, V, S>,
    key: u64,
    cap: usize,
    mut live: impl FnMut(&V) -> bool,
) -> bool
where
    S: BuildHasher,
{
    if map.len() < cap || map.contains_key(&key) {
        return true;
    }
    map.retain(|_, v| live(v));
    map.len() < cap
}

/// The number of entries of sharded maps.
pub(crate) fn total_len<K, V, S>(shards: &[Mutex<HashMap<K, V, S>>]) -> usize {
    shards
        .iter()
        .map(|s| {
            s.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .len()
        })
        .sum()
}

/// Makes room in a full shard: drop idle keys (lossless); if none, drop the eighth of
/// keys closest to idle, so the cost is amortised O(1). "Closest to idle" is relative to
/// each key's own windows (`spans`, by policy index): the largest share of a window's
/// burst still in use. Without spans (a store used alone), absolute time decides.
fn evict(map: &mut Shard, now: u64, cap: usize, spans: Option<&[[u64; MAX_WINDOWS]]>) {
    map.retain(|_, t| t.iter().any(|tat| *tat > now));
    if map.len() < cap {
        return;
    }
    let drop = (cap / 8).max(1);
    let in_use = |key: &MemKey, tats: &[u64; MAX_WINDOWS]| -> f64 {
        let span = spans.and_then(|s| s.get(key.policy));
        tats.iter()
            .enumerate()
            .map(|(i, tat)| {
                #[allow(clippy::cast_precision_loss)] // a ranking, not an amount
                let used = tat.saturating_sub(now) as f64;
                match span {
                    #[allow(clippy::cast_precision_loss)]
                    Some(span) if span[i] > 0 => used / span[i] as f64,
                    Some(_) => 0.0,
                    None => used,
                }
            })
            .fold(0.0, f64::max)
    };
    let mut scores: Vec<f64> = map.iter().map(|(k, t)| in_use(k, t)).collect();
    let (_, nth, _) = scores.select_nth_unstable_by(drop - 1, f64::total_cmp);
    let threshold = *nth;
    let mut dropped = 0;
    map.retain(|k, t| {
        if dropped < drop && in_use(k, t) <= threshold {
            dropped += 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::gcra::ManualClock;
    use std::{net::IpAddr, time::Duration};

    fn window(per_sec: u64, burst: u64) -> [Window; 1] {
        [Window {
            interval: 1_000_000 / per_sec,
            burst,
        }]
    }

    #[test]
    fn a_million_distinct_keys_stay_under_the_cap() {
        let store = MemoryBackend::new().max_keys(10_000).build();
        let w = [Window {
            interval: 3_600_000_000,
            burst: 100,
        }];
        for i in 0..1_000_000u32 {
            let subject = Subject::Ip(IpAddr::from(i.to_be_bytes()));
            assert!(store.check_at(0, subject, &w, 1, 1_000, true).allowed);
        }
        let len = store.len();
        assert!(len <= 10_000, "{len} keys held, cap 10 000");
        assert!(len >= 5_000, "eviction keeps the shards mostly full: {len}");
        assert!(store.capacity() <= 10_000);
    }

    #[test]
    fn idle_keys_are_swept_losslessly() {
        let manual = ManualClock::new();
        let store = MemoryBackend::new().clock(Clock::manual(&manual)).build();
        let w = window(1, 1);
        let s = Subject::Text("alice".into());
        assert!(store.check(0, s.clone(), &w, 1, true).allowed);
        assert!(!store.check(0, s.clone(), &w, 1, true).allowed);
        assert_eq!(store.len(), 1);
        manual.advance(Duration::from_secs(1));
        store.sweep();
        assert_eq!(store.len(), 0);
        assert!(store.check(0, s.clone(), &w, 1, true).allowed);
        assert!(format!("{store:?}").contains("shards"));
    }

    #[test]
    fn policies_and_subjects_are_separate_buckets() {
        let store = MemoryBackend::new().build();
        let w = window(1, 1);
        let a = Subject::Ip("10.0.0.1".parse().unwrap());
        assert!(store.check_at(0, a.clone(), &w, 1, 10, true).allowed);
        assert!(!store.check_at(0, a.clone(), &w, 1, 10, true).allowed);
        assert!(store.check_at(1, a.clone(), &w, 1, 10, true).allowed);
        assert!(store.check_at(0, Subject::Global, &w, 1, 10, true).allowed);
        assert!(store.check_at(0, Subject::Unknown, &w, 1, 10, true).allowed);
    }
}
