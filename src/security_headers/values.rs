//! Typed values of the security headers.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::ConfigError;

macro_rules! header_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vdoc:meta])* $variant:ident => $text:literal, )* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
        #[serde(rename_all = "kebab-case")]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vdoc])* #[doc = concat!("`", $text, "`")] $variant, )*
        }

        impl $name {
            /// The header value.
            pub fn as_str(self) -> &'static str {
                match self { $( Self::$variant => $text, )* }
            }
        }
    };
}

header_enum! {
    /// `Cross-Origin-Opener-Policy` (HTML Living Standard).
    pub enum CrossOriginOpenerPolicy {
        /// Isolates the browsing context from cross-origin documents.
        SameOrigin => "same-origin",
        /// Keeps references to popups it opens.
        SameOriginAllowPopups => "same-origin-allow-popups",
        /// Popups opened by the page get no opener.
        NoopenerAllowPopups => "noopener-allow-popups",
        /// No isolation.
        UnsafeNone => "unsafe-none",
    }
}

header_enum! {
    /// `Cross-Origin-Resource-Policy` (Fetch).
    pub enum CrossOriginResourcePolicy {
        /// Only the same origin may load the resource.
        SameOrigin => "same-origin",
        /// Only the same site may load the resource.
        SameSite => "same-site",
        /// Anyone may load the resource.
        CrossOrigin => "cross-origin",
    }
}

header_enum! {
    /// `Cross-Origin-Embedder-Policy` (HTML Living Standard).
    pub enum CrossOriginEmbedderPolicy {
        /// Subresources must opt in with CORP or CORS.
        RequireCorp => "require-corp",
        /// Cross-origin no-cors requests are sent without credentials.
        Credentialless => "credentialless",
        /// No requirement.
        UnsafeNone => "unsafe-none",
    }
}

header_enum! {
    /// `Referrer-Policy` (W3C Referrer Policy).
    pub enum ReferrerPolicy {
        /// Never send a referrer.
        NoReferrer => "no-referrer",
        /// Full URL except on HTTPS→HTTP.
        NoReferrerWhenDowngrade => "no-referrer-when-downgrade",
        /// Only the origin.
        Origin => "origin",
        /// Full URL same-origin, origin cross-origin.
        OriginWhenCrossOrigin => "origin-when-cross-origin",
        /// Full URL same-origin, nothing cross-origin.
        SameOrigin => "same-origin",
        /// Only the origin, not on downgrade.
        StrictOrigin => "strict-origin",
        /// The browsers' default.
        StrictOriginWhenCrossOrigin => "strict-origin-when-cross-origin",
        /// Always the full URL.
        UnsafeUrl => "unsafe-url",
    }
}

header_enum! {
    /// `X-Frame-Options` (RFC 7034); CSP `frame-ancestors` supersedes it in modern browsers.
    pub enum FrameOptions {
        /// No framing at all.
        Deny => "DENY",
        /// Framing by the same origin only.
        SameOrigin => "SAMEORIGIN",
    }
}

header_enum! {
    /// `X-Permitted-Cross-Domain-Policies` (Adobe cross-domain policy files).
    pub enum PermittedCrossDomainPolicies {
        /// No policy file is allowed.
        None => "none",
        /// Only the master policy file.
        MasterOnly => "master-only",
        /// Policy files served with the right content type.
        ByContentType => "by-content-type",
        /// Any policy file.
        All => "all",
    }
}

header_enum! {
    /// `X-DNS-Prefetch-Control`.
    pub enum DnsPrefetchControl {
        /// Disable DNS prefetching (privacy).
        Off => "off",
        /// Enable DNS prefetching (speed).
        On => "on",
    }
}

header_enum! {
    /// Whether a layer replaces a header the application already set.
    pub enum HeaderMode {
        /// Keep the application's value; add ours only when absent.
        SetIfAbsent => "set-if-absent",
        /// Always write ours.
        Overwrite => "overwrite",
    }
}

/// One year, the minimum `max-age` accepted for HSTS.
pub const ONE_YEAR_SECS: u64 = 31_536_000;

/// `Strict-Transport-Security` (RFC 6797).
///
/// # Example
///
/// ```
/// use tower_rampart::security_headers::Hsts;
///
/// assert_eq!(Hsts::default().render().unwrap(), "max-age=31536000; includeSubDomains");
/// assert_eq!(
///     Hsts::new(63_072_000).preload(true).render().unwrap(),
///     "max-age=63072000; includeSubDomains; preload"
/// );
/// assert!(Hsts::new(3600).render().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[must_use]
pub struct Hsts {
    max_age: u64,
    include_subdomains: bool,
    preload: bool,
}

impl Default for Hsts {
    fn default() -> Self {
        Self::new(ONE_YEAR_SECS)
    }
}

impl Hsts {
    /// HSTS with `max-age` in seconds (at least one year), `includeSubDomains` and no
    /// `preload`.
    pub fn new(max_age_secs: u64) -> Self {
        Self {
            max_age: max_age_secs,
            include_subdomains: true,
            preload: false,
        }
    }

    /// Whether to add `includeSubDomains`.
    ///
    /// By default, `true`.
    pub fn include_subdomains(mut self, yes: bool) -> Self {
        self.include_subdomains = yes;
        self
    }

    /// Whether to add `preload` (only after submitting the domain to hstspreload.org).
    ///
    /// By default, `false`. Requires `includeSubDomains`.
    pub fn preload(mut self, yes: bool) -> Self {
        self.preload = yes;
        self
    }

    /// The validated header value.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if `max-age` is under one year, or `preload` is set without
    /// `includeSubDomains`.
    pub fn render(&self) -> Result<String, ConfigError> {
        if self.max_age < ONE_YEAR_SECS {
            return Err(ConfigError::new(format!(
                "HSTS max-age {} is under one year: use Hsts::new(31_536_000) or more (or switch HSTS off with .hsts(None) while testing)",
                self.max_age
            )));
        }
        if self.preload && !self.include_subdomains {
            return Err(ConfigError::new(
                "HSTS preload requires includeSubDomains: call .include_subdomains(true) or drop .preload(true)",
            ));
        }
        let mut s = format!("max-age={}", self.max_age);
        if self.include_subdomains {
            s.push_str("; includeSubDomains");
        }
        if self.preload {
            s.push_str("; preload");
        }
        Ok(s)
    }
}

/// When HSTS is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum HstsWhen {
    /// On HTTPS requests: an `https` request URI, or `X-Forwarded-Proto`/`Forwarded:
    /// proto=https` from a **trusted** proxy (RFC 6797 §7.2: not over plain HTTP).
    Https,
    /// On every response: the server itself terminates TLS and every request is HTTPS.
    Always,
}

macro_rules! features {
    ($( $variant:ident => $text:literal, )*) => {
        /// A policy-controlled feature of `Permissions-Policy` (W3C Permissions Policy).
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(rename_all = "kebab-case")]
        #[non_exhaustive]
        pub enum Feature {
            $( #[doc = concat!("`", $text, "`")] $variant, )*
            /// Any other feature name (lowercase letters, digits and `-`).
            Other(String),
        }

        impl Feature {
            /// The feature name.
            pub fn name(&self) -> &str {
                match self {
                    $( Self::$variant => $text, )*
                    Self::Other(s) => s,
                }
            }
        }
    };
}

features! {
    Accelerometer => "accelerometer",
    AmbientLightSensor => "ambient-light-sensor",
    Autoplay => "autoplay",
    Bluetooth => "bluetooth",
    BrowsingTopics => "browsing-topics",
    Camera => "camera",
    ClipboardRead => "clipboard-read",
    ClipboardWrite => "clipboard-write",
    DisplayCapture => "display-capture",
    EncryptedMedia => "encrypted-media",
    Fullscreen => "fullscreen",
    Gamepad => "gamepad",
    Geolocation => "geolocation",
    Gyroscope => "gyroscope",
    Hid => "hid",
    IdleDetection => "idle-detection",
    LocalFonts => "local-fonts",
    Magnetometer => "magnetometer",
    Microphone => "microphone",
    Midi => "midi",
    Payment => "payment",
    PictureInPicture => "picture-in-picture",
    PublickeyCredentialsGet => "publickey-credentials-get",
    ScreenWakeLock => "screen-wake-lock",
    Serial => "serial",
    SyncXhr => "sync-xhr",
    Usb => "usb",
    WebShare => "web-share",
    XrSpatialTracking => "xr-spatial-tracking",
}

/// Who may use a feature.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Allowlist {
    /// Nobody: `()`.
    None,
    /// Every origin: `*`.
    All,
    /// The page's origin and, optionally, more origins: `(self "https://a.example")`.
    SelfAnd(Vec<String>),
    /// Only the listed origins: `("https://a.example")`.
    Origins(Vec<String>),
}

/// A typed `Permissions-Policy` header, rendered in feature-name order.
///
/// # Example
///
/// ```
/// use tower_rampart::security_headers::{Feature, PermissionsPolicy};
///
/// let p = PermissionsPolicy::new()
///     .deny(Feature::Camera)
///     .allow_self(Feature::Fullscreen)
///     .allow(Feature::Payment, ["https://pay.example"]);
/// assert_eq!(p.render().unwrap(), r#"camera=(), fullscreen=(self), payment=(self "https://pay.example")"#);
/// assert!(PermissionsPolicy::new().allow(Feature::Camera, ["not an origin"]).render().is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct PermissionsPolicy {
    features: BTreeMap<Feature, Allowlist>,
}

impl PermissionsPolicy {
    /// An empty policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// The recommended preset's policy: denies accelerometer, ambient-light-sensor,
    /// autoplay, bluetooth, browsing-topics, camera, display-capture, geolocation,
    /// gyroscope, hid, idle-detection, magnetometer, microphone, midi, payment, serial, usb
    /// and xr-spatial-tracking.
    pub fn recommended() -> Self {
        [
            Feature::Accelerometer,
            Feature::AmbientLightSensor,
            Feature::Autoplay,
            Feature::Bluetooth,
            Feature::BrowsingTopics,
            Feature::Camera,
            Feature::DisplayCapture,
            Feature::Geolocation,
            Feature::Gyroscope,
            Feature::Hid,
            Feature::IdleDetection,
            Feature::Magnetometer,
            Feature::Microphone,
            Feature::Midi,
            Feature::Payment,
            Feature::Serial,
            Feature::Usb,
            Feature::XrSpatialTracking,
        ]
        .into_iter()
        .fold(Self::new(), Self::deny)
    }

    /// Sets a feature's allowlist (replacing a previous one).
    #[must_use]
    pub fn set(mut self, feature: Feature, allowlist: Allowlist) -> Self {
        self.features.insert(feature, allowlist);
        self
    }

    /// `feature=()`.
    #[must_use]
    pub fn deny(self, feature: Feature) -> Self {
        self.set(feature, Allowlist::None)
    }

    /// `feature=(self)`.
    #[must_use]
    pub fn allow_self(self, feature: Feature) -> Self {
        self.set(feature, Allowlist::SelfAnd(Vec::new()))
    }

    /// `feature=*`.
    #[must_use]
    pub fn allow_all(self, feature: Feature) -> Self {
        self.set(feature, Allowlist::All)
    }

    /// `feature=(self "https://a" …)`.
    #[must_use]
    pub fn allow<I, S>(self, feature: Feature, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.set(
            feature,
            Allowlist::SelfAnd(origins.into_iter().map(Into::into).collect()),
        )
    }

    /// Removes a feature from the policy (the browser default applies).
    #[must_use]
    pub fn remove(mut self, feature: &Feature) -> Self {
        self.features.remove(feature);
        self
    }

    /// The allowlist of a feature.
    pub fn get(&self, feature: &Feature) -> Option<&Allowlist> {
        self.features.get(feature)
    }

    /// The validated header value.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an invalid feature name or origin, or an empty policy.
    pub fn render(&self) -> Result<String, ConfigError> {
        if self.features.is_empty() {
            return Err(ConfigError::new(
                "the Permissions-Policy is empty: switch it off with .permissions_policy(None) instead",
            ));
        }
        let mut out = String::new();
        let mut sorted: Vec<_> = self.features.iter().collect();
        sorted.sort_by(|a, b| a.0.name().cmp(b.0.name()));
        for (feature, allow) in sorted {
            let name = feature.name();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(ConfigError::new(format!(
                    "Permissions-Policy feature `{name}` must be lowercase letters, digits and `-`, such as `camera`"
                )));
            }
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(name);
            out.push('=');
            let (with_self, origins) = match allow {
                Allowlist::None => {
                    out.push_str("()");
                    continue;
                }
                Allowlist::All => {
                    out.push('*');
                    continue;
                }
                Allowlist::SelfAnd(o) => (true, o),
                Allowlist::Origins(o) => (false, o),
            };
            if !with_self && origins.is_empty() {
                return Err(ConfigError::new(format!(
                    "Permissions-Policy `{name}` allows an empty origin list: use .deny(…) to say nobody"
                )));
            }
            out.push('(');
            if with_self {
                out.push_str("self");
            }
            for (i, origin) in origins.iter().enumerate() {
                check_origin(name, origin)?;
                if with_self || i > 0 {
                    out.push(' ');
                }
                out.push('"');
                out.push_str(origin);
                out.push('"');
            }
            out.push(')');
        }
        Ok(out)
    }
}

fn check_origin(feature: &str, origin: &str) -> Result<(), ConfigError> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    let ok = rest.is_some_and(|host| {
        !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'*' | b'[' | b']')
            })
    });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(format!(
            "Permissions-Policy `{feature}` origin `{}` is not an origin: write `https://host[:port]` without a path",
            origin.escape_debug()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_policy_renders_every_allowlist_kind() {
        let p = PermissionsPolicy::new()
            .allow_all(Feature::Fullscreen)
            .set(
                Feature::Usb,
                Allowlist::Origins(vec![
                    "https://a.example".into(),
                    "https://b.example:8443".into(),
                ]),
            )
            .deny(Feature::Other("my-feature".into()))
            .deny(Feature::Camera)
            .remove(&Feature::Camera);
        assert_eq!(
            p.render().unwrap(),
            r#"fullscreen=*, my-feature=(), usb=("https://a.example" "https://b.example:8443")"#
        );
        assert_eq!(p.get(&Feature::Fullscreen), Some(&Allowlist::All));
        assert!(PermissionsPolicy::new().render().is_err());
        assert!(
            PermissionsPolicy::new()
                .deny(Feature::Other("Bad Name".into()))
                .render()
                .is_err()
        );
        assert!(
            PermissionsPolicy::new()
                .set(Feature::Usb, Allowlist::Origins(vec![]))
                .render()
                .is_err()
        );
        assert!(
            PermissionsPolicy::recommended()
                .render()
                .unwrap()
                .contains("geolocation=()")
        );
    }

    #[test]
    fn hsts_validates_preload_and_max_age() {
        assert!(
            Hsts::default()
                .preload(true)
                .include_subdomains(false)
                .render()
                .is_err()
        );
        assert_eq!(
            Hsts::default().include_subdomains(false).render().unwrap(),
            "max-age=31536000"
        );
        let h: Hsts = serde_json::from_str(
            r#"{"max_age": 63072000, "preload": true, "include_subdomains": true}"#,
        )
        .unwrap();
        assert_eq!(h, Hsts::new(63_072_000).preload(true));
    }

    #[test]
    fn enums_render_and_deserialize() {
        assert_eq!(FrameOptions::SameOrigin.as_str(), "SAMEORIGIN");
        let r: ReferrerPolicy =
            serde_json::from_str("\"strict-origin-when-cross-origin\"").unwrap();
        assert_eq!(r.as_str(), "strict-origin-when-cross-origin");
        let f: Feature = serde_json::from_str("\"xr-spatial-tracking\"").unwrap();
        assert_eq!(f.name(), "xr-spatial-tracking");
        let p: PermissionsPolicy =
            serde_json::from_str(r#"{"camera": "none", "fullscreen": {"self-and": []}}"#).unwrap();
        assert_eq!(p.render().unwrap(), "camera=(), fullscreen=(self)");
    }
}

header_enum! {
    /// One data type of `Clear-Site-Data` (W3C Clear Site Data), quoted as sent.
    pub enum ClearSiteDataType {
        /// The browser's HTTP cache for the origin.
        Cache => "\"cache\"",
        /// Cookies of the origin's registrable domain (HTTP authentication too).
        Cookies => "\"cookies\"",
        /// DOM storage: local and session storage, IndexedDB, service workers…
        Storage => "\"storage\"",
        /// Reloads the origin's browsing contexts.
        ExecutionContexts => "\"executionContexts\"",
        /// Every type above.
        All => "\"*\"",
    }
}

/// A `Clear-Site-Data` response header (W3C Clear Site Data), rendered once, for logout
/// responses: the browser drops the origin's cookies, storage and cache, so nothing of the
/// signed-out user stays on a shared computer.
///
/// # Example
///
/// A logout handler adds it to its response:
///
/// ```
/// use http::Response;
/// use tower_rampart::security_headers::{ClearSiteData, ClearSiteDataType};
///
/// // Built once (e.g. in a `static` or the app state), not per request.
/// let logout = ClearSiteData::new([ClearSiteDataType::Cache, ClearSiteDataType::Cookies, ClearSiteDataType::Storage])
///     .unwrap();
///
/// fn log_out(clear: &ClearSiteData) -> Response<String> {
///     let mut res = Response::new("signed out".to_owned());
///     clear.apply(res.headers_mut());
///     res
/// }
/// let res = log_out(&logout);
/// assert_eq!(res.headers()["clear-site-data"], r#""cache", "cookies", "storage""#);
/// assert_eq!(ClearSiteData::all().header_value(), r#""*""#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearSiteData(http::HeaderValue);

impl ClearSiteData {
    /// The header clearing `types` (each sent once, in the order given).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `types` is empty (a header that clears nothing).
    pub fn new(types: impl IntoIterator<Item = ClearSiteDataType>) -> Result<Self, ConfigError> {
        let mut seen: Vec<ClearSiteDataType> = Vec::new();
        for t in types {
            if !seen.contains(&t) {
                seen.push(t);
            }
        }
        if seen.is_empty() {
            return Err(ConfigError::new(
                "Clear-Site-Data needs at least one type: use e.g. \
                 ClearSiteData::new([ClearSiteDataType::Cookies]) or ClearSiteData::all()",
            ));
        }
        let text = seen
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Self(http::HeaderValue::from_str(&text).map_err(|_| {
            ConfigError::new("Clear-Site-Data value is not a valid header value")
        })?))
    }

    /// `Clear-Site-Data: "*"`: every type.
    pub fn all() -> Self {
        Self(http::HeaderValue::from_static("\"*\""))
    }

    /// The rendered header value.
    pub fn header_value(&self) -> &http::HeaderValue {
        &self.0
    }

    /// Sets the header on a response's headers (replacing any earlier one).
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        headers.insert(
            http::HeaderName::from_static("clear-site-data"),
            self.0.clone(),
        );
    }
}
