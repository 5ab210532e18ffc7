//! Cache-aside with versioned tags: moka in-process, Redis shared, a coherent two-tier
//! cache, and an HTTP response cache layer.
//!
//! - [`Cache`]: typed `get`/`set`/`get_many`/`set_many`/`delete`, single-flight
//!   [`get_or_load`](Cache::get_or_load), [`invalidate_tag`](Cache::invalidate_tag).
//!   Values are any `Serialize + DeserializeOwned`, encoded with [`Postcard`] by default
//!   (pluggable [`Codec`]), zlib-compressed above a threshold. Corrupt entries are
//!   misses and are removed.
//! - Keys come from the crate's [`KeyBuilder`](crate::key::KeyBuilder)
//!   (`prefix:version:…`), namespaced by tenant ([`Cache::for_tenant`],
//!   [`Cache::for_request`]).
//! - Tags are **versioned** (as in Symfony's tag-aware cache): every entry records the
//!   versions of its tags when written, every read validates them, and invalidating a tag
//!   replaces its version. Invalidation costs O(number of tags), never a `SCAN`.
//! - Backends: [`MemoryBackend`] (moka, bounded by bytes, TTL per entry), `RedisBackend`
//!   (standalone or Cluster, one round trip per read including the tag check) and
//!   `TwoTierBackend` (moka L1 kept coherent across instances through Redis pub/sub),
//!   the last two with the `redis` feature.
//! - [`ResponseCacheLayer`]: caches `GET`/`HEAD` 200 responses with strong `ETag`s and
//!   answers `If-None-Match` with 304, following RFC 9111's shared-cache rules; never
//!   for credentialed requests (unless keyed by user) nor pages bound to a CSP nonce.
//!
//! The design, the Redis layout and the staleness bound of the two-tier backend are in
//! `docs/cache.md`.
//!
//! # Example
//!
//! ```
//! use tower_rampart::cache::{Cache, CacheOptions, MemoryBackend};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let cache = Cache::builder().build(MemoryBackend::new(8 << 20)).unwrap();
//! cache.set("answer", &42u32, &CacheOptions::new().tag("numbers")).await;
//! assert_eq!(cache.get::<u32>("answer").await, Some(42));
//! cache.invalidate_tag("numbers").await;
//! assert_eq!(cache.get::<u32>("answer").await, None);
//! # });
//! ```

mod backend;
#[allow(clippy::module_inception)]
mod cache;
mod codec;
mod entry;
mod options;
mod response;

pub use backend::Backend;
pub use backend::memory::MemoryBackend;
#[cfg(feature = "redis")]
pub use backend::redis::RedisBackend;
#[cfg(feature = "redis")]
pub use backend::two_tier::{TwoTierBackend, TwoTierBuilder};
pub use cache::{Cache, CacheBuilder, LoadError};
pub use codec::{Codec, CodecError, Json, Postcard};
#[doc(hidden)]
pub use entry::__decode_for_fuzzing;
pub use options::{CacheOptions, Ttl, TtlTiers};
pub use response::{CacheTags, ResponseCache, ResponseCacheLayer, ResponseFuture};

// The suite uses real Redis servers, so it needs the `redis` feature too.
#[cfg(all(test, feature = "redis"))]
mod tests;
