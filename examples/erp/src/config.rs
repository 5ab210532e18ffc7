//! Configuration: command line, then environment, then an optional TOML file, then
//! embedded defaults (in that order of precedence).
//!
//! | setting | flag | environment | TOML | default |
//! |---|---|---|---|---|
//! | listen address | `--bind` | `RAMPART_BIND` | `server.bind` | `127.0.0.1:8080` |
//! | config file | `--config` | `RAMPART_CONFIG` | | none |
//! | database | | `DATABASE_URL` | `database.url` | `sqlite:rampart-erp.db` |
//! | Redis | | `REDIS_URL` (a comma-separated list = Cluster nodes) | `redis.url` | none |
//! | Redis is a Cluster | | `RAMPART_REDIS_CLUSTER=1` | `redis.cluster` | when `REDIS_URL` lists several nodes |
//! | limiter when Redis fails | | `RAMPART_REDIS_FAILURE_MODE` (`open`, `closed`, `local_fallback`) | `redis.failure_mode` | `local_fallback` |
//! | instances sharing Redis | | `RAMPART_INSTANCES` | `redis.instances` | 1 |
//! | Redis per-call timeout | | `RAMPART_REDIS_TIMEOUT_MS` | `redis.timeout_ms` | 50 |
//! | Redis key prefix | | `RAMPART_REDIS_PREFIX` | `redis.prefix` | `rampart-erp` |
//! | trusted proxies | | `RAMPART_TRUSTED_PROXIES` (comma-separated CIDRs) | `server.trusted_proxies` | none |
//! | JWT secret | | `RAMPART_JWT_SECRET` | `auth.jwt_secret` | generated, with a warning |
//! | demo password | | `RAMPART_DEMO_PASSWORD` | | generated and printed once |
//! | JSON logs | `--json-logs` | `RAMPART_JSON_LOGS=1` | `logging.json` | off |
//! | password hashing cost | | `RAMPART_PASSWORD_COST` (`default`, or `fast` for tests only) | | `default` |
//! | how long idempotency keys are kept | | `RAMPART_IDEMPOTENCY_TTL_SECS` | | 86400 (24 h) |
//! | `Secure` session cookies | | `RAMPART_SECURE_COOKIES=1` | `server.secure_cookies` | off (on by itself for a request that came over HTTPS through a trusted proxy) |
//!
//! The sections `[rate_limit]`, `[security_headers]`, `[cache]`, `[tenant]` and
//! `[profiler]` of the TOML file are kept as raw tables in [`LayerSections`] for the
//! library layers (`rampart-erp.toml` beside this crate has the origin's policies).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use tower_rampart::{client_ip::TrustedProxies, error::ConfigError, rate_limit::FailureMode};

/// The default SQLite file database, created in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:rampart-erp.db";

/// Everything the server needs to start.
#[derive(Clone)]
pub struct Config {
    /// Listen address.
    pub bind: SocketAddr,
    /// `sqlite:…` or `postgres://…`.
    pub database_url: String,
    /// Redis, when configured: the rate limiter and the two-tier cache use it and
    /// readiness pings it. `None` = in-memory limiter and cache (one instance).
    pub redis_url: Option<String>,
    /// How Redis is used, when [`Config::redis_url`] is set.
    pub redis: RedisSettings,
    /// CIDRs whose forwarding headers are believed.
    pub trusted_proxies: Vec<String>,
    /// HMAC secret of access tokens and session cookies (at least 32 bytes).
    pub jwt_secret: String,
    /// Whether [`Config::jwt_secret`] was generated because none was configured.
    pub jwt_secret_generated: bool,
    /// The demo users' password, when configured.
    pub demo_password: Option<String>,
    /// JSON log lines instead of human-readable ones.
    pub json_logs: bool,
    /// Lifetime of an access token.
    pub token_ttl: Duration,
    /// Lifetime of a session cookie.
    pub session_ttl: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Largest accepted request body, in bytes.
    pub body_limit_bytes: usize,
    /// How long an `Idempotency-Key` is remembered (then purged); 24 hours by default.
    pub idempotency_ttl: Duration,
    /// Readiness fails when the database's disk has less free space than this.
    pub min_free_disk_bytes: u64,
    /// Adds `Secure` to the session cookie (turn on behind HTTPS).
    pub secure_cookies: bool,
    /// Argon2 cost of newly hashed passwords.
    pub password_cost: PasswordCost,
    /// Raw configuration of the library layers, for the integrator.
    pub layers: LayerSections,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("bind", &self.bind)
            .field("database_url", &redact_url(&self.database_url))
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("trusted_proxies", &self.trusted_proxies)
            .field("jwt_secret", &"<redacted>")
            .field("json_logs", &self.json_logs)
            .field("token_ttl", &self.token_ttl)
            .field("request_timeout", &self.request_timeout)
            .field("body_limit_bytes", &self.body_limit_bytes)
            .field("idempotency_ttl", &self.idempotency_ttl)
            .finish_non_exhaustive()
    }
}

/// Hides the password of a URL such as `postgres://user:secret@host/db` (the library's).
pub use tower_rampart::error::redact_url;

/// How expensive new password hashes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCost {
    /// Argon2id with the OWASP-recommended defaults (19 MiB, 2 passes).
    Default,
    /// The cheapest Argon2id parameters: for tests only.
    Fast,
}

impl PasswordCost {
    /// The Argon2 parameters.
    pub fn params(self) -> argon2::Params {
        match self {
            Self::Default => argon2::Params::default(),
            // 8 KiB, 1 pass, 1 lane: valid parameters, instant to compute.
            Self::Fast => argon2::Params::new(8, 1, 1, None).unwrap_or_default(),
        }
    }
}

/// Raw TOML tables the library layers read (rate-limit policies, headers, …).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSections {
    /// `[rate_limit]`: policies for the rate-limit layer.
    pub rate_limit: Option<toml::Table>,
    /// `[security_headers]`: preset and CSP for the security-headers layer.
    pub security_headers: Option<toml::Table>,
    /// `[cache]`: response cache settings.
    pub cache: Option<toml::Table>,
    /// `[tenant]`: tenant resolver settings.
    pub tenant: Option<toml::Table>,
    /// `[profiler]`: profiler settings.
    pub profiler: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    database: DatabaseSection,
    #[serde(default)]
    redis: RedisSection,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default)]
    logging: LoggingSection,
    #[serde(default)]
    health: HealthSection,
    #[serde(flatten)]
    layers: LayerSections,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    bind: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    request_timeout_secs: Option<u64>,
    body_limit_bytes: Option<usize>,
    secure_cookies: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseSection {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisSection {
    url: Option<String>,
    cluster: Option<bool>,
    failure_mode: Option<String>,
    instances: Option<u32>,
    timeout_ms: Option<u64>,
    prefix: Option<String>,
}

/// How the server uses Redis (see the table in the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// Whether the nodes of [`Config::redis_url`] are Redis Cluster nodes.
    pub cluster: bool,
    /// What the rate limiter does while Redis fails (the cache always degrades to
    /// misses). `LocalFallback` divides each quota by [`RedisSettings::instances`].
    pub failure_mode: FailureMode,
    /// How many instances share the Redis quotas.
    pub instances: u32,
    /// The longest one Redis call may take before the failure mode applies.
    pub timeout: Duration,
    /// The prefix of every key the server writes.
    pub prefix: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            cluster: false,
            failure_mode: FailureMode::LocalFallback { divisor: 1 },
            instances: 1,
            timeout: Duration::from_millis(50),
            prefix: "rampart-erp".to_owned(),
        }
    }
}

fn split_nodes(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

fn truthy(v: &str) -> bool {
    matches!(v.trim(), "1" | "true" | "yes" | "on")
}

impl RedisSettings {
    fn load(
        url: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        file: &RedisSection,
    ) -> Result<Self, ConfigError> {
        let mut s = Self::default();
        let Some(url) = url else { return Ok(s) };
        let nodes = split_nodes(url);
        for node in &nodes {
            redis::Client::open(node.as_str()).map_err(|e| {
                ConfigError::new(format!(
                    "invalid REDIS_URL `{}`: {e}; expected e.g. redis://127.0.0.1:6379 (or a comma-separated list of Cluster nodes)",
                    redact_url(node)
                ))
            })?;
        }
        if nodes.is_empty() {
            return Err(ConfigError::new(
                "REDIS_URL is empty; expected e.g. redis://127.0.0.1:6379",
            ));
        }
        s.cluster = match env("RAMPART_REDIS_CLUSTER") {
            Some(v) => truthy(&v),
            None => file.cluster.unwrap_or(nodes.len() > 1),
        };
        if nodes.len() > 1 && !s.cluster {
            return Err(ConfigError::new(
                "REDIS_URL lists several nodes but RAMPART_REDIS_CLUSTER / redis.cluster is false; give one URL for a standalone server",
            ));
        }
        s.instances = match env("RAMPART_INSTANCES") {
            Some(v) => v.trim().parse().map_err(|_| {
                ConfigError::new(format!(
                    "RAMPART_INSTANCES must be a whole number of instances, e.g. 3 (got `{v}`)"
                ))
            })?,
            None => file.instances.unwrap_or(1),
        };
        if s.instances == 0 {
            return Err(ConfigError::new(
                "RAMPART_INSTANCES / redis.instances must be at least 1",
            ));
        }
        let mode = env("RAMPART_REDIS_FAILURE_MODE").or_else(|| file.failure_mode.clone());
        s.failure_mode = match mode.as_deref().map(str::trim) {
            None | Some("local_fallback") => FailureMode::LocalFallback {
                divisor: s.instances,
            },
            Some("open") => FailureMode::Open,
            Some("closed") => FailureMode::Closed,
            Some(other) => {
                return Err(ConfigError::new(format!(
                    "unknown Redis failure mode `{other}`; use open, closed or local_fallback"
                )));
            }
        };
        let timeout_ms = match env("RAMPART_REDIS_TIMEOUT_MS") {
            Some(v) => v.trim().parse().map_err(|_| {
                ConfigError::new(format!(
                    "RAMPART_REDIS_TIMEOUT_MS must be a number of milliseconds, e.g. 50 (got `{v}`)"
                ))
            })?,
            None => file.timeout_ms.unwrap_or(50),
        };
        if !(1..=10_000).contains(&timeout_ms) {
            return Err(ConfigError::new(
                "the Redis timeout must be between 1 and 10000 ms",
            ));
        }
        s.timeout = Duration::from_millis(timeout_ms);
        if let Some(prefix) = env("RAMPART_REDIS_PREFIX").or_else(|| file.prefix.clone()) {
            if prefix.is_empty()
                || prefix.len() > 64
                || !prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::new(format!(
                    "invalid Redis key prefix `{prefix}`: use 1-64 of A-Z, a-z, 0-9, '-' and '_'"
                )));
            }
            s.prefix = prefix;
        }
        Ok(s)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    jwt_secret: Option<String>,
    token_ttl_secs: Option<u64>,
    session_ttl_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoggingSection {
    json: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthSection {
    min_free_disk_mb: Option<u64>,
}

/// What the command line says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CliArgs {
    /// `--bind ADDR`.
    pub bind: Option<String>,
    /// `--config PATH`.
    pub config: Option<PathBuf>,
    /// `--json-logs`.
    pub json_logs: bool,
}

/// The usage line printed with argument errors.
pub const USAGE: &str = "usage: rampart-erp [--bind ADDR] [--config PATH] [--json-logs]";

impl CliArgs {
    /// Parses `--bind ADDR`, `--bind=ADDR`, `--config PATH`, `--config=PATH`, `--json-logs`.
    ///
    /// # Errors
    ///
    /// An unknown argument or a flag without its value.
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, ConfigError> {
        let mut out = Self::default();
        while let Some(arg) = args.next() {
            if let Some(v) = arg.strip_prefix("--bind=") {
                out.bind = Some(v.to_owned());
            } else if arg == "--bind" {
                out.bind = Some(args.next().ok_or_else(|| {
                    ConfigError::new("--bind needs an address, e.g. --bind 127.0.0.1:8080")
                })?);
            } else if let Some(v) = arg.strip_prefix("--config=") {
                out.config = Some(v.into());
            } else if arg == "--config" {
                out.config = Some(
                    args.next()
                        .ok_or_else(|| {
                            ConfigError::new(
                                "--config needs a path, e.g. --config rampart-erp.toml",
                            )
                        })?
                        .into(),
                );
            } else if arg == "--json-logs" {
                out.json_logs = true;
            } else {
                return Err(ConfigError::new(format!(
                    "unknown argument `{arg}`; {USAGE}"
                )));
            }
        }
        Ok(out)
    }
}

impl Config {
    /// Loads the configuration from the command line, the environment (read through
    /// `env`) and the TOML file named by `--config` / `RAMPART_CONFIG`.
    ///
    /// # Errors
    ///
    /// An unreadable or invalid file, an invalid address, CIDR, URL or secret; the
    /// message says how to fix it.
    pub fn load(cli: &CliArgs, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let path = cli
            .config
            .clone()
            .or_else(|| env("RAMPART_CONFIG").map(PathBuf::from));
        let file = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    ConfigError::new(format!(
                        "cannot read the config file {}: {e}; check --config / RAMPART_CONFIG",
                        p.display()
                    ))
                })?;
                Self::parse_file(&text)
                    .map_err(|e| ConfigError::new(format!("{}: {}", p.display(), e.message())))?
            }
            None => FileConfig::default(),
        };
        Self::from_parts(cli, &env, file)
    }

    fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            ConfigError::new(format!(
                "invalid TOML configuration: {e}; see examples/erp/rampart-erp.toml"
            ))
        })
    }

    fn from_parts(
        cli: &CliArgs,
        env: &dyn Fn(&str) -> Option<String>,
        file: FileConfig,
    ) -> Result<Self, ConfigError> {
        let bind = cli
            .bind
            .clone()
            .or_else(|| env("RAMPART_BIND"))
            .or(file.server.bind)
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        let bind: SocketAddr = bind.parse().map_err(|e| {
            ConfigError::new(format!(
                "invalid bind address `{bind}`: {e} (expected e.g. 127.0.0.1:8080)"
            ))
        })?;

        let database_url = env("DATABASE_URL")
            .or(file.database.url)
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(format!(
                "unsupported DATABASE_URL `{}`: use sqlite:FILE (e.g. {DEFAULT_DATABASE_URL}) or postgres://user@host:5432/db",
                redact_url(&database_url)
            )));
        }

        let redis_url = env("REDIS_URL").or_else(|| file.redis.url.clone());
        let redis = RedisSettings::load(redis_url.as_deref(), env, &file.redis)?;

        let trusted_proxies = match env("RAMPART_TRUSTED_PROXIES") {
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            None => file.server.trusted_proxies.unwrap_or_default(),
        };
        TrustedProxies::new(trusted_proxies.iter().map(String::as_str))?;

        let (jwt_secret, jwt_secret_generated) = match env("RAMPART_JWT_SECRET")
            .or(file.auth.jwt_secret)
        {
            Some(s) if s.len() < 32 => {
                return Err(ConfigError::new(
                    "RAMPART_JWT_SECRET is too short: use at least 32 random bytes, e.g. `openssl rand -hex 32`",
                ));
            }
            Some(s) => (s, false),
            None => (random_hex(32), true),
        };

        let json_logs = cli.json_logs
            || env("RAMPART_JSON_LOGS").is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes"))
            || file.logging.json.unwrap_or(false);

        let secs = |v: Option<u64>, default: u64, name: &str| -> Result<Duration, ConfigError> {
            match v.unwrap_or(default) {
                0 => Err(ConfigError::new(format!(
                    "{name} must be at least 1 second"
                ))),
                n => Ok(Duration::from_secs(n)),
            }
        };
        let body_limit_bytes = file.server.body_limit_bytes.unwrap_or(64 * 1024);
        if body_limit_bytes < 1024 {
            return Err(ConfigError::new(
                "server.body_limit_bytes must be at least 1024",
            ));
        }

        let config = Self {
            bind,
            database_url,
            redis_url,
            redis,
            trusted_proxies,
            jwt_secret,
            jwt_secret_generated,
            demo_password: env("RAMPART_DEMO_PASSWORD"),
            json_logs,
            token_ttl: secs(file.auth.token_ttl_secs, 3600, "auth.token_ttl_secs")?,
            session_ttl: secs(
                file.auth.session_ttl_secs,
                8 * 3600,
                "auth.session_ttl_secs",
            )?,
            request_timeout: secs(
                file.server.request_timeout_secs,
                30,
                "server.request_timeout_secs",
            )?,
            body_limit_bytes,
            idempotency_ttl: match env("RAMPART_IDEMPOTENCY_TTL_SECS") {
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n >= 60 => Duration::from_secs(n),
                    _ => {
                        return Err(ConfigError::new(format!(
                            "RAMPART_IDEMPOTENCY_TTL_SECS must be a number of seconds, at least 60, e.g. 86400 (got `{v}`)"
                        )));
                    }
                },
                None => Duration::from_secs(24 * 3600),
            },
            min_free_disk_bytes: file.health.min_free_disk_mb.unwrap_or(100) * 1024 * 1024,
            secure_cookies: match env("RAMPART_SECURE_COOKIES") {
                Some(v) => matches!(v.trim(), "1" | "true" | "yes"),
                None => file.server.secure_cookies.unwrap_or(false),
            },
            password_cost: match env("RAMPART_PASSWORD_COST").as_deref().map(str::trim) {
                None | Some("default") => PasswordCost::Default,
                Some("fast") => PasswordCost::Fast,
                Some(other) => {
                    return Err(ConfigError::new(format!(
                        "unknown RAMPART_PASSWORD_COST `{other}`: use default (or fast, for tests only)"
                    )));
                }
            },
            layers: file.layers,
        };
        // An unusable [rate_limit] table is a start-up error, not a request-time one.
        let _validated = crate::rate_limit_layer(&config, None)?;
        Ok(config)
    }

    /// A configuration for tests: the given database, a fixed secret and demo password,
    /// cheap password hashing, nothing else configured.
    pub fn for_tests(database_url: impl Into<String>) -> Self {
        let mut c = Self::from_parts(&CliArgs::default(), &|_| None, FileConfig::default())
            .unwrap_or_else(|e| unreachable!("defaults are valid: {e}"));
        c.database_url = database_url.into();
        c.jwt_secret = "test-secret-test-secret-test-secret!".to_owned();
        c.jwt_secret_generated = false;
        c.demo_password = Some("demo-password".to_owned());
        c.password_cost = PasswordCost::Fast;
        c
    }

    /// The Redis node URLs of [`Config::redis_url`] (empty without Redis).
    pub fn redis_nodes(&self) -> Vec<String> {
        self.redis_url
            .as_deref()
            .map(split_nodes)
            .unwrap_or_default()
    }

    /// The trusted proxies, parsed (validated when the configuration was loaded).
    pub fn trusted(&self) -> TrustedProxies {
        TrustedProxies::new(self.trusted_proxies.iter().map(String::as_str))
            .unwrap_or_else(|_| TrustedProxies::none())
    }
}

/// `n` random bytes, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // The OS random source failing is not recoverable in a meaningful way; fall back to
    // UUIDs (also OS randomness) rather than panicking.
    if getrandom::fill(&mut buf).is_err() {
        buf = uuid::Uuid::new_v4().as_bytes().repeat(n.div_ceil(16));
        buf.truncate(n);
    }
    hex(&buf)
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> impl Iterator<Item = String> {
        v.iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn cli_parses_flags_and_rejects_unknown() {
        let c = CliArgs::parse(args(&[
            "--bind",
            "127.0.0.1:9",
            "--config=x.toml",
            "--json-logs",
        ]))
        .unwrap();
        assert_eq!(c.bind.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(c.config, Some(PathBuf::from("x.toml")));
        assert!(c.json_logs);
        assert_eq!(
            CliArgs::parse(args(&["--bind=1.2.3.4:5", "--config", "y"])).unwrap(),
            CliArgs {
                bind: Some("1.2.3.4:5".into()),
                config: Some("y".into()),
                json_logs: false
            }
        );
        assert!(CliArgs::parse(args(&["--bind"])).is_err());
        assert!(CliArgs::parse(args(&["--config"])).is_err());
        assert!(
            CliArgs::parse(args(&["--nope"]))
                .unwrap_err()
                .message()
                .contains("usage")
        );
    }

    #[test]
    fn defaults_generate_a_secret() {
        let c = Config::load(&CliArgs::default(), |_| None).unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert!(c.jwt_secret_generated);
        assert_eq!(c.jwt_secret.len(), 64);
        assert!(c.redis_url.is_none());
        assert!(!format!("{c:?}").contains(&c.jwt_secret));
    }

    #[test]
    fn secure_cookies_by_env() {
        let on = Config::from_parts(
            &CliArgs::default(),
            &env_of(&[("RAMPART_SECURE_COOKIES", "1")]),
            FileConfig::default(),
        )
        .unwrap();
        assert!(on.secure_cookies);
        let off = Config::from_parts(
            &CliArgs::default(),
            &env_of(&[("RAMPART_SECURE_COOKIES", "0")]),
            Config::parse_file("[server]\nsecure_cookies = true\n").unwrap(),
        )
        .unwrap();
        assert!(!off.secure_cookies, "the environment overrides the file");
    }

    #[test]
    fn precedence_is_cli_then_env_then_file() {
        let file = Config::parse_file(
            "[server]\nbind = \"127.0.0.1:3\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n[database]\nurl = \"postgres://u:pw@h/db\"\n[rate_limit]\nheaders = \"legacy\"\n",
        )
        .unwrap();
        let env = env_of(&[("RAMPART_BIND", "127.0.0.1:2")]);
        let cli = CliArgs {
            bind: Some("127.0.0.1:1".into()),
            ..CliArgs::default()
        };
        let c = Config::from_parts(&cli, &env, file).unwrap();
        assert_eq!(c.bind.port(), 1);
        assert_eq!(c.database_url, "postgres://u:pw@h/db");
        assert_eq!(c.trusted_proxies, vec!["10.0.0.0/8".to_owned()]);
        assert!(c.layers.rate_limit.is_some());
        assert!(format!("{c:?}").contains("postgres://u:***@h/db"));
        let env = env_of(&[
            ("RAMPART_BIND", "127.0.0.1:2"),
            ("DATABASE_URL", "sqlite::memory:"),
            ("RAMPART_TRUSTED_PROXIES", "192.168.0.0/16, 10.1.0.0/16"),
            ("RAMPART_JSON_LOGS", "1"),
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("RAMPART_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("RAMPART_DEMO_PASSWORD", "pw"),
        ]);
        let c = Config::from_parts(&CliArgs::default(), &env, FileConfig::default()).unwrap();
        assert_eq!(c.bind.port(), 2);
        assert_eq!(c.database_url, "sqlite::memory:");
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(c.json_logs);
        assert!(!c.jwt_secret_generated);
        assert_eq!(c.demo_password.as_deref(), Some("pw"));
        assert_eq!(c.redis_url.as_deref(), Some("redis://127.0.0.1:1"));
    }

    #[test]
    fn invalid_values_say_how_to_fix() {
        let none = CliArgs::default();
        let bad = |pairs: &'static [(&'static str, &'static str)]| {
            Config::from_parts(&none, &env_of(pairs), FileConfig::default())
                .unwrap_err()
                .to_string()
        };
        assert!(bad(&[("RAMPART_BIND", "nonsense")]).contains("nonsense"));
        assert!(bad(&[("DATABASE_URL", "mysql://x")]).contains("sqlite:"));
        assert!(bad(&[("RAMPART_TRUSTED_PROXIES", "10.0.0.0/33")]).contains("10.0.0.0/33"));
        assert!(bad(&[("RAMPART_JWT_SECRET", "short")]).contains("32"));
        assert!(bad(&[("REDIS_URL", "http://nope")]).contains("REDIS_URL"));
        assert!(
            Config::parse_file("[server]\nbogus = 1\n")
                .unwrap_err()
                .to_string()
                .contains("bogus")
        );
        let f = Config::parse_file("[server]\nrequest_timeout_secs = 0\n").unwrap();
        assert!(Config::from_parts(&none, &|_| None, f).is_err());
        let f = Config::parse_file("[server]\nbody_limit_bytes = 10\n").unwrap();
        assert!(Config::from_parts(&none, &|_| None, f).is_err());
        let missing = CliArgs {
            config: Some("/nonexistent/rampart.toml".into()),
            ..CliArgs::default()
        };
        assert!(
            Config::load(&missing, |_| None)
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/rampart.toml")
        );
    }

    #[test]
    fn shipped_toml_file_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/rampart-erp.toml");
        let cli = CliArgs {
            config: Some(path.into()),
            ..CliArgs::default()
        };
        let c = Config::load(&cli, |_| None).unwrap();
        let rl = c
            .layers
            .rate_limit
            .expect("rate limit policies are shipped");
        assert!(toml::to_string(&rl).unwrap().contains("/accounts/login/"));
    }

    #[test]
    fn redis_settings() {
        let load = |pairs: &[(&str, &str)]| {
            let map: std::collections::HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Config::from_parts(
                &CliArgs::default(),
                &move |k| map.get(k).cloned(),
                FileConfig::default(),
            )
        };
        let c = load(&[]).unwrap();
        assert!(c.redis_nodes().is_empty());
        assert_eq!(c.redis, RedisSettings::default());

        let c = load(&[
            ("REDIS_URL", "redis://127.0.0.1:7000"),
            ("RAMPART_INSTANCES", "3"),
        ])
        .unwrap();
        assert!(!c.redis.cluster);
        assert_eq!(
            c.redis.failure_mode,
            FailureMode::LocalFallback { divisor: 3 }
        );
        assert_eq!(c.redis.timeout, Duration::from_millis(50));

        let c = load(&[
            (
                "REDIS_URL",
                "redis://127.0.0.1:7000, redis://127.0.0.1:7001",
            ),
            ("RAMPART_REDIS_FAILURE_MODE", "closed"),
            ("RAMPART_REDIS_TIMEOUT_MS", "20"),
            ("RAMPART_REDIS_PREFIX", "erp_2"),
        ])
        .unwrap();
        assert!(c.redis.cluster, "several nodes = Cluster");
        assert_eq!(c.redis_nodes().len(), 2);
        assert_eq!(c.redis.failure_mode, FailureMode::Closed);
        assert_eq!(c.redis.timeout, Duration::from_millis(20));
        assert_eq!(c.redis.prefix, "erp_2");
        assert_eq!(
            load(&[("RAMPART_PASSWORD_COST", "fast")])
                .unwrap()
                .password_cost,
            PasswordCost::Fast
        );
        assert!(load(&[("RAMPART_PASSWORD_COST", "cheap")]).is_err());
        let open = load(&[
            ("REDIS_URL", "redis://h"),
            ("RAMPART_REDIS_FAILURE_MODE", "open"),
            ("RAMPART_REDIS_CLUSTER", "1"),
        ])
        .unwrap();
        assert_eq!(open.redis.failure_mode, FailureMode::Open);
        assert!(open.redis.cluster);

        for (pairs, needle) in [
            (vec![("REDIS_URL", "http://x")], "invalid REDIS_URL"),
            (vec![("REDIS_URL", " , ")], "REDIS_URL is empty"),
            (
                vec![
                    ("REDIS_URL", "redis://a,redis://b"),
                    ("RAMPART_REDIS_CLUSTER", "0"),
                ],
                "several nodes",
            ),
            (
                vec![("REDIS_URL", "redis://a"), ("RAMPART_INSTANCES", "0")],
                "at least 1",
            ),
            (
                vec![("REDIS_URL", "redis://a"), ("RAMPART_INSTANCES", "many")],
                "whole number",
            ),
            (
                vec![
                    ("REDIS_URL", "redis://a"),
                    ("RAMPART_REDIS_FAILURE_MODE", "panic"),
                ],
                "open, closed or local_fallback",
            ),
            (
                vec![
                    ("REDIS_URL", "redis://a"),
                    ("RAMPART_REDIS_TIMEOUT_MS", "0"),
                ],
                "between 1 and 10000",
            ),
            (
                vec![
                    ("REDIS_URL", "redis://a"),
                    ("RAMPART_REDIS_TIMEOUT_MS", "soon"),
                ],
                "milliseconds",
            ),
            (
                vec![("REDIS_URL", "redis://a"), ("RAMPART_REDIS_PREFIX", "a:b")],
                "invalid Redis key prefix",
            ),
        ] {
            let e = load(&pairs).unwrap_err().to_string();
            assert!(e.contains(needle), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn redaction_and_hex() {
        assert_eq!(redact_url("postgres://a:b@h/d"), "postgres://a:***@h/d");
        assert_eq!(redact_url("postgres://a@h/d"), "postgres://a@h/d");
        assert_eq!(redact_url("sqlite:x.db"), "sqlite:x.db");
        assert_eq!(hex(&[0, 255, 16]), "00ff10");
        assert_ne!(random_hex(16), random_hex(16));
        assert!(PasswordCost::Fast.params().m_cost() < PasswordCost::Default.params().m_cost());
    }
}
