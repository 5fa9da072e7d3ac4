//! A Redis Cluster of three primaries of a test's own, to stop, hang and restart nodes of
//! without disturbing the shared one (`KEYMETER_TEST_REDIS_CLUSTER`). Started with
//! `scripts/services.sh cluster-start`; used by the services and the server tests.

#![allow(dead_code)] // Each test crate uses part of it.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct OwnCluster {
    dir: PathBuf,
    pub ports: Vec<u16>,
}

impl OwnCluster {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("keymeter-cluster-{}", uuid::Uuid::new_v4().simple()));
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        // Made first, so that nodes started by a failed start are stopped too.
        let cluster = Self { dir, ports };
        let started = Command::new("bash")
            .arg(Self::script())
            .arg("cluster-start")
            .arg(&cluster.dir)
            .args(cluster.ports.iter().map(u16::to_string))
            .status()
            .expect("run services.sh");
        assert!(started.success(), "a Redis Cluster on {:?}", cluster.ports);
        cluster
    }

    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh")
    }

    /// Every node as a seed, as `REDIS_URL` takes them: a node killed by a test may be the one
    /// a new connection would otherwise have to start from.
    pub fn url(&self) -> String {
        self.ports.iter().map(|port| format!("redis://127.0.0.1:{port}")).collect::<Vec<_>>().join(",")
    }

    /// The port of the primary serving `key`'s hash slot (the others answer MOVED for it).
    pub fn primary_of(&self, key: &str) -> u16 {
        let serves = |port: &u16| {
            let out = Command::new("redis-cli").args(["-p", &port.to_string(), "TYPE", key]).output();
            out.is_ok_and(|out| !String::from_utf8_lossy(&out.stdout).contains("MOVED"))
        };
        *self.ports.iter().find(|port| serves(port)).expect("a primary serves the key")
    }

    /// Runs a command on every node (a setting such as `CONFIG SET …` is per node).
    pub fn on_every_node(&self, args: &[&str]) {
        for port in &self.ports {
            let ran = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output();
            assert!(ran.is_ok_and(|out| out.status.success()), "redis-cli {args:?} on {port}");
        }
    }

    /// Kills a node as a crash would.
    pub fn kill(&self, port: u16) {
        let pidfile = self.node_dir(port).join("redis.pid");
        let pid = std::fs::read_to_string(&pidfile).expect("the node's pid");
        assert!(Command::new("kill").args(["-9", pid.trim()]).status().expect("kill").success());
        // Gone with it: `services.sh stop` must not signal whatever process gets the pid next.
        let _ = std::fs::remove_file(pidfile);
    }

    /// Stops (`hung`) or resumes a node: stopped, it keeps its connections open and answers
    /// nothing, as a frozen machine does.
    pub fn hang(&self, port: u16, hung: bool) {
        let signal = if hung { "-STOP" } else { "-CONT" };
        if let Ok(pid) = std::fs::read_to_string(self.node_dir(port).join("redis.pid")) {
            let _ = Command::new("kill").args([signal, pid.trim()]).status();
        }
    }

    /// Starts a node again as services.sh started it, with the cluster's view it saved.
    pub fn restart(&self, port: u16) {
        let started = Command::new("redis-server").arg(self.node_dir(port).join("redis.conf")).status();
        assert!(started.expect("redis-server").success());
    }

    fn node_dir(&self, port: u16) -> PathBuf {
        self.dir.join(format!("cluster-{port}"))
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for &port in &self.ports {
            self.hang(port, false);
        }
        let _ = Command::new("bash").arg(Self::script()).arg("stop").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}
