//! The cache's test suite: memory, real Redis (standalone and Cluster), two-tier and the
//! response cache layer.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, StreamBody};
use rampart_test_support::{RedisCluster, RedisServer};
use tower::{ServiceExt as _, service_fn};
use tower_layer::Layer as _;

use super::*;
use crate::{
    identity::{IdentityReader, TenantIdentity, UserIdentity},
    key::KeyBuilder,
};

fn memory() -> Cache {
    Cache::builder()
        .build(MemoryBackend::new(16 << 20))
        .unwrap()
}

async fn redis_backend(url: &str) -> RedisBackend {
    RedisBackend::connect(url)
        .await
        .unwrap()
        .timeout(Duration::from_millis(500))
}

async fn redis_cache(url: &str) -> Cache {
    Cache::builder()
        .keys(KeyBuilder::new("himalytix"))
        .build(redis_backend(url).await)
        .unwrap()
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

// ---------------------------------------------------------------- generic behaviour

async fn basic_contract(cache: &Cache) {
    let opts = CacheOptions::new().tag("users");
    assert!(cache.set("user:1", &"ada".to_owned(), &opts).await);
    assert!(
        cache
            .set("user:2", &"bob".to_owned(), &CacheOptions::new())
            .await
    );
    assert_eq!(cache.get::<String>("user:1").await.as_deref(), Some("ada"));
    assert_eq!(
        cache
            .get_many::<String, _>(["user:1", "user:2", "user:3"])
            .await,
        vec![Some("ada".to_owned()), Some("bob".to_owned()), None]
    );
    assert_eq!(
        cache
            .set_many(
                &[("n:1", 1u32), ("n:2", 2u32)],
                &CacheOptions::new().tag("n")
            )
            .await,
        2
    );
    assert_eq!(cache.get::<u32>("n:2").await, Some(2));
    cache.delete("user:2").await;
    assert_eq!(cache.get::<String>("user:2").await, None);
    cache.invalidate_tags(["users", "n"]).await;
    assert_eq!(cache.get::<String>("user:1").await, None);
    assert_eq!(cache.get::<u32>("n:1").await, None);
    // Re-written after the invalidation, the entry records the new version.
    assert!(cache.set("user:1", &"ada2".to_owned(), &opts).await);
    assert_eq!(cache.get::<String>("user:1").await.as_deref(), Some("ada2"));
    // An untagged entry survives tag invalidations.
    cache.set("plain", &1u8, &CacheOptions::new()).await;
    cache.invalidate_tag("users").await;
    assert_eq!(cache.get::<u8>("plain").await, Some(1));
    cache.invalidate_tags(Vec::<String>::new()).await;
}

async fn tenant_isolation(cache: &Cache) {
    let acme = cache.for_tenant("acme");
    let globex = cache.for_tenant("globex");
    let opts = CacheOptions::new().tag("users");
    acme.set("user:1", &"acme-ada".to_owned(), &opts).await;
    globex.set("user:1", &"globex-ada".to_owned(), &opts).await;
    assert_eq!(
        acme.get::<String>("user:1").await.as_deref(),
        Some("acme-ada")
    );
    assert_eq!(
        globex.get::<String>("user:1").await.as_deref(),
        Some("globex-ada")
    );
    assert_eq!(
        cache.get::<String>("user:1").await,
        None,
        "global namespace is separate"
    );
    // A tenant id that looks like a key part cannot reach another namespace.
    assert_eq!(cache.for_tenant("acme:user").get::<String>("1").await, None);
    // Tags are per tenant too.
    acme.invalidate_tag("users").await;
    assert_eq!(acme.get::<String>("user:1").await, None);
    assert_eq!(
        globex.get::<String>("user:1").await.as_deref(),
        Some("globex-ada")
    );
    let loaded: String = globex
        .get_or_load("user:1", &opts, || async {
            Ok::<_, Infallible>("never".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(loaded, "globex-ada");
}

async fn single_flight(cache: &Cache, callers: usize) {
    let loads = Arc::new(AtomicUsize::new(0));
    let opts = CacheOptions::new().tag("sf");
    let calls = (0..callers).map(|_| {
        let loads = loads.clone();
        let cache = cache.clone();
        let opts = opts.clone();
        async move {
            cache
                .get_or_load("hot", &opts, || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, Infallible>(vec![7u64; 4])
                })
                .await
                .unwrap()
        }
    });
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(loads.load(Ordering::SeqCst), 1, "the loader ran once");
    assert!(results.iter().all(|r| r == &vec![7u64; 4]));
    assert_eq!(cache.get::<Vec<u64>>("hot").await, Some(vec![7u64; 4]));
}

#[tokio::test]
async fn memory_basic_contract() {
    basic_contract(&memory()).await;
}

#[tokio::test]
async fn memory_tenant_isolation() {
    tenant_isolation(&memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_single_flight_1000_callers() {
    single_flight(&memory(), 1000).await;
}

#[tokio::test]
async fn for_request_reads_the_tenant_through_identity() {
    #[derive(Clone)]
    struct T(&'static str);
    impl TenantIdentity for T {
        fn tenant_id(&self) -> &str {
            self.0
        }
    }
    let cache = memory();
    let reader = IdentityReader::new().tenant::<T>();
    let mut ext = http::Extensions::new();
    assert_eq!(cache.for_request(&reader, &ext).tenant(), None);
    ext.insert(T("acme"));
    let scoped = cache.for_request(&reader, &ext);
    assert_eq!(scoped.tenant(), Some("acme"));
    assert_eq!(scoped.global().tenant(), None);
    assert!(scoped.key_for("k").contains(":t:acme:"));
    assert!(format!("{scoped:?}").contains("acme"));
}

#[tokio::test]
async fn failed_loads_are_not_cached_and_waiters_see_the_failure() {
    let cache = memory();
    let opts = CacheOptions::new();
    let gate = Arc::new(tokio::sync::Notify::new());
    let leader = {
        let cache = cache.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            cache
                .get_or_load::<u32, _, _, _>("k", &CacheOptions::new(), || async move {
                    gate.notified().await;
                    Err("database down")
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    while cache.shared_flights() == 0 {
        tokio::task::yield_now().await;
    }
    let follower = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load::<u32, &str, _, _>("k", &CacheOptions::new(), || async {
                    unreachable!("a waiter never runs its loader while a load is in flight")
                })
                .await
        })
    };
    while cache.shared_waiters("k") < 1 {
        tokio::task::yield_now().await;
    }
    gate.notify_one();
    assert!(matches!(
        leader.await.unwrap(),
        Err(LoadError::Loader("database down"))
    ));
    let shared = follower.await.unwrap().unwrap_err();
    assert!(matches!(shared, LoadError::Shared));
    assert!(shared.to_string().contains("shared"));
    // Nothing was cached: the next call loads.
    let v = cache
        .get_or_load("k", &opts, || async { Ok::<_, &str>(5u32) })
        .await
        .unwrap();
    assert_eq!(v, 5);
    let err: LoadError<std::io::Error> = LoadError::Loader(std::io::Error::other("x"));
    assert!(std::error::Error::source(&err).is_some());
    assert!(std::error::Error::source(&LoadError::<std::io::Error>::Timeout).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_stalled_load_times_out_for_everyone() {
    let cache = Cache::builder()
        .load_timeout(Duration::from_secs(2))
        .build(MemoryBackend::new(1 << 20))
        .unwrap();
    let stalled = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load::<u8, Infallible, _, _>("k", &CacheOptions::new(), || {
                    std::future::pending()
                })
                .await
        })
    };
    while cache.shared_flights() == 0 {
        tokio::task::yield_now().await;
    }
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load::<u8, Infallible, _, _>("k", &CacheOptions::new(), || async { Ok(1) })
                .await
        })
    };
    tokio::time::advance(Duration::from_millis(2100)).await;
    assert!(matches!(stalled.await.unwrap(), Err(LoadError::Timeout)));
    let w = waiter.await.unwrap();
    assert!(matches!(w, Err(LoadError::Timeout)), "{w:?}");
    assert_eq!(
        LoadError::<Infallible>::Timeout.to_string(),
        "the cache load timed out"
    );
    // The key is free again.
    let v = cache
        .get_or_load("k", &CacheOptions::new(), || async {
            Ok::<_, Infallible>(3u8)
        })
        .await
        .unwrap();
    assert_eq!(v, 3);
}

#[tokio::test]
async fn a_cancelled_leader_hands_over_to_a_waiter() {
    let cache = memory();
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load::<u8, Infallible, _, _>("k", &CacheOptions::new(), || {
                    std::future::pending()
                })
                .await
        })
    };
    while cache.shared_flights() == 0 {
        tokio::task::yield_now().await;
    }
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load::<u8, Infallible, _, _>("k", &CacheOptions::new(), || async { Ok(9) })
                .await
        })
    };
    while cache.shared_waiters("k") < 1 {
        tokio::task::yield_now().await;
    }
    leader.abort();
    assert_eq!(waiter.await.unwrap().unwrap(), 9);
}

#[tokio::test]
async fn invalidation_during_a_load_returns_the_value_but_does_not_cache_it() {
    let cache = memory();
    let opts = CacheOptions::new().tag("t");
    let c2 = cache.clone();
    let v = cache
        .get_or_load("k", &opts, || async move {
            c2.invalidate_tag("t").await;
            Ok::<_, Infallible>(1u8)
        })
        .await
        .unwrap();
    assert_eq!(v, 1);
    assert_eq!(
        cache.get::<u8>("k").await,
        None,
        "born stale, so not cached"
    );
}

#[tokio::test]
async fn undecodable_values_are_misses() {
    let cache = memory();
    cache
        .set("k", &vec![0xffu8, 0xfe], &CacheOptions::new())
        .await;
    assert_eq!(cache.get::<String>("k").await, None, "not UTF-8");
    // The undecodable entry was removed: even the right type misses now.
    assert_eq!(cache.get::<Vec<u8>>("k").await, None);
    // Json codec: deserialize_any values work.
    let json = Cache::builder()
        .codec(Json)
        .build(MemoryBackend::new(1 << 20))
        .unwrap();
    let v = serde_json::json!({"a": [1, 2]});
    json.set("j", &v, &CacheOptions::new()).await;
    assert_eq!(json.get::<serde_json::Value>("j").await, Some(v));
}

#[test]
fn memory_entries_expire_after_their_own_ttl() {
    // The memory backend reads quanta's clock; a mocked one stands still until moved.
    let (clock, mock) = quanta::Clock::mock();
    quanta::with_clock(&clock, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cache = memory();
            let five_s = CacheOptions::new().ttl(Ttl::Custom(Duration::from_secs(5)));
            assert!(cache.set("short", &1u8, &five_s).await);
            assert!(
                cache
                    .set("long", &2u8, &CacheOptions::new().ttl(Ttl::Long))
                    .await
            );
            mock.increment(Duration::from_millis(4_999));
            assert_eq!(cache.get::<u8>("short").await, Some(1));
            mock.increment(Duration::from_millis(1));
            assert_eq!(cache.get::<u8>("short").await, None, "expired at 5 s");
            let loaded = cache
                .get_or_load("short", &five_s, || async { Ok::<_, Infallible>(3u8) })
                .await
                .unwrap();
            assert_eq!(loaded, 3, "an expired entry is reloaded");
            mock.increment(Duration::from_secs(3_594));
            assert_eq!(cache.get::<u8>("long").await, Some(2));
            mock.increment(Duration::from_secs(1));
            assert_eq!(cache.get::<u8>("long").await, None, "Ttl::Long is one hour");
        });
    });
}

#[test]
fn builder_rejects_a_zero_load_timeout() {
    let err = Cache::builder()
        .load_timeout(Duration::ZERO)
        .build(MemoryBackend::new(1 << 20))
        .unwrap_err();
    assert!(err.message().contains("load_timeout"));
}

#[tokio::test]
async fn keys_use_the_shared_key_builder_and_cap_length() {
    let cache = Cache::builder()
        .keys(KeyBuilder::new("himalytix").version(2))
        .build(MemoryBackend::new(1 << 20))
        .unwrap();
    assert_eq!(cache.key_for("user:123"), "{himalytix:2:g:0}:k:user%3A123");
    assert_eq!(
        cache.for_tenant("acme").key_for("user:123"),
        "{himalytix:2:t:acme:0}:k:user%3A123"
    );
    let long = cache.key_for(&"x".repeat(5_000));
    assert!(long.len() < 250 && long.starts_with("{himalytix:2:g:0}"));
    assert_ne!(long, cache.key_for(&"x".repeat(4_999)));
    assert!(format!("{:?}", MemoryBackend::new(1)).contains("Memory"));
}

#[tokio::test]
async fn invalidating_unknown_tags_does_not_grow_the_tag_table() {
    let backend = MemoryBackend::new(1 << 20);
    let cache = Cache::builder().build(backend.clone()).unwrap();
    let opts = CacheOptions::new().tag("users");
    assert!(cache.set("u", &1u8, &opts).await);
    let before = backend.inner.tag_count();
    let unknown: Vec<String> = (0..100_000).map(|i| format!("nope:{i}")).collect();
    cache.invalidate_tags(&unknown).await;
    for t in unknown.iter().take(1_000) {
        cache.invalidate_tag(t).await;
    }
    assert!(
        backend.inner.tag_count() <= before,
        "{} tag versions",
        backend.inner.tag_count()
    );
    // A known tag still invalidates; the entry is then reloaded with a fresh version.
    assert_eq!(cache.get::<u8>("u").await, Some(1));
    cache.invalidate_tag("users").await;
    assert_eq!(cache.get::<u8>("u").await, None);
    assert!(cache.set("u", &2u8, &opts).await);
    assert_eq!(cache.get::<u8>("u").await, Some(2));
}

#[tokio::test]
async fn a_short_key_cannot_forge_a_shortened_one() {
    let cache = memory();
    let long = "x".repeat(500);
    let stored = cache.key_for(&long);
    let base = cache.key_for("");
    // The logical key whose stored form would be the long key's shortened one.
    let forged = &stored[base.len()..];
    assert!(
        cache
            .set(&long, &"secret".to_owned(), &CacheOptions::new())
            .await
    );
    assert_ne!(cache.key_for(forged), stored);
    assert_eq!(
        cache.get::<String>(forged).await,
        None,
        "read through a forged key"
    );
    assert!(
        cache
            .set(forged, &"evil".to_owned(), &CacheOptions::new())
            .await
    );
    assert_eq!(
        cache.get::<String>(&long).await.as_deref(),
        Some("secret"),
        "overwritten through a forged key"
    );
}

#[tokio::test]
async fn large_values_are_compressed() {
    let cache = Cache::builder()
        .compress_above(64)
        .build(MemoryBackend::new(1 << 20))
        .unwrap();
    let big = "abc".repeat(10_000);
    cache.set("big", &big, &CacheOptions::new()).await;
    assert_eq!(cache.get::<String>("big").await, Some(big));
}

// ---------------------------------------------------------------- Redis

#[tokio::test]
async fn redis_basic_contract_and_tenants() {
    let server = RedisServer::start();
    let cache = redis_cache(&server.url()).await;
    basic_contract(&cache).await;
    tenant_isolation(&cache).await;
    // TTL tiers reach Redis.
    cache
        .set("short", &1u8, &CacheOptions::new().ttl(Ttl::Short))
        .await;
    let mut conn = raw(&server.url()).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(cache.key_for("short"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((59_000..=60_000).contains(&pttl), "{pttl}");
    assert!(format!("{cache:?}").contains("standalone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_single_flight_1000_callers() {
    let server = RedisServer::start();
    single_flight(&redis_cache(&server.url()).await, 1000).await;
}

#[tokio::test]
async fn redis_corrupt_entries_are_misses_and_removed() {
    let server = RedisServer::start();
    let cache = redis_cache(&server.url()).await;
    let mut conn = raw(&server.url()).await;
    for (i, bad) in [
        &b"garbage"[..],
        b"rc1\nbroken",
        b"rc1\n\n\x09xx",
        b"rc1\n\n\x01not zlib",
        b"rc1\n\n\x00\xff\xff\xff",
    ]
    .iter()
    .enumerate()
    {
        let key = cache.key_for(&format!("bad{i}"));
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(*bad)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(cache.get::<String>(&format!("bad{i}")).await, None);
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(exists, 0, "corrupt entry {i} removed");
    }
    // A large value is stored compressed (flag byte 1 after the header).
    let big = "xyz".repeat(5_000);
    cache.set("big", &big, &CacheOptions::new().tag("t")).await;
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(cache.key_for("big"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let e = entry::decode(&Bytes::from(stored.clone())).unwrap();
    assert_eq!(e.body[0], 1, "zlib");
    assert!(stored.len() < 1_000);
    assert_eq!(e.tags.len(), 1);
    assert_eq!(cache.get::<String>("big").await, Some(big));
}

/// A stored entry whose zlib body inflates to `inflated` zero bytes.
fn zero_bomb(inflated: usize) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..inflated >> 20 {
        enc.write_all(&zeros).unwrap();
    }
    let mut raw = b"rc1\n\n\x01".to_vec();
    raw.extend_from_slice(&enc.finish().unwrap());
    raw
}

#[tokio::test]
async fn redis_decompression_bomb_is_capped_and_deleted() {
    let server = RedisServer::start();
    let cache = redis_cache(&server.url()).await;
    let mut conn = raw(&server.url()).await;
    let bomb = zero_bomb(64 << 20);
    assert!(bomb.len() < 70_000, "{} bytes", bomb.len());
    for (i, key) in ["as-bytes", "as-string", "loaded"].iter().enumerate() {
        let _: () = redis::cmd("SET")
            .arg(cache.key_for(key))
            .arg(&bomb)
            .query_async(&mut conn)
            .await
            .unwrap();
        let t = Instant::now();
        match i {
            0 => assert_eq!(cache.get::<Vec<u8>>(key).await, None),
            1 => assert_eq!(cache.get::<String>(key).await, None, "zeros read as \"\""),
            _ => {
                let v = cache
                    .get_or_load(key, &CacheOptions::new(), || async {
                        Ok::<_, Infallible>("fresh".to_owned())
                    })
                    .await
                    .unwrap();
                assert_eq!(v, "fresh");
            }
        }
        eprintln!("bomb read {key}: {:?}", t.elapsed());
        let stored: Option<Vec<u8>> = redis::cmd("GET")
            .arg(cache.key_for(key))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_ne!(stored.as_deref(), Some(&bomb[..]), "the bomb was deleted");
    }
    // The cap is the cache's own value size limit: larger values are not stored.
    let small = Cache::builder()
        .max_value_bytes(1_000)
        .build(redis_backend(&server.url()).await)
        .unwrap();
    assert!(
        !small
            .set("big", &vec![7u8; 2_000], &CacheOptions::new())
            .await
    );
    assert!(small.set("ok", &vec![7u8; 900], &CacheOptions::new()).await);
    assert_eq!(small.get::<Vec<u8>>("ok").await, Some(vec![7u8; 900]));
}

#[tokio::test]
async fn redis_evicted_tag_versions_read_as_misses() {
    let server = RedisServer::start();
    let cache = redis_cache(&server.url()).await;
    cache.set("k", &1u8, &CacheOptions::new().tag("t")).await;
    let mut conn = raw(&server.url()).await;
    let tag_key = format!("{}:g:t", cache.key_for("k").split(":k:").next().unwrap());
    let deleted: i64 = redis::cmd("DEL")
        .arg(&tag_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(deleted, 1, "tag version key is {tag_key}");
    assert_eq!(cache.get::<u8>("k").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_100k_tagged_entries_invalidate_in_constant_time() {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .build(
            RedisBackend::connect(&server.url())
                .await
                .unwrap()
                .timeout(Duration::from_secs(5)),
        )
        .unwrap();
    let timed = |cache: Cache| async move {
        let t = Instant::now();
        cache.invalidate_tag("bulk").await;
        t.elapsed()
    };
    // Baseline: one tagged entry.
    let small = cache.for_tenant("small");
    small
        .set("only", &0u32, &CacheOptions::new().tag("bulk"))
        .await;
    let one = timed(small.clone()).await;
    assert_eq!(small.get::<u32>("only").await, None);

    let big = cache.for_tenant("big");
    let opts = CacheOptions::new().tag("bulk");
    for chunk in (0..100_000u32).collect::<Vec<_>>().chunks(1_000) {
        let items: Vec<(String, u32)> = chunk.iter().map(|i| (format!("e{i}"), *i)).collect();
        assert_eq!(big.set_many(&items, &opts).await, items.len());
    }
    let mut conn = raw(&server.url()).await;
    let before: i64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert!(before >= 100_000);
    assert_eq!(big.get::<u32>("e99999").await, Some(99_999));
    let many = timed(big.clone()).await;
    let after: i64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert!(
        before - after <= 1,
        "invalidation touches tag keys only, not entries"
    );
    // Every entry now reads as a miss.
    for chunk in (0..100_000u32).collect::<Vec<_>>().chunks(5_000) {
        let keys: Vec<String> = chunk.iter().map(|i| format!("e{i}")).collect();
        let got = big.get_many::<u32, _>(&keys).await;
        assert!(got.iter().all(Option::is_none));
    }
    // One DEL either way: allow generous noise for a shared machine.
    assert!(
        many < one * 20 + Duration::from_millis(200),
        "1 entry: {one:?}, 100 000 entries: {many:?}"
    );
}

#[tokio::test]
async fn redis_down_reads_as_misses_and_recovers() {
    let mut server = RedisServer::start();
    let cache = redis_cache(&server.url()).await;
    cache.set("k", &1u8, &CacheOptions::new()).await;
    server.stop();
    assert_eq!(cache.get::<u8>("k").await, None);
    assert!(!cache.set("k", &2u8, &CacheOptions::new()).await);
    cache.invalidate_tag("t").await;
    cache.delete("k").await;
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Infallible>(3u8)
    };
    assert_eq!(
        cache
            .get_or_load("k", &CacheOptions::new(), load)
            .await
            .unwrap(),
        3
    );
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cache.set("k", &4u8, &CacheOptions::new()).await {
        assert!(Instant::now() < deadline, "cache did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cache.get::<u8>("k").await, Some(4));
}

#[tokio::test]
async fn redis_timeout_bounds_a_stalled_server() {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .build(
            RedisBackend::connect(&server.url())
                .await
                .unwrap()
                .timeout(Duration::from_millis(100)),
        )
        .unwrap();
    cache.set("k", &1u8, &CacheOptions::new()).await;
    assert_eq!(cache.get::<u8>("k").await, Some(1));
    // Stall the server for most of a second with a busy script.
    let mut conn = raw(&server.url()).await;
    let busy = "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] \
        repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - s > 800000 return 1";
    let stall = tokio::spawn(async move {
        let _: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(busy)
            .arg(0)
            .query_async(&mut conn)
            .await;
    });
    // Probe until the script runs: then a read must give up after the 100 ms timeout.
    let mut saw_timeout = false;
    while !stall.is_finished() {
        let t = Instant::now();
        if cache.get::<u8>("k").await.is_none() {
            assert!(
                t.elapsed() < Duration::from_millis(400),
                "{:?}",
                t.elapsed()
            );
            saw_timeout = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_timeout, "a stalled server reads as a miss");
    stall.await.unwrap();
}

#[tokio::test]
async fn invalid_redis_urls_are_config_errors() {
    let err = RedisBackend::connect("nope://x").await.unwrap_err();
    assert!(err.message().contains("redis://"));
    assert!(RedisBackend::connect_cluster(["nope://x"]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_one_script_per_read_and_tags_across_buckets() {
    let cluster = RedisCluster::start();
    let backend = RedisBackend::connect_cluster(cluster.urls())
        .await
        .unwrap()
        .timeout(Duration::from_millis(500));
    assert!(format!("{:?}", backend.clone().buckets(4)).contains("buckets: 4"));
    let cache = Cache::builder().build(backend).unwrap();
    // Entries spread over buckets (slots on different masters), tags still work.
    let opts = CacheOptions::new().tag("users");
    for i in 0..64u32 {
        assert!(cache.set(&format!("u{i}"), &i, &opts).await);
    }
    let buckets: std::collections::HashSet<String> = (0..64)
        .map(|i| {
            cache
                .key_for(&format!("u{i}"))
                .split('}')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        buckets.len() > 8,
        "entries spread over buckets: {buckets:?}"
    );
    assert_eq!(cache.get::<u32>("u63").await, Some(63));
    basic_contract(&cache).await;
    tenant_isolation(&cache).await;
    for i in 0..64u32 {
        assert_eq!(cache.get::<u32>(&format!("u{i}")).await, None);
    }
    single_flight(&cache, 200).await;
    assert!(format!("{cache:?}").contains("cluster"));
}

// ---------------------------------------------------------------- two-tier

async fn two_tier(url: &str) -> (Cache, TwoTierBackend) {
    let l2 = redis_backend(url).await;
    let backend = TwoTierBackend::builder(MemoryBackend::new(8 << 20), l2)
        .heartbeat(Duration::from_millis(200))
        .l1_ttl(Duration::from_secs(30))
        .channel("test:inval")
        .start()
        .await;
    assert!(backend.is_coherent());
    let cache = Cache::builder()
        .keys(KeyBuilder::new("himalytix"))
        .build(backend.clone())
        .unwrap();
    (cache, backend)
}

/// Polls `check` until it holds; fails if that takes 100 ms or more counted from `t`
/// (taken before the invalidation was issued on the other instance).
async fn within_100ms<F: Future<Output = bool>>(
    t: Instant,
    mut check: impl FnMut() -> F,
) -> Duration {
    loop {
        if check().await {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "not seen within 100 ms"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tier_invalidation_reaches_the_other_instance_within_100ms() {
    let server = RedisServer::start();
    let (a, _ba) = two_tier(&server.url()).await;
    let (b, bb) = two_tier(&server.url()).await;
    basic_contract(&a).await;
    let opts = CacheOptions::new().tag("users");
    a.set("user:1", &"ada".to_owned(), &opts).await;
    a.set("user:2", &"bob".to_owned(), &opts).await;
    // B reads through L2 into its L1.
    assert_eq!(b.get::<String>("user:1").await.as_deref(), Some("ada"));
    assert_eq!(b.get::<String>("user:2").await.as_deref(), Some("bob"));
    // Remove the entries from Redis behind the cache's back: B still answers from L1.
    let mut conn = raw(&server.url()).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    assert_eq!(
        b.get::<String>("user:1").await.as_deref(),
        Some("ada"),
        "L1 hit"
    );
    assert!(bb.l1_entry_count() <= 10);
    // A invalidates: B's L1 drops the entry within 100 ms.
    let t = Instant::now();
    a.invalidate_tag("users").await;
    let seen = within_100ms(t, || {
        let b = b.clone();
        async move { b.get::<String>("user:1").await.is_none() }
    })
    .await;
    eprintln!("tag invalidation seen by B after {seen:?}");
    // Deletes propagate too.
    a.set("k", &1u8, &CacheOptions::new()).await;
    assert_eq!(b.get::<u8>("k").await, Some(1));
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let t = Instant::now();
    a.delete("k").await;
    within_100ms(t, || {
        let b = b.clone();
        async move { b.get::<u8>("k").await.is_none() }
    })
    .await;
    assert!(format!("{bb:?}").contains("coherent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tier_survives_redis_down_and_recovers() {
    let mut server = RedisServer::start();
    let (a, ba) = two_tier(&server.url()).await;
    let (b, bb) = two_tier(&server.url()).await;
    let loads = Arc::new(AtomicUsize::new(0));
    let get = |cache: Cache| {
        let loads = loads.clone();
        async move {
            cache
                .get_or_load("k", &CacheOptions::new().tag("t"), || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(42u32)
                })
                .await
                .unwrap()
        }
    };
    assert_eq!(get(a.clone()).await, 42);
    assert_eq!(get(b.clone()).await, 42);
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    server.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ba.is_coherent() || bb.is_coherent() {
        assert!(Instant::now() < deadline, "lost subscription not detected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // L1 was flushed and is bypassed: both keep answering through their loaders.
    assert_eq!(get(a.clone()).await, 42);
    assert_eq!(get(b.clone()).await, 42);
    assert_eq!(loads.load(Ordering::SeqCst), 3);

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(ba.is_coherent() && bb.is_coherent()) {
        assert!(Instant::now() < deadline, "did not resubscribe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.set("k", &7u32, &CacheOptions::new().tag("t")).await {
        assert!(Instant::now() < deadline, "L2 did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.get::<u32>("k").await, Some(7));
    let t = Instant::now();
    a.invalidate_tag("t").await;
    within_100ms(t, || {
        let b = b.clone();
        async move { b.get::<u32>("k").await.is_none() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_invalidation_messages_do_not_grow_the_l1_tag_table() {
    let server = RedisServer::start();
    let (cache, backend) = two_tier(&server.url()).await;
    assert!(
        cache
            .set("u", &1u8, &CacheOptions::new().tag("users"))
            .await
    );
    let before = backend.l1_tag_count();
    let mut conn = raw(&server.url()).await;
    for batch in 0..20 {
        let ids: Vec<String> = (0..5_000).map(|i| format!("forged:{batch}:{i}")).collect();
        let msg = format!("someone-else t {}", ids.join(" "));
        let _: i64 = redis::cmd("PUBLISH")
            .arg("test:inval")
            .arg(msg)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // A key message published after the forged ones: once applied, they all are.
    assert!(cache.set("probe", &1u8, &CacheOptions::new()).await);
    let _: i64 = redis::cmd("DEL")
        .arg(cache.key_for("probe"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("test:inval")
        .arg(format!("someone-else k {}", cache.key_for("probe")))
        .query_async(&mut conn)
        .await
        .unwrap();
    let t = Instant::now();
    while cache.get::<u8>("probe").await.is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "messages not applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        backend.l1_tag_count() <= before,
        "{} tag versions in L1",
        backend.l1_tag_count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forever_ttl_works_identically_on_every_backend() {
    let server = RedisServer::start();
    let (two_tier, _backend) = two_tier(&server.url()).await;
    let forever = CacheOptions::new().ttl(Ttl::Custom(Duration::MAX)).tag("t");
    let clamped = memory().ttl_tiers().resolve(Ttl::Custom(Duration::MAX));
    assert!(
        clamped >= Duration::from_secs(10 * 365 * 86_400),
        "{clamped:?}"
    );
    for (name, cache) in [
        ("memory", memory()),
        ("redis", redis_cache(&server.url()).await),
        ("two-tier", two_tier),
    ] {
        assert!(cache.set("k", &1u8, &forever).await, "{name}: set");
        assert_eq!(cache.get::<u8>("k").await, Some(1), "{name}: get");
        let v = cache
            .get_or_load("l", &forever, || async { Ok::<_, Infallible>(2u8) })
            .await
            .unwrap();
        assert_eq!(v, 2);
        assert_eq!(
            cache.get::<u8>("l").await,
            Some(2),
            "{name}: loaded value stored"
        );
        cache.invalidate_tag("t").await;
        assert_eq!(cache.get::<u8>("k").await, None, "{name}: invalidated");
    }
    // An L1 TTL of "forever" is clamped too (moka refuses more than 1000 years).
    let l1_forever = TwoTierBackend::builder(
        MemoryBackend::new(1 << 20),
        redis_backend(&server.url()).await,
    )
    .l1_ttl(Duration::MAX)
    .start()
    .await;
    assert!(l1_forever.is_coherent());
    let mut conn = raw(&server.url()).await;
    let cache = redis_cache(&server.url()).await;
    cache
        .set(
            "p",
            &1u8,
            &CacheOptions::new().ttl(Ttl::Custom(Duration::MAX)),
        )
        .await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(cache.key_for("p"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let want = i64::try_from(clamped.as_millis()).unwrap();
    assert!(pttl > want - 60_000 && pttl <= want, "{pttl} vs {want}");
}

/// Stale-while-revalidate on one backend: past the soft TTL one caller refreshes while
/// the others get the stale value at once; past the hard TTL nothing stale is served.
async fn stale_while_revalidate(cache: &Cache) {
    let opts = CacheOptions::new()
        .ttl(Ttl::Custom(Duration::from_millis(300)))
        .stale_while_revalidate(Duration::from_millis(700))
        .tag("swr");
    let loads = Arc::new(AtomicUsize::new(0));
    let load = |v: u32, delay: u64, ok: bool| {
        let loads = loads.clone();
        move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if ok { Ok(v) } else { Err("down") }
        }
    };
    let call = |f| cache.get_or_load("k", &opts, f);
    assert_eq!(call(load(1, 0, true)).await.unwrap(), 1);
    assert_eq!(call(load(9, 0, true)).await.unwrap(), 1, "fresh");
    tokio::time::sleep(Duration::from_millis(350)).await;
    // Soft-expired: one refresh (200 ms); everyone arriving meanwhile gets 1 at once.
    let refresh = {
        let cache = cache.clone();
        let opts = opts.clone();
        let load = load(2, 200, true);
        tokio::spawn(async move { cache.get_or_load("k", &opts, load).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..5 {
        let t = Instant::now();
        let v = call(load(8, 0, true)).await.unwrap();
        assert_eq!(
            v,
            1,
            "{i} {:?} loads {}",
            cache,
            loads.load(Ordering::SeqCst)
        );
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "a stale read waited"
        );
    }
    assert_eq!(
        refresh.await.unwrap(),
        2,
        "the refreshing caller gets the new value"
    );
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "one refresh, single-flight"
    );
    assert_eq!(call(load(7, 0, true)).await.unwrap(), 2);
    // A failed refresh serves the stale value.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(call(load(6, 0, false)).await.unwrap(), 2);
    // Past the hard TTL (300 + 700 ms): nothing stale.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(cache.get::<u32>("k").await, None);
    assert_eq!(call(load(3, 0, true)).await.unwrap(), 3);
    // Invalidation still applies to stale entries.
    tokio::time::sleep(Duration::from_millis(350)).await;
    cache.invalidate_tag("swr").await;
    assert_eq!(call(load(4, 0, true)).await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_on_memory_redis_and_two_tier() {
    stale_while_revalidate(&memory()).await;
    let server = RedisServer::start();
    stale_while_revalidate(&redis_cache(&server.url()).await).await;
    let (two_tier, _backend) = two_tier(&server.url()).await;
    stale_while_revalidate(&two_tier.for_tenant("tt")).await;
}

/// Counts `WARN` and `ERROR` events (installed per thread: current-thread runtime).
#[derive(Clone, Default)]
struct Warnings(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn two_tier_subscription_stays_up_over_many_heartbeats() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let warnings = Warnings::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
    // Tests run in parallel with subscribers of their own: a callsite first met under
    // another test's subscriber may have cached "not interested"; ask again.
    tracing::callsite::rebuild_interest_cache();
    let mut server = RedisServer::start();
    let heartbeat = Duration::from_millis(100);
    let backend = TwoTierBackend::builder(
        MemoryBackend::new(8 << 20),
        redis_backend(&server.url()).await,
    )
    .heartbeat(heartbeat)
    .start()
    .await;
    assert!(backend.is_coherent());
    let cache = Cache::builder().build(backend.clone()).unwrap();
    assert!(cache.set("k", &7u32, &CacheOptions::new()).await);
    // Only L1 can answer from now on: a flush (a declared loss) shows as a miss.
    let mut conn = raw(&server.url()).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let (mut reads, mut hits) = (0u32, 0u32);
    let until = Instant::now() + heartbeat * 30;
    while Instant::now() < until {
        reads += 1;
        hits += u32::from(cache.get::<u32>("k").await == Some(7));
        assert!(backend.is_coherent(), "loss declared after {reads} reads");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("{hits} L1 hits of {reads} reads over 30 heartbeats");
    assert!(reads > 100);
    assert_eq!(hits, reads, "every repeated read is an L1 hit");
    assert_eq!(warnings.0.load(Ordering::SeqCst), 0, "no warning");
    // A silent failure (the server stops answering, the socket stays open) is detected
    // by the heartbeat: within the heartbeat plus its timeout.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1_000)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .unwrap();
    let t = Instant::now();
    while backend.is_coherent() {
        assert!(t.elapsed() < heartbeat * 2, "silent loss not detected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("silent loss detected after {:?}", t.elapsed());
    while !backend.is_coherent() {
        assert!(t.elapsed() < Duration::from_secs(5), "did not resubscribe");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    warnings.0.store(0, Ordering::SeqCst);
    // A real loss is still detected within the heartbeat (and its timeout).
    server.stop();
    let t = Instant::now();
    while backend.is_coherent() {
        assert!(t.elapsed() < heartbeat * 3 / 2, "loss not detected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("loss detected after {:?}", t.elapsed());
    assert_eq!(cache.get::<u32>("k").await, None, "L1 flushed and bypassed");
    // Logged just after the flag is cleared.
    while warnings.0.load(Ordering::SeqCst) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the loss is not logged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------- response cache

#[derive(Clone)]
struct User(&'static str);
impl UserIdentity for User {
    fn user_id(&self) -> &str {
        self.0
    }
}

fn app(
    cache: Cache,
    calls: Arc<AtomicUsize>,
    configure: impl FnOnce(ResponseCacheLayer) -> ResponseCacheLayer,
) -> ResponseCache<
    impl tower_service::Service<
        Request<()>,
        Response = Response<http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
> {
    let svc = service_fn(move |req: Request<()>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let path = req.uri().path().to_owned();
            let lang = req
                .headers()
                .get("accept-language")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = format!("{path} #{n} {lang}");
            let mut res = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
            // `x-set-<name>: value` in the request: the response carries `<name>: value`.
            for (name, value) in req.headers() {
                if let Some(set) = name.as_str().strip_prefix("x-set-") {
                    res.headers_mut().append(
                        http::HeaderName::from_bytes(set.as_bytes()).unwrap(),
                        value.clone(),
                    );
                }
            }
            match path.as_str() {
                "/cookie" => {
                    res.headers_mut()
                        .insert(header::SET_COOKIE, HeaderValue::from_static("s=1"));
                }
                "/no-store" => {
                    res.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                }
                "/private" => {
                    res.headers_mut().insert(
                        header::CACHE_CONTROL,
                        HeaderValue::from_static("private, max-age=60"),
                    );
                }
                "/vary" => {
                    res.headers_mut()
                        .insert(header::VARY, HeaderValue::from_static("Accept-Language"));
                }
                "/vary-star" => {
                    res.headers_mut()
                        .insert(header::VARY, HeaderValue::from_static("*"));
                }
                "/tagged" => {
                    res.extensions_mut().insert(CacheTags::new(["users"]));
                }
                "/missing" => *res.status_mut() = StatusCode::NOT_FOUND,
                "/stream" => {
                    let chunks = futures_util::stream::iter(vec![
                        Ok::<_, Infallible>(http_body::Frame::data(Bytes::from("a"))),
                        Ok(http_body::Frame::data(Bytes::from("b"))),
                    ]);
                    res = Response::new(StreamBody::new(chunks).boxed_unsync());
                }
                "/big" => {
                    res = Response::new(Full::new(Bytes::from(vec![b'x'; 2_000])).boxed_unsync());
                }
                _ => {}
            }
            Ok::<_, Infallible>(res)
        }
    });
    configure(ResponseCacheLayer::new(cache)).layer(svc)
}

async fn send<S>(svc: &S, req: Request<()>) -> (StatusCode, http::HeaderMap, String)
where
    S: tower_service::Service<
            Request<()>,
            Response = Response<
                crate::body::ResponseBody<
                    http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>,
                >,
            >,
            Error = Infallible,
        > + Clone,
{
    let res = svc.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

#[tokio::test]
async fn response_cache_etag_and_304() {
    let server = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = app(redis_cache(&server.url()).await, calls.clone(), |l| l);
    let (s, h, first) = send(&svc, get("/a?x=1")).await;
    assert_eq!(s, 200);
    let etag = h[header::ETAG].clone();
    assert!(etag.to_str().unwrap().starts_with('"'), "strong etag");
    let (_, h2, second) = send(&svc, get("/a?x=1")).await;
    assert_eq!(first, second, "served from the cache");
    assert_eq!(h2[header::ETAG], etag);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Different query: different entry.
    let (_, _, other) = send(&svc, get("/a?x=2")).await;
    assert_ne!(other, first);
    // If-None-Match → 304 with an empty body, on a hit and on a miss.
    let (s, h, body) = send(
        &svc,
        Request::get("/a?x=1")
            .header(header::IF_NONE_MATCH, etag.clone())
            .body(())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(h[header::ETAG], etag);
    let (s, _, _) = send(
        &svc,
        Request::get("/fresh")
            .header(header::IF_NONE_MATCH, "W/\"nope\", *")
            .body(())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_MODIFIED, "* matches any current entity");
    // HEAD is cached separately, without a body.
    let head = Request::head("/a?x=1").body(()).unwrap();
    let (s, _, body) = send(&svc, head).await;
    assert_eq!(s, 200);
    assert!(body.is_empty());
    let head = Request::head("/a?x=1").body(()).unwrap();
    let (_, _, body) = send(&svc, head).await;
    assert!(body.is_empty());
    let before = calls.load(Ordering::SeqCst);
    // Request Cache-Control: no-cache skips the lookup (and refreshes the entry).
    let (_, _, refreshed) = send(
        &svc,
        Request::get("/a?x=1")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(())
            .unwrap(),
    )
    .await;
    assert_ne!(refreshed, first);
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn response_cache_vary_and_uncacheable_responses() {
    let server = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = app(redis_cache(&server.url()).await, calls.clone(), |l| {
        l.max_entry_bytes(1_000)
    });
    let lang = |l: &'static str| {
        Request::get("/vary")
            .header(header::ACCEPT_LANGUAGE, l)
            .body(())
            .unwrap()
    };
    let (_, _, en) = send(&svc, lang("en")).await;
    let (_, _, de) = send(&svc, lang("de")).await;
    assert_ne!(en, de);
    assert_eq!(send(&svc, lang("en")).await.2, en);
    assert_eq!(send(&svc, lang("de")).await.2, de);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    for path in [
        "/cookie",
        "/no-store",
        "/private",
        "/vary-star",
        "/missing",
        "/stream",
        "/big",
    ] {
        let (_, h1, a) = send(&svc, get(path)).await;
        let (_, _, b) = send(&svc, get(path)).await;
        if path == "/stream" {
            assert_eq!(a, "ab", "streamed through unchanged");
        } else if path == "/big" {
            assert_eq!(a.len(), 2_000, "over the cap: passed through");
        } else {
            assert_ne!(a, b, "{path} must not be cached");
        }
        assert!(!h1.contains_key(header::ETAG), "{path}");
    }
    let before = calls.load(Ordering::SeqCst);
    send(&svc, get("/stream")).await;
    send(&svc, get("/big")).await;
    assert_eq!(calls.load(Ordering::SeqCst), before + 2);
    // Request no-store and non-GET methods bypass the cache.
    let nostore = || {
        Request::get("/x")
            .header(header::CACHE_CONTROL, "no-store")
            .body(())
            .unwrap()
    };
    assert_ne!(send(&svc, nostore()).await.2, send(&svc, nostore()).await.2);
    let post = || Request::post("/x").body(()).unwrap();
    assert_ne!(send(&svc, post()).await.2, send(&svc, post()).await.2);
}

#[tokio::test]
async fn response_cache_authenticated_requests_and_principals() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = memory();
    let anonymous_only = app(cache.clone(), calls.clone(), |l| {
        l.identity(IdentityReader::new().user::<User>())
    });
    let authed = |u: &'static str| Request::get("/me").extension(User(u)).body(()).unwrap();
    let bearer = || {
        Request::get("/me")
            .header(header::AUTHORIZATION, "Bearer t")
            .body(())
            .unwrap()
    };
    assert_ne!(
        send(&anonymous_only, authed("ada")).await.2,
        send(&anonymous_only, authed("ada")).await.2
    );
    assert_ne!(
        send(&anonymous_only, bearer()).await.2,
        send(&anonymous_only, bearer()).await.2
    );
    let by_user = app(cache, calls.clone(), |l| {
        l.identity(IdentityReader::new().user::<User>())
            .by_principal(true)
            .ttl(Ttl::Long)
            .vary_headers([header::ACCEPT])
    });
    let ada = send(&by_user, authed("ada")).await.2;
    let bob = send(&by_user, authed("bob")).await.2;
    assert_ne!(ada, bob, "keyed by principal");
    assert_eq!(send(&by_user, authed("ada")).await.2, ada);
    assert_eq!(send(&by_user, authed("bob")).await.2, bob);
    // Credentials without a readable principal are still never cached.
    assert_ne!(
        send(&by_user, bearer()).await.2,
        send(&by_user, bearer()).await.2
    );
}

#[tokio::test]
async fn response_cache_tags_and_tenants() {
    #[derive(Clone)]
    struct Tenant(&'static str);
    impl TenantIdentity for Tenant {
        fn tenant_id(&self) -> &str {
            self.0
        }
    }
    let server = RedisServer::start();
    let cache = redis_cache(&server.url()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = app(cache.clone(), calls.clone(), |l| {
        l.identity(IdentityReader::new().tenant::<Tenant>())
    });
    let req = |t: &'static str| {
        Request::get("/tagged")
            .extension(Tenant(t))
            .body(())
            .unwrap()
    };
    let acme = send(&svc, req("acme")).await.2;
    let globex = send(&svc, req("globex")).await.2;
    assert_ne!(acme, globex, "tenants never share a response");
    assert_eq!(send(&svc, req("acme")).await.2, acme);
    cache.for_tenant("acme").invalidate_tag("users").await;
    assert_ne!(
        send(&svc, req("acme")).await.2,
        acme,
        "tag invalidation removes it"
    );
    assert_eq!(
        send(&svc, req("globex")).await.2,
        globex,
        "other tenant untouched"
    );
}

#[tokio::test]
async fn response_cache_declared_tags_close_the_invalidation_race() {
    use tokio::sync::Notify;
    for declared in [false, true] {
        let cache = memory();
        // The "database", read by the handler before it answers.
        let data = Arc::new(AtomicUsize::new(1));
        let entered = Arc::new(Notify::new());
        let gate = Arc::new(Notify::new());
        let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let handler = {
            let (data, entered, gate, first) =
                (data.clone(), entered.clone(), gate.clone(), first.clone());
            service_fn(move |_req: Request<()>| {
                let (data, entered, gate, first) =
                    (data.clone(), entered.clone(), gate.clone(), first.clone());
                async move {
                    let value = data.load(Ordering::SeqCst);
                    if first.swap(false, Ordering::SeqCst) {
                        // Read done; the response is not cached yet.
                        entered.notify_one();
                        gate.notified().await;
                    }
                    let mut res = Response::new(Full::new(Bytes::from(value.to_string())));
                    res.extensions_mut().insert(CacheTags::new(["report"]));
                    Ok::<_, Infallible>(res)
                }
            })
        };
        let layer = ResponseCacheLayer::new(cache.clone());
        let layer = if declared {
            layer.tags(["report"])
        } else {
            layer
        };
        let svc = layer.layer(handler);
        let get = || Request::get("/report").body(()).unwrap();
        let text = |res: Response<crate::body::ResponseBody<Full<Bytes>>>| async move {
            String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
        };

        let slow = tokio::spawn(svc.clone().oneshot(get()));
        entered.notified().await;
        // A write and its invalidation land while the first request is in the handler.
        data.store(2, Ordering::SeqCst);
        cache.invalidate_tag("report").await;
        gate.notify_one();
        assert_eq!(text(slow.await.unwrap().unwrap()).await, "1");

        let next = text(svc.clone().oneshot(get()).await.unwrap()).await;
        if declared {
            assert_eq!(
                next, "2",
                "declared tags: the racing response was stored stale"
            );
        } else {
            // The documented limit of undeclared tags: versioned when stored.
            assert_eq!(next, "1");
        }
    }
}

/// A `no-cache` request refreshes the entry; with a two-tier cache whose L1 holds it, the
/// tag versions it stores under are still those read before the handler ran (an L1 hit
/// carries none), so an invalidation racing the handler leaves the refresh stale.
#[tokio::test]
async fn response_cache_no_cache_refresh_over_l1_keeps_the_race_closed() {
    use tokio::sync::Notify;
    let server = RedisServer::start();
    let (cache, _backend) = two_tier(&server.url()).await;
    let data = Arc::new(AtomicUsize::new(1));
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let handler = {
        let (data, entered, gate) = (data.clone(), entered.clone(), gate.clone());
        service_fn(move |req: Request<()>| {
            let (data, entered, gate) = (data.clone(), entered.clone(), gate.clone());
            async move {
                let value = data.load(Ordering::SeqCst);
                if req.headers().contains_key(header::CACHE_CONTROL) {
                    entered.notify_one();
                    gate.notified().await;
                }
                let mut res = Response::new(Full::new(Bytes::from(value.to_string())));
                res.extensions_mut().insert(CacheTags::new(["report"]));
                Ok::<_, Infallible>(res)
            }
        })
    };
    let svc = ResponseCacheLayer::new(cache.clone())
        .tags(["report"])
        .layer(handler);
    let text = |res: Response<crate::body::ResponseBody<Full<Bytes>>>| async move {
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };
    let plain = || Request::get("/report").body(()).unwrap();
    assert_eq!(text(svc.clone().oneshot(plain()).await.unwrap()).await, "1");
    assert_eq!(text(svc.clone().oneshot(plain()).await.unwrap()).await, "1");

    let refresh = Request::get("/report")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(())
        .unwrap();
    let slow = tokio::spawn(svc.clone().oneshot(refresh));
    entered.notified().await;
    data.store(2, Ordering::SeqCst);
    cache.invalidate_tag("report").await;
    gate.notify_one();
    assert_eq!(text(slow.await.unwrap().unwrap()).await, "1");
    assert_eq!(
        text(svc.clone().oneshot(plain()).await.unwrap()).await,
        "2",
        "the refresh computed before the invalidation was stored stale"
    );
}

/// A body that announces `len` bytes, yields `part`, then fails (a reset upstream).
struct Truncated {
    part: Option<Bytes>,
    len: u64,
}

impl http_body::Body for Truncated {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(Some(match self.part.take() {
            Some(part) => Ok(http_body::Frame::data(part)),
            None => Err(std::io::Error::other("upstream reset")),
        }))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

#[tokio::test]
async fn response_cache_passes_a_failing_body_on_and_never_caches_it() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = ResponseCacheLayer::new(memory()).layer(service_fn(move |_req: Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            Ok::<_, Infallible>(Response::new(Truncated {
                part: Some(Bytes::from_static(b"hello")),
                len: 11,
            }))
        }
    }));
    for round in 1..=2 {
        let res = svc.clone().oneshot(get("/flaky")).await.unwrap();
        // The inner status and the body's own error, never a 5xx made up by the layer.
        assert_eq!(res.status(), StatusCode::OK, "round {round}");
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "hello");
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "upstream reset");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            round,
            "not served from the cache"
        );
    }
}

// ------------------------------------------------- response cache: poisoning (#17)

#[tokio::test]
async fn response_cache_two_hosts_never_share_an_entry() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = app(memory(), calls.clone(), |l| l);
    let host = |h: &str| Request::get("/p").header(header::HOST, h).body(()).unwrap();
    let a = send(&svc, host("a.example")).await.2;
    let b = send(&svc, host("b.example")).await.2;
    assert_ne!(a, b, "another host's entry was served");
    assert_eq!(send(&svc, host("a.example")).await.2, a, "same host: a hit");
    assert_eq!(
        send(&svc, host("A.EXAMPLE")).await.2,
        a,
        "host is case-insensitive"
    );
    // Absolute-form targets (HTTP/2 `:authority`, proxies): scheme and authority count.
    let https = send(&svc, get("https://a.example/p")).await.2;
    let http = send(&svc, get("http://a.example/p")).await.2;
    assert_ne!(https, http, "two schemes shared an entry");
    assert_ne!(send(&svc, get("https://c.example/p")).await.2, https);
    assert_eq!(send(&svc, get("https://a.example/p")).await.2, https);
}

#[tokio::test]
async fn response_cache_cookie_request_is_never_served_to_another_client() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = app(memory(), calls.clone(), |l| {
        l.identity(IdentityReader::new().user::<User>())
    });
    let with = |name: http::HeaderName, value: &'static str| {
        Request::get("/me").header(name, value).body(()).unwrap()
    };
    // Alice's page (her session cookie, no identity readable) is not stored ...
    let alice = send(&svc, with(header::COOKIE, "session=alice")).await.2;
    let anon = send(&svc, get("/me")).await.2;
    assert_ne!(
        anon, alice,
        "a cookie request's response was served to another client"
    );
    // ... and a credentialed request is not answered from the anonymous entry either.
    assert_eq!(
        send(&svc, get("/me")).await.2,
        anon,
        "anonymous requests share"
    );
    assert_ne!(
        send(&svc, with(header::COOKIE, "session=bob")).await.2,
        anon
    );
    assert_ne!(
        send(&svc, with(header::AUTHORIZATION, "Bearer b")).await.2,
        anon
    );
    // A route declared public shares one entry whatever the credentials.
    let public = app(memory(), calls, |l| l.public(true));
    let first = send(&public, with(header::COOKIE, "session=alice")).await.2;
    assert_eq!(send(&public, get("/me")).await.2, first);
    // Still never a response that sets a cookie.
    let mut req = Request::get("/me2")
        .header(header::COOKIE, "session=alice")
        .body(())
        .unwrap();
    req.headers_mut()
        .insert("x-set-set-cookie", HeaderValue::from_static("s=alice"));
    let set = send(&public, req).await;
    assert_eq!(set.1[header::SET_COOKIE], "s=alice");
    let again = send(&public, get("/me2")).await;
    assert_ne!(again.2, set.2, "a Set-Cookie response was stored");
}

#[tokio::test]
async fn response_cache_never_stores_nonce_pages_in_either_stacking_order() {
    use crate::csp::{Csp, CspLayer, CspNonce};
    let csp = CspLayer::builder().enforce(Csp::strict()).build().unwrap();
    let page = service_fn(|req: Request<()>| async move {
        let body = if req.uri().path() == "/page" {
            let nonce = req.extensions().get::<CspNonce>().unwrap();
            format!("<script nonce=\"{nonce}\">go()</script>")
        } else {
            format!("{{\"plain\": {}}}", fastrand::u64(..))
        };
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
    });
    async fn nonce_of<S>(svc: S, path: &str) -> (String, String, String)
    where
        S: tower_service::Service<
                Request<()>,
                Response = Response<crate::body::ResponseBody<Full<Bytes>>>,
                Error = Infallible,
            >,
    {
        let res = svc.oneshot(get(path)).await.unwrap();
        let header = res.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec())
            .unwrap();
        let in_header = header
            .split("'nonce-")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap();
        let in_body = body
            .split("nonce=\"")
            .nth(1)
            .map_or("", |s| s.split('"').next().unwrap())
            .to_owned();
        (in_header.to_owned(), in_body, body)
    }
    // The CSP layer outside: the body would keep the first nonce under a fresh header.
    let cache_inside = csp.layer(ResponseCacheLayer::new(memory()).layer(page));
    let (h1, b1, _) = nonce_of(cache_inside.clone(), "/page").await;
    let (h2, b2, _) = nonce_of(cache_inside.clone(), "/page").await;
    assert_eq!(h1, b1);
    assert_eq!(h2, b2, "CSP outside: a cached body kept an old nonce");
    // A response that does not use the nonce is still cached under the CSP layer.
    let plain = nonce_of(cache_inside.clone(), "/plain").await.2;
    assert_eq!(nonce_of(cache_inside, "/plain").await.2, plain);
    // The cache outside: every client would get the same nonce.
    let cache_outside = ResponseCacheLayer::new(memory()).layer(csp.layer(page));
    let (h1, b1, _) = nonce_of(cache_outside.clone(), "/page").await;
    let (h2, b2, _) = nonce_of(cache_outside, "/page").await;
    assert_eq!((h1.as_str(), h2.as_str()), (b1.as_str(), b2.as_str()));
    assert_ne!(h1, h2, "cache outside: the nonce was shared");
}

#[tokio::test]
async fn response_cache_follows_rfc9111_freshness_and_sends_age() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = app(memory(), calls, |l| l);
    let req = |path: &str, headers: &[(&'static str, &'static str)]| {
        let mut b = Request::get(path);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    };
    let cached = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let svc = svc.clone();
        async move {
            let first = send(&svc, req(path, headers)).await.2;
            let second = send(&svc, req(path, &[])).await;
            (second.2 == first, second.1, first)
        }
    };
    // Not stored (RFC 9111 §3, §5.2.2): no-store, private, no-cache, max-age=0, Vary: *,
    // Set-Cookie, and a response already as old as its freshness lifetime (§4.2.3).
    for (path, h) in [
        ("/r1", &[("x-set-cache-control", "no-store")][..]),
        ("/r2", &[("x-set-cache-control", "private")][..]),
        ("/r3", &[("x-set-cache-control", "no-cache")][..]),
        ("/r4", &[("x-set-cache-control", "max-age=0")][..]),
        (
            "/r5",
            &[("x-set-cache-control", "s-maxage=0, max-age=60")][..],
        ),
        ("/r6", &[("x-set-vary", "*")][..]),
        ("/r7", &[("x-set-set-cookie", "a=b")][..]),
        (
            "/r8",
            &[("x-set-cache-control", "max-age=10"), ("x-set-age", "10")][..],
        ),
        ("/r9", &[("x-set-cache-control", "max-age=ten")][..]),
        (
            "/r10",
            &[("x-set-cache-control", "max-age=5, max-age=50")][..],
        ),
    ] {
        assert!(!cached(path, h).await.0, "{path} {h:?} was stored");
    }
    // Stored, with `Age` on hits (§5.1): the origin's Age plus the time spent stored.
    let (hit, headers, _) = cached(
        "/s1",
        &[
            ("x-set-cache-control", "max-age=100, must-revalidate"),
            ("x-set-age", "10"),
        ],
    )
    .await;
    assert!(hit);
    let age: u64 = headers[header::AGE].to_str().unwrap().parse().unwrap();
    assert!((10..=11).contains(&age), "Age: {age}");
    let (hit, headers, _) = cached("/s2", &[]).await;
    assert!(hit, "no directive: the layer's TTL");
    assert_eq!(headers[header::AGE], "0");
    // Freshness lifetime: s-maxage over max-age for a shared cache (§5.2.2.10).
    let s3 = cached("/s3", &[("x-set-cache-control", "max-age=100, s-maxage=1")]).await;
    let s4 = cached("/s4", &[("x-set-cache-control", "max-age=1")]).await;
    assert!(s3.0 && s4.0);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_ne!(
        send(&svc, req("/s3", &[])).await.2,
        s3.2,
        "s-maxage=1 still fresh"
    );
    assert_ne!(
        send(&svc, req("/s4", &[])).await.2,
        s4.2,
        "max-age=1 still fresh"
    );
}
