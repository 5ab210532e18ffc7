//! A serde description of a limiter, for TOML (or any serde format) configuration files.

use http::Method;
use serde::Deserialize;

use super::{
    backend::memory::{DEFAULT_MAX_KEYS, MemoryBackend},
    layer::RateLimitBuilder,
    policy::{Anonymous, Key, MissingPeer, Policy},
    quota::Quota,
    response::HeaderStyle,
};
use crate::error::ConfigError;

/// A limiter described by a configuration file (see `docs/rate-limit.example.toml`).
///
/// The Redis connection is not part of the file; pass a backend to the builder that
/// [`builder`](Self::builder) returns.
///
/// # Example
///
/// ```
/// use tower_rampart::rate_limit::RateLimitConfig;
///
/// let config: RateLimitConfig = serde_json::from_value(serde_json::json!({
///     "exempt": ["/health/*"],
///     "policy": [
///         {"name": "login", "rate": "5/minute", "key": "client_ip",
///          "paths": ["/accounts/login/"], "methods": ["POST"]},
///         {"name": "api", "rate": ["10/second", "100/hour"], "key": "user", "paths": ["/api/*"]}
///     ]
/// })).unwrap();
/// let layer = config.builder().unwrap().build().unwrap();
/// assert_eq!(layer.policy_names().count(), 2);
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// Which rate-limit headers to send. By default, `ietf`.
    #[serde(default)]
    pub headers: HeaderStyle,
    /// Path patterns no policy applies to. By default, none.
    #[serde(default)]
    pub exempt: Vec<String>,
    /// The in-memory backend's key cap. By default, 100 000.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Client networks exempt from every policy. By default, none.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Requests whose client address is unknown. By default, `reject`.
    #[serde(default)]
    pub missing_peer: MissingPeer,
    /// The policies, in order.
    #[serde(default, rename = "policy")]
    pub policies: Vec<PolicyConfig>,
}

fn default_max_keys() -> usize {
    DEFAULT_MAX_KEYS
}

/// One policy in a configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PolicyConfig {
    /// The policy's name.
    pub name: String,
    /// One rate (`"5/minute"`, `"10/second burst=20"`) or a list of windows.
    pub rate: Rates,
    /// What requests are counted by. By default, `client_ip`.
    #[serde(default)]
    pub key: KeyConfig,
    /// Path patterns. By default, every path.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Methods. By default, every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Units per request. By default, 1.
    #[serde(default = "one")]
    pub cost: u32,
    /// Shadow mode. By default, `false`.
    #[serde(default)]
    pub shadow: bool,
    /// Requests without a key value. By default, `client_ip`.
    #[serde(default)]
    pub anonymous: Anonymous,
    /// Client networks this policy never limits. By default, none.
    #[serde(default)]
    pub allow: Vec<String>,
}

fn one() -> u32 {
    1
}

/// One rate or several windows.
#[derive(Debug, Clone)]
pub enum Rates {
    /// A single window.
    One(Quota),
    /// Several windows, checked atomically.
    Many(Vec<Quota>),
}

impl<'de> Deserialize<'de> for Rates {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Rates;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a rate such as \"5/minute\" or a list of rates")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Rates, E> {
                v.parse().map(Rates::One).map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Rates, A::Error> {
                let mut all = Vec::new();
                while let Some(q) = seq.next_element::<Quota>()? {
                    all.push(q);
                }
                Ok(Rates::Many(all))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A key in a configuration file: `"client_ip"`, `"user"`, `"tenant"`, `"global"` or
/// `{ header = "x-api-key" }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyConfig {
    /// The client address.
    #[default]
    ClientIp,
    /// The authenticated user.
    User,
    /// The tenant.
    Tenant,
    /// One bucket for everyone.
    Global,
    /// A request header.
    Header(String),
    /// Only direct decisions (`RateLimitLayer::check`); applies to no request.
    Direct,
}

impl RateLimitConfig {
    /// A builder with the file's policies, exemptions and settings.
    ///
    /// # Errors
    ///
    /// When a method, header name or rate list is unusable. Policy checks happen in
    /// [`RateLimitBuilder::build`].
    pub fn builder(&self) -> Result<RateLimitBuilder, ConfigError> {
        let mut b = RateLimitBuilder::default()
            .headers(self.headers)
            .memory(MemoryBackend::new().max_keys(self.max_keys));
        for e in &self.exempt {
            b = b.exempt(e.clone());
        }
        b = b
            .allow(self.allow.iter().cloned())
            .missing_peer(self.missing_peer);
        for p in &self.policies {
            b = b.policy(p.policy()?);
            if !p.allow.is_empty() {
                b = b.allow_for(&p.name, p.allow.iter().cloned());
            }
        }
        Ok(b)
    }
}

impl PolicyConfig {
    fn policy(&self) -> Result<Policy, ConfigError> {
        let quotas: Vec<Quota> = match &self.rate {
            Rates::One(q) => vec![*q],
            Rates::Many(qs) => qs.clone(),
        };
        let Some((first, rest)) = quotas.split_first() else {
            return Err(ConfigError::new(format!(
                "rate-limit policy `{}` has an empty rate list: give at least one rate such as \"5/minute\"",
                self.name
            )));
        };
        let mut p = Policy::new(self.name.clone(), *first)
            .key(match &self.key {
                KeyConfig::ClientIp => Key::ClientIp,
                KeyConfig::User => Key::User,
                KeyConfig::Tenant => Key::Tenant,
                KeyConfig::Global => Key::Global,
                KeyConfig::Header(h) => Key::header(h)?,
                KeyConfig::Direct => Key::Direct,
            })
            .cost(self.cost)
            .shadow(self.shadow)
            .anonymous(self.anonymous);
        for q in rest {
            p = p.window(*q);
        }
        for path in &self.paths {
            p = p.path(path.clone());
        }
        for m in &self.methods {
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                ConfigError::new(format!(
                    "rate-limit policy `{}`: {m:?} is not an HTTP method; use e.g. \"POST\"",
                    self.name
                ))
            })?;
            p = p.method(method);
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_entries_are_config_errors() {
        let c: RateLimitConfig = serde_json::from_value(serde_json::json!({
            "policy": [{"name": "x", "rate": [], "key": {"header": "x-api-key"}}]
        }))
        .unwrap();
        assert!(
            c.builder()
                .unwrap_err()
                .message()
                .contains("empty rate list")
        );
        let c: RateLimitConfig = serde_json::from_value(serde_json::json!({
            "policy": [{"name": "x", "rate": "1/second", "methods": ["P OST"]}]
        }))
        .unwrap();
        assert!(
            c.builder()
                .unwrap_err()
                .message()
                .contains("not an HTTP method")
        );
        let c: RateLimitConfig = serde_json::from_value(serde_json::json!({
            "policy": [{"name": "x", "rate": "1/second", "key": {"header": "bad header"}}]
        }))
        .unwrap();
        assert!(c.builder().is_err());
        let e = serde_json::from_value::<RateLimitConfig>(serde_json::json!({
            "policy": [{"name": "x", "rate": "1/fortnight"}]
        }))
        .unwrap_err();
        assert!(
            e.to_string().contains("COUNT/UNIT") || e.to_string().contains("did not match"),
            "{e}"
        );
        assert!(serde_json::from_value::<RateLimitConfig>(serde_json::json!({"typo": 1})).is_err());
    }
}
