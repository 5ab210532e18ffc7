//! CSP parsing never panics, and whatever parses renders to a valid header value that
//! parses back to the same policy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_rampart::csp::Csp;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(csp) = Csp::parse(s) {
        let text = csp.to_string();
        let again = Csp::parse(&text).expect("a rendered policy parses");
        assert_eq!(again, csp);
        let rendered = csp.render_with_nonce("AAAAAAAAAAAAAAAAAAAAAA==");
        assert!(http::HeaderValue::from_str(&rendered).is_ok(), "{rendered:?}");
    }
});
