//! Storage backends: in memory (always) and Redis (feature `redis`).

#[cfg(feature = "redis")]
pub(crate) mod lease;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

/// How a decision treats the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Consume the cost if it fits (a normal decision).
    Decide,
    /// Only say whether the cost would fit; store nothing.
    Peek,
    /// Consume the cost whether it fits or not (the fill capped at a full bucket):
    /// a counted outcome that already happened.
    Force,
}
