//! Client-IP resolution cost: peer only vs a trusted proxy with `X-Forwarded-For`.
//!
//! `cargo bench --bench client_ip`

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tower_rampart::client_ip::{ClientIpResolver, PeerAddr, TrustedProxies};

fn bench(c: &mut Criterion) {
    let resolver = ClientIpResolver::new(TrustedProxies::new(["10.0.0.0/8"]).unwrap());
    let direct = http::Request::builder()
        .extension(PeerAddr("198.51.100.1:1".parse().unwrap()))
        .body(())
        .unwrap();
    let proxied = http::Request::builder()
        .header("x-forwarded-for", "203.0.113.1, 10.0.0.9")
        .extension(PeerAddr("10.0.0.1:1".parse().unwrap()))
        .body(())
        .unwrap();
    let mut g = c.benchmark_group("client_ip");
    g.bench_function("peer_only", |b| {
        b.iter(|| resolver.resolve(black_box(&direct)));
    });
    g.bench_function("trusted_xff", |b| {
        b.iter(|| resolver.resolve(black_box(&proxied)));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
