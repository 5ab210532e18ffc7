//! Where the rate limiter and the cache keep their state: in memory (one instance, the
//! default) or in Redis (several instances sharing one truth) when `REDIS_URL` is set.
//!
//! | | no `REDIS_URL` | `REDIS_URL` (standalone or Cluster) |
//! |---|---|---|
//! | rate limiter | in-memory GCRA | Redis GCRA (one Lua round trip per decision), `RAMPART_REDIS_FAILURE_MODE` while Redis fails |
//! | cache | moka | moka L1 + Redis L2, L1 kept coherent through pub/sub; Redis down = misses |
//!
//! Every key starts with [`RedisSettings::prefix`](crate::config::RedisSettings::prefix),
//! so several applications can share one Redis.

use std::time::Duration;

use tower_rampart::{
    cache::{Cache, MemoryBackend, RedisBackend, TwoTierBackend},
    error::ConfigError,
    key::KeyBuilder,
    rate_limit,
};

use crate::config::{Config, RedisSettings, redact_url};

/// The L1 (or only) cache's size cap in bytes.
pub const MEMORY_CACHE_BYTES: u64 = 32 << 20;

/// How long an entry may stay in an instance's L1 before it is read from Redis again:
/// the staleness bound should an invalidation message be lost while the subscription
/// looks healthy (see `docs/cache.md`).
pub const L1_TTL: Duration = Duration::from_secs(10);

/// The limiter backend and the cache the server runs with.
#[derive(Debug, Clone)]
pub struct Backends {
    /// The Redis limiter backend; `None` = in memory.
    pub limiter: Option<rate_limit::RedisBackend>,
    /// The application cache (also behind the response cache layer).
    pub cache: Cache,
    /// `memory`, `redis` or `redis-cluster`, for logs and `/health/ready/`.
    pub kind: &'static str,
}

impl Backends {
    /// In-memory limiter and cache (one instance).
    ///
    /// # Panics
    ///
    /// Never: the default cache settings are valid.
    pub fn memory() -> Self {
        Self {
            limiter: None,
            cache: cache(MemoryBackend::new(MEMORY_CACHE_BYTES), "rampart-erp")
                .expect("the default cache configuration is valid"),
            kind: "memory",
        }
    }

    /// The backends `config` asks for: Redis (standalone or Cluster) when
    /// [`Config::redis_url`] is set, memory otherwise.
    ///
    /// # Errors
    ///
    /// Redis cannot be reached at start-up (the server refuses to start rather than
    /// running alone while configured to share state), or the prefix is unusable.
    pub async fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let nodes = config.redis_nodes();
        if nodes.is_empty() {
            return Ok(Self::memory());
        }
        Self::redis(&nodes, &config.redis).await
    }

    /// Redis-backed limiter and two-tier cache.
    ///
    /// # Errors
    ///
    /// As [`Backends::from_config`].
    pub async fn redis(nodes: &[String], settings: &RedisSettings) -> Result<Self, ConfigError> {
        let Some(first) = nodes.first() else {
            return Err(ConfigError::new("no Redis node URL given"));
        };
        let unreachable = |what: &str, e: &dyn std::fmt::Display| {
            let nodes: Vec<String> = nodes.iter().map(|n| redact_url(n)).collect();
            ConfigError::new(format!(
                "cannot reach Redis at {nodes:?} for the {what}: {e}; start Redis or unset REDIS_URL"
            ))
        };
        let (limiter, l2) = if settings.cluster {
            let limiter = rate_limit::RedisBackend::cluster(nodes)
                .await
                .map_err(|e| unreachable("rate limiter", &e))?;
            let l2 = RedisBackend::connect_cluster(nodes).await?;
            (limiter, l2)
        } else {
            let limiter = rate_limit::RedisBackend::connect(first)
                .await
                .map_err(|e| unreachable("rate limiter", &e))?;
            (limiter, RedisBackend::connect(first).await?)
        };
        let limiter = limiter
            .prefix(&settings.prefix)
            .timeout(settings.timeout)
            .failure_mode(settings.failure_mode);
        let two_tier = TwoTierBackend::builder(
            MemoryBackend::new(MEMORY_CACHE_BYTES),
            l2.timeout(settings.timeout),
        )
        .channel(format!("{}:cache:invalidate", settings.prefix))
        .l1_ttl(L1_TTL)
        .start()
        .await;
        Ok(Self {
            limiter: Some(limiter),
            cache: cache(two_tier, &settings.prefix)?,
            kind: if settings.cluster {
                "redis-cluster"
            } else {
                "redis"
            },
        })
    }
}

fn cache(
    backend: impl Into<tower_rampart::cache::Backend>,
    prefix: &str,
) -> Result<Cache, ConfigError> {
    Cache::builder()
        .keys(KeyBuilder::new(prefix))
        .build(backend)
}
