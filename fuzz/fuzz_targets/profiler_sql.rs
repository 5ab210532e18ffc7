//! SQL normalisation and query-string redaction on arbitrary input: no panic, normalisation
//! idempotent, a sensitive field's value never survives redaction.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_rampart::profiler::{REDACTED, normalize_sql, redact_query};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let once = normalize_sql(s);
    if once.len() < 4096 {
        assert_eq!(normalize_sql(&once), once);
    }
    let redacted = redact_query(s);
    let probe = format!("{s}&password=fuzz-secret-value");
    let r = redact_query(&probe);
    assert!(r.ends_with(&format!("password={REDACTED}")));
    let _ = redacted;
});
