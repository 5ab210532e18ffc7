//! Hybrid token leasing for the Redis backend (opt-in, [`RedisBackend::lease`]).
//!
//! Instead of one round trip per decision, an instance reserves a *batch* of units for a
//! key in one script call (the same GCRA script, with `cost × batch`) and serves the
//! following requests of that key from the reservation, locally, until it is used up or
//! older than the lease TTL. The reservation is taken from the shared quota **before**
//! any of it is served, so leasing never admits more than the quota (no over-admission);
//! what it can do is admit *less*: units leased by one instance and not used before the
//! lease expires are lost to the others until the quota refills. When a whole batch does
//! not fit any more, the key is decided one request at a time (plain mode) for one lease
//! TTL, so the last units of a quota are exact; and once Redis has refused a key with a
//! retry delay, the instance refuses that key locally until the delay is over (nobody can
//! be admitted before it anyway).
//!
//! [`RedisBackend::lease`]: super::redis::RedisBackend::lease

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::Mutex,
    time::Duration,
};

use crate::rate_limit::gcra::Outcome;

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

#[derive(Debug)]
struct Lease {
    /// Units still reserved (0 with `plain`).
    units: u64,
    /// Clock microseconds after which the lease is dropped.
    expires: u64,
    /// The decision that took the lease (its headers, adjusted as units are used); a
    /// refusal when `base.allowed` is false (refused locally until `expires`).
    base: Outcome,
    /// Decide one request at a time until `expires`.
    plain: bool,
}

/// Lock stripes serialising the round trips of one key (single-flight per instance).
const STRIPES: usize = 64;

/// The reservations of one limiter, bounded in keys.
#[derive(Debug)]
pub(crate) struct Leases {
    config: LeaseConfig,
    max_keys: usize,
    map: Mutex<HashMap<String, Lease>>,
    stripes: Box<[tokio::sync::Mutex<()>]>,
    hasher: RandomState,
}

impl Leases {
    pub(crate) fn new(config: LeaseConfig, max_keys: usize) -> Self {
        Self {
            config,
            max_keys: max_keys.max(1),
            map: Mutex::new(HashMap::new()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Held while this instance asks Redis about `key`, so that concurrent requests of
    /// the key wait for that answer (and its reservation) instead of each asking.
    pub(crate) async fn flight(&self, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let i = usize::try_from(self.hasher.hash_one(key) % STRIPES as u64).unwrap_or(0);
        self.stripes[i].lock().await
    }

    /// Units reserved per lease for a request of `cost`.
    pub(crate) fn batch_cost(&self, cost: u64) -> u64 {
        cost.saturating_mul(u64::from(self.config.batch))
    }

    fn ttl_us(&self) -> u64 {
        u64::try_from(self.config.ttl.as_micros()).unwrap_or(u64::MAX / 4)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Serves a request of `cost` on `key` from a live reservation, if any.
    pub(crate) fn take(&self, key: &str, cost: u64, now: u64) -> Take {
        let mut map = self.lock();
        let Some(lease) = map.get_mut(key) else {
            return Take::Lease;
        };
        if lease.expires <= now {
            map.remove(key);
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
        if lease.units < cost {
            map.remove(key);
            return Take::Lease;
        }
        lease.units -= cost;
        Take::Served(with_reserved(lease.base, lease.units, cost))
    }

    /// Records a reservation of `units` more (beyond the request of `cost` that took
    /// it); returns that request's answer, the reservation counted as available.
    pub(crate) fn store(
        &self,
        key: &str,
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
    pub(crate) fn plain(&self, key: &str, now: u64, single: Outcome) {
        let ttl = if single.allowed {
            self.ttl_us()
        } else {
            single.retry_after.min(self.ttl_us())
        };
        if ttl > 0 {
            self.insert(key, now, single, 0, true, ttl);
        }
    }

    fn insert(&self, key: &str, now: u64, base: Outcome, units: u64, plain: bool, ttl: u64) {
        let mut map = self.lock();
        if map.len() >= self.max_keys && !map.contains_key(key) {
            map.retain(|_, l| l.expires > now);
            if map.len() >= self.max_keys {
                // Full of live leases: this key is decided without one.
                return;
            }
        }
        map.insert(
            key.to_owned(),
            Lease {
                units,
                expires: now.saturating_add(ttl),
                base,
                plain,
            },
        );
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    fn remove_for_test(&self, key: &str) {
        self.lock().remove(key);
    }
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

    fn outcome(remaining: u64) -> Outcome {
        let mut o = Outcome {
            allowed: true,
            retry_after: 0,
            windows: [WindowState::default(); crate::rate_limit::gcra::MAX_WINDOWS],
            len: 1,
        };
        o.windows[0].remaining = remaining;
        o
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
        assert!(matches!(leases.take("a", 1, 0), Take::Lease));
        leases.store("a", 3, 1, 0, outcome(10));
        for left in [2, 1, 0] {
            match leases.take("a", 1, 1) {
                Take::Served(o) => assert_eq!(o.windows()[0].remaining, 10 + left),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(leases.take("a", 1, 1), Take::Lease), "used up");
        leases.store("a", 3, 1, 0, outcome(10));
        assert!(
            matches!(leases.take("a", 1, 10_000), Take::Lease),
            "expired after the TTL"
        );
        leases.plain("b", 0, outcome(0));
        assert!(matches!(leases.take("b", 1, 5), Take::Plain));
        let mut refused = outcome(0);
        refused.allowed = false;
        refused.retry_after = 3_000;
        leases.plain("r", 0, refused);
        match leases.take("r", 1, 1_000) {
            Take::Served(o) => assert!(!o.allowed && o.retry_after == 2_000, "{o:?}"),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(leases.take("r", 1, 3_000), Take::Lease),
            "delay over"
        );
        leases.remove_for_test("r");
        leases.store("c", 3, 1, 0, outcome(1));
        leases.store("d", 3, 1, 0, outcome(1));
        assert!(leases.len() <= 2, "bounded");
        leases.store("e", 3, 1, 20_000, outcome(1));
        assert!(
            matches!(leases.take("e", 1, 20_001), Take::Served(_)),
            "expired ones make room"
        );
    }
}
