//! The client's IP address, believing forwarding headers **only** from trusted proxies.
//!
//! This is the one client-IP module of the crate: the rate limiter keys by it, the
//! security headers layer asks it whether `X-Forwarded-Proto` may be believed, and the
//! profiler records it. Nothing else in the crate parses forwarding headers.
//!
//! # How the address is chosen
//!
//! 1. A [`ClientIp`] already in the request extensions (stored by [`ClientIpLayer`]) is
//!    the answer: the address is resolved once per request and every layer agrees.
//! 2. The **peer** address comes from the request extensions: [`PeerAddr`] (set it
//!    yourself with bare hyper), axum's `ConnectInfo<SocketAddr>` (feature `axum`, and
//!    serve with `into_make_service_with_connect_info::<SocketAddr>()`) or tonic's
//!    `TcpConnectInfo` (feature `tonic`). Without one, there is no client address.
//! 3. If the peer is **not** in the [`TrustedProxies`] list, the peer is the client and
//!    every forwarding header is ignored: a client cannot spoof its address.
//! 4. If the peer is a trusted proxy, **one** configured header is read
//!    ([`ForwardedHeader`]: `X-Forwarded-For` by default; `Forwarded` (RFC 7239),
//!    `X-Real-IP` and the provider headers are presets). No other header is ever read,
//!    so a header the client wrote and the proxy passed through cannot be believed.
//! 5. A list is walked **from the right** (several header lines are one list, in order):
//!    trusted hops are skipped and the first untrusted hop is the client. Only the hops
//!    walked are parsed: nothing left of the client can change the answer. An
//!    unparsable hop (or the 65th) ends the walk, and the client is the nearest trusted
//!    hop, the proxy that forwarded it; if every hop is trusted, the leftmost is the
//!    client.
//!
//! The scheme (for HSTS) follows the same rule: one source ([`SchemeSource`]), believed
//! only from trusted peers.
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

/// At most this many hops are walked in one forwarding list.
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

/// The one forwarding header a [`ClientIpResolver`] reads (only from trusted proxies).
///
/// Each variant is a preset for one kind of proxy. Name the header **your** proxy writes:
/// the resolver reads that header and no other, and never falls back to another one, so
/// a header the client wrote itself and the proxy passed through can never be believed.
///
/// | preset | header | form |
/// |---|---|---|
/// | [`XForwardedFor`](Self::XForwardedFor) (the default) | `X-Forwarded-For` | list, each proxy appends the peer it saw (nginx, HAProxy, AWS ALB, Traefik) |
/// | [`Forwarded`](Self::Forwarded) | `Forwarded` ([RFC 7239]) | list of `for=` elements |
/// | [`XRealIp`](Self::XRealIp) | `X-Real-IP` | one address, set (not appended) by the proxy |
/// | [`CfConnectingIp`](Self::CfConnectingIp) | `CF-Connecting-IP` | one address (Cloudflare) |
/// | [`TrueClientIp`](Self::TrueClientIp) | `True-Client-IP` | one address (Akamai, Cloudflare Enterprise) |
/// | [`FlyClientIp`](Self::FlyClientIp) | `Fly-Client-IP` | one address (Fly.io) |
/// | [`CloudFrontViewerAddress`](Self::CloudFrontViewerAddress) | `CloudFront-Viewer-Address` | `address:port` (Amazon CloudFront) |
///
/// [RFC 7239]: https://www.rfc-editor.org/rfc/rfc7239
///
/// # Example
///
/// ```
/// use tower_rampart::client_ip::{ClientIpResolver, ForwardedHeader, PeerAddr, TrustedProxies};
///
/// // Behind Cloudflare: only its networks are trusted, only its header is read.
/// let resolver = ClientIpResolver::new(TrustedProxies::new(["173.245.48.0/20"]).unwrap())
///     .source(ForwardedHeader::CfConnectingIp);
/// let req = http::Request::builder()
///     .header("cf-connecting-ip", "203.0.113.5")
///     .header("x-forwarded-for", "192.0.2.1") // written by the client: ignored
///     .extension(PeerAddr("173.245.48.1:443".parse().unwrap()))
///     .body(())
///     .unwrap();
/// assert_eq!(resolver.resolve(&req).unwrap().addr().to_string(), "203.0.113.5");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// RFC 7239 `Forwarded: for=…` (a list; obfuscated or `unknown` nodes end the walk).
    Forwarded,
    /// `X-Forwarded-For: client, proxy1, proxy2`. The default.
    #[default]
    XForwardedFor,
    /// `X-Real-IP: client` (a single address set by the proxy).
    XRealIp,
    /// Cloudflare's `CF-Connecting-IP` (a single address).
    CfConnectingIp,
    /// `True-Client-IP` (Akamai, Cloudflare Enterprise; a single address).
    TrueClientIp,
    /// Fly.io's `Fly-Client-IP` (a single address).
    FlyClientIp,
    /// Amazon CloudFront's `CloudFront-Viewer-Address` (`address:port`, IPv6 unbracketed).
    CloudFrontViewerAddress,
}

impl ForwardedHeader {
    /// The header's name.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_rampart::client_ip::ForwardedHeader;
    /// assert_eq!(ForwardedHeader::CfConnectingIp.header_name(), "cf-connecting-ip");
    /// ```
    pub fn header_name(self) -> HeaderName {
        HeaderName::from_static(match self {
            Self::Forwarded => "forwarded",
            Self::XForwardedFor => "x-forwarded-for",
            Self::XRealIp => "x-real-ip",
            Self::CfConnectingIp => "cf-connecting-ip",
            Self::TrueClientIp => "true-client-ip",
            Self::FlyClientIp => "fly-client-ip",
            Self::CloudFrontViewerAddress => "cloudfront-viewer-address",
        })
    }

    /// Whether the header is a list of hops (walked right to left) rather than one value.
    pub fn is_list(self) -> bool {
        matches!(self, Self::Forwarded | Self::XForwardedFor)
    }
}

/// Where the scheme the client used (`http`/`https`) is read from, behind a trusted proxy.
///
/// By default, `X-Forwarded-Proto`, or the `proto=` of `Forwarded` when `Forwarded` is the
/// client-address source. Like the address, it is believed only from trusted peers and
/// read from one source only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum SchemeSource {
    /// `X-Forwarded-Proto` (its rightmost value: the one the nearest proxy wrote).
    XForwardedProto,
    /// The `proto=` parameter of the rightmost `Forwarded` element.
    Forwarded,
    /// No header: only the request URI's scheme counts.
    None,
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
///
/// [`ClientIpLayer`] stores it in the request extensions; every rampart layer (and
/// [`ClientIpResolver::resolve`]) then uses that stored value instead of resolving again,
/// so all layers agree on one client address per request.
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
/// By default no proxy is trusted, the one forwarding source is `X-Forwarded-For`, the
/// scheme comes from `X-Forwarded-Proto`, and IPv6 keys are grouped by /64.
#[derive(Debug, Clone)]
pub struct ClientIpResolver {
    trusted: TrustedProxies,
    source: ForwardedHeader,
    scheme_source: Option<SchemeSource>,
    ipv6_prefix: u8,
}

impl Default for ClientIpResolver {
    fn default() -> Self {
        Self::new(TrustedProxies::none())
    }
}

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

impl ClientIpResolver {
    /// A resolver that believes forwarding headers from `trusted` peers only.
    pub fn new(trusted: TrustedProxies) -> Self {
        Self {
            trusted,
            source: ForwardedHeader::XForwardedFor,
            scheme_source: None,
            ipv6_prefix: 64,
        }
    }

    /// The one forwarding header to read (see [`ForwardedHeader`] for the presets).
    ///
    /// By default, [`ForwardedHeader::XForwardedFor`]. No other header is ever read,
    /// whatever it says: name the header your proxy writes (and overwrites or appends to).
    #[must_use]
    pub fn source(mut self, header: ForwardedHeader) -> Self {
        self.source = header;
        self
    }

    /// Where the client's scheme is read from, behind a trusted proxy.
    ///
    /// By default, [`SchemeSource::Forwarded`] when the address source is
    /// [`ForwardedHeader::Forwarded`], else [`SchemeSource::XForwardedProto`].
    #[must_use]
    pub fn scheme_source(mut self, source: SchemeSource) -> Self {
        self.scheme_source = Some(source);
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

    /// The forwarding header this resolver reads.
    pub fn forwarded_header(&self) -> ForwardedHeader {
        self.source
    }

    /// Whether the request's direct peer is a trusted proxy.
    pub fn is_trusted_peer<B>(&self, req: &Request<B>) -> bool {
        peer_addr(req).is_some_and(|p| self.trusted.contains(p.ip()))
    }

    /// The client address of `req`, or `None` when no peer address is known (for example
    /// an axum app served without `into_make_service_with_connect_info`, or a request
    /// built in a test without [`PeerAddr`]).
    ///
    /// A [`ClientIp`] already in the request extensions (put there by [`ClientIpLayer`])
    /// is returned as is: one answer per request, whichever layer asks.
    #[inline]
    pub fn resolve<B>(&self, req: &Request<B>) -> Option<ClientIp> {
        if let Some(ip) = req.extensions().get::<ClientIp>() {
            return Some(*ip);
        }
        self.resolve_parts(req.headers(), peer_addr(req))
    }

    /// [`resolve`](Self::resolve) from the parts of a request (without looking for a
    /// stored [`ClientIp`]).
    ///
    /// The configured header is walked from the right: trusted hops are skipped and the
    /// first untrusted hop is the client. Only the hops walked are parsed, so nothing
    /// left of the client can change the answer. An unparsable hop (junk, `unknown`, an
    /// obfuscated `Forwarded` node, a hop past the 64th) ends the walk: the client is then
    /// the nearest trusted hop, the proxy that forwarded it.
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
        let found = if self.source.is_list() {
            self.walk(headers)
        } else {
            single_value(headers, &self.source.header_name())
                .and_then(|v| parse_single(self.source, v))
                .map(canonical)
        };
        Some(match found {
            Some(addr) => make(addr, Source::Header(self.source)),
            None => make(peer, Source::Peer),
        })
    }

    /// Walks the configured list header right to left from the trusted `peer`; `None`
    /// when the answer is the peer itself.
    fn walk(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let name = self.source.header_name();
        let forwarded = self.source == ForwardedHeader::Forwarded;
        let mut nearest: Option<IpAddr> = None;
        let mut walked = 0;
        for line in headers.get_all(&name).iter().rev() {
            for hop in RSplit::new(line.as_bytes(), forwarded) {
                walked += 1;
                let parsed = if walked > MAX_HOPS {
                    None
                } else if forwarded {
                    forwarded_node(hop)
                } else {
                    parse_ip_bytes(trim(hop))
                };
                let Some(ip) = parsed.map(canonical) else {
                    return nearest;
                };
                if !self.trusted.contains_canonical(ip) {
                    return Some(ip);
                }
                nearest = Some(ip);
            }
        }
        // Every hop was trusted: the leftmost one is the client.
        nearest
    }

    /// The scheme the client used (`"https"` or `"http"`), from the configured
    /// [`SchemeSource`] **only** when the peer is a trusted proxy; otherwise from the
    /// request URI. `None` when neither says.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_rampart::client_ip::{ClientIpResolver, PeerAddr, TrustedProxies};
    /// let resolver = ClientIpResolver::new(TrustedProxies::loopback());
    /// let req = http::Request::builder()
    ///     .header("x-forwarded-proto", "https")
    ///     .header("forwarded", "proto=http") // not the configured source: ignored
    ///     .extension(PeerAddr("127.0.0.1:1".parse().unwrap()))
    ///     .body(()).unwrap();
    /// assert_eq!(resolver.scheme(&req), Some("https"));
    /// ```
    pub fn scheme<B>(&self, req: &Request<B>) -> Option<&'static str> {
        if self.is_trusted_peer(req) {
            let source = self.scheme_source.unwrap_or(match self.source {
                ForwardedHeader::Forwarded => SchemeSource::Forwarded,
                _ => SchemeSource::XForwardedProto,
            });
            let headers = req.headers();
            let proto = match source {
                SchemeSource::XForwardedProto => headers
                    .get_all(X_FORWARDED_PROTO)
                    .iter()
                    .next_back()
                    .and_then(|line| RSplit::new(line.as_bytes(), false).next())
                    .map(trim),
                SchemeSource::Forwarded => headers
                    .get_all(http::header::FORWARDED)
                    .iter()
                    .next_back()
                    .and_then(|line| RSplit::new(line.as_bytes(), true).next())
                    .and_then(|element| forwarded_param(element, b"proto")),
                SchemeSource::None => None,
            };
            if let Some(scheme) = proto.and_then(http_scheme) {
                return Some(scheme);
            }
        }
        req.uri()
            .scheme_str()
            .and_then(|s| http_scheme(s.as_bytes()))
    }
}

fn http_scheme(s: &[u8]) -> Option<&'static str> {
    if s.eq_ignore_ascii_case(b"https") {
        Some("https")
    } else if s.eq_ignore_ascii_case(b"http") {
        Some("http")
    } else {
        None
    }
}

/// Stores the request's [`ClientIp`] in its extensions, resolved once, so that every
/// layer below (rate limit, security headers, tenant, profiler) and the handler use the
/// same answer.
///
/// Put it outermost. Requests without a known peer pass through without a `ClientIp`
/// (the rate limiter's [`MissingPeer`](crate::rate_limit::MissingPeer) policy decides
/// what happens to them).
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_rampart::client_ip::{ClientIp, ClientIpLayer, ClientIpResolver, PeerAddr, TrustedProxies};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(ClientIpLayer::new(ClientIpResolver::new(TrustedProxies::loopback())))
///     .service(service_fn(|req: Request<()>| async move {
///         let ip = req.extensions().get::<ClientIp>().unwrap().addr();
///         Ok::<_, Infallible>(Response::new(ip.to_string()))
///     }));
/// let req = Request::builder()
///     .header("x-forwarded-for", "203.0.113.9")
///     .extension(PeerAddr("127.0.0.1:9000".parse().unwrap()))
///     .body(())
///     .unwrap();
/// assert_eq!(svc.oneshot(req).await.unwrap().body(), "203.0.113.9");
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientIpLayer {
    resolver: ClientIpResolver,
}

impl ClientIpLayer {
    /// A layer that resolves with `resolver`.
    pub fn new(resolver: ClientIpResolver) -> Self {
        Self { resolver }
    }
}

impl<S> tower_layer::Layer<S> for ClientIpLayer {
    type Service = ClientIpService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientIpService {
            inner,
            resolver: self.resolver.clone(),
        }
    }
}

/// The service of [`ClientIpLayer`].
#[derive(Debug, Clone)]
pub struct ClientIpService<S> {
    inner: S,
    resolver: ClientIpResolver,
}

impl<S, B> tower_service::Service<Request<B>> for ClientIpService<S>
where
    S: tower_service::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if req.extensions().get::<ClientIp>().is_none()
            && let Some(ip) = self.resolver.resolve_parts(req.headers(), peer_addr(&req))
        {
            req.extensions_mut().insert(ip);
        }
        self.inner.call(req)
    }
}

/// Client-IP settings as a configuration file describes them.
///
/// # Example
///
/// ```
/// use tower_rampart::client_ip::ClientIpConfig;
///
/// let config: ClientIpConfig = serde_json::from_str(
///     r#"{"trusted_proxies": ["10.0.0.0/8"], "source": "forwarded", "ipv6_prefix": 56}"#,
/// ).unwrap();
/// let resolver = config.build().unwrap();
/// assert!(resolver.trusted_proxies().contains("10.1.2.3".parse().unwrap()));
///
/// // One source only: a list of several headers is refused with the fix.
/// let several: ClientIpConfig =
///     serde_json::from_str(r#"{"headers": ["forwarded", "x-forwarded-for"]}"#).unwrap();
/// assert!(several.build().unwrap_err().to_string().contains("exactly one"));
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientIpConfig {
    /// The proxies whose forwarding header is believed (none by default).
    #[serde(default)]
    pub trusted_proxies: TrustedProxies,
    /// The one forwarding header (`x-forwarded-for` by default).
    #[serde(default)]
    pub source: Option<ForwardedHeader>,
    /// The former list form of [`source`](Self::source); accepted only with one entry.
    #[serde(default)]
    pub headers: Option<Vec<ForwardedHeader>>,
    /// Where the scheme is read from (see [`SchemeSource`]).
    #[serde(default)]
    pub scheme: Option<SchemeSource>,
    /// IPv6 key prefix length (64 by default).
    #[serde(default)]
    pub ipv6_prefix: Option<u8>,
}

impl ClientIpConfig {
    /// The resolver this configuration describes.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when several forwarding sources are named (in `headers`, or
    /// `headers` together with `source`): the resolver reads exactly one, so that a
    /// header the proxy passes through untouched can never be believed.
    pub fn build(&self) -> Result<ClientIpResolver, ConfigError> {
        let source = match (&self.source, self.headers.as_deref()) {
            (source, None | Some([])) => source.unwrap_or_default(),
            (None, Some([one])) => *one,
            (Some(_) | None, Some(_)) => {
                return Err(ConfigError::new(
                    "client IP: name exactly one forwarding header (`source = \"x-forwarded-for\"`, \
                     \"forwarded\", \"x-real-ip\", \"cf-connecting-ip\", \"true-client-ip\", \
                     \"fly-client-ip\" or \"cloudfront-viewer-address\"): the one your proxy \
                     writes. Reading several lets a client-written header through",
                ));
            }
        };
        let mut resolver = ClientIpResolver::new(self.trusted_proxies.clone()).source(source);
        if let Some(scheme) = self.scheme {
            resolver = resolver.scheme_source(scheme);
        }
        if let Some(prefix) = self.ipv6_prefix {
            if prefix > 128 {
                return Err(ConfigError::new(format!(
                    "client IP: ipv6_prefix {prefix} is longer than an address: use 0 to 128 (64 groups a customer's /64)"
                )));
            }
            resolver = resolver.ipv6_prefix(prefix);
        }
        Ok(resolver)
    }
}

/// Hops of one header line, right to left, split at unquoted commas (quotes count only
/// for `Forwarded`). What is left of the hops taken is never looked at.
struct RSplit<'a> {
    rest: Option<&'a [u8]>,
    quotes: bool,
}

impl<'a> RSplit<'a> {
    fn new(line: &'a [u8], quotes: bool) -> Self {
        Self {
            rest: Some(line),
            quotes,
        }
    }
}

impl<'a> Iterator for RSplit<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.rest?;
        let mut in_quotes = false;
        let mut i = s.len();
        while i > 0 {
            i -= 1;
            match s[i] {
                b'"' if self.quotes => {
                    // A quote preceded by an odd number of backslashes is escaped.
                    let slashes = s[..i].iter().rev().take_while(|b| **b == b'\\').count();
                    if !in_quotes || slashes % 2 == 0 {
                        in_quotes = !in_quotes;
                    }
                }
                b',' if !in_quotes => {
                    self.rest = Some(&s[..i]);
                    return Some(&s[i + 1..]);
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(s)
    }
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

/// The value of a single-value header: one line, not too long.
fn single_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a [u8]> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() || first.len() > MAX_HOP_LEN {
        return None;
    }
    Some(trim(first.as_bytes()))
}

/// A single-value header's address.
fn parse_single(header: ForwardedHeader, value: &[u8]) -> Option<IpAddr> {
    if header == ForwardedHeader::CloudFrontViewerAddress {
        // `198.51.100.10:46532` or `2a05:d018::12:46032`: the port follows the last colon,
        // always (read first: a port below 10000 is also a valid IPv6 group).
        let colon = value.iter().rposition(|b| *b == b':');
        if let Some(colon) = colon {
            let (addr, port) = (&value[..colon], &value[colon + 1..]);
            if !port.is_empty()
                && port.len() <= 5
                && port.iter().all(u8::is_ascii_digit)
                && let Some(ip) = std::str::from_utf8(addr)
                    .ok()
                    .and_then(|a| IpAddr::from_str(a).ok())
            {
                return Some(ip);
            }
        }
        return parse_ip_bytes(value);
    }
    parse_ip_bytes(value)
}

/// The longest hop (or single value) parsed; longer ones are unparsable.
const MAX_HOP_LEN: usize = 256;

/// An IP address, optionally with a port (`1.2.3.4:80`, `[::1]:80`) or brackets (`[::1]`).
fn parse_ip_bytes(s: &[u8]) -> Option<IpAddr> {
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let s = std::str::from_utf8(s).ok()?;
    if let Ok(ip) = IpAddr::from_str(s) {
        return Some(ip);
    }
    if let Ok(sock) = SocketAddr::from_str(s) {
        return Some(sock.ip());
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    Ipv6Addr::from_str(inner).ok().map(IpAddr::V6)
}

/// The `for=` node of one `Forwarded` element; `None` when it is missing, repeated,
/// obfuscated (`_hidden`), `unknown` or malformed.
fn forwarded_node(element: &[u8]) -> Option<IpAddr> {
    if element.len() > MAX_HOP_LEN {
        return None;
    }
    let value = forwarded_param(element, b"for")?;
    parse_ip_bytes(value)
}

/// The value of parameter `key` in one `Forwarded` element (`for=…;proto=…`), unquoted
/// (RFC 7230 quoted-string without escapes: node values contain none); `None` when the
/// element is malformed or names the parameter twice.
fn forwarded_param<'a>(element: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut found = None;
    for pair in element.split(|b| *b == b';') {
        let pair = trim(pair);
        if pair.is_empty() {
            continue;
        }
        let eq = pair.iter().position(|b| *b == b'=')?;
        if !trim(&pair[..eq]).eq_ignore_ascii_case(key) {
            continue;
        }
        if found.is_some() {
            return None;
        }
        let raw = trim(&pair[eq + 1..]);
        let value = match raw.strip_prefix(b"\"") {
            Some(quoted) => quoted.strip_suffix(b"\"")?,
            None => raw,
        };
        if value.contains(&b'"') || value.contains(&b'\\') {
            return None;
        }
        found = Some(value);
    }
    found
}

/// Walks a forwarding value exactly as the resolver would, for fuzzing and property
/// tests: the hops of `value` read right to left as `X-Forwarded-For` and as
/// `Forwarded`, each `None` where the walk would stop.
#[doc(hidden)]
pub fn __parse_for_fuzzing(value: &[u8]) -> (Vec<Option<IpAddr>>, Vec<Option<IpAddr>>) {
    let xff = RSplit::new(value, false)
        .take(MAX_HOPS)
        .map(|h| parse_ip_bytes(trim(h)))
        .collect();
    let fwd = RSplit::new(value, true)
        .take(MAX_HOPS)
        .map(forwarded_node)
        .collect();
    (xff, fwd)
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
            .append("x-forwarded-for", "7.7.7.7, 10.3.3.3".parse().unwrap());
        assert_eq!(ip(&r, &rq), "7.7.7.7");
        let mut rq = req("10.0.0.1:1", &[("x-forwarded-for", "6.6.6.6")]);
        rq.headers_mut()
            .append("x-forwarded-for", "10.3.3.3".parse().unwrap());
        assert_eq!(
            ip(&r, &rq),
            "6.6.6.6",
            "the walk goes on into earlier lines"
        );
    }

    #[test]
    fn all_trusted_hops_yield_leftmost() {
        let r = resolver();
        let rq = req("10.0.0.1:1", &[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]);
        assert_eq!(ip(&r, &rq), "10.9.9.9");
    }

    #[test]
    fn forwarded_header_with_ports_and_ipv6() {
        let r = resolver().source(ForwardedHeader::Forwarded);
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
        // A quoted comma left of the client does not split the walked elements.
        let rq = req(
            "10.0.0.1:1",
            &[(
                "forwarded",
                r#"for="a,b\"c", for=192.0.2.60;proto=http, for=10.1.1.1"#,
            )],
        );
        assert_eq!(ip(&r, &rq), "192.0.2.60");
    }

    /// The issue's first attack: the proxy appends to `X-Forwarded-For` and passes a
    /// client-written `Forwarded` through; the resolver must not read it.
    #[test]
    fn only_the_configured_header_is_read() {
        let r = ClientIpResolver::new(TrustedProxies::loopback());
        for n in 0..8 {
            let rq = req(
                "127.0.0.1:1",
                &[
                    ("x-forwarded-for", "203.0.113.8"),
                    ("forwarded", &format!("for=198.51.100.{n}")),
                    ("x-real-ip", &format!("192.0.2.{n}")),
                    ("cf-connecting-ip", &format!("192.0.2.{n}")),
                ],
            );
            assert_eq!(ip(&r, &rq), "203.0.113.8");
        }
        let fwd = r.clone().source(ForwardedHeader::Forwarded);
        let rq = req(
            "127.0.0.1:1",
            &[("forwarded", "for=unknown"), ("x-forwarded-for", "4.4.4.4")],
        );
        assert_eq!(ip(&fwd, &rq), "127.0.0.1", "no fallback to another header");
    }

    /// The issue's second attack: junk left of the proxy-appended hop.
    #[test]
    fn junk_left_of_the_client_changes_nothing() {
        let r = ClientIpResolver::new(TrustedProxies::loopback());
        for n in 0..8 {
            let rq = req(
                "127.0.0.1:1",
                &[
                    ("x-forwarded-for", "junk, 203.0.113.9"),
                    ("x-real-ip", &format!("192.0.2.{n}")),
                ],
            );
            assert_eq!(ip(&r, &rq), "203.0.113.9");
        }
        // Past 64 hops or 8 KiB, the list is still read from the right.
        let long = format!("{}, 203.0.113.10", vec!["1.1.1.1"; 3000].join(","));
        let rq = req("127.0.0.1:1", &[("x-forwarded-for", &long)]);
        assert_eq!(ip(&r, &rq), "203.0.113.10");
    }

    #[test]
    fn unparsable_hop_ends_the_walk_at_the_nearest_trusted_hop() {
        let r = resolver();
        for (value, want) in [
            ("", "10.0.0.1"),
            ("garbage", "10.0.0.1"),
            ("1.2.3.4,,", "10.0.0.1"),
            ("1.2.3.999", "10.0.0.1"),
            ("[::1", "10.0.0.1"),
            ("1.2.3.4 5.6.7.8", "10.0.0.1"),
            ("6.6.6.6, junk, 10.5.5.5", "10.5.5.5"),
            ("6.6.6.6, junk, 10.5.5.5, 10.4.4.4", "10.5.5.5"),
        ] {
            let rq = req("10.0.0.1:1", &[("x-forwarded-for", value)]);
            assert_eq!(ip(&r, &rq), want, "value {value:?}");
        }
        let f = resolver().source(ForwardedHeader::Forwarded);
        for (value, want) in [
            ("for=\"1.1.1.1", "10.0.0.1"),
            ("for=_hidden, for=1.1.1.1", "1.1.1.1"),
            ("for=1.1.1.1, for=_hidden", "10.0.0.1"),
            ("for=1.1.1.1, for=10.2.2.2;for=10.3.3.3", "10.0.0.1"),
            ("for=1.1.1.1, proto=https", "10.0.0.1"),
        ] {
            let rq = req("10.0.0.1:1", &[("forwarded", value)]);
            assert_eq!(ip(&f, &rq), want, "value {value:?}");
        }
        let mut rq = req("10.0.0.1:1", &[]);
        rq.headers_mut().insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff\xfe, 8.8.8.8").unwrap(),
        );
        assert_eq!(ip(&r, &rq), "8.8.8.8", "non-UTF-8 left of the client");
        let mut rq = req("10.0.0.1:1", &[]);
        rq.headers_mut().insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"8.8.8.8, \xff\xfe").unwrap(),
        );
        assert_eq!(ip(&r, &rq), "10.0.0.1");
        let trusted_chain = vec!["10.1.1.1"; 100].join(",");
        let rq = req("10.0.0.1:1", &[("x-forwarded-for", &trusted_chain)]);
        assert_eq!(ip(&r, &rq), "10.1.1.1", "the walk stops after 64 hops");
    }

    #[test]
    fn single_value_presets() {
        let r = resolver().source(ForwardedHeader::XRealIp);
        let mut rq = req("10.0.0.1:1", &[("x-real-ip", " 4.4.4.4 ")]);
        assert_eq!(ip(&r, &rq), "4.4.4.4");
        rq.headers_mut()
            .append("x-real-ip", "5.5.5.5".parse().unwrap());
        assert_eq!(ip(&r, &rq), "10.0.0.1", "two lines: not believed");
        for (preset, name) in [
            (ForwardedHeader::CfConnectingIp, "cf-connecting-ip"),
            (ForwardedHeader::TrueClientIp, "true-client-ip"),
            (ForwardedHeader::FlyClientIp, "fly-client-ip"),
        ] {
            let r = resolver().source(preset);
            assert_eq!(preset.header_name(), name);
            assert!(!preset.is_list());
            let rq = req(
                "10.0.0.1:1",
                &[(name, "2001:db8::7"), ("x-forwarded-for", "9.9.9.9")],
            );
            assert_eq!(ip(&r, &rq), "2001:db8::7");
            let rq = req("198.51.100.1:1", &[(name, "2001:db8::7")]);
            assert_eq!(ip(&r, &rq), "198.51.100.1");
        }
        let r = resolver().source(ForwardedHeader::CloudFrontViewerAddress);
        for (value, want) in [
            ("198.51.100.10:46532", "198.51.100.10"),
            ("2a05:d018::12:46032", "2a05:d018::12"),
            ("[2a05:d018::12]:46032", "2a05:d018::12"),
            ("198.51.100.10:", "10.0.0.1"),
            ("198.51.100.10:x", "10.0.0.1"),
        ] {
            let rq = req("10.0.0.1:1", &[("cloudfront-viewer-address", value)]);
            assert_eq!(ip(&r, &rq), want, "{value}");
        }
    }

    /// CloudFront always appends the viewer's port, and a port below 10000 is a valid
    /// IPv6 group: `2001:db8::1:2:3:4` from port 80 reads `2001:db8::1:2:3:4:80`, itself
    /// an address (`2001:db8:0:1:2:3:4:80`) in another /64. A client picking its interface
    /// id and source port would get a fresh rate-limit key each time; the port is the
    /// part after the last colon, always.
    #[test]
    fn cloudfront_port_is_never_read_as_an_ipv6_group() {
        let r = resolver().source(ForwardedHeader::CloudFrontViewerAddress);
        for (value, want) in [
            ("2001:db8::1:2:3:4:80", "2001:db8::1:2:3:4"),
            ("2a05:d018::12:443", "2a05:d018::12"),
            ("2001:db8::5:9999", "2001:db8::5"),
        ] {
            let rq = req("10.0.0.1:1", &[("cloudfront-viewer-address", value)]);
            assert_eq!(ip(&r, &rq), want, "{value}");
        }
        let a = req(
            "10.0.0.1:1",
            &[("cloudfront-viewer-address", "2001:db8::1:2:3:4:80")],
        );
        let b = req(
            "10.0.0.1:1",
            &[("cloudfront-viewer-address", "2001:db8::9:2:3:4:80")],
        );
        assert_eq!(r.resolve(&a).unwrap().key(), r.resolve(&b).unwrap().key());
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
    fn a_stored_client_ip_is_the_answer() {
        let rq = req("10.0.0.1:1", &[("x-forwarded-for", "5.5.5.5")]);
        let stored = resolver().resolve(&rq).unwrap();
        let mut rq = req("10.0.0.1:1", &[("x-forwarded-for", "6.6.6.6")]);
        rq.extensions_mut().insert(stored);
        // Another resolver (trusting nothing) still gives the stored answer.
        assert_eq!(ip(&ClientIpResolver::default(), &rq), "5.5.5.5");
    }

    #[test]
    fn scheme_only_from_trusted_peer_and_one_source() {
        let r = resolver();
        let trusted = req("10.0.0.1:1", &[("x-forwarded-proto", "https")]);
        assert_eq!(r.scheme(&trusted), Some("https"));
        let spoof = req("198.51.100.1:1", &[("x-forwarded-proto", "https")]);
        assert_eq!(r.scheme(&spoof), None);
        // The issue's third attack: a client-written `Forwarded: proto=https` must not
        // beat the proxy's `X-Forwarded-Proto: http`.
        let mixed = req(
            "10.0.0.1:1",
            &[("forwarded", "proto=https"), ("x-forwarded-proto", "http")],
        );
        assert_eq!(r.scheme(&mixed), Some("http"));
        let fwd = req(
            "10.0.0.1:1",
            &[
                (
                    "forwarded",
                    "for=1.1.1.1;proto=http, for=2.2.2.2;proto=HTTPS",
                ),
                ("x-forwarded-proto", "http"),
            ],
        );
        let by_forwarded = resolver().source(ForwardedHeader::Forwarded);
        assert_eq!(by_forwarded.scheme(&fwd), Some("https"));
        assert_eq!(r.scheme(&fwd), Some("http"));
        let explicit = resolver().scheme_source(SchemeSource::Forwarded);
        assert_eq!(explicit.scheme(&fwd), Some("https"));
        let none = resolver().scheme_source(SchemeSource::None);
        assert_eq!(none.scheme(&fwd), None);
        let list = req("10.0.0.1:1", &[("x-forwarded-proto", "http, https")]);
        assert_eq!(r.scheme(&list), Some("https"), "the nearest proxy's value");
        let uri = Request::builder()
            .uri("https://example.com/")
            .body(())
            .unwrap();
        assert_eq!(r.scheme(&uri), Some("https"));
        let junk = req("10.0.0.1:1", &[("x-forwarded-proto", "gopher")]);
        assert_eq!(r.scheme(&junk), None);
    }

    #[test]
    fn config_builds_one_source_or_says_why_not() {
        let c: ClientIpConfig = serde_json::from_str(
            r#"{"trusted_proxies": ["10.0.0.0/8"], "headers": ["x-real-ip"], "scheme": "none"}"#,
        )
        .unwrap();
        let r = c.build().unwrap();
        assert_eq!(r.forwarded_header(), ForwardedHeader::XRealIp);
        let c: ClientIpConfig =
            serde_json::from_str(r#"{"source": "cf-connecting-ip", "headers": ["forwarded"]}"#)
                .unwrap();
        assert!(c.build().unwrap_err().to_string().contains("exactly one"));
        let c: ClientIpConfig = serde_json::from_str(r#"{"ipv6_prefix": 129}"#).unwrap();
        assert!(c.build().unwrap_err().to_string().contains("0 to 128"));
        assert!(serde_json::from_str::<ClientIpConfig>(r#"{"source": "x-bogus"}"#).is_err());
        assert_eq!(
            ClientIpConfig::default()
                .build()
                .unwrap()
                .forwarded_header(),
            ForwardedHeader::XForwardedFor
        );
    }

    #[tokio::test]
    async fn layer_stores_the_answer_once() {
        use tower::{ServiceExt, service_fn};
        let svc = tower_layer::Layer::layer(
            &ClientIpLayer::new(resolver()),
            service_fn(|req: Request<()>| async move {
                Ok::<_, std::convert::Infallible>(req.extensions().get::<ClientIp>().copied())
            }),
        );
        let rq = req("10.0.0.1:1", &[("x-forwarded-for", "5.5.5.5")]);
        let got = svc.clone().oneshot(rq).await.unwrap().unwrap();
        assert_eq!(got.addr().to_string(), "5.5.5.5");
        let no_peer = Request::builder().body(()).unwrap();
        assert!(svc.oneshot(no_peer).await.unwrap().is_none());
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

    /// One hop of a generated chain: its text and what a reader of that one hop makes
    /// of it (`None`: unparsable).
    fn hop() -> impl Strategy<Value = (String, Option<IpAddr>)> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|o| {
                let ip = std::net::Ipv4Addr::from(o);
                (ip.to_string(), Some(IpAddr::V4(ip)))
            }),
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(o, port)| {
                let ip = std::net::Ipv4Addr::from(o);
                (format!("{ip}:{port}"), Some(IpAddr::V4(ip)))
            }),
            any::<u128>().prop_map(|b| {
                let ip = Ipv6Addr::from(b);
                (format!("[{ip}]"), Some(canonical(IpAddr::V6(ip))))
            }),
            (any::<u128>(), any::<u16>()).prop_map(|(b, port)| {
                let ip = Ipv6Addr::from(b);
                (format!("[{ip}]:{port}"), Some(canonical(IpAddr::V6(ip))))
            }),
            // Trusted hops (the proxies' own networks).
            (0u8..4, any::<u8>()).prop_map(|(a, b)| {
                let ip = std::net::Ipv4Addr::new(10, a, b, 1);
                (ip.to_string(), Some(IpAddr::V4(ip)))
            }),
            Just(("unknown".to_owned(), None)),
            Just(("_hidden".to_owned(), None)),
            "[a-z!#\\[\\]]{1,12}".prop_map(|s| (s, None)),
        ]
    }

    /// The reference model: right to left over already-split hops.
    fn model(trusted: &TrustedProxies, peer: IpAddr, hops: &[Option<IpAddr>]) -> IpAddr {
        if !trusted.contains(peer) {
            return peer;
        }
        let mut nearest = peer;
        for (i, hop) in hops.iter().rev().enumerate() {
            match hop {
                Some(ip) if i < MAX_HOPS => {
                    if !trusted.contains(*ip) {
                        return *ip;
                    }
                    nearest = *ip;
                }
                _ => return nearest,
            }
        }
        nearest
    }

    fn split_lines(hops: &[String], breaks: &[bool]) -> Vec<String> {
        let mut lines = vec![String::new()];
        for (i, h) in hops.iter().enumerate() {
            let line = lines.last_mut().unwrap();
            if !line.is_empty() {
                line.push_str(", ");
            }
            line.push_str(h);
            if breaks.get(i).copied().unwrap_or(false) && i + 1 < hops.len() {
                lines.push(String::new());
            }
        }
        lines
    }

    fn build(
        peer: IpAddr,
        name: &str,
        lines: &[String],
        noise: &[(&'static str, String)],
    ) -> Request<()> {
        let mut rq = Request::builder()
            .extension(PeerAddr(SocketAddr::new(peer, 1)))
            .body(())
            .unwrap();
        for line in lines {
            rq.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                line.parse().unwrap(),
            );
        }
        for (k, v) in noise {
            if let Ok(v) = http::HeaderValue::from_str(v) {
                rq.headers_mut().append(*k, v);
            }
        }
        rq
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = __parse_for_fuzzing(&s);
        }

        #[test]
        fn spoofing_from_untrusted_peer_never_works(hdr in "[0-9a-f.:, \\[\\]]{0,80}", a in any::<[u8; 4]>()) {
            let peer = std::net::Ipv4Addr::from(a);
            prop_assume!(peer.octets()[0] != 10);
            let mut rq = req(&format!("{peer}:1"), &[]);
            if let Ok(v) = http::HeaderValue::from_str(&hdr) {
                rq.headers_mut().insert("x-forwarded-for", v.clone());
                rq.headers_mut().insert("forwarded", v);
            }
            prop_assert_eq!(resolver().resolve(&rq).unwrap().addr(), IpAddr::V4(peer));
        }

        /// The resolver agrees with the model on random chains (several lines, ports,
        /// brackets, obfuscated nodes, junk, trusted hops) for both list headers, and
        /// client-written headers of every other kind never change the answer.
        #[test]
        fn resolver_agrees_with_the_model(
            hops in proptest::collection::vec(hop(), 0..80),
            breaks in proptest::collection::vec(any::<bool>(), 0..80),
            peer_trusted in any::<bool>(),
            noise in "[0-9a-f.:, =;\\[\\]]{0,40}",
        ) {
            let trusted = resolver().trusted_proxies().clone();
            let peer: IpAddr = if peer_trusted { "10.0.0.1".parse().unwrap() } else { "198.51.100.1".parse().unwrap() };
            let expected = model(&trusted, peer, &hops.iter().map(|h| h.1).collect::<Vec<_>>());
            // X-Forwarded-For: the hops as written.
            let texts: Vec<String> = hops.iter().map(|h| h.0.clone()).collect();
            let others = |skip: &str| -> Vec<(&'static str, String)> {
                ["x-forwarded-for", "forwarded", "x-real-ip", "cf-connecting-ip", "true-client-ip"]
                    .into_iter()
                    .filter(|n| *n != skip)
                    .map(|n| (n, noise.clone()))
                    .collect()
            };
            let rq = build(peer, "x-forwarded-for", &split_lines(&texts, &breaks), &others("x-forwarded-for"));
            prop_assert_eq!(resolver().resolve(&rq).unwrap().addr(), expected);
            // Forwarded: the same hops as `for=` elements (quoted where RFC 7239 says).
            let elements: Vec<String> = hops
                .iter()
                .map(|(t, _)| if t.contains(':') || t.contains('[') { format!("for=\"{t}\"") } else { format!("for={t}") })
                .collect();
            let rq = build(peer, "forwarded", &split_lines(&elements, &breaks), &others("forwarded"));
            let f = resolver().source(ForwardedHeader::Forwarded);
            prop_assert_eq!(f.resolve(&rq).unwrap().addr(), expected);
        }

        /// Whatever is written left of the client, the answer stays.
        #[test]
        fn nothing_left_of_the_client_changes_the_answer(
            hops in proptest::collection::vec(hop(), 1..20),
            prefix in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let r = resolver();
            let texts: Vec<String> = hops.iter().map(|h| h.0.clone()).collect();
            let joined = texts.join(", ");
            let peer: IpAddr = "10.0.0.1".parse().unwrap();
            let base = build(peer, "x-forwarded-for", std::slice::from_ref(&joined), &[]);
            let answer = r.resolve(&base).unwrap().addr();
            let mut with_prefix = prefix.clone();
            with_prefix.extend_from_slice(b",");
            with_prefix.extend_from_slice(joined.as_bytes());
            if let Ok(v) = http::HeaderValue::from_bytes(&with_prefix) {
                let mut rq = build(peer, "x-forwarded-for", &[], &[]);
                rq.headers_mut().insert("x-forwarded-for", v);
                let got = r.resolve(&rq).unwrap().addr();
                // The client was found among the hops (or all were trusted and the walk
                // went on into the prefix, where only trusted or unparsable hops are
                // left of the leftmost trusted hop).
                let all_trusted_or_unparsable_left = hops.iter().all(|h| h.1.is_some_and(|ip| r.trusted_proxies().contains(ip)));
                if !all_trusted_or_unparsable_left {
                    prop_assert_eq!(got, answer);
                }
            }
        }
    }
}
