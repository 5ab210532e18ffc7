//! Storage backends: in memory (always) and Redis (feature `redis`).

#[cfg(feature = "redis")]
pub(crate) mod lease;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
