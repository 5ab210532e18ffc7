//! Storage backends: in memory (always) and Redis (feature `redis`).

pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
