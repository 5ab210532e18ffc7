//! The builder, the layer, the service and its future.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::values::{
    CrossOriginEmbedderPolicy, CrossOriginOpenerPolicy, CrossOriginResourcePolicy,
    DnsPrefetchControl, FrameOptions, HeaderMode, Hsts, HstsWhen, PermissionsPolicy,
    PermittedCrossDomainPolicies, ReferrerPolicy,
};
#[cfg(feature = "csp")]
use crate::csp::{CompiledCsp, Csp, CspNonce, CspSettings};
use crate::{client_ip::ClientIpResolver, error::ConfigError};

/// Response headers that reveal the server's software or version, removed by default
/// (lower case): `Server`, `X-Powered-By` and the others of the OWASP Secure Headers
/// Project's list of headers to remove (`ci/headers_remove.json`).
const FINGERPRINT_HEADERS: &[&str] = &[
    "server",
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
    "x-runtime",
    "x-version",
    "x-generator",
    "x-generated-by",
    "x-drupal-cache",
    "x-drupal-dynamic-cache",
    "x-powered-cms",
    "x-powered-by-plesk",
    "x-server-powered-by",
    "x-cf-powered-by",
    "x-backend-server",
    "x-beserver",
    "x-feserver",
    "x-php-version",
    "x-joomla-version",
    "x-umbraco-version",
    "x-owa-version",
    "x-cocoon-version",
    "x-cms",
    "x-framework",
    "x-turbo-charged-by",
    "x-content-encoded-by",
    "x-mod-pagespeed",
    "x-page-speed",
    "x-redirect-by",
    "x-sourcefiles",
    "x-aspnetcore-version",
    "x-varnish-backend",
    "x-varnish-server",
    "x-nextjs-cache",
    "x-nextjs-matched-path",
    "x-nextjs-page",
    "x-envoy-upstream-service-time",
    "x-envoy-original-dst-host",
    "liferay-portal",
    "powered-by",
];

/// Configures a [`SecurityHeadersLayer`]; start from
/// [`SecurityHeadersLayer::recommended`] or [`SecurityHeadersLayer::strict`].
///
/// Every header has a typed setter; pass `None` to switch it off. Nothing is checked
/// until [`build`](Self::build), which validates and renders every value once.
#[derive(Debug, Clone)]
#[must_use]
pub struct SecurityHeadersBuilder {
    coop: Option<CrossOriginOpenerPolicy>,
    corp: Option<CrossOriginResourcePolicy>,
    coep: Option<CrossOriginEmbedderPolicy>,
    origin_agent_cluster: bool,
    referrer_policy: Option<ReferrerPolicy>,
    hsts: Option<Hsts>,
    hsts_when: HstsWhen,
    nosniff: bool,
    dns_prefetch: Option<DnsPrefetchControl>,
    download_options: bool,
    frame_options: Option<FrameOptions>,
    cross_domain: Option<PermittedCrossDomainPolicies>,
    xss_protection: bool,
    permissions: Option<PermissionsPolicy>,
    no_store_paths: Vec<String>,
    no_store_credentialed: bool,
    session_cookie: Option<String>,
    extra: Vec<(String, String)>,
    remove: Vec<String>,
    modes: Vec<(String, HeaderMode)>,
    default_mode: HeaderMode,
    #[cfg(feature = "csp")]
    csp: CspSettings,
    routes: Vec<(String, SecurityHeadersBuilder)>,
    resolver: ClientIpResolver,
}

impl SecurityHeadersBuilder {
    fn recommended() -> Self {
        Self {
            coop: Some(CrossOriginOpenerPolicy::SameOrigin),
            corp: Some(CrossOriginResourcePolicy::SameOrigin),
            coep: None,
            origin_agent_cluster: true,
            referrer_policy: Some(ReferrerPolicy::NoReferrer),
            hsts: Some(Hsts::default()),
            hsts_when: HstsWhen::Https,
            nosniff: true,
            dns_prefetch: Some(DnsPrefetchControl::Off),
            download_options: true,
            frame_options: Some(FrameOptions::SameOrigin),
            cross_domain: Some(PermittedCrossDomainPolicies::None),
            xss_protection: true,
            permissions: Some(PermissionsPolicy::recommended()),
            no_store_paths: Vec::new(),
            no_store_credentialed: true,
            session_cookie: None,
            extra: Vec::new(),
            remove: FINGERPRINT_HEADERS.iter().map(|&n| n.to_owned()).collect(),
            modes: Vec::new(),
            default_mode: HeaderMode::SetIfAbsent,
            #[cfg(feature = "csp")]
            csp: CspSettings {
                enforce: Some(Csp::recommended()),
                ..CspSettings::default()
            },
            routes: Vec::new(),
            resolver: ClientIpResolver::default(),
        }
    }

    fn strict() -> Self {
        Self {
            coep: Some(CrossOriginEmbedderPolicy::RequireCorp),
            hsts: Some(Hsts::new(2 * super::values::ONE_YEAR_SECS)),
            frame_options: Some(FrameOptions::Deny),
            no_store_paths: vec!["/".to_owned()],
            #[cfg(feature = "csp")]
            csp: CspSettings {
                enforce: Some(Csp::strict()),
                ..CspSettings::default()
            },
            ..Self::recommended()
        }
    }

    pub(super) fn current(&self) -> super::config::Current {
        super::config::Current {
            cross_origin_opener_policy: self.coop,
            cross_origin_resource_policy: self.corp,
            cross_origin_embedder_policy: self.coep,
            referrer_policy: self.referrer_policy,
            hsts: self.hsts,
            dns_prefetch_control: self.dns_prefetch,
            frame_options: self.frame_options,
            permitted_cross_domain_policies: self.cross_domain,
            permissions_policy: self.permissions.clone(),
            #[cfg(feature = "csp")]
            csp: self.csp.enforce.clone(),
        }
    }

    /// `Cross-Origin-Opener-Policy`.
    ///
    /// By default, `same-origin`.
    pub fn cross_origin_opener_policy(
        mut self,
        v: impl Into<Option<CrossOriginOpenerPolicy>>,
    ) -> Self {
        self.coop = v.into();
        self
    }

    /// `Cross-Origin-Resource-Policy`.
    ///
    /// By default, `same-origin`.
    pub fn cross_origin_resource_policy(
        mut self,
        v: impl Into<Option<CrossOriginResourcePolicy>>,
    ) -> Self {
        self.corp = v.into();
        self
    }

    /// `Cross-Origin-Embedder-Policy`.
    ///
    /// By default, absent in the recommended preset and `require-corp` in the strict one.
    pub fn cross_origin_embedder_policy(
        mut self,
        v: impl Into<Option<CrossOriginEmbedderPolicy>>,
    ) -> Self {
        self.coep = v.into();
        self
    }

    /// `Origin-Agent-Cluster: ?1`.
    ///
    /// By default, on.
    pub fn origin_agent_cluster(mut self, on: bool) -> Self {
        self.origin_agent_cluster = on;
        self
    }

    /// `Referrer-Policy`.
    ///
    /// By default, `no-referrer` (helmet and OWASP).
    pub fn referrer_policy(mut self, v: impl Into<Option<ReferrerPolicy>>) -> Self {
        self.referrer_policy = v.into();
        self
    }

    /// `Strict-Transport-Security`, sent on HTTPS requests only (see
    /// [`hsts_when`](Self::hsts_when)).
    ///
    /// By default, `max-age=31536000; includeSubDomains` (strict preset: two years).
    pub fn hsts(mut self, v: impl Into<Option<Hsts>>) -> Self {
        self.hsts = v.into();
        self
    }

    /// When HSTS is sent.
    ///
    /// By default, [`HstsWhen::Https`]: when the request URI is `https`, or when a
    /// **trusted** proxy (see [`client_ip_resolver`](Self::client_ip_resolver)) says so
    /// with `X-Forwarded-Proto` or `Forwarded: proto=`. Use [`HstsWhen::Always`] when the
    /// server terminates TLS itself.
    pub fn hsts_when(mut self, when: HstsWhen) -> Self {
        self.hsts_when = when;
        self
    }

    /// The resolver deciding whether forwarding headers may be believed for HSTS.
    ///
    /// By default, [`ClientIpResolver::default`], which trusts no proxy: only the request
    /// URI's scheme counts.
    pub fn client_ip_resolver(mut self, resolver: ClientIpResolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// `X-Content-Type-Options: nosniff`.
    ///
    /// By default, on.
    pub fn content_type_options(mut self, on: bool) -> Self {
        self.nosniff = on;
        self
    }

    /// `X-DNS-Prefetch-Control`.
    ///
    /// By default, `off`.
    pub fn dns_prefetch_control(mut self, v: impl Into<Option<DnsPrefetchControl>>) -> Self {
        self.dns_prefetch = v.into();
        self
    }

    /// `X-Download-Options: noopen` (old Internet Explorer).
    ///
    /// By default, on.
    pub fn download_options(mut self, on: bool) -> Self {
        self.download_options = on;
        self
    }

    /// `X-Frame-Options`.
    ///
    /// By default, `SAMEORIGIN` (strict preset: `DENY`).
    pub fn frame_options(mut self, v: impl Into<Option<FrameOptions>>) -> Self {
        self.frame_options = v.into();
        self
    }

    /// `X-Permitted-Cross-Domain-Policies`.
    ///
    /// By default, `none`.
    pub fn permitted_cross_domain_policies(
        mut self,
        v: impl Into<Option<PermittedCrossDomainPolicies>>,
    ) -> Self {
        self.cross_domain = v.into();
        self
    }

    /// `X-XSS-Protection: 0` (the old XSS auditor caused leaks; OWASP says disable it).
    ///
    /// By default, on.
    pub fn xss_protection_disabled(mut self, on: bool) -> Self {
        self.xss_protection = on;
        self
    }

    /// `Permissions-Policy`.
    ///
    /// By default, [`PermissionsPolicy::recommended`].
    pub fn permissions_policy(mut self, v: impl Into<Option<PermissionsPolicy>>) -> Self {
        self.permissions = v.into();
        self
    }

    /// Path prefixes whose responses get `Cache-Control: no-store` (account pages, APIs
    /// returning personal data).
    ///
    /// By default, none in the recommended preset and `/` (everything) in the strict one.
    pub fn no_store_paths<I, S>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.no_store_paths = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// Whether responses to credentialed requests (an `Authorization` header, or the
    /// [`session_cookie`](Self::session_cookie)) get `Cache-Control: no-store` when the
    /// handler set no `Cache-Control`, so a shared cache or the browser's back button never
    /// keeps a signed-in user's page (RFC 9111 section 5.2.2.5). By default, `true`.
    pub fn no_store_credentialed(mut self, on: bool) -> Self {
        self.no_store_credentialed = on;
        self
    }

    /// The name of the session cookie that makes a request credentialed (see
    /// [`no_store_credentialed`](Self::no_store_credentialed)). By default, none: only
    /// `Authorization` does.
    pub fn session_cookie(mut self, name: impl Into<String>) -> Self {
        self.session_cookie = Some(name.into());
        self
    }

    /// Adds any other header with a fixed value.
    ///
    /// By default, none.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.push((name.into(), value.into()));
        self
    }

    /// Removes a response header (for example one revealing the server software).
    ///
    /// By default, `Server`, `X-Powered-By` and the other fingerprinting headers of the
    /// OWASP Secure Headers Project (`X-AspNet-Version`, `X-Runtime`, `X-Generator`…)
    /// are removed.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        self.remove.push(name.into());
        self
    }

    /// Stops removing a header (for example `server`).
    pub fn keep_header(mut self, name: &str) -> Self {
        self.remove.retain(|n| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Whether one header (by name, such as `"x-frame-options"` or
    /// `"content-security-policy"`) replaces the application's value.
    ///
    /// By default, the [`default_mode`](Self::default_mode).
    pub fn mode(mut self, header: impl Into<String>, mode: HeaderMode) -> Self {
        self.modes.push((header.into(), mode));
        self
    }

    /// Whether headers replace values the application already set.
    ///
    /// By default, [`HeaderMode::SetIfAbsent`]: a handler's own header wins.
    pub fn default_mode(mut self, mode: HeaderMode) -> Self {
        self.default_mode = mode;
        self
    }

    /// The enforced `Content-Security-Policy` (feature `csp`).
    ///
    /// By default, [`Csp::recommended`] (strict preset: [`Csp::strict`], nonce-based).
    #[cfg(feature = "csp")]
    pub fn csp(mut self, csp: impl Into<Option<Csp>>) -> Self {
        self.csp.enforce = csp.into();
        self
    }

    /// A `Content-Security-Policy-Report-Only` policy, sent alongside the enforced one
    /// (feature `csp`).
    ///
    /// By default, none.
    #[cfg(feature = "csp")]
    pub fn csp_report_only(mut self, csp: impl Into<Option<Csp>>) -> Self {
        self.csp.report_only = csp.into();
        self
    }

    /// Declares an endpoint of the `Reporting-Endpoints` header, the target of a policy's
    /// `report-to` (feature `csp`).
    ///
    /// By default, none.
    #[cfg(feature = "csp")]
    pub fn reporting_endpoint(mut self, name: impl Into<String>, url: impl Into<String>) -> Self {
        self.csp.endpoints.push((name.into(), url.into()));
        self
    }

    /// Uses another header set for paths under `prefix` (a whole segment: `/docs` matches
    /// `/docs` and `/docs/x`, not `/docsx`); the longest matching prefix wins.
    ///
    /// `set` is a complete configuration (start from a preset); its own routes and
    /// resolver are not used. By default, there are no overrides.
    pub fn route(mut self, prefix: impl Into<String>, set: SecurityHeadersBuilder) -> Self {
        self.routes.push((prefix.into(), set));
        self
    }

    /// Validates and renders every header once.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an invalid HSTS, Permissions-Policy, CSP, reporting endpoint,
    /// custom header, header name or route prefix.
    pub fn build(self) -> Result<SecurityHeadersLayer, ConfigError> {
        let mut routes = Vec::with_capacity(self.routes.len());
        for (prefix, set) in &self.routes {
            if !prefix.starts_with('/') {
                return Err(ConfigError::new(format!(
                    "route prefix `{prefix}` must start with `/`"
                )));
            }
            if !set.routes.is_empty() {
                return Err(ConfigError::new(format!(
                    "the header set for `{prefix}` has routes of its own: declare every route on the top-level builder"
                )));
            }
            if routes
                .iter()
                .any(|(p, _): &(String, HeaderSet)| p == prefix)
            {
                return Err(ConfigError::new(format!(
                    "route prefix `{prefix}` is declared twice"
                )));
            }
            let compiled = set
                .compile()
                .map_err(|e| ConfigError::new(format!("route `{prefix}`: {e}")))?;
            routes.push((prefix.trim_end_matches('/').to_owned(), compiled));
        }
        routes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let default = self.compile()?;
        Ok(SecurityHeadersLayer {
            shared: Arc::new(Shared {
                default,
                routes,
                resolver: self.resolver,
            }),
        })
    }

    fn mode_of(&self, name: &HeaderName) -> HeaderMode {
        self.modes
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_str()))
            .map_or(self.default_mode, |(_, m)| *m)
    }

    fn compile(&self) -> Result<HeaderSet, ConfigError> {
        for (name, _) in &self.modes {
            parse_name(name)?;
        }
        let mut fixed = Vec::new();
        let mut push = |name: HeaderName, value: HeaderValue| {
            let overwrite = self.mode_of(&name) == HeaderMode::Overwrite;
            fixed.push((name, value, overwrite));
        };
        let st = HeaderValue::from_static;
        if let Some(v) = self.coop {
            push(
                HeaderName::from_static("cross-origin-opener-policy"),
                st(v.as_str()),
            );
        }
        if let Some(v) = self.corp {
            push(
                HeaderName::from_static("cross-origin-resource-policy"),
                st(v.as_str()),
            );
        }
        if let Some(v) = self.coep {
            push(
                HeaderName::from_static("cross-origin-embedder-policy"),
                st(v.as_str()),
            );
        }
        if self.origin_agent_cluster {
            push(HeaderName::from_static("origin-agent-cluster"), st("?1"));
        }
        if let Some(v) = self.referrer_policy {
            push(header::REFERRER_POLICY, st(v.as_str()));
        }
        if self.nosniff {
            push(header::X_CONTENT_TYPE_OPTIONS, st("nosniff"));
        }
        if let Some(v) = self.dns_prefetch {
            push(header::X_DNS_PREFETCH_CONTROL, st(v.as_str()));
        }
        if self.download_options {
            push(HeaderName::from_static("x-download-options"), st("noopen"));
        }
        if let Some(v) = self.frame_options {
            push(header::X_FRAME_OPTIONS, st(v.as_str()));
        }
        if let Some(v) = self.cross_domain {
            push(
                HeaderName::from_static("x-permitted-cross-domain-policies"),
                st(v.as_str()),
            );
        }
        if self.xss_protection {
            push(header::X_XSS_PROTECTION, st("0"));
        }
        if let Some(p) = &self.permissions {
            let v = p.render()?;
            push(HeaderName::from_static("permissions-policy"), value(&v)?);
        }
        for (name, v) in &self.extra {
            let name = parse_name(name)?;
            if fixed.iter().any(|(n, _, _)| *n == name) {
                return Err(ConfigError::new(format!(
                    "header `{name}` is already set by a typed setter: change it there"
                )));
            }
            let overwrite = self.mode_of(&name) == HeaderMode::Overwrite;
            fixed.push((name, value(v)?, overwrite));
        }
        let hsts = match &self.hsts {
            Some(h) => Some((
                value(&h.render()?)?,
                self.mode_of(&header::STRICT_TRANSPORT_SECURITY) == HeaderMode::Overwrite,
            )),
            None => None,
        };
        let remove = self
            .remove
            .iter()
            .map(|n| parse_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(name) = &self.session_cookie
            && (name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)))
        {
            return Err(ConfigError::new(format!(
                "session cookie name {name:?} is not a valid cookie name (RFC 6265 token): \
                 use e.g. .session_cookie(\"sid\")"
            )));
        }
        for p in &self.no_store_paths {
            if !p.starts_with('/') {
                return Err(ConfigError::new(format!(
                    "no-store path `{p}` must start with `/`"
                )));
            }
        }
        Ok(HeaderSet {
            fixed: fixed.into_boxed_slice(),
            hsts,
            hsts_always: self.hsts_when == HstsWhen::Always,
            remove: remove.into_boxed_slice(),
            no_store: self
                .no_store_paths
                .iter()
                .map(|p| p.trim_end_matches('/').to_owned())
                .collect(),
            no_store_overwrite: self.mode_of(&header::CACHE_CONTROL) == HeaderMode::Overwrite,
            no_store_credentialed: self.no_store_credentialed,
            session_cookie: self.session_cookie.clone().map(String::into_boxed_str),
            #[cfg(feature = "csp")]
            csp: if self.csp.is_empty() {
                None
            } else {
                Some(self.csp.compile()?)
            },
            #[cfg(feature = "csp")]
            csp_overwrite: self.mode_of(&header::CONTENT_SECURITY_POLICY) == HeaderMode::Overwrite,
        })
    }
}

fn parse_name(name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        ConfigError::new(format!(
            "`{}` is not a valid header name: use letters, digits and `-`",
            name.escape_debug()
        ))
    })
}

fn value(v: &str) -> Result<HeaderValue, ConfigError> {
    HeaderValue::from_str(v).map_err(|_| {
        ConfigError::new(format!(
            "`{}` is not a valid header value: remove CR, LF and other control characters",
            v.escape_debug()
        ))
    })
}

/// One compiled header set (the default one or a route's).
#[derive(Debug)]
struct HeaderSet {
    fixed: Box<[(HeaderName, HeaderValue, bool)]>,
    hsts: Option<(HeaderValue, bool)>,
    hsts_always: bool,
    remove: Box<[HeaderName]>,
    no_store: Box<[String]>,
    no_store_overwrite: bool,
    no_store_credentialed: bool,
    session_cookie: Option<Box<str>>,
    #[cfg(feature = "csp")]
    csp: Option<CompiledCsp>,
    #[cfg(feature = "csp")]
    csp_overwrite: bool,
}

/// Whether `path` is `prefix` or below it (prefix has no trailing `/`).
fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[derive(Debug)]
struct Shared {
    default: HeaderSet,
    routes: Vec<(String, HeaderSet)>,
    resolver: ClientIpResolver,
}

impl Shared {
    /// The route index for a path: 0 is the default set, `i + 1` is `routes[i]`.
    fn route_of(&self, path: &str) -> usize {
        self.routes
            .iter()
            .position(|(p, _)| under(path, p))
            .map_or(0, |i| i + 1)
    }

    fn set(&self, idx: usize) -> &HeaderSet {
        match idx {
            0 => &self.default,
            i => &self.routes[i - 1].1,
        }
    }
}

/// Adds security headers to every response: helmet- and OWASP-level presets, HSTS only
/// over HTTPS (trusting forwarding headers only from trusted proxies), typed
/// `Permissions-Policy`, removal of `Server`/`X-Powered-By`, per-route overrides, and with
/// the `csp` feature a Content-Security-Policy with a fresh nonce per response.
///
/// # Example
///
/// ```
/// use http::{Request, Response};
/// use tower::{ServiceExt, service_fn};
/// use tower_layer::Layer;
/// use tower_rampart::security_headers::{FrameOptions, SecurityHeadersLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = SecurityHeadersLayer::recommended()
///     .frame_options(FrameOptions::Deny)
///     .referrer_policy(None)
///     .build()
///     .unwrap();
/// let svc = layer.layer(service_fn(|_req: Request<()>| async {
///     let mut res = Response::new(());
///     res.headers_mut().insert("server", "nginx/1.0".parse().unwrap());
///     Ok::<_, std::convert::Infallible>(res)
/// }));
/// let res = svc.oneshot(Request::new(())).await.unwrap();
/// assert_eq!(res.headers()["x-frame-options"], "DENY");
/// assert_eq!(res.headers()["x-content-type-options"], "nosniff");
/// assert!(res.headers().get("referrer-policy").is_none());
/// assert!(res.headers().get("server").is_none());
/// // No HSTS over plain HTTP.
/// assert!(res.headers().get("strict-transport-security").is_none());
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct SecurityHeadersLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for SecurityHeadersLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityHeadersLayer")
            .field("headers", &self.shared.default.fixed.len())
            .field("routes", &self.shared.routes.len())
            .finish_non_exhaustive()
    }
}

impl SecurityHeadersLayer {
    /// The recommended preset, at helmet 8 + OWASP Secure Headers level:
    ///
    /// | header | value |
    /// |---|---|
    /// | `Cross-Origin-Opener-Policy` | `same-origin` |
    /// | `Cross-Origin-Resource-Policy` | `same-origin` |
    /// | `Origin-Agent-Cluster` | `?1` |
    /// | `Referrer-Policy` | `no-referrer` |
    /// | `Strict-Transport-Security` (HTTPS only) | `max-age=31536000; includeSubDomains` |
    /// | `X-Content-Type-Options` | `nosniff` |
    /// | `X-DNS-Prefetch-Control` | `off` |
    /// | `X-Download-Options` | `noopen` |
    /// | `X-Frame-Options` | `SAMEORIGIN` |
    /// | `X-Permitted-Cross-Domain-Policies` | `none` |
    /// | `X-XSS-Protection` | `0` |
    /// | `Permissions-Policy` | [`PermissionsPolicy::recommended`] |
    /// | `Content-Security-Policy` (feature `csp`) | [`Csp::recommended`](crate::csp::Csp::recommended) |
    ///
    /// `Server`, `X-Powered-By` and the OWASP list of fingerprinting headers
    /// (`X-AspNet-Version`, `X-Runtime`, `X-Generator`…) are removed. Headers the
    /// application set are kept.
    pub fn recommended() -> SecurityHeadersBuilder {
        SecurityHeadersBuilder::recommended()
    }

    /// The strict preset: the recommended one plus `Cross-Origin-Embedder-Policy:
    /// require-corp`, `Cache-Control: no-store` (on every path unless narrowed with
    /// [`no_store_paths`](SecurityHeadersBuilder::no_store_paths)), `X-Frame-Options:
    /// DENY`, two-year HSTS and, with the `csp` feature, the nonce-based
    /// [`Csp::strict`](crate::csp::Csp::strict) (which has `frame-ancestors 'none'`).
    pub fn strict() -> SecurityHeadersBuilder {
        SecurityHeadersBuilder::strict()
    }
}

impl<S> Layer<S> for SecurityHeadersLayer {
    type Service = SecurityHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SecurityHeaders {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`SecurityHeadersLayer`].
#[derive(Clone)]
pub struct SecurityHeaders<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for SecurityHeaders<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityHeaders")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// What the response needs, decided from the request.
#[derive(Debug)]
struct Pending {
    shared: Arc<Shared>,
    route: usize,
    https: bool,
    no_store: bool,
    #[cfg(feature = "csp")]
    nonce: Option<CspNonce>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SecurityHeaders<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let path = req.uri().path();
        let route = if shared.routes.is_empty() {
            0
        } else {
            shared.route_of(path)
        };
        let set = shared.set(route);
        let no_store = set.no_store.iter().any(|p| under(path, p))
            || (set.no_store_credentialed && credentialed(&req, set.session_cookie.as_deref()));
        let https = set.hsts.is_some()
            && (set.hsts_always || shared.resolver.scheme(&req) == Some("https"));
        #[cfg(feature = "csp")]
        let nonce = match &set.csp {
            Some(csp) if csp.needs_nonce() => {
                let n = CspNonce::generate();
                req.extensions_mut().insert(n);
                Some(n)
            }
            _ => None,
        };
        #[cfg(not(feature = "csp"))]
        let _ = &mut req;
        let pending = Pending {
            shared: shared.clone(),
            route,
            https,
            no_store,
            #[cfg(feature = "csp")]
            nonce,
        };
        ResponseFuture {
            inner: self.inner.call(req),
            pending: Some(pending),
        }
    }
}

/// Whether the request carries credentials: `Authorization`, or a cookie named `session`.
fn credentialed<B>(req: &Request<B>, session: Option<&str>) -> bool {
    if req.headers().contains_key(header::AUTHORIZATION) {
        return true;
    }
    let Some(session) = session else {
        return false;
    };
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .any(|pair| {
            let name = pair.split(|&b| b == b'=').next().unwrap_or_default();
            name.trim_ascii() == session.as_bytes()
        })
}

impl Pending {
    fn apply(&self, headers: &mut HeaderMap) {
        let set = self.shared.set(self.route);
        headers.reserve(set.fixed.len() + 4);
        for name in &set.remove {
            headers.remove(name);
        }
        for (name, value, overwrite) in &set.fixed {
            if *overwrite || !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        if self.https
            && let Some((value, overwrite)) = &set.hsts
            && (*overwrite || !headers.contains_key(header::STRICT_TRANSPORT_SECURITY))
        {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, value.clone());
        }
        if self.no_store && (set.no_store_overwrite || !headers.contains_key(header::CACHE_CONTROL))
        {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        #[cfg(feature = "csp")]
        if let Some(csp) = &set.csp {
            csp.apply(headers, self.nonce.as_ref(), set.csp_overwrite);
        }
    }
}

pin_project! {
    /// The response future of [`SecurityHeaders`]: adds the headers when the response is
    /// ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some(p) = this.pending.take() {
            p.apply(res.headers_mut());
        }
        Poll::Ready(Ok(res))
    }
}
