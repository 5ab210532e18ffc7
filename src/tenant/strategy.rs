//! Where a request names its tenant: host, subdomain, header, path, claim, closure.

use std::{borrow::Cow, fmt, sync::Arc};

use http::{Extensions, HeaderMap, HeaderName, Method, Uri, header};
use serde::Deserialize;

use super::id::{InvalidTenantId, TenantId, normalise_host};
use crate::{error::ConfigError, identity::IdentityReader};

/// The strategy that named the tenant of a request (a metrics label too).
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::StrategyKind;
///
/// assert_eq!(StrategyKind::Header.as_str(), "header");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StrategyKind {
    /// A host template such as `{tenant}.example.com`.
    Host,
    /// The subdomain of a configured base domain.
    Subdomain,
    /// A request header (by default `X-Tenant-ID`).
    Header,
    /// A path prefix such as `/t/{tenant}`.
    Path,
    /// The tenant of the authenticated principal.
    Claim,
    /// An application closure.
    Custom,
    /// The static fallback tenant.
    Fallback,
}

impl StrategyKind {
    /// A short lower-case name: `host`, `subdomain`, `header`, `path`, `claim`, `custom`,
    /// `fallback`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Subdomain => "subdomain",
            Self::Header => "header",
            Self::Path => "path",
            Self::Claim => "claim",
            Self::Custom => "custom",
            Self::Fallback => "fallback",
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A read-only view of a request, given to custom strategy closures.
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::RequestHead;
///
/// let req = http::Request::builder().uri("/x?tenant=acme").body(()).unwrap();
/// let head = RequestHead::of(&req);
/// assert_eq!(head.uri().query(), Some("tenant=acme"));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The view of a request.
    pub fn of<B>(req: &'a http::Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }

    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request URI.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The request headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request extensions.
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }
}

pub(crate) type CustomFn = Arc<dyn Fn(&RequestHead<'_>) -> Option<String> + Send + Sync>;

/// One configured strategy.
#[derive(Clone)]
pub(crate) enum Strategy {
    Host { prefix: String, suffix: String },
    Subdomain { bases: Vec<String> },
    Header { name: HeaderName },
    Path { literal: String, strip: bool },
    Claim,
    Custom(CustomFn),
}

impl fmt::Debug for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host { prefix, suffix } => write!(f, "Host({prefix}{{tenant}}{suffix})"),
            Self::Subdomain { bases } => f.debug_tuple("Subdomain").field(bases).finish(),
            Self::Header { name } => f.debug_tuple("Header").field(name).finish(),
            Self::Path { literal, strip } => {
                write!(f, "Path({literal}{{tenant}}, strip: {strip})")
            }
            Self::Claim => f.write_str("Claim"),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// What one strategy found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// The strategy does not apply to this request: try the next one.
    Nothing,
    /// A valid identifier, and the path bytes to strip (path strategy only).
    Id(TenantId, Option<usize>),
    /// The strategy applies but the identifier is refused: 400.
    Invalid(InvalidTenantId),
}

fn valid_host_literal(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Strategy {
    pub(crate) fn kind(&self) -> StrategyKind {
        match self {
            Self::Host { .. } => StrategyKind::Host,
            Self::Subdomain { .. } => StrategyKind::Subdomain,
            Self::Header { .. } => StrategyKind::Header,
            Self::Path { .. } => StrategyKind::Path,
            Self::Claim => StrategyKind::Claim,
            Self::Custom(_) => StrategyKind::Custom,
        }
    }

    pub(crate) fn host(template: &str) -> Result<Self, ConfigError> {
        let t = template.to_ascii_lowercase();
        let (prefix, suffix) = t
            .split_once("{tenant}")
            .filter(|(p, s)| !(s.contains("{tenant}") || p.is_empty() && s.is_empty()))
            .ok_or_else(|| {
                ConfigError::new(format!(
                    "tenant host template {template:?} must contain `{{tenant}}` exactly once \
                     beside a literal domain, e.g. \"{{tenant}}.example.com\""
                ))
            })?;
        if !valid_host_literal(prefix) || !valid_host_literal(suffix) {
            return Err(ConfigError::new(format!(
                "tenant host template {template:?} may only contain letters, digits, '-', '.' \
                 and `{{tenant}}` (no port, no scheme), e.g. \"{{tenant}}.example.com\""
            )));
        }
        Ok(Self::Host {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    pub(crate) fn subdomain<I, D>(bases: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = D>,
        D: AsRef<str>,
    {
        let mut out = Vec::new();
        for base in bases {
            let b = base.as_ref().trim_matches('.').to_ascii_lowercase();
            if b.is_empty() || !valid_host_literal(&b) {
                return Err(ConfigError::new(format!(
                    "tenant base domain {:?} is not a domain name: use e.g. \"example.com\" \
                     (no scheme, no port, no wildcard)",
                    base.as_ref()
                )));
            }
            out.push(format!(".{b}"));
        }
        if out.is_empty() {
            return Err(ConfigError::new(
                "tenant subdomain strategy needs at least one base domain, e.g. [\"example.com\"]",
            ));
        }
        // The longest base wins: `acme.eu.example.com` with bases `example.com` and
        // `eu.example.com` is tenant `acme`.
        out.sort_by_key(|b| std::cmp::Reverse(b.len()));
        Ok(Self::Subdomain { bases: out })
    }

    pub(crate) fn header(name: &str) -> Result<Self, ConfigError> {
        let name = HeaderName::try_from(name).map_err(|_| {
            ConfigError::new(format!(
                "tenant header {name:?} is not a valid header name: use e.g. \"x-tenant-id\""
            ))
        })?;
        Ok(Self::Header { name })
    }

    pub(crate) fn path(template: &str, strip: bool) -> Result<Self, ConfigError> {
        let bad = || {
            ConfigError::new(format!(
                "tenant path template {template:?} must start with '/' and end with the \
                 segment `{{tenant}}`, e.g. \"/t/{{tenant}}\""
            ))
        };
        let literal = template.strip_suffix("{tenant}").ok_or_else(bad)?;
        if !literal.starts_with('/')
            || !literal.ends_with('/')
            || literal.contains("{tenant}")
            || literal.contains("//")
            || literal.contains(['%', '?', '#', ' '])
        {
            return Err(bad());
        }
        Ok(Self::Path {
            literal: literal.to_owned(),
            strip,
        })
    }

    /// Runs the strategy on a request.
    pub(crate) fn find(
        &self,
        head: &RequestHead<'_>,
        identity: &IdentityReader,
        max_len: usize,
    ) -> Found {
        let parse = |raw: &str, strip: Option<usize>| match TenantId::parse_with_max(raw, max_len) {
            Ok(id) => Found::Id(id, strip),
            Err(e) => Found::Invalid(e),
        };
        match self {
            Self::Host { prefix, suffix } => match request_host(head) {
                Err(e) => Found::Invalid(e),
                Ok(None) => Found::Nothing,
                Ok(Some(host)) => {
                    if host.len() > prefix.len() + suffix.len()
                        && host.starts_with(prefix.as_str())
                        && host.ends_with(suffix.as_str())
                    {
                        parse(&host[prefix.len()..host.len() - suffix.len()], None)
                    } else {
                        Found::Nothing
                    }
                }
            },
            Self::Subdomain { bases } => match request_host(head) {
                Err(e) => Found::Invalid(e),
                Ok(None) => Found::Nothing,
                Ok(Some(host)) => bases
                    .iter()
                    .find_map(|base| {
                        host.strip_suffix(base.as_str())
                            .filter(|sub| !sub.is_empty())
                            .map(|sub| parse(sub, None))
                    })
                    .unwrap_or(Found::Nothing),
            },
            Self::Header { name } => {
                let mut values = head.headers().get_all(name).iter();
                match (values.next(), values.next()) {
                    (None, _) => Found::Nothing,
                    (Some(_), Some(_)) => Found::Invalid(InvalidTenantId::MalformedHeader),
                    (Some(v), None) => match v.to_str() {
                        Ok(s) => parse(s, None),
                        Err(_) => Found::Invalid(InvalidTenantId::MalformedHeader),
                    },
                }
            }
            Self::Path { literal, strip } => {
                let path = head.uri().path();
                match path.strip_prefix(literal.as_str()) {
                    None => Found::Nothing,
                    Some(rest) => {
                        let seg = rest.split('/').next().unwrap_or_default();
                        let cut = strip.then_some(literal.len() + seg.len());
                        parse(seg, cut)
                    }
                }
            }
            Self::Claim => match identity.principal_tenant_id(head.extensions()) {
                None => Found::Nothing,
                Some(t) => parse(t, None),
            },
            Self::Custom(f) => match f(head) {
                None => Found::Nothing,
                Some(t) => parse(&t, None),
            },
        }
    }
}

/// The host of the request: the URI authority (HTTP/2 `:authority`, absolute-form) or
/// the single `Host` header.
fn request_host<'a>(head: &RequestHead<'a>) -> Result<Option<Cow<'a, str>>, InvalidTenantId> {
    if let Some(auth) = head.uri().authority() {
        return normalise_host(auth.as_str().as_bytes());
    }
    let mut hosts = head.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(InvalidTenantId::MalformedHost),
        (Some(h), None) => normalise_host(h.as_bytes()),
    }
}

/// A strategy as a TOML/JSON file describes it.
///
/// ```toml
/// strategies = [
///   { host = "{tenant}.example.com" },
///   { subdomain = ["example.com", "example.org"] },
///   { header = "x-tenant-id" },
///   { path = { template = "/t/{tenant}", strip = true } },
///   "claim",
/// ]
/// ```
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::StrategyConfig;
///
/// let s: StrategyConfig = serde_json::from_str(r#"{"header": "x-org"}"#).unwrap();
/// assert_eq!(s, StrategyConfig::Header("x-org".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StrategyConfig {
    /// A host template such as `{tenant}.example.com`.
    Host(String),
    /// Subdomains of these base domains.
    Subdomain(Vec<String>),
    /// A request header.
    Header(String),
    /// A path prefix template, optionally stripped before the inner service.
    Path {
        /// The template, e.g. `/t/{tenant}`.
        template: String,
        /// Strip the prefix before the inner service sees the path. By default, `false`.
        #[serde(default)]
        strip: bool,
    },
    /// The tenant of the authenticated principal.
    Claim,
}

impl StrategyConfig {
    pub(crate) fn build(&self) -> Result<Strategy, ConfigError> {
        match self {
            Self::Host(t) => Strategy::host(t),
            Self::Subdomain(b) => Strategy::subdomain(b),
            Self::Header(h) => Strategy::header(h),
            Self::Path { template, strip } => Strategy::path(template, *strip),
            Self::Claim => Ok(Strategy::Claim),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(s: &Strategy, req: &http::Request<()>) -> Found {
        s.find(&RequestHead::of(req), &IdentityReader::new(), 63)
    }

    fn id(s: &str) -> Found {
        Found::Id(TenantId::parse(s).unwrap(), None)
    }

    fn host(h: &str) -> http::Request<()> {
        http::Request::builder().header("host", h).body(()).unwrap()
    }

    #[test]
    fn host_template() {
        let s = Strategy::host("{tenant}.Example.com").unwrap();
        assert_eq!(find(&s, &host("acme.example.com:8080")), id("acme"));
        assert_eq!(find(&s, &host("ACME.example.com")), id("acme"));
        assert_eq!(find(&s, &host("example.com")), Found::Nothing);
        assert_eq!(find(&s, &host("acme.other.com")), Found::Nothing);
        assert_eq!(
            find(&s, &host("a.b.example.com")),
            Found::Invalid(InvalidTenantId::Charset)
        );
        assert_eq!(
            find(&s, &host("xn--80ak6aa92e.example.com")),
            Found::Invalid(InvalidTenantId::Idn)
        );
        let two_hosts = http::Request::builder()
            .header("host", "a.example.com")
            .header("host", "b.example.com")
            .body(())
            .unwrap();
        assert_eq!(
            find(&s, &two_hosts),
            Found::Invalid(InvalidTenantId::MalformedHost)
        );
        let absolute = http::Request::builder()
            .uri("http://beta.example.com/x")
            .header("host", "alpha.example.com")
            .body(())
            .unwrap();
        assert_eq!(find(&s, &absolute), id("beta"));
        assert_eq!(
            find(&s, &http::Request::new(())),
            Found::Nothing,
            "no host at all"
        );
        let mid = Strategy::host("api-{tenant}.example.com").unwrap();
        assert_eq!(find(&mid, &host("api-acme.example.com")), id("acme"));
        assert!(format!("{mid:?}").contains("api-{tenant}"));
        for bad in [
            "example.com",
            "{tenant}",
            "{tenant}.{tenant}.com",
            "{tenant}.ex/ample",
        ] {
            assert!(Strategy::host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subdomain() {
        let s = Strategy::subdomain(["example.com", "eu.example.com."]).unwrap();
        assert_eq!(find(&s, &host("acme.example.com")), id("acme"));
        assert_eq!(find(&s, &host("acme.eu.example.com")), id("acme"));
        assert_eq!(find(&s, &host("example.com")), Found::Nothing);
        assert_eq!(find(&s, &host("notexample.com")), Found::Nothing);
        assert_eq!(
            find(&s, &host("x.acme.example.com")),
            Found::Invalid(InvalidTenantId::Charset)
        );
        assert_eq!(
            find(&s, &host("acme.example.com:port")),
            Found::Invalid(InvalidTenantId::MalformedHost)
        );
        assert!(Strategy::subdomain(Vec::<String>::new()).is_err());
        assert!(Strategy::subdomain(["*.example.com"]).is_err());
        assert!(format!("{s:?}").contains("eu.example.com"));
    }

    #[test]
    fn header() {
        let s = Strategy::header("x-tenant-id").unwrap();
        let req = |vals: &[&[u8]]| {
            let mut b = http::Request::builder();
            for v in vals {
                b = b.header("x-tenant-id", http::HeaderValue::from_bytes(v).unwrap());
            }
            b.body(()).unwrap()
        };
        assert_eq!(find(&s, &req(&[])), Found::Nothing);
        assert_eq!(find(&s, &req(&[b"Acme"])), id("acme"));
        assert_eq!(
            find(&s, &req(&[b"a", b"b"])),
            Found::Invalid(InvalidTenantId::MalformedHeader)
        );
        assert_eq!(
            find(&s, &req(&[b"\xff"])),
            Found::Invalid(InvalidTenantId::MalformedHeader)
        );
        assert_eq!(
            find(&s, &req(&[b"../b"])),
            Found::Invalid(InvalidTenantId::Charset)
        );
        assert!(Strategy::header("bad header").is_err());
        assert_eq!(s.kind(), StrategyKind::Header);
    }

    #[test]
    fn path_prefix() {
        let s = Strategy::path("/t/{tenant}", true).unwrap();
        let req = |p: &str| http::Request::builder().uri(p).body(()).unwrap();
        assert_eq!(
            find(&s, &req("/t/acme/orders?x=1")),
            Found::Id(TenantId::parse("acme").unwrap(), Some(7))
        );
        assert_eq!(
            find(&s, &req("/t/acme")),
            Found::Id(TenantId::parse("acme").unwrap(), Some(7))
        );
        assert_eq!(find(&s, &req("/t")), Found::Nothing);
        assert_eq!(find(&s, &req("/other/acme")), Found::Nothing);
        assert_eq!(
            find(&s, &req("/t//x")),
            Found::Invalid(InvalidTenantId::Empty)
        );
        assert_eq!(
            find(&s, &req("/t/%2e%2e/x")),
            Found::Invalid(InvalidTenantId::Charset)
        );
        assert_eq!(
            find(&s, &req("/t/../x")),
            Found::Invalid(InvalidTenantId::Charset)
        );
        let keep = Strategy::path("/{tenant}", false).unwrap();
        assert_eq!(find(&keep, &req("/acme/x")), id("acme"));
        for bad in [
            "t/{tenant}",
            "/t/{tenant}/x",
            "/t{tenant}",
            "/{tenant}/{tenant}",
            "/a%20/{tenant}",
        ] {
            assert!(Strategy::path(bad, false).is_err(), "{bad}");
        }
        assert!(format!("{s:?}").contains("strip: true"));
    }

    #[test]
    fn custom_and_config() {
        let s = Strategy::Custom(Arc::new(|h: &RequestHead<'_>| {
            h.uri()
                .query()
                .and_then(|q| q.strip_prefix("tenant="))
                .map(str::to_owned)
        }));
        let req = http::Request::builder()
            .method("GET")
            .uri("/?tenant=Acme")
            .body(())
            .unwrap();
        assert_eq!(find(&s, &req), id("acme"));
        assert_eq!(RequestHead::of(&req).method(), Method::GET);
        assert!(RequestHead::of(&req).headers().is_empty());
        assert_eq!(find(&s, &http::Request::new(())), Found::Nothing);
        assert_eq!(format!("{s:?}"), "Custom(..)");

        let all: Vec<StrategyConfig> = serde_json::from_str(
            r#"[{"host": "{tenant}.example.com"}, {"subdomain": ["example.org"]},
                {"header": "x-org"}, {"path": {"template": "/t/{tenant}", "strip": true}}, "claim"]"#,
        )
        .unwrap();
        let kinds: Vec<_> = all.iter().map(|c| c.build().unwrap().kind()).collect();
        assert_eq!(
            kinds,
            [
                StrategyKind::Host,
                StrategyKind::Subdomain,
                StrategyKind::Header,
                StrategyKind::Path,
                StrategyKind::Claim
            ]
        );
        assert_eq!(format!("{:?}", Strategy::Claim), "Claim");
        for k in [StrategyKind::Custom, StrategyKind::Fallback] {
            assert_eq!(k.to_string(), k.as_str());
        }
    }
}
