//! Hybrid token leasing for the Redis backend (opt-in, [`RedisBackend::lease`]).
//!
//! Instead of one round trip per decision, an instance reserves a *batch* of units for a
//! key in one script call (the same GCRA script, with `cost × batch`) and serves the
//! following requests of that key from the reservation, locally, until it is used up or
//! older than the lease TTL. The reservation is taken from the shared quota **before**
//! any of it is served, so leasing never admits more than the quota (no over-admission);
//! what it can do is admit *less*: units leased by one instance and not used before the
//! lease expires are lost to the others until the quota refills. A reserved unit is
//! served only while the shared bucket still holds it (it leaks out at the window's rate,
//! refilling the bucket for the others): no window admits more across instances than
//! Redis alone would admit in it. When a whole batch does
//! not fit any more, the key is decided one request at a time (plain mode) for one lease
//! TTL, so the last units of a quota are exact; and once Redis has refused a key with a
//! retry delay, the instance refuses that key locally until the delay is over (nobody can
//! be admitted before it anyway).
//!
//! [`RedisBackend::lease`]: super::redis::RedisBackend::lease

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use super::memory::{IdHasher, room_for, shard_index};
use crate::rate_limit::{
    gcra::{Outcome, Window},
    policy::Subject,
};

/// How leasing is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaseConfig {
    /// Requests reserved per round trip.
    pub(crate) batch: u32,
    /// The longest a reservation is served from.
    pub(crate) ttl: Duration,
}

/// What the lease table says about a key.
#[derive(Debug)]
pub(crate) enum Take {
    /// Served from this instance's reservation (or refused, within a known retry delay).
    Served(Outcome),
    /// No batch fits at the moment: decide this request alone.
    Plain,
    /// No reservation: try to lease a batch.
    Lease,
}

/// Which lease a decision is about: its policy and subject, hashed once per decision
/// (no Redis key is built for a request a reservation serves).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseKey<'a> {
    hash: u64,
    policy: usize,
    subject: &'a Subject,
}

#[derive(Debug)]
struct Lease {
    /// Whose lease this is: the table is keyed by the hash alone, and a lease whose
    /// policy and subject differ from a lookup's (a hash collision) is not the lookup's.
    policy: usize,
    subject: Subject,
    /// Units still reserved (0 with `plain`).
    units: u64,
    /// Clock microseconds after which the lease is dropped.
    expires: u64,
    /// Clock microseconds when the reservation was taken.
    taken: u64,
    /// The decision that took the lease (its headers, adjusted as units are used); a
    /// refusal when `base.allowed` is false (refused locally until `expires`).
    base: Outcome,
    /// Decide one request at a time until `expires`.
    plain: bool,
}

/// Lock stripes serialising the round trips of one key (single-flight per instance).
const STRIPES: usize = 64;

type Shard = HashMap<u64, Lease, BuildHasherDefault<IdHasher>>;

/// The reservations of one limiter, bounded in keys: sharded maps keyed by a foldhash of
/// `(policy, subject)` (randomly seeded per limiter, like the in-memory backend's).
#[derive(Debug)]
pub(crate) struct Leases {
    config: LeaseConfig,
    per_shard: usize,
    shards: Box<[Mutex<Shard>]>,
    stripes: Box<[tokio::sync::Mutex<()>]>,
    hasher: foldhash::fast::RandomState,
}

impl Leases {
    pub(crate) fn new(config: LeaseConfig, max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        // Small tables keep one shard: their cap stays exact.
        let shards = (max_keys / 64).clamp(1, 16);
        Self {
            config,
            per_shard: max_keys / shards,
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The lease of `subject` under the policy of index `policy`.
    pub(crate) fn key<'a>(&self, policy: usize, subject: &'a Subject) -> LeaseKey<'a> {
        LeaseKey {
            hash: self.hasher.hash_one((policy, subject)),
            policy,
            subject,
        }
    }

    /// Held while this instance asks Redis about `key`, so that concurrent requests of
    /// the key wait for that answer (and its reservation) instead of each asking.
    pub(crate) async fn flight(&self, key: &LeaseKey<'_>) -> tokio::sync::MutexGuard<'_, ()> {
        // Bits neither the shard (32..) nor the map's buckets (low bits) use.
        let i = usize::try_from((key.hash >> 48) % STRIPES as u64).unwrap_or(0);
        self.stripes[i].lock().await
    }

    /// Units reserved per lease for a request of `cost`.
    pub(crate) fn batch_cost(&self, cost: u64) -> u64 {
        cost.saturating_mul(u64::from(self.config.batch))
    }

    fn ttl_us(&self) -> u64 {
        u64::try_from(self.config.ttl.as_micros()).unwrap_or(u64::MAX / 4)
    }

    fn shard(&self, key: &LeaseKey<'_>) -> MutexGuard<'_, Shard> {
        self.shards[shard_index(key.hash, self.shards.len())]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Serves a request of `cost` on `key` from a live reservation, if any.
    ///
    /// A reserved unit is served only while it is still in the shared bucket: the
    /// bucket leaks (refills for the other instances) from the bottom, one unit per
    /// `interval` of each of the policy's `windows`, and a reservation sits on its top
    /// (`base`'s `reset`: the bucket's fill when it was taken). Units that have leaked
    /// out are dropped instead of served, so every admission, leased or not, is a unit
    /// Redis counts as in use at that moment: leasing never admits more in any window
    /// than Redis alone would.
    pub(crate) fn take(&self, key: &LeaseKey<'_>, cost: u64, now: u64, windows: &[Window]) -> Take {
        let mut map = self.shard(key);
        let Some(lease) = map.get_mut(&key.hash) else {
            return Take::Lease;
        };
        if lease.policy != key.policy || lease.subject != *key.subject {
            // Another key with the same hash: not this key's lease.
            return Take::Lease;
        }
        if lease.expires <= now {
            map.remove(&key.hash);
            return Take::Lease;
        }
        if !lease.base.allowed {
            let mut out = lease.base;
            out.retry_after = lease.expires - now;
            return Take::Served(out);
        }
        if lease.plain {
            return Take::Plain;
        }
        // Unspent units are the reservation's top ones; those that leaked are gone.
        lease.units = lease.units.min(still_held(lease, now, windows));
        if lease.units < cost {
            map.remove(&key.hash);
            return Take::Lease;
        }
        lease.units -= cost;
        Take::Served(with_reserved(lease.base, lease.units, cost))
    }

    /// Records a reservation of `units` more (beyond the request of `cost` that took
    /// it); returns that request's answer, the reservation counted as available.
    pub(crate) fn store(
        &self,
        key: &LeaseKey<'_>,
        units: u64,
        cost: u64,
        now: u64,
        base: Outcome,
    ) -> Outcome {
        self.insert(key, now, base, units, false, self.ttl_us());
        with_reserved(base, units, cost)
    }

    /// Records that no batch fits on `key` for now: `single` is the answer to this
    /// request alone. A refusal is repeated locally until its retry delay is over.
    pub(crate) fn plain(&self, key: &LeaseKey<'_>, now: u64, single: Outcome) {
        let ttl = if single.allowed {
            self.ttl_us()
        } else {
            single.retry_after.min(self.ttl_us())
        };
        if ttl > 0 {
            self.insert(key, now, single, 0, true, ttl);
        }
    }

    /// Whether a reservation of `key` could be kept now (making room by dropping expired
    /// ones): reserving one that [`store`](Self::store) would have to drop loses it.
    pub(crate) fn has_room(&self, key: &LeaseKey<'_>, now: u64) -> bool {
        room_for(&mut self.shard(key), key.hash, self.per_shard, |l| {
            l.expires > now
        })
    }

    fn insert(
        &self,
        key: &LeaseKey<'_>,
        now: u64,
        base: Outcome,
        units: u64,
        plain: bool,
        ttl: u64,
    ) {
        let mut map = self.shard(key);
        if !room_for(&mut map, key.hash, self.per_shard, |l| l.expires > now) {
            // Full of live leases: this key is decided without one.
            return;
        }
        map.insert(
            key.hash,
            Lease {
                policy: key.policy,
                subject: key.subject.clone(),
                units,
                expires: now.saturating_add(ttl),
                taken: now,
                base,
                plain,
            },
        );
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        super::memory::total_len(&self.shards)
    }

    #[cfg(test)]
    fn remove_for_test(&self, key: &LeaseKey<'_>) {
        self.shard(key).remove(&key.hash);
    }
}

/// How many units of `lease`'s reservation are still in the shared bucket at `now`: in
/// each window, the part of the bucket above what has leaked since it was taken.
fn still_held(lease: &Lease, now: u64, windows: &[Window]) -> u64 {
    let leaked = now.saturating_sub(lease.taken);
    lease
        .base
        .windows()
        .iter()
        .zip(windows)
        .map(|(state, w)| state.reset.saturating_sub(leaked) / w.interval.max(1))
        .min()
        .unwrap_or(0)
}

/// `base` with the reservation's unused `units` (requests of `cost`) counted as still
/// available to this instance.
fn with_reserved(mut base: Outcome, units: u64, cost: u64) -> Outcome {
    let left = units / cost.max(1);
    for w in &mut base.windows[..base.len] {
        w.remaining = w.remaining.saturating_add(left);
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::gcra::WindowState;

    /// A window of 1 µs intervals: with `reset` below, reservations do not leak within
    /// these tests' times unless a test says so.
    const W: [Window; 1] = [Window {
        interval: 1,
        burst: 1_000_000,
    }];

    fn outcome(remaining: u64) -> Outcome {
        let mut o = Outcome {
            allowed: true,
            retry_after: 0,
            windows: [WindowState::default(); crate::rate_limit::gcra::MAX_WINDOWS],
            len: 1,
        };
        o.windows[0].remaining = remaining;
        o.windows[0].reset = 1_000_000;
        o
    }

    /// Units that have leaked out of the shared bucket are not served: a batch of 5 on
    /// a 10-per-second window, taken on an empty bucket (fill 500 ms; 4 units kept),
    /// holds units while the leak line (one per 100 ms from the bottom) is below them.
    #[test]
    fn reserved_units_leak_with_the_bucket() {
        let leases = Leases::new(
            LeaseConfig {
                batch: 5,
                ttl: Duration::from_secs(10),
            },
            8,
        );
        let w = [Window {
            interval: 100_000,
            burst: 10,
        }];
        let subject = Subject::Text("a".into());
        let a = leases.key(0, &subject);
        let mut base = outcome(5);
        base.windows[0].reset = 500_000;
        leases.store(&a, 4, 1, 0, base);
        assert!(matches!(leases.take(&a, 1, 50_000, &w), Take::Served(_)));
        // At 300 ms the bucket still holds 2 units of it (the top ones): both usable.
        assert!(matches!(leases.take(&a, 1, 300_000, &w), Take::Served(_)));
        assert!(matches!(leases.take(&a, 1, 320_000, &w), Take::Served(_)));
        leases.store(&a, 4, 1, 0, base);
        assert!(
            matches!(leases.take(&a, 1, 420_000, &w), Take::Lease),
            "3 of 4 units leaked, the 4th is partly out: not served"
        );
        leases.store(&a, 4, 1, 1_000_000, base);
        assert!(
            matches!(leases.take(&a, 1, 1_500_000, &w), Take::Lease),
            "all leaked after the fill time"
        );
    }

    #[test]
    fn reservations_are_served_then_expire_and_stay_bounded() {
        let leases = Leases::new(
            LeaseConfig {
                batch: 4,
                ttl: Duration::from_millis(10),
            },
            2,
        );
        assert_eq!(leases.batch_cost(2), 8);
        let subjects: Vec<Subject> = ["a", "b", "r", "c", "d", "e"]
            .into_iter()
            .map(|s| Subject::Text(s.into()))
            .collect();
        let [a, b, r, c, d, e] = [0, 1, 2, 3, 4, 5].map(|i| leases.key(0, &subjects[i]));
        assert!(matches!(leases.take(&a, 1, 0, &W), Take::Lease));
        leases.store(&a, 3, 1, 0, outcome(10));
        for left in [2, 1, 0] {
            match leases.take(&a, 1, 1, &W) {
                Take::Served(o) => assert_eq!(o.windows()[0].remaining, 10 + left),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(leases.take(&a, 1, 1, &W), Take::Lease), "used up");
        leases.store(&a, 3, 1, 0, outcome(10));
        assert!(
            matches!(leases.take(&a, 1, 10_000, &W), Take::Lease),
            "expired after the TTL"
        );
        leases.plain(&b, 0, outcome(0));
        assert!(matches!(leases.take(&b, 1, 5, &W), Take::Plain));
        let mut refused = outcome(0);
        refused.allowed = false;
        refused.retry_after = 3_000;
        leases.plain(&r, 0, refused);
        match leases.take(&r, 1, 1_000, &W) {
            Take::Served(o) => assert!(!o.allowed && o.retry_after == 2_000, "{o:?}"),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(leases.take(&r, 1, 3_000, &W), Take::Lease),
            "delay over"
        );
        leases.remove_for_test(&r);
        leases.store(&c, 3, 1, 0, outcome(1));
        leases.store(&d, 3, 1, 0, outcome(1));
        assert!(leases.len() <= 2, "bounded");
        leases.store(&e, 3, 1, 20_000, outcome(1));
        assert!(
            matches!(leases.take(&e, 1, 20_001, &W), Take::Served(_)),
            "expired ones make room"
        );
    }

    #[test]
    fn a_lease_answers_only_its_own_policy_and_subject() {
        let leases = Leases::new(
            LeaseConfig {
                batch: 4,
                ttl: Duration::from_secs(1),
            },
            100,
        );
        let (alice, bob) = (Subject::Text("alice".into()), Subject::Text("bob".into()));
        leases.store(&leases.key(0, &alice), 3, 1, 0, outcome(5));
        assert!(matches!(
            leases.take(&leases.key(0, &alice), 1, 1, &W),
            Take::Served(_)
        ));
        assert!(matches!(
            leases.take(&leases.key(1, &alice), 1, 1, &W),
            Take::Lease
        ));
        assert!(matches!(
            leases.take(&leases.key(0, &bob), 1, 1, &W),
            Take::Lease
        ));
        // A forged collision: bob's lookup with alice's hash is still not alice's lease.
        let forged = LeaseKey {
            subject: &bob,
            ..leases.key(0, &alice)
        };
        assert!(matches!(leases.take(&forged, 1, 1, &W), Take::Lease));
        assert!(matches!(
            leases.take(&leases.key(0, &alice), 1, 1, &W),
            Take::Served(_)
        ));
    }

    #[test]
    fn sharded_tables_stay_under_the_cap() {
        let leases = Leases::new(
            LeaseConfig {
                batch: 4,
                ttl: Duration::from_secs(1),
            },
            1024,
        );
        assert_eq!(leases.shards.len(), 16);
        let subjects: Vec<Subject> = (0..5000u32)
            .map(|i| Subject::Ip(std::net::IpAddr::from(i.to_be_bytes())))
            .collect();
        let mut refused_room = 0;
        for subject in &subjects {
            let key = leases.key(0, subject);
            if !leases.has_room(&key, 0) {
                refused_room += 1;
            }
            leases.store(&key, 3, 1, 0, outcome(5));
        }
        assert!(leases.len() <= 1024, "{} leases", leases.len());
        assert!(leases.len() >= 900, "shards fill evenly: {}", leases.len());
        assert!(refused_room >= 5000 - 1024, "{refused_room}");
        // A key refused for lack of room gets it once the others have expired.
        let late = subjects
            .iter()
            .map(|s| leases.key(0, s))
            .find(|k| !leases.has_room(k, 0))
            .unwrap();
        assert!(leases.has_room(&late, 2_000_000));
    }
}
