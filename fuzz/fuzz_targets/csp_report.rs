//! The report receiver's body parsing never panics, for every accepted content type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_rampart::csp::parse_reports;

fuzz_target!(|data: &[u8]| {
    for content_type in [
        "application/csp-report",
        "application/reports+json",
        "application/json; charset=utf-8",
    ] {
        if let Ok(violations) = parse_reports(content_type, data) {
            for v in violations {
                assert!(v.document_uri.len() <= 2048);
                assert!(v.effective_directive.len() <= 2048);
            }
        }
    }
});
