//! The typed policy: directives, validation, rendering and parsing.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Deserializer};

use super::source::{Source, check_no_separators};
use crate::error::ConfigError;

/// A CSP directive. The declaration order is the rendering order, so a policy always
/// renders the same way whatever order it was built in.
///
/// # Example
///
/// ```
/// use tower_rampart::csp::Directive;
///
/// assert_eq!(Directive::ScriptSrc.name(), "script-src");
/// assert_eq!(Directive::from_name("SCRIPT-SRC"), Some(Directive::ScriptSrc));
/// assert!(Directive::DefaultSrc < Directive::ScriptSrc);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Directive {
    /// `default-src`: the fallback for every fetch directive.
    DefaultSrc,
    /// `base-uri`.
    BaseUri,
    /// `child-src`.
    ChildSrc,
    /// `connect-src`.
    ConnectSrc,
    /// `font-src`.
    FontSrc,
    /// `form-action`.
    FormAction,
    /// `frame-ancestors` (replaces `X-Frame-Options`).
    FrameAncestors,
    /// `frame-src`.
    FrameSrc,
    /// `img-src`.
    ImgSrc,
    /// `manifest-src`.
    ManifestSrc,
    /// `media-src`.
    MediaSrc,
    /// `object-src`.
    ObjectSrc,
    /// `script-src`.
    ScriptSrc,
    /// `script-src-attr`.
    ScriptSrcAttr,
    /// `script-src-elem`.
    ScriptSrcElem,
    /// `style-src`.
    StyleSrc,
    /// `style-src-attr`.
    StyleSrcAttr,
    /// `style-src-elem`.
    StyleSrcElem,
    /// `worker-src`.
    WorkerSrc,
    /// `sandbox` (ignored in report-only policies).
    Sandbox,
    /// `upgrade-insecure-requests` (ignored in report-only policies).
    UpgradeInsecureRequests,
    /// `block-all-mixed-content` (deprecated; kept so existing policies parse).
    BlockAllMixedContent,
    /// `require-trusted-types-for 'script'` (Trusted Types).
    RequireTrustedTypesFor,
    /// `trusted-types` policy names (Trusted Types).
    TrustedTypes,
    /// `report-uri` (deprecated but still the most supported reporting directive).
    ReportUri,
    /// `report-to`: the name of an endpoint in `Reporting-Endpoints`.
    ReportTo,
}

const ALL: [Directive; 26] = [
    Directive::DefaultSrc,
    Directive::BaseUri,
    Directive::ChildSrc,
    Directive::ConnectSrc,
    Directive::FontSrc,
    Directive::FormAction,
    Directive::FrameAncestors,
    Directive::FrameSrc,
    Directive::ImgSrc,
    Directive::ManifestSrc,
    Directive::MediaSrc,
    Directive::ObjectSrc,
    Directive::ScriptSrc,
    Directive::ScriptSrcAttr,
    Directive::ScriptSrcElem,
    Directive::StyleSrc,
    Directive::StyleSrcAttr,
    Directive::StyleSrcElem,
    Directive::WorkerSrc,
    Directive::Sandbox,
    Directive::UpgradeInsecureRequests,
    Directive::BlockAllMixedContent,
    Directive::RequireTrustedTypesFor,
    Directive::TrustedTypes,
    Directive::ReportUri,
    Directive::ReportTo,
];

/// What a directive's value looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sources,
    Tokens,
    Flag,
}

impl Directive {
    /// Every directive, in rendering order.
    pub fn all() -> &'static [Directive] {
        &ALL
    }

    /// The directive name as written in the header.
    pub fn name(self) -> &'static str {
        match self {
            Self::DefaultSrc => "default-src",
            Self::BaseUri => "base-uri",
            Self::ChildSrc => "child-src",
            Self::ConnectSrc => "connect-src",
            Self::FontSrc => "font-src",
            Self::FormAction => "form-action",
            Self::FrameAncestors => "frame-ancestors",
            Self::FrameSrc => "frame-src",
            Self::ImgSrc => "img-src",
            Self::ManifestSrc => "manifest-src",
            Self::MediaSrc => "media-src",
            Self::ObjectSrc => "object-src",
            Self::ScriptSrc => "script-src",
            Self::ScriptSrcAttr => "script-src-attr",
            Self::ScriptSrcElem => "script-src-elem",
            Self::StyleSrc => "style-src",
            Self::StyleSrcAttr => "style-src-attr",
            Self::StyleSrcElem => "style-src-elem",
            Self::WorkerSrc => "worker-src",
            Self::Sandbox => "sandbox",
            Self::UpgradeInsecureRequests => "upgrade-insecure-requests",
            Self::BlockAllMixedContent => "block-all-mixed-content",
            Self::RequireTrustedTypesFor => "require-trusted-types-for",
            Self::TrustedTypes => "trusted-types",
            Self::ReportUri => "report-uri",
            Self::ReportTo => "report-to",
        }
    }

    /// The directive of a (case-insensitive) name.
    pub fn from_name(name: &str) -> Option<Self> {
        ALL.iter()
            .copied()
            .find(|d| d.name().eq_ignore_ascii_case(name))
    }

    fn kind(self) -> Kind {
        match self {
            Self::Sandbox
            | Self::RequireTrustedTypesFor
            | Self::TrustedTypes
            | Self::ReportUri
            | Self::ReportTo => Kind::Tokens,
            Self::UpgradeInsecureRequests | Self::BlockAllMixedContent => Kind::Flag,
            _ => Kind::Sources,
        }
    }

    /// Directives whose elements may be trusted by nonce (`default-src` as fallback).
    fn allows_nonce(self) -> bool {
        matches!(
            self,
            Self::DefaultSrc
                | Self::ScriptSrc
                | Self::ScriptSrcElem
                | Self::StyleSrc
                | Self::StyleSrcElem
        )
    }

    /// Directives where hashes are meaningful (attributes too, with `'unsafe-hashes'`).
    fn allows_hash(self) -> bool {
        self.allows_nonce() || matches!(self, Self::ScriptSrcAttr | Self::StyleSrcAttr)
    }

    fn is_script(self) -> bool {
        matches!(
            self,
            Self::DefaultSrc | Self::ScriptSrc | Self::ScriptSrcElem | Self::ScriptSrcAttr
        )
    }
}

impl fmt::Display for Directive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The value of one directive.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Sources(Vec<Source>),
    Tokens(Vec<String>),
    Flag,
}

/// The sandbox flags browsers know (HTML Living Standard, "sandboxing flag set").
const SANDBOX_TOKENS: [&str; 14] = [
    "allow-downloads",
    "allow-forms",
    "allow-modals",
    "allow-orientation-lock",
    "allow-pointer-lock",
    "allow-popups",
    "allow-popups-to-escape-sandbox",
    "allow-presentation",
    "allow-same-origin",
    "allow-scripts",
    "allow-storage-access-by-user-activation",
    "allow-top-navigation",
    "allow-top-navigation-by-user-activation",
    "allow-top-navigation-to-custom-protocols",
];

/// A typed Content-Security-Policy (W3C CSP Level 3).
///
/// Setters add to a directive (duplicates are dropped, the first occurrence kept);
/// rendering follows [`Directive`]'s order. Nothing is checked until
/// [`validate`](Self::validate) — called for you when a layer is built — so a builder
/// chain never panics.
///
/// # Example
///
/// ```
/// use tower_rampart::csp::{Csp, Source};
///
/// let csp = Csp::new()
///     .script_src([Source::Nonce, Source::StrictDynamic])
///     .default_src([Source::SelfOrigin])
///     .object_src([Source::None])
///     .default_src([Source::SelfOrigin]); // duplicate: ignored
/// csp.validate().unwrap();
/// assert_eq!(
///     csp.to_string(),
///     "default-src 'self'; object-src 'none'; script-src 'nonce-{nonce}' 'strict-dynamic'"
/// );
/// assert_eq!(Csp::parse(&csp.to_string()).unwrap(), csp);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Csp {
    directives: BTreeMap<Directive, Value>,
    allow_missing_default_src: bool,
}

macro_rules! source_setters {
    ($($(#[$doc:meta])* $fn:ident => $dir:ident;)*) => {
        $(
            $(#[$doc])*
            ///
            /// By default, absent. Adds the sources, dropping duplicates.
            pub fn $fn(self, sources: impl IntoIterator<Item = Source>) -> Self {
                self.sources(Directive::$dir, sources)
            }
        )*
    };
}

impl Csp {
    /// An empty policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// A helmet-like starting point without nonces: `default-src 'self'`, `base-uri
    /// 'self'`, `font-src 'self' https: data:`, `form-action 'self'`, `frame-ancestors
    /// 'self'`, `img-src 'self' data:`, `object-src 'none'`, `script-src 'self'`,
    /// `script-src-attr 'none'`, `style-src 'self' https: 'unsafe-inline'`,
    /// `upgrade-insecure-requests` (see [`strict`](Self::strict) about plain HTTP).
    pub fn recommended() -> Self {
        Self::new()
            .default_src([Source::SelfOrigin])
            .base_uri([Source::SelfOrigin])
            .font_src([
                Source::SelfOrigin,
                Source::scheme("https"),
                Source::scheme("data"),
            ])
            .form_action([Source::SelfOrigin])
            .frame_ancestors([Source::SelfOrigin])
            .img_src([Source::SelfOrigin, Source::scheme("data")])
            .object_src([Source::None])
            .script_src([Source::SelfOrigin])
            .script_src_attr([Source::None])
            .style_src([
                Source::SelfOrigin,
                Source::scheme("https"),
                Source::UnsafeInline,
            ])
            .upgrade_insecure_requests()
    }

    /// A strict, nonce-based policy (the shape Google's CSP evaluator recommends):
    /// `default-src 'self'`, `base-uri 'none'`, `form-action 'self'`, `frame-ancestors
    /// 'none'`, `object-src 'none'`, `script-src 'nonce-…' 'strict-dynamic'`, `style-src
    /// 'self' 'nonce-…'`, `upgrade-insecure-requests`.
    ///
    /// Served over plain HTTP from a host other than `localhost`/`127.0.0.1`,
    /// `upgrade-insecure-requests` makes browsers rewrite the page's own form posts and
    /// fetches to `https://`, which then fail: remove it with
    /// `.remove(Directive::UpgradeInsecureRequests)` for deployments without HTTPS.
    pub fn strict() -> Self {
        Self::new()
            .default_src([Source::SelfOrigin])
            .base_uri([Source::None])
            .form_action([Source::SelfOrigin])
            .frame_ancestors([Source::None])
            .object_src([Source::None])
            .script_src([Source::Nonce, Source::StrictDynamic])
            .style_src([Source::SelfOrigin, Source::Nonce])
            .upgrade_insecure_requests()
    }

    /// Adds sources to any source-list directive.
    ///
    /// By default, no directive is present. Adding to a non-source-list directive (such as
    /// `sandbox`) is reported by [`validate`](Self::validate).
    pub fn sources(
        mut self,
        directive: Directive,
        sources: impl IntoIterator<Item = Source>,
    ) -> Self {
        let entry = self.directives.entry(directive).or_insert_with(|| {
            if directive.kind() == Kind::Sources {
                Value::Sources(Vec::new())
            } else {
                Value::Tokens(Vec::new())
            }
        });
        match entry {
            Value::Sources(list) => {
                for s in sources {
                    if !list.contains(&s) {
                        list.push(s);
                    }
                }
            }
            // Remembered as an invalid token so `validate` reports it.
            Value::Tokens(tokens) => {
                tokens.extend(sources.into_iter().map(|s| format!("<source {s}>")));
            }
            Value::Flag => {
                *entry = Value::Tokens(
                    sources
                        .into_iter()
                        .map(|s| format!("<source {s}>"))
                        .collect(),
                );
            }
        }
        self
    }

    source_setters! {
        /// `default-src`.
        default_src => DefaultSrc;
        /// `base-uri`.
        base_uri => BaseUri;
        /// `child-src`.
        child_src => ChildSrc;
        /// `connect-src`.
        connect_src => ConnectSrc;
        /// `font-src`.
        font_src => FontSrc;
        /// `form-action`.
        form_action => FormAction;
        /// `frame-ancestors`: who may embed the page (`'none'` replaces `X-Frame-Options: DENY`).
        frame_ancestors => FrameAncestors;
        /// `frame-src`.
        frame_src => FrameSrc;
        /// `img-src`.
        img_src => ImgSrc;
        /// `manifest-src`.
        manifest_src => ManifestSrc;
        /// `media-src`.
        media_src => MediaSrc;
        /// `object-src` (set it to `'none'`).
        object_src => ObjectSrc;
        /// `script-src`.
        script_src => ScriptSrc;
        /// `script-src-attr`.
        script_src_attr => ScriptSrcAttr;
        /// `script-src-elem`.
        script_src_elem => ScriptSrcElem;
        /// `style-src`.
        style_src => StyleSrc;
        /// `style-src-attr`.
        style_src_attr => StyleSrcAttr;
        /// `style-src-elem`.
        style_src_elem => StyleSrcElem;
        /// `worker-src`.
        worker_src => WorkerSrc;
    }

    fn tokens(mut self, directive: Directive, tokens: impl IntoIterator<Item = String>) -> Self {
        let entry = self
            .directives
            .entry(directive)
            .or_insert_with(|| Value::Tokens(Vec::new()));
        if let Value::Tokens(list) = entry {
            for t in tokens {
                if !list.contains(&t) {
                    list.push(t);
                }
            }
        }
        self
    }

    /// `sandbox` with the given `allow-*` flags (none: the strictest sandbox).
    ///
    /// By default, absent. Browsers ignore `sandbox` in report-only policies.
    pub fn sandbox<I, S>(self, flags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tokens(Directive::Sandbox, flags.into_iter().map(Into::into))
    }

    /// `upgrade-insecure-requests`.
    ///
    /// By default, absent. Browsers ignore it in report-only policies.
    pub fn upgrade_insecure_requests(mut self) -> Self {
        self.directives
            .insert(Directive::UpgradeInsecureRequests, Value::Flag);
        self
    }

    /// `require-trusted-types-for 'script'`.
    ///
    /// By default, absent.
    pub fn require_trusted_types_for_script(self) -> Self {
        self.tokens(Directive::RequireTrustedTypesFor, ["'script'".to_owned()])
    }

    /// `trusted-types` with policy names, `*`, `'allow-duplicates'` or `'none'`.
    ///
    /// By default, absent.
    pub fn trusted_types<I, S>(self, policies: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tokens(
            Directive::TrustedTypes,
            policies.into_iter().map(Into::into),
        )
    }

    /// `report-uri` (a URL receiving `application/csp-report` bodies, such as the
    /// [`ReportReceiver`](super::ReportReceiver)'s route).
    ///
    /// By default, absent.
    pub fn report_uri(self, uri: impl Into<String>) -> Self {
        self.tokens(Directive::ReportUri, [uri.into()])
    }

    /// `report-to`: the name of an endpoint declared in the `Reporting-Endpoints` header
    /// (the layers check that it is declared).
    ///
    /// By default, absent.
    pub fn report_to(mut self, endpoint: impl Into<String>) -> Self {
        self.directives
            .insert(Directive::ReportTo, Value::Tokens(vec![endpoint.into()]));
        self
    }

    /// Removes a directive.
    pub fn remove(mut self, directive: Directive) -> Self {
        self.directives.remove(&directive);
        self
    }

    /// Accepts a policy without `default-src`.
    ///
    /// By default, a policy without `default-src` is rejected: every fetch directive not
    /// listed would allow everything.
    pub fn allow_missing_default_src(mut self) -> Self {
        self.allow_missing_default_src = true;
        self
    }

    /// Whether the policy has the directive.
    pub fn contains(&self, directive: Directive) -> bool {
        self.directives.contains_key(&directive)
    }

    /// The sources of a source-list directive.
    pub fn sources_of(&self, directive: Directive) -> Option<&[Source]> {
        match self.directives.get(&directive)? {
            Value::Sources(s) => Some(s),
            _ => None,
        }
    }

    /// The tokens of `sandbox`, `trusted-types`, `report-uri`, … .
    pub fn tokens_of(&self, directive: Directive) -> Option<&[String]> {
        match self.directives.get(&directive)? {
            Value::Tokens(t) => Some(t),
            _ => None,
        }
    }

    /// Whether any directive uses the per-request nonce.
    pub fn uses_nonce(&self) -> bool {
        self.directives
            .values()
            .any(|v| matches!(v, Value::Sources(s) if s.contains(&Source::Nonce)))
    }

    /// The `report-to` endpoint name, if any.
    pub fn report_to_endpoint(&self) -> Option<&str> {
        self.tokens_of(Directive::ReportTo)
            .and_then(|t| t.first())
            .map(String::as_str)
    }

    /// Directives a browser ignores when this policy is sent as
    /// `Content-Security-Policy-Report-Only` (`sandbox`, `upgrade-insecure-requests`).
    pub fn ignored_in_report_only(&self) -> Vec<Directive> {
        [Directive::Sandbox, Directive::UpgradeInsecureRequests]
            .into_iter()
            .filter(|d| self.contains(*d))
            .collect()
    }

    /// Checks the whole policy.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for the first problem found: CR, LF, `;`, `,` or whitespace in a
    /// value; invalid host or scheme syntax; an unquoted keyword; a nonce or hash in a
    /// directive that cannot use it; `'strict-dynamic'` without a nonce or hash; `'none'`
    /// with other sources; an empty source list; an unknown sandbox flag or Trusted Types
    /// token; a missing `default-src` (unless
    /// [`allow_missing_default_src`](Self::allow_missing_default_src)).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.directives.is_empty() {
            return Err(ConfigError::new(
                "the CSP has no directives: start from Csp::recommended() or Csp::strict(), or add default-src",
            ));
        }
        if !self.allow_missing_default_src && !self.contains(Directive::DefaultSrc) {
            return Err(ConfigError::new(
                "the CSP has no default-src, so every fetch directive you did not list allows everything: add .default_src([Source::SelfOrigin]) (or call .allow_missing_default_src() if that is intended)",
            ));
        }
        for (directive, value) in &self.directives {
            match value {
                Value::Sources(sources) => validate_sources(*directive, sources)?,
                Value::Tokens(tokens) => validate_tokens(*directive, tokens)?,
                Value::Flag => {}
            }
        }
        Ok(())
    }

    /// Parses a policy string (one policy: directives separated by `;`).
    ///
    /// Directive names are case-insensitive; a repeated directive is ignored after its
    /// first occurrence, as browsers do; `'nonce-…'` sources become [`Source::Nonce`].
    /// The result is validated, except that a missing `default-src` is accepted (and
    /// remembered) since the string said so.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the unknown directive, the invalid source or the problem
    /// [`validate`](Self::validate) found; a `,` (several policies) is rejected.
    pub fn parse(policy: &str) -> Result<Self, ConfigError> {
        if policy.contains(',') {
            return Err(ConfigError::new(
                "the CSP string contains `,`, which separates several policies: give one policy (or send two headers)",
            ));
        }
        let mut csp = Self::new();
        for part in policy.split(';') {
            let mut words = part.split_ascii_whitespace();
            let Some(name) = words.next() else {
                continue;
            };
            let Some(directive) = Directive::from_name(name) else {
                return Err(ConfigError::new(format!(
                    "unknown CSP directive `{name}`: known directives are {}",
                    ALL.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
                )));
            };
            if csp.contains(directive) {
                continue;
            }
            csp = match directive.kind() {
                Kind::Sources => {
                    let sources = words.map(Source::parse).collect::<Result<Vec<_>, _>>()?;
                    csp.sources(directive, sources)
                }
                Kind::Tokens => {
                    let tokens: Vec<String> = words.map(str::to_owned).collect();
                    if directive == Directive::ReportTo {
                        csp.directives.insert(directive, Value::Tokens(tokens));
                        csp
                    } else {
                        csp.directives.insert(directive, Value::Tokens(Vec::new()));
                        csp.tokens(directive, tokens)
                    }
                }
                Kind::Flag => {
                    if let Some(extra) = words.next() {
                        return Err(ConfigError::new(format!(
                            "CSP directive `{name}` takes no value, found `{extra}`"
                        )));
                    }
                    csp.directives.insert(directive, Value::Flag);
                    csp
                }
            };
        }
        csp.allow_missing_default_src = !csp.contains(Directive::DefaultSrc);
        csp.validate()?;
        Ok(csp)
    }

    /// Renders into segments around nonce slots: `segments.len() == slots + 1`.
    pub(crate) fn render_segments(&self) -> Vec<String> {
        let mut segments = vec![String::new()];
        for (i, (directive, value)) in self.directives.iter().enumerate() {
            let cur = segments.last_mut().expect("never empty");
            if i > 0 {
                cur.push_str("; ");
            }
            cur.push_str(directive.name());
            match value {
                Value::Sources(sources) => {
                    for s in sources {
                        let cur = segments.last_mut().expect("never empty");
                        cur.push(' ');
                        if *s == Source::Nonce {
                            cur.push_str("'nonce-");
                            segments.push("'".to_owned());
                        } else {
                            cur.push_str(&s.to_string());
                        }
                    }
                }
                Value::Tokens(tokens) => {
                    for t in tokens {
                        cur.push(' ');
                        cur.push_str(t);
                    }
                }
                Value::Flag => {}
            }
        }
        segments
    }

    /// The header value with a given nonce in every nonce slot.
    pub fn render_with_nonce(&self, nonce: &str) -> String {
        self.render_segments().join(nonce)
    }
}

fn validate_sources(directive: Directive, sources: &[Source]) -> Result<(), ConfigError> {
    let name = directive.name();
    if sources.is_empty() {
        return Err(ConfigError::new(format!(
            "CSP directive `{name}` has no sources: an empty list means nothing is allowed, write [Source::None] to say so"
        )));
    }
    if sources.contains(&Source::None) && sources.len() > 1 {
        return Err(ConfigError::new(format!(
            "CSP directive `{name}` combines 'none' with other sources, so 'none' is ignored: remove 'none' or the other sources"
        )));
    }
    let mut has_nonce_or_hash = false;
    for s in sources {
        s.check()
            .map_err(|e| ConfigError::new(format!("in CSP directive `{name}`: {e}")))?;
        match s {
            Source::Nonce if !directive.allows_nonce() => {
                return Err(ConfigError::new(format!(
                    "CSP directive `{name}` cannot use a nonce: nonces work in default-src, script-src, script-src-elem, style-src and style-src-elem"
                )));
            }
            Source::Hash(..) if !directive.allows_hash() => {
                return Err(ConfigError::new(format!(
                    "CSP directive `{name}` cannot use a hash ({s}): hashes work in default-src and the script-src*/style-src* directives"
                )));
            }
            Source::Nonce | Source::Hash(..) => has_nonce_or_hash = true,
            Source::StrictDynamic | Source::WasmUnsafeEval | Source::UnsafeEval
                if !directive.is_script() =>
            {
                return Err(ConfigError::new(format!(
                    "CSP source {s} has no effect in `{name}`: use it in script-src (or default-src)"
                )));
            }
            Source::UnsafeInline | Source::UnsafeHashes | Source::ReportSample
                if !directive.allows_hash() =>
            {
                return Err(ConfigError::new(format!(
                    "CSP source {s} has no effect in `{name}`: use it in a script-src*/style-src* directive"
                )));
            }
            Source::InlineSpeculationRules if !directive.is_script() => {
                return Err(ConfigError::new(format!(
                    "CSP source {s} has no effect in `{name}`: use it in script-src"
                )));
            }
            _ => {}
        }
    }
    if sources.contains(&Source::StrictDynamic) && !has_nonce_or_hash {
        return Err(ConfigError::new(format!(
            "CSP directive `{name}` uses 'strict-dynamic' without a nonce or hash, so no script can load: add Source::Nonce (or a hash) to {name}"
        )));
    }
    Ok(())
}

fn validate_tokens(directive: Directive, tokens: &[String]) -> Result<(), ConfigError> {
    let name = directive.name();
    for t in tokens {
        if t.starts_with("<source ") {
            return Err(ConfigError::new(format!(
                "CSP directive `{name}` does not take sources: use its own setter (.sandbox(…), .trusted_types(…), .report_uri(…))"
            )));
        }
        check_no_separators(&format!("value of CSP directive `{name}`"), t)?;
    }
    match directive {
        Directive::Sandbox => {
            if let Some(bad) = tokens
                .iter()
                .find(|t| !SANDBOX_TOKENS.contains(&t.to_ascii_lowercase().as_str()))
            {
                return Err(ConfigError::new(format!(
                    "unknown sandbox flag `{bad}`: use one of {}",
                    SANDBOX_TOKENS.join(", ")
                )));
            }
        }
        Directive::RequireTrustedTypesFor
            if (tokens.len() != 1 || !tokens[0].eq_ignore_ascii_case("'script'")) =>
        {
            return Err(ConfigError::new(
                "require-trusted-types-for takes exactly 'script' (quoted): use .require_trusted_types_for_script()",
            ));
        }
        Directive::TrustedTypes => {
            for t in tokens {
                let keyword = matches!(t.as_str(), "'allow-duplicates'" | "'none'" | "*");
                let policy_name = t.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'-' | b'#' | b'=' | b'_' | b'/' | b'@' | b'.' | b'%')
                });
                if !keyword && !policy_name {
                    return Err(ConfigError::new(format!(
                        "trusted-types token `{t}` is neither a policy name (letters, digits, -#=_/@.%) nor *, 'allow-duplicates' or 'none'"
                    )));
                }
            }
            if tokens.iter().any(|t| t == "'none'") && tokens.len() > 1 {
                return Err(ConfigError::new(
                    "trusted-types combines 'none' with policy names: remove one of them",
                ));
            }
        }
        Directive::ReportUri => {
            if tokens.is_empty() {
                return Err(ConfigError::new(
                    "report-uri needs a URL: .report_uri(\"/csp-reports\")",
                ));
            }
            if let Some(bad) = tokens.iter().find(|t| t.contains(['"', '\'', '<', '>'])) {
                return Err(ConfigError::new(format!(
                    "report-uri `{bad}` is not a URL: write it unquoted, such as /csp-reports or https://example.com/csp"
                )));
            }
        }
        Directive::ReportTo => {
            let ok = tokens.len() == 1
                && tokens[0]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err(ConfigError::new(
                    "report-to takes one endpoint name (letters, digits, `-`, `_`, `.`), such as `csp-endpoint`, declared with reporting_endpoint(name, url)",
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

impl fmt::Display for Csp {
    /// The policy with `'nonce-{nonce}'` in every nonce slot.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render_with_nonce("{nonce}"))
    }
}

impl std::str::FromStr for Csp {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for Csp {
    /// A policy string, as accepted by [`Csp::parse`].
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}
