//! The two-tier backend: a moka L1 per instance in front of a shared Redis L2, kept
//! coherent through Redis pub/sub.
//!
//! Every `delete` and `invalidate_tag` is applied to L2, to the local L1, and published
//! on a channel; every instance subscribes and applies the message to its L1. When the
//! subscription is lost (socket closed, or a heartbeat `PING` unanswered), the instance
//! flushes its L1 and stops using it until it has subscribed again (then flushes once
//! more), so a missed message can never keep stale data alive.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use redis::Value;
use tokio::task::JoinHandle;

use super::{
    Backend, BoxFuture, Fetched, L1, Loc, Local, Namespace, Put, Store, count,
    memory::{Memory, MemoryBackend},
    redis::{Redis, RedisBackend},
};

struct TwoTier {
    l1: Arc<Memory>,
    l2: Arc<Redis>,
    channel: String,
    instance: String,
    l1_ttl: Duration,
    coherent: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for TwoTier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for TwoTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwoTier")
            .field("l1", &self.l1)
            .field("l2", &self.l2)
            .field("channel", &self.channel)
            .field("coherent", &self.coherent.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl TwoTier {
    fn coherent(&self) -> bool {
        self.coherent.load(Ordering::SeqCst)
    }

    async fn publish(&self, kind: &str, items: impl Iterator<Item = String>) {
        let mut msg = format!("{} {kind}", self.instance);
        for i in items {
            msg.push(' ');
            msg.push_str(&i);
        }
        self.l2.publish(&self.channel, &msg).await;
    }
}

async fn apply(l1: &Memory, instance: &str, payload: &str) {
    let mut words = payload.split(' ');
    if words.next() == Some(instance) {
        return; // Our own message: already applied locally.
    }
    match words.next() {
        Some("t") => {
            for id in words {
                l1.bump_id(id);
            }
            count(&L1.invalidations);
        }
        Some("k") => {
            for key in words {
                l1.remove(key).await;
            }
        }
        _ => tracing::debug!(payload, "unknown cache invalidation message ignored"),
    }
}

/// Whether a heartbeat reply is a `PONG`: a plain `PONG` (RESP3, or RESP2 outside
/// subscribed mode) or, in RESP2 subscribed mode, the array `["pong", ""]`.
fn is_pong(reply: &Value) -> bool {
    let pong = |v: &Value| match v {
        Value::SimpleString(s) => s.eq_ignore_ascii_case("pong"),
        Value::BulkString(b) => b.eq_ignore_ascii_case(b"pong"),
        _ => false,
    };
    match reply {
        Value::Array(items) => items.first().is_some_and(pong),
        other => pong(other),
    }
}

async fn subscriber(
    l1: Arc<Memory>,
    clients: Vec<redis::Client>,
    channel: String,
    instance: String,
    heartbeat: Duration,
    coherent: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut next = 0usize;
    loop {
        let client = &clients[next % clients.len()];
        next += 1;
        let connected = tokio::time::timeout(heartbeat, async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        let Ok(Ok(ps)) = connected else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        };
        backoff = Duration::from_millis(50);
        let (mut sink, mut stream) = ps.split();
        // Anything published before the subscription is covered by this flush.
        l1.flush();
        coherent.store(true, Ordering::SeqCst);
        tracing::debug!(channel, "cache L1 coherent");
        let mut ticks = tokio::time::interval(heartbeat);
        ticks.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(m) => match std::str::from_utf8(m.get_payload_bytes()) {
                        Ok(p) => apply(&l1, &instance, p).await,
                        Err(_) => tracing::debug!("non-UTF-8 invalidation message ignored"),
                    },
                    None => break,
                },
                _ = ticks.tick() => {
                    let pong = tokio::time::timeout(heartbeat / 2, sink.ping::<Value>()).await;
                    if !matches!(pong, Ok(Ok(v)) if is_pong(&v)) {
                        break;
                    }
                }
            }
        }
        coherent.store(false, Ordering::SeqCst);
        l1.flush();
        count(&L1.backend_errors);
        tracing::warn!(
            channel,
            "cache invalidation channel lost: L1 flushed and bypassed"
        );
    }
}

impl TwoTier {
    fn read_through_l2<'a>(
        &'a self,
        loc: &'a Loc,
        want: &'a [&'a str],
        ttl: Duration,
    ) -> BoxFuture<'a, Fetched> {
        Box::pin(async move {
            count(&L1.misses);
            let epoch = self.l1.epoch();
            let mut fetched = self.l2.get(loc, want, ttl).await;
            fetched.epoch = epoch;
            if let Some(body) = &fetched.body
                && self.coherent()
            {
                let left = fetched.ttl.unwrap_or(self.l1_ttl).min(self.l1_ttl);
                let tags: Vec<(&str, Option<u64>)> =
                    fetched.tags.iter().map(|t| (t.as_str(), None)).collect();
                self.l1
                    .store(loc, &tags, body.clone(), left, Some(epoch))
                    .await;
            }
            fetched
        })
    }
}

impl Store for TwoTier {
    fn get<'a>(
        &'a self,
        loc: &'a Loc,
        want: &'a [&'a str],
        ttl: Duration,
    ) -> BoxFuture<'a, Fetched> {
        Box::pin(async move {
            // An L1 hit needs no tag versions: get_or_load wants them only on a miss.
            if self.coherent()
                && let Some(body) = self.l1.lookup(&loc.key).await
            {
                return Fetched {
                    body: Some(body),
                    ..Fetched::default()
                };
            }
            // The L2 path is boxed on its own so an L1 hit stays a small future.
            self.read_through_l2(loc, want, ttl).await
        })
    }

    fn local(&self) -> Option<Local<'_>> {
        self.coherent().then_some(Local {
            memory: &self.l1,
            authoritative: false,
        })
    }

    fn get_after_local_miss<'a>(
        &'a self,
        loc: &'a Loc,
        want: &'a [&'a str],
        ttl: Duration,
    ) -> BoxFuture<'a, Fetched> {
        self.read_through_l2(loc, want, ttl)
    }

    fn put<'a>(&'a self, put: Put<'a>) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let epoch = put.epoch.unwrap_or_else(|| self.l1.epoch());
            let stored = self.l2.store(&put).await;
            if stored && self.coherent() {
                let tags: Vec<(&str, Option<u64>)> =
                    put.tags.iter().map(|(t, _)| (*t, None)).collect();
                self.l1
                    .store(
                        put.loc,
                        &tags,
                        put.body.clone(),
                        put.ttl.min(self.l1_ttl),
                        Some(epoch),
                    )
                    .await;
            }
            stored
        })
    }

    fn delete<'a>(&'a self, locs: &'a [Loc]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.l2.delete(locs).await;
            for loc in locs {
                self.l1.remove(&loc.key).await;
            }
            self.publish("k", locs.iter().map(|l| l.key.clone())).await;
        })
    }

    fn invalidate<'a>(&'a self, ns: &'a Namespace, tags: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.l2.invalidate_ns(ns, tags).await;
            self.l1.bump(&ns.ns, tags);
            self.publish("t", tags.iter().map(|t| format!("{}{t}", ns.ns)))
                .await;
        })
    }

    fn buckets(&self) -> u16 {
        self.l2.buckets()
    }
}

/// A moka L1 per instance in front of a shared Redis L2, coherent across instances.
///
/// Reads try L1, then L2 (filling L1 for at most the L1 TTL). Deletions and tag
/// invalidations go to L2 and are published on a Redis channel; every instance applies
/// them to its L1, typically within a millisecond. **Staleness bound**: while subscribed,
/// an instance's L1 lags another instance's invalidation by the pub/sub delivery time;
/// when the subscription is lost it is detected when the socket closes or, for a silent
/// network failure, by an unanswered heartbeat `PING` (every second by default, half a
/// second to answer), and L1 is flushed and bypassed until the instance has subscribed
/// again. So L1 is never staler than 1.5 s behind L2 by default (the heartbeat plus its
/// timeout), and never older than the L1 TTL (30 s by default) in any case.
///
/// # Example
///
/// ```no_run
/// use tower_rampart::cache::{Cache, MemoryBackend, RedisBackend, TwoTierBackend};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let l2 = RedisBackend::connect("redis://127.0.0.1:6379/").await?;
/// let backend = TwoTierBackend::builder(MemoryBackend::new(64 << 20), l2).start().await;
/// assert!(backend.is_coherent());
/// let cache = Cache::builder().build(backend)?;
/// # let _ = cache; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TwoTierBackend {
    inner: Arc<TwoTier>,
}

impl fmt::Debug for TwoTierBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl TwoTierBackend {
    /// A builder over an L1 and an L2.
    pub fn builder(l1: MemoryBackend, l2: RedisBackend) -> TwoTierBuilder {
        TwoTierBuilder {
            l1,
            l2,
            channel: "rampart:cache:invalidate".to_owned(),
            l1_ttl: Duration::from_secs(30),
            heartbeat: Duration::from_secs(1),
        }
    }

    /// Whether this instance is subscribed to the invalidation channel (and so uses L1).
    pub fn is_coherent(&self) -> bool {
        self.inner.coherent()
    }

    /// The number of entries in L1 (moka's estimate, updated lazily).
    pub fn l1_entry_count(&self) -> u64 {
        self.inner.l1.entry_count()
    }

    /// The number of tag versions L1 holds (tests).
    #[cfg(test)]
    pub(crate) fn l1_tag_count(&self) -> usize {
        self.inner.l1.tag_count()
    }
}

/// Configures a [`TwoTierBackend`].
#[derive(Debug)]
#[must_use]
pub struct TwoTierBuilder {
    l1: MemoryBackend,
    l2: RedisBackend,
    channel: String,
    l1_ttl: Duration,
    heartbeat: Duration,
}

impl TwoTierBuilder {
    /// The pub/sub channel; every instance sharing the cache must use the same one.
    ///
    /// By default, `rampart:cache:invalidate`.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// The longest an entry stays in L1, between 1 ms and
    /// [`TtlTiers::MAX`](crate::cache::TtlTiers::MAX). By default, 30 s.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = ttl.clamp(Duration::from_millis(1), crate::cache::TtlTiers::MAX);
        self
    }

    /// How often the subscription is checked with a `PING` (which must be answered
    /// within half of it). By default, 1 s.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_millis(10));
        self
    }

    /// Spawns the subscriber on the current Tokio runtime and waits (at most one
    /// heartbeat) for the first subscription, so a backend started while Redis is up is
    /// coherent at once. Started while Redis is down, it works without L1 and subscribes
    /// when Redis is back.
    pub async fn start(self) -> TwoTierBackend {
        let l1 = MemoryBackend::with_tier_of(self.l1, &L1, self.l1_ttl);
        let coherent = Arc::new(AtomicBool::new(false));
        let instance = format!("{:016x}", super::fresh_version());
        let task = tokio::spawn(subscriber(
            l1.clone(),
            self.l2.inner.pubsub.clone(),
            self.channel.clone(),
            instance.clone(),
            self.heartbeat,
            coherent.clone(),
        ));
        let deadline = tokio::time::Instant::now() + self.heartbeat;
        while !coherent.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        TwoTierBackend {
            inner: Arc::new(TwoTier {
                l1,
                l2: self.l2.inner,
                channel: self.channel,
                instance,
                l1_ttl: self.l1_ttl,
                coherent,
                task,
            }),
        }
    }
}

impl From<TwoTierBackend> for Backend {
    fn from(t: TwoTierBackend) -> Self {
        Backend { store: t.inner }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_accepts_every_pong_form_and_nothing_else() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert!(is_pong(&Value::SimpleString("PONG".into())));
        assert!(is_pong(&bulk("PONG")));
        assert!(is_pong(&Value::Array(vec![bulk("pong"), bulk("")])));
        assert!(!is_pong(&Value::Nil));
        assert!(!is_pong(&Value::Array(vec![])));
        assert!(!is_pong(&Value::Array(vec![bulk("message"), bulk("pong")])));
        assert!(!is_pong(&Value::SimpleString("OK".into())));
    }
}
