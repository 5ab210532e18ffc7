//! Forwarding-header parsing (`X-Forwarded-For`, `Forwarded`, `X-Real-IP`) never panics,
//! and a spoofed header from an untrusted peer never changes the resolved address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_rampart::client_ip::{ClientIpResolver, PeerAddr, TrustedProxies};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = tower_rampart::client_ip::__parse_for_fuzzing(s);
    }
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let trusting = ClientIpResolver::new(TrustedProxies::loopback());
    for (peer, trusted) in [("127.0.0.1:1", true), ("198.51.100.7:1", false)] {
        let req = http::Request::builder()
            .header("x-forwarded-for", value.clone())
            .header("forwarded", value.clone())
            .header("x-real-ip", value.clone())
            .header("x-forwarded-proto", value.clone())
            .extension(PeerAddr(peer.parse().unwrap()))
            .body(())
            .unwrap();
        let ip = trusting.resolve(&req).expect("peer is known");
        let _ = ip.key();
        let _ = trusting.scheme(&req);
        if !trusted {
            assert_eq!(ip.addr().to_string(), "198.51.100.7");
        }
    }
});
