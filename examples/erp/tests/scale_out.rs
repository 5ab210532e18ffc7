//! Scale-out and fault tests: three `rampart-erp` **processes** on free loopback ports,
//! one database, one private Redis (or a 3-master Redis Cluster), driven over HTTP the way
//! a load balancer would. The test acts as the trusted reverse proxy
//! (`RAMPART_TRUSTED_PROXIES=127.0.0.1/32`, `X-Forwarded-For`).
//!
//! 1. Global limits: 1000 concurrent logins from one client over the three instances →
//!    exactly 5 allowed (5/minute); 300 API calls of one user → exactly 100 (100/hour).
//! 2. Cache coherence: an entry posted on A is in B's and C's cached trial balance within
//!    100 ms (p50/p99 printed).
//! 3. Redis loss under load (A `local_fallback`, B `open`, C `closed`): no 5xx but C's
//!    JSON 503s, limits still enforced on A, recovery of every instance within 2 s of the
//!    restart without restarting them.
//! 4. Cluster: 1 and 2 on the cluster; a dead master → the failure mode for the clients
//!    whose keys live in its slots, full service for the others.
//! 5. No data loss: every entry posted during 3 (idempotency keys, retried by the client
//!    on another instance) exists exactly once.
//!
//! The database is a fresh PostgreSQL database (`RAMPART_TEST_POSTGRES_URL`) when one is
//! reachable, else a SQLite file. Every loop is bounded in count and time. Run with
//! `cargo test -p rampart-erp --test scale_out -- --nocapture` to see the figures.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::body::Bytes;
use common::{TempDatabase, TempDir};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header::HeaderValue};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rampart_test_support::{RedisCluster, RedisServer, free_port};
use serde_json::{Value, json};
use tokio::{sync::Semaphore, task::JoinSet};

const PASSWORD: &str = "scale-out-password";
const SECRET: &str = "scale-out-secret-scale-out-secret-0123";

/// The scenarios load the machine: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `[rate_limit]` table: the origin's login limit (5/minute per client IP) and an API
/// policy per user with this rate on these paths.
fn limits(api_rate: &str, api_paths: &str) -> String {
    format!(
        r#"
[rate_limit]
exempt = ["/health/*", "/metrics"]

[[rate_limit.policy]]
name = "api"
rate = "{api_rate}"
key = "user"
paths = ["{api_paths}"]

[[rate_limit.policy]]
name = "login"
rate = "5/minute"
key = "client_ip"
paths = ["/accounts/login/"]
methods = ["POST"]
"#
    )
}

/// The origin's limits, the API one (100/hour) on `/api/v1/users/*` only: scenario 1
/// counts `GET /api/v1/users/me`, and the coherence trials of scenario 2 make more report
/// reads than a user's hourly quota.
fn limits_config() -> String {
    limits("100/hour", "/api/v1/users/*")
}

/// Generous API limits (scenario 3 makes many calls), the origin's login limit.
fn load_config() -> String {
    limits("100000/hour", "/api/*")
}

// ---------------------------------------------------------------------------------------
// HTTP

#[derive(Clone)]
struct Http(Client<HttpConnector, Full<Bytes>>);

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    content_type: String,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn is_json_error(&self) -> bool {
        self.content_type.starts_with("application/json")
            && self.json()["error"].is_string()
            && self.json()["detail"].is_string()
    }
}

impl Http {
    fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self(
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(64)
                .build(connector),
        )
    }

    async fn send(
        &self,
        port: u16,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<(&str, String)>,
    ) -> Result<Reply, String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{port}{path}"));
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        let body = match body {
            Some((ct, text)) => {
                b = b.header("content-type", ct);
                Full::new(Bytes::from(text))
            }
            None => Full::new(Bytes::new()),
        };
        let req = b.body(body).map_err(|e| e.to_string())?;
        let call = async {
            let res = self.0.request(req).await.map_err(|e| e.to_string())?;
            let status = res.status();
            let content_type = res
                .headers()
                .get("content-type")
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok(Reply {
                status,
                content_type,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .map_err(|_| "no answer within 20 s".to_owned())?
    }
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

fn from_client(ip: &str) -> (&'static str, String) {
    ("x-forwarded-for", ip.to_owned())
}

// ---------------------------------------------------------------------------------------
// The fleet

struct Instance {
    name: char,
    port: u16,
    mode: &'static str,
    child: Child,
    log: PathBuf,
}

impl Instance {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- instance {} ({}) log tail ---\n{}",
                self.name,
                self.mode,
                self.log_tail()
            );
        }
    }
}

/// One database for the fleet: PostgreSQL when reachable, else a SQLite file.
struct Database {
    url: String,
    pg: Option<TempDatabase>,
}

impl Database {
    async fn create(dir: &Path) -> Self {
        match TempDatabase::create().await {
            Some(pg) => Self {
                url: pg.url.clone(),
                pg: Some(pg),
            },
            None => Self {
                url: format!("sqlite:{}", dir.join("erp.db").display()),
                pg: None,
            },
        }
    }

    async fn drop_db(self) {
        if let Some(pg) = self.pg {
            pg.drop_db().await;
        }
    }
}

struct Fleet {
    instances: Vec<Instance>,
    http: Http,
    db: Option<Database>,
    /// Removed last (after the processes are gone), also when a test panics.
    _dir: TempDir,
}

struct FleetSpec<'a> {
    redis_url: String,
    modes: [&'static str; 3],
    config: Option<&'a str>,
    redis_timeout_ms: u64,
}

impl Fleet {
    async fn start(spec: FleetSpec<'_>) -> Self {
        let tmp = TempDir::new("rampart-scale");
        let dir = tmp.path().to_path_buf();
        let db = Database::create(&dir).await;
        println!(
            "fleet database: {}",
            if db.pg.is_some() {
                "PostgreSQL"
            } else {
                "SQLite file"
            }
        );
        let config = spec.config.map(|text| {
            let path = dir.join("rampart-erp.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let prefix = format!("scale{}", uuid::Uuid::new_v4().simple());
        let mut fleet = Self {
            instances: Vec::new(),
            http: Http::new(),
            db: None,
            _dir: tmp,
        };
        // The first instance migrates and seeds alone; then the two others join.
        for (i, mode) in spec.modes.iter().enumerate() {
            let port = free_port();
            let log = dir.join(format!("instance-{i}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_rampart-erp"));
            cmd.current_dir(&dir)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("RAMPART_BIND", format!("127.0.0.1:{port}"))
                .env("DATABASE_URL", &db.url)
                .env("REDIS_URL", &spec.redis_url)
                .env("RAMPART_TRUSTED_PROXIES", "127.0.0.1/32")
                .env("RAMPART_JWT_SECRET", SECRET)
                .env("RAMPART_DEMO_PASSWORD", PASSWORD)
                .env("RAMPART_PASSWORD_COST", "fast")
                .env("RAMPART_REDIS_FAILURE_MODE", mode)
                .env("RAMPART_INSTANCES", "3")
                .env("RAMPART_REDIS_PREFIX", &prefix)
                .env(
                    "RAMPART_REDIS_TIMEOUT_MS",
                    spec.redis_timeout_ms.to_string(),
                )
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out);
            if let Some(path) = &config {
                cmd.env("RAMPART_CONFIG", path);
            }
            let child = cmd.spawn().expect("spawn rampart-erp");
            fleet.instances.push(Instance {
                name: char::from(b'A' + u8::try_from(i).unwrap()),
                port,
                mode,
                child,
                log,
            });
            if i == 0 {
                fleet.wait_live(0).await;
            }
        }
        fleet.wait_live(1).await;
        fleet.wait_live(2).await;
        fleet.db = Some(db);
        fleet
    }

    async fn wait_live(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let port = self.instances[i].port;
            if let Ok(r) = self
                .http
                .send(port, Method::GET, "/health/live/", &[], None)
                .await
                && r.status == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.instances[i].child.try_wait() {
                panic!(
                    "instance {} exited ({status}):\n{}",
                    self.instances[i].name,
                    self.instances[i].log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "instance {} not live within 60 s:\n{}",
                self.instances[i].name,
                self.instances[i].log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn port(&self, i: usize) -> u16 {
        self.instances[i % 3].port
    }

    async fn token(&self, tenant: &str, user: &str) -> String {
        let r = self
            .http
            .send(
                self.port(0),
                Method::POST,
                "/api/v1/auth/token",
                &[],
                Some((
                    "application/json",
                    json!({"tenant": tenant, "username": user, "password": PASSWORD}).to_string(),
                )),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["access_token"].as_str().unwrap().to_owned()
    }

    async fn account(&self, token: &str, code: &str) -> String {
        let r = self
            .http
            .send(
                self.port(0),
                Method::GET,
                "/api/v1/accounts?limit=200",
                &[bearer(token)],
                None,
            )
            .await
            .unwrap();
        r.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["code"] == code)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn trial_balance(&self, i: usize, token: &str) -> Result<i64, String> {
        let r = self
            .http
            .send(
                self.port(i),
                Method::GET,
                "/api/v1/reports/trial-balance",
                &[bearer(token)],
                None,
            )
            .await?;
        if r.status != 200 {
            return Err(format!("status {}", r.status));
        }
        r.json()["total_debit"]
            .as_i64()
            .ok_or_else(|| "no total".to_owned())
    }

    async fn post_entry(
        &self,
        i: usize,
        token: &str,
        key: &str,
        accounts: &(String, String),
        amount: i64,
    ) -> Result<Reply, String> {
        let body = json!({
            "date": "2026-03-01",
            "description": key,
            "lines": [
                {"account_id": accounts.0, "debit": amount},
                {"account_id": accounts.1, "credit": amount}
            ]
        });
        self.http
            .send(
                self.port(i),
                Method::POST,
                "/api/v1/journal-entries",
                &[bearer(token), ("idempotency-key", key.to_owned())],
                Some(("application/json", body.to_string())),
            )
            .await
    }

    /// The sum of a counter in instance `i`'s `/metrics`, over all label sets.
    async fn metric(&self, i: usize, name: &str) -> f64 {
        let r = self
            .http
            .send(self.port(i), Method::GET, "/metrics", &[], None)
            .await
            .unwrap();
        String::from_utf8_lossy(&r.body)
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn stop(mut self) {
        self.instances.clear();
        if let Some(db) = self.db.take() {
            db.drop_db().await;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// Scenario 1: one login quota and one API quota for the whole fleet.
async fn global_limits(fleet: &Fleet, label: &str) {
    let sem = Arc::new(Semaphore::new(128));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..1000 {
        let http = fleet.http.clone();
        let port = fleet.port(i);
        let sem = sem.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            http.send(
                port,
                Method::POST,
                "/accounts/login/",
                &[from_client("198.51.100.7")],
                Some((
                    "application/x-www-form-urlencoded",
                    "tenant=acme&username=user&password=wrong".to_owned(),
                )),
            )
            .await
        });
    }
    let (mut allowed, mut limited, mut failed) = (0, 0, Vec::new());
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(r) if r.status == 429 => limited += 1,
            Ok(r) if r.status.is_server_error() => failed.push(r.status),
            Ok(_) => allowed += 1,
            Err(e) => panic!("login attempt failed: {e}"),
        }
    }
    let took = started.elapsed();
    println!(
        "[{label}] 1000 concurrent logins over 3 instances in {took:?}: {allowed} allowed, {limited} limited"
    );
    assert!(failed.is_empty(), "5xx: {failed:?}");
    // GCRA at 5/minute: a burst of 5, then one more every 12 s (only on a very slow run).
    let refilled = took.as_secs() / 12;
    assert_eq!(
        allowed,
        5 + refilled,
        "one 5/minute quota for the whole fleet"
    );

    let token = fleet.token("acme", "user").await;
    let mut tasks = JoinSet::new();
    for i in 0..300 {
        let http = fleet.http.clone();
        let port = fleet.port(i);
        let token = token.clone();
        let sem = sem.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            http.send(
                port,
                Method::GET,
                "/api/v1/users/me",
                &[bearer(&token)],
                None,
            )
            .await
        });
    }
    let (mut ok, mut limited) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap().expect("API call");
        match r.status.as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected {other}: {r:?}"),
        }
    }
    println!(
        "[{label}] 300 API calls of one user over 3 instances: {ok} allowed, {limited} limited"
    );
    assert_eq!(ok, 100, "one 100/hour quota per user for the whole fleet");
}

/// Scenario 2: post on A; B's and C's cached trial balances follow.
async fn cache_coherence(fleet: &Fleet, label: &str, trials: usize) {
    let token = fleet.token("globex", "admin").await;
    let accounts = (
        fleet.account(&token, "1000").await,
        fleet.account(&token, "4000").await,
    );
    let mut expected = fleet.trial_balance(0, &token).await.unwrap();
    let mut lags = Vec::new();
    for trial in 0..trials {
        // B and C hold the current report in their caches.
        for i in [1, 2] {
            assert_eq!(fleet.trial_balance(i, &token).await.unwrap(), expected);
        }
        let key = format!("coherence-{label}-{trial}");
        let r = fleet
            .post_entry(0, &token, &key, &accounts, 10)
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{r:?}");
        expected += 10;
        let posted = Instant::now();
        // B and C are polled concurrently, each lag measured on its own.
        let poll = |i: usize| {
            let token = &token;
            async move {
                loop {
                    let seen = fleet.trial_balance(i, token).await.unwrap();
                    if seen == expected {
                        return posted.elapsed();
                    }
                    assert!(
                        posted.elapsed() < Duration::from_secs(2),
                        "instance {i} still serves {seen}, expected {expected}"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        let (b, c) = tokio::join!(poll(1), poll(2));
        lags.extend([b, c]);
    }
    lags.sort();
    let (p50, p99) = (percentile(&lags, 50.0), percentile(&lags, 99.0));
    println!(
        "[{label}] cache coherence over {} reads after a post on A: p50 {p50:?}, p99 {p99:?}, max {:?}",
        lags.len(),
        lags[lags.len() - 1]
    );
    assert!(
        p99 <= Duration::from_millis(100),
        "p99 {p99:?} above the 100 ms bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_standalone_redis_global_limits_and_cache_coherence() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let fleet = Fleet::start(FleetSpec {
        redis_url: redis.url(),
        modes: ["local_fallback"; 3],
        config: Some(&limits_config()),
        redis_timeout_ms: 2000,
    })
    .await;
    global_limits(&fleet, "standalone").await;
    cache_coherence(&fleet, "standalone", 50).await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_cluster_global_limits_coherence_and_a_dead_master() {
    let _serial = SERIAL.lock().await;
    let mut cluster = RedisCluster::start();
    let fleet = Fleet::start(FleetSpec {
        redis_url: cluster.urls().join(","),
        modes: ["closed"; 3],
        config: Some(&limits_config()),
        redis_timeout_ms: 2000,
    })
    .await;
    global_limits(&fleet, "cluster").await;
    cache_coherence(&fleet, "cluster", 50).await;

    // Anonymous API calls are limited per client IP: which master holds each client's
    // key decides what a dead master does to it.
    let clients: Vec<String> = (1..=24).map(|i| format!("203.0.113.{i}")).collect();
    let me = |i: usize, ip: &str| {
        let http = fleet.http.clone();
        let port = fleet.port(i);
        let ip = ip.to_owned();
        async move {
            http.send(
                port,
                Method::GET,
                "/api/v1/users/me",
                &[from_client(&ip)],
                None,
            )
            .await
            .unwrap()
        }
    };
    for ip in &clients {
        assert_eq!(me(0, ip).await.status, 401, "{ip}");
    }
    let dead_port = cluster.ports()[0];
    let keys = tokio::task::block_in_place(|| {
        Command::new("redis-cli")
            .args([
                "-p",
                &dead_port.to_string(),
                "--scan",
                "--pattern",
                "*:api:*",
            ])
            .output()
            .unwrap()
    });
    let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
    let on_dead = |ip: &str| keys.lines().any(|k| k.contains(&format!(":{ip}}}")));
    let dead = clients.iter().filter(|ip| on_dead(ip)).count();
    assert!(
        dead > 0 && dead < clients.len(),
        "{dead} clients on the dead master"
    );

    tokio::task::block_in_place(|| cluster.stop_node(0));
    let (mut unavailable, mut served) = (0, 0);
    for round in 0..2 {
        for (n, ip) in clients.iter().enumerate() {
            let r = me(n + round, ip).await;
            if on_dead(ip) {
                assert_eq!(r.status, 503, "{ip} (dead master, closed) round {round}");
                assert!(r.is_json_error(), "{r:?}");
                unavailable += 1;
            } else {
                assert_eq!(r.status, 401, "{ip} (live master) round {round}: {r:?}");
                served += 1;
            }
        }
    }
    println!(
        "[cluster] one master down: {unavailable} calls in its slots got the failure mode (503), {served} on the live masters were served"
    );
    fleet.stop().await;
}

/// Scenarios 3 and 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_redis_loss_under_load_failure_modes_recovery_and_no_data_loss() {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start();
    let fleet = Arc::new(
        Fleet::start(FleetSpec {
            redis_url: redis.url(),
            modes: ["local_fallback", "open", "closed"],
            config: Some(&load_config()),
            redis_timeout_ms: 50,
        })
        .await,
    );
    let token = fleet.token("acme", "user").await;
    let accounts = (
        fleet.account(&token, "1000").await,
        fleet.account(&token, "4000").await,
    );

    // The load: entries with idempotency keys, each retried on the next instance until
    // it is accepted; and reads on every instance. 5xx are recorded per instance.
    let stop = Arc::new(AtomicBool::new(false));
    let fivexx: Arc<std::sync::Mutex<Vec<(char, u16, bool)>>> = Arc::default();
    let posted = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (fleet, token, accounts) = (fleet.clone(), token.clone(), accounts.clone());
        let (stop, fivexx, posted) = (stop.clone(), fivexx.clone(), posted.clone());
        tokio::spawn(async move {
            let mut keys = Vec::new();
            for n in 0..400 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let key = format!("loss-{n}");
                let deadline = Instant::now() + Duration::from_secs(15);
                let mut attempt = n;
                loop {
                    assert!(Instant::now() < deadline, "{key} never accepted");
                    let i = attempt % 3;
                    match fleet.post_entry(i, &token, &key, &accounts, 1).await {
                        Ok(r) if r.status == 201 => break,
                        Ok(r) if r.status.is_server_error() => {
                            let name = fleet.instances[i].name;
                            fivexx.lock().unwrap().push((
                                name,
                                r.status.as_u16(),
                                r.is_json_error(),
                            ));
                        }
                        Ok(r) if r.status == 409 => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        Ok(r) => panic!("{key} on {i}: unexpected {r:?}"),
                        Err(e) => panic!("{key} on {i}: {e}"),
                    }
                    attempt += 1;
                }
                posted.fetch_add(1, Ordering::SeqCst);
                keys.push(key);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            keys
        })
    };
    let reader = {
        let (fleet, token) = (fleet.clone(), token.clone());
        let (stop, fivexx) = (stop.clone(), fivexx.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            for n in 0..5000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let i = n % 3;
                let path = if n % 2 == 0 {
                    "/api/v1/users/me"
                } else {
                    "/api/v1/reports/trial-balance"
                };
                let r = fleet
                    .http
                    .send(fleet.port(i), Method::GET, path, &[bearer(&token)], None)
                    .await
                    .expect("read");
                if r.status.is_server_error() {
                    let name = fleet.instances[i].name;
                    fivexx
                        .lock()
                        .unwrap()
                        .push((name, r.status.as_u16(), r.is_json_error()));
                }
                reads += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            reads
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| redis.stop());
    let stopped_at = posted.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // While Redis is down: A enforces 5/minute divided by 3 on its own, B allows, C is
    // closed with a JSON 503.
    let login = |i: usize, ip: &'static str| {
        let fleet = fleet.clone();
        async move {
            fleet
                .http
                .send(
                    fleet.port(i),
                    Method::POST,
                    "/accounts/login/",
                    &[from_client(ip)],
                    Some((
                        "application/x-www-form-urlencoded",
                        "tenant=acme&username=user&password=wrong".to_owned(),
                    )),
                )
                .await
                .unwrap()
        }
    };
    let mut a_allowed = 0;
    for _ in 0..12 {
        let r = login(0, "198.51.100.21").await;
        assert!(!r.status.is_server_error(), "A: {r:?}");
        if r.status != 429 {
            a_allowed += 1;
        }
    }
    let mut b_allowed = 0;
    for _ in 0..12 {
        let r = login(1, "198.51.100.22").await;
        assert!(!r.status.is_server_error(), "B: {r:?}");
        if r.status != 429 {
            b_allowed += 1;
        }
    }
    let c = login(2, "198.51.100.23").await;
    println!(
        "[redis down] A (local_fallback) allowed {a_allowed}/12 logins, B (open) {b_allowed}/12, C (closed) answered {}",
        c.status
    );
    assert!(
        (1..=2).contains(&a_allowed),
        "local fallback enforces 5/minute / 3 instances"
    );
    assert_eq!(b_allowed, 12, "open mode allows");
    assert_eq!(c.status, 503);
    assert!(c.is_json_error(), "{c:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Restart: every instance decides with Redis again within 2 s, unrestarted.
    tokio::task::block_in_place(|| redis.restart());
    let restarted = Instant::now();
    let mut recovered = [None; 3];
    while recovered.iter().any(Option::is_none) {
        assert!(
            restarted.elapsed() < Duration::from_secs(2),
            "not recovered within 2 s: {recovered:?}"
        );
        for (i, slot) in recovered.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            // Recovered when a limited call neither fails nor counts a backend error.
            let before = fleet
                .metric(i, "rampart_rate_limit_backend_errors_total")
                .await;
            let r = fleet
                .http
                .send(
                    fleet.port(i),
                    Method::GET,
                    "/api/v1/users/me",
                    &[bearer(&token)],
                    None,
                )
                .await
                .unwrap();
            let after = fleet
                .metric(i, "rampart_rate_limit_backend_errors_total")
                .await;
            if r.status == 200 && after == before {
                *slot = Some(restarted.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("[redis restarted] recovery per instance: {recovered:?}");
    // The caches are coherent again too.
    let before = fleet.trial_balance(1, &token).await.unwrap();
    let _ = fleet.trial_balance(1, &token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await; // the subscriber's heartbeat
    let r = fleet
        .post_entry(0, &token, "after-restart", &accounts, 1000)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let t = Instant::now();
    loop {
        // The writer keeps posting entries of 1: only this entry's 1000 proves it.
        let seen = fleet.trial_balance(1, &token).await.unwrap();
        if seen >= before + 1000 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "B's cache missed the invalidation"
        );
    }

    stop.store(true, Ordering::SeqCst);
    let keys = writer.await.unwrap();
    let reads = reader.await.unwrap();
    let fivexx = fivexx.lock().unwrap().clone();
    println!(
        "[load] {} entries posted ({} before Redis stopped), {reads} reads, {} JSON 503s from C (closed), other 5xx: {}",
        keys.len(),
        stopped_at,
        fivexx.iter().filter(|f| **f == ('C', 503, true)).count(),
        fivexx.iter().filter(|f| **f != ('C', 503, true)).count(),
    );
    for (name, status, json) in &fivexx {
        assert!(
            *name == 'C' && *status == 503 && *json,
            "only C (closed) may answer 5xx, and only a JSON 503: {name} {status}"
        );
    }

    // Scenario 5: every entry exactly once.
    let db = rampart_erp::Db::connect(&fleet.db.as_ref().unwrap().url)
        .await
        .unwrap();
    let rows = sqlx::query("SELECT description FROM journal_entries WHERE tenant_id = 'acme'")
        .fetch_all(db.pool())
        .await
        .unwrap();
    use sqlx::Row;
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for row in rows {
        *counts
            .entry(row.get::<String, _>("description"))
            .or_default() += 1;
    }
    for key in &keys {
        assert_eq!(counts.get(key), Some(&1), "{key} must exist exactly once");
    }
    let extra = counts.keys().filter(|k| k.starts_with("loss-")).count();
    assert_eq!(extra, keys.len(), "no entry the client does not know of");
    println!("[no data loss] {} entries, each exactly once", keys.len());
    db.close().await;
    match Arc::try_unwrap(fleet) {
        Ok(f) => f.stop().await,
        Err(_) => panic!("the load tasks are done"),
    }
}
