//! A serde description of the layer, for configuration files.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    CrossOriginEmbedderPolicy, CrossOriginOpenerPolicy, CrossOriginResourcePolicy,
    DnsPrefetchControl, FrameOptions, HeaderMode, Hsts, HstsWhen, PermissionsPolicy,
    PermittedCrossDomainPolicies, ReferrerPolicy, SecurityHeadersBuilder, SecurityHeadersLayer,
};
use crate::{
    client_ip::{ClientIpResolver, TrustedProxies},
    error::ConfigError,
};

/// The preset a [`SecurityHeadersConfig`] starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Preset {
    /// [`SecurityHeadersLayer::recommended`].
    #[default]
    Recommended,
    /// [`SecurityHeadersLayer::strict`].
    Strict,
}

/// A header value, or `false` to switch the header off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Setting<T> {
    /// `false` switches the header off (`true` keeps the preset's value).
    Enabled(bool),
    /// A value.
    Value(T),
}

impl<T> Setting<T> {
    fn apply(self, current: Option<T>) -> Option<T> {
        match self {
            Self::Enabled(false) => None,
            Self::Enabled(true) => current,
            Self::Value(v) => Some(v),
        }
    }
}

/// The security headers layer as a configuration file describes it; every field is
/// optional and defaults to the preset's choice.
///
/// # Example
///
/// ```
/// use tower_rampart::security_headers::SecurityHeadersConfig;
///
/// let config: SecurityHeadersConfig = serde_json::from_str(r#"{
///     "preset": "strict",
///     "frame_options": false,
///     "referrer_policy": "strict-origin-when-cross-origin",
///     "hsts": {"max_age": 63072000, "preload": true},
///     "trusted_proxies": ["10.0.0.0/8"],
///     "headers": {"x-robots-tag": "noindex"},
///     "modes": {"cache-control": "overwrite"},
///     "csp": "default-src 'self'; script-src 'nonce-{nonce}' 'strict-dynamic'",
///     "routes": {"/docs": {"csp": "default-src 'self' cdn.example.com"}}
/// }"#).unwrap();
/// let layer = config.build().unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SecurityHeadersConfig {
    /// The starting preset; by default, `recommended`.
    pub preset: Preset,
    /// `Cross-Origin-Opener-Policy`.
    pub cross_origin_opener_policy: Option<Setting<CrossOriginOpenerPolicy>>,
    /// `Cross-Origin-Resource-Policy`.
    pub cross_origin_resource_policy: Option<Setting<CrossOriginResourcePolicy>>,
    /// `Cross-Origin-Embedder-Policy`.
    pub cross_origin_embedder_policy: Option<Setting<CrossOriginEmbedderPolicy>>,
    /// `Origin-Agent-Cluster: ?1`.
    pub origin_agent_cluster: Option<bool>,
    /// `Referrer-Policy`.
    pub referrer_policy: Option<Setting<ReferrerPolicy>>,
    /// `Strict-Transport-Security`.
    pub hsts: Option<Setting<Hsts>>,
    /// When HSTS is sent (`https` or `always`).
    pub hsts_when: Option<HstsWhen>,
    /// Proxies whose `X-Forwarded-Proto`/`Forwarded` is believed for HSTS.
    pub trusted_proxies: Option<TrustedProxies>,
    /// `X-Content-Type-Options: nosniff`.
    pub content_type_options: Option<bool>,
    /// `X-DNS-Prefetch-Control`.
    pub dns_prefetch_control: Option<Setting<DnsPrefetchControl>>,
    /// `X-Download-Options: noopen`.
    pub download_options: Option<bool>,
    /// `X-Frame-Options` (`deny` or `same-origin`).
    pub frame_options: Option<Setting<FrameOptions>>,
    /// `X-Permitted-Cross-Domain-Policies`.
    pub permitted_cross_domain_policies: Option<Setting<PermittedCrossDomainPolicies>>,
    /// `X-XSS-Protection: 0`.
    pub xss_protection_disabled: Option<bool>,
    /// `Permissions-Policy`, as a map of feature to allowlist.
    pub permissions_policy: Option<Setting<PermissionsPolicy>>,
    /// Path prefixes answered with `Cache-Control: no-store`.
    pub no_store_paths: Option<Vec<String>>,
    /// `Cache-Control: no-store` on responses to credentialed requests (by default on).
    pub no_store_credentialed: Option<bool>,
    /// The session cookie's name, which makes a request credentialed.
    pub session_cookie: Option<String>,
    /// More fixed headers.
    pub headers: BTreeMap<String, String>,
    /// More headers to remove.
    pub remove_headers: Vec<String>,
    /// Headers not to remove (such as `server`).
    pub keep_headers: Vec<String>,
    /// Per-header modes (`set-if-absent` or `overwrite`).
    pub modes: BTreeMap<String, HeaderMode>,
    /// The mode of the other headers.
    pub default_mode: Option<HeaderMode>,
    /// The enforced CSP as a policy string (feature `csp`).
    #[cfg(feature = "csp")]
    pub csp: Option<Setting<crate::csp::Csp>>,
    /// A report-only CSP as a policy string (feature `csp`).
    #[cfg(feature = "csp")]
    pub csp_report_only: Option<crate::csp::Csp>,
    /// `Reporting-Endpoints` entries, name to URL (feature `csp`).
    #[cfg(feature = "csp")]
    pub reporting_endpoints: BTreeMap<String, String>,
    /// Per-route header sets, by path prefix.
    pub routes: BTreeMap<String, SecurityHeadersConfig>,
}

macro_rules! setting {
    ($builder:ident, $self:ident, $field:ident, $setter:ident) => {
        if let Some(s) = $self.$field {
            let current = $builder.current().$field;
            $builder = $builder.$setter(s.apply(current));
        }
    };
}

impl SecurityHeadersConfig {
    /// The builder this configuration describes.
    pub fn into_builder(self) -> SecurityHeadersBuilder {
        let mut b = match self.preset {
            Preset::Recommended => SecurityHeadersLayer::recommended(),
            Preset::Strict => SecurityHeadersLayer::strict(),
        };
        setting!(
            b,
            self,
            cross_origin_opener_policy,
            cross_origin_opener_policy
        );
        setting!(
            b,
            self,
            cross_origin_resource_policy,
            cross_origin_resource_policy
        );
        setting!(
            b,
            self,
            cross_origin_embedder_policy,
            cross_origin_embedder_policy
        );
        setting!(b, self, referrer_policy, referrer_policy);
        setting!(b, self, hsts, hsts);
        setting!(b, self, dns_prefetch_control, dns_prefetch_control);
        setting!(b, self, frame_options, frame_options);
        setting!(
            b,
            self,
            permitted_cross_domain_policies,
            permitted_cross_domain_policies
        );
        setting!(b, self, permissions_policy, permissions_policy);
        if let Some(v) = self.origin_agent_cluster {
            b = b.origin_agent_cluster(v);
        }
        if let Some(v) = self.hsts_when {
            b = b.hsts_when(v);
        }
        if let Some(p) = self.trusted_proxies {
            b = b.client_ip_resolver(ClientIpResolver::new(p));
        }
        if let Some(v) = self.content_type_options {
            b = b.content_type_options(v);
        }
        if let Some(v) = self.download_options {
            b = b.download_options(v);
        }
        if let Some(v) = self.xss_protection_disabled {
            b = b.xss_protection_disabled(v);
        }
        if let Some(p) = self.no_store_paths {
            b = b.no_store_paths(p);
        }
        if let Some(v) = self.no_store_credentialed {
            b = b.no_store_credentialed(v);
        }
        if let Some(name) = self.session_cookie {
            b = b.session_cookie(name);
        }
        for (name, value) in self.headers {
            b = b.header(name, value);
        }
        for name in self.remove_headers {
            b = b.remove_header(name);
        }
        for name in &self.keep_headers {
            b = b.keep_header(name);
        }
        for (name, mode) in self.modes {
            b = b.mode(name, mode);
        }
        if let Some(m) = self.default_mode {
            b = b.default_mode(m);
        }
        #[cfg(feature = "csp")]
        {
            if let Some(s) = self.csp {
                let current = b.current().csp;
                b = b.csp(s.apply(current));
            }
            if let Some(csp) = self.csp_report_only {
                b = b.csp_report_only(csp);
            }
            for (name, url) in self.reporting_endpoints {
                b = b.reporting_endpoint(name, url);
            }
        }
        for (prefix, route) in self.routes {
            b = b.route(prefix, route.into_builder());
        }
        b
    }

    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] as [`SecurityHeadersBuilder::build`] reports it.
    pub fn build(self) -> Result<SecurityHeadersLayer, ConfigError> {
        self.into_builder().build()
    }
}

/// The preset values a `true` setting keeps.
pub(super) struct Current {
    pub(super) cross_origin_opener_policy: Option<CrossOriginOpenerPolicy>,
    pub(super) cross_origin_resource_policy: Option<CrossOriginResourcePolicy>,
    pub(super) cross_origin_embedder_policy: Option<CrossOriginEmbedderPolicy>,
    pub(super) referrer_policy: Option<ReferrerPolicy>,
    pub(super) hsts: Option<Hsts>,
    pub(super) dns_prefetch_control: Option<DnsPrefetchControl>,
    pub(super) frame_options: Option<FrameOptions>,
    pub(super) permitted_cross_domain_policies: Option<PermittedCrossDomainPolicies>,
    pub(super) permissions_policy: Option<PermissionsPolicy>,
    #[cfg(feature = "csp")]
    pub(super) csp: Option<crate::csp::Csp>,
}

#[cfg(test)]
mod tests {
    use http::Request;
    use tower::{ServiceExt as _, service_fn};
    use tower_layer::Layer as _;

    use super::*;

    #[tokio::test]
    async fn a_config_file_describes_the_layer() {
        let config: SecurityHeadersConfig = serde_json::from_str(
            r#"{
                "preset": "strict",
                "cross_origin_opener_policy": "same-origin-allow-popups",
                "cross_origin_resource_policy": false,
                "cross_origin_embedder_policy": true,
                "origin_agent_cluster": false,
                "referrer_policy": "origin",
                "hsts": {"max_age": 63072000, "preload": true},
                "hsts_when": "always",
                "trusted_proxies": ["10.0.0.0/8"],
                "content_type_options": false,
                "dns_prefetch_control": "on",
                "download_options": false,
                "frame_options": false,
                "permitted_cross_domain_policies": "master-only",
                "xss_protection_disabled": false,
                "permissions_policy": {"camera": "none"},
                "no_store_paths": ["/account"],
                "headers": {"x-robots-tag": "noindex"},
                "remove_headers": ["x-runtime"],
                "keep_headers": ["server"],
                "modes": {"referrer-policy": "overwrite"},
                "default_mode": "set-if-absent",
                "routes": {"/docs": {"frame_options": "deny"}}
            }"#,
        )
        .unwrap();
        #[cfg(feature = "csp")]
        let config = SecurityHeadersConfig {
            csp: Some(Setting::Enabled(false)),
            ..config
        };
        let layer = config.build().unwrap();
        let svc = layer.layer(service_fn(|_req: Request<()>| async {
            let mut res = http::Response::new(());
            res.headers_mut().insert("server", "s".parse().unwrap());
            res.headers_mut()
                .insert("referrer-policy", "unsafe-url".parse().unwrap());
            Ok::<_, std::convert::Infallible>(res)
        }));
        let res = svc
            .clone()
            .oneshot(Request::get("/account").body(()).unwrap())
            .await
            .unwrap();
        let mut names: Vec<(String, String)> = res
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        names.sort();
        let expected: Vec<(String, String)> = [
            ("cache-control", "no-store"),
            ("cross-origin-embedder-policy", "require-corp"),
            ("cross-origin-opener-policy", "same-origin-allow-popups"),
            ("permissions-policy", "camera=()"),
            ("referrer-policy", "origin"),
            ("server", "s"),
            (
                "strict-transport-security",
                "max-age=63072000; includeSubDomains; preload",
            ),
            ("x-dns-prefetch-control", "on"),
            ("x-permitted-cross-domain-policies", "master-only"),
            ("x-robots-tag", "noindex"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(names, expected);
        let res = svc
            .oneshot(Request::get("/docs").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.headers()["x-frame-options"], "DENY");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_errors() {
        assert!(
            serde_json::from_str::<SecurityHeadersConfig>(r#"{"frame_option": "deny"}"#).is_err()
        );
        assert!(
            serde_json::from_str::<SecurityHeadersConfig>(r#"{"frame_options": "sometimes"}"#)
                .is_err()
        );
        let c: SecurityHeadersConfig =
            serde_json::from_str(r#"{"hsts": {"max_age": 10}}"#).unwrap();
        assert!(
            c.build()
                .unwrap_err()
                .to_string()
                .contains("under one year")
        );
    }
}
