//! Masking of credentials before anything is stored.

use std::sync::Arc;

use http::HeaderMap;

/// What replaces a sensitive value.
pub const REDACTED: &str = "[redacted]";

/// Headers that always carry credentials.
const SENSITIVE_HEADERS: [&str; 8] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-csrf-token",
];

/// Name fragments that mark a header, query or form field as sensitive.
const SENSITIVE_FRAGMENTS: [&str; 8] = [
    "password",
    "passwd",
    "token",
    "secret",
    "key",
    "signature",
    "session",
    "credential",
];

/// Whether a header's value must be masked: `Authorization`, `Proxy-Authorization`,
/// `Cookie`, `Set-Cookie`, API-key headers, and any header whose name contains
/// `password`, `token`, `secret`, `key`, `signature`, `session` or `credential`.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::is_sensitive_header;
///
/// assert!(is_sensitive_header("Authorization"));
/// assert!(is_sensitive_header("x-api-key"));
/// assert!(!is_sensitive_header("accept"));
/// ```
pub fn is_sensitive_header(name: &str) -> bool {
    SENSITIVE_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
        || is_sensitive_field(name)
}

/// Whether a query-string or form field must be masked: its name (case-insensitive)
/// contains `password`, `passwd`, `token`, `secret`, `key`, `signature`, `session` or
/// `credential` (so `api_key`, `X-Amz-Signature`, `access_token` are all masked).
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::is_sensitive_field;
///
/// assert!(is_sensitive_field("access_token"));
/// assert!(!is_sensitive_field("page"));
/// ```
pub fn is_sensitive_field(name: &str) -> bool {
    let bytes = name.as_bytes();
    SENSITIVE_FRAGMENTS.iter().any(|f| {
        bytes
            .windows(f.len())
            .any(|w| w.eq_ignore_ascii_case(f.as_bytes()))
    })
}

/// Header values recorded by default: content negotiation and framing, nothing that
/// identifies or authenticates.
const SAFE_HEADERS: [&str; 19] = [
    "accept",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "content-encoding",
    "content-language",
    "content-length",
    "content-type",
    "date",
    "etag",
    "host",
    "if-modified-since",
    "if-none-match",
    "last-modified",
    "origin",
    "server-timing",
    "user-agent",
    "vary",
    "x-request-id",
];

/// Query parameters whose values are recorded by default: paging and sorting.
const SAFE_PARAMS: [&str; 9] = [
    "page",
    "per_page",
    "page_size",
    "limit",
    "offset",
    "sort",
    "order",
    "format",
    "lang",
];

/// What the profiler records of header and query values.
///
/// **By default an allowlist**: a header's value is kept only for harmless headers
/// (`content-type`, `accept`, `accept-language`, `accept-encoding`, `user-agent`,
/// `content-length`, `host`, `origin`, `cache-control`, `etag`, `x-request-id`, …) and a
/// query value only for paging and sorting parameters (`page`, `per_page`, `limit`,
/// `offset`, `sort`, `order`, …); every other value is [`REDACTED`]. Names are always
/// kept. [`denylist`](Self::denylist) masks only credential-looking names instead, and
/// must be chosen explicitly.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::Redaction;
///
/// let r = Redaction::default().allow_header("x-tenant").allow_query_param("q");
/// assert!(r.keeps_header("X-Tenant") && r.keeps_header("accept"));
/// assert!(!r.keeps_header("x-jwt-assertion"));
/// assert_eq!(r.redact_query("q=shoes&code=abc&page=2"), "q=shoes&code=[redacted]&page=2");
/// assert_eq!(Redaction::denylist().redact_query("code=abc&token=x"), "code=abc&token=[redacted]");
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Redaction {
    denylist: bool,
    headers: Arc<[Box<str>]>,
    params: Arc<[Box<str>]>,
}

impl Redaction {
    /// The default: values kept only for the built-in allowlists (and names added with
    /// [`allow_header`](Self::allow_header) and [`allow_query_param`](Self::allow_query_param)).
    pub fn allowlist() -> Self {
        Self::default()
    }

    /// Keeps every value except those of credential-looking names (see
    /// [`is_sensitive_header`] and [`is_sensitive_field`]). Unsafe against headers and
    /// parameters nobody thought of (`X-Jwt-Assertion`, `code`, `otp`…); by default, off.
    pub fn denylist() -> Self {
        Self {
            denylist: true,
            ..Self::default()
        }
    }

    /// Also keeps this header's value (case-insensitive). By default, only the built-in list.
    pub fn allow_header(mut self, name: impl Into<String>) -> Self {
        let mut v: Vec<Box<str>> = self.headers.iter().cloned().collect();
        v.push(name.into().into_boxed_str());
        self.headers = v.into();
        self
    }

    /// Also keeps this query parameter's value (case-insensitive). By default, only the
    /// built-in list.
    pub fn allow_query_param(mut self, name: impl Into<String>) -> Self {
        let mut v: Vec<Box<str>> = self.params.iter().cloned().collect();
        v.push(name.into().into_boxed_str());
        self.params = v.into();
        self
    }

    /// Whether a header's value is recorded.
    pub fn keeps_header(&self, name: &str) -> bool {
        if self.denylist {
            return !is_sensitive_header(name);
        }
        SAFE_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
            || self.headers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Whether a query parameter's (percent-decoded) value is recorded.
    pub fn keeps_query_param(&self, name: &str) -> bool {
        if self.denylist {
            return !is_sensitive_field(name);
        }
        SAFE_PARAMS.iter().any(|h| h.eq_ignore_ascii_case(name))
            || self.params.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// A query string with the values this redaction does not keep replaced by
    /// [`REDACTED`]. Names are percent-decoded before they are matched.
    pub fn redact_query(&self, query: &str) -> String {
        redact_query_with(query, |name| self.keeps_query_param(name))
    }
}

/// Masks the values of a query string or an `application/x-www-form-urlencoded` body
/// with the default [`Redaction`]: only paging and sorting values are kept. Field names
/// are percent-decoded before they are matched, so `pa%67e` is `page`.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::redact_query;
///
/// assert_eq!(redact_query("page=2&token=abc&Password=x"), "page=2&token=[redacted]&Password=[redacted]");
/// ```
pub fn redact_query(query: &str) -> String {
    redact_query_with(query, |name| Redaction::default().keeps_query_param(name))
}

fn redact_query_with(query: &str, keep: impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let (name, value) = match pair.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (pair, None),
        };
        out.push_str(name);
        if let Some(v) = value {
            out.push('=');
            if keep(&percent_decode(name)) {
                out.push_str(v);
            } else {
                out.push_str(REDACTED);
            }
        }
    }
    out
}

fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return std::borrow::Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Copies headers into `(name, value)` pairs with sensitive values masked. Values that are
/// not visible ASCII are shown as `[binary]`. At most 100 headers and 1 KiB per value are kept.
pub(crate) fn redact_headers(headers: &HeaderMap, redaction: &Redaction) -> Vec<(String, String)> {
    headers
        .iter()
        .take(100)
        .map(|(name, value)| {
            let v = if !redaction.keeps_header(name.as_str()) {
                REDACTED.to_owned()
            } else {
                match value.to_str() {
                    Ok(s) if s.len() > 1024 => {
                        let mut cut = 1024;
                        while !s.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        format!("{}…", &s[..cut])
                    }
                    Ok(s) => s.to_owned(),
                    Err(_) => "[binary]".to_owned(),
                }
            };
            (name.as_str().to_owned(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    /// Headers with these names, each holding `s3cr3t-value`.
    fn secret_headers(names: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for name in names {
            h.insert(
                http::HeaderName::from_static(name),
                HeaderValue::from_static("s3cr3t-value"),
            );
        }
        h
    }

    #[test]
    fn each_sensitive_header_is_masked() {
        let mut h = secret_headers(&[
            "authorization",
            "proxy-authorization",
            "cookie",
            "set-cookie",
            "x-api-key",
            "api-key",
            "x-auth-token",
            "x-csrf-token",
            "x-amz-security-token",
            "x-client-secret",
            "x-hub-signature",
        ]);
        h.insert("accept", HeaderValue::from_static("text/html"));
        h.insert("x-bin", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        h.insert("x-long", HeaderValue::from_str(&"a".repeat(2000)).unwrap());
        let out = redact_headers(&h, &Redaction::denylist());
        let get = |n: &str| out.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        for (k, v) in &out {
            assert!(!v.contains("s3cr3t"), "{k} leaked");
        }
        assert_eq!(get("authorization"), Some(REDACTED));
        assert_eq!(get("set-cookie"), Some(REDACTED));
        assert_eq!(get("accept"), Some("text/html"));
        assert_eq!(get("x-bin"), Some("[binary]"));
        assert!(get("x-long").unwrap().len() < 1100);
    }

    #[test]
    fn each_sensitive_field_is_masked() {
        for name in [
            "password",
            "new_password",
            "passwd",
            "token",
            "access_token",
            "client_secret",
            "key",
            "api_key",
            "apiKey",
            "signature",
            "X-Amz-Signature",
            "sessionid",
            "pass%77ord",
        ] {
            let q = format!("page=1&{name}=hunter2&sort=asc");
            let r = Redaction::denylist().redact_query(&q);
            assert!(!r.contains("hunter2"), "{name}: {r}");
            assert!(r.starts_with("page=1&") && r.ends_with("&sort=asc"), "{r}");
        }
        assert_eq!(redact_query("flag&page=1"), "flag&page=1");
        assert_eq!(redact_query(""), "");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%zz+b"), "a%zz b");
    }

    #[test]
    fn by_default_only_harmless_values_are_kept() {
        let mut h = secret_headers(&[
            "authorization",
            "x-jwt-assertion",
            "cf-access-jwt-assertion",
            "x-amzn-oidc-data",
            "x-forwarded-authorization",
            "x-auth",
            "cookie",
            "referer",
            "x-anything-new",
        ]);
        h.insert("accept", HeaderValue::from_static("text/html"));
        h.insert("user-agent", HeaderValue::from_static("curl/8"));
        let out = redact_headers(&h, &Redaction::default());
        assert_eq!(out.len(), 11, "names are kept");
        for (k, v) in &out {
            assert!(!v.contains("s3cr3t"), "{k} leaked");
        }
        let get = |n: &str| out.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("accept"), Some("text/html"));
        assert_eq!(get("user-agent"), Some("curl/8"));
        assert_eq!(get("x-jwt-assertion"), Some(REDACTED));
        let custom = Redaction::default().allow_header("X-Anything-New");
        let out = redact_headers(&h, &custom);
        assert!(out.contains(&("x-anything-new".to_owned(), "s3cr3t-value".to_owned())));

        for name in [
            "jwt", "code", "auth", "pass", "pwd", "sig", "otp", "state", "email",
        ] {
            let q = format!("page=1&{name}=hunter2&sort=asc");
            let r = redact_query(&q);
            assert_eq!(r, format!("page=1&{name}=[redacted]&sort=asc"));
        }
        assert_eq!(redact_query("pa%67e=3"), "pa%67e=3");
    }

    proptest! {
        #[test]
        fn redaction_never_leaks_sensitive_values(name in "[a-z_]{0,6}(token|secret|password|key)[a-z_]{0,6}", value in "[a-zA-Z0-9]{8,20}", other in "[a-d]{1,5}=[a-d0-9]{0,5}") {
            let q = format!("{other}&{name}={value}");
            let r = Redaction::denylist().redact_query(&q);
            let leaked = format!("={value}");
            prop_assert!(!r.contains(&leaked));
            prop_assert!(r.starts_with(&other));
        }
    }
}
