//! Test support for tower-rampart: real Redis processes for tests.
//!
//! - [`RedisServer`] starts a private `redis-server` on a free loopback port with no
//!   persistence, hands out its URL, and can be [stopped](RedisServer::stop) and
//!   [restarted](RedisServer::restart) on the same port for fault tests.
//! - [`RedisCluster`] starts a real 3-master Redis Cluster (`redis-server
//!   --cluster-enabled yes` + `redis-cli --cluster create`) on free ports.
//! - [`redis_url`] gives standalone tests `REDIS_URL` when it is set, else a private
//!   server.
//!
//! Every process is killed when its handle is dropped, also when the test panics. When
//! `redis-server` is not installed, starting one panics with a message that says what to
//! install: a test that needs Redis never silently passes.
//!
//! # Example
//!
//! ```no_run
//! use rampart_test_support::RedisServer;
//!
//! let mut server = RedisServer::start();
//! let url = server.url(); // redis://127.0.0.1:PORT/
//! server.stop();          // connections now fail
//! server.restart();       // same port, empty data set
//! # let _ = url;
//! ```

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU16, Ordering},
    thread,
    time::{Duration, Instant},
};

const INSTALL_HINT: &str = "install Redis so that `redis-server` and `redis-cli` are on PATH: \
`sudo apt-get install redis-server` (Debian/Ubuntu), `sudo dnf install redis` (Fedora) or \
`brew install redis` (macOS); `.ci/run` installs it automatically";

/// Whether `redis-server` can be run on this machine.
pub fn redis_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn require_redis() {
    assert!(
        redis_available(),
        "this test needs a real Redis: {INSTALL_HINT}"
    );
}

/// Picks a port that is free now (and whose cluster-bus port, +10000, is free too).
///
/// Ports are handed out from a per-process counter so parallel tests in one process never
/// race for the same port, and checked by binding so other processes are avoided. Both
/// the port and its bus port stay below Linux's ephemeral range (32768+), so a port
/// checked free here cannot be taken meanwhile by an outgoing connection.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 10_000 + u16::try_from(std::process::id() % 1_200).unwrap_or(0) * 10;
    for _ in 0..12_000 {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 12_000;
        let port = base.wrapping_add(offset);
        if !(10_000..22_000).contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port found in 10000..22000");
}

/// A private `redis-server` process on a loopback port.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    external_url: Option<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a private standalone server with no persistence.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not installed (the message says what to install) or does not
    /// answer `PING` within 10 s.
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Starts a private server with extra `redis-server` arguments.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn start_with_args(args: &[&str]) -> Self {
        require_redis();
        let mut last_err = String::new();
        for _ in 0..5 {
            let mut server = Self {
                port: free_port(),
                external_url: None,
                child: None,
                dir: tempfile::tempdir().expect("create a temporary directory for redis-server"),
                extra_args: args.iter().map(|s| (*s).to_owned()).collect(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("redis-server did not start: {last_err}");
    }

    /// `REDIS_URL` when set (an external server: it cannot be stopped), else `None`.
    pub fn external() -> Option<Self> {
        let url = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty())?;
        Some(Self {
            port: 0,
            external_url: Some(url),
            child: None,
            dir: tempfile::tempdir().expect("temporary directory"),
            extra_args: Vec::new(),
        })
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(self.dir.path())
        .args(["--protected-mode", "no", "--loglevel", "warning"])
        .args(&self.extra_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}; {INSTALL_HINT}"))?;
        self.child = Some(child);
        if wait_for_ping(self.port, Duration::from_secs(10)) {
            Ok(())
        } else {
            self.kill();
            Err(format!("no PONG on port {port} within 10 s"))
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The port the server listens on (0 for an external `REDIS_URL`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection URL, `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        self.external_url
            .clone()
            .unwrap_or_else(|| format!("redis://127.0.0.1:{}/", self.port))
    }

    /// The server's working directory (where a cluster node keeps `nodes.conf`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the server (SIGKILL, as a crash would); connections start failing.
    ///
    /// # Panics
    ///
    /// For an external `REDIS_URL` server, which a test cannot stop.
    pub fn stop(&mut self) {
        assert!(
            self.external_url.is_none(),
            "cannot stop an external REDIS_URL server; use RedisServer::start()"
        );
        self.kill();
    }

    /// Starts the server again on the same port (with an empty data set).
    ///
    /// # Panics
    ///
    /// For an external server, or if it does not come back within 10 s.
    pub fn restart(&mut self) {
        assert!(
            self.external_url.is_none(),
            "cannot restart an external REDIS_URL server"
        );
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("redis-server did not restart: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A standalone server for a test: `REDIS_URL` when set, else a private server.
///
/// Returns the handle (keep it alive for the test) and the URL.
///
/// # Panics
///
/// When no `REDIS_URL` is set and `redis-server` is not installed.
pub fn redis_url() -> (RedisServer, String) {
    let server = RedisServer::external().unwrap_or_else(RedisServer::start);
    let url = server.url();
    (server, url)
}

fn wait_for_ping(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ping(port) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Sends `PING` over a fresh connection; `true` on `+PONG`.
pub fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// A real 3-master Redis Cluster on free loopback ports, no replicas.
///
/// Nodes run with `cluster-require-full-coverage no`, so stopping one master fails only
/// the keys in its slots.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three masters and joins them with `redis-cli --cluster create`.
    ///
    /// # Panics
    ///
    /// If Redis is not installed, or the cluster does not reach `cluster_state:ok` in 30 s.
    pub fn start() -> Self {
        require_redis();
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--cluster-require-full-coverage",
            "no",
        ];
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_with_args(&args))
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run redis-cli: {e}; {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self.nodes.iter().all(|n| {
                Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not reach cluster_state:ok"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node URLs (`redis://127.0.0.1:PORT/`), one per master.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// Kills master `i` (its slots become unavailable).
    pub fn stop_node(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Restarts master `i` from its `nodes.conf`; it rejoins with its slots.
    ///
    /// # Panics
    ///
    /// If the cluster is not healthy again within 30 s.
    pub fn restart_node(&mut self, i: usize) {
        self.nodes[i].restart();
        self.wait_ok(Duration::from_secs(30));
    }

    /// The port of the master serving `slot`, read from `CLUSTER NODES` of a live node.
    pub fn port_for_slot(&self, slot: u16) -> Option<u16> {
        let text = self.nodes.iter().find_map(|n| {
            let out = Command::new("redis-cli")
                .args(["-p", &n.port.to_string(), "cluster", "nodes"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })?;
        for line in text.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 9 || !cols[2].contains("master") {
                continue;
            }
            let port = cols[1]
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            for range in &cols[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>())
                    && (a..=b).contains(&slot)
                {
                    return Some(port);
                }
            }
        }
        None
    }
}
