//! Forwarding-header walking (`X-Forwarded-For`, `Forwarded`, the single-value presets)
//! never panics, a spoofed header from an untrusted peer never changes the resolved
//! address, and behind a trusted proxy the client is always a hop of the configured
//! header or the peer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_rampart::client_ip::{ClientIpResolver, ForwardedHeader, PeerAddr, TrustedProxies};

fuzz_target!(|data: &[u8]| {
    let _ = tower_rampart::client_ip::__parse_for_fuzzing(data);
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let presets = [
        ForwardedHeader::XForwardedFor,
        ForwardedHeader::Forwarded,
        ForwardedHeader::XRealIp,
        ForwardedHeader::CloudFrontViewerAddress,
    ];
    let trusting = ClientIpResolver::new(TrustedProxies::loopback())
        .source(presets[usize::from(data.first().copied().unwrap_or(0)) % presets.len()]);
    for (peer, trusted) in [("127.0.0.1:1", true), ("198.51.100.7:1", false)] {
        let req = http::Request::builder()
            .header("x-forwarded-for", value.clone())
            .header("forwarded", value.clone())
            .header("x-real-ip", value.clone())
            .header("cloudfront-viewer-address", value.clone())
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
