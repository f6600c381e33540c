//! What the clustered logs share, whatever their engine: options, start
//! errors, the connection state `/readyz` and metrics report, and the
//! reconnect backoff.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Mutex;
use std::time::Duration;

/// What a clustered log needs besides history retention.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
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
}

/// Why a clustered log could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cluster.url {0:?} is not valid: {1}")]
    BadUrl(String, String),
    #[error("could not reach the cluster engine at {url} within {secs} s: {last}")]
    Unreachable {
        url: String,
        secs: u64,
        last: String,
    },
    #[error("the cluster log holds an entry Herald cannot read ({id}): {reason}")]
    Corrupt { id: String, reason: String },
}

/// The engine's connection state, for `/readyz`, metrics and logs.
#[derive(Default)]
pub(crate) struct Status {
    /// Why the tail is not reading now; `None` while it is.
    pub tail: Mutex<Option<String>>,
    /// Why the last append failed; `None` once one succeeds.
    pub write: Mutex<Option<String>>,
    pub reconnects: AtomicU64,
    pub connected: AtomicBool,
}

impl Status {
    pub fn set(slot: &Mutex<Option<String>>, value: Option<String>) -> bool {
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        let changed = slot.is_some() != value.is_some();
        *slot = value;
        changed
    }

    pub fn get(slot: &Mutex<Option<String>>) -> Option<String> {
        slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Exponential backoff, 50 ms to 5 s, each wait a random half to all of
/// the current step.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Backoff {
        Backoff {
            next: Duration::from_millis(50),
        }
    }

    pub fn peek(&self) -> Duration {
        self.next
    }

    pub async fn wait(&mut self) {
        let ms = fastrand::u64(self.next.as_millis() as u64 / 2..=self.next.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.next = (self.next * 2).min(Self::MAX);
    }

    pub fn reset(&mut self) {
        *self = Backoff::new();
    }
}
