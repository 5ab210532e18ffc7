//! Typed CSP source expressions (CSP Level 3, §2.3.1 "source lists").

use std::fmt;

use base64::Engine as _;
use sha2::Digest as _;

use crate::error::ConfigError;

/// The hash algorithm of a `'sha256-…'`, `'sha384-…'` or `'sha512-…'` source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum HashAlgorithm {
    /// SHA-256 (`'sha256-…'`).
    Sha256,
    /// SHA-384 (`'sha384-…'`).
    Sha384,
    /// SHA-512 (`'sha512-…'`).
    Sha512,
}

impl HashAlgorithm {
    /// The prefix inside the quotes: `sha256`, `sha384` or `sha512`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// The digest length in bytes.
    fn digest_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

/// One source expression of a source list, such as `'self'`, `https:`, `cdn.example.com`,
/// the per-request nonce or a script hash.
///
/// Constructors never fail; the whole policy is validated once when it is built into a
/// layer (or by [`Csp::validate`](super::Csp::validate)).
///
/// # Example
///
/// ```
/// use tower_rampart::csp::Source;
///
/// assert_eq!(Source::SelfOrigin.to_string(), "'self'");
/// assert_eq!(Source::scheme("https").to_string(), "https:");
/// assert_eq!(Source::host("*.example.com").to_string(), "*.example.com");
/// assert_eq!(
///     Source::sha256_of(b"alert(1)").to_string(),
///     "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// `'self'`: the document's own origin.
    SelfOrigin,
    /// `'none'`: nothing; must be the only source of its directive.
    None,
    /// `'unsafe-inline'`.
    UnsafeInline,
    /// `'unsafe-eval'`.
    UnsafeEval,
    /// `'unsafe-hashes'`: lets hashes match event handlers and `style` attributes.
    UnsafeHashes,
    /// `'strict-dynamic'`: trust scripts loaded by a nonce- or hash-trusted script; needs
    /// [`Source::Nonce`] or a hash in the same directive.
    StrictDynamic,
    /// `'wasm-unsafe-eval'`: allows WebAssembly compilation without `'unsafe-eval'`.
    WasmUnsafeEval,
    /// `'report-sample'`: include the first 40 characters of the violating code in reports.
    ReportSample,
    /// `'inline-speculation-rules'`.
    InlineSpeculationRules,
    /// `*`: any URL except `data:`, `blob:` and `filesystem:`.
    Wildcard,
    /// The per-request nonce, `'nonce-…'`: a fresh 128-bit value for every response,
    /// spliced into the header and given to handlers as [`CspNonce`](super::CspNonce).
    Nonce,
    /// A hash of an inline script or style, base64-encoded.
    Hash(HashAlgorithm, String),
    /// A scheme source such as `https:` or `data:` (stored without the colon).
    Scheme(String),
    /// A host source such as `cdn.example.com`, `*.example.com`, `https://a.example:8443/js/`.
    Host(String),
}

impl Source {
    /// A host source (`example.com`, `*.example.com`, `https://cdn.example.com:443/path/`).
    pub fn host(host: impl Into<String>) -> Self {
        Self::Host(host.into())
    }

    /// A scheme source (`https`, `data`, `blob`); a trailing `:` is accepted and dropped.
    pub fn scheme(scheme: impl Into<String>) -> Self {
        let mut s: String = scheme.into();
        if s.ends_with(':') {
            s.pop();
        }
        Self::Scheme(s)
    }

    /// A `'sha256-…'` source from an already base64-encoded digest.
    pub fn sha256(base64: impl Into<String>) -> Self {
        Self::Hash(HashAlgorithm::Sha256, base64.into())
    }

    /// A `'sha384-…'` source from an already base64-encoded digest.
    pub fn sha384(base64: impl Into<String>) -> Self {
        Self::Hash(HashAlgorithm::Sha384, base64.into())
    }

    /// A `'sha512-…'` source from an already base64-encoded digest.
    pub fn sha512(base64: impl Into<String>) -> Self {
        Self::Hash(HashAlgorithm::Sha512, base64.into())
    }

    /// The `'sha256-…'` source of an inline script or style's exact content.
    pub fn sha256_of(content: impl AsRef<[u8]>) -> Self {
        let digest = sha2::Sha256::digest(content.as_ref());
        Self::sha256(base64::engine::general_purpose::STANDARD.encode(digest))
    }

    /// The `'sha384-…'` source of an inline script or style's exact content.
    pub fn sha384_of(content: impl AsRef<[u8]>) -> Self {
        let digest = sha2::Sha384::digest(content.as_ref());
        Self::sha384(base64::engine::general_purpose::STANDARD.encode(digest))
    }

    /// The `'sha512-…'` source of an inline script or style's exact content.
    pub fn sha512_of(content: impl AsRef<[u8]>) -> Self {
        let digest = sha2::Sha512::digest(content.as_ref());
        Self::sha512(base64::engine::general_purpose::STANDARD.encode(digest))
    }

    /// Whether this is a quoted keyword (`'self'`, `'unsafe-inline'`, …).
    pub fn is_keyword(&self) -> bool {
        !matches!(
            self,
            Self::Wildcard | Self::Nonce | Self::Hash(..) | Self::Scheme(_) | Self::Host(_)
        )
    }

    /// The keyword text with its quotes, for keywords.
    pub(crate) fn keyword(&self) -> Option<&'static str> {
        Some(match self {
            Self::SelfOrigin => "'self'",
            Self::None => "'none'",
            Self::UnsafeInline => "'unsafe-inline'",
            Self::UnsafeEval => "'unsafe-eval'",
            Self::UnsafeHashes => "'unsafe-hashes'",
            Self::StrictDynamic => "'strict-dynamic'",
            Self::WasmUnsafeEval => "'wasm-unsafe-eval'",
            Self::ReportSample => "'report-sample'",
            Self::InlineSpeculationRules => "'inline-speculation-rules'",
            _ => return None,
        })
    }

    /// Parses one source expression; a nonce `'nonce-…'` becomes the per-request
    /// [`Source::Nonce`] (a fixed nonce would defeat its purpose).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] saying why the expression is not a valid source.
    pub fn parse(expr: &str) -> Result<Self, ConfigError> {
        let source = if let Some(inner) = expr.strip_prefix('\'') {
            let Some(inner) = inner.strip_suffix('\'') else {
                return Err(ConfigError::new(format!(
                    "CSP source `{expr}` opens a quote it does not close: write keywords as 'self'"
                )));
            };
            match inner.to_ascii_lowercase().as_str() {
                "self" => Self::SelfOrigin,
                "none" => Self::None,
                "unsafe-inline" => Self::UnsafeInline,
                "unsafe-eval" => Self::UnsafeEval,
                "unsafe-hashes" => Self::UnsafeHashes,
                "strict-dynamic" => Self::StrictDynamic,
                "wasm-unsafe-eval" => Self::WasmUnsafeEval,
                "report-sample" => Self::ReportSample,
                "inline-speculation-rules" => Self::InlineSpeculationRules,
                lower => {
                    if let Some(value) = lower.strip_prefix("nonce-") {
                        if !is_base64_value(value) && value != "{nonce}" {
                            return Err(ConfigError::new(format!(
                                "CSP nonce source `{expr}` is not base64: nonces are generated per request, use Source::Nonce"
                            )));
                        }
                        Self::Nonce
                    } else if let Some((algo, _)) = inner.split_once('-') {
                        let algo = match algo.to_ascii_lowercase().as_str() {
                            "sha256" => HashAlgorithm::Sha256,
                            "sha384" => HashAlgorithm::Sha384,
                            "sha512" => HashAlgorithm::Sha512,
                            _ => return Err(unknown_keyword(expr)),
                        };
                        Self::Hash(algo, inner[algo.name().len() + 1..].to_owned())
                    } else {
                        return Err(unknown_keyword(expr));
                    }
                }
            }
        } else if expr == "*" {
            Self::Wildcard
        } else if let Some(scheme) = expr.strip_suffix(':') {
            Self::Scheme(scheme.to_owned())
        } else {
            Self::Host(expr.to_owned())
        };
        source.check()?;
        Ok(source)
    }

    /// Validates the syntax of this source on its own.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        match self {
            Self::Hash(algo, value) => check_hash(*algo, value),
            Self::Scheme(s) => check_scheme(s),
            Self::Host(h) => check_host(h),
            _ => Ok(()),
        }
    }
}

fn unknown_keyword(expr: &str) -> ConfigError {
    ConfigError::new(format!(
        "CSP source `{expr}` is not a known keyword: use 'self', 'none', 'unsafe-inline', 'unsafe-eval', 'unsafe-hashes', 'strict-dynamic', 'wasm-unsafe-eval', 'report-sample', a nonce or a 'sha256-…'/'sha384-…'/'sha512-…' hash"
    ))
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(k) = self.keyword() {
            return f.write_str(k);
        }
        match self {
            Self::Wildcard => f.write_str("*"),
            Self::Nonce => f.write_str("'nonce-{nonce}'"),
            Self::Hash(algo, v) => write!(f, "'{}-{v}'", algo.name()),
            Self::Scheme(s) => write!(f, "{s}:"),
            Self::Host(h) => f.write_str(h),
            _ => Ok(()),
        }
    }
}

/// Characters that would end a source, a directive or the header.
pub(crate) fn check_no_separators(what: &str, value: &str) -> Result<(), ConfigError> {
    if let Some(c) = value
        .chars()
        .find(|c| matches!(c, '\r' | '\n' | ';' | ',') || c.is_whitespace() || c.is_control())
    {
        let shown = match c {
            '\r' => "CR".to_owned(),
            '\n' => "LF".to_owned(),
            c if c.is_whitespace() => "whitespace".to_owned(),
            c if c.is_control() => format!("control character U+{:04X}", u32::from(c)),
            c => format!("`{c}`"),
        };
        return Err(ConfigError::new(format!(
            "{what} `{}` contains {shown}, which would break the header: remove it (`;` separates directives, `,` separates policies)",
            value.escape_debug()
        )));
    }
    if value.is_empty() {
        return Err(ConfigError::new(format!("{what} is empty: remove it")));
    }
    if !value.is_ascii() {
        return Err(ConfigError::new(format!(
            "{what} `{value}` is not ASCII: punycode-encode international host names (xn--…)"
        )));
    }
    Ok(())
}

/// `base64-value = 1*( ALPHA / DIGIT / "+" / "/" / "-" / "_" )*2( "=" )`
pub(crate) fn is_base64_value(v: &str) -> bool {
    let body = v.trim_end_matches('=');
    v.len() - body.len() <= 2
        && !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
}

fn check_hash(algo: HashAlgorithm, value: &str) -> Result<(), ConfigError> {
    check_no_separators("CSP hash", value)?;
    let engine = if value.contains(['-', '_']) {
        base64::engine::general_purpose::URL_SAFE
    } else {
        base64::engine::general_purpose::STANDARD
    };
    let ok = is_base64_value(value)
        && engine
            .decode(value)
            .is_ok_and(|d| d.len() == algo.digest_len());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(format!(
            "CSP hash '{}-{value}' is not the base64 of a {}-byte {} digest: use Source::{}_of(content) to compute it",
            algo.name(),
            algo.digest_len(),
            algo.name(),
            algo.name()
        )))
    }
}

/// `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )` (RFC 3986).
fn check_scheme(s: &str) -> Result<(), ConfigError> {
    check_no_separators("CSP scheme source", s)?;
    let mut bytes = s.bytes();
    let ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(format!(
            "CSP scheme source `{s}:` is not a valid scheme: a scheme starts with a letter and has only letters, digits, `+`, `-`, `.` (e.g. Source::scheme(\"https\"))"
        )))
    }
}

const BARE_KEYWORDS: [&str; 11] = [
    "self",
    "none",
    "unsafe-inline",
    "unsafe-eval",
    "unsafe-hashes",
    "strict-dynamic",
    "wasm-unsafe-eval",
    "report-sample",
    "inline-speculation-rules",
    "unsafe-allow-redirects",
    "nonce",
];

/// `host-source = [ scheme-part "://" ] host-part [ ":" port-part ] [ path-part ]`
fn check_host(h: &str) -> Result<(), ConfigError> {
    check_no_separators("CSP host source", h)?;
    let lower = h.to_ascii_lowercase();
    if BARE_KEYWORDS.contains(&lower.as_str())
        || lower.starts_with("nonce-")
        || lower.starts_with("sha256-")
        || lower.starts_with("sha384-")
        || lower.starts_with("sha512-")
    {
        return Err(ConfigError::new(format!(
            "CSP source `{h}` is an unquoted keyword and would be read as a host name: write '{h}' with single quotes (Source::SelfOrigin, Source::None, …)"
        )));
    }
    if h.contains('\'') || h.contains('"') {
        return Err(ConfigError::new(format!(
            "CSP host source `{h}` contains a quote: only keywords, nonces and hashes are quoted"
        )));
    }
    let invalid = |why: &str| {
        ConfigError::new(format!(
            "CSP host source `{h}` is not a valid host source ({why}): use `example.com`, `*.example.com`, `https://cdn.example.com:8443/path/`"
        ))
    };
    let rest = match h.split_once("://") {
        Some((scheme, rest)) => {
            check_scheme(scheme).map_err(|_| invalid("bad scheme"))?;
            rest
        }
        None => h,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if let Some(port) = port
        && !(port == "*" || (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())))
    {
        return Err(invalid("the port must be digits or `*`"));
    }
    let labels = host.strip_prefix("*.").unwrap_or(host);
    if host != "*"
        && (labels.is_empty()
            || !labels.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }))
    {
        return Err(invalid(
            "host labels are letters, digits and `-`, a leading `*.` wildcard is allowed",
        ));
    }
    if path.bytes().any(|b| matches!(b, b'?' | b'#' | b'\\')) {
        return Err(invalid("the path cannot contain `?`, `#` or `\\`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_source() {
        for (text, source) in [
            ("'self'", Source::SelfOrigin),
            ("'NONE'", Source::None),
            ("'unsafe-inline'", Source::UnsafeInline),
            ("'unsafe-eval'", Source::UnsafeEval),
            ("'unsafe-hashes'", Source::UnsafeHashes),
            ("'strict-dynamic'", Source::StrictDynamic),
            ("'wasm-unsafe-eval'", Source::WasmUnsafeEval),
            ("'report-sample'", Source::ReportSample),
            ("'inline-speculation-rules'", Source::InlineSpeculationRules),
            ("*", Source::Wildcard),
            ("'nonce-abc123=='", Source::Nonce),
            ("https:", Source::scheme("https")),
            ("example.com", Source::host("example.com")),
            (
                "https://*.example.com:*/a/b",
                Source::host("https://*.example.com:*/a/b"),
            ),
        ] {
            assert_eq!(Source::parse(text).unwrap(), source, "{text}");
        }
        let h = Source::sha384_of("x");
        assert_eq!(Source::parse(&h.to_string()).unwrap(), h);
        let h = Source::sha512_of("x");
        assert_eq!(Source::parse(&h.to_string()).unwrap(), h);
        assert!(Source::SelfOrigin.is_keyword());
        assert!(!Source::Nonce.is_keyword());
    }

    #[test]
    fn rejects_bad_sources_with_helpful_messages() {
        for (text, needle) in [
            ("self", "unquoted keyword"),
            ("unsafe-inline", "unquoted keyword"),
            ("'self", "does not close"),
            ("'unsafe-everything'", "not a known keyword"),
            ("'nonce-!!'", "not base64"),
            ("'sha256-abc'", "32-byte"),
            ("'md5-abc'", "not a known keyword"),
            ("1http:", "not a valid scheme"),
            ("exa mple.com", "whitespace"),
            ("exa_mple.com", "not a valid host"),
            ("example.com:80a", "port"),
            ("example.com/a?b", "path"),
            ("ht$tp://example.com", "bad scheme"),
            ("*.", "not a valid host"),
            ("ex\u{e9}.com", "ASCII"),
            ("a'b", "quote"),
        ] {
            let err = Source::parse(text).unwrap_err();
            assert!(err.message().contains(needle), "{text}: {err}");
        }
        assert!(check_no_separators("x", "").is_err());
        assert!(
            check_no_separators("x", "a\u{1}")
                .unwrap_err()
                .message()
                .contains("control")
        );
        assert!(
            check_no_separators("x", "a;")
                .unwrap_err()
                .message()
                .contains("`;`")
        );
        assert!(
            check_no_separators("x", "a\r")
                .unwrap_err()
                .message()
                .contains("CR")
        );
        assert!(
            check_no_separators("x", "a\n")
                .unwrap_err()
                .message()
                .contains("LF")
        );
    }

    #[test]
    fn hashes_accept_url_safe_base64_and_compute_digests() {
        let Source::Hash(_, v) = Source::sha256_of("a") else {
            unreachable!()
        };
        let url = v.replace('+', "-").replace('/', "_");
        assert!(Source::sha256(url).check().is_ok());
        assert!(Source::scheme("data:").check().is_ok());
        assert_eq!(Source::scheme("data:"), Source::Scheme("data".into()));
    }
}
