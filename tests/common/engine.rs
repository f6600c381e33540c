//! Cluster engines for the end-to-end tests: a real `redis-server` on a
//! free loopback port, with its files in a temporary directory, that a test
//! can kill and start again on the same port and files.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::browser::free_port;
use super::{HubProcess, PATIENCE};

/// Debian installs nats-server in /usr/sbin, which a user's PATH may lack.
fn nats_server() -> &'static str {
    if std::path::Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    }
}

/// A number no other call in this process returned.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The engines a cluster runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Nats,
}

pub struct Engine {
    kind: Kind,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Whether the engine's server is installed. `.ci/run` installs both, so
/// under `CI` a missing one fails the test; elsewhere the test says so and
/// skips.
pub fn installed(kind: Kind) -> bool {
    let found = match kind {
        Kind::Redis => Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok(),
        Kind::Nats => Command::new(nats_server())
            .arg("--version")
            .output()
            .is_ok(),
    };
    if !found {
        super::skip(&format!(
            "needs {kind:?}'s server (apt-get install redis-server nats-server)"
        ));
    }
    found
}

impl Engine {
    /// Starts an engine with durable writes: Redis with `appendonly yes`
    /// and `appendfsync always`. `None` (the test skips) when its server is
    /// not installed outside CI.
    pub fn start(kind: Kind) -> Option<Engine> {
        if !installed(kind) {
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("herald-engine-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).expect("engine dir");
        let mut engine = Engine {
            kind,
            port: free_port(),
            dir,
            child: None,
        };
        engine.restart();
        Some(engine)
    }

    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// Starts the engine again on the same port and files (after
    /// [`Engine::kill9`]); returns once it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the engine is running");
        let child = match self.kind {
            Kind::Redis => Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port"])
                .arg(self.port.to_string())
                .arg("--dir")
                .arg(&self.dir)
                .args([
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                    "--protected-mode",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server (apt-get install redis-server)"),
            Kind::Nats => Command::new(nats_server())
                .args(["-a", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .args(["-js", "-sd"])
                .arg(self.dir.join("jetstream"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nats-server (apt-get install nats-server)"),
        };
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.ping() {
                return;
            }
            assert!(Instant::now() < deadline, "{:?} did not start", self.kind);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True when the engine answers a ping (and has loaded its data).
    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        match self.kind {
            Kind::Redis => {
                if s.write_all(b"PING\r\n").is_err() {
                    return false;
                }
                let mut buf = [0u8; 64];
                matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
            }
            // NATS greets every client with INFO once it serves.
            Kind::Nats => {
                let mut buf = [0u8; 4];
                matches!(s.read_exact(&mut buf), Ok(()) if &buf == b"INFO")
            }
        }
    }

    /// `kill -9`: what was acknowledged is on disk, nothing else is done.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
        }
    }

    /// A hub node on this engine without a data directory (`--memory`): it
    /// keeps no copy of the log and reads cold events from the engine.
    pub fn diskless_node(&self, settings: &[&str]) -> HubProcess {
        let url = self.url();
        HubProcess::spawn(None, settings, &["--cluster", &url], &[])
            .unwrap_or_else(|logs| panic!("the node did not start:\n{logs}"))
    }

    /// A hub node on this engine whose files may grow to `bytes` at most
    /// (`ulimit -f`): its copy of the log fails as on a full disk.
    pub fn node_with_file_limit(&self, settings: &[&str], bytes: u64) -> HubProcess {
        let dir = self.dir.join(format!("node-{}", unique()));
        let url = self.url();
        HubProcess::spawn_with_file_limit(&dir, settings, &["--cluster", &url], bytes)
            .unwrap_or_else(|logs| panic!("the node did not start:\n{logs}"))
    }

    /// A hub node on this engine, with its own data directory.
    pub fn node(&self, settings: &[&str]) -> HubProcess {
        let dir = self.dir.join(format!("node-{}", unique()));
        let url = self.url();
        HubProcess::spawn(Some(&dir), settings, &["--cluster", &url], &[])
            .unwrap_or_else(|logs| panic!("the node did not start:\n{logs}"))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
