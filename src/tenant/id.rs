//! Tenant identifiers: validated and normalised before any lookup.

use std::{
    borrow::{Borrow, Cow},
    fmt,
    sync::Arc,
};

/// The longest identifier accepted by default: one DNS label.
pub const DEFAULT_MAX_ID_LEN: usize = 63;

/// The longest `Host` (or `:authority`) accepted: a 253-byte name, `:` and a port.
pub(crate) const MAX_HOST_LEN: usize = 253 + 6;

/// A validated, normalised tenant identifier.
///
/// An identifier is 1 to `max_len` (by default 63) ASCII characters from
/// `[a-z0-9_-]`, starting and ending with a letter or digit. Upper-case ASCII letters are
/// lower-cased, so `Acme` and `acme` name the same tenant. Everything else is refused:
/// dots, slashes, `..`, `%` (no percent-decoding is ever done), whitespace, control
/// characters, non-ASCII letters and the IDN A-label prefix `xn--`. A refused identifier
/// never reaches a store.
///
/// Cloning is cheap (one reference count).
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::TenantId;
///
/// assert_eq!(TenantId::parse("Acme-EU").unwrap().as_str(), "acme-eu");
/// for bad in ["", "a.b", "../x", "a/b", "a%2eb", "xn--80ak6aa92e", "é", "-a", "a b"] {
///     assert!(TenantId::parse(bad).is_err(), "{bad:?}");
/// }
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

/// Why a candidate identifier was refused.
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::{InvalidTenantId, TenantId};
///
/// assert_eq!(TenantId::parse("a.b").unwrap_err(), InvalidTenantId::Charset);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidTenantId {
    /// The identifier is empty.
    Empty,
    /// The identifier is longer than the configured maximum.
    TooLong,
    /// A character outside `[A-Za-z0-9_-]` (a dot, a slash, `%`, a space, non-ASCII…).
    Charset,
    /// The identifier starts or ends with `-` or `_`.
    Edge,
    /// The identifier is an IDN A-label (`xn--…`).
    Idn,
    /// The `Host` header is not ASCII, too long, or not a host name.
    MalformedHost,
    /// The header holding the identifier is repeated or not visible ASCII.
    MalformedHeader,
}

impl InvalidTenantId {
    /// A sentence for the client saying what is wrong.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Empty => "The tenant identifier is empty.",
            Self::TooLong => "The tenant identifier is too long.",
            Self::Charset => {
                "The tenant identifier may only contain ASCII letters, digits, '-' and '_'."
            }
            Self::Edge => "The tenant identifier must start and end with a letter or digit.",
            Self::Idn => "Internationalised (xn--) tenant identifiers are not accepted.",
            Self::MalformedHost => "The Host header is malformed or too long.",
            Self::MalformedHeader => "The tenant header is malformed or repeated.",
        }
    }
}

impl fmt::Display for InvalidTenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

impl std::error::Error for InvalidTenantId {}

impl TenantId {
    /// Validates and normalises `raw` with the default maximum length (63).
    ///
    /// # Errors
    ///
    /// [`InvalidTenantId`] when `raw` is not an acceptable identifier.
    pub fn parse(raw: &str) -> Result<Self, InvalidTenantId> {
        Self::parse_with_max(raw, DEFAULT_MAX_ID_LEN)
    }

    /// Validates and normalises `raw`, accepting at most `max_len` bytes.
    ///
    /// # Errors
    ///
    /// [`InvalidTenantId`] when `raw` is not an acceptable identifier.
    pub fn parse_with_max(raw: &str, max_len: usize) -> Result<Self, InvalidTenantId> {
        let bytes = raw.as_bytes();
        if bytes.is_empty() {
            return Err(InvalidTenantId::Empty);
        }
        if bytes.len() > max_len {
            return Err(InvalidTenantId::TooLong);
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return Err(InvalidTenantId::Charset);
        }
        let edge_ok = |b: u8| b.is_ascii_alphanumeric();
        if !edge_ok(bytes[0]) || !edge_ok(bytes[bytes.len() - 1]) {
            return Err(InvalidTenantId::Edge);
        }
        if bytes.len() >= 4 && bytes[..4].eq_ignore_ascii_case(b"xn--") {
            return Err(InvalidTenantId::Idn);
        }
        if bytes.iter().any(u8::is_ascii_uppercase) {
            Ok(Self(Arc::from(raw.to_ascii_lowercase())))
        } else {
            Ok(Self(Arc::from(raw)))
        }
    }

    /// The identifier as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for TenantId {
    type Err = InvalidTenantId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The host of a request, lower-cased, without port and trailing dot.
///
/// `None` when there is no host; `Err` when the host is not ASCII, too long or not a
/// plausible host name (IDN hosts in Unicode form end up here).
pub(crate) fn normalise_host(raw: &[u8]) -> Result<Option<Cow<'_, str>>, InvalidTenantId> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > MAX_HOST_LEN {
        return Err(InvalidTenantId::MalformedHost);
    }
    // Strip the port: `name:port`; IPv6 literals (`[::1]:80`) carry no tenant.
    let name = if raw[0] == b'[' {
        return Ok(None);
    } else {
        match raw.iter().rposition(|b| *b == b':') {
            Some(i) => {
                let port = &raw[i + 1..];
                if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
                    return Err(InvalidTenantId::MalformedHost);
                }
                &raw[..i]
            }
            None => raw,
        }
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty()
        || !name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(InvalidTenantId::MalformedHost);
    }
    // Only ASCII bytes remain, so this cannot fail.
    let s = std::str::from_utf8(name).map_err(|_| InvalidTenantId::MalformedHost)?;
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Some(Cow::Owned(s.to_ascii_lowercase())))
    } else {
        Ok(Some(Cow::Borrowed(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_normalises() {
        assert_eq!(TenantId::parse("acme").unwrap().as_str(), "acme");
        assert_eq!(TenantId::parse("ACME_1").unwrap().as_str(), "acme_1");
        assert_eq!(TenantId::parse("a").unwrap().to_string(), "a");
        assert_eq!(format!("{:?}", TenantId::parse("a").unwrap()), "\"a\"");
        assert_eq!("Ab".parse::<TenantId>().unwrap().as_ref(), "ab");
        let long = "a".repeat(63);
        assert!(TenantId::parse(&long).is_ok());
        assert_eq!(
            TenantId::parse(&"a".repeat(64)).unwrap_err(),
            InvalidTenantId::TooLong
        );
        assert_eq!(
            TenantId::parse_with_max("abcd", 3).unwrap_err(),
            InvalidTenantId::TooLong
        );
    }

    #[test]
    fn refuses_tricks() {
        use InvalidTenantId as E;
        let cases = [
            ("", E::Empty),
            ("a.b", E::Charset),
            ("..", E::Charset),
            ("a/b", E::Charset),
            ("a\\b", E::Charset),
            ("%2e%2e", E::Charset),
            ("a%41", E::Charset),
            ("a\0b", E::Charset),
            ("a\nb", E::Charset),
            ("a b", E::Charset),
            ("аcme", E::Charset), // Cyrillic а
            ("-a", E::Edge),
            ("a_", E::Edge),
            ("XN--p1ai", E::Idn),
        ];
        for (raw, want) in cases {
            let got = TenantId::parse(raw).unwrap_err();
            assert_eq!(got, want, "{raw:?}");
            assert!(!got.to_string().is_empty());
        }
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(
            normalise_host(b"Acme.Example.com:8443").unwrap().as_deref(),
            Some("acme.example.com")
        );
        assert_eq!(
            normalise_host(b"acme.example.com.").unwrap().as_deref(),
            Some("acme.example.com")
        );
        assert_eq!(normalise_host(b"").unwrap(), None);
        assert_eq!(normalise_host(b"[::1]:80").unwrap(), None);
        for bad in [
            &b"a.com:"[..],
            b"a.com:99999x",
            b"a b.com",
            b"\xc3\xa9.example.com",
            b"a/b.com",
            b":80",
            b".",
        ] {
            assert_eq!(
                normalise_host(bad),
                Err(InvalidTenantId::MalformedHost),
                "{bad:?}"
            );
        }
        let huge = vec![b'a'; MAX_HOST_LEN + 1];
        assert_eq!(normalise_host(&huge), Err(InvalidTenantId::MalformedHost));
    }

    proptest! {
        #[test]
        fn parsed_ids_are_canonical(s in "\\PC{0,80}") {
            if let Ok(id) = TenantId::parse(&s) {
                prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'));
                prop_assert_eq!(TenantId::parse(id.as_str()).unwrap(), id.clone());
                prop_assert!(id.as_str().eq_ignore_ascii_case(&s));
            }
        }
    }
}
