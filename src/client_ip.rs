//! The client's IP address, believing forwarding headers **only** from trusted proxies.
//!
//! This is the one client-IP module of the crate: the rate limiter keys by it, the
//! security headers layer asks it whether `X-Forwarded-Proto` may be believed, and the
//! profiler records it. Nothing else in the crate parses forwarding headers.
//!
//! # How the address is chosen
//!
//! 1. The **peer** address comes from the request extensions: [`PeerAddr`] (set it
//!    yourself with bare hyper), axum's `ConnectInfo<SocketAddr>` (feature `axum`) or
//!    tonic's `TcpConnectInfo` (feature `tonic`).
//! 2. If the peer is **not** in the [`TrustedProxies`] list, the peer is the client and
//!    every forwarding header is ignored: a client cannot spoof its address.
//! 3. If the peer is a trusted proxy, the configured headers are read in order
//!    (by default `Forwarded` (RFC 7239), then `X-Forwarded-For`, then `X-Real-IP`). In a
//!    list, the **rightmost address that is not itself a trusted proxy** is the client:
//!    the left part of the list was written by the client and cannot be believed.
//! 4. A malformed header is ignored (the next source is tried); it is never an error.
//!
//! IPv6 clients usually own a whole /64, so [`ClientIp::key`] groups IPv6 addresses by a
//! configurable prefix (default /64) for use as a rate-limit key.
//!
//! # Example
//!
//! ```
//! use http::Request;
//! use tower_rampart::client_ip::{ClientIpResolver, PeerAddr, Source, TrustedProxies};
//!
//! let resolver = ClientIpResolver::new(TrustedProxies::new(["10.0.0.0/8"]).unwrap());
//!
//! // An untrusted peer: its X-Forwarded-For is ignored.
//! let spoofed = Request::builder()
//!     .header("x-forwarded-for", "1.2.3.4")
//!     .extension(PeerAddr("198.51.100.9:40000".parse().unwrap()))
//!     .body(())
//!     .unwrap();
//! let ip = resolver.resolve(&spoofed).unwrap();
//! assert_eq!(ip.addr().to_string(), "198.51.100.9");
//! assert_eq!(ip.source(), Source::Peer);
//!
//! // A trusted proxy: the rightmost untrusted hop is the client.
//! let proxied = Request::builder()
//!     .header("x-forwarded-for", "1.2.3.4, 203.0.113.7, 10.1.1.1")
//!     .extension(PeerAddr("10.0.0.1:5000".parse().unwrap()))
//!     .body(())
//!     .unwrap();
//! assert_eq!(resolver.resolve(&proxied).unwrap().addr().to_string(), "203.0.113.7");
//! ```

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use http::{HeaderMap, Request, header::HeaderName};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::error::ConfigError;

/// Longest forwarding header value we look at; longer values are ignored as malformed.
const MAX_HEADER_LEN: usize = 8 * 1024;
/// At most this many hops are examined in one forwarding list.
const MAX_HOPS: usize = 64;

/// The address of the directly connected peer, as a request extension.
///
/// axum (`ConnectInfo`) and tonic (`TcpConnectInfo`) set their own extensions, which this
/// module reads too; with bare hyper, insert `PeerAddr` yourself when accepting.
///
/// # Example
///
/// ```
/// use tower_rampart::client_ip::{peer_addr, PeerAddr};
///
/// let req = http::Request::builder()
///     .extension(PeerAddr("127.0.0.1:3000".parse().unwrap()))
///     .body(())
///     .unwrap();
/// assert_eq!(peer_addr(&req).unwrap().port(), 3000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The peer's socket address from the request extensions, if any integration set it.
///
/// Looks at [`PeerAddr`], then axum's `ConnectInfo<SocketAddr>` (feature `axum`), then
/// tonic's `TcpConnectInfo` (feature `tonic`).
#[inline]
pub fn peer_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    if let Some(PeerAddr(addr)) = ext.get::<PeerAddr>() {
        return Some(*addr);
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        ext.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(*addr);
    }
    #[cfg(feature = "tonic")]
    if let Some(info) = ext.get::<tonic::transport::server::TcpConnectInfo>() {
        return info.remote_addr();
    }
    None
}

/// The list of proxy networks whose forwarding headers are believed.
///
/// Empty by default: no forwarding header is believed until you name your proxies.
///
/// # Example
///
/// ```
/// use tower_rampart::client_ip::TrustedProxies;
///
/// let proxies = TrustedProxies::new(["10.0.0.0/8", "::1", "192.168.1.10"]).unwrap();
/// assert!(proxies.contains("10.20.30.40".parse().unwrap()));
/// assert!(proxies.contains("::1".parse().unwrap()));
/// assert!(!proxies.contains("192.168.1.11".parse().unwrap()));
/// assert!(TrustedProxies::new(["not-a-network"]).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Trusts no proxy: the peer is always the client. This is the default.
    pub fn none() -> Self {
        Self::default()
    }

    /// Trusts the loopback networks `127.0.0.0/8` and `::1/128` (a proxy on the same host).
    pub fn loopback() -> Self {
        Self {
            nets: vec![
                IpNet::from_str("127.0.0.0/8").expect("valid literal"),
                IpNet::from_str("::1/128").expect("valid literal"),
            ],
        }
    }

    /// Parses CIDR networks (`10.0.0.0/8`, `fd00::/8`) or single addresses (`10.0.0.1`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first entry that is neither a network nor an address.
    pub fn new<I, S>(entries: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            nets.push(parse_net(entry)?);
        }
        Ok(Self { nets })
    }

    /// Parses a comma- or whitespace-separated list, as found in an environment variable.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid entry.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_rampart::client_ip::TrustedProxies;
    /// let p = TrustedProxies::parse_list("10.0.0.0/8, 172.16.0.0/12").unwrap();
    /// assert_eq!(p.networks().len(), 2);
    /// ```
    pub fn parse_list(list: &str) -> Result<Self, ConfigError> {
        Self::new(list.split(|c: char| c == ',' || c.is_whitespace()))
    }

    /// Adds one network or address.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if `entry` is neither a network nor an address.
    pub fn with(mut self, entry: &str) -> Result<Self, ConfigError> {
        self.nets.push(parse_net(entry.trim())?);
        Ok(self)
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.contains_canonical(canonical(ip))
    }

    /// [`contains`](Self::contains) for an address already in canonical form.
    #[inline]
    fn contains_canonical(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The configured networks.
    pub fn networks(&self) -> &[IpNet] {
        &self.nets
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(d)?;
        Self::new(entries).map_err(serde::de::Error::custom)
    }
}

fn parse_net(entry: &str) -> Result<IpNet, ConfigError> {
    if let Ok(net) = IpNet::from_str(entry) {
        return Ok(net.trunc());
    }
    if let Ok(ip) = IpAddr::from_str(entry) {
        return Ok(IpNet::from(ip));
    }
    Err(ConfigError::new(format!(
        "trusted proxy `{entry}` is neither a CIDR network (e.g. `10.0.0.0/8`, `fd00::/8`) nor an IP address (e.g. `10.0.0.1`)"
    )))
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are treated as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// A forwarding header the resolver may read (only from trusted proxies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// RFC 7239 `Forwarded: for=…`.
    Forwarded,
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// `X-Real-IP: client` (a single address set by the proxy).
    XRealIp,
}

/// Where the resolved client address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The directly connected peer.
    Peer,
    /// A forwarding header written by a trusted proxy.
    Header(ForwardedHeader),
}

/// A resolved client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp {
    addr: IpAddr,
    source: Source,
    ipv6_prefix: u8,
}

impl ClientIp {
    /// The client's address (IPv4-mapped IPv6 addresses are given as IPv4).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Where the address came from.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The address to key limits by: IPv4 as is, IPv6 masked to the configured prefix.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_rampart::client_ip::{ClientIpResolver, PeerAddr};
    /// let req = http::Request::builder()
    ///     .extension(PeerAddr("[2001:db8:1:2:3:4:5:6]:443".parse().unwrap()))
    ///     .body(()).unwrap();
    /// let ip = ClientIpResolver::default().resolve(&req).unwrap();
    /// assert_eq!(ip.key().to_string(), "2001:db8:1:2::");
    /// ```
    pub fn key(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(_) => self.addr,
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let prefix = u32::from(self.ipv6_prefix.min(128));
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix)
                };
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        }
    }
}

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

/// Resolves the client address of a request; cheap to clone and share.
///
/// By default no proxy is trusted, headers are read in the order `Forwarded`,
/// `X-Forwarded-For`, `X-Real-IP`, and IPv6 keys are grouped by /64.
#[derive(Debug, Clone)]
pub struct ClientIpResolver {
    trusted: TrustedProxies,
    headers: Vec<ForwardedHeader>,
    ipv6_prefix: u8,
}

impl Default for ClientIpResolver {
    fn default() -> Self {
        Self::new(TrustedProxies::none())
    }
}

const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

impl ClientIpResolver {
    /// A resolver that believes forwarding headers from `trusted` peers only.
    pub fn new(trusted: TrustedProxies) -> Self {
        Self {
            trusted,
            headers: vec![
                ForwardedHeader::Forwarded,
                ForwardedHeader::XForwardedFor,
                ForwardedHeader::XRealIp,
            ],
            ipv6_prefix: 64,
        }
    }

    /// Which forwarding headers to read, in order.
    ///
    /// By default, `Forwarded`, `X-Forwarded-For`, `X-Real-IP`. Name only the header your
    /// proxy writes if it does not strip the others.
    #[must_use]
    pub fn headers(mut self, headers: impl IntoIterator<Item = ForwardedHeader>) -> Self {
        self.headers = headers.into_iter().collect();
        self
    }

    /// The prefix length IPv6 client keys are grouped by.
    ///
    /// By default, 64. Values above 128 are clamped to 128 (one key per address).
    #[must_use]
    pub fn ipv6_prefix(mut self, len: u8) -> Self {
        self.ipv6_prefix = len.min(128);
        self
    }

    /// The trusted proxies.
    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.trusted
    }

    /// Whether the request's direct peer is a trusted proxy.
    pub fn is_trusted_peer<B>(&self, req: &Request<B>) -> bool {
        peer_addr(req).is_some_and(|p| self.trusted.contains(p.ip()))
    }

    /// The client address of `req`, or `None` when no peer address is known (for example
    /// a request built in a test without [`PeerAddr`]).
    #[inline]
    pub fn resolve<B>(&self, req: &Request<B>) -> Option<ClientIp> {
        self.resolve_parts(req.headers(), peer_addr(req))
    }

    /// [`resolve`](Self::resolve) from the parts of a request.
    #[inline]
    pub fn resolve_parts(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<ClientIp> {
        let peer = canonical(peer?.ip());
        let make = |addr, source| ClientIp {
            addr,
            source,
            ipv6_prefix: self.ipv6_prefix,
        };
        if !self.trusted.contains_canonical(peer) {
            return Some(make(peer, Source::Peer));
        }
        for header in &self.headers {
            let found = match header {
                ForwardedHeader::Forwarded => {
                    self.rightmost_untrusted(headers, &http::header::FORWARDED, forwarded_for)
                }
                ForwardedHeader::XForwardedFor => {
                    self.rightmost_untrusted(headers, &X_FORWARDED_FOR, |v| {
                        xff_hops(v).map(|hops| hops.into_iter().map(Some).collect())
                    })
                }
                ForwardedHeader::XRealIp => {
                    single_value(headers, &X_REAL_IP).and_then(|v| parse_ip(v.trim()))
                }
            };
            if let Some(addr) = found {
                return Some(make(canonical(addr), Source::Header(*header)));
            }
        }
        Some(make(peer, Source::Peer))
    }

    /// The scheme the client used (`"https"` or `"http"`), from `X-Forwarded-Proto` or the
    /// `proto=` of `Forwarded`, **only** when the peer is a trusted proxy; otherwise from
    /// the request URI. `None` when neither says.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_rampart::client_ip::{ClientIpResolver, PeerAddr, TrustedProxies};
    /// let resolver = ClientIpResolver::new(TrustedProxies::loopback());
    /// let req = http::Request::builder()
    ///     .header("x-forwarded-proto", "https")
    ///     .extension(PeerAddr("127.0.0.1:1".parse().unwrap()))
    ///     .body(()).unwrap();
    /// assert_eq!(resolver.scheme(&req), Some("https"));
    /// ```
    pub fn scheme<B>(&self, req: &Request<B>) -> Option<&'static str> {
        if self.is_trusted_peer(req) {
            let headers = req.headers();
            let forwarded = joined(headers, &http::header::FORWARDED)
                .and_then(|v| forwarded_elements(&v).last().and_then(|e| e.proto.clone()));
            let proto = forwarded.or_else(|| {
                joined(headers, &X_FORWARDED_PROTO)
                    .and_then(|v| v.rsplit(',').next().map(|s| s.trim().to_owned()))
            });
            if let Some(p) = proto {
                if p.eq_ignore_ascii_case("https") {
                    return Some("https");
                }
                if p.eq_ignore_ascii_case("http") {
                    return Some("http");
                }
            }
        }
        match req.uri().scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => Some("https"),
            Some(s) if s.eq_ignore_ascii_case("http") => Some("http"),
            _ => None,
        }
    }

    /// Walks a hop list right to left and returns the rightmost untrusted hop; if every
    /// hop is trusted, the leftmost. An unknown hop (`None`) reached before an untrusted
    /// one makes the chain unusable; a malformed header is unusable as a whole.
    fn rightmost_untrusted(
        &self,
        headers: &HeaderMap,
        name: &HeaderName,
        hops: fn(&str) -> Option<Vec<Option<IpAddr>>>,
    ) -> Option<IpAddr> {
        let value = joined(headers, name)?;
        let hops = hops(&value)?;
        let mut last = None;
        for hop in hops.into_iter().rev() {
            let hop = canonical(hop?);
            if !self.trusted.contains(hop) {
                return Some(hop);
            }
            last = Some(hop);
        }
        last
    }
}

/// All values of a header joined with `,`; `None` if absent, non-UTF-8 or too long.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out = String::new();
    for value in headers.get_all(name) {
        let s = value.to_str().ok()?;
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(s);
        if out.len() > MAX_HEADER_LEN {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The value of a header that must appear once.
fn single_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() || first.len() > MAX_HEADER_LEN {
        return None;
    }
    first.to_str().ok()
}

/// An IP address, optionally with a port (`1.2.3.4:80`, `[::1]:80`) or brackets (`[::1]`).
fn parse_ip(s: &str) -> Option<IpAddr> {
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if let Ok(ip) = IpAddr::from_str(s) {
        return Some(ip);
    }
    if let Ok(sock) = SocketAddr::from_str(s) {
        return Some(sock.ip());
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    Ipv6Addr::from_str(inner).ok().map(IpAddr::V6)
}

/// Parses an `X-Forwarded-For` list; `None` if any hop is malformed.
pub(crate) fn xff_hops(value: &str) -> Option<Vec<IpAddr>> {
    let mut hops = Vec::new();
    for part in value.split(',') {
        if hops.len() >= MAX_HOPS {
            return None;
        }
        hops.push(parse_ip(part.trim())?);
    }
    Some(hops)
}

/// One element of an RFC 7239 `Forwarded` header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ForwardedElement {
    for_ip: Option<IpAddr>,
    proto: Option<String>,
}

/// Parses RFC 7239 `Forwarded` elements; malformed elements yield an empty list.
fn forwarded_elements(value: &str) -> Vec<ForwardedElement> {
    let mut out = Vec::new();
    for element in split_unquoted(value, ',') {
        if out.len() >= MAX_HOPS {
            return Vec::new();
        }
        let mut el = ForwardedElement::default();
        for pair in split_unquoted(element, ';') {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let Some((key, raw)) = pair.split_once('=') else {
                return Vec::new();
            };
            let Some(val) = unquote(raw.trim()) else {
                return Vec::new();
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "for" => {
                    el.for_ip = parse_ip(&val);
                }
                "proto" => el.proto = Some(val),
                _ => {}
            }
        }
        out.push(el);
    }
    out
}

/// The `for=` addresses of a `Forwarded` header, `None` for a hop that is missing,
/// obfuscated (`_hidden`) or `unknown`; `None` overall when the header is malformed.
pub(crate) fn forwarded_for(value: &str) -> Option<Vec<Option<IpAddr>>> {
    let elements = forwarded_elements(value);
    if elements.is_empty() {
        return None;
    }
    Some(elements.into_iter().map(|e| e.for_ip).collect())
}

fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            c if c == sep && !in_quotes => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unquote(raw: &str) -> Option<String> {
    let Some(inner) = raw.strip_prefix('"') else {
        return (!raw.contains('"')).then(|| raw.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Parses a forwarding header value exactly as the resolver would, for fuzzing and
/// property tests: the hops of an `X-Forwarded-For` and of a `Forwarded` value.
#[doc(hidden)]
pub fn __parse_for_fuzzing(value: &str) -> (Option<Vec<IpAddr>>, Option<Vec<Option<IpAddr>>>) {
    (xff_hops(value), forwarded_for(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().extension(PeerAddr(peer.parse().unwrap()));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn resolver() -> ClientIpResolver {
        ClientIpResolver::new(TrustedProxies::new(["10.0.0.0/8", "2001:db8:ffff::/48"]).unwrap())
    }

    fn ip(r: &ClientIpResolver, rq: &Request<()>) -> String {
        r.resolve(rq).unwrap().addr().to_string()
    }

    #[test]
    fn untrusted_peer_ignores_every_header() {
        let r = resolver();
        let rq = req(
            "198.51.100.1:1",
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("forwarded", "for=2.2.2.2"),
                ("x-real-ip", "3.3.3.3"),
            ],
        );
        assert_eq!(ip(&r, &rq), "198.51.100.1");
        assert_eq!(r.resolve(&rq).unwrap().source(), Source::Peer);
    }

    #[test]
    fn trusted_peer_uses_rightmost_untrusted_xff_hop() {
        let r = resolver();
        let rq = req(
            "10.0.0.1:1",
            &[("x-forwarded-for", "6.6.6.6, 5.5.5.5, 10.2.2.2")],
        );
        assert_eq!(ip(&r, &rq), "5.5.5.5");
        assert_eq!(
            r.resolve(&rq).unwrap().source(),
            Source::Header(ForwardedHeader::XForwardedFor)
        );
    }

    #[test]
    fn multiple_xff_lines_are_one_list() {
        let r = resolver();
        let mut rq = req("10.0.0.1:1", &[("x-forwarded-for", "6.6.6.6")]);
        rq.headers_mut()
            .append("x-forwarded-for", "7.7.7.7".parse().unwrap());
        assert_eq!(ip(&r, &rq), "7.7.7.7");
    }

    #[test]
    fn all_trusted_hops_yield_leftmost() {
        let r = resolver();
        let rq = req("10.0.0.1:1", &[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]);
        assert_eq!(ip(&r, &rq), "10.9.9.9");
    }

    #[test]
    fn forwarded_header_with_ports_and_ipv6() {
        let r = resolver();
        let rq = req(
            "10.0.0.1:1",
            &[(
                "forwarded",
                r#"for=192.0.2.43:4711;proto=https, For="[2001:db8:cafe::17]:4711";by=10.0.0.1"#,
            )],
        );
        assert_eq!(ip(&r, &rq), "2001:db8:cafe::17");
        assert_eq!(
            r.resolve(&rq).unwrap().source(),
            Source::Header(ForwardedHeader::Forwarded)
        );
    }

    #[test]
    fn forwarded_wins_over_xff_by_default_and_order_is_configurable() {
        let rq = req(
            "10.0.0.1:1",
            &[("forwarded", "for=1.1.1.1"), ("x-forwarded-for", "2.2.2.2")],
        );
        assert_eq!(ip(&resolver(), &rq), "1.1.1.1");
        let r = resolver().headers([ForwardedHeader::XForwardedFor]);
        assert_eq!(ip(&r, &rq), "2.2.2.2");
    }

    #[test]
    fn obfuscated_or_unknown_forwarded_falls_through() {
        let r = resolver();
        let rq = req(
            "10.0.0.1:1",
            &[("forwarded", "for=unknown"), ("x-real-ip", "4.4.4.4")],
        );
        assert_eq!(ip(&r, &rq), "4.4.4.4");
        let rq = req("10.0.0.1:1", &[("forwarded", "for=_hidden, for=1.1.1.1")]);
        assert_eq!(ip(&r, &rq), "1.1.1.1", "rightmost hop is known");
        let rq = req("10.0.0.1:1", &[("forwarded", "for=1.1.1.1, for=_hidden")]);
        assert_eq!(
            ip(&r, &rq),
            "10.0.0.1",
            "unknown rightmost hop: fall back to the peer"
        );
    }

    #[test]
    fn malformed_headers_are_ignored() {
        let r = resolver();
        for bad in [
            "",
            "garbage",
            "1.2.3.4,,",
            "1.2.3.999",
            "[::1",
            "1.2.3.4 5.6.7.8",
        ] {
            let rq = req("10.0.0.1:1", &[("x-forwarded-for", bad)]);
            assert_eq!(ip(&r, &rq), "10.0.0.1", "value {bad:?}");
        }
        let rq = req("10.0.0.1:1", &[("forwarded", "for=\"1.1.1.1")]);
        assert_eq!(ip(&r, &rq), "10.0.0.1");
        let mut rq = req("10.0.0.1:1", &[]);
        rq.headers_mut().insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(ip(&r, &rq), "10.0.0.1");
        let long = vec!["1.1.1.1"; 2000].join(",");
        let rq = req("10.0.0.1:1", &[("x-forwarded-for", &long)]);
        assert_eq!(ip(&r, &rq), "10.0.0.1");
    }

    #[test]
    fn x_real_ip_must_be_single() {
        let r = resolver();
        let mut rq = req("10.0.0.1:1", &[("x-real-ip", "4.4.4.4")]);
        assert_eq!(ip(&r, &rq), "4.4.4.4");
        rq.headers_mut()
            .append("x-real-ip", "5.5.5.5".parse().unwrap());
        assert_eq!(ip(&r, &rq), "10.0.0.1");
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let r = resolver();
        let rq = req(
            "[::ffff:10.0.0.1]:1",
            &[("x-forwarded-for", "::ffff:8.8.8.8")],
        );
        assert_eq!(ip(&r, &rq), "8.8.8.8");
    }

    #[test]
    fn ipv6_key_prefix() {
        let rq = req("[2001:db8:1:2:3:4:5:6]:1", &[]);
        let r = ClientIpResolver::default();
        assert_eq!(r.resolve(&rq).unwrap().key().to_string(), "2001:db8:1:2::");
        let r = ClientIpResolver::default().ipv6_prefix(48);
        assert_eq!(r.resolve(&rq).unwrap().key().to_string(), "2001:db8:1::");
        let r = ClientIpResolver::default().ipv6_prefix(200);
        assert_eq!(
            r.resolve(&rq).unwrap().key().to_string(),
            "2001:db8:1:2:3:4:5:6"
        );
        let r = ClientIpResolver::default().ipv6_prefix(0);
        assert_eq!(r.resolve(&rq).unwrap().key().to_string(), "::");
        let v4 = req("1.2.3.4:1", &[]);
        assert_eq!(r.resolve(&v4).unwrap().key().to_string(), "1.2.3.4");
    }

    #[test]
    fn no_peer_means_unknown() {
        let rq = Request::builder()
            .header("x-forwarded-for", "1.1.1.1")
            .body(())
            .unwrap();
        assert!(resolver().resolve(&rq).is_none());
        assert!(!resolver().is_trusted_peer(&rq));
    }

    #[test]
    fn scheme_only_from_trusted_peer() {
        let r = resolver();
        let trusted = req("10.0.0.1:1", &[("x-forwarded-proto", "https")]);
        assert_eq!(r.scheme(&trusted), Some("https"));
        let spoof = req("198.51.100.1:1", &[("x-forwarded-proto", "https")]);
        assert_eq!(r.scheme(&spoof), None);
        let fwd = req(
            "10.0.0.1:1",
            &[(
                "forwarded",
                "for=1.1.1.1;proto=http, for=2.2.2.2;proto=HTTPS",
            )],
        );
        assert_eq!(r.scheme(&fwd), Some("https"));
        let uri = Request::builder()
            .uri("https://example.com/")
            .body(())
            .unwrap();
        assert_eq!(r.scheme(&uri), Some("https"));
        let junk = req("10.0.0.1:1", &[("x-forwarded-proto", "gopher")]);
        assert_eq!(r.scheme(&junk), None);
    }

    #[test]
    fn trusted_proxies_parsing() {
        let p = TrustedProxies::parse_list("10.0.0.0/8 , 192.168.0.1\n::1").unwrap();
        assert_eq!(p.networks().len(), 3);
        assert!(TrustedProxies::none().is_empty());
        assert!(TrustedProxies::loopback().contains("127.1.2.3".parse().unwrap()));
        assert!(TrustedProxies::loopback().contains("::ffff:127.0.0.1".parse().unwrap()));
        let err = TrustedProxies::new(["10.0.0.0/8", "bogus"]).unwrap_err();
        assert!(err.to_string().contains("`bogus`"), "{err}");
        let p = TrustedProxies::none().with("172.16.0.0/12").unwrap();
        assert!(p.contains("172.20.1.1".parse().unwrap()));
        assert!(TrustedProxies::none().with("x").is_err());
        let p: TrustedProxies = serde_json::from_str(r#"["10.0.0.0/8"]"#).unwrap();
        assert!(p.contains("10.1.1.1".parse().unwrap()));
        assert!(serde_json::from_str::<TrustedProxies>(r#"["nope"]"#).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,200}") {
            let _ = __parse_for_fuzzing(&s);
        }

        #[test]
        fn spoofing_from_untrusted_peer_never_works(hdr in "[0-9a-f.:, \\[\\]]{0,80}", a in any::<[u8; 4]>()) {
            let peer = std::net::Ipv4Addr::from(a);
            prop_assume!(peer.octets()[0] != 10);
            let rq = req(&format!("{peer}:1"), &[]);
            let mut rq = rq;
            if let Ok(v) = http::HeaderValue::from_str(&hdr) {
                rq.headers_mut().insert("x-forwarded-for", v.clone());
                rq.headers_mut().insert("forwarded", v);
            }
            prop_assert_eq!(resolver().resolve(&rq).unwrap().addr(), IpAddr::V4(peer));
        }

        #[test]
        fn xff_round_trips_generated_lists(ips in proptest::collection::vec(any::<[u8; 4]>(), 1..10)) {
            let list: Vec<String> = ips.iter().map(|o| std::net::Ipv4Addr::from(*o).to_string()).collect();
            let parsed = xff_hops(&list.join(", ")).unwrap();
            prop_assert_eq!(parsed.len(), ips.len());
        }
    }
}
