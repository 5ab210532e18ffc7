//! The Generic Cell Rate Algorithm, shared by both backends.
//!
//! State per window is one number, the *theoretical arrival time* (TAT) in microseconds.
//! The Redis Lua script performs exactly the same integer arithmetic (every value stays
//! below 2^53, so Lua's doubles are exact), so both backends answer identically for the
//! same sequence of `(now, cost)`.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// The most windows one policy may have.
pub(crate) const MAX_WINDOWS: usize = 4;

/// The largest `burst × interval` accepted, in microseconds (about 3 years): keeps every
/// value the Lua script handles exact in a double.
pub(crate) const MAX_TOLERANCE_US: u64 = 100_000_000_000_000;

/// One window of a policy, ready for the algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// Microseconds between two requests at the sustained rate (period / count).
    pub(crate) interval: u64,
    /// How many requests may arrive at once.
    pub(crate) burst: u64,
}

/// The state of one window after a decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WindowState {
    /// Requests still allowed right now.
    pub(crate) remaining: u64,
    /// Microseconds until the window is back to its full burst.
    pub(crate) reset: u64,
}

/// The answer for one policy (all its windows, atomically).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) allowed: bool,
    /// Microseconds until the request would be allowed (0 when allowed).
    pub(crate) retry_after: u64,
    pub(crate) windows: [WindowState; MAX_WINDOWS],
    pub(crate) len: usize,
}

impl Outcome {
    pub(crate) fn windows(&self) -> &[WindowState] {
        &self.windows[..self.len]
    }
}

/// Decides one request of `cost` at `now` against `windows`, updating `tats` only when
/// every window allows it. `tats[i] == 0` means "no state" (a fresh key).
pub(crate) fn decide(tats: &mut [u64], now: u64, windows: &[Window], cost: u64) -> Outcome {
    decide_with(tats, now, windows, cost, true)
}

/// [`decide`], computing the windows' states (remaining, reset: a division each) only
/// when `states` (someone renders headers from them); otherwise they stay zero.
#[inline]
pub(crate) fn decide_with(
    tats: &mut [u64],
    now: u64,
    windows: &[Window],
    cost: u64,
    states: bool,
) -> Outcome {
    let retry_after = refusal(tats, now, windows, cost);
    let mut out = Outcome {
        allowed: retry_after == 0,
        retry_after,
        windows: [WindowState::default(); MAX_WINDOWS],
        len: windows.len(),
    };
    if !states {
        return out;
    }
    for (i, w) in windows.iter().enumerate() {
        // The stored TAT (the new one when allowed, never below `now` then).
        let used = tats[i].max(now) - now;
        out.windows[i] = WindowState {
            remaining: (w.burst * w.interval).saturating_sub(used) / w.interval,
            reset: used,
        };
    }
    out
}

/// The algorithm itself: decides one request of `cost` at `now` against `windows` and
/// returns 0 when it is allowed (`tats` then hold the new arrival times) or the
/// microseconds until it would be (`tats` untouched). The hot path of the in-memory
/// backend without headers, which needs no more than this number.
#[inline]
pub(crate) fn refusal(tats: &mut [u64], now: u64, windows: &[Window], cost: u64) -> u64 {
    let mut retry_after = 0;
    let mut new_tats = [0u64; MAX_WINDOWS];
    for ((new, tat), w) in new_tats.iter_mut().zip(&*tats).zip(windows) {
        let tat = (*tat).max(now);
        let tolerance = w.burst * w.interval;
        // Saturating: a lease's batch cost may be absurd (it is refused, never stored).
        *new = tat.saturating_add(cost.saturating_mul(w.interval));
        let allow_at = new.saturating_sub(tolerance);
        if allow_at > now {
            retry_after = retry_after.max(allow_at - now);
        }
    }
    if retry_after == 0 {
        let n = windows.len().min(tats.len());
        tats[..n].copy_from_slice(&new_tats[..n]);
    }
    retry_after
}

/// Where the in-memory backend reads the time from.
///
/// - [`Clock::quanta`]: the CPU's timestamp counter through
///   [quanta](https://docs.rs/quanta) (monotonic, calibrated against the system clock),
///   a few nanoseconds per read instead of a `clock_gettime` call: the clock
///   `tower_governor` uses too.
/// - [`Clock::tokio`]: tokio's clock, which `tokio::time::pause()` and `advance()` drive
///   in tests.
/// - [`Clock::manual`]: a [`ManualClock`] moved by hand.
///
/// By default ([`Clock::default`]), `quanta`, unless the clock is made inside a tokio
/// runtime whose time is paused (a `#[tokio::test(start_paused = true)]`), where it is
/// tokio's: tests that pause time before building the layer need no configuration. A test
/// that pauses time *after* building the layer sets [`Clock::tokio`] itself.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::rate_limit::{Clock, ManualClock};
///
/// let manual = ManualClock::new();
/// let clock = Clock::manual(&manual);
/// let t0 = clock.now();
/// manual.advance(Duration::from_secs(2));
/// assert_eq!(clock.now() - t0, Duration::from_secs(2));
/// ```
#[derive(Clone)]
pub struct Clock(ClockInner);

#[derive(Clone)]
enum ClockInner {
    /// Read through a clock instance (`quanta::Instant::now` first looks for a
    /// thread-local mock clock, which a request has no use for), as raw counter values
    /// from the origin: one scaling per read, straight to nanoseconds.
    Quanta(quanta::Clock, u64),
    Tokio(tokio::time::Instant),
    Manual(ManualClock),
}

impl Clock {
    /// The CPU's timestamp counter through quanta (falls back to the OS's monotonic clock
    /// where the counter is not reliable). The first use in a process calibrates it
    /// (quanta documents up to 200 ms); building a layer does that, not a request.
    pub fn quanta() -> Self {
        let clock = quanta::Clock::new();
        let start = clock.raw();
        Self(ClockInner::Quanta(clock, start))
    }

    /// tokio's monotonic clock (honours `tokio::time::pause()` in tests).
    pub fn tokio() -> Self {
        Self(ClockInner::Tokio(tokio::time::Instant::now()))
    }

    /// Whether this thread is in a tokio runtime whose time is paused: a paused clock does
    /// not move on its own, so it stands still while real time passes (auto-advance only
    /// happens while the runtime is idle, never during this busy wait).
    fn tokio_time_is_paused() -> bool {
        if tokio::runtime::Handle::try_current().is_err() {
            return false;
        }
        let before = tokio::time::Instant::now();
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_micros(2) {
            std::hint::spin_loop();
        }
        tokio::time::Instant::now() == before
    }

    /// A clock that only moves when `manual` is advanced.
    pub fn manual(manual: &ManualClock) -> Self {
        Self(ClockInner::Manual(manual.clone()))
    }

    /// The time elapsed since the clock's origin.
    pub fn now(&self) -> Duration {
        Duration::from_micros(self.now_us())
    }

    /// Microseconds since the origin, starting at 1 (0 means "no state").
    pub(crate) fn now_us(&self) -> u64 {
        match &self.0 {
            ClockInner::Quanta(clock, start) => {
                clock.delta_as_nanos(*start, clock.raw()) / 1000 + 1
            }
            ClockInner::Tokio(start) => {
                u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX / 4) + 1
            }
            ClockInner::Manual(m) => m.0.load(Ordering::Relaxed) + 1,
        }
    }
}

impl Default for Clock {
    /// [`Clock::quanta`], or [`Clock::tokio`] inside a runtime whose time is paused.
    fn default() -> Self {
        if Self::tokio_time_is_paused() {
            Self::tokio()
        } else {
            Self::quanta()
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ClockInner::Quanta(..) => f.write_str("Clock::Quanta"),
            ClockInner::Tokio(_) => f.write_str("Clock::Tokio"),
            ClockInner::Manual(m) => write!(f, "Clock::Manual({:?})", m.get()),
        }
    }
}

/// A clock moved by hand, for tests and simulations. Clones share the time.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::rate_limit::ManualClock;
///
/// let clock = ManualClock::new();
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.get(), Duration::from_millis(1500));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let us = u64::try_from(by.as_micros()).unwrap_or(u64::MAX / 4);
        self.0.fetch_add(us, Ordering::Relaxed);
    }

    /// The time since the clock was created.
    pub fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    #[test]
    fn the_default_clock_is_quanta_unless_tokio_time_is_paused() {
        assert_eq!(format!("{:?}", Clock::default()), "Clock::Quanta");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(format!("{:?}", Clock::default()), "Clock::Quanta");
            tokio::time::pause();
            let clock = Clock::default();
            assert_eq!(format!("{clock:?}"), "Clock::Tokio");
            let t0 = clock.now();
            tokio::time::advance(Duration::from_secs(3)).await;
            assert_eq!(clock.now() - t0, Duration::from_secs(3));
        });
        let q = Clock::quanta();
        let t0 = q.now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(
            q.now() - t0 >= Duration::from_millis(1),
            "quanta moves with real time"
        );
    }

    #[test]
    fn burst_then_sustained_rate() {
        let w = [Window {
            interval: 12 * SEC,
            burst: 5,
        }];
        let mut tats = [0u64; 1];
        let now = 100 * SEC;
        for i in 0..5 {
            let o = decide(&mut tats, now, &w, 1);
            assert!(o.allowed, "request {i}");
            assert_eq!(o.windows()[0].remaining, 4 - i);
        }
        let o = decide(&mut tats, now, &w, 1);
        assert!(!o.allowed);
        assert_eq!(o.retry_after, 12 * SEC);
        assert_eq!(o.windows()[0].remaining, 0);
        assert_eq!(o.windows()[0].reset, 60 * SEC);
        assert!(!decide(&mut tats, now + 12 * SEC - 1, &w, 1).allowed);
        assert!(decide(&mut tats, now + 12 * SEC, &w, 1).allowed);
    }

    /// 1/s with a burst of 2, and 1 per 10 s with a burst of 3.
    fn two_windows() -> [Window; 2] {
        [
            Window {
                interval: SEC,
                burst: 2,
            },
            Window {
                interval: 10 * SEC,
                burst: 3,
            },
        ]
    }

    #[test]
    fn windows_are_all_or_nothing() {
        let w = two_windows();
        let mut tats = [0u64; 2];
        let now = SEC;
        assert!(decide(&mut tats, now, &w, 1).allowed);
        assert!(decide(&mut tats, now, &w, 1).allowed);
        let before = tats;
        let o = decide(&mut tats, now, &w, 1);
        assert!(!o.allowed);
        assert_eq!(tats, before, "a rejection changes no window");
        // After 2 s the short window is free, the long one has one slot left.
        let o = decide(&mut tats, now + 2 * SEC, &w, 1);
        assert!(o.allowed);
        assert_eq!(o.windows()[1].remaining, 0);
        assert!(!decide(&mut tats, now + 4 * SEC, &w, 1).allowed);
    }

    #[test]
    fn without_states_the_decision_and_the_state_are_the_same() {
        let w = two_windows();
        let (mut full, mut lean, mut bare) = ([0u64; 2], [0u64; 2], [0u64; 2]);
        for i in 0..40u64 {
            let now = SEC + i * 700_000;
            let a = decide(&mut full, now, &w, 1);
            let b = decide_with(&mut lean, now, &w, 1, false);
            let c = refusal(&mut bare, now, &w, 1);
            assert_eq!(
                (a.allowed, a.retry_after),
                (b.allowed, b.retry_after),
                "{i}"
            );
            assert_eq!((a.allowed, a.retry_after), (c == 0, c), "{i}");
            assert_eq!(full, lean, "{i}");
            assert_eq!(full, bare, "{i}");
            assert!(b.windows().iter().all(|s| *s == WindowState::default()));
        }
    }

    #[test]
    fn cost_counts_several_units() {
        let w = [Window {
            interval: SEC,
            burst: 10,
        }];
        let mut tats = [0u64; 1];
        assert!(decide(&mut tats, 1, &w, 4).allowed);
        assert!(decide(&mut tats, 1, &w, 4).allowed);
        let o = decide(&mut tats, 1, &w, 4);
        assert!(!o.allowed);
        assert_eq!(o.windows()[0].remaining, 2);
        assert_eq!(o.retry_after, 2 * SEC);
    }
}
