//! Processes a test runs itself: a Redis of its own (plain or behind TLS) and the server binary
//! as deployed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::TestApp;

/// A loopback port where nothing listens (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A test certificate authority and a certificate it signed for 127.0.0.1 (see
/// `tests/fixtures/README.md`).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A Redis server of the test's own, so that stopping it disturbs no other test. Its stream is
/// written to an append-only file synced on every write, so a crash loses nothing acknowledged.
pub struct OwnRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Only TLS connections (`rediss://`), with the fixtures' certificate.
    tls: bool,
    /// A Redis Cluster of this one node, serving every slot.
    cluster: bool,
}

impl OwnRedis {
    pub fn start() -> Self {
        Self::start_with(false, false)
    }

    /// Listening for TLS only, as managed Redis services with encryption in transit do.
    pub fn start_tls() -> Self {
        Self::start_with(true, false)
    }

    /// A Redis Cluster of one primary (connect with `KEYMETER_REDIS_CLUSTER=true`): a cluster's
    /// own failures (slots no node serves) can be made without disturbing other tests.
    pub fn start_cluster_of_one() -> Self {
        let redis = Self::start_with(false, true);
        redis.cli(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
        redis.wait_for_cluster_state("ok");
        redis
    }

    fn start_with(tls: bool, cluster: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("keymeter-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self { port: free_port(), dir, child: None, tls, cluster };
        redis.restart();
        redis
    }

    /// Waits until the cluster says `state` (`ok`, `fail`).
    pub fn wait_for_cluster_state(&self, state: &str) {
        let wanted = format!("cluster_state:{state}");
        for _ in 0..100 {
            if self.cli(&["CLUSTER", "INFO"]).is_some_and(|info| info.contains(&wanted)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster did not reach {wanted}");
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no", "--tls-cert-file"])
                .arg(fixture("smtp-test-server.pem"))
                .arg("--tls-key-file")
                .arg(fixture("smtp-test-server.key"));
        } else {
            cmd.args(["--port", &port]);
        }
        if self.cluster {
            // The cluster bus would be the port + 10,000, which may be taken.
            cmd.args(["--cluster-enabled", "yes", "--cluster-port", &free_port().to_string()])
                .arg("--cluster-config-file")
                .arg(self.dir.join("nodes.conf"));
        }
        let child = cmd
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/setup.sh)");
        self.child = Some(child);
        for _ in 0..100 {
            if self.cli(&["PING"]).is_some_and(|out| out.contains("PONG")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Hangs it (SIGSTOP: connections stay open, nothing is read or answered), or lets it go on
    /// (SIGCONT), when it runs what it was sent meanwhile.
    pub fn hang(&self, hung: bool) {
        let child = self.child.as_ref().expect("a running redis-server");
        let signal = if hung { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").arg(signal).arg(child.id().to_string()).status().expect("kill");
        assert!(status.success(), "kill {signal} redis-server");
    }

    /// Crashes it (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if self.tls {
            cmd.arg("--tls").arg("--cacert").arg(fixture("smtp-test-ca.pem"));
        }
        let out = cmd.args(args).output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server process, as deployed.
pub struct ServerProcess {
    pub base: String,
    child: Child,
}

impl ServerProcess {
    /// The `keymeter serve` command against the test's database and `redis_url`, with `extra`
    /// environment, not started yet.
    pub fn command(app: &TestApp, redis_url: &str, port: u16, extra: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keymeter"));
        cmd.arg("serve")
            .env("DATABASE_URL", &app.config.database_url)
            .env("REDIS_URL", redis_url)
            .env("KEYMETER_LISTEN", format!("127.0.0.1:{port}"))
            .env("KEYMETER_REDIS_NAMESPACE", &app.db_name)
            .env("KEYMETER_MAIL_DIR", std::env::temp_dir().join(format!("keymeter-mail-{}", app.db_name)))
            .env("KEYMETER_INSTANCES", "2")
            .env("KEYMETER_REDIS_TIMEOUT_MS", "250")
            .env("KEYMETER_DEMO_TRAFFIC", "false")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the server and waits until it answers.
    pub async fn start(app: &TestApp, redis_url: &str, extra: &[(&str, &str)]) -> Self {
        let port = free_port();
        // Each server's log next to the reliability report, for when a scenario fails.
        let log = std::env::var("KEYMETER_RELIABILITY_REPORT").ok().map(|report| format!("{report}.server-{port}.log"));
        Self::start_on(port, app, redis_url, extra, log.map(PathBuf::from).as_deref()).await
    }

    /// [`Self::start`], with its log (as `RUST_LOG` in `extra` lets through) written to `log`.
    pub async fn start_logged(app: &TestApp, redis_url: &str, extra: &[(&str, &str)], log: &Path) -> Self {
        Self::start_on(free_port(), app, redis_url, extra, Some(log)).await
    }

    async fn start_on(port: u16, app: &TestApp, redis_url: &str, extra: &[(&str, &str)], log: Option<&Path>) -> Self {
        let mut cmd = Self::command(app, redis_url, port, extra);
        let log = log.and_then(|path| std::fs::File::create(path).ok());
        cmd.stderr(log.map_or_else(Stdio::null, Stdio::from));
        let base = format!("http://127.0.0.1:{port}");
        // Owned at once, so the process is killed and reaped whatever happens next.
        let server = Self { base: base.clone(), child: cmd.spawn().expect("start the server") };
        for _ in 0..200 {
            if reqwest::get(format!("{base}/healthz")).await.is_ok_and(|r| r.status().is_success()) {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not start");
    }

    /// Sends SIGTERM, as a service manager stopping it does.
    pub fn terminate(&self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -TERM");
    }

    /// Whether the process ends within `limit` (polled).
    pub async fn exits_within(&mut self, limit: Duration) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}
