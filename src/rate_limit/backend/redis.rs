//! The Redis GCRA backend: one atomic Lua script per decision, standalone or Cluster.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use redis::{
    Cmd, RedisError, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
    cluster_async::ClusterConnection,
};
use serde::Deserialize;

use super::super::{
    gcra::{self, Clock, MAX_WINDOWS, Outcome},
    layer::METRIC_METADATA,
    policy::{Compiled, Subject},
};
use super::Mode;
use super::lease::{LeaseConfig, LeaseKey, Leases, Take};
use super::memory::{DEFAULT_MAX_KEYS, MemoryStore};
use crate::key::{KeyBuilder, push_escaped, push_ip_escaped};

/// Default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// Default pause before Redis is tried again after a failure.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// The Lua script the Redis backend runs (as `EVALSHA`), published for audits, for
/// measuring it (the rate-limit bench times it alone) and for servers where scripts
/// must be loaded ahead (`SCRIPT LOAD`).
///
/// `KEYS` are the windows of one decision (one hash tag, so Cluster routes them to one
/// slot); `ARGV` = cost (prefixed with `?` to only ask whether it fits, without
/// storing anything; with `!` to consume it whether it fits or not, the bucket's fill
/// capped at full: counting by outcome), a time override (empty: the server's `TIME`),
/// then `interval, burst` per window, in microseconds. It decides atomically and stores the
/// new theoretical arrival times (with an expiry when the window has recovered), and
/// returns `{allowed, now_us, tat_1, …}`: the client derives the rest of the outcome
/// (remaining, reset, retry-after) with the same GCRA arithmetic as the in-memory
/// backend, so both backends answer identically by construction, and the server does
/// the least work (a script's cost is most of what separates a decision from a plain
/// `GET`). Every value stays below 2^53, so Lua's doubles are exact; arrival times are
/// stored as integers (`%.0f`).
///
/// # Example
///
/// ```
/// let script = tower_rampart::rate_limit::REDIS_SCRIPT;
/// assert!(script.contains("redis.call('TIME')"));
/// ```
pub const REDIS_SCRIPT: &str = r"
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = t[1] * 1000000 + t[2]
end
local cost = tonumber(ARGV[1])
local mode = 0
if not cost then
  mode = string.byte(ARGV[1], 1)
  cost = tonumber(string.sub(ARGV[1], 2))
end
local out = {1, now}
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i])) or 0
  out[i + 2] = tat
  if tat < now then tat = now end
  if tat + (cost - tonumber(ARGV[2 + 2 * i])) * tonumber(ARGV[1 + 2 * i]) > now then
    out[1] = 0
  end
end
if (out[1] == 1 and mode ~= 63) or mode == 33 then
  for i = 1, #KEYS do
    local tat = out[i + 2]
    if tat < now then tat = now end
    local used = tat - now + cost * tonumber(ARGV[1 + 2 * i])
    if mode == 33 then
      local full = tonumber(ARGV[2 + 2 * i]) * tonumber(ARGV[1 + 2 * i])
      if used > full then used = full end
    end
    redis.call('SET', KEYS[i], string.format('%.0f', now + used), 'PX', math.ceil(used / 1000) + 1)
  end
end
return out
";

/// What the limiter does when Redis fails (an error or a timeout).
///
/// # Example
///
/// ```
/// use tower_rampart::rate_limit::FailureMode;
///
/// let mode: FailureMode = serde_json::from_str(r#"{"local_fallback": {"divisor": 4}}"#).unwrap();
/// assert_eq!(mode, FailureMode::LocalFallback { divisor: 4 });
/// assert_eq!(FailureMode::default(), FailureMode::LocalFallback { divisor: 1 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureMode {
    /// Allow the request (logged and counted as `backend_error`).
    Open,
    /// Answer 503 with a JSON body (gRPC: `UNAVAILABLE`). With
    /// [`RedisBackend::lease`], a key this instance holds a live reservation for is still
    /// served from it (those units were taken from the shared quota before the failure).
    Closed,
    /// Enforce the same policies on an in-memory limiter; each quota is divided by
    /// `divisor` (the number of instances sharing the Redis quota).
    LocalFallback {
        /// The number of application instances, at least 1.
        divisor: u32,
    },
}

impl Default for FailureMode {
    fn default() -> Self {
        Self::LocalFallback { divisor: 1 }
    }
}

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The Redis backend's connection and settings.
///
/// Each decision is **one round trip**: an atomic Lua script (sent as `EVALSHA`, loaded
/// again automatically after a `NOSCRIPT`) that reads the server's `TIME`, so the
/// application servers' clocks do not matter. The keys of one decision (one per window)
/// share a hash tag, `{prefix:1:policy:kind:value}:window`, so the script works on Redis
/// Cluster; every key expires (`PX`) when its window has fully recovered.
///
/// # Example
///
/// ```no_run
/// # async fn f() -> Result<(), redis::RedisError> {
/// use std::time::Duration;
/// use tower_rampart::rate_limit::{FailureMode, RedisBackend};
///
/// let backend = RedisBackend::connect("redis://127.0.0.1/").await?
///     .prefix("myapp-rl")
///     .timeout(Duration::from_millis(20))
///     .failure_mode(FailureMode::LocalFallback { divisor: 4 });
/// # let _ = backend; Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisBackend {
    conn: Conn,
    keys: KeyBuilder,
    timeout: Duration,
    failure: FailureMode,
    retry_interval: Duration,
    clock: Clock,
    fallback_max_keys: usize,
    lease: Option<LeaseConfig>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field(
                "conn",
                &match self.conn {
                    Conn::Standalone(_) => "standalone",
                    Conn::Cluster(_) => "cluster",
                },
            )
            .field("prefix", &self.keys.prefix())
            .field("timeout", &self.timeout)
            .field("failure", &self.failure)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    fn with_conn(conn: Conn) -> Self {
        Self {
            conn,
            keys: KeyBuilder::new("rampart-rl"),
            timeout: DEFAULT_TIMEOUT,
            failure: FailureMode::default(),
            retry_interval: DEFAULT_RETRY_INTERVAL,
            clock: Clock::default(),
            fallback_max_keys: DEFAULT_MAX_KEYS,
            lease: None,
        }
    }

    /// Connects to a standalone Redis (or a Sentinel-managed primary URL) with a
    /// [`ConnectionManager`] that reconnects by itself.
    ///
    /// # Errors
    ///
    /// When the URL is invalid or the first connection fails.
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(200))
            .set_connection_timeout(Some(Duration::from_secs(1)));
        let manager = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self::from_manager(manager))
    }

    /// Connects to a Redis Cluster through any of its nodes.
    ///
    /// # Errors
    ///
    /// When a URL is invalid or the cluster cannot be reached.
    pub async fn cluster<I, S>(urls: I) -> Result<Self, RedisError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        let client = redis::cluster::ClusterClient::new(urls)?;
        Ok(Self::from_cluster(client.get_async_connection().await?))
    }

    /// Uses an existing standalone connection manager.
    pub fn from_manager(manager: ConnectionManager) -> Self {
        Self::with_conn(Conn::Standalone(manager))
    }

    /// Uses an existing Cluster connection.
    pub fn from_cluster(conn: ClusterConnection) -> Self {
        Self::with_conn(Conn::Cluster(conn))
    }

    /// The key prefix (escaped by [`KeyBuilder`]).
    ///
    /// By default, `rampart-rl`.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.keys = KeyBuilder::new(prefix);
        self
    }

    /// The whole key builder (prefix, version, maximum length).
    ///
    /// By default, `KeyBuilder::new("rampart-rl")`.
    pub fn key_builder(mut self, keys: KeyBuilder) -> Self {
        self.keys = keys;
        self
    }

    /// How long one decision may take before the failure mode applies.
    ///
    /// By default, 50 ms: far above a healthy round trip on a LAN (well under 1 ms), low
    /// enough that a stalled Redis does not stall the application.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What to do when Redis fails.
    ///
    /// By default, [`FailureMode::LocalFallback`] with divisor 1.
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure = mode;
        self
    }

    /// After a failure, how long the failure mode applies without trying Redis again
    /// (so a dead Redis costs no timeout per request); then Redis is tried again and,
    /// when it answers, used again: recovery needs no restart.
    ///
    /// On Redis Cluster the interval is kept **per hash slot**: a dead master puts only
    /// the keys of its slots in the failure mode, the other masters keep deciding.
    ///
    /// By default, 500 ms.
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// The clock for the retry interval and the local fallback.
    ///
    /// By default, [`Clock::default`]: quanta, or tokio's clock when the backend is built
    /// while tokio's time is paused.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// **Hybrid token leasing** (opt-in): each instance reserves `batch` requests' worth
    /// of a key's quota in one round trip and serves that key's next requests from the
    /// reservation, locally, for at most `ttl`. Redis round trips drop to about one per
    /// `batch` decisions of a busy key.
    ///
    /// The reservation is taken from the shared quota before it is served, so leasing
    /// never admits more than the quota; and a reserved unit is served only while the
    /// shared bucket still holds it (the bucket refills for the other instances at the
    /// window's rate, and the reservation's units leak out with it), so no window, however
    /// short, admits more across instances than Redis alone would (the burst). Units an
    /// instance reserved but did not use in time are lost to the others until the quota refills (under-admission, at
    /// most `batch - 1` per instance and key per `ttl`). When a whole batch no longer
    /// fits, the key is decided one request at a time for `ttl`, so the end of a quota is
    /// exact. Suits high-volume keys with quotas much larger than `batch × instances`;
    /// `RateLimit` headers of leased decisions are estimates. `batch` below 2 turns
    /// leasing off (the default).
    ///
    /// While Redis is failing, a live reservation (or a refusal repeated locally) still
    /// answers its key; the failure mode applies to the other keys. A batch is reserved
    /// only when the lease table (at most [`DEFAULT_MAX_KEYS`](super::memory::DEFAULT_MAX_KEYS)
    /// keys) has room for it as the round trip starts; otherwise the key is decided one
    /// request at a time. (Concurrent reservations racing for a shard's last slot can
    /// still lose one: under-admission, never over-admission.)
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), redis::RedisError> {
    /// use std::time::Duration;
    /// use tower_rampart::rate_limit::RedisBackend;
    ///
    /// let backend = RedisBackend::connect("redis://127.0.0.1/").await?
    ///     .lease(10, Duration::from_millis(200));
    /// # let _ = backend; Ok(()) }
    /// ```
    pub fn lease(mut self, batch: u32, ttl: Duration) -> Self {
        self.lease = (batch >= 2 && !ttl.is_zero()).then_some(LeaseConfig { batch, ttl });
        self
    }

    pub(crate) fn build(&self) -> RedisStore {
        let fallback = matches!(self.failure, FailureMode::LocalFallback { .. })
            .then(|| MemoryStore::new(self.fallback_max_keys, self.clock.clone()));
        RedisStore {
            backend: self.clone(),
            script: Script::new(REDIS_SCRIPT),
            down_until: match self.conn {
                Conn::Standalone(_) => vec![AtomicU64::new(0)],
                Conn::Cluster(_) => (0..CLUSTER_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            }
            .into_boxed_slice(),
            fallback,
            leases: self
                .lease
                .map(|config| Leases::new(config, self.fallback_max_keys)),
        }
    }

    pub(crate) fn divisor(&self) -> u32 {
        match self.failure {
            FailureMode::LocalFallback { divisor } => divisor.max(1),
            _ => 1,
        }
    }
}

/// Why a Redis decision failed.
#[derive(Debug)]
pub(crate) enum BackendError {
    Redis(RedisError),
    Timeout,
    /// Still inside the retry interval after a failure.
    Down,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis(e) => write!(f, "redis error: {e}"),
            Self::Timeout => f.write_str("redis timeout"),
            Self::Down => f.write_str("redis marked down (retry interval)"),
        }
    }
}

/// The live Redis backend shared by a limiter's clones.
pub(crate) struct RedisStore {
    backend: RedisBackend,
    script: Script,
    /// When Redis may be tried again after a failure (clock microseconds): one entry
    /// standalone, one per hash slot on Cluster.
    down_until: Box<[AtomicU64]>,
    pub(crate) fallback: Option<MemoryStore>,
    leases: Option<Leases>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    pub(crate) fn failure_mode(&self) -> FailureMode {
        self.backend.failure
    }

    /// The start of the Redis keys of one decision, `{prefix:1:policy:kind:value}:`; the
    /// window's index completes each key, so all of them share the hash tag.
    pub(crate) fn key_base(&self, policy: &Compiled, subject: &Subject) -> String {
        decision_key(&self.backend.keys, policy, subject)
    }

    /// One decision, one round trip.
    pub(crate) async fn check(
        &self,
        policy: &Compiled,
        subject: &Subject,
    ) -> Result<Outcome, BackendError> {
        let now = self.backend.clock.now_us();
        // Leasing: a live reservation (or a known refusal) answers before anything else
        // is built; it was taken from the shared quota already, so it stands even while
        // Redis is marked down.
        let lease = match &self.leases {
            Some(leases) => {
                let key = leases.key(policy.index, subject);
                match leases.take(&key, policy.cost, now, &policy.windows) {
                    Take::Served(outcome) => return Ok(outcome),
                    first => Some((leases, key, first)),
                }
            }
            None => None,
        };
        let mut base = self.key_base(policy, subject);
        let down = self.down_mark(&base);
        if down.load(Ordering::Relaxed) > now {
            return Err(BackendError::Down);
        }
        let result = match lease {
            None => {
                self.eval_keys(&mut base, policy, policy.cost, None, Mode::Decide)
                    .await
            }
            Some((leases, key, first)) => {
                self.leased(leases, &key, first, &mut base, policy, down)
                    .await
            }
        };
        if result
            .as_ref()
            .is_err_and(|e| !matches!(e, BackendError::Down))
        {
            self.mark_down(down);
        }
        result
    }

    /// A decision outside leasing, in `mode`, for `cost` units: direct decisions
    /// ([`RateLimitLayer::check`](crate::rate_limit::RateLimitLayer::check)) and
    /// counting by outcome. Honours the retry-interval mark like [`check`](Self::check).
    pub(crate) async fn decide_mode(
        &self,
        policy: &Compiled,
        subject: &Subject,
        cost: u64,
        mode: Mode,
    ) -> Result<Outcome, BackendError> {
        let now = self.backend.clock.now_us();
        let mut base = self.key_base(policy, subject);
        let down = self.down_mark(&base);
        if down.load(Ordering::Relaxed) > now {
            return Err(BackendError::Down);
        }
        let result = self.eval_keys(&mut base, policy, cost, None, mode).await;
        if result.is_err() {
            self.mark_down(down);
        }
        result
    }

    /// The retry-interval mark of the Redis (standalone) or hash slot (Cluster) that the
    /// keys starting with `base` live on.
    fn down_mark(&self, base: &str) -> &AtomicU64 {
        match self.down_until.len() {
            1 => &self.down_until[0],
            _ => &self.down_until[usize::from(key_slot(base))],
        }
    }

    /// Leaves Redis alone for the retry interval, counted from now (after the failed
    /// call: a timeout longer than the interval must still leave a mark).
    fn mark_down(&self, down: &AtomicU64) {
        let interval =
            u64::try_from(self.backend.retry_interval.as_micros()).unwrap_or(u64::MAX / 4);
        down.store(
            self.backend.clock.now_us().saturating_add(interval),
            Ordering::Relaxed,
        );
    }

    /// Runs the script; `now_us` overrides the server time (tests of equivalence).
    #[cfg(test)]
    pub(crate) async fn eval(
        &self,
        policy: &Compiled,
        subject: &Subject,
        now_us: Option<u64>,
    ) -> Result<Outcome, BackendError> {
        self.eval_keys(
            &mut self.key_base(policy, subject),
            policy,
            policy.cost,
            now_us,
            Mode::Decide,
        )
        .await
    }

    /// A decision in leasing mode that `first` (the lease table's first answer) did not
    /// serve: alone in plain mode, else by reserving a batch, else (no batch fits, or no
    /// room to keep the reservation) alone. `down` is the retry-interval mark of the
    /// key's Redis.
    async fn leased(
        &self,
        leases: &Leases,
        key: &LeaseKey<'_>,
        first: Take,
        base: &mut String,
        policy: &Compiled,
        down: &AtomicU64,
    ) -> Result<Outcome, BackendError> {
        if let Take::Plain = first {
            // Alone: nothing to share with concurrent requests, so no single-flight.
            return self
                .eval_keys(base, policy, policy.cost, None, Mode::Decide)
                .await;
        }
        // One round trip per key at a time: the others wait, then use its answer.
        let flight = leases.flight(key).await;
        let now = self.backend.clock.now_us();
        match leases.take(key, policy.cost, now, &policy.windows) {
            Take::Served(outcome) => return Ok(outcome),
            Take::Plain => {
                drop(flight);
                return self
                    .eval_keys(base, policy, policy.cost, None, Mode::Decide)
                    .await;
            }
            Take::Lease => {}
        }
        // The call this request waited for failed: do not wait out another timeout.
        if down.load(Ordering::Relaxed) > now {
            return Err(BackendError::Down);
        }
        if !leases.has_room(key, now) {
            // A reservation that could not be kept would be lost: decide alone.
            drop(flight);
            return self
                .eval_keys(base, policy, policy.cost, None, Mode::Decide)
                .await;
        }
        // A failure is marked before the waiters are let go, so they see it.
        let fail = |e| {
            self.mark_down(down);
            e
        };
        let batch = leases.batch_cost(policy.cost);
        let outcome = self
            .eval_keys(base, policy, batch, None, Mode::Decide)
            .await
            .map_err(fail)?;
        if outcome.allowed {
            let extra = batch - policy.cost;
            return Ok(leases.store(key, extra, policy.cost, now, outcome));
        }
        let single = self
            .eval_keys(base, policy, policy.cost, None, Mode::Decide)
            .await
            .map_err(fail)?;
        leases.plain(key, now, single);
        Ok(single)
    }

    /// Runs the script for a request of `cost` on the keys starting with `key` (the
    /// decision's [`key_base`](Self::key_base)).
    /// `key` is left as it was given.
    async fn eval_keys(
        &self,
        key: &mut String,
        policy: &Compiled,
        cost: u64,
        now_us: Option<u64>,
        mode: Mode,
    ) -> Result<Outcome, BackendError> {
        // `EVALSHA` written directly: one buffer for the arguments (a `ScriptInvocation`
        // allocates one per argument and copies them into a command again).
        let windows = policy.windows.len();
        let mut cmd = Cmd::with_capacity(5 + 3 * windows, 64 + (key.len() + 24) * windows);
        cmd.arg("EVALSHA").arg(self.script.get_hash()).arg(windows);
        for i in 0..windows {
            // At most four windows: one digit.
            key.push(char::from(b'0' + u8::try_from(i).unwrap_or(0)));
            cmd.arg(key.as_str());
            key.pop();
        }
        match mode {
            Mode::Decide => cmd.arg(cost),
            Mode::Peek => cmd.arg(format!("?{cost}")),
            Mode::Force => cmd.arg(format!("!{cost}")),
        };
        match now_us {
            Some(now) => cmd.arg(now),
            None => cmd.arg(""),
        };
        for w in &policy.windows {
            cmd.arg(w.interval).arg(w.burst);
        }
        let started = Instant::now();
        let call = async {
            match &self.backend.conn {
                Conn::Standalone(c) => evalsha(&cmd, &self.script, &mut c.clone()).await,
                Conn::Cluster(c) => evalsha(&cmd, &self.script, &mut c.clone()).await,
            }
        };
        let reply = tokio::time::timeout(self.backend.timeout, call).await;
        record_latency(started.elapsed());
        let values = reply
            .map_err(|_| BackendError::Timeout)?
            .map_err(BackendError::Redis)?;
        parse_reply(&values, policy, cost).ok_or_else(|| {
            BackendError::Redis(RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected rate-limit script reply",
            )))
        })
    }
}

/// `{prefix:version:policy:kind:value}:`, the start of the keys of one decision: what
/// `keys.build([policy, kind, value])` gives, in a hash tag, in one allocation.
fn decision_key(keys: &KeyBuilder, policy: &Compiled, subject: &Subject) -> String {
    let value = match subject {
        Subject::Text(text) => text.len(),
        _ => 0,
    };
    // Escaping at most triples a part.
    keys.build_tagged(3 * (policy.name.len() + value) + 64, |key| {
        key.push(':');
        push_escaped(key, &policy.name);
        key.push(':');
        match subject {
            Subject::Ip(ip) => {
                key.push_str("ip:");
                push_ip_escaped(key, *ip);
            }
            Subject::Text(text) => {
                push_escaped(key, policy.key.kind());
                key.push(':');
                push_escaped(key, text);
            }
            Subject::Global => key.push_str("global:"),
            Subject::Anonymous => key.push_str("anonymous:"),
            Subject::Unknown => key.push_str("unknown:"),
        }
    })
}

/// Runs an `EVALSHA` of `script`; after a `NOSCRIPT` (a restarted or flushed server),
/// loads the script and runs it again.
async fn evalsha<C: redis::aio::ConnectionLike>(
    cmd: &Cmd,
    script: &Script,
    con: &mut C,
) -> Result<Vec<i64>, RedisError> {
    match cmd.query_async(con).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(con).await?;
            cmd.query_async(con).await
        }
        reply => reply,
    }
}

/// The number of Redis Cluster hash slots.
const CLUSTER_SLOTS: usize = 16_384;

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag — the part
/// between the first `{` and the next `}` when not empty — or of the whole key, mod 16384.
pub(crate) fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    let mut crc: u16 = 0;
    for &b in tagged.unwrap_or(bytes) {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            };
        }
    }
    // CLUSTER_SLOTS is a power of two below u16::MAX.
    crc & 0x3fff
}

/// `rampart_rate_limit_backend_seconds{backend="redis"}`, with a key built at compile time.
fn record_latency(elapsed: std::time::Duration) {
    static LABELS: [metrics::Label; 1] = [metrics::Label::from_static_parts("backend", "redis")];
    static KEY: metrics::Key =
        metrics::Key::from_static_parts("rampart_rate_limit_backend_seconds", &LABELS);
    metrics::with_recorder(|r| r.register_histogram(&KEY, &METRIC_METADATA))
        .record(elapsed.as_secs_f64());
}

/// The outcome from the script's `{allowed, now, tat…}`: `gcra::decide` on the same
/// numbers, with the script's answer (the one it acted on) authoritative.
fn parse_reply(values: &[i64], policy: &Compiled, cost: u64) -> Option<Outcome> {
    let windows = policy.windows.len();
    if values.len() != 2 + windows || windows > MAX_WINDOWS {
        return None;
    }
    let now = u64::try_from(values[1]).ok().filter(|n| *n > 0)?;
    let mut tats = [0u64; MAX_WINDOWS];
    for (tat, v) in tats.iter_mut().zip(&values[2..]) {
        *tat = u64::try_from(*v).unwrap_or(0);
    }
    let outcome = gcra::decide(&mut tats[..windows], now, &policy.windows, cost);
    // They cannot disagree (same arithmetic); if a foreign script answered, fail rather
    // than report headers for a decision that was not the one taken.
    (outcome.allowed == (values[0] == 1)).then_some(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rate_limit::{Policy, Quota};

    #[test]
    fn decision_keys_are_built_keys_in_a_hash_tag() {
        let keys = KeyBuilder::new("rl");
        let short = KeyBuilder::new("rl").max_len(64);
        let policy = |name: &str, key| {
            Policy::new(name, Quota::per_second(1))
                .key(key)
                .compile(0, 1)
                .unwrap()
        };
        let user = policy("api.v1", crate::rate_limit::Key::User);
        let ip = policy("login", crate::rate_limit::Key::ClientIp);
        let cases: [(&Compiled, Subject, [&str; 3]); 6] = [
            (
                &ip,
                Subject::Ip("203.0.113.7".parse().unwrap()),
                ["login", "ip", "203.0.113.7"],
            ),
            (
                &ip,
                Subject::Ip("2001:db8::1".parse().unwrap()),
                ["login", "ip", "2001:db8::1"],
            ),
            (
                &user,
                Subject::Text("a:{b} é".into()),
                ["api.v1", "user", "a:{b} é"],
            ),
            (&user, Subject::Global, ["api.v1", "global", ""]),
            (&user, Subject::Unknown, ["api.v1", "unknown", ""]),
            (
                &user,
                Subject::Text("x".repeat(500).into()),
                ["api.v1", "user", &"x".repeat(500)],
            ),
        ];
        for (policy, subject, parts) in &cases {
            for keys in [&keys, &short] {
                assert_eq!(
                    decision_key(keys, policy, subject),
                    format!("{{{}}}:", keys.build(parts)),
                    "{subject:?}"
                );
            }
        }
    }

    #[test]
    fn replies_are_checked() {
        // One request per second, burst 1: a TAT one second ahead means "wait 1 s".
        let policy = Policy::new("p", Quota::per_second(1))
            .compile(0, 1)
            .unwrap();
        let now = 5_000_000;
        assert!(parse_reply(&[1, now], &policy, 1).is_none(), "too short");
        assert!(parse_reply(&[1, 0, 0], &policy, 1).is_none(), "no time");
        let o = parse_reply(&[0, now, now + 1_000_000], &policy, 1).unwrap();
        assert!(!o.allowed);
        assert_eq!(o.retry_after, 1_000_000);
        assert_eq!(o.windows()[0].reset, 1_000_000);
        let o = parse_reply(&[1, now, 0], &policy, 1).unwrap();
        assert!(o.allowed);
        assert_eq!(o.windows()[0].remaining, 0);
        assert!(
            parse_reply(&[1, now, now + 1_000_000], &policy, 1).is_none(),
            "a reply contradicting the arithmetic is refused"
        );
    }
}
