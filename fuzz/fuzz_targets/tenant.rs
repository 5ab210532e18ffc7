//! Tenant identifier extraction from a `Host` header and a request path (host template,
//! subdomain and path-prefix strategies) never panics, and whatever it extracts is a
//! valid, normalised identifier: no dot, slash, `%`, control or upper-case character.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_rampart::tenant::TenantId;

fuzz_target!(|data: &[u8]| {
    // First byte splits the input into a host part and a path part.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(rest.len());
    let (host, path) = rest.split_at(at);
    let path = String::from_utf8_lossy(path);
    for found in tower_rampart::tenant::__extract_for_fuzzing(host, &path) {
        if let Ok(Some(id)) = found {
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'));
            assert_eq!(TenantId::parse(&id).map(|t| t.to_string()), Ok(id));
        }
    }
});
