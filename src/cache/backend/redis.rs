//! The Redis backend: standalone (`ConnectionManager`) or Cluster (`cluster_async`).
//!
//! # Layout
//!
//! Every key of a namespace (global, or one tenant) and bucket shares one Cluster hash
//! tag, `{prefix:version:t:<tenant>:<bucket>}`:
//!
//! - entry: `{…}:k:<escaped key>`, a string in the stored-entry format (`entry.rs`);
//! - tag version: `{…}:g:<escaped tag>`, a random decimal `u64`.
//!
//! An entry's bucket is a stable hash of its key; a tag has one version key per bucket.
//! So the entry and the versions of its tags are always in the **same slot**, and a read
//! is one `EVALSHA` (one round trip, on Cluster too) that fetches the entry, checks each
//! recorded tag version and deletes the entry if one differs. Invalidating a tag deletes
//! its version key in each bucket: one `DEL` standalone, `buckets` (16 by default)
//! concurrent `DEL`s on Cluster, whatever the number of entries. A missing version
//! (invalidated or evicted) never matches, so eviction yields misses, not stale data.

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use redis::{
    Cmd, RedisFuture, Script, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};

use super::{Backend, BoxFuture, Fetched, Loc, Namespace, Put, REDIS, Store, count, fresh_version};
use crate::{cache::entry, error::ConfigError};

/// KEYS[1] entry; ARGV[1] tag-key prefix, ARGV[2] ttl ms, ARGV[3] n wanted tags,
/// ARGV[4..4+n) names, ARGV[4+n..4+2n) fresh versions.
/// Returns {entry or false, pttl, version…}.
const READ: &str = r"
local raw = redis.call('GET', KEYS[1])
local pttl = 0
if raw then
  local ok = string.sub(raw, 1, 4) == 'rc1\n'
  local pos = 5
  while ok do
    local nl = string.find(raw, '\n', pos, true)
    if not nl then ok = false break end
    if nl == pos then break end
    local sp = string.find(raw, ' ', pos, true)
    if not sp or sp > nl then ok = false break end
    local cur = redis.call('GET', ARGV[1] .. string.sub(raw, pos, sp - 1))
    if cur ~= string.sub(raw, sp + 1, nl - 1) then ok = false break end
    pos = nl + 1
  end
  if ok then
    pttl = redis.call('PTTL', KEYS[1])
  else
    redis.call('DEL', KEYS[1])
    raw = false
  end
end
local out = {raw, pttl}
local n = tonumber(ARGV[3])
local ttl = tonumber(ARGV[2])
for i = 1, n do
  local k = ARGV[1] .. ARGV[3 + i]
  local v = redis.call('GET', k)
  if not v then
    v = ARGV[3 + n + i]
    redis.call('SET', k, v, 'PX', ttl)
  elseif redis.call('PTTL', k) < ttl then
    redis.call('PEXPIRE', k, ttl)
  end
  out[2 + i] = v
end
return out
";

/// KEYS[1] entry; ARGV[1] tag-key prefix, ARGV[2] ttl ms, ARGV[3] body, ARGV[4] n,
/// then n triples (name, expected version or '', fresh version). Returns 1 or 0.
const WRITE: &str = r"
local ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
local header = {'rc1\n'}
for i = 0, n - 1 do
  local name = ARGV[5 + 3 * i]
  local expected = ARGV[6 + 3 * i]
  local k = ARGV[1] .. name
  local cur = redis.call('GET', k)
  if expected ~= '' then
    if cur ~= expected then return 0 end
  elseif not cur then
    cur = ARGV[7 + 3 * i]
    redis.call('SET', k, cur, 'PX', ttl)
  end
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
  header[#header + 1] = name .. ' ' .. cur .. '\n'
end
header[#header + 1] = '\n'
redis.call('SET', KEYS[1], table.concat(header) .. ARGV[3], 'PX', ttl)
return 1
";

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

pub(crate) struct Redis {
    conn: Conn,
    timeout: Duration,
    buckets: u16,
    read: Script,
    write: Script,
    /// Clients for pub/sub (one per node on Cluster), used by the two-tier backend.
    pub(crate) pubsub: Vec<redis::Client>,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field(
                "mode",
                &match self.conn {
                    Conn::Single(_) => "standalone",
                    Conn::Cluster(_) => "cluster",
                },
            )
            .field("timeout", &self.timeout)
            .field("buckets", &self.buckets)
            .finish_non_exhaustive()
    }
}

fn failed(op: &str, err: &dyn fmt::Display) {
    count(&REDIS.backend_errors);
    tracing::warn!(op, error = %err, "redis cache operation failed; treated as a miss");
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Redis {
    async fn run<T: redis::FromRedisValue>(
        &self,
        op: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                failed(op, &e);
                None
            }
            Err(_) => {
                failed(op, &"timed out");
                None
            }
        }
    }

    pub(crate) async fn publish(&self, channel: &str, message: &str) -> bool {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PUBLISH").arg(channel).arg(message).clone();
        self.run::<i64>("publish", async move { cmd.query_async(&mut conn).await })
            .await
            .is_some()
    }

    async fn fetch(&self, loc: &Loc, want: &[&str], ttl: Duration) -> Fetched {
        let mut inv = self.read.key(&loc.key);
        inv.arg(&*loc.tag_prefix).arg(millis(ttl)).arg(want.len());
        for t in want {
            inv.arg(*t);
        }
        for _ in want {
            inv.arg(fresh_version().to_string());
        }
        let mut conn = self.conn.clone();
        let reply: Option<Vec<Value>> = self
            .run("read", async move { inv.invoke_async(&mut conn).await })
            .await;
        let Some(reply) = reply else {
            return Fetched::default();
        };
        let mut it = reply.into_iter();
        let raw = match it.next() {
            Some(Value::BulkString(b)) => Some(Bytes::from(b)),
            _ => None,
        };
        let pttl = match it.next() {
            Some(Value::Int(ms)) if ms > 0 => u64::try_from(ms).ok().map(Duration::from_millis),
            _ => None,
        };
        let versions: Vec<u64> = it
            .filter_map(|v| match v {
                Value::BulkString(b) => std::str::from_utf8(&b).ok()?.parse().ok(),
                _ => None,
            })
            .collect();
        let mut fetched = Fetched {
            versions: if versions.len() == want.len() {
                versions
            } else {
                Vec::new()
            },
            ttl: pttl,
            ..Fetched::default()
        };
        match raw.as_ref().and_then(entry::decode) {
            Some(e) => {
                count(&REDIS.hits);
                fetched.tags = e.tags.into_iter().map(|(t, _)| t).collect();
                fetched.body = Some(e.body);
            }
            None => {
                count(&REDIS.misses);
                if raw.is_some() {
                    // The header passed the script but not the stricter Rust parser.
                    self.del(std::slice::from_ref(&loc.key)).await;
                }
            }
        }
        fetched
    }

    pub(crate) async fn store(&self, put: &Put<'_>) -> bool {
        let mut inv = self.write.key(&put.loc.key);
        inv.arg(&*put.loc.tag_prefix)
            .arg(millis(put.ttl))
            .arg(put.body.as_ref())
            .arg(put.tags.len());
        for (name, expected) in &put.tags {
            inv.arg(*name)
                .arg(expected.map(|v| v.to_string()).unwrap_or_default())
                .arg(fresh_version().to_string());
        }
        let mut conn = self.conn.clone();
        self.run::<i64>("write", async move { inv.invoke_async(&mut conn).await })
            .await
            == Some(1)
    }

    async fn del(&self, keys: &[String]) {
        let futs = keys.iter().map(|k| {
            let mut conn = self.conn.clone();
            let cmd = redis::cmd("DEL").arg(k).clone();
            self.run::<i64>("delete", async move { cmd.query_async(&mut conn).await })
        });
        futures_util::future::join_all(futs).await;
    }

    pub(crate) async fn invalidate_ns(&self, ns: &Namespace, tags: &[String]) -> bool {
        let futs = ns.tag_prefixes.iter().map(|prefix| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("DEL");
            for t in tags {
                cmd.arg(format!("{prefix}{t}"));
            }
            self.run::<i64>(
                "invalidate",
                async move { cmd.query_async(&mut conn).await },
            )
        });
        let done = futures_util::future::join_all(futs).await;
        count(&REDIS.invalidations);
        done.iter().all(Option::is_some)
    }
}

impl Store for Redis {
    fn get<'a>(
        &'a self,
        loc: &'a Loc,
        want: &'a [&'a str],
        ttl: Duration,
    ) -> BoxFuture<'a, Fetched> {
        Box::pin(self.fetch(loc, want, ttl))
    }

    fn put<'a>(&'a self, put: Put<'a>) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.store(&put).await })
    }

    fn delete<'a>(&'a self, locs: &'a [Loc]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let keys: Vec<String> = locs.iter().map(|l| l.key.clone()).collect();
            self.del(&keys).await;
        })
    }

    fn invalidate<'a>(&'a self, ns: &'a Namespace, tags: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.invalidate_ns(ns, tags).await;
        })
    }

    fn buckets(&self) -> u16 {
        self.buckets
    }
}

/// The Redis backend, standalone or Cluster. See `docs/cache.md` for the key layout.
///
/// Every operation is bounded by a timeout (by default 5 ms); an error or a timeout is
/// logged, counted in `rampart_cache_backend_errors_total{tier="redis"}` and read as a
/// miss. The connection is made lazily and re-made after a failure, so a cache built
/// while Redis is down works (as misses) and recovers on its own.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use tower_rampart::cache::{Cache, RedisBackend};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisBackend::connect("redis://127.0.0.1:6379/").await?.timeout(Duration::from_millis(20));
/// let cache = Cache::builder().build(redis)?;
/// # let _ = cache; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    pub(crate) inner: Arc<Redis>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

/// By default, 5 ms: a cache that is slower than the database it protects is useless.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5);

impl RedisBackend {
    fn from_conn(conn: Conn, buckets: u16, pubsub: Vec<redis::Client>) -> Self {
        Self {
            inner: Arc::new(Redis {
                conn,
                timeout: DEFAULT_TIMEOUT,
                buckets,
                read: Script::new(READ),
                write: Script::new(WRITE),
                pubsub,
            }),
        }
    }

    /// A standalone server (`redis://host:port/db`). The connection is made lazily.
    ///
    /// # Errors
    ///
    /// When the URL is not a valid Redis URL.
    #[allow(clippy::unused_async)]
    pub async fn connect(url: &str) -> Result<Self, ConfigError> {
        let client = redis::Client::open(url).map_err(|e| {
            ConfigError::new(format!(
                "invalid Redis URL {:?} for the cache: {e}; use redis://host:port/db",
                crate::error::redact_url(url)
            ))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(250)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| ConfigError::new(format!("Redis connection manager: {e}")))?;
        Ok(Self::from_conn(Conn::Single(manager), 1, vec![client]))
    }

    /// A Redis Cluster, from one or more node URLs. Entries spread over 16 buckets per
    /// namespace (see [`buckets`](Self::buckets)).
    ///
    /// # Errors
    ///
    /// When a URL is invalid or no node can be reached to read the slot map.
    pub async fn connect_cluster<I>(urls: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        let clients = urls
            .iter()
            .map(|u| redis::Client::open(u.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::new(format!("invalid Redis Cluster URL: {e}")))?;
        let cluster = ClusterClient::builder(urls.clone())
            .connection_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_secs(1))
            .retries(1)
            .build()
            .map_err(|e| ConfigError::new(format!("invalid Redis Cluster configuration: {e}")))?;
        let conn = cluster.get_async_connection().await.map_err(|e| {
            ConfigError::new(format!(
                "cannot reach the Redis Cluster at {:?}: {e}; check the node URLs",
                urls.iter()
                    .map(|u| crate::error::redact_url(u))
                    .collect::<Vec<_>>()
            ))
        })?;
        Ok(Self::from_conn(Conn::Cluster(conn), 16, clients))
    }

    fn edit(self, f: impl FnOnce(&mut Redis)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Redis {
            conn: shared.conn.clone(),
            timeout: shared.timeout,
            buckets: shared.buckets,
            read: Script::new(READ),
            write: Script::new(WRITE),
            pubsub: shared.pubsub.clone(),
        });
        f(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The longest any Redis operation may take before it counts as a miss.
    ///
    /// By default, 5 ms.
    #[must_use]
    pub fn timeout(self, timeout: Duration) -> Self {
        self.edit(|r| r.timeout = timeout.max(Duration::from_millis(1)))
    }

    /// How many buckets (hash-tag slots) one namespace's entries spread over; invalidating
    /// a tag costs one `DEL` per bucket. Every instance must use the same value.
    ///
    /// By default, 1 standalone and 16 on Cluster.
    #[must_use]
    pub fn buckets(self, buckets: u16) -> Self {
        self.edit(|r| r.buckets = buckets.max(1))
    }
}

impl From<RedisBackend> for Backend {
    fn from(r: RedisBackend) -> Self {
        Backend { store: r.inner }
    }
}
