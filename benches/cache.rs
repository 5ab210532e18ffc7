//! Cache costs against their anchors, measured in the same run:
//!
//! - L1 hit (two-tier backend, value in moka) vs a raw moka `get` (target ≤ 1.5×);
//! - L2 hit (Redis, one `EVALSHA` including the tag-version check) vs a raw Redis `GET`
//!   on the same kind of connection (target ≤ 1.3×);
//! - `invalidate_tag` with 1 vs 100 000 tagged entries (target ratio ≤ 1.2).
//!
//! `cargo bench --bench cache --all-features` (starts a private `redis-server`). A summary
//! with the ratios, from plain `Instant` timings of the same operations, is printed at the end.

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use rampart_test_support::RedisServer;
use tokio::runtime::Runtime;
use tower_rampart::cache::{Cache, CacheOptions, MemoryBackend, RedisBackend, TwoTierBackend};

struct Setup {
    _server: RedisServer,
    two_tier: Cache,
    redis: Cache,
    raw_moka: moka::future::Cache<Arc<str>, Arc<bytes::Bytes>>,
    raw_redis: redis::aio::ConnectionManager,
    small: Cache,
    big: Cache,
}

fn setup(rt: &Runtime) -> Setup {
    let server = RedisServer::start();
    let url = server.url();
    rt.block_on(async move {
        let l2 = || async {
            RedisBackend::connect(&url)
                .await
                .unwrap()
                .timeout(Duration::from_millis(500))
        };
        let tt = TwoTierBackend::builder(MemoryBackend::new(64 << 20), l2().await)
            .start()
            .await;
        let two_tier = Cache::builder().build(tt).unwrap();
        let redis = Cache::builder().build(l2().await).unwrap();
        let opts = CacheOptions::new().tag("users");
        two_tier
            .set("user:1", &"Ada Lovelace".to_owned(), &opts)
            .await;
        assert!(two_tier.get::<String>("user:1").await.is_some());
        redis.set("user:1", &"Ada Lovelace".to_owned(), &opts).await;
        let raw_moka = moka::future::Cache::new(10_000);
        raw_moka
            .insert(
                Arc::from("user:1"),
                Arc::new(bytes::Bytes::from_static(b"\x0cAda Lovelace")),
            )
            .await;
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut raw_redis = redis::aio::ConnectionManager::new(client).await.unwrap();
        let _: () = redis::cmd("SET")
            .arg("raw:user:1")
            .arg(&b"\x0cAda Lovelace"[..])
            .query_async(&mut raw_redis)
            .await
            .unwrap();
        let small = redis.for_tenant("small");
        small.set("e0", &0u32, &opts).await;
        let big = redis.for_tenant("big");
        let n = if std::env::var_os("CACHE_BENCH_QUICK").is_some() {
            1_000
        } else {
            100_000u32
        };
        for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
            let items: Vec<(String, u32)> = chunk.iter().map(|i| (format!("e{i}"), *i)).collect();
            big.set_many(&items, &opts).await;
        }
        Setup {
            _server: server,
            two_tier,
            redis,
            raw_moka,
            raw_redis,
            small,
            big,
        }
    })
}

async fn raw_get(conn: &mut redis::aio::ConnectionManager) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg("raw:user:1")
        .query_async(conn)
        .await
        .ok()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let s = setup(&rt);

    let mut g = c.benchmark_group("l1_hit");
    g.bench_function("raw_moka_get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(s.raw_moka.get("user:1").await) });
    });
    g.bench_function("cache_get_l1", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(s.two_tier.get::<String>("user:1").await) });
    });
    g.finish();

    let mut g = c.benchmark_group("l2_hit");
    g.bench_function("raw_redis_get", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = s.raw_redis.clone();
            async move { black_box(raw_get(&mut conn).await) }
        });
    });
    g.bench_function("cache_get_redis_with_tag_check", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(s.redis.get::<String>("user:1").await) });
    });
    g.finish();

    let mut g = c.benchmark_group("invalidate_tag");
    g.bench_function("1_entry", |b| {
        b.to_async(&rt)
            .iter(|| async { s.small.invalidate_tag("users").await });
    });
    g.bench_function("100000_entries", |b| {
        b.to_async(&rt)
            .iter(|| async { s.big.invalidate_tag("users").await });
    });
    g.finish();

    // Summary from plain timings of the same operations, each loop inside one task.
    macro_rules! per_op {
        ($n:expr, $op:expr) => {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..$n {
                    black_box($op);
                }
                t.elapsed() / $n
            })
        };
    }
    if std::env::var_os("CACHE_BENCH_QUICK").is_some() {
        let mem = Cache::builder()
            .build(MemoryBackend::new(64 << 20))
            .unwrap();
        rt.block_on(mem.set(
            "user:1",
            &"Ada Lovelace".to_owned(),
            &CacheOptions::new().tag("users"),
        ));
        let mem_untagged = Cache::builder()
            .build(MemoryBackend::new(64 << 20))
            .unwrap();
        rt.block_on(mem_untagged.set("user:1", &"Ada Lovelace".to_owned(), &CacheOptions::new()));
        // moka configured as the memory backend configures it (weigher, foldhash,
        // time-to-live), keyed by the same stored key.
        let same: moka::future::Cache<Arc<[u8]>, Arc<bytes::Bytes>, foldhash::fast::RandomState> =
            moka::future::Cache::builder()
                .max_capacity(64 << 20)
                .weigher(|k: &Arc<[u8]>, v: &Arc<bytes::Bytes>| (k.len() + v.len()) as u32)
                .time_to_live(Duration::from_secs(30))
                .build_with_hasher(foldhash::fast::RandomState::default());
        let k = s.two_tier.key_for("user:1");
        rt.block_on(same.insert(
            Arc::from(k.as_bytes()),
            Arc::new(bytes::Bytes::from_static(b"x")),
        ));
        println!(
            "moka same config {:?}",
            per_op!(50_000u32, same.get(k.as_bytes()).await)
        );
        println!(
            "quanta clock {:?}",
            per_op!(50_000u32, quanta::Instant::now())
        );
        let dm = dashmap::DashMap::<Arc<str>, u64>::new();
        dm.insert(Arc::from("{rampart:1:g:0}:g:users"), 5);
        println!(
            "dashmap get {:?}",
            per_op!(50_000u32, dm.get("{rampart:1:g:0}:g:users").map(|v| *v))
        );
        println!(
            "key_for {:?}",
            per_op!(50_000u32, s.two_tier.key_for("user:1"))
        );
        println!(
            "memory get tagged {:?}",
            per_op!(50_000u32, mem.get::<String>("user:1").await)
        );
        println!(
            "memory get untagged {:?}",
            per_op!(50_000u32, mem_untagged.get::<String>("user:1").await)
        );
        println!(
            "raw moka {:?}",
            per_op!(50_000u32, s.raw_moka.get("user:1").await)
        );
        println!(
            "two tier {:?}",
            per_op!(50_000u32, s.two_tier.get::<String>("user:1").await)
        );
        println!(
            "postcard {:?}",
            per_op!(
                50_000u32,
                postcard::from_bytes::<String>(b"\x0cAda Lovelace").unwrap()
            )
        );
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    // Interleaved rounds (anchor, subject, anchor, subject, …); the median ratio of the
    // rounds is robust to the load of a shared machine drifting during the run.
    let mut conn = s.raw_redis.clone();
    let mut l1_rounds = Vec::new();
    let mut l2_rounds = Vec::new();
    let mut inv_rounds = Vec::new();
    let (mut moka, mut l1, mut raw, mut l2, mut one, mut many) = Default::default();
    for _ in 0..15 {
        moka = per_op!(5_000u32, s.raw_moka.get("user:1").await);
        l1 = per_op!(5_000u32, s.two_tier.get::<String>("user:1").await);
        l1_rounds.push(ratio(l1, moka));
        raw = per_op!(300u32, raw_get(&mut conn).await);
        l2 = per_op!(300u32, s.redis.get::<String>("user:1").await);
        l2_rounds.push(ratio(l2, raw));
        one = per_op!(300u32, s.small.invalidate_tag("users").await);
        many = per_op!(300u32, s.big.invalidate_tag("users").await);
        inv_rounds.push(ratio(many, one));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r1, r2, r3) = (median(l1_rounds), median(l2_rounds), median(inv_rounds));
    println!("\ncache bench summary (per operation, busy shared machine: expect noise)");
    println!(
        "  L1 hit vs raw moka get: median {r1:.2}x over 15 rounds (last: {l1:?} vs {moka:?}; target <= 1.5x)"
    );
    println!(
        "  L2 hit with tag check vs raw Redis GET: median {r2:.2}x (last: {l2:?} vs {raw:?}; target <= 1.3x)"
    );
    println!(
        "  invalidate_tag 100000 vs 1 tagged entries: median {r3:.2}x (last: {many:?} vs {one:?}; target <= 1.2x)"
    );
    drop(s);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
