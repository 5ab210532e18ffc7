//! Fuzzes the rate limiter's parsers: path patterns and quota strings, and pattern
//! matching against arbitrary request paths (untrusted input at request time).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_rampart::rate_limit::{PathPattern, Quota};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, path) = text.split_once('\n').unwrap_or((text, "/"));
    let _ = pattern.parse::<Quota>();
    if let Ok(p) = PathPattern::new(pattern) {
        let _ = p.matches(path);
        // A literal pattern always matches itself.
        if !pattern.contains(['*', '{']) {
            assert!(p.matches(pattern));
        }
    }
});
