//! The one key builder for every key this crate writes to Redis or an in-process map.
//!
//! Keys look like `prefix:version:part:part…` (for example `himalytix:1:user:123:acme`).
//! Each part is escaped so that a separator (`:`), a Redis Cluster hash-tag brace
//! (`{`, `}`), `%`, whitespace, control characters and non-ASCII bytes inside a part can
//! never change the key's structure: two different part lists always give two different
//! keys. Keys longer than the configured maximum keep their head and replace the tail
//! with a SHA-256 digest, so memory and Redis key sizes stay bounded whatever the input.
//!
//! # Example
//!
//! ```
//! use tower_rampart::key::KeyBuilder;
//!
//! let keys = KeyBuilder::new("himalytix");
//! assert_eq!(keys.build(["user", "123", "acme"]), "himalytix:1:user:123:acme");
//! assert_eq!(keys.build(["a:b"]), "himalytix:1:a%3Ab");
//! let long = "x".repeat(10_000);
//! assert!(keys.build([long.as_str()]).len() <= 200);
//! ```

use std::{fmt::Write as _, sync::Arc};

use sha2::{Digest, Sha256};

/// Default maximum key length in bytes.
pub const DEFAULT_MAX_LEN: usize = 200;
/// Smallest accepted maximum key length (room for a head and the digest).
pub const MIN_MAX_LEN: usize = 64;
/// Length of the digest suffix `#` + 43 base64url characters of SHA-256.
const DIGEST_LEN: usize = 44;

/// Builds namespaced, escaped, length-capped keys. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBuilder {
    prefix: Arc<str>,
    version: u32,
    max_len: usize,
}

impl KeyBuilder {
    /// A builder for keys starting with `prefix` (escaped like a part) and version `1`.
    pub fn new(prefix: impl AsRef<str>) -> Self {
        Self {
            prefix: escape_part(prefix.as_ref()).into(),
            version: 1,
            max_len: DEFAULT_MAX_LEN,
        }
    }

    /// The key-format version; bump it to make every old key unreachable at once.
    ///
    /// By default, `1`.
    #[must_use]
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// The longest key produced, in bytes. Longer keys are shortened with a digest.
    ///
    /// By default, 200; values below 64 are raised to 64.
    #[must_use]
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len.max(MIN_MAX_LEN);
        self
    }

    /// The escaped prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Builds `prefix:version:part:part…` from the given parts.
    pub fn build<I>(&self, parts: I) -> String
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut key = String::with_capacity(64);
        self.push_head(&mut key);
        for part in parts {
            key.push(':');
            push_escaped(&mut key, part.as_ref());
        }
        cap_len(key, self.max_len)
    }

    /// `prefix:version`, the start of every key.
    fn push_head(&self, key: &mut String) {
        key.push_str(&self.prefix);
        key.push(':');
        push_decimal(key, u64::from(self.version));
    }

    /// A key as [`build`](Self::build) makes it, wrapped in a Redis Cluster hash tag and
    /// followed by `:` (`{prefix:version:part…}:`), in one allocation: `parts` appends
    /// `:` and each escaped part after `prefix:version`. Capped as `build` caps (the
    /// braces excepted).
    pub(crate) fn build_tagged(&self, extra: usize, parts: impl FnOnce(&mut String)) -> String {
        let mut key = String::with_capacity(self.prefix.len() + extra + 16);
        key.push('{');
        self.push_head(&mut key);
        parts(&mut key);
        if key.len() - 1 > self.max_len {
            let capped = cap_len(key[1..].to_owned(), self.max_len);
            key.truncate(1);
            key.push_str(&capped);
        }
        key.push_str("}:");
        key
    }
}

/// Escapes one key part: `:`, `{`, `}`, `%`, whitespace, control and non-ASCII bytes
/// become `%XX`. The result is printable ASCII.
///
/// # Example
///
/// ```
/// assert_eq!(tower_rampart::key::escape_part("{a}:é"), "%7Ba%7D%3A%C3%A9");
/// ```
pub fn escape_part(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    push_escaped(&mut out, part);
    out
}

/// Appends `n` in decimal (no formatting machinery: keys and header values are built on
/// hot paths).
pub(crate) fn push_decimal(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends an address as `Display` writes it; IPv4 without the formatting machinery.
pub(crate) fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(out, u64::from(octet));
            }
        }
        std::net::IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// Appends an address as [`push_ip`] does, escaped as a key part ([`push_escaped`]):
/// an IPv6 address's `:` become `%3A`, in place.
pub(crate) fn push_ip_escaped(out: &mut String, ip: std::net::IpAddr) {
    /// Writes through to a key, escaped as any part is.
    struct Escaped<'a>(&'a mut String);
    impl std::fmt::Write for Escaped<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            push_escaped(self.0, s);
            Ok(())
        }
    }
    match ip {
        std::net::IpAddr::V4(_) => push_ip(out, ip),
        std::net::IpAddr::V6(_) => {
            let _ = write!(Escaped(out), "{ip}");
        }
    }
}

/// Where key text is written: a `String`, or a [`StackKey`].
pub(crate) trait KeySink {
    fn push_str(&mut self, s: &str);
    /// Appends one ASCII byte.
    fn push_ascii(&mut self, b: u8);
}

impl KeySink for String {
    #[inline]
    fn push_str(&mut self, s: &str) {
        String::push_str(self, s);
    }

    #[inline]
    fn push_ascii(&mut self, b: u8) {
        self.push(char::from(b));
    }
}

/// A key of at most `N` bytes built on the stack, for lookups on hot paths that would
/// otherwise allocate a `String` only to drop it.
pub(crate) struct StackKey<const N: usize> {
    buf: [u8; N],
    len: usize,
    overflow: bool,
}

impl<const N: usize> StackKey<N> {
    pub(crate) fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            overflow: false,
        }
    }

    /// The key's bytes (valid UTF-8: only whole `&str`s and ASCII bytes are written), or
    /// `None` when it did not fit.
    pub(crate) fn as_bytes(&self) -> Option<&[u8]> {
        (!self.overflow).then(|| &self.buf[..self.len])
    }
}

impl<const N: usize> KeySink for StackKey<N> {
    #[inline]
    fn push_str(&mut self, s: &str) {
        let end = self.len + s.len();
        match self.buf.get_mut(self.len..end) {
            Some(dst) => {
                dst.copy_from_slice(s.as_bytes());
                self.len = end;
            }
            None => self.overflow = true,
        }
    }

    #[inline]
    fn push_ascii(&mut self, b: u8) {
        match self.buf.get_mut(self.len) {
            Some(dst) => {
                *dst = b;
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }
}

/// Appends `part` escaped to `out`, byte by byte (no formatting machinery: keys are
/// built on hot paths). The output is ASCII.
#[inline]
pub(crate) fn push_escaped(out: &mut impl KeySink, part: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Bytes kept as they are: printable ASCII but the separator, braces and `%`.
    const KEEP: [bool; 256] = {
        let mut keep = [false; 256];
        let mut b = 0;
        while b < 256 {
            #[allow(clippy::cast_possible_truncation)] // b < 256
            let byte = b as u8;
            keep[b] = byte.is_ascii_graphic() && !matches!(byte, b':' | b'{' | b'}' | b'%');
            b += 1;
        }
        keep
    };
    for &b in part.as_bytes() {
        if KEEP[usize::from(b)] {
            out.push_ascii(b);
        } else {
            out.push_ascii(b'%');
            out.push_ascii(HEX[usize::from(b >> 4)]);
            out.push_ascii(HEX[usize::from(b & 15)]);
        }
    }
}

/// Caps an ASCII key at `max_len` bytes: the head is kept, the tail replaced by `#` and
/// the base64url SHA-256 of the whole key.
///
/// # Example
///
/// ```
/// let k = tower_rampart::key::cap_len("k".repeat(500), 100);
/// assert_eq!(k.len(), 100);
/// assert!(k.starts_with("kkk"));
/// ```
pub fn cap_len(key: String, max_len: usize) -> String {
    cap_with(key, max_len, "#")
}

/// [`cap_len`] for a key whose tail was escaped with [`push_escaped`]: the tail becomes
/// `%#` and the digest. The escaper writes `%` only before two hex digits, so no key a
/// caller can build contains `%#`: a shortened key is unreachable by any other key.
/// (`cap_len` keeps its `#` so the rate limiter's keys stay as they are.)
pub(crate) fn cap_escaped(key: String, max_len: usize) -> String {
    cap_with(key, max_len, "%#")
}

fn cap_with(key: String, max_len: usize, marker: &str) -> String {
    let max_len = max_len.max(MIN_MAX_LEN);
    if key.len() <= max_len {
        return key;
    }
    let digest = digest(key.as_bytes());
    // Keys from `build` are ASCII; for foreign input, back off to a char boundary.
    let mut head = max_len + 1 - DIGEST_LEN - marker.len();
    while !key.is_char_boundary(head) {
        head -= 1;
    }
    let mut out = String::with_capacity(max_len);
    out.push_str(&key[..head]);
    out.push_str(marker);
    out.push_str(&digest);
    out
}

/// The unpadded base64url SHA-256 of `data` (43 characters).
pub fn digest(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let hash = Sha256::digest(data);
    let mut out = String::with_capacity(43);
    for chunk in hash.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn builds_origin_style_keys() {
        let k = KeyBuilder::new("himalytix").version(3);
        assert_eq!(k.build(["user", "123"]), "himalytix:3:user:123");
        assert_eq!(k.build(Vec::<String>::new()), "himalytix:3");
        assert_eq!(k.prefix(), "himalytix");
        assert_eq!(KeyBuilder::new("a:b").prefix(), "a%3Ab");
    }

    #[test]
    fn escaping_keeps_parts_apart() {
        let k = KeyBuilder::new("p");
        assert_ne!(k.build(["a:b"]), k.build(["a", "b"]));
        assert_ne!(k.build(["a%3Ab"]), k.build(["a:b"]));
        assert_eq!(escape_part("a b\n"), "a%20b%0A");
    }

    #[test]
    fn long_keys_are_capped_and_distinct() {
        let k = KeyBuilder::new("p").max_len(80);
        let a = k.build(["x".repeat(500)]);
        let b = k.build([format!("{}y", "x".repeat(499))]);
        assert_eq!(a.len(), 80);
        assert_eq!(b.len(), 80);
        assert_ne!(a, b);
        assert_eq!(
            KeyBuilder::new("p")
                .max_len(1)
                .build(["z".repeat(100)])
                .len(),
            MIN_MAX_LEN
        );
        let unicode = cap_len("é".repeat(100), 64);
        assert!(unicode.len() <= 64);
        let escaped = cap_escaped("k".repeat(500), 100);
        assert_eq!(escaped.len(), 100);
        assert_eq!(&escaped[55..57], "%#");
    }

    #[test]
    fn decimals_and_addresses_match_display() {
        for n in [0u64, 7, 10, 4_294_967_295, u64::MAX] {
            let mut s = String::new();
            push_decimal(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        for ip in [
            "0.0.0.0",
            "203.0.113.7",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut s = String::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string());
        }
    }

    #[test]
    fn stack_keys_match_string_keys_or_refuse() {
        let mut k = StackKey::<16>::new();
        KeySink::push_str(&mut k, "p:");
        push_escaped(&mut k, "a:é");
        assert_eq!(k.as_bytes(), Some(&b"p:a%3A%C3%A9"[..]));
        let mut s = String::from("p:");
        push_escaped(&mut s, "a:é");
        assert_eq!(k.as_bytes(), Some(s.as_bytes()));
        push_escaped(&mut k, "toolong");
        assert_eq!(k.as_bytes(), None, "never a truncated key");
        push_escaped(&mut k, "");
        assert_eq!(k.as_bytes(), None);
    }

    #[test]
    fn digest_matches_known_vector() {
        // SHA-256("abc"), base64url without padding.
        assert_eq!(
            digest(b"abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
    }

    proptest! {
        #[test]
        fn escaping_matches_the_reference(part in "\\PC{0,40}|[ -~]{0,40}|.{0,10}") {
            let reference: String = part
                .bytes()
                .map(|b| {
                    if b.is_ascii_graphic() && !matches!(b, b':' | b'{' | b'}' | b'%') {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            prop_assert_eq!(escape_part(&part), reference);
        }

        #[test]
        fn keys_are_bounded_printable_and_injective(a in proptest::collection::vec("\\PC{0,40}", 0..5),
                                                    b in proptest::collection::vec("\\PC{0,40}", 0..5)) {
            let k = KeyBuilder::new("t").max_len(10_000);
            let ka = k.build(&a);
            prop_assert!(ka.bytes().all(|c| c.is_ascii_graphic()));
            prop_assert!(!ka[2..].contains(char::from(b'{')), "no brace");
            if a != b {
                prop_assert_ne!(ka, k.build(&b));
            }
            prop_assert!(KeyBuilder::new("t").build(&a).len() <= DEFAULT_MAX_LEN);
        }
    }
}
