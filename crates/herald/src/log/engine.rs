//! What the clustered logs share, whatever their engine: options, start
//! errors, the connection state `/readyz` and metrics report, and the
//! reconnect backoff.

// Without both engine clients, some of what they share goes unused.
#![cfg_attr(not(all(feature = "redis", feature = "nats")), allow(dead_code))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::{EngineStatus, LogError};

/// Records one NATS message holds at most: the id step between messages
/// (see `log/nats`).
pub(crate) const NATS_MAX_RECORDS: usize = 1024;

/// Whether this build holds the client of a cluster engine (`redis`,
/// `nats`): each is a cargo feature of the `herald` crate, both on in the
/// `herald` binary.
pub(crate) fn built_in(engine: &str) -> bool {
    (engine == "redis" && cfg!(feature = "redis")) || (engine == "nats" && cfg!(feature = "nats"))
}

/// What a clustered log needs besides history retention.
#[derive(Debug, Clone)]
pub(crate) struct ClusterOptions {
    /// Names the engine's keys or stream, so several clusters can share
    /// one engine.
    pub name: String,
    /// Most entries the engine keeps (0: no limit but age).
    pub max_log_events: u64,
    /// How long a start waits for the engine before giving up.
    pub connect_timeout: Duration,
    /// How long a publish waits for its node to apply its own events.
    pub apply_timeout: Duration,
    /// This node's name (`/v1/stats`, presence).
    pub node: String,
    /// Where this node keeps its copy of the log (`data_dir`; none with
    /// `memory = true`: cold events are then read from the engine).
    pub data_dir: Option<std::path::PathBuf>,
}

/// Why a clustered log could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL cannot be read (the URL, and why).
    #[error("cluster.url {0:?} is not valid: {1}")]
    BadUrl(String, String),
    /// The engine did not answer in time.
    #[error("could not reach the cluster engine at {url} within {secs} s: {last}")]
    Unreachable {
        /// The engine's URL.
        url: String,
        /// How long the hub tried.
        secs: u64,
        /// The last error met.
        last: String,
    },
    #[error("the cluster log holds an entry Herald cannot read ({id}): {reason}")]
    /// The engine holds a record Herald cannot read.
    Corrupt {
        /// The record's id in the engine.
        id: String,
        /// Why it cannot be read.
        reason: String,
    },
}

/// The engine's connection state, for `/readyz`, metrics and logs.
#[derive(Default)]
pub(crate) struct Status {
    /// Why the tail is not reading now; `None` while it is.
    tail: Mutex<Option<String>>,
    /// Why the last append failed; `None` once one succeeds.
    write: Mutex<Option<String>>,
    reconnects: AtomicU64,
    connected: AtomicBool,
}

impl Status {
    /// The state of a log that has just reached its engine.
    pub(crate) fn connected() -> Status {
        Status {
            connected: AtomicBool::new(true),
            ..Status::default()
        }
    }

    fn set(slot: &Mutex<Option<String>>, value: Option<String>) -> bool {
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        let changed = slot.is_some() != value.is_some();
        *slot = value;
        changed
    }

    fn get(slot: &Mutex<Option<String>>) -> Option<String> {
        slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the connection to the engine is up (metrics; `/readyz`).
    pub(crate) fn connection(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// One more attempt to reach the engine again.
    pub(crate) fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// The tail lost the engine (logged once per outage).
    pub(crate) fn tail_lost(&self, url: &str, err: &str) {
        if Self::set(&self.tail, Some(err.to_owned())) {
            tracing::error!(%err, url, "lost the cluster engine; reconnecting");
        }
    }

    /// The tail cannot go on at all (an entry it cannot read): not ready.
    pub(crate) fn tail_stopped(&self, err: &str) {
        tracing::error!(%err, "cannot apply the cluster log; this node stops reading it");
        Self::set(&self.tail, Some(err.to_owned()));
    }

    /// The tail reads the engine again. Appends failed while it was away;
    /// the next one is likely to succeed, so readiness comes back too.
    pub(crate) fn tail_ok(&self, url: &str, head: u64) {
        if Self::set(&self.tail, None) {
            tracing::info!(url, head, "cluster engine reachable again");
            Self::set(&self.write, None);
        }
    }

    /// An append succeeded.
    pub(crate) fn write_ok(&self, url: &str) {
        if Self::set(&self.write, None) {
            tracing::info!(url, "cluster appends succeed again");
        }
    }

    /// An append failed: publishes are refused until one succeeds.
    pub(crate) fn write_failed(&self, url: &str, err: &str) -> LogError {
        if Self::set(&self.write, Some(err.to_owned())) {
            tracing::error!(%err, url, "cluster append failed; publishes refused");
        }
        LogError::Unavailable(err.to_owned())
    }

    /// Forgets the last failed append (the engine is back).
    pub(crate) fn clear_write(&self) {
        Self::set(&self.write, None);
    }

    /// `/readyz`: `Err` with the reason while the engine is out of reach or
    /// the last append failed.
    pub(crate) fn health(&self) -> Result<(), String> {
        if let Some(err) = Self::get(&self.tail) {
            return Err(format!("the cluster engine is unreachable: {err}"));
        }
        if !self.is_connected() {
            return Err("the cluster engine is unreachable: disconnected".into());
        }
        if let Some(err) = Self::get(&self.write) {
            return Err(format!("the last cluster append failed: {err}"));
        }
        Ok(())
    }

    /// For metrics and stats.
    pub(crate) fn report(&self) -> EngineStatus {
        EngineStatus {
            connected: self.connected.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
        }
    }
}

/// A node's report older than this is from a node that is gone.
pub(crate) const NODE_STALE_MS: u64 = 10_000;

/// Whether a node's report (`reported_at_ms`) is recent enough to count.
pub(crate) fn fresh(report: &serde_json::Value, now_ms: u64) -> bool {
    report["reported_at_ms"].as_u64().unwrap_or(0) + NODE_STALE_MS >= now_ms
}

/// Runs a log's tail on the current runtime (a clustered log needs one).
pub(crate) fn spawn_tail(task: impl std::future::Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(task);
        }
        Err(_) => tracing::error!("a clustered log needs a tokio runtime: not tailing"),
    }
}

/// Exponential backoff, 50 ms to 5 s, each wait a random half to all of
/// the current step.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Backoff {
        Backoff {
            next: Duration::from_millis(50),
        }
    }

    pub(crate) fn peek(&self) -> Duration {
        self.next
    }

    pub(crate) async fn wait(&mut self) {
        let ms = fastrand::u64(self.next.as_millis() as u64 / 2..=self.next.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.next = (self.next * 2).min(Self::MAX);
    }

    pub(crate) fn reset(&mut self) {
        *self = Backoff::new();
    }
}
